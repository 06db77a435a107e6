//! Test harness: spawn the real oms (HTTP server + producer + consumer) on a
//! free port against the real tansu broker that `just test` started, each
//! test with its own topic and its own store folder.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oms::app::Application;
use oms::auth::{Key, KeyFile, KeyRecord, Role};
use oms::broker::admin;
use oms::config::{Engine, Settings, StoreUrl};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The shared test broker (`just test` exports it).
pub fn bootstrap() -> String {
    std::env::var("OMS_TEST_BOOTSTRAP").unwrap_or_else(|_| {
        panic!("OMS_TEST_BOOTSTRAP is not set: run the integration tests with `just test`, which starts a tansu broker")
    })
}

/// The API key every harness client sends (account [`TEST_ACCOUNT`], a
/// trader without limits): [`settings`] puts it in each test's key file.
pub const TEST_KEY: &str =
    "oms_7e57000000000001_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub const TEST_ACCOUNT: &str = "test";
/// A second trader (account [`OTHER_ACCOUNT`], no limits), in every test's
/// key file too: orders of one account never trade with each other
/// (self-trade prevention), so a crossing pair takes two.
pub const OTHER_KEY: &str =
    "oms_7e57000000000002_fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
pub const OTHER_ACCOUNT: &str = "other";

/// Adds a key to the key file of `cfg` (made by the test, so the test knows it).
pub fn add_key(
    cfg: &Settings,
    key: &str,
    account: &str,
    role: Role,
    rate: Option<u32>,
    in_flight: Option<u32>,
) {
    let key = Key::parse(key).expect("a key of the oms_<id>_<secret> form");
    let account = account.parse().expect("an account");
    KeyFile::new(&cfg.auth.keys_file)
        .add(KeyRecord::new(&key, account, role, rate, in_flight))
        .expect("write the test's key file");
}

/// An HTTP client that sends [`TEST_KEY`] with every request.
pub fn client(timeout: Duration) -> reqwest::Client {
    client_with(TEST_KEY, timeout)
}

/// An HTTP client that sends `key` with every request.
pub fn client_with(key: &str, timeout: Duration) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().expect("a header value"),
    );
    reqwest::Client::builder()
        .timeout(timeout)
        .default_headers(headers)
        .build()
        .expect("http client")
}

/// Settings for one test: port 0, a topic of its own, a store folder of its
/// own, and a key file in it holding [`TEST_KEY`].
pub fn settings(bootstrap: &str, store: &Path) -> Settings {
    let mut s = Settings::default();
    std::fs::create_dir_all(store).expect("the test's store folder");
    s.auth.keys_file = store.join("oms-keys.toml");
    add_key(&s, TEST_KEY, TEST_ACCOUNT, Role::Trader, Some(0), Some(0));
    add_key(&s, OTHER_KEY, OTHER_ACCOUNT, Role::Trader, Some(0), Some(0));
    let topic = format!("orders-{}", Uuid::now_v7().simple());
    s.http.addr = "127.0.0.1:0".into();
    s.http.shutdown_timeout_ms = 5_000;
    s.broker.bootstrap = bootstrap.into();
    s.broker.dlq_topic = format!("{topic}.dlq");
    s.broker.trades_topic = format!("{topic}.trades");
    s.broker.topic = topic;
    s.consumer.retry_max_ms = 500;
    s.store.url = StoreUrl::embedded(Engine::Redb, store).expect("an absolute store folder");
    s.telemetry.log_filter = "warn,oms=info".into();
    s
}

