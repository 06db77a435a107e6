//! Failed events go back to the log: records the consumer cannot store land
//! in the dead-letter topic unchanged, with headers saying why, without
//! blocking the good records around them; `oms dlq replay` re-drives them,
//! exactly once after a fix, and never in an endless loop.

mod common;

use std::time::Duration;

use common::{TestApp, bootstrap, eventually, log_end, order_body, settings, use_engine};
use oms::broker::dlq::{
    self, DlqAddress, DlqEntry, DlqError, ReplayError, ReplayOutcome, Selection,
};
use oms::config::{BrokerSettings, Engine};
use oms::domain::NewOrder;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use uuid::Uuid;

/// Produces raw bytes straight to the orders topic, as a foreign writer would.
async fn produce_raw(broker: &BrokerSettings, key: &str, value: &[u8]) -> (i32, i64) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .expect("producer");
    let delivered = producer
        .send(
            FutureRecord::to(&broker.topic).key(key).payload(value),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");
    (delivered.partition, delivered.offset)
}

fn valid_record(n: i64) -> (Uuid, Vec<u8>) {
    let order = NewOrder::from_value(serde_json::json!({
        "src_currency": "USD",
        "dst_currency": "EUR",
        "side": "buy",
        "price": "1.5",
        "quantity": "2",
        "channel": 1,
        "description": format!("raw {n}"),
    }))
    // Written as oms writes an order of the harness' account, so the API
    // reads it back for that account.
    .and_then(|o| o.accept_for(common::TEST_ACCOUNT.parse().ok(), chrono::Utc::now()))
    .expect("valid");
    (order.id, order.to_record())
}

