//! Exactly once under `kill -9`: 16 clients submit orders (each with its own
//! `client_order_id`, retried until acknowledged) while the daemon is
//! SIGKILLed and restarted at random moments 0.5–3 s apart. Afterwards every
//! acknowledged order is stored exactly once, the store's offsets equal the
//! log end and the broker still serves — for each engine, on the durable
//! broker `just up` runs (tansu on sqlite) and on tansu in memory. The
//! orders cross (buys rise in price, sells rest below them): the trades,
//! fills and statuses stored must be what an independent reference matcher
//! computes from the stored orders in log order, with no trade twice, and
//! the trades topic must hold exactly the stored trades.
//!
//! `the_broker_is_not_wedged_by_produce_timeouts` is the regression test of
//! the wedge: with a produce deadline far below what the loaded machine
//! needs, most sends time out while oms is killed and restarted. Before the
//! fix, librdkafka timed those records out, bumped the idempotent epoch, and
//! tansu's sqlite engine panicked and refused every request from then on.

mod common;

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use common::{
    BrokerEngine, Load, OmsProcess, SYMBOLS, Tansu, TestApp, assert_broker_serves, check_matching,
    free_port, log_end, serve_args, settings, tally, use_engine,
};
use oms::broker::admin;
use oms::config::Engine;

/// At least this many orders are submitted…
const ORDERS: u64 = 20_000;
const CLIENTS: usize = 16;
/// Orders of the wedge test (most of its sends time out and are retried).
const WEDGE_ORDERS: u64 = 5_000;
/// … and the daemon is killed this often meanwhile.
const KILLS: usize = 6;
/// The whole test must finish in this time.
const BUDGET: Duration = Duration::from_secs(600);

/// A random pause of 0.5–3 s.
fn pause(random: &RandomState, n: usize) -> Duration {
    Duration::from_millis(500 + random.hash_one(n) % 2_500)
}

async fn crash_and_count(
    engine: Engine,
    broker: BrokerEngine,
    orders: u64,
    env: &[(&str, &str)],
) -> u64 {
    let started = Instant::now();
    let deadline = started + BUDGET;
    let dir = tempfile::tempdir().expect("tempdir");
    let tansu = Tansu::start_with(&dir.path().join("broker"), broker);
    let mut cfg = settings(&tansu.bootstrap(), &dir.path().join("store"));
    use_engine(&mut cfg, engine, "oms_crash").await;
    admin::create_topics(&cfg.broker).await.expect("topics");
    let port = free_port();
    let log = dir.path().join("oms.log");
    let args = serve_args(&cfg);

    let mut daemon = Some(OmsProcess::start_with_env(port, &args, env, &log).await);
    // Restarts reuse the port, so clients keep one address.
    let base = format!("http://127.0.0.1:{port}");
    let load = Load::start(&base, CLIENTS, deadline);

    let random = RandomState::new();
    for kill in 0..KILLS {
        tokio::time::sleep(pause(&random, kill)).await;
        if let Some(d) = daemon.take() {
            d.kill9();
        }
        daemon = Some(OmsProcess::start_with_env(port, &args, env, &log).await);
    }
    load.wait_submitted(orders, Duration::from_secs(300)).await;
    let result = load.finish().await;
    drop(daemon.take());
    let load_time = started.elapsed();

    // A final daemon (in-process, to read its store) catches up with the log.
    let app = TestApp::spawn(cfg.clone()).await;
    let counted = tally(&app, &result.acked).await;
    let records: i64 = log_end(&cfg.broker.bootstrap, &cfg.broker.topic)
        .values()
        .sum();
    eprintln!(
        "crash test [{} on tansu {}]: {counted}; {KILLS} SIGKILL restarts 0.5–3 s apart, {} client retries ({} of them 503), {records} records on the log, load {load_time:.1?}, total {:.1?}",
        engine.as_str(),
        broker.as_str(),
        result.retries,
        result.unavailable,
        started.elapsed()
    );
    assert_eq!(counted.lost, 0, "lost acknowledged orders: {counted}");
    assert_eq!(
        counted.duplicated, 0,
        "each order stored exactly once: {counted}"
    );
    // The load's buys rise in price with each order and cross the sells
    // before them: every symbol trades all along the kills.
    let matched = check_matching(&app, &SYMBOLS).await;
    eprintln!(
        "crash test [{} on tansu {}]: matching as the reference matcher: {} orders, {} trades (none twice), {} traded, {} trade records on the trades topic, {} expired, {} rejected",
        engine.as_str(),
        broker.as_str(),
        matched.orders,
        matched.trades,
        matched.traded,
        matched.published,
        matched.expired,
        matched.rejected
    );
    assert!(matched.trades > 0, "the workload must trade");
    assert!(
        matched.expired > 0 && matched.rejected > 0,
        "the workload sends every order type: {} expired, {} rejected",
        matched.expired,
        matched.rejected
    );
    app.stop().await.expect("clean stop");
    assert_broker_serves(&cfg.broker.bootstrap, &cfg.broker.dlq_topic).await;
    result.unavailable
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_is_exactly_once_under_kill_9_on_the_durable_broker() {
    crash_and_count(Engine::Redb, BrokerEngine::Sqlite, ORDERS, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_is_exactly_once_under_kill_9_on_the_durable_broker() {
    crash_and_count(Engine::Sled, BrokerEngine::Sqlite, ORDERS, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_is_exactly_once_under_kill_9_on_the_durable_broker() {
    crash_and_count(Engine::Postgres, BrokerEngine::Sqlite, ORDERS, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_is_exactly_once_under_kill_9_on_the_durable_broker() {
    crash_and_count(Engine::Redis, BrokerEngine::Sqlite, ORDERS, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_is_exactly_once_under_kill_9_on_the_memory_broker() {
    crash_and_count(Engine::Redis, BrokerEngine::Memory, ORDERS, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_is_exactly_once_under_kill_9_on_the_memory_broker() {
    crash_and_count(Engine::Redb, BrokerEngine::Memory, ORDERS, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_is_exactly_once_under_kill_9_on_the_memory_broker() {
    crash_and_count(Engine::Sled, BrokerEngine::Memory, ORDERS, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_is_exactly_once_under_kill_9_on_the_memory_broker() {
    crash_and_count(Engine::Postgres, BrokerEngine::Memory, ORDERS, &[]).await;
}

/// The memory engine snapshots every few hundred orders and every 100 ms,
/// so the kills land during snapshot writes too.
const SNAPSHOT_OFTEN: &[(&str, &str)] = &[
    ("OMS__STORE__MEMORY__SNAPSHOT_EVERY_ORDERS", "300"),
    ("OMS__STORE__MEMORY__SNAPSHOT_EVERY_MS", "100"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_exactly_once_under_kill_9_on_the_durable_broker() {
    crash_and_count(Engine::Memory, BrokerEngine::Sqlite, ORDERS, SNAPSHOT_OFTEN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_exactly_once_under_kill_9_on_the_memory_broker() {
    crash_and_count(Engine::Memory, BrokerEngine::Memory, ORDERS, SNAPSHOT_OFTEN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_is_not_wedged_by_produce_timeouts() {
    // 5 ms: far below a loaded machine's produce round trip, so most sends
    // time out — the overload the wedge needed.
    let timeouts = crash_and_count(
        Engine::Redb,
        BrokerEngine::Sqlite,
        WEDGE_ORDERS,
        &[("OMS__BROKER__PRODUCE_TIMEOUT_MS", "5")],
    )
    .await;
    assert!(
        timeouts > 0,
        "the test must overload the producer: no send timed out"
    );
}