/// Polls `probe` until it yields a value or `within` has passed.
pub async fn eventually<T, F, Fut>(within: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A valid order body.
pub fn order_body(n: u64) -> Value {
    json!({
        "src_currency": "USD",
        "dst_currency": "EUR",
        "side": if n % 2 == 0 { "buy" } else { "sell" },
        "price": format!("{}.25", 100 + n),
        "quantity": "10",
        "channel": 11,
        "description": format!("test order {n}"),
    })
}

/// A `USD-EUR` limit order of `side`, `price` and `quantity` (the trading
/// and feed tests' orders).
pub fn usd_eur(side: &str, price: &str, quantity: &str) -> Value {
    json!({
        "src_currency": "USD",
        "dst_currency": "EUR",
        "side": side,
        "price": price,
        "quantity": quantity,
        "channel": 11,
    })
}

/// `oms serve` flags for the store, broker and topics of `cfg`.
pub fn serve_args(cfg: &Settings) -> Vec<String> {
    let mut args: Vec<String> = [
        "--store",
        cfg.store.url.as_str(),
        "--bootstrap",
        &cfg.broker.bootstrap,
        "--topic",
        &cfg.broker.topic,
        "--dlq-topic",
        &cfg.broker.dlq_topic,
        "--trades-topic",
        &cfg.broker.trades_topic,
        "--keys-file",
        &cfg.auth.keys_file.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    if cfg.store.engine() == Engine::Redis {
        // `[store.redis]` has no flags: a config file of the test's own.
        let r = &cfg.store.redis;
        let file = std::env::temp_dir().join(format!("{}.toml", r.key_prefix));
        std::fs::write(
            &file,
            format!(
                "[store.redis]\nkey_prefix = {:?}\ntimeout_ms = {}\npersistence = {:?}\n",
                r.key_prefix,
                r.timeout_ms,
                r.persistence.as_str()
            ),
        )
        .expect("write the test's config file");
        args.extend(["--config".to_owned(), file.display().to_string()]);
    }
    args
}

/// One account's view of an oms: a client sending its key.
#[derive(Clone)]
pub struct Trader {
    pub base: String,
    pub client: reqwest::Client,
}

impl Trader {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET")
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .expect("DELETE")
    }

    /// Posts a valid order and returns its id (panics unless 202).
    pub async fn accept(&self, body: &Value) -> Uuid {
        let resp = self
            .client
            .post(format!("{}/orders", self.base))
            .json(body)
            .send()
            .await
            .expect("POST /orders");
        accepted_id(resp).await
    }
}

/// A running oms.
pub struct TestApp {
    pub base: String,
    pub store: std::sync::Arc<dyn oms::store::Store>,
    pub client: reqwest::Client,
    pub settings: Settings,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// Creates the topics (idempotent) and starts oms.
    pub async fn spawn(settings: Settings) -> TestApp {
        let _ = oms::telemetry::init(&settings.telemetry).expect("log filter");
        admin::create_topics(&settings.broker)
            .await
            .expect("create topics");
        let app = Application::build(settings.clone())
            .await
            .expect("build oms");
        let base = format!("http://{}", app.local_addr());
        let store = app.store();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        let client = client(Duration::from_secs(10));
        TestApp {
            base,
            store,
            client,
            settings,
            shutdown,
            task,
        }
    }

    /// Graceful stop (as on SIGTERM); returns how `run` ended.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        drop(self.store);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("oms stops within 30 s")
            .expect("oms task does not panic")
    }

    pub async fn post_json(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/orders", self.base))
            .json(body)
            .send()
            .await
            .expect("POST /orders")
    }

    pub async fn post_raw(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(format!("{}/orders", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST /orders")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.me().get(path).await
    }

    /// Posts a valid order and returns its id (panics unless 202).
    pub async fn accept(&self, body: &Value) -> Uuid {
        self.me().accept(body).await
    }

    /// The same oms as another account ([`OTHER_KEY`]) sees it.
    pub fn other(&self) -> Trader {
        Trader {
            base: self.base.clone(),
            client: client_with(OTHER_KEY, Duration::from_secs(10)),
        }
    }

    /// This oms as the harness' own account ([`TEST_KEY`]) sees it.
    pub fn me(&self) -> Trader {
        Trader {
            base: self.base.clone(),
            client: self.client.clone(),
        }
    }

    /// One page of `GET /orders?…` as JSON.
    pub async fn page(&self, query: &str) -> Value {
        self.get(&format!("/orders?{query}"))
            .await
            .json()
            .await
            .expect("a page of orders")
    }

    /// Waits until the store's offsets reach the log end of the app's topic
    /// on every partition; panics with both when `within` has passed.
    /// (Reach, not equal: tansu's memory engine reports a high watermark up
    /// to a batch below the records it holds and serves.)
    pub async fn wait_caught_up(&self, within: Duration) {
        let topic = &self.settings.broker.topic;
        let end = log_end(&self.settings.broker.bootstrap, topic);
        let caught_up = eventually(within, || async {
            let stored = self.store.offsets(topic).await.ok()?;
            end.iter()
                .all(|(p, e)| stored.get(p).is_some_and(|s| s >= e))
                .then_some(())
        })
        .await;
        if caught_up.is_none() {
            let offsets = self.store.offsets(topic).await;
            panic!("store offsets {offsets:?} did not reach the log end {end:?} within {within:?}");
        }
    }

    /// The sum of every `/metrics` series whose line starts with `prefix`
    /// (`consumer_lag{` sums the partitions); `None` when there is none.
    pub async fn metric_sum(&self, prefix: &str) -> Option<f64> {
        sum_series(&self.get("/metrics").await.text().await.ok()?, prefix)
    }

    /// Waits until `GET /orders/{id}` answers 200 and returns the order.
    pub async fn wait_for_order(&self, id: Uuid, within: Duration) -> Option<Value> {
        eventually(within, || async move {
            let resp = self.get(&format!("/orders/{id}")).await;
            if resp.status() == 200 {
                resp.json().await.ok()
            } else {
                None
            }
        })
        .await
    }
}

/// The sum of the series in a `/metrics` text whose line starts with
/// `prefix`; `None` when there is none.
pub fn sum_series(text: &str, prefix: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The order id of a `202 Accepted` answer (panics on any other answer).
pub async fn accepted_id(resp: reqwest::Response) -> Uuid {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 202, "{body}");
    let body: Value = serde_json::from_str(&body).expect("json");
    body["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id")
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// How a test's own tansu keeps its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerEngine {
    /// sqlite, durable: what `just up` runs.
    Sqlite,
    /// In memory: what the benchmark's fast runs use.
    Memory,
}

impl BrokerEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerEngine::Sqlite => "sqlite",
            BrokerEngine::Memory => "memory",
        }
    }
}

