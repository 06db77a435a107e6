//! The durable broker stopped for 30 s under load, then started again: oms
//! answers `503` meanwhile and says why on `/readyz`, serves again by itself
//! once the broker is back (no oms restart), and every acknowledged order is
//! stored exactly once — for each engine.

mod common;

use std::time::{Duration, Instant};

use common::{Load, Tansu, TestApp, assert_broker_serves, eventually, settings, tally, use_engine};
use oms::config::Engine;
use serde_json::Value;

const OUTAGE: Duration = Duration::from_secs(30);
const CLIENTS: usize = 8;

async fn broker_outage(engine: Engine) {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tansu = Tansu::start(&dir.path().join("broker"));
    let mut cfg = settings(&tansu.bootstrap(), &dir.path().join("store"));
    use_engine(&mut cfg, engine, "oms_broker_outage").await;
    let app = TestApp::spawn(cfg.clone()).await;
    let load = Load::start(&app.base, CLIENTS, started + Duration::from_secs(300));
    load.wait_submitted(1_000, Duration::from_secs(60)).await;

    tansu.stop();
    let outage = Instant::now();
    let degraded = eventually(Duration::from_secs(15), || async {
        let resp = app.get("/readyz").await;
        if resp.status() != 503 {
            return None;
        }
        let body: Value = resp.json().await.ok()?;
        (body["broker"]["ok"] == false).then_some(body)
    })
    .await
    .expect("/readyz reports the broker outage");
    let during = load.submitted();
    tokio::time::sleep(OUTAGE.saturating_sub(outage.elapsed())).await;
    tansu.restart();
    let back = Instant::now();

    // Serving again by itself: orders are acknowledged after the restart.
    load.wait_submitted(during + 1_000, Duration::from_secs(120))
        .await;
    let recovered = back.elapsed();
    let ready = eventually(Duration::from_secs(30), || async {
        (app.get("/readyz").await.status() == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "ready again after the broker's return");
    let result = load.finish().await;
    let counted = tally(&app, &result.acked).await;
    eprintln!(
        "broker outage [{}]: {counted}; {:?} outage, /readyz said {:?}, {} 503s, 1,000 more orders acknowledged {recovered:.1?} after the broker's return",
        engine.as_str(),
        OUTAGE,
        degraded["broker"]["detail"],
        result.unavailable
    );
    assert_eq!(counted.lost, 0, "lost acknowledged orders: {counted}");
    assert_eq!(counted.duplicated, 0, "exactly once: {counted}");
    app.stop().await.expect("clean stop");
    assert_broker_serves(&cfg.broker.bootstrap, &cfg.broker.dlq_topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_survives_a_30_s_broker_outage() {
    broker_outage(Engine::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_survives_a_30_s_broker_outage() {
    broker_outage(Engine::Sled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_survives_a_30_s_broker_outage() {
    broker_outage(Engine::Postgres).await;
}
