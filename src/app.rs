//! Builds every part from [`Settings`] and runs them under one shutdown token:
//! the HTTP server and the consumer loop, drained in order on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::broker::producer::OrderProducer;
use crate::config::ConsumerMode;
use crate::config::Settings;
use crate::consumer::group::GroupMember;
use crate::consumer::{self, ConsumerLoop, ConsumerStatus, Ownership};
use crate::store;

/// How often `consumer_lag` is refreshed and the consumer's progress checked.
const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// How long shutdown waits for the producer to deliver what it still holds.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A built, not yet running, oms daemon.
pub struct Application {
    settings: Settings,
    acceptor: TcpAcceptor,
    addr: SocketAddr,
    state: Arc<AppState>,
    consumer: ConsumerLoop,
    /// Group mode: this instance as a member of the group.
    member: Option<GroupMember>,
    metrics: PrometheusHandle,
}

impl Application {
    /// Opens the store, creates the Kafka clients and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.check_mode()?;
        let metrics = crate::telemetry::metrics().map_err(anyhow::Error::msg)?;
        let store = store::open(&settings.store).await.with_context(|| {
            format!(
                "opening the {} store at {}",
                settings.store.engine().as_str(),
                settings.store.url.redacted()
            )
        })?;
        let producer =
            OrderProducer::new(&settings.broker).context("creating the Kafka producer")?;
        let status = ConsumerStatus::default();
        let books = consumer::Books::default();
        let ownership = Ownership::default();
        let member = (settings.consumer.mode == ConsumerMode::Group).then(|| GroupMember {
            broker: settings.broker.clone(),
            settings: settings.consumer.clone(),
            store: store.clone(),
            member: GroupMember::member(&settings.consumer, &settings.broker.topic),
            ownership: ownership.clone(),
            status: status.clone(),
        });
        let consumer = ConsumerLoop::new(
            settings.broker.clone(),
            settings.consumer.clone(),
            store.clone(),
            status.clone(),
            books.clone(),
            ownership,
            member.as_ref().map(|m| m.member.id.clone()),
        );
        let acceptor = TcpListener::bind(settings.http.addr.clone())
            .into_acceptor()
            .await
            .with_context(|| format!("binding the HTTP listener to {}", settings.http.addr))?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .context("the HTTP listener has no socket address")?;
        let state = Arc::new(AppState {
            producer,
            store,
            consumer: status,
            retry_after_secs: settings.broker.retry_after_secs,
            stall_after: Duration::from_millis(settings.consumer.stall_after_ms),
            read_wait: Duration::from_millis(settings.http.read_wait_ms),
            topic: settings.broker.topic.clone(),
            books,
            matching: settings.consumer.matching,
        });
        Ok(Self {
            settings,
            acceptor,
            addr,
            state,
            consumer,
            member,
            metrics,
        })
    }

    /// The store this daemon writes to (for embedding and tests).
    pub fn store(&self) -> Arc<dyn store::Store> {
        self.state.store.clone()
    }

    /// The address the HTTP server listens on (its real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled (or a part fails): then stops
    /// accepting, finishes in-flight requests, flushes the producer and lets
    /// the consumer write its last batch.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            settings,
            acceptor,
            addr,
            state,
            consumer,
            member,
            metrics,
        } = self;
        let producer = state.producer.clone();
        let lag_status = state.consumer.clone();
        let produced = state.producer.evidence();
        let endpoint = api::routes(state, metrics.clone(), settings.http.body_limit_bytes);
        let drain = Duration::from_millis(settings.http.shutdown_timeout_ms);
        tracing::info!(%addr, engine = settings.store.engine().as_str(), topic = %settings.broker.topic, "oms serving");

        let mut tasks: JoinSet<anyhow::Result<&'static str>> = JoinSet::new();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            poem::Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(endpoint, stop.cancelled_owned(), Some(drain))
                .await
                .context("HTTP server failed")?;
            Ok("http")
        });
        let stop = shutdown.clone();
        tasks.spawn(async move {
            consumer.run(stop).await.context("consumer failed")?;
            Ok("consumer")
        });
        if let Some(member) = member {
            let stop = shutdown.clone();
            tasks.spawn(async move {
                member.run(stop).await.context("group member failed")?;
                Ok("group member")
            });
        }
        let (stop, lag_broker) = (shutdown.clone(), settings.broker.clone());
        let stall_after = Duration::from_millis(settings.consumer.stall_after_ms);
        tasks.spawn(async move {
            consumer::watch_log(
                lag_broker,
                lag_status,
                produced,
                LAG_INTERVAL,
                stall_after,
                stop,
            )
            .await
            .context("log watcher failed")?;
            Ok("log watcher")
        });
        let stop = shutdown.clone();
        tasks.spawn(async move {
            // The recorder needs periodic upkeep to bound histogram memory.
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok("metrics"),
                    _ = tick.tick() => metrics.run_upkeep(),
                }
            }
        });

        let mut failure = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(part)) => {
                    tracing::info!(part, "stopped");
                    // Any part ending means the daemon ends: stop the others too.
                    shutdown.cancel();
                }
                Ok(Err(err)) => {
                    tracing::error!(error = %format!("{err:#}"), "a part of oms failed; shutting down");
                    shutdown.cancel();
                    failure.get_or_insert(err);
                }
                Err(join) => {
                    shutdown.cancel();
                    failure.get_or_insert(anyhow::anyhow!("a task panicked: {join}"));
                }
            }
        }
        let flushed = tokio::task::spawn_blocking(move || producer.flush(FLUSH_TIMEOUT)).await;
        if let Ok(Err(err)) = flushed {
            tracing::warn!(error = %err, "producer flush incomplete");
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}