/// A tansu broker of the test's own, so a test can stop and restart it
/// without disturbing the others. Started by `scripts/tansu.sh`, the one
/// launcher the stack and the benchmark use too. Killed on drop; its output
/// goes to `tansu.log` beside its log and is printed when the test fails.
pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
    pub engine: BrokerEngine,
    dir: PathBuf,
}

impl Tansu {
    /// A durable (sqlite) broker, as `just up` runs it.
    pub fn start(dir: &Path) -> Tansu {
        Self::start_with(dir, BrokerEngine::Sqlite)
    }

    pub fn start_with(dir: &Path, engine: BrokerEngine) -> Tansu {
        let mut tansu = Tansu {
            child: None,
            port: free_port(),
            engine,
            dir: dir.to_owned(),
        };
        tansu.restart();
        tansu
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The sqlite database of a durable broker.
    pub fn database(&self) -> PathBuf {
        self.dir.join("tansu.db")
    }

    /// Starts the broker on the same port and the same log.
    pub fn restart(&mut self) {
        let bin = std::env::var("OMS_TEST_TANSU")
            .expect("OMS_TEST_TANSU is not set: run the tests with `just test`");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tansu.sh");
        std::fs::create_dir_all(&self.dir).expect("tansu's folder");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("tansu's log file");
        let child = Command::new(script)
            .arg(self.port.to_string())
            .arg(self.engine.as_str())
            .arg(&self.dir)
            .env("TANSU_BIN", bin)
            .stdout(log.try_clone().expect("tansu's log file"))
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.join("tansu.log")
    }

    /// Kills the broker and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
        // A broker that died under a test is otherwise a mystery.
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- tansu on port {} (its last {} lines):",
                self.port,
                tail.len()
            );
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// nginx in front of oms instances, as `just up postgres N` runs it
/// (scripts/nginx.sh: round robin, a refused connection retried on the next
/// instance); stopped on drop.
pub struct Nginx {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(upstreams: &[u16]) -> Nginx {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/nginx.sh");
        let child = Command::new(script)
            .arg(port.to_string())
            .arg(dir.path())
            .args(upstreams.iter().map(u16::to_string))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (scripts/install.sh nginx)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers. SIGKILL would orphan them,
        // still holding the port.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Points `cfg` at `engine`: the same folder for an embedded engine, a
/// fresh, migrated database of its own (named `prefix_…`) for Postgres, a
/// key prefix of its own on the test Redis.
pub async fn use_engine(cfg: &mut Settings, engine: Engine, prefix: &str) {
    if engine == Engine::Redis {
        return use_redis(cfg, &redis_url(), prefix);
    }
    cfg.store.url = if engine.is_embedded() {
        let folder = cfg
            .store
            .url
            .path()
            .expect("settings() gives a folder")
            .to_owned();
        StoreUrl::embedded(engine, &folder).expect("an absolute store folder")
    } else {
        fresh_database(prefix)
            .await
            .parse()
            .expect("a postgres URL")
    };
    if engine == Engine::Postgres {
        migrate_postgres(cfg).await;
    }
}

/// The test Redis `just test` starts.
pub fn redis_url() -> String {
    std::env::var("OMS_TEST_REDIS_URL")
        .expect("OMS_TEST_REDIS_URL is not set: run the tests with `just test`, which starts Redis")
}

/// Points `cfg` at the Redis at `url`, under a key prefix of its own.
pub fn use_redis(cfg: &mut Settings, url: &str, prefix: &str) {
    cfg.store.url = url.parse().expect("a redis URL");
    cfg.store.redis.key_prefix = format!("{prefix}-{}", Uuid::now_v7().simple());
}

/// Applies the schema to the Postgres `cfg` points at.
pub async fn migrate_postgres(cfg: &Settings) {
    oms::store::postgres::PostgresStore::connect(cfg.store.url.as_str(), &cfg.store.postgres)
        .await
        .expect("pool")
        .migrate()
        .await
        .expect("migrate");
}

/// A database of its own on the test cluster (`just test` exports the URL).
pub async fn fresh_database(prefix: &str) -> String {
    let admin = std::env::var("OMS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| panic!("OMS_TEST_DATABASE_URL is not set: run the tests with `just test`, which starts PostgreSQL"));
    oms::store::postgres::PostgresStore::create_database(&admin, prefix)
        .await
        .expect("create a test database")
}

/// The log end offset of every partition of `topic` that holds records (a
/// partition that never received one has no offset in any store either).
pub fn log_end(bootstrap: &str, topic: &str) -> std::collections::BTreeMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    partitions
        .into_iter()
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (p, high)
        })
        .filter(|(_, high)| *high > 0)
        .collect()
}

/// The `oms` binary as a child process, so a test can SIGKILL it.
pub struct OmsProcess {
    child: Child,
    pub base: String,
}

impl OmsProcess {
    /// Starts `oms serve` with `args` on `port` and waits until `/healthz` answers.
    pub async fn start(port: u16, args: &[String], log: &Path) -> OmsProcess {
        Self::start_with_env(port, args, &[], log).await
    }

