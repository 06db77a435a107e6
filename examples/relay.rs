//! The floor under oms' CPU per order on this machine: a bare HTTP → log
//! relay. It answers `POST /orders` with a `202` once the broker acknowledged
//! the request body as one record — oms' own producer settings (idempotent,
//! `acks=all`, linger, no compression), poem's plain router, no validation,
//! no JSON, no headers, no metrics, no consumer and no store. What it spends
//! per order is what HTTP and librdkafka alone cost here; oms does that and
//! everything else.
//!
//! `just bench` measures it beside oms in its capacity step. It takes oms'
//! command line, so `bench/wrk/run.sh` starts it like oms too:
//!
//!   cargo build --release --example relay
//!   OMS_BIN=$CARGO_TARGET_DIR/release/examples/relay bench/wrk/run.sh relay

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use oms::config::Settings;
use poem::http::StatusCode;
use poem::listener::TcpListener;
use poem::web::Data;
use poem::{EndpointExt, Route, Server, get, handler, post};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the topics, as `oms migrate` does.
    Migrate {
        #[arg(long)]
        bootstrap: String,
    },
    /// Relay `POST /orders` bodies to the orders topic (`--store` is ignored).
    Serve {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        http_addr: String,
        #[arg(long)]
        topic: Option<String>,
        #[arg(long)]
        store: Option<String>,
    },
}

struct Relay {
    producer: FutureProducer,
    topic: String,
}

#[handler]
async fn forward(body: Vec<u8>, relay: Data<&Arc<Relay>>) -> StatusCode {
    let record = FutureRecord::<str, [u8]>::to(&relay.topic)
        .key("USD-EUR")
        .payload(&body);
    match relay.producer.send(record, Duration::from_secs(5)).await {
        Ok(_) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[handler]
fn ready() -> StatusCode {
    StatusCode::OK
}

/// oms' broker settings, loaded the way oms loads them (defaults, then
/// `OMS__BROKER__…` from the environment, e.g. the partition count
/// `bench/wrk/run.sh` sets), with the command line's bootstrap and topic.
fn settings(bootstrap: String, topic: Option<String>) -> anyhow::Result<Settings> {
    let mut overrides = vec![("broker.bootstrap", bootstrap)];
    overrides.extend(topic.map(|topic| ("broker.topic", topic)));
    Settings::load(None, &overrides).context("loading oms' settings")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Migrate { bootstrap } => {
            let settings = settings(bootstrap, None)?;
            oms::broker::admin::create_topics_with(&settings.broker, &settings.migrate)
                .await
                .context("creating the topics")?;
            Ok(())
        }
        Cmd::Serve {
            bootstrap,
            http_addr,
            topic,
            store: _,
        } => {
            let settings = settings(bootstrap, topic)?.broker;
            let relay = Arc::new(Relay {
                producer: oms::broker::producer::producer_config(&settings, "relay")
                    .create()
                    .context("creating the producer")?,
                topic: settings.topic.clone(),
            });
            let app = Route::new()
                .at("/orders", post(forward))
                .at("/readyz", get(ready))
                .at("/healthz", get(ready))
                .data(relay);
            Server::new(TcpListener::bind(http_addr))
                .run(app)
                .await
                .context("serving")
        }
    }
}
