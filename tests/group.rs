//! Several oms instances on one topic and one Postgres, in group mode: they
//! share the partitions through the consumer group (cooperative-sticky,
//! static membership), each resuming a partition from the store's offset,
//! and every batch is fenced by the offsets its writer expects. Under load,
//! one instance is killed with SIGKILL and started again under the same
//! instance id, a fourth joins and one leaves gracefully: every
//! acknowledged order is stored exactly once, the lag returns to 0 on every
//! instance, and the time each rebalance took is reported. The clients
//! reach the instances through nginx, as `just up postgres 3` serves them.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    Load, Nginx, OmsProcess, SYMBOLS, Tansu, TestApp, check_matching, eventually, free_port,
    serve_args, settings, tally, use_engine,
};
use oms::broker::admin;
use oms::config::{ConsumerMode, Engine};

const CLIENTS: usize = 8;

/// One `oms serve` process in group mode, a static member under `id`.
async fn member(args: &[String], group: &str, id: &str, port: u16, log: &Path) -> OmsProcess {
    let env = [
        ("OMS__CONSUMER__MODE", "group"),
        ("OMS__CONSUMER__GROUP_ID", group),
        ("OMS__CONSUMER__INSTANCE_ID", id),
    ];
    OmsProcess::start_with_env(port, args, &env, log).await
}

/// The sum of one instance's series whose line starts with `prefix` (none
/// present: 0); `None` when it does not answer.
async fn metric(base: &str, prefix: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(common::sum_series(&text, prefix).unwrap_or(0.0))
}

/// `consumer_assigned_partitions` of one instance.
async fn owned(base: &str) -> Option<u32> {
    metric(base, "consumer_assigned_partitions")
        .await
        .map(|v| v as u32)
}

/// `consumer_lag` of one instance, summed over the partitions it owns.
async fn lag(base: &str) -> Option<f64> {
    metric(base, "consumer_lag{").await
}

/// How many rebalances one instance has been through (each assignment or
/// revocation it applied); `None` when it does not answer.
async fn rebalances(base: &str) -> Option<f64> {
    metric(base, "consumer_rebalance_seconds_count").await
}