    /// [`OmsProcess::start`] with extra environment variables (`OMS__…` settings).
    pub async fn start_with_env(
        port: u16,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> OmsProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_oms"))
            .arg("serve")
            .args(args)
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .env("OMS__TELEMETRY__LOG_FILTER", "warn")
            .envs(env.iter().copied())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start oms");
        let base = format!("http://127.0.0.1:{port}");
        let client = client(Duration::from_secs(30));
        let up = eventually(Duration::from_secs(30), || {
            let url = format!("{base}/healthz");
            let client = client.clone();
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status() == 200)
                    .map(drop)
            }
        })
        .await;
        assert!(up.is_some(), "oms answered /healthz within 30 s");
        OmsProcess { child, base }
    }

    /// SIGTERM, then wait (at most `within`) for the exit status.
    pub fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(sent.success());
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "oms did not exit within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most `within`) for the process to exit on its own;
    /// `None` when it still runs.
    pub async fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        eventually(within, || {
            let status = self.child.try_wait().expect("wait");
            async move { status }
        })
        .await
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal}");
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OmsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PostgreSQL cluster of the test's own (initdb'd in a temp folder), so a
/// test can stop and restart it without disturbing the others.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

impl PrivatePostgres {
    fn command(&self, tool: &str) -> Command {
        let tool = self.bin.join(tool);
        // initdb and postgres refuse to run as root.
        if running_as_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(tool);
            cmd
        } else {
            Command::new(tool)
        }
    }

    fn run(&self, mut cmd: Command, what: &str) {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// initdb, start, create database `oms` (user `oms`, trust auth on loopback).
    pub fn start_new() -> PrivatePostgres {
        let bin = std::env::var("OMS_TEST_PG_BIN")
            .expect("OMS_TEST_PG_BIN is not set: run the tests with `just test`");
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = PrivatePostgres {
            dir,
            port: free_port(),
            bin: PathBuf::from(bin),
        };
        if running_as_root() {
            pg.run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(pg.dir.path());
                    c
                },
                "chown",
            );
        }
        let mut initdb = pg.command("initdb");
        initdb
            .arg("-D")
            .arg(pg.data())
            .args(["-U", "oms", "--auth=trust", "-E", "UTF8"]);
        pg.run(initdb, "initdb");
        pg.start();
        let mut createdb = pg.command("createdb");
        createdb
            .arg("-h")
            .arg(pg.data())
            .args(["-p", &pg.port.to_string(), "-U", "oms", "oms"]);
        pg.run(createdb, "createdb");
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://oms@127.0.0.1:{}/oms", self.port)
    }

    pub fn start(&self) {
        let mut ctl = self.command("pg_ctl");
        ctl.arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.data().join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off",
                self.port,
                self.data().display()
            ))
            .arg("start");
        self.run(ctl, "pg_ctl start");
    }

    /// Stops like a crash (`-m immediate`): connections are cut.
    pub fn stop(&self) {
        let mut ctl = self.command("pg_ctl");
        ctl.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"]);
        self.run(ctl, "pg_ctl stop");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut ctl = self.command("pg_ctl");
        ctl.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = ctl.output();
    }
}

/// A Redis of the test's own (scripts/redis.sh on a free port, files in a
/// temp folder), so a test can stop it, restart it, or restart it empty.
pub struct PrivateRedis {
    dir: tempfile::TempDir,
    pub port: u16,
    child: std::sync::Mutex<Option<Child>>,
}

