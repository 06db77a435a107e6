//! Exactly once under `kill -9`: concurrent clients submit 20,000 orders
//! (each with its own `client_order_id`, retried until acknowledged) while the
//! daemon is SIGKILLed and restarted at random moments. Afterwards every
//! acknowledged order is stored exactly once and the store's offsets equal the
//! log end — for each engine.

mod common;

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    OmsProcess, TestApp, accepted_id, bootstrap, eventually, free_port, fresh_database, log_end,
    order_body, serve_args, settings,
};
use oms::broker::admin;
use oms::config::Engine;
use serde_json::json;
use uuid::Uuid;

const ORDERS: u64 = 20_000;
const CLIENTS: usize = 16;
const KILLS: usize = 6;
/// The whole test must finish in this time.
const BUDGET: Duration = Duration::from_secs(600);

/// Submits order `n` until a 202 (connection errors and 503s are retried
/// with the same `client_order_id`, as a well-behaved client would).
async fn submit(
    client: &reqwest::Client,
    base: &str,
    run: &str,
    n: u64,
    deadline: Instant,
) -> (Uuid, u32) {
    let mut body = order_body(n);
    body["client_order_id"] = json!(format!("{run}-{n}"));
    // Several symbols, so the load spreads over every partition.
    body["src_currency"] = json!(["USD", "GBP", "JPY", "CHF", "AUD", "CAD"][(n % 6) as usize]);
    let mut retries = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "order {n} not acknowledged within the budget"
        );
        let url = format!("{base}/orders");
        match client.post(url).json(&body).send().await {
            Ok(resp) if resp.status() == 202 => return (accepted_id(resp).await, retries),
            Ok(resp) => assert!(resp.status() == 503, "unexpected status {}", resp.status()),
            Err(_) => {} // the daemon was killed mid-request
        }
        retries += 1;
        // Pace retries while the daemon restarts.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn crash_and_count(engine: Engine) {
    let started = Instant::now();
    let deadline = started + BUDGET;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = settings(&bootstrap(), &dir.path().join("store"));
    cfg.store.engine = engine;
    if engine == Engine::Postgres {
        cfg.store.postgres_url = fresh_database("oms_crash").await;
        let store = oms::store::postgres::PostgresStore::connect(&cfg.store)
            .await
            .expect("pool");
        store.migrate().await.expect("migrate");
    }
    admin::create_topics(&cfg.broker).await.expect("topics");
    let port = free_port();
    let log = dir.path().join("oms.log");
    let args = serve_args(&cfg);

    let mut daemon = Some(OmsProcess::start(port, &args, &log).await);
    // Restarts reuse the port, so clients keep one address.
    let base: Arc<str> = daemon
        .as_ref()
        .map(|d| d.base.clone())
        .unwrap_or_default()
        .into();
    let next = Arc::new(AtomicU64::new(0));
    let run = format!("crash-{}", Uuid::now_v7().simple());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");

    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (client, base, next, run) = (client.clone(), base.clone(), next.clone(), run.clone());
        clients.spawn(async move {
            let mut acked = Vec::new();
            let mut retries = 0;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= ORDERS {
                    return (acked, retries);
                }
                let (id, r) = submit(&client, &base, &run, n, deadline).await;
                acked.push(id);
                retries += r;
            }
        });
    }

    // Kill at random moments spread over the load.
    let random = RandomState::new();
    let mut kills = 0;
    while kills < KILLS {
        let progress = next.load(Ordering::Relaxed);
        let target = (kills as u64 + 1) * ORDERS / (KILLS as u64 + 2)
            + random.hash_one(kills) % (ORDERS / 20);
        let reached = eventually(Duration::from_secs(120), || {
            let next = next.clone();
            async move { (next.load(Ordering::Relaxed) >= target).then_some(()) }
        })
        .await;
        assert!(reached.is_some(), "load stalled at {progress} orders");
        if let Some(d) = daemon.take() {
            d.kill9();
        }
        kills += 1;
        daemon = Some(OmsProcess::start(port, &args, &log).await);
    }
    let mut acked = BTreeSet::new();
    let mut retries = 0;
    while let Some(joined) = clients.join_next().await {
        let (ids, r) = joined.expect("client task");
        acked.extend(ids);
        retries += r;
    }
    drop(daemon.take());
    assert_eq!(
        acked.len() as u64,
        ORDERS,
        "every order acknowledged once per client_order_id"
    );
    let load_time = started.elapsed();

    // A final daemon (in-process, to read its store) catches up with the log.
    let app = TestApp::spawn(cfg.clone()).await;
    app.wait_caught_up(Duration::from_secs(120)).await;
    let records: i64 = log_end(&cfg.broker.bootstrap, &cfg.broker.topic)
        .values()
        .sum();
    let stored = app.store.count().await.expect("count");
    let mut missing = 0;
    for id in &acked {
        if app.store.get(*id).await.expect("get").is_none() {
            missing += 1;
        }
    }
    eprintln!(
        "crash test [{}]: {} orders acked, {kills} SIGKILL restarts, {retries} client retries, {records} records on the log, {stored} stored, lost = {missing}, duplicated = {}, load {load_time:.1?}, total {:.1?}",
        engine.as_str(),
        acked.len(),
        stored as i64 - acked.len() as i64,
        started.elapsed()
    );
    assert_eq!(missing, 0, "lost acknowledged orders");
    assert_eq!(stored, ORDERS, "each order stored exactly once");
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_is_exactly_once_under_kill_9() {
    crash_and_count(Engine::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_is_exactly_once_under_kill_9() {
    crash_and_count(Engine::Sled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_is_exactly_once_under_kill_9() {
    crash_and_count(Engine::Postgres).await;
}
