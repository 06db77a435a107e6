//! Group mode, tried as a user grows oms: several `oms serve` processes on
//! one shared store (Postgres, Redis), behind nginx as `just up postgres 3`
//! runs them, on a fresh log of three partitions, under a crossing load
//! over six symbols — through the faults an instance meets: frozen
//! (SIGSTOP) and replaced under its identity, thawed, killed with SIGKILL
//! and restarted, added, stopped. Every test ends with every acknowledged
//! order stored exactly once *by the instances themselves* (the store is
//! read directly: no consumer of the test's own could drain what they left
//! behind), and trades and fills exactly as the reference matcher says.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    Load, LoadResult, Nginx, OmsProcess, SYMBOLS, Tally, Tansu, check_matching_in, eventually,
    free_port, serve_args, settings, stored_by_them, use_engine,
};
use oms::broker::admin;
use oms::config::{Engine, Settings};
use oms::store::Store;

const CLIENTS: usize = 8;

/// How long the instances get to store everything once the load ends.
const DRAIN_WITHIN: Duration = Duration::from_secs(120);

/// One test's world: its own broker, a store of its own, the members' logs.
struct Group {
    dir: tempfile::TempDir,
    _tansu: Tansu,
    cfg: Settings,
    args: Vec<String>,
    store: Arc<dyn Store>,
    started: Instant,
}

