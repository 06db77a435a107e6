//! Broker hygiene owned by the project: the durable broker that every
//! script starts (`scripts/tansu.sh`: `just up`, the tests, the bench) has
//! the index tansu 0.6 lacks on its `header` table, from before it serves,
//! and tansu's own header lookup (`header_fetch.sql`, run for every record
//! it fetches) uses it instead of scanning the table.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Tansu, TestApp, accepted_id, order_body, settings};

/// `EXPLAIN QUERY PLAN` of tansu-storage 0.6.0's `header_fetch.sql`.
const PLAN: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print([r[0] for r in db.execute("select name from sqlite_master where type = 'index' and tbl_name = 'header'")])
for row in db.execute("""explain query plan
select h.k, h.v
from header h
join record r on h.topition = r.topition and h.offset_id = r.offset_id
join topition tp on tp.id = r.topition
join topic t on tp.topic = t.id
join cluster c on t.cluster = c.id
where c.name = 'tansu' and t.name = 'orders' and tp.partition = 0 and r.offset_id = 1"""):
    print(row[-1])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_durable_broker_serves_with_the_header_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tansu = Tansu::start(&dir.path().join("broker"));
    let app = TestApp::spawn(settings(&tansu.bootstrap(), &dir.path().join("store"))).await;
    let id = accepted_id(app.post_json(&order_body(1)).await).await;
    app.wait_for_order(id, Duration::from_secs(20))
        .await
        .expect("the order is stored through the broker");

    let out = Command::new("python3")
        .args(["-c", PLAN])
        .arg(tansu.database())
        .output()
        .expect("python3");
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(plan.contains("header_topition_offset"), "no index: {plan}");
    let header_step = plan
        .lines()
        .find(|l| l.contains(" h ") || l.contains("header"))
        .unwrap_or_default();
    assert!(
        plan.lines()
            .any(|l| l.contains("SEARCH h USING") && l.contains("header_topition_offset")),
        "the header lookup scans instead of using the index ({header_step}):\n{plan}"
    );
    app.stop().await.expect("clean stop");
}

/// `migrate.partitions` applies when the orders topic is created; an existing
/// topic keeps its count (`just up` makes one partition for one instance),
/// and `oms migrate` says so, warning when group mode would leave instances
/// without a partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_reports_the_partitions_an_existing_topic_keeps() {
    use oms::broker::admin::{TopicOutcome, create_topics_with};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = settings(&common::bootstrap(), &dir.path().join("store"));
    cfg.migrate.partitions = 1;
    let created = create_topics_with(&cfg.broker, &cfg.migrate)
        .await
        .expect("create the topics");
    assert!(
        created.iter().all(|(_, o)| *o == TopicOutcome::Created),
        "{created:?}"
    );
    cfg.migrate.partitions = 3;
    let again = create_topics_with(&cfg.broker, &cfg.migrate)
        .await
        .expect("migrate again");
    let orders = again
        .iter()
        .find(|(topic, _)| *topic == cfg.broker.topic)
        .map(|(_, outcome)| outcome.clone());
    assert_eq!(orders, Some(TopicOutcome::AlreadyExisted { partitions: 1 }));

    let out = Command::new(env!("CARGO_BIN_EXE_oms"))
        .args(["migrate", "--bootstrap", &cfg.broker.bootstrap])
        .args(["--topic", &cfg.broker.topic])
        .args(["--dlq-topic", &cfg.broker.dlq_topic])
        .args(["--trades-topic", &cfg.broker.trades_topic])
        .env("OMS__MIGRATE__PARTITIONS", "3")
        .output()
        .expect("oms migrate");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains(&format!(
            "topic {} already exists (partitions: 1)",
            cfg.broker.topic
        )),
        "{stdout}"
    );
    assert!(
        stderr.contains("keeps its partition count, 1 (migrate.partitions = 3"),
        "{stderr}"
    );
}
