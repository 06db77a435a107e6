//! Transient failures wait, they do not drop: a shared store — Postgres
//! (`pg_ctl stop -m immediate`) and Redis (SIGKILL, AOF every second) —
//! crashes several times under load, at different moments and for different
//! lengths, on both broker engines. Throughout, orders keep being accepted,
//! `/readyz` tells the truth (the store check fails while the store is
//! down, and a consumer that stops storing while
//! records wait is reported), `consumer_lag` is above 0 while acknowledged
//! orders are missing, nothing is dead-lettered, and afterwards every
//! acknowledged order is stored exactly once with the lag back at 0.

mod common;

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    BrokerEngine, Load, PrivatePostgres, PrivateRedis, Tansu, TestApp, eventually, log_end,
    migrate_postgres, settings, tally, use_redis,
};
use oms::config::{Engine, Settings};
use serde_json::Value;

const OUTAGES: usize = 4;
const CLIENTS: usize = 16;

/// Sum of `consumer_lag` over partitions, as `/metrics` shows it.
async fn lag(app: &TestApp) -> Option<f64> {
    app.metric_sum("consumer_lag{").await
}

/// A store server of the test's own, to crash and start again.
enum Shared {
    Postgres(PrivatePostgres),
    Redis(PrivateRedis),
}

impl Shared {
    /// Starts the server and points `cfg` at it, with short timeouts.
    async fn start(engine: Engine, cfg: &mut Settings) -> Shared {
        match engine {
            Engine::Redis => {
                let redis = PrivateRedis::start_new();
                use_redis(cfg, &redis.url(), "oms-outage");
                cfg.store.redis.timeout_ms = 1_000;
                Shared::Redis(redis)
            }
            _ => {
                let pg = PrivatePostgres::start_new();
                cfg.store.url = pg.url().parse().expect("a postgres URL");
                cfg.store.postgres.timeout_ms = 1_000;
                migrate_postgres(cfg).await;
                Shared::Postgres(pg)
            }
        }
    }

    fn stop(&self) {
        match self {
            Shared::Postgres(pg) => pg.stop(),
            Shared::Redis(redis) => redis.stop(),
        }
    }

    fn start_again(&self) {
        match self {
            Shared::Postgres(pg) => pg.start(),
            Shared::Redis(redis) => redis.start(),
        }
    }
}

/// One `/readyz` answer, and whether the store was up when it was asked.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    store_up: bool,
    status: u16,
    body: Value,
}

