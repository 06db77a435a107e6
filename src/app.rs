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

/// The longest a graceful stop takes with `settings`: the HTTP drain and
/// the consumer's last batch (closing its broker consumer, leaving the
/// group) run side by side, then the producer is flushed. Whatever stops
/// oms must wait longer than this before it kills (`scripts/lib.sh`'s
/// `OMS_STOP_GRACE`, tied by `tests/layout.rs`).
pub fn longest_stop(settings: &Settings) -> Duration {
    parts_stop_within(settings) + FLUSH_TIMEOUT
}

/// How long the parts get, once one has ended, to end too.
fn parts_stop_within(settings: &Settings) -> Duration {
    let http = Duration::from_millis(settings.http.shutdown_timeout_ms);
    let consumer = consumer::client::CLOSE_WITHIN + consumer::group::LEAVE_WAIT;
    http.max(consumer)
}

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
        settings.check()?;
        let metrics = crate::telemetry::metrics()?;
        let store = store::open(&settings.store).await.with_context(|| {
            format!(
                "opening the {} store at {}",
                settings.store.engine().as_str(),
                settings.store.url.redacted()
            )
        })?;
        let keys = crate::auth::Keyring::open(&settings.auth)
            .with_context(|| "reading the API keys (auth.keys_file)".to_owned())?;
        if keys.active() == 0 {
            tracing::warn!(
                file = %settings.auth.keys_file.display(),
                "no API key in force: every order request is refused with 401 until one is made (`oms keys create --account NAME`)"
            );
        }
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
            retry_after_secs: settings.http.retry_after_secs,
            stall_after: Duration::from_millis(settings.consumer.stall_after_ms),
            read_wait: Duration::from_millis(settings.http.read_wait_ms),
            topic: settings.broker.topic.clone(),
            books,
            matching: settings.consumer.matching,
            keys: Arc::new(keys),
            feed: crate::feed::Feed::new(settings.broker.clone(), settings.feed.clone()),
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
        let keys = state.keys.clone();
        let endpoint = api::routes(
            state,
            metrics.clone(),
            settings.http.body_limit_bytes,
            settings.auth.public.clone(),
        );
        let drain = Duration::from_millis(settings.http.shutdown_timeout_ms);
        tracing::info!(%addr, engine = settings.store.engine().as_str(), topic = %settings.broker.topic, "oms serving");

        let mut tasks = Parts::new();
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
        tasks.spawn(metrics_upkeep(metrics, shutdown.clone()));
        let (stop, reload) = (
            shutdown.clone(),
            Duration::from_millis(settings.auth.reload_ms),
        );
        tasks.spawn(async move {
            crate::auth::ring::watch(keys, reload, stop).await;
            Ok("key watcher")
        });

        let stop_within = parts_stop_within(&settings);
        let failure = join_all(tasks, &shutdown, stop_within).await;
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

type Parts = JoinSet<anyhow::Result<&'static str>>;

/// The recorder needs periodic upkeep to bound histogram memory.
async fn metrics_upkeep(
    metrics: PrometheusHandle,
    stop: CancellationToken,
) -> anyhow::Result<&'static str> {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok("metrics"),
            _ = tick.tick() => metrics.run_upkeep(),
        }
    }
}

/// Waits for every part; the first to end, for whatever reason, stops
/// the others, which get `stop_within` to end on their own — a part stuck
/// on a broker that no longer answers (an ack that never comes) is then
/// dropped, so oms always exits. Returns the first failure.
async fn join_all(
    mut tasks: Parts,
    shutdown: &CancellationToken,
    stop_within: Duration,
) -> Option<anyhow::Error> {
    let mut failure = None;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let joined = match deadline {
            None => tasks.join_next().await,
            Some(at) => match tokio::time::timeout_at(at, tasks.join_next()).await {
                Ok(joined) => joined,
                Err(_) => {
                    tracing::error!(
                        parts = tasks.len(),
                        within_s = stop_within.as_secs_f64(),
                        "parts of oms did not stop in time; dropping them"
                    );
                    tasks.abort_all();
                    failure.get_or_insert(anyhow::anyhow!(
                        "{} part(s) of oms did not stop within {stop_within:?}",
                        tasks.len()
                    ));
                    break;
                }
            },
        };
        let Some(joined) = joined else { break };
        // Any part ending means the daemon ends: stop the others too.
        shutdown.cancel();
        deadline.get_or_insert_with(|| tokio::time::Instant::now() + stop_within);
        match joined {
            Ok(Ok(part)) => tracing::info!(part, "stopped"),
            Ok(Err(err)) => {
                tracing::error!(error = %format!("{err:#}"), "a part of oms failed; shutting down");
                failure.get_or_insert(err);
            }
            Err(join) => {
                failure.get_or_insert(anyhow::anyhow!("a task panicked: {join}"));
            }
        }
    }
    failure
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_part_that_does_not_stop_is_dropped_and_the_first_failure_kept() {
        let shutdown = CancellationToken::new();
        let mut tasks = Parts::new();
        tasks.spawn(async { Err(anyhow::anyhow!("the log is gone")) });
        // Stuck on an ack that never comes, deaf to shutdown.
        tasks.spawn(std::future::pending());
        let stop = shutdown.clone();
        tasks.spawn(async move {
            stop.cancelled().await;
            Ok("obedient")
        });
        let failure = join_all(tasks, &shutdown, Duration::from_millis(200))
            .await
            .expect("a failure");
        assert!(shutdown.is_cancelled());
        assert_eq!(failure.to_string(), "the log is gone");
    }

    #[tokio::test]
    async fn parts_that_stop_in_time_end_without_a_failure() {
        let shutdown = CancellationToken::new();
        let mut tasks = Parts::new();
        for _ in 0..3 {
            let stop = shutdown.clone();
            tasks.spawn(async move {
                stop.cancelled().await;
                Ok("part")
            });
        }
        shutdown.cancel();
        assert!(
            join_all(tasks, &shutdown, Duration::from_millis(200))
                .await
                .is_none()
        );
    }
}