impl PrivateRedis {
    pub fn start_new() -> PrivateRedis {
        let redis = PrivateRedis {
            dir: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
            child: std::sync::Mutex::new(None),
        };
        redis.start();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts Redis on its port and folder (it loads its AOF, if any).
    pub fn start(&self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis.sh");
        let child = Command::new(script)
            .arg(self.port.to_string())
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (scripts/install.sh redis)");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops like a crash (SIGKILL): connections are cut.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again with nothing: its files are gone (a restart without
    /// persistence, or a failover to an empty replica).
    pub fn restart_empty(&self) {
        self.stop();
        for entry in std::fs::read_dir(self.dir.path()).expect("redis folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("remove");
            } else {
                std::fs::remove_file(&path).expect("remove");
            }
        }
        self.start();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The source currencies a [`Load`] spreads its orders over (all against EUR).
const CURRENCIES: [&str; 6] = ["USD", "GBP", "JPY", "CHF", "AUD", "CAD"];
/// The symbols a [`Load`] trades.
pub const SYMBOLS: [&str; 6] = [
    "USD-EUR", "GBP-EUR", "JPY-EUR", "CHF-EUR", "AUD-EUR", "CAD-EUR",
];

/// What a [`Load`] got acknowledged, and what it took.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub acked: std::collections::BTreeSet<Uuid>,
    /// Attempts that were not a 202 and were retried.
    pub retries: u64,
    /// Of those, `503` answers (the broker did not acknowledge in time).
    pub unavailable: u64,
}

/// Well-behaved clients posting orders, each with its own
/// `client_order_id`, retrying one until it is acknowledged (connection
/// errors: the daemon was killed or restarts; `503`: the broker did not
/// acknowledge in time). Several symbols, so every partition gets load, and
/// orders that cross, so every symbol trades.
pub struct Load {
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<LoadResult>,
}

impl Load {
    /// Starts `clients` clients against `base` (one address across restarts).
    pub fn start(base: &str, clients: usize, deadline: Instant) -> Load {
        use std::sync::atomic::{AtomicU64, Ordering};
        let next = std::sync::Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let run = format!("load-{}", Uuid::now_v7().simple());
        // Two accounts take turns in runs of seven orders: their orders
        // cross each other (trades) and their own (self-trade prevention).
        let accounts = [
            client(Duration::from_secs(5)),
            client_with(OTHER_KEY, Duration::from_secs(5)),
        ];
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (accounts, base, next, run, stop) = (
                accounts.clone(),
                base.to_owned(),
                next.clone(),
                run.clone(),
                stop.clone(),
            );
            tasks.spawn(async move {
                let mut result = LoadResult::default();
                while !stop.is_cancelled() {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let mut body = order_body(n);
                    body["client_order_id"] = json!(format!("{run}-{n}"));
                    body["src_currency"] = json!(CURRENCIES[(n % 6) as usize]);
                    // Each symbol gets buys and sells alternately, at prices
                    // and sizes that jump around one range: orders cross,
                    // fill partly, rest on several levels.
                    body["side"] = json!(if (n / 6) % 2 == 0 { "buy" } else { "sell" });
                    body["price"] = json!(format!("{}.25", 100 + (n * 37) % 21));
                    body["quantity"] = json!(format!("{}", 1 + (n * 7) % 13));
                    // Most orders rest what they do not fill (the books need
                    // depth); some take and never rest, some only rest.
                    terms_of(n, &mut body);
                    let client = &accounts[((n / 7) % 2) as usize];
                    loop {
                        assert!(
                            Instant::now() < deadline,
                            "order {n} not acknowledged within the test's budget"
                        );
                        match client
                            .post(format!("{base}/orders"))
                            .json(&body)
                            .send()
                            .await
                        {
                            Ok(resp) if resp.status() == 202 => {
                                result.acked.insert(accepted_id(resp).await);
                                break;
                            }
                            Ok(resp) if resp.status() == 503 => result.unavailable += 1,
                            // nginx: the instance was killed mid-request
                            // (502) or frozen (504), as a connection error
                            // or a timeout is without it.
                            Ok(resp) if matches!(resp.status().as_u16(), 502 | 504) => {}
                            Ok(resp) => panic!("unexpected status {}", resp.status()),
                            Err(_) => {} // the daemon was killed mid-request
                        }
                        result.retries += 1;
                        // Pace retries while the daemon or broker restarts.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                result
            });
        }
        Load { next, stop, tasks }
    }

    /// Orders handed out to clients so far.
    pub fn submitted(&self) -> u64 {
        self.next.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until at least `n` orders were handed out (panics after `within`).
    pub async fn wait_submitted(&self, n: u64, within: Duration) {
        let reached = eventually(within, || async { (self.submitted() >= n).then_some(()) }).await;
        assert!(
            reached.is_some(),
            "load stalled at {} orders (waiting for {n})",
            self.submitted()
        );
    }

    /// Stops handing out orders; each client finishes (acknowledges) the
    /// order in hand. Returns everything acknowledged.
    pub async fn finish(mut self) -> LoadResult {
        self.stop.cancel();
        let mut all = LoadResult::default();
        while let Some(joined) = self.tasks.join_next().await {
            let r = joined.expect("client task");
            all.acked.extend(r.acked);
            all.retries += r.retries;
            all.unavailable += r.unavailable;
        }
        all
    }
}

/// Acked / stored / lost / duplicated, as the closing notes report them.
#[derive(Debug)]
pub struct Tally {
    pub acked: usize,
    pub stored: u64,
    pub lost: usize,
    pub duplicated: i64,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acked {} / stored {} / lost {} / duplicated {}",
            self.acked, self.stored, self.lost, self.duplicated
        )
    }
}

/// Waits until `app` has caught up with its log, then counts: every
/// acknowledged order must be stored, and nothing else.
pub async fn tally(app: &TestApp, acked: &std::collections::BTreeSet<Uuid>) -> Tally {
    app.wait_caught_up(Duration::from_secs(120)).await;
    // The rest of the last batch, where the broker under-reports its end.
    let _ = eventually(Duration::from_secs(30), || async {
        (app.store.count().await.ok()? >= acked.len() as u64).then_some(())
    })
    .await;
    let stored = app.store.count().await.expect("count");
    let mut lost = 0;
    for id in acked {
        if app.store.get(*id).await.expect("get").is_none() {
            lost += 1;
        }
    }
    Tally {
        acked: acked.len(),
        stored,
        lost,
        duplicated: stored as i64 - (acked.len() - lost) as i64,
    }
}

/// Waits (at most `within`) until `store` — read directly, with no
/// consumer of the test's own that would store what the instances under
/// test left behind — holds every acknowledged order; then counts.
pub async fn stored_by_them(
    store: &dyn oms::store::Store,
    acked: &std::collections::BTreeSet<Uuid>,
    within: Duration,
) -> Tally {
    let _ = eventually(within, || async {
        (store.count().await.ok()? >= acked.len() as u64).then_some(())
    })
    .await;
    let stored = store.count().await.expect("count");
    let mut lost = 0;
    for id in acked {
        if store.get(*id).await.expect("get").is_none() {
            lost += 1;
        }
    }
    Tally {
        acked: acked.len(),
        stored,
        lost,
        duplicated: stored as i64 - (acked.len() - lost) as i64,
    }
}

/// The broker still serves a new client: a fresh idempotent producer gets a
/// producer id and an ack, and a consumer reads the record back.
pub async fn assert_broker_serves(bootstrap: &str, topic: &str) {
    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "15000")
        .create()
        .expect("producer");
    let marker = format!("probe-{}", Uuid::now_v7());
    let delivery = producer
        .send(
            FutureRecord::to(topic).key("probe").payload(&marker),
            Duration::from_secs(15),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("the broker acknowledges a new producer's record");
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "oms-test-probe")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(
            topic,
            delivery.partition,
            rdkafka::Offset::Offset(delivery.offset),
        )
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let read = tokio::time::timeout(Duration::from_secs(15), consumer.recv())
        .await
        .expect("the broker serves a fetch within 15 s")
        .expect("a record");
    assert_eq!(
        read.payload(),
        Some(marker.as_bytes()),
        "the record read back"
    );
}

/// Every record of `topic` as (key, value), read from the beginning up to
/// the log end as it is now — and on until nothing more comes for a second,
/// since tansu's memory engine reports watermarks below what it serves.
pub fn read_topic(bootstrap: &str, topic: &str) -> Vec<(String, Vec<u8>)> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let end = log_end(bootstrap, topic);
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "oms-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    let mut next: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_since = Instant::now();
    let mut last_error = None;
    let behind = |next: &std::collections::BTreeMap<i32, i64>| {
        end.iter()
            .any(|(p, e)| next.get(p).copied().unwrap_or(0) < *e)
    };
    while behind(&next) || quiet_since.elapsed() < Duration::from_secs(1) {
        assert!(
            Instant::now() < deadline,
            "{topic}: read {next:?} of {end:?} within 60 s (last error: {last_error:?})"
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        // librdkafka reports a dropped connection (`AllBrokersDown` when the
        // broker closes an idle one) as an error event and reconnects on its
        // own: keep reading, the deadline bounds it.
        let m = match message {
            Ok(m) => m,
            Err(err) => {
                last_error = Some(err);
                continue;
            }
        };
        quiet_since = Instant::now();
        next.insert(m.partition(), m.offset() + 1);
        out.push((
            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            m.payload().unwrap_or_default().to_vec(),
        ));
    }
    out
}

/// The terms the crash and group loads give order `n`: one in eleven is a
/// market order (`fok` every third time, else `ioc`), one a limit `ioc`,
/// one a limit `fok`, one `post_only`; the rest are limit orders that
/// rest (`gtc`).
pub fn terms_of(n: u64, body: &mut Value) {
    match n % 11 {
        3 => {
            body.as_object_mut().expect("an order").remove("price");
            body["type"] = json!("market");
            if (n / 11) % 3 == 0 {
                body["time_in_force"] = json!("fok");
            }
        }
        5 => body["time_in_force"] = json!("ioc"),
        7 => body["time_in_force"] = json!("fok"),
        9 => body["post_only"] = json!(true),
        _ => {}
    }
}

/// One order as the reference matcher sees it.
#[derive(Debug, Clone)]
pub struct RefOrder {
    pub id: Uuid,
    pub buy: bool,
    /// The limit; `None`: a market order.
    pub price: Option<rust_decimal::Decimal>,
    pub quantity: rust_decimal::Decimal,
    /// The owner; `None` (an order of no account) never self-trades.
    pub account: Option<String>,
    pub time_in_force: oms::domain::TimeInForce,
    pub post_only: bool,
}

impl RefOrder {
    /// Whether `maker` rests within this order's limit, on the other side.
    fn reaches(&self, maker: &RefOrder) -> bool {
        let limit = maker.price.expect("only limit orders rest");
        maker.buy != self.buy
            && match self.price {
                None => true,
                Some(price) if self.buy => limit <= price,
                Some(price) => limit >= price,
            }
    }

