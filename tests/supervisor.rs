//! `just up`'s broker supervisor (`scripts/supervise-broker.sh`, started by
//! `scripts/stack.sh start broker`) restarts tansu when it exits and when it
//! keeps its port but stops serving (frozen with SIGSTOP: every request goes
//! unanswered, as when tansu 0.6's storage task has died), logs why, counts
//! the restarts — and acknowledged records survive the restarts.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{assert_broker_serves, eventually, free_port, log_end};
use oms::config::BrokerSettings;

/// A supervised broker of the test's own, as `just up` starts it.
struct Stack {
    state: PathBuf,
    port: u16,
}

impl Stack {
    fn script(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack.sh"))
            .args(args)
            .env("OMS_STATE", &self.state)
            .env("OMS_BROKER_PORT", self.port.to_string())
            .env("OMS_BIN", env!("CARGO_BIN_EXE_oms"))
            .env("PROBE_EVERY", "1")
            .output()
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.state.join(file)).unwrap_or_default()
    }

    fn tansu_pid(&self) -> String {
        self.read("run/tansu.pid").trim().to_owned()
    }

    fn restarts(&self) -> u32 {
        self.read("run/broker-restarts").trim().parse().unwrap_or(0)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.script(&["stop", "broker"]);
    }
}

fn signal(pid: &str, signal: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), pid])
        .status()
        .expect("kill");
    assert!(sent.success(), "kill -{signal} {pid}");
}

async fn restarted(stack: &Stack, count: u32, old_pid: &str) -> String {
    eventually(Duration::from_secs(60), || async {
        let pid = stack.tansu_pid();
        (stack.restarts() >= count && !pid.is_empty() && pid != old_pid).then_some(pid)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the supervisor did not restart tansu (restart {count}); broker log:\n{}",
            stack.read("log/broker.log")
        )
    })
}

fn settings(port: u16) -> BrokerSettings {
    BrokerSettings {
        bootstrap: format!("127.0.0.1:{port}"),
        topic: "supervised".into(),
        dlq_topic: "supervised.dlq".into(),
        ..BrokerSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_restarts_a_broker_that_exits_or_stops_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stack = Stack {
        state: dir.path().to_owned(),
        port: free_port(),
    };
    let out = stack.script(&["start", "broker"]).expect("stack.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let broker = settings(stack.port);
    oms::broker::admin::create_topics(&broker)
        .await
        .expect("topics");
    assert_broker_serves(&broker.bootstrap, &broker.topic).await;
    let before: i64 = log_end(&broker.bootstrap, &broker.topic).values().sum();
    assert!(before > 0, "a record was acknowledged");

    // The process dies.
    let first = stack.tansu_pid();
    signal(&first, "KILL");
    let second = restarted(&stack, 1, &first).await;
    assert_broker_serves(&broker.bootstrap, &broker.topic).await;
    // The process lives, keeps its port and answers nothing.
    signal(&second, "STOP");
    let third = restarted(&stack, 2, &second).await;

    let log = stack.read("log/broker.log");
    assert!(
        log.contains("restarting tansu: tansu exited"),
        "the exit is logged:\n{log}"
    );
    assert!(
        log.contains("restarting tansu: tansu stopped serving"),
        "the hang is logged:\n{log}"
    );
    // The acknowledged record survived both restarts, and it serves again.
    let after: i64 = log_end(&broker.bootstrap, &broker.topic).values().sum();
    assert!(
        after >= before,
        "log end {after} < {before} before the restarts"
    );
    assert_broker_serves(&broker.bootstrap, &broker.topic).await;
    eprintln!(
        "supervisor: restarted tansu {} times (pids {first} → {second} → {third})",
        stack.restarts()
    );
}

/// `just up`'s oms supervisor (`scripts/supervise-oms.sh`) starts oms again
/// when it exits on its own — status 75 is oms asking for it (its broker
/// lost the log under it) — counts the restarts, and on SIGTERM stops the
/// process it runs and itself. A shell stands in for oms: the first run
/// exits 75, the second stays up.
#[tokio::test]
async fn the_oms_supervisor_starts_oms_again_when_it_asks_and_stops_it_with_itself() {
    let state = tempfile::tempdir().expect("tempdir");
    let marker = state.path().join("runs");
    let stand_in = format!(
        "echo run >> {m}; if [ $(wc -l < {m}) -eq 1 ]; then exit 75; fi; echo $$ > {m}.pid; exec sleep 600",
        m = marker.display()
    );
    let mut supervisor = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/supervise-oms.sh"
    ))
    .args(["oms-test", "sh", "-c", &stand_in])
    .env("OMS_STATE", state.path())
    .stdout(std::process::Stdio::null())
    .spawn()
    .expect("start the supervisor");
    let restarts = state.path().join("run/oms-test-restarts");
    let pid_file = format!("{}.pid", marker.display());
    let again = eventually(Duration::from_secs(30), || async {
        let runs = std::fs::read_to_string(&marker)
            .unwrap_or_default()
            .lines()
            .count();
        let counted = std::fs::read_to_string(&restarts).unwrap_or_default();
        // The second run writes its pid after its line in the marker: wait
        // for both, or SIGTERM can land before the stand-in says who it is.
        let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
        let pid = pid.trim().to_owned();
        (runs == 2 && counted.trim() == "1" && !pid.is_empty()).then_some(pid)
    })
    .await;
    let pid = again.expect("oms was not started again after status 75");
    signal(&supervisor.id().to_string(), "TERM");
    let stopped = eventually(Duration::from_secs(30), || {
        let done = supervisor.try_wait().expect("wait").is_some();
        async move { done.then_some(()) }
    })
    .await;
    assert!(stopped.is_some(), "the supervisor did not stop on SIGTERM");
    let gone = eventually(Duration::from_secs(10), || {
        let alive = Command::new("kill")
            .args(["-0", &pid])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        async move { (!alive).then_some(()) }
    })
    .await;
    assert!(gone.is_some(), "the stand-in oms outlived its supervisor");
}