impl Group {
    async fn new(engine: Engine, prefix: &str) -> Group {
        let dir = tempfile::tempdir().expect("tempdir");
        let tansu = Tansu::start(&dir.path().join("broker"));
        let mut cfg = settings(&tansu.bootstrap(), &dir.path().join("store"));
        use_engine(&mut cfg, engine, prefix).await;
        admin::create_topics(&cfg.broker).await.expect("topics");
        let store = oms::store::open(&cfg.store).await.expect("the store");
        Group {
            args: serve_args(&cfg),
            dir,
            _tansu: tansu,
            cfg,
            store,
            started: Instant::now(),
        }
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// `oms serve` in group mode as replica `id` on `port` (a new run each
    /// call: same command line and environment, as a supervisor restarts it).
    async fn member(&self, id: &str, port: u16) -> OmsProcess {
        let env = [
            ("OMS__CONSUMER__MODE", "group"),
            ("OMS__CONSUMER__INSTANCE_ID", id),
            ("OMS__TELEMETRY__LOG_FILTER", "warn,oms=info"),
        ];
        OmsProcess::start_with_env(port, &self.args, &env, &self.log(id)).await
    }

    /// `n` members `oms-0`… on free ports: their ports, base URLs, processes.
    async fn members(&self, n: usize) -> (Vec<u16>, Vec<String>, Vec<OmsProcess>) {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let bases: Vec<String> = ports.iter().map(|p| base(*p)).collect();
        let mut members = Vec::new();
        for (n, port) in ports.iter().enumerate() {
            members.push(self.member(&format!("oms-{n}"), *port).await);
        }
        (ports, bases, members)
    }

    fn load(&self, base: &str) -> Load {
        Load::start(base, CLIENTS, self.started + Duration::from_secs(600))
    }

    /// Every acknowledged order stored by the members, exactly once, and
    /// matched exactly as the reference matcher says; returns the counts.
    async fn check(&self, what: &str, result: &LoadResult) -> Tally {
        let drain = Instant::now();
        let counted = stored_by_them(self.store.as_ref(), &result.acked, DRAIN_WITHIN).await;
        eprintln!(
            "{what}: {counted} ({:.1?} to drain after the load; {} client retries)",
            drain.elapsed(),
            result.retries
        );
        assert_eq!(counted.lost, 0, "{what}: {counted}");
        assert_eq!(counted.duplicated, 0, "{what}: {counted}");
        let matched = check_matching_in(self.store.as_ref(), &self.cfg, &SYMBOLS).await;
        eprintln!(
            "{what}: trades as the reference matcher: {} orders, {} trades stored = reference, {} published",
            matched.orders, matched.trades, matched.published
        );
        assert!(matched.trades > 0, "the load must trade");
        counted
    }
}

fn base(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// `/readyz` of one instance: 200, or the body of its 503.
async fn readiness(base: &str) -> Result<(), String> {
    let resp = reqwest::get(format!("{base}/readyz"))
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() == 200 {
        return Ok(());
    }
    Err(resp.text().await.unwrap_or_default())
}

/// Waits until every instance says ready (the group formed: every
/// partition held, every share taken); returns how long that took.
async fn ready(bases: &[String], within: Duration) -> Duration {
    let started = Instant::now();
    let done = eventually(within, || async {
        for base in bases {
            readiness(base).await.ok()?;
        }
        Some(())
    })
    .await;
    if done.is_none() {
        let mut why = Vec::new();
        for base in bases {
            why.push(format!("{base}: {:?}", readiness(base).await));
        }
        panic!(
            "not every instance was ready within {within:?}: {}",
            why.join("; ")
        );
    }
    started.elapsed()
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

/// The report of the scenario of issue #31: a member frozen, a replacement
/// started under its identity until ready, the frozen one thawed, the
/// replacement killed, then another member killed with SIGKILL and
/// started again. Afterwards every partition must move again.
async fn a_frozen_member_replaced_thawed_and_killed_leaves_nothing_behind(engine: Engine) {
    let g = Group::new(engine, "oms_group_freeze").await;
    let (ports, bases, mut members) = g.members(3).await;
    let formed = ready(&bases, Duration::from_secs(60)).await;
    let lb = Nginx::start(&ports);
    let load = g.load(&lb.base());
    load.wait_submitted(1_000, Duration::from_secs(120)).await;

    members[0].signal("STOP");
    let replacement_port = free_port();
    let replacement = g.member("oms-0", replacement_port).await;
    let replaced = ready(
        &[base(replacement_port), bases[1].clone(), bases[2].clone()],
        Duration::from_secs(60),
    )
    .await;
    load.wait_submitted(load.submitted() + 1_000, Duration::from_secs(120))
        .await;
    members[0].signal("CONT");
    replacement.kill9();
    let killed = Instant::now();
    members.remove(1).kill9();
    members.insert(1, g.member("oms-1", ports[1]).await);
    load.wait_submitted(load.submitted() + 1_000, Duration::from_secs(120))
        .await;
    let settled = ready(&bases, Duration::from_secs(60)).await;
    let result = load.finish().await;
    eprintln!(
        "{engine:?} freeze/replace/thaw/kill: 3 formed in {formed:.1?}, replacement ready in {replaced:.1?}, \
         all ready again {:.1?} after the kills (waited {settled:.1?} at the end)",
        killed.elapsed()
    );
    g.check(&format!("{engine:?} freeze/replace/thaw/kill"), &result)
        .await;
    drop((lb, members));
}

/// The second run of issue #31: three instances starting together, the
/// load starting as they start, one frozen before the group formed, one
/// killed right after it got partitions and restarted, the frozen one
/// thawed.
async fn members_starting_under_load_drain_everything(engine: Engine) {
    let g = Group::new(engine, "oms_group_start").await;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let bases: Vec<String> = ports.iter().map(|p| base(*p)).collect();
    let lb = Nginx::start(&ports);
    let mut members = Vec::new();
    for (n, port) in ports.iter().enumerate() {
        members.push(g.member(&format!("oms-{n}"), *port).await);
        if n == 0 {
            members[0].signal("STOP");
        }
    }
    let load = g.load(&lb.base());
    let first = eventually(Duration::from_secs(60), || async {
        (metric(&bases[1], "consumer_assigned_partitions").await? > 0.0).then_some(())
    })
    .await;
    assert!(
        first.is_some(),
        "the second instance never took a partition"
    );
    members.remove(1).kill9();
    members.insert(1, g.member("oms-1", ports[1]).await);
    load.wait_submitted(load.submitted() + 1_000, Duration::from_secs(120))
        .await;
    members[0].signal("CONT");
    load.wait_submitted(load.submitted() + 1_000, Duration::from_secs(120))
        .await;
    let formed = ready(&bases, Duration::from_secs(60)).await;
    let result = load.finish().await;
    eprintln!("{engine:?} start under load: all ready {formed:.1?} after the thaw");
    g.check(&format!("{engine:?} start under load"), &result)
        .await;
    drop((lb, members));
}

/// kill -9 and restart under the same instance id, a fourth instance
/// joining, one leaving gracefully: each settles (every instance ready)
/// and the lag the group sees returns to 0 on every instance.
async fn instances_share_the_partitions_through_kill_add_and_remove(engine: Engine) {
    let g = Group::new(engine, "oms_group").await;
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let bases: Vec<String> = ports.iter().map(|p| base(*p)).collect();
    let mut members: Vec<Option<OmsProcess>> = Vec::new();
    for (n, port) in ports.iter().take(3).enumerate() {
        members.push(Some(g.member(&format!("oms-{n}"), *port).await));
    }
    let mut report = vec![format!(
        "3 join: {:.1?}",
        ready(&bases[..3], Duration::from_secs(60)).await
    )];
    let lb = Nginx::start(&ports);
    let load = g.load(&lb.base());
    load.wait_submitted(1_000, Duration::from_secs(120)).await;

    if let Some(m) = members[2].take() {
        m.kill9();
    }
    let killed = Instant::now();
    members[2] = Some(g.member("oms-2", ports[2]).await);
    ready(&bases[..3], Duration::from_secs(60)).await;
    report.push(format!("kill -9 and restart: {:.1?}", killed.elapsed()));
    load.wait_submitted(load.submitted() + 1_000, Duration::from_secs(120))
        .await;

    let joining = Instant::now();
    members.push(Some(g.member("oms-3", ports[3]).await));
    ready(&bases, Duration::from_secs(60)).await;
    report.push(format!("a 4th joins: {:.1?}", joining.elapsed()));
    load.wait_submitted(load.submitted() + 1_000, Duration::from_secs(120))
        .await;

    let leaving = Instant::now();
    if let Some(m) = members[1].take() {
        let status = m.terminate(Duration::from_secs(30));
        assert!(status.success(), "graceful stop: {status}");
    }
    let remaining: Vec<String> = [0, 2, 3].iter().map(|n| bases[*n].clone()).collect();
    ready(&remaining, Duration::from_secs(60)).await;
    report.push(format!("one leaves: {:.1?}", leaving.elapsed()));
    load.wait_submitted(load.submitted() + 1_000, Duration::from_secs(120))
        .await;
    let result = load.finish().await;
    let what = format!("{engine:?} kill/add/remove");
    g.check(&what, &result).await;
    let lag_gone = eventually(Duration::from_secs(60), || async {
        for base in &remaining {
            if metric(base, "group_partition_lag{").await? > 0.0 {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(
        lag_gone.is_some(),
        "the group's lag did not return to 0 on every instance"
    );
    eprintln!("{what}: rebalances: {}", report.join(", "));
    drop((lb, members));
}

/// `group_leases_lost_total` and fenced refusals of one instance: what it
/// gave up or was refused after it thawed.
async fn fenced_or_lost(base: &str) -> f64 {
    metric(base, "group_leases_lost_total")
        .await
        .unwrap_or_default()
        + metric(base, "consumer_resyncs_total{reason=\"fenced\"}")
            .await
            .unwrap_or_default()
}

/// A zombie made on purpose, in rounds: the instance holding partitions is
/// frozen past the session timeout and replaced under its instance id (as
/// an orchestrator restarts a stuck replica); thawed, it holds records and
/// books from before — and the store refuses everything it writes under
/// its old leases, so no trade of it is stored or published twice, and
/// none matched on stale books.
async fn a_thawed_zombie_never_writes_after_its_replacement(engine: Engine) {
    let g = Group::new(engine, "oms_zombie").await;
    let awake_port = free_port();
    let awake = g.member("awake", awake_port).await;
    let mut zombie_port = free_port();
    let mut zombie = g.member("replica", zombie_port).await;
    ready(
        &[base(awake_port), base(zombie_port)],
        Duration::from_secs(60),
    )
    .await;
    let load = g.load(&base(awake_port));
    load.wait_submitted(500, Duration::from_secs(60)).await;
    let session = Duration::from_millis(g.cfg.consumer.session_timeout_ms);
    let mut frozen = Vec::new();
    let mut thawed = Vec::new();
    for round in 1..=3 {
        zombie.signal("STOP");
        let port = free_port();
        let replacement = g.member("replica", port).await;
        ready(&[base(awake_port), base(port)], Duration::from_secs(60)).await;
        load.wait_submitted(load.submitted() + 300, Duration::from_secs(60))
            .await;
        // Past the session timeout: its leases would have run out anyway.
        let past = Instant::now() + session;
        let _ = eventually(session * 2, || async {
            (Instant::now() >= past).then_some(())
        })
        .await;
        zombie.signal("CONT");
        let gave_up = eventually(Duration::from_secs(30), || async {
            (fenced_or_lost(&base(zombie_port)).await > 0.0).then_some(())
        })
        .await;
        assert!(
            gave_up.is_some(),
            "round {round}: the thawed zombie never gave its leases up nor was fenced"
        );
        thawed.push(zombie_port);
        frozen.push(std::mem::replace(&mut zombie, replacement));
        zombie_port = port;
    }
    let result = load.finish().await;
    g.check(&format!("{engine:?} zombie (3 rounds)"), &result)
        .await;
    drop((frozen, zombie, awake));
}

/// A member that joins the group and never takes its share (a stand-in
/// for an instance that says it lives but consumes nothing): its partition
/// sits unowned while records arrive. Every instance reports it in
/// `/readyz` within the lease's time and a few heartbeats; once the
/// member is gone, the others take the partition and drain it.
async fn a_partition_nobody_drains_is_reported_on_every_instance(engine: Engine) {
    use oms::store::lease::{Member, MemberState};
    let g = Group::new(engine, "oms_group_ghost").await;
    let (ports, bases, members) = g.members(2).await;
    ready(&bases, Duration::from_secs(60)).await;
    let lb = Nginx::start(&ports);
    let load = g.load(&lb.base());
    load.wait_submitted(300, Duration::from_secs(60)).await;
    let leases = g.store.leases().expect("a shared store keeps leases");
    // "0" sorts first: the ghost's share is one partition.
    let ghost = Member {
        topic: g.cfg.broker.topic.clone(),
        id: "0-ghost".into(),
        instance: String::new(),
        ttl: Duration::from_secs(600),
    };
    let joined = Instant::now();
    leases
        .heartbeat(&ghost, MemberState::Running, &[])
        .await
        .expect("the ghost joins");
    let reported = eventually(Duration::from_secs(60), || async {
        for base in &bases {
            let why = readiness(base).await.err()?;
            why.contains("no live member holds it").then_some(())?;
        }
        Some(())
    })
    .await;
    let report_took = joined.elapsed();
    assert!(
        reported.is_some(),
        "a partition nobody held was not reported on every instance: {:?}",
        readiness(&bases[0]).await
    );
    leases.leave(&ghost).await.expect("the ghost leaves");
    let gone = Instant::now();
    ready(&bases, Duration::from_secs(60)).await;
    let result = load.finish().await;
    eprintln!(
        "{engine:?} ghost member: an unowned partition reported on every instance {report_took:.1?} after it was left, \
         every instance ready {:.1?} after the ghost left",
        gone.elapsed()
    );
    g.check(&format!("{engine:?} ghost member"), &result).await;
    drop((lb, members));
}

/// Keys in group mode: every instance reads the one key file, so a key
/// revoked there is refused by all three within seconds — directly and
/// through nginx — while the key that stays keeps being served.
async fn a_revoked_key_is_refused_on_every_instance(engine: Engine) {
    use oms::auth::{KeyFile, Role};
    let g = Group::new(engine, "oms_group_keys").await;
    let (ports, bases, members) = g.members(3).await;
    ready(&bases, Duration::from_secs(60)).await;
    let lb = Nginx::start(&ports);
    let file = KeyFile::new(&g.cfg.auth.keys_file);
    let made = file
        .create("desk-7".parse().expect("account"), Role::Trader, None, None)
        .expect("a key");
    let key = common::client_with(&made.key.expose(), Duration::from_secs(10));
    let kept = common::client(Duration::from_secs(10));
    let everywhere: Vec<String> = bases.iter().cloned().chain([lb.base()]).collect();
    let answers = |client: reqwest::Client| {
        let everywhere = everywhere.clone();
        async move {
            let mut codes = Vec::new();
            for base in &everywhere {
                let resp = client
                    .get(format!("{base}/orders?symbol=USD-EUR"))
                    .send()
                    .await
                    .ok()?;
                codes.push(resp.status().as_u16());
            }
            Some(codes)
        }
    };
    let served = eventually(Duration::from_secs(10), || {
        let answers = answers(key.clone());
        async move { answers.await.filter(|c| c.iter().all(|c| *c == 200)) }
    })
    .await;
    assert!(served.is_some(), "a new key is served by every instance");
    let revoked_at = Instant::now();
    file.revoke(made.key.id()).expect("revoke");
    let refused = eventually(Duration::from_secs(10), || {
        let answers = answers(key.clone());
        async move { answers.await.filter(|c| c.iter().all(|c| *c == 401)) }
    })
    .await;
    assert!(
        refused.is_some(),
        "the revoked key is refused on every instance: {:?}",
        answers(key.clone()).await
    );
    eprintln!(
        "{engine:?}: a revoked key refused by all {} instances and nginx {:.1?} after the revoke",
        bases.len(),
        revoked_at.elapsed()
    );
    assert_eq!(
        answers(kept).await,
        Some(vec![200; everywhere.len()]),
        "the other key is still served"
    );
    drop((lb, members));
}

macro_rules! on_engines {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(oms::config::Engine::Postgres).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(oms::config::Engine::Redis).await;
                }
            )*
        }
    };
}

on_engines!(
    a_frozen_member_replaced_thawed_and_killed_leaves_nothing_behind,
    members_starting_under_load_drain_everything,
    instances_share_the_partitions_through_kill_add_and_remove,
    a_thawed_zombie_never_writes_after_its_replacement,
    a_partition_nobody_drains_is_reported_on_every_instance,
    a_revoked_key_is_refused_on_every_instance,
);
