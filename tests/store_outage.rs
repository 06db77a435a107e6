//! Transient failures wait, they do not drop: Postgres stopped for ~10 s under
//! load. The consumer retries with capped backoff, `/readyz` reports the
//! degraded store, nothing is dead-lettered or skipped, and once Postgres is
//! back every acknowledged order is stored exactly once.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{PrivatePostgres, TestApp, bootstrap, eventually, log_end, order_body, settings};
use oms::config::Engine;
use oms::store::postgres::PostgresStore;
use serde_json::Value;
use uuid::Uuid;

/// How long Postgres stays down.
const OUTAGE: Duration = Duration::from_secs(10);

/// Sum of `consumer_lag` over partitions, as `/metrics` shows it.
async fn lag(app: &TestApp) -> Option<f64> {
    let text = app.get("/metrics").await.text().await.ok()?;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("consumer_lag{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

async fn submit_for(
    app: &TestApp,
    duration: Duration,
    from: u64,
    acked: &mut BTreeSet<Uuid>,
) -> u64 {
    let until = Instant::now() + duration;
    let mut n = from;
    while Instant::now() < until {
        acked.insert(app.accept(&order_body(n)).await);
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_ten_seconds_loses_nothing() {
    let pg = PrivatePostgres::start_new();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = settings(&bootstrap(), dir.path());
    cfg.store.engine = Engine::Postgres;
    cfg.store.postgres_url = pg.url();
    cfg.store.postgres_timeout_ms = 1_000;
    PostgresStore::connect(&cfg.store)
        .await
        .expect("pool")
        .migrate()
        .await
        .expect("migrate");
    let app = TestApp::spawn(cfg.clone()).await;

    let mut acked = BTreeSet::new();
    let n = submit_for(&app, Duration::from_secs(2), 0, &mut acked).await;
    let last = *acked.last().expect("acked");
    app.wait_for_order(last, Duration::from_secs(10))
        .await
        .expect("stored before the outage");

    pg.stop();
    let before_outage = n;
    let outage_started = Instant::now();
    // Orders keep being accepted: the log is up, only the store is down.
    let mut n = submit_for(&app, Duration::from_millis(500), n, &mut acked).await;
    let degraded = eventually(Duration::from_secs(15), || async {
        let resp = app.get("/readyz").await;
        if resp.status() != 503 {
            return None;
        }
        let body: Value = resp.json().await.ok()?;
        (body["store"]["ok"] == false).then_some(body)
    })
    .await
    .expect("/readyz reports the store outage");
    assert_eq!(degraded["status"], "degraded");
    let mut lag_during_outage = 0.0;
    while outage_started.elapsed() < OUTAGE {
        n = submit_for(&app, Duration::from_millis(250), n, &mut acked).await;
        lag_during_outage = lag(&app).await.unwrap_or_default();
    }
    assert!(
        lag_during_outage > 0.0,
        "consumer_lag grows while the store is down"
    );
    pg.start();

    let ready = eventually(Duration::from_secs(30), || async {
        (app.get("/readyz").await.status() == 200).then_some(())
    })
    .await;
    assert!(
        ready.is_some(),
        "ready again within 30 s of Postgres' return"
    );
    app.wait_caught_up(Duration::from_secs(60)).await;
    let lag_gone = eventually(Duration::from_secs(20), || async {
        (lag(&app).await == Some(0.0)).then_some(())
    })
    .await;
    assert!(lag_gone.is_some(), "consumer_lag returns to 0");
    assert_eq!(
        app.store.count().await.expect("count"),
        acked.len() as u64,
        "exactly once"
    );
    for id in &acked {
        assert!(
            app.store.get(*id).await.expect("get").is_some(),
            "order {id} stored"
        );
    }
    let dlq = log_end(&cfg.broker.bootstrap, &cfg.broker.dlq_topic);
    assert_eq!(
        dlq.values().sum::<i64>(),
        0,
        "an outage is not a reason to dead-letter"
    );
    eprintln!(
        "store outage: {} orders acked ({} during a {:?} outage, lag up to {lag_during_outage}), all stored once",
        acked.len(),
        n - before_outage,
        OUTAGE
    );
    app.stop().await.expect("clean stop");
}
