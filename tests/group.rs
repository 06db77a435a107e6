//! Several oms instances on one topic and one Postgres, in group mode: they
//! share the partitions through the consumer group (cooperative-sticky,
//! static membership), each resuming a partition from the store's offset,
//! and every batch is fenced by the offsets its writer expects. Under load,
//! one instance is killed with SIGKILL and started again under the same
//! instance id, a fourth joins and one leaves gracefully: every
//! acknowledged order is stored exactly once, the lag returns to 0, and the
//! time each rebalance took is reported.

mod common;

use std::time::{Duration, Instant};

use common::{
    Load, OmsProcess, Tansu, TestApp, eventually, free_port, serve_args, settings, tally,
    use_engine,
};
use oms::broker::admin;
use oms::config::{ConsumerMode, Engine};

const CLIENTS: usize = 8;

/// `consumer_assigned_partitions` of one instance.
async fn owned(base: &str) -> Option<u32> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("consumer_assigned_partitions"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u32)
}

/// Waits until the instances own all `partitions` between them, each at
/// most once; returns how long that took.
async fn settled(bases: &[String], partitions: u32) -> Duration {
    let started = Instant::now();
    let done = eventually(Duration::from_secs(90), || async {
        let mut total = 0;
        for base in bases {
            total += owned(base).await?;
        }
        (total == partitions).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "the group did not settle on {partitions} partitions within 90 s"
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_partitions_through_kill_add_and_remove() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let tansu = Tansu::start(&dir.path().join("broker"));
    let mut cfg = settings(&tansu.bootstrap(), &dir.path().join("store"));
    use_engine(&mut cfg, Engine::Postgres, "oms_group").await;
    admin::create_topics(&cfg.broker).await.expect("topics");
    let partitions = u32::try_from(cfg.broker.partitions).expect("partitions");
    let args = serve_args(&cfg);
    let group = format!("{}-group", cfg.broker.topic);
    let start = |n: usize, port: u16| {
        let (args, group, log) = (
            args.clone(),
            group.clone(),
            dir.path().join(format!("oms-{n}.log")),
        );
        async move {
            let id = format!("instance-{n}");
            let env = [
                ("OMS__CONSUMER__MODE", "group"),
                ("OMS__CONSUMER__GROUP_ID", group.as_str()),
                ("OMS__CONSUMER__INSTANCE_ID", id.as_str()),
            ];
            OmsProcess::start_with_env(port, &args, &env, &log).await
        }
    };
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let bases: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let mut instances = Vec::new();
    for (n, port) in ports.iter().take(3).enumerate() {
        instances.push(Some(start(n, *port).await));
    }
    let mut report = vec![format!(
        "3 join: {:.1?}",
        settled(&bases[..3], partitions).await
    )];

    let load = Load::start(&bases[0], CLIENTS, started + Duration::from_secs(400));
    load.wait_submitted(1_000, Duration::from_secs(120)).await;

    // kill -9 one, start it again under the same instance id.
    if let Some(i) = instances[2].take() {
        i.kill9();
    }
    instances[2] = Some(start(2, ports[2]).await);
    report.push(format!(
        "kill -9 and restart: {:.1?}",
        settled(&bases[..3], partitions).await
    ));
    load.wait_submitted(load.submitted() + 1_000, Duration::from_secs(120))
        .await;

    // A fourth joins (with three partitions, one instance idles).
    instances.push(Some(start(3, ports[3]).await));
    report.push(format!(
        "a 4th joins: {:.1?}",
        settled(&bases, partitions).await
    ));
    load.wait_submitted(load.submitted() + 1_000, Duration::from_secs(120))
        .await;

    // One leaves gracefully.
    if let Some(i) = instances[1].take() {
        let status = i.terminate(Duration::from_secs(30));
        assert!(status.success(), "graceful stop: {status}");
    }
    let remaining: Vec<String> = [0, 2, 3].iter().map(|n| bases[*n].clone()).collect();
    report.push(format!(
        "one leaves: {:.1?}",
        settled(&remaining, partitions).await
    ));
    load.wait_submitted(load.submitted() + 1_000, Duration::from_secs(120))
        .await;
    let result = load.finish().await;

    // Count through the store itself (an in-process reader in assign mode).
    let mut reader = cfg.clone();
    reader.consumer.mode = ConsumerMode::Assign;
    let app = TestApp::spawn(reader).await;
    let counted = tally(&app, &result.acked).await;
    eprintln!(
        "group of oms instances: {counted}; rebalances: {}",
        report.join(", ")
    );
    assert_eq!(counted.lost, 0, "{counted}");
    assert_eq!(counted.duplicated, 0, "{counted}");
    app.stop().await.expect("clean stop");
    drop(instances);
}