async fn dlq_entries(broker: &BrokerSettings, at_least: usize) -> Vec<DlqEntry> {
    let found = eventually(Duration::from_secs(20), || {
        let broker = broker.clone();
        async move {
            let page = tokio::task::spawn_blocking(move || dlq::list(&broker, 1_000, None))
                .await
                .ok()?
                .ok()?;
            (page.entries.len() >= at_least).then_some(page.entries)
        }
    })
    .await;
    found.unwrap_or_else(|| panic!("{at_least} dead letter(s) within 20 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_good_ones_around_them_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(settings(&bootstrap(), dir.path())).await;
    let broker = app.settings.broker.clone();

    let mut good = Vec::new();
    let mut poison = Vec::new();
    let (id, bytes) = valid_record(1);
    produce_raw(&broker, "USD-EUR", &bytes).await;
    good.push(id);
    let junk = b"{\"this is\": not json".to_vec();
    poison.push(("decode", produce_raw(&broker, "USD-EUR", &junk).await, junk));
    let (id, bytes) = valid_record(2);
    produce_raw(&broker, "USD-EUR", &bytes).await;
    good.push(id);
    let mut v2: serde_json::Value = serde_json::from_slice(&valid_record(3).1).expect("json");
    v2["v"] = json!(2);
    let v2 = v2.to_string().into_bytes();
    poison.push(("decode", produce_raw(&broker, "USD-EUR", &v2).await, v2));
    let mut negative: serde_json::Value = serde_json::from_slice(&valid_record(4).1).expect("json");
    negative["price"] = json!("-1");
    let negative = negative.to_string().into_bytes();
    poison.push((
        "validate",
        produce_raw(&broker, "USD-EUR", &negative).await,
        negative,
    ));
    let (id, bytes) = valid_record(5);
    produce_raw(&broker, "USD-EUR", &bytes).await;
    good.push(id);

    for id in &good {
        app.wait_for_order(*id, Duration::from_secs(20))
            .await
            .expect("good records are stored");
    }
    let entries = dlq_entries(&broker, poison.len()).await;
    assert_eq!(entries.len(), poison.len());
    eprintln!(
        "dead letters: oms dlq list --bootstrap {} --dlq-topic {}",
        broker.bootstrap, broker.dlq_topic
    );
    for (entry, (kind, (partition, offset), bytes)) in entries.iter().zip(&poison) {
        assert_eq!(entry.kind.as_deref(), Some(*kind));
        assert_eq!(entry.origin_topic.as_deref(), Some(broker.topic.as_str()));
        assert_eq!(entry.origin_partition, Some(*partition));
        assert_eq!(entry.origin_offset, Some(*offset));
        assert_eq!(entry.key.as_deref(), Some("USD-EUR"), "key unchanged");
        assert_eq!(entry.value.as_bytes(), bytes.as_slice(), "bytes unchanged");
        assert!(
            entry.error.as_deref().is_some_and(|e| !e.is_empty()),
            "a reason"
        );
        assert!(entry.failed_at.is_some(), "a time");
        assert_eq!(entry.replays, 0);
    }
    // The poison records did not hold the partition back.
    let end = log_end(&broker.bootstrap, &broker.topic);
    assert_eq!(
        app.store.offsets(&broker.topic).await.expect("offsets"),
        end
    );
    assert_eq!(app.store.count().await.expect("count"), good.len() as u64);
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains("dlq_messages_total{reason=\"decode\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("dlq_messages_total{reason=\"validate\"} 1"));
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_store_refuses_is_replayed_once_the_cause_is_fixed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = settings(&bootstrap(), dir.path());
    use_engine(&mut cfg, Engine::Postgres, "oms_dlq").await;
    // An operator's rule the stream does not know about: the store refuses these rows.
    let admin = sqlx::PgPool::connect(cfg.store.url.as_str())
        .await
        .expect("connect");
    sqlx::query(
        "ALTER TABLE orders ADD CONSTRAINT no_blocked CHECK (description <> 'blocked by policy')",
    )
    .execute(&admin)
    .await
    .expect("constraint");
    let app = TestApp::spawn(cfg.clone()).await;

    let before = app.accept(&order_body(1)).await;
    let mut blocked = order_body(2);
    blocked["description"] = json!("blocked by policy");
    let refused = app.accept(&blocked).await;
    let after = app.accept(&order_body(3)).await;
    for id in [before, after] {
        app.wait_for_order(id, Duration::from_secs(20))
            .await
            .expect("stored around the refused row");
    }
    let entries = dlq_entries(&cfg.broker, 1).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].kind.as_deref(), Some("store"));
    assert!(
        entries[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("no_blocked")),
        "{:?}",
        entries[0].error
    );
    assert!(app.store.get(refused).await.expect("get").is_none());

    // Fix the cause, then re-drive: stored exactly once, even if replayed twice.
    sqlx::query("ALTER TABLE orders DROP CONSTRAINT no_blocked")
        .execute(&admin)
        .await
        .expect("drop");
    for _ in 0..2 {
        let at = DlqAddress {
            partition: Some(entries[0].at.partition),
            offset: entries[0].at.offset,
        };
        let summary = dlq::replay(
            &cfg.broker,
            Selection::At(vec![at]),
            3,
            false,
            |_, _, _, _| {},
        )
        .await
        .expect("replay");
        assert_eq!(summary.replayed, 1, "{summary:?}");
    }
    let stored = app
        .wait_for_order(refused, Duration::from_secs(20))
        .await
        .expect("stored after the fix");
    assert_eq!(stored["description"], "blocked by policy");
    app.wait_caught_up(Duration::from_secs(20)).await;
    assert_eq!(app.store.count().await.expect("count"), 3, "exactly once");
    assert_eq!(
        dlq_entries(&cfg.broker, 1).await.len(),
        1,
        "nothing new in the DLQ"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_still_bad_record_returns_to_the_dlq_until_the_replay_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(settings(&bootstrap(), dir.path())).await;
    let broker = app.settings.broker.clone();
    let max = 2;
    produce_raw(&broker, "USD-EUR", b"not an order").await;
    dlq_entries(&broker, 1).await;

    // Each replay fails again and comes back with its count incremented.
    for round in 1..=max {
        let summary = dlq::replay(&broker, Selection::AllPending, max, false, |_, _, _, _| {})
            .await
            .expect("replay");
        assert_eq!(summary.total(), 1, "only the records not replayed yet");
        assert_eq!(summary.replayed, 1, "{summary:?}");
        let entries = dlq_entries(&broker, 1 + round as usize).await;
        assert_eq!(entries.last().map(|e| e.replays), Some(round));
    }
    // At the limit it stays put: no new record on the log, none in the DLQ.
    let outcomes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = outcomes.clone();
    let summary = dlq::replay(
        &broker,
        Selection::AllPending,
        max,
        false,
        move |_, o, _, _| seen.lock().expect("lock").push(o.clone()),
    )
    .await
    .expect("replay");
    assert_eq!(summary.over_limit, 1, "{summary:?}");
    assert_eq!(
        *outcomes.lock().expect("lock"),
        vec![ReplayOutcome::OverLimit { max }]
    );
    let nothing_left = dlq::replay(&broker, Selection::AllPending, max, false, |_, _, _, _| {})
        .await
        .expect("replay");
    assert_eq!(
        nothing_left.total(),
        0,
        "the over-limit record is not offered again by --all"
    );
    let orders_on_log: i64 = log_end(&broker.bootstrap, &broker.topic).values().sum();
    assert_eq!(orders_on_log, 1 + i64::from(max));
    assert_eq!(dlq_entries(&broker, 1).await.len(), 1 + max as usize);
    app.stop().await.expect("clean stop");
}

/// A dead-letter topic created elsewhere with several partitions (as an
/// operator of Redpanda may do): every record is listed, page by page, and
/// replayed, whatever partition it landed in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_of_several_partitions_is_listed_in_pages_and_replayed_whole() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    const POISON: usize = 12;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = settings(&bootstrap(), dir.path());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.broker.bootstrap)
        .create()
        .expect("admin");
    admin
        .create_topics(
            &[NewTopic::new(
                &cfg.broker.dlq_topic,
                3,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .expect("create the DLQ topic")
        .into_iter()
        .for_each(|r| {
            r.expect("topic created");
        });
    let app = TestApp::spawn(cfg).await;
    let broker = app.settings.broker.clone();
    for n in 0..POISON {
        // Different keys: the dead letters spread over the partitions.
        produce_raw(&broker, &format!("K{n}-EUR"), b"not an order").await;
    }
    let all = dlq_entries(&broker, POISON).await;
    assert_eq!(all.len(), POISON);
    let partitions: std::collections::BTreeSet<i32> = all.iter().map(|e| e.at.partition).collect();
    assert!(partitions.len() > 1, "spread over {partitions:?}");

    // Pages of 5: every record exactly once, in order.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let b = broker.clone();
        let page = tokio::task::spawn_blocking(move || dlq::list(&b, 5, after))
            .await
            .expect("task")
            .expect("page");
        assert!(page.entries.len() <= 5);
        paged.extend(page.entries.iter().map(|e| e.at));
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, all.iter().map(|e| e.at).collect::<Vec<_>>());

    // A bare offset is ambiguous here.
    let err = dlq::replay(
        &broker,
        Selection::At(vec!["0".parse().expect("address")]),
        3,
        false,
        |_, _, _, _| {},
    )
    .await
    .expect_err("ambiguous");
    assert!(
        matches!(
            err,
            ReplayError::Read(DlqError::AmbiguousOffset { partitions: 3, .. })
        ),
        "{err}"
    );

    let dry = dlq::replay(&broker, Selection::AllPending, 3, true, |_, _, _, _| {})
        .await
        .expect("dry run");
    assert_eq!(dry.would_replay, POISON);
    let done = dlq::replay(&broker, Selection::AllPending, 3, false, |_, _, _, _| {})
        .await
        .expect("replay");
    assert_eq!(done.replayed, POISON);
    // The replayed records fail again and come back as new dead letters;
    // `--all` then offers only those: every partition's progress was kept.
    dlq_entries(&broker, 2 * POISON).await;
    let counts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = counts.clone();
    let again = dlq::replay(
        &broker,
        Selection::AllPending,
        3,
        true,
        move |e, _, _, _| seen.lock().expect("lock").push(e.replays),
    )
    .await
    .expect("dry run");
    assert_eq!(again.would_replay, POISON, "{again:?}");
    assert!(counts.lock().expect("lock").iter().all(|r| *r == 1));
    app.stop().await.expect("clean stop");
}