async fn outages_lose_nothing(engine: Engine, broker: BrokerEngine) {
    let started = Instant::now();
    let random = RandomState::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let tansu = Tansu::start_with(&dir.path().join("broker"), broker);
    let mut cfg = settings(&tansu.bootstrap(), dir.path());
    let store = Shared::start(engine, &mut cfg).await;
    cfg.consumer.stall_after_ms = 5_000;
    let app = Arc::new(TestApp::spawn(cfg.clone()).await);
    let load = Load::start(&app.base, CLIENTS, started + Duration::from_secs(400));

    // `/readyz` sampled every 200 ms for the whole run.
    let store_up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let sampler = {
        let (app, store_up, samples) = (app.clone(), store_up.clone(), samples.clone());
        tokio::spawn(async move {
            loop {
                let up = store_up.load(std::sync::atomic::Ordering::SeqCst);
                let resp = app.get("/readyz").await;
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap_or_default();
                // Only a sample whose whole request saw one Postgres state counts.
                if up == store_up.load(std::sync::atomic::Ordering::SeqCst) {
                    samples.lock().unwrap().push(Sample {
                        at: started.elapsed(),
                        store_up: up,
                        status,
                        body,
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let mut outage_report = Vec::new();
    for n in 0..OUTAGES {
        // Different moments and lengths: 1–4 s of load, then 3–12 s down.
        let before = Duration::from_millis(1_000 + random.hash_one((n, 0)) % 3_000);
        let length = Duration::from_millis(3_000 + random.hash_one((n, 1)) % 9_000);
        tokio::time::sleep(before).await;
        store_up.store(false, std::sync::atomic::Ordering::SeqCst);
        store.stop();
        let down = Instant::now();
        // Orders keep coming while the store is down (handed out = the one
        // before was acknowledged): only then must the lag show them.
        load.wait_submitted(
            load.submitted() + 2 * CLIENTS as u64,
            Duration::from_secs(30),
        )
        .await;
        let mut max_lag = 0.0f64;
        while down.elapsed() < length || max_lag == 0.0 && down.elapsed() < length * 3 {
            max_lag = max_lag.max(lag(&app).await.unwrap_or_default());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Up from the moment it starts: the server accepts connections
        // before its start returns, and a store that answers then is not
        // lying.
        store_up.store(true, std::sync::atomic::Ordering::SeqCst);
        store.start_again();
        outage_report.push(format!(
            "{:.1} s (lag up to {max_lag})",
            length.as_secs_f64()
        ));
        assert!(
            max_lag > 0.0,
            "outage {n}: consumer_lag stayed 0 while orders could not be stored"
        );
    }
    load.wait_submitted(load.submitted() + 500, Duration::from_secs(60))
        .await;
    let result = load.finish().await;

    let ready = eventually(Duration::from_secs(60), || async {
        (app.get("/readyz").await.status() == 200).then_some(())
    })
    .await;
    let counted = tally(&app, &result.acked).await;
    let lag_gone = eventually(Duration::from_secs(20), || async {
        (lag(&app).await == Some(0.0)).then_some(())
    })
    .await;
    sampler.abort();
    let _ = sampler.await;
    let stalls = app
        .metric_sum("consumer_stalls_total")
        .await
        .unwrap_or_default();
    let samples = samples.lock().unwrap().clone();
    eprintln!(
        "store outages [{} on tansu {}]: {counted}; {OUTAGES} outages: {}; {} readyz samples; watchdog restarts {stalls}",
        engine.as_str(),
        broker.as_str(),
        outage_report.join(", "),
        samples.len()
    );
    assert!(ready.is_some(), "ready again once the store is back");
    assert_eq!(counted.lost, 0, "lost acknowledged orders: {counted}");
    assert_eq!(counted.duplicated, 0, "exactly once: {counted}");
    assert!(lag_gone.is_some(), "consumer_lag returns to 0");
    // Truthful throughout: never ready while the store is down (after the
    // client noticed, 2 s at most), and a store failure names the store.
    let lying: Vec<_> = samples
        .windows(10)
        .filter(|w| w.iter().all(|s| !s.store_up))
        .map(|w| &w[9])
        .filter(|s| s.status == 200 || s.body["store"]["ok"] != false)
        .map(|s| (s.at, s.status, s.body.clone()))
        .collect();
    assert!(
        lying.is_empty(),
        "/readyz claimed a healthy store while it was down: {lying:?}"
    );
    let dlq = log_end(&cfg.broker.bootstrap, &cfg.broker.dlq_topic);
    assert_eq!(
        dlq.values().sum::<i64>(),
        0,
        "an outage is not a reason to dead-letter"
    );
    Arc::try_unwrap(app)
        .ok()
        .expect("the sampler is gone")
        .stop()
        .await
        .expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outages_lose_nothing_on_the_durable_broker() {
    outages_lose_nothing(Engine::Postgres, BrokerEngine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outages_lose_nothing_on_the_memory_broker() {
    outages_lose_nothing(Engine::Postgres, BrokerEngine::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outages_lose_nothing_on_the_durable_broker() {
    outages_lose_nothing(Engine::Redis, BrokerEngine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outages_lose_nothing_on_the_memory_broker() {
    outages_lose_nothing(Engine::Redis, BrokerEngine::Memory).await;
}