/// Waits until every instance has applied a rebalance since `before` (its
/// count then; an instance that has just joined: 0), so the group is no
/// longer forming. tansu 0.6 keeps a forming group's leader when that
/// member leaves (`Inner<Forming>::leave`), and the joins that follow name
/// a leader that is gone, so no member gets an assignment: a member may
/// leave only a formed group (docs/architecture.md).
async fn rebalanced(bases: &[String], before: &[f64]) {
    let done = eventually(Duration::from_secs(90), || async {
        for (base, before) in bases.iter().zip(before) {
            if rebalances(base).await? <= *before {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(
        done.is_some(),
        "not every instance applied the rebalance within 90 s"
    );
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
        async move { member(&args, &group, &format!("instance-{n}"), port, &log).await }
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

    // The clients go through nginx, as in `just up postgres 3`: the killed
    // and the leaving instance cost them a retried connection, not an error.
    let lb = Nginx::start(&ports);
    let load = Load::start(&lb.base(), CLIENTS, started + Duration::from_secs(400));
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
    let mut before = Vec::new();
    for base in &bases[..3] {
        before.push(rebalances(base).await.unwrap_or_default());
    }
    before.push(0.0);
    let joining = Instant::now();
    instances.push(Some(start(3, ports[3]).await));
    rebalanced(&bases, &before).await;
    settled(&bases, partitions).await;
    report.push(format!("a 4th joins: {:.1?}", joining.elapsed()));
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

    // Lag back to 0 on every instance still in the group (each reports its
    // own partitions).
    let lag_gone = eventually(Duration::from_secs(60), || async {
        for base in &remaining {
            if lag(base).await? > 0.0 {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(
        lag_gone.is_some(),
        "consumer_lag did not return to 0 on every instance"
    );

    // Count through the store itself (an in-process reader in assign mode).
    let mut reader = cfg.clone();
    reader.consumer.mode = ConsumerMode::Assign;
    let app = TestApp::spawn(reader).await;
    let counted = tally(&app, &result.acked).await;
    eprintln!(
        "group of oms instances behind nginx: {counted}; {} client retries; rebalances: {}",
        result.retries,
        report.join(", ")
    );
    assert_eq!(counted.lost, 0, "{counted}");
    assert_eq!(counted.duplicated, 0, "{counted}");
    // Each partition is matched by its owner only; a partition that moves
    // is matched on from books its new owner rebuilt from the store.
    let matched = check_matching(&app, &SYMBOLS).await;
    eprintln!(
        "group: matching as the reference matcher across the rebalances: {} orders, {} trades, {} traded",
        matched.orders, matched.trades, matched.traded
    );
    assert!(matched.trades > 0, "the load must trade");
    app.stop().await.expect("clean stop");
    drop((lb, instances));
}

/// `consumer_resyncs_total` of one instance: batches the store refused
/// because the offsets had moved under it.
async fn refusals(base: &str) -> f64 {
    metric(base, "consumer_resyncs_total")
        .await
        .unwrap_or_default()
}

/// A zombie made on purpose: an instance frozen (SIGSTOP) is replaced by a
/// new one under the same instance id (as an orchestrator restarting a
/// stuck replica does), which takes its partitions over and stores on;
/// thawed (SIGCONT), the zombie's batch in hand carries the offsets it last
/// saw, and the store refuses it — it never writes after the new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_instance_replaced_under_its_id_is_refused_when_it_thaws() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let tansu = Tansu::start(&dir.path().join("broker"));
    let mut cfg = settings(&tansu.bootstrap(), &dir.path().join("store"));
    use_engine(&mut cfg, Engine::Postgres, "oms_zombie").await;
    admin::create_topics(&cfg.broker).await.expect("topics");
    let partitions = u32::try_from(cfg.broker.partitions).expect("partitions");
    let args = serve_args(&cfg);
    let group = format!("{}-group", cfg.broker.topic);
    let start = |id: &'static str, port: u16, log: std::path::PathBuf| {
        let (args, group) = (args.clone(), group.clone());
        async move { member(&args, &group, id, port, &log).await }
    };
    let awake_port = free_port();
    let awake_base = format!("http://127.0.0.1:{awake_port}");
    let awake = start("awake", awake_port, dir.path().join("awake.log")).await;
    let mut zombie_port = free_port();
    let mut zombie = start("replica", zombie_port, dir.path().join("replica-0.log")).await;
    let base = |port: u16| format!("http://127.0.0.1:{port}");
    settled(&[awake_base.clone(), base(zombie_port)], partitions).await;
    let load = Load::start(&awake_base, CLIENTS, started + Duration::from_secs(400));
    load.wait_submitted(500, Duration::from_secs(60)).await;

    // Whether the frozen instance holds records depends on timing: repeat
    // until one thaw shows a refusal.
    let mut refused = false;
    let mut frozen = Vec::new();
    for round in 1..=4 {
        let before = refusals(&base(zombie_port)).await;
        zombie.signal("STOP");
        let port = free_port();
        let replacement = start(
            "replica",
            port,
            dir.path().join(format!("replica-{round}.log")),
        )
        .await;
        settled(&[awake_base.clone(), base(port)], partitions).await;
        load.wait_submitted(load.submitted() + 300, Duration::from_secs(60))
            .await;
        zombie.signal("CONT");
        refused = eventually(Duration::from_secs(15), || async {
            (refusals(&base(zombie_port)).await > before).then_some(())
        })
        .await
        .is_some();
        frozen.push(std::mem::replace(&mut zombie, replacement));
        zombie_port = port;
        if refused {
            break;
        }
    }
    let result = load.finish().await;
    drop(frozen);
    let mut reader = cfg.clone();
    reader.consumer.mode = ConsumerMode::Assign;
    let app = TestApp::spawn(reader).await;
    let counted = tally(&app, &result.acked).await;
    eprintln!("zombie: refused {refused}; {counted}");
    assert!(refused, "the thawed zombie never had a batch refused");
    assert_eq!(counted.lost, 0, "{counted}");
    assert_eq!(counted.duplicated, 0, "{counted}");
    // The zombie matched its batch from the books the store held when it
    // froze — the same the new owner rebuilt — so even the trades it
    // published before the refusal are the owner's, under the same ids.
    let matched = check_matching(&app, &SYMBOLS).await;
    eprintln!(
        "zombie: matching as the reference matcher: {} orders, {} trades",
        matched.orders, matched.trades
    );
    app.stop().await.expect("clean stop");
    drop((zombie, awake));
}
