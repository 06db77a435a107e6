//! A store that outlives its log (issue #18's cause).
//!
//! A broker that keeps its log in memory (tansu `memory://`, the
//! benchmark's) restarts empty; a durable one loses its database, or the
//! topic is deleted and created again — while the store keeps the offsets
//! it read from the old log. The new log's offsets start again at 0. Before
//! the fix the consumer resumed at the stored offsets: past the end of a
//! shorter new log it waited for ever (tansu answers a fetch past the end
//! with nothing), and it skipped every new record below them — acknowledged
//! orders never stored, nothing logged, `consumer_lag` 0, `/readyz` 200.
//! (Reproduced with the code of 2a98356: 8,000 orders acknowledged on a
//! fresh memory broker, 1,998 stored; the 0 / 11,996 / 19,961 /
//! 19,991 of 40,000 are 40,000 minus the offset a previous run left.)
//!
//! Now the consumer checks, per partition, that the log is the one the
//! store was built from — its end (fetch responses' high watermark) must
//! not be below the stored offset, and the orders just before the stored
//! offset must be in the store — and when it is not, it says so, forgets
//! that partition's offset in the store and reads the new log from its
//! start. Each case runs on both broker engines and on an embedded and a
//! shared store.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{BrokerEngine, Tansu, TestApp, accepted_id, eventually, order_body, settings};
use oms::config::{Engine, Settings};
use uuid::Uuid;

/// Orders on the old log: the offset the store keeps.
const OLD: u64 = 300;

/// How the new log reaches the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NewLog {
    /// Orders arrive through oms after it started: the log is shorter than
    /// the stored offset (what the runs did).
    Shorter,
    /// The new log already holds more records than the stored offset when
    /// oms starts: only the orders before the stored offset tell the logs
    /// apart.
    Longer,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_new_log_on_the_memory_broker_is_read_whole_into_postgres() {
    replaced_log(BrokerEngine::Memory, Engine::Postgres, NewLog::Shorter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_new_log_on_the_durable_broker_is_read_whole_into_redb() {
    replaced_log(BrokerEngine::Sqlite, Engine::Redb, NewLog::Shorter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_new_log_on_the_memory_broker_is_read_whole_into_redb() {
    replaced_log(BrokerEngine::Memory, Engine::Redb, NewLog::Longer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_new_log_on_the_durable_broker_is_read_whole_into_postgres() {
    replaced_log(BrokerEngine::Sqlite, Engine::Postgres, NewLog::Longer).await;
}

/// The memory engine: a snapshot newer than the log it meets is noticed
/// like any store's offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_new_log_on_the_memory_broker_is_read_whole_into_memory() {
    replaced_log(BrokerEngine::Memory, Engine::Memory, NewLog::Shorter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_new_log_on_the_durable_broker_is_read_whole_into_memory() {
    replaced_log(BrokerEngine::Sqlite, Engine::Memory, NewLog::Longer).await;
}

async fn replaced_log(broker: BrokerEngine, engine: Engine, new_log: NewLog) {
    let broker_dir = tempfile::tempdir().expect("tempdir");
    let store_dir = tempfile::tempdir().expect("tempdir");
    let mut tansu = Tansu::start_with(broker_dir.path(), broker);
    let mut cfg = settings(&tansu.bootstrap(), store_dir.path());
    common::use_engine(&mut cfg, engine, "replaced").await;
    // A rewind shorter than the old log, so the consumer resumes inside
    // the new log's records when it is longer (not at its start).
    cfg.consumer.resume_rewind = 50;

    let app = TestApp::spawn(cfg.clone()).await;
    let mut old = BTreeSet::new();
    for n in 0..OLD {
        old.insert(app.accept(&order_body(n)).await);
    }
    app.wait_caught_up(Duration::from_secs(60)).await;
    let stored_before = app.store.offsets(&cfg.broker.topic).await.expect("offsets");
    assert_eq!(stored_before.values().sum::<i64>(), OLD as i64);
    app.stop().await.expect("clean stop");

    // The log is replaced; the store keeps its offsets.
    tansu.stop();
    if broker == BrokerEngine::Sqlite {
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{}{suffix}", tansu.database().display());
            let _ = std::fs::remove_file(file);
        }
    }
    tansu.restart();
    oms::broker::admin::create_topics(&cfg.broker)
        .await
        .expect("topics on the new log");

    let (app, new) = match new_log {
        NewLog::Shorter => {
            let app = TestApp::spawn(cfg.clone()).await;
            let mut new = BTreeSet::new();
            for n in 0..OLD / 3 {
                new.insert(accepted_id(app.post_json(&order_body(n)).await).await);
            }
            (app, new)
        }
        NewLog::Longer => {
            let new = produce_directly(&cfg, OLD + OLD / 3).await;
            (TestApp::spawn(cfg.clone()).await, new)
        }
    };

    let all: Vec<Uuid> = old.iter().chain(&new).copied().collect();
    let stored = eventually(Duration::from_secs(60), || async {
        let known = app.store.known(all.clone()).await.ok()?;
        (known.len() == all.len()).then_some(())
    })
    .await;
    if stored.is_none() {
        let known = app.store.known(all.clone()).await.expect("known");
        panic!(
            "{} of {} orders on the new log and {} of {} on the old one never reached the store (store offsets {:?})",
            new.iter().filter(|id| !known.contains(id)).count(),
            new.len(),
            old.iter().filter(|id| !known.contains(id)).count(),
            old.len(),
            app.store.offsets(&cfg.broker.topic).await
        );
    }
    assert_eq!(
        app.store.count().await.expect("count"),
        (old.len() + new.len()) as u64,
        "every order of both logs once"
    );
    assert_eq!(
        app.metric_sum("consumer_log_replaced_total").await,
        Some(1.0),
        "the replaced log is reported once"
    );
    app.wait_caught_up(Duration::from_secs(30)).await;
    let settled = eventually(Duration::from_secs(30), || async {
        let lag = app.metric_sum("consumer_lag{").await?;
        let ready = app.get("/readyz").await.status() == 200;
        (lag == 0.0 && ready).then_some(())
    })
    .await;
    assert!(settled.is_some(), "lag back to 0 and /readyz 200");
    app.stop().await.expect("clean stop");
}

/// Writes `n` orders of one symbol straight to the log (oms not running)
/// and returns their ids.
async fn produce_directly(cfg: &Settings, n: u64) -> BTreeSet<Uuid> {
    use oms::domain::NewOrder;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cfg.broker.bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let mut ids = BTreeSet::new();
    for k in 0..n {
        let order = NewOrder::from_value(order_body(k))
            .and_then(|o| o.accept(chrono::Utc::now()))
            .expect("valid order");
        producer
            .send(
                FutureRecord::to(&cfg.broker.topic)
                    .key(&order.symbol())
                    .payload(&order.to_record()),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("acknowledged");
        ids.insert(order.id);
    }
    ids
}