    fn owns_with(&self, maker: &RefOrder) -> bool {
        self.account.is_some() && maker.account == self.account
    }
}

/// What the reference matcher computed: each trade as (buy id, sell id,
/// price, quantity), and the filled quantity of every order.
#[derive(Debug, Default)]
pub struct RefOutcome {
    pub trades: Vec<(Uuid, Uuid, rust_decimal::Decimal, rust_decimal::Decimal)>,
    pub filled: std::collections::HashMap<Uuid, rust_decimal::Decimal>,
    /// Resting orders cancelled because their own account's order reached them.
    pub self_cancelled: std::collections::HashSet<Uuid>,
    /// Orders that did not rest what was left: `expired` or `rejected`.
    pub ended: std::collections::HashMap<Uuid, oms::domain::Status>,
}

/// The obvious price-time matcher, independent of oms' book: for each
/// order in log order, scan every resting order of the other side for the
/// best price (then the oldest), trade at the resting price, rest the rest.
/// Self-trade prevention as oms states it: a best resting order of the
/// incoming order's own account is cancelled instead, and the scan goes on.
/// The terms as oms states them: a `post_only` order that reaches any
/// resting order is rejected; a `fok` order expires untouched unless the
/// orders it reaches, its own account's left out, hold all of it; what a
/// market or `ioc` order leaves expires.
pub fn reference_match(orders: &[RefOrder]) -> RefOutcome {
    use oms::domain::{Status, TimeInForce};
    use rust_decimal::Decimal;
    let mut out = RefOutcome::default();
    // (arrival, order, remaining)
    let mut resting: Vec<(usize, RefOrder, Decimal)> = Vec::new();
    for (arrival, order) in orders.iter().enumerate() {
        let mut left = order.quantity;
        out.filled.entry(order.id).or_insert(Decimal::ZERO);
        if order.post_only && resting.iter().any(|(_, r, _)| order.reaches(r)) {
            out.ended.insert(order.id, Status::Rejected);
            continue;
        }
        if order.time_in_force == TimeInForce::Fok {
            let available: Decimal = resting
                .iter()
                .filter(|(_, r, _)| order.reaches(r) && !order.owns_with(r))
                .map(|(_, _, remaining)| *remaining)
                .sum();
            if available < order.quantity {
                out.ended.insert(order.id, Status::Expired);
                continue;
            }
        }
        while !left.is_zero() {
            let best = resting
                .iter()
                .enumerate()
                .filter(|(_, (_, r, _))| order.reaches(r))
                .min_by(|(_, a), (_, b)| {
                    let by_price = if order.buy {
                        a.1.price.cmp(&b.1.price)
                    } else {
                        b.1.price.cmp(&a.1.price)
                    };
                    by_price.then(a.0.cmp(&b.0))
                })
                .map(|(i, _)| i);
            let Some(i) = best else { break };
            if order.owns_with(&resting[i].1) {
                out.self_cancelled.insert(resting[i].1.id);
                resting.remove(i);
                continue;
            }
            let quantity = left.min(resting[i].2);
            let maker = resting[i].1.clone();
            let (buy, sell) = if order.buy {
                (order.id, maker.id)
            } else {
                (maker.id, order.id)
            };
            out.trades.push((
                buy,
                sell,
                maker.price.expect("only limit orders rest"),
                quantity,
            ));
            *out.filled.entry(order.id).or_default() += quantity;
            *out.filled.entry(maker.id).or_default() += quantity;
            left -= quantity;
            resting[i].2 -= quantity;
            if resting[i].2.is_zero() {
                resting.remove(i);
            }
        }
        if !left.is_zero() {
            if order.price.is_some() && order.time_in_force == TimeInForce::Gtc {
                resting.push((arrival, order.clone(), left));
            } else {
                out.ended.insert(order.id, Status::Expired);
            }
        }
    }
    out
}

/// Trades and traded quantity, as the closing notes report them.
#[derive(Debug, Default)]
pub struct MatchCheck {
    pub orders: usize,
    pub trades: usize,
    pub traded: rust_decimal::Decimal,
    /// Trade records on the trades topic (a retry publishes one again,
    /// under the same id).
    pub published: usize,
    /// Orders that ended without resting what was left, each as the
    /// reference matcher says: `expired` (market, `ioc`, `fok`) and
    /// `rejected` (`post_only`).
    pub expired: usize,
    pub rejected: usize,
}

/// Checks what `app`'s store holds of matching against [`reference_match`]
/// run over the stored orders of `symbols` in log order (a symbol is one
/// partition): the same trades, none twice, every order's fill and status
/// as the reference says — and the trades topic holds exactly the stored
/// trades' ids (no trade missing, none the store does not have).
pub async fn check_matching(app: &TestApp, symbols: &[&str]) -> MatchCheck {
    check_matching_in(app.store.as_ref(), &app.settings, symbols).await
}

/// [`check_matching`] on a store read directly (no consumer of the test's
/// own, which would store what the instances under test left behind).
pub async fn check_matching_in(
    store: &dyn oms::store::Store,
    settings: &Settings,
    symbols: &[&str],
) -> MatchCheck {
    use oms::domain::Status;
    use rust_decimal::Decimal;
    let mut check = MatchCheck::default();
    let mut stored_ids = std::collections::HashSet::new();
    for symbol in symbols {
        let mut orders = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .list_by_symbol(symbol, after, 1_000)
                .await
                .expect("list orders");
            after = page.last().map(|o| o.order.id);
            let done = page.len() < 1_000;
            orders.extend(page);
            if done {
                break;
            }
        }
        orders.sort_by_key(|o| o.offset);
        let reference = reference_match(
            &orders
                .iter()
                .map(|o| RefOrder {
                    id: o.order.id,
                    buy: o.order.side == oms::domain::Side::Buy,
                    price: o.order.limit(),
                    quantity: o.order.quantity.value(),
                    account: o.order.account.as_ref().map(|a| a.as_str().to_owned()),
                    time_in_force: o.order.terms.time_in_force,
                    post_only: o.order.terms.post_only,
                })
                .collect::<Vec<_>>(),
        );
        let mut trades = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .trades(symbol, after, 1_000)
                .await
                .expect("list trades");
            after = page.last().map(|t| t.trade.id);
            let done = page.len() < 1_000;
            trades.extend(page);
            if done {
                break;
            }
        }
        for t in &trades {
            assert!(
                stored_ids.insert(t.trade.id),
                "trade {} stored twice",
                t.trade.id
            );
        }
        let key =
            |(b, s, p, q): (Uuid, Uuid, Decimal, Decimal)| (b, s, p.normalize(), q.normalize());
        let mut got: Vec<_> = trades
            .iter()
            .map(|t| {
                key((
                    t.trade.buy_order_id,
                    t.trade.sell_order_id,
                    t.trade.price,
                    t.trade.quantity,
                ))
            })
            .collect();
        let mut want: Vec<_> = reference.trades.iter().copied().map(key).collect();
        got.sort();
        want.sort();
        if got != want {
            // Name the trades that differ by their orders' log positions,
            // so a failure says where matching went another way.
            let offset: std::collections::HashMap<Uuid, i64> =
                orders.iter().map(|o| (o.order.id, o.offset)).collect();
            let only = |a: &[(Uuid, Uuid, Decimal, Decimal)],
                        b: &[(Uuid, Uuid, Decimal, Decimal)]| {
                let mut rest: Vec<_> = b.to_vec();
                a.iter()
                    .filter(|t| match rest.iter().position(|r| r == *t) {
                        Some(i) => {
                            rest.swap_remove(i);
                            false
                        }
                        None => true,
                    })
                    .take(5)
                    .map(|(b, s, p, q)| format!("buy@{} sell@{} {q} at {p}", offset[b], offset[s]))
                    .collect::<Vec<_>>()
            };
            panic!(
                "{symbol}: {} trades stored, {} by the reference matcher; only stored: {:?}; only in the reference: {:?}",
                got.len(),
                want.len(),
                only(&got, &want),
                only(&want, &got)
            );
        }
        for o in &orders {
            let filled = reference.filled[&o.order.id];
            let quantity = o.order.quantity.value();
            let status = if let Some(ended) = reference.ended.get(&o.order.id) {
                *ended
            } else if reference.self_cancelled.contains(&o.order.id) {
                Status::Cancelled
            } else if filled.is_zero() {
                Status::Open
            } else if filled == quantity {
                Status::Filled
            } else {
                Status::PartiallyFilled
            };
            assert_eq!(
                (o.fill.status, o.fill.filled.normalize()),
                (status, filled.normalize()),
                "{symbol}: order {} at offset {}",
                o.order.id,
                o.offset
            );
        }
        check.orders += orders.len();
        check.expired += orders
            .iter()
            .filter(|o| o.fill.status == Status::Expired)
            .count();
        check.rejected += orders
            .iter()
            .filter(|o| o.fill.status == Status::Rejected)
            .count();
        check.trades += trades.len();
        check.traded += trades.iter().map(|t| t.trade.quantity).sum::<Decimal>();
    }
    // The topic also holds the feed's per-batch symbol records.
    let published: Vec<oms::domain::StoredTrade> =
        read_topic(&settings.broker.bootstrap, &settings.broker.trades_topic)
            .iter()
            .filter_map(|(_, value)| {
                match oms::feed::FeedRecord::decode(value).expect("a feed record") {
                    oms::feed::FeedRecord::Trade(t) => Some(t),
                    oms::feed::FeedRecord::Symbol(_) => None,
                }
            })
            .collect();
    check.published = published.len();
    let topic_ids: std::collections::HashSet<Uuid> = published.iter().map(|t| t.trade.id).collect();
    assert!(
        topic_ids == stored_ids,
        "the trades topic holds {} trade ids, the store {} ({} only on the topic, {} only in the store)",
        topic_ids.len(),
        stored_ids.len(),
        topic_ids.difference(&stored_ids).count(),
        stored_ids.difference(&topic_ids).count()
    );
    check
}
