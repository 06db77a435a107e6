//! The `oms` command line: parse, load settings, call into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use oms::app::Application;
use oms::broker::admin::{self, TopicOutcome};
use oms::broker::dlq::{DlqAddress, DlqPosition, Selection};
use oms::config::{Engine, Settings};
use oms::store::postgres::PostgresStore;
use oms::telemetry::Telemetry;

#[global_allocator]
static ALLOCATOR: oms::memory::Allocator = oms::memory::Allocator;

/// Order-ingest daemon: OpenAPI order API → Kafka-API log → a pluggable store.
#[derive(Debug, Parser)]
#[command(name = "oms", version, about)]
struct Cli {
    /// TOML settings file (see configs/); `OMS__SECTION__KEY` variables and flags override it.
    #[arg(short, long, global = true, env = "OMS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: HTTP API, producer and consumer.
    Serve(ServeArgs),
    /// Create the topics and, for `--store postgres`, apply the schema migrations (idempotent).
    Migrate(MigrateArgs),
    /// Inspect and re-drive the dead-letter topic.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Check that the broker serves (metadata and the orders topic's log
    /// end); exit status 1 when it does not. The `just up` supervisor runs it.
    Probe {
        #[command(flatten)]
        broker: BrokerArgs,
    },
    /// Make, list and revoke API keys (in `auth.keys_file`, which every
    /// instance reads again within `auth.reload_ms`).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        /// The key file (`auth.keys_file`).
        #[arg(long, global = true)]
        keys_file: Option<PathBuf>,
    },
    /// Print the OpenAPI document.
    Openapi {
        #[arg(long, value_enum, default_value_t = SpecFormat::Yaml)]
        format: SpecFormat,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Show what is in the dead-letter topic: origin, reason, time, replays.
    List {
        /// Show at most this many records (partition by partition, oldest first).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this record (`PARTITION:OFFSET`, as the previous page
        /// says).
        #[arg(long, value_parser = parse_position)]
        after: Option<DlqPosition>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Re-produce dead letters to the orders topic (replay count + 1).
    Replay {
        /// Every record not replayed by an earlier `--all`.
        #[arg(long, conflicts_with = "at", required_unless_present = "at")]
        all: bool,
        /// These records of the dead-letter topic, as `oms dlq list` shows
        /// them: `PARTITION:OFFSET`, or `OFFSET` for a one-partition topic
        /// (repeatable).
        #[arg(long, alias = "offset", num_args = 1..)]
        at: Vec<DlqAddress>,
        /// Show what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a key for an account; the key is printed once, never stored.
    /// The last line of the output is `ID KEY`.
    Create {
        /// The account that owns what the key submits.
        #[arg(long, value_parser = parse_account)]
        account: oms::domain::Account,
        /// `trader` submits, cancels and reads; `reader` only reads.
        #[arg(long, default_value = "trader")]
        role: oms::auth::Role,
        /// Requests per second (0: no limit); default `auth.rate_per_sec`.
        #[arg(long)]
        rate: Option<u32>,
        /// Requests in flight at once (0: no limit); default `auth.max_in_flight`.
        #[arg(long)]
        in_flight: Option<u32>,
    },
    /// Show every key: id, account, role, limits, made and revoked when.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: every instance refuses it within `auth.reload_ms`.
    Revoke {
        /// The key's id (`oms keys list`).
        id: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SpecFormat {
    Yaml,
    Json,
}

#[derive(Debug, Args)]
struct BrokerArgs {
    /// Kafka bootstrap servers (`broker.bootstrap`).
    #[arg(long, global = true)]
    bootstrap: Option<String>,
    /// Orders topic (`broker.topic`).
    #[arg(long, global = true)]
    topic: Option<String>,
    /// Dead-letter topic (`broker.dlq_topic`).
    #[arg(long, global = true)]
    dlq_topic: Option<String>,
    /// Trades topic (`broker.trades_topic`).
    #[arg(long, global = true)]
    trades_topic: Option<String>,
}

#[derive(Debug, Args)]
struct StoreArgs {
    /// Store URL (`store.url`): `ENGINE:///folder` for an engine in files of
    /// its own, a connection URL for a server — or just an engine's name for
    /// that engine at its default location (every engine is listed when the
    /// URL is wrong; docs/configuration.md has the table).
    #[arg(long, value_name = "URL|ENGINE")]
    store: Option<String>,
    /// Deprecated: use `--store postgres://…` (`store.url`).
    #[arg(long, hide_short_help = true)]
    postgres_url: Option<String>,
}

impl StoreArgs {
    fn overrides(&self, out: &mut Vec<(&'static str, String)>) {
        if let Some(v) = &self.store {
            let url = match Engine::from_str(v, true) {
                Ok(engine) => engine.default_url().to_string(),
                Err(_) => v.clone(),
            };
            out.push(("store.url", url));
        }
        if let Some(v) = &self.postgres_url {
            out.push(("store.postgres_url", v.clone()));
        }
    }
}

#[derive(Debug, Args)]
struct MigrateArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    broker: BrokerArgs,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Deprecated: use `--store redb:///folder` (`store.url`).
    #[arg(long, hide_short_help = true)]
    store_path: Option<PathBuf>,
    /// HTTP listen address (`http.addr`).
    #[arg(long)]
    http_addr: Option<String>,
    /// The API key file (`auth.keys_file`).
    #[arg(long)]
    keys_file: Option<PathBuf>,
    #[command(flatten)]
    broker: BrokerArgs,
}

impl BrokerArgs {
    fn overrides(&self, out: &mut Vec<(&'static str, String)>) {
        if let Some(v) = &self.bootstrap {
            out.push(("broker.bootstrap", v.clone()));
        }
        if let Some(v) = &self.topic {
            out.push(("broker.topic", v.clone()));
        }
        if let Some(v) = &self.dlq_topic {
            out.push(("broker.dlq_topic", v.clone()));
        }
        if let Some(v) = &self.trades_topic {
            out.push(("broker.trades_topic", v.clone()));
        }
    }
}

impl ServeArgs {
    fn overrides(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        self.store.overrides(&mut out);
        if let Some(v) = &self.store_path {
            out.push(("store.path", v.display().to_string()));
        }
        if let Some(v) = &self.http_addr {
            out.push(("http.addr", v.clone()));
        }
        if let Some(v) = &self.keys_file {
            out.push(("auth.keys_file", v.display().to_string()));
        }
        self.broker.overrides(&mut out);
        out
    }
}

/// `--account`: an account name, by its rule.
fn parse_account(s: &str) -> Result<oms::domain::Account, String> {
    s.parse().map_err(|e| format!("{s:?}: {e}"))
}

/// `--after`: a full `PARTITION:OFFSET`.
fn parse_position(s: &str) -> Result<DlqPosition, String> {
    match s.parse::<DlqAddress>()? {
        DlqAddress {
            partition: Some(partition),
            offset,
        } => Ok(DlqPosition { partition, offset }),
        _ => Err(format!(
            "{s:?}: give PARTITION:OFFSET, as `oms dlq list` prints it"
        )),
    }
}

fn load(cli: &Cli, overrides: &[(&str, String)]) -> anyhow::Result<(Settings, Telemetry)> {
    let settings = Settings::load(cli.config.as_deref(), overrides)?;
    let telemetry = oms::telemetry::init(&settings.telemetry)?;
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    Ok((settings, telemetry))
}

/// Cancels `token` on SIGINT or SIGTERM.
fn cancel_on_signal(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
        token.cancel();
    });
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve(args) => {
            let (settings, telemetry) = load(&cli, &args.overrides())?;
            oms::memory::trim_every(Duration::from_millis(settings.memory.trim_every_ms))
                .context("starting the heap trimmer")?;
            let app = Application::build(settings).await?;
            let shutdown = CancellationToken::new();
            cancel_on_signal(shutdown.clone())?;
            let result = app.run(shutdown).await;
            // The exporter's flush blocks (HTTP to the collector).
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
            result
        }
        Command::Migrate(args) => {
            let mut overrides = Vec::new();
            args.store.overrides(&mut overrides);
            args.broker.overrides(&mut overrides);
            let (settings, _telemetry) = load(&cli, &overrides)?;
            migrate(&settings).await
        }
        Command::Dlq { command, broker } => {
            let mut overrides = Vec::new();
            broker.overrides(&mut overrides);
            let (settings, _telemetry) = load(&cli, &overrides)?;
            match command {
                DlqCommand::List { limit, after, json } => {
                    oms::cli::dlq_list(&settings.broker, *limit, *after, *json).await
                }
                DlqCommand::Replay { all, at, dry_run } => {
                    let selection = if *all {
                        Selection::AllPending
                    } else {
                        Selection::At(at.clone())
                    };
                    oms::cli::dlq_replay(&settings.broker, &settings.dlq, selection, *dry_run).await
                }
            }
        }
        Command::Probe { broker } => {
            let mut overrides = Vec::new();
            broker.overrides(&mut overrides);
            let (settings, _telemetry) = load(&cli, &overrides)?;
            let summary =
                tokio::task::spawn_blocking(move || admin::probe(&settings.broker)).await??;
            println!("{summary}");
            Ok(())
        }
        Command::Keys { command, keys_file } => {
            let mut overrides = Vec::new();
            if let Some(v) = keys_file {
                overrides.push(("auth.keys_file", v.display().to_string()));
            }
            let (settings, _telemetry) = load(&cli, &overrides)?;
            let file = oms::auth::KeyFile::new(&settings.auth.keys_file);
            match command {
                KeysCommand::Create {
                    account,
                    role,
                    rate,
                    in_flight,
                } => oms::cli::keys_create(&file, account.clone(), *role, *rate, *in_flight),
                KeysCommand::List { json } => oms::cli::keys_list(&file, &settings.auth, *json),
                KeysCommand::Revoke { id } => oms::cli::keys_revoke(&file, id, &settings.auth),
            }
        }
        Command::Openapi { format } => {
            match format {
                SpecFormat::Yaml => print!("{}", oms::api::spec::yaml()),
                SpecFormat::Json => println!("{}", oms::api::spec::json()),
            }
            Ok(())
        }
    }
}

/// `oms migrate`: the topics, and for Postgres the schema.
async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let wanted = settings.migrate.partitions;
    for (topic, outcome) in admin::create_topics_with(&settings.broker, &settings.migrate).await? {
        match outcome {
            TopicOutcome::Created => println!("created topic {topic}"),
            TopicOutcome::AlreadyExisted { partitions } => {
                println!("topic {topic} already exists (partitions: {partitions})");
                if topic == settings.broker.topic
                    && partitions < usize::try_from(wanted).unwrap_or(0)
                {
                    eprintln!(
                        "warning: topic {topic} keeps its partition count, {partitions} (migrate.partitions = {wanted} applies only when it is created): in group mode at most {partitions} instance(s) share the load"
                    );
                }
            }
        }
    }
    if settings.store.engine() == Engine::Postgres {
        let store =
            PostgresStore::connect(settings.store.url.as_str(), &settings.store.postgres).await?;
        store.migrate().await?;
        println!("postgres schema is up to date");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("oms: {err:#}");
            let restart = err.chain().any(|e| {
                e.downcast_ref::<oms::consumer::ConsumerError>()
                    .is_some_and(oms::consumer::ConsumerError::wants_restart)
            });
            if restart {
                ExitCode::from(oms::consumer::EXIT_RESTART)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
