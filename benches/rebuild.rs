//! Rebuild benchmark: how long does an empty store take to catch up with a
//! log of 1,000,000 orders, per engine and per batch size?
//!
//! `just bench-rebuild` (or `cargo bench --bench rebuild`). It starts a tansu
//! broker of its own (memory engine by default, so the broker is not the
//! bottleneck; `OMS_BENCH_BROKER=sqlite` for the durable
//! one), produces the orders straight to the log with rdkafka, then runs the
//! real consumer (`oms::app::Application`) into an empty store on tmpfs until
//! its offsets reach the log end. Postgres is included when
//! `OMS_BENCH_DATABASE_URL` names a maintenance database (each run gets a
//! fresh database). Results go to `bench/REBUILD.md`.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use oms::app::Application;
use oms::broker::admin;
use oms::config::{Engine, Settings, StoreUrl};
use support::{env_or, produce, settled_log_end, start_broker};
use tokio_util::sync::CancellationToken;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Run {
    engine: Engine,
    batch_max: usize,
    seconds: f64,
    rate: f64,
}

async fn rebuild(
    base: &Settings,
    engine: Engine,
    batch_max: usize,
    end: &BTreeMap<i32, i64>,
) -> anyhow::Result<Run> {
    let mut cfg = base.clone();
    cfg.consumer.batch_max = batch_max;
    if engine.is_embedded() {
        let folder = PathBuf::from(format!(
            "/dev/shm/oms-bench/{}",
            uuid::Uuid::now_v7().simple()
        ));
        cfg.store.url = StoreUrl::embedded(engine, &folder).map_err(anyhow::Error::msg)?;
    } else {
        let admin = std::env::var("OMS_BENCH_DATABASE_URL").context("OMS_BENCH_DATABASE_URL")?;
        let url = oms::store::postgres::PostgresStore::create_database(&admin, "oms_bench").await?;
        oms::store::postgres::PostgresStore::connect(&url, &cfg.store.postgres)
            .await?
            .migrate()
            .await?;
        cfg.store.url = url.parse().map_err(anyhow::Error::msg)?;
    }
    let app = Application::build(cfg.clone()).await?;
    let store = app.store();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(app.run(shutdown.clone()));
    let total: i64 = end.values().sum();
    loop {
        let offsets = store.offsets(&cfg.broker.topic).await?;
        if end
            .iter()
            .all(|(p, high)| offsets.get(p).is_some_and(|o| o >= high))
        {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "rebuild took over 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stored = store.count().await?;
    anyhow::ensure!(
        stored >= total as u64,
        "store holds {stored} of {total} orders"
    );
    drop(store);
    shutdown.cancel();
    task.await??;
    if let Some(folder) = cfg.store.url.path() {
        let _ = std::fs::remove_dir_all(folder);
    }
    let run = Run {
        engine,
        batch_max,
        seconds,
        rate: total as f64 / seconds,
    };
    eprintln!(
        "  {:<8} batch_max {:>5}: {:>6.1} s, {:>8.0} orders/s",
        engine.as_str(),
        batch_max,
        run.seconds,
        run.rate
    );
    Ok(run)
}

async fn run() -> anyhow::Result<()> {
    let orders: u64 = env_or("OMS_BENCH_ORDERS", "1000000").parse()?;
    let storage = env_or("OMS_BENCH_BROKER", "memory");
    let batches: Vec<usize> = env_or("OMS_BENCH_BATCHES", "100,1000,5000")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _broker = start_broker(dir.path(), port, &storage)?;
    let mut base = Settings::default();
    base.http.addr = "127.0.0.1:0".into();
    base.broker.bootstrap = format!("127.0.0.1:{port}");
    base.broker.topic = "rebuild".into();
    base.telemetry.log_filter = "warn".into();
    admin::create_topics(&base.broker).await?;

    eprintln!("producing {orders} orders to tansu ({storage}) ...");
    let produced = produce(&base.broker, &base.broker.topic, orders)?;
    let end = settled_log_end(&base.broker.bootstrap, &base.broker.topic, orders)?;
    let on_log: i64 = end.values().sum();
    eprintln!(
        "  produced in {:.1} s ({:.0}/s); the log reports {on_log} records {end:?}",
        produced.as_secs_f64(),
        orders as f64 / produced.as_secs_f64()
    );

    let mut engines = vec![Engine::Redb, Engine::Sled];
    if std::env::var("OMS_BENCH_DATABASE_URL").is_ok() {
        engines.push(Engine::Postgres);
    }
    eprintln!("rebuilding empty stores:");
    let mut runs = Vec::new();
    for engine in &engines {
        for batch in &batches {
            runs.push(rebuild(&base, *engine, *batch, &end).await?);
        }
    }

    let mut report = String::new();
    report.push_str("# Rebuild benchmark\n\n");
    report.push_str(&format!(
        "An empty store catching up with a log of **{orders} orders** (3 partitions), run by the real \
         consumer of oms. Broker: tansu 0.6 (`{storage}`) on the same machine. Store files on tmpfs; \
         Postgres 15 on local disk.\n\n"
    ));
    report.push_str(&format!(
        "- Date: {}\n- Machine: {} cores, {}\n- Command: `just bench-rebuild` (`cargo bench --bench rebuild`)\n- Producing the log: {:.1} s ({:.0} orders/s, rdkafka straight to the broker); the log reports {on_log} records\n- Peak RSS of the benchmark process (broker excluded): {:.0} MiB\n\n",
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned()))
            .unwrap_or_default(),
        produced.as_secs_f64(),
        orders as f64 / produced.as_secs_f64(),
        rss_mib(),
    ));
    report.push_str(
        "How to read it: each row is one rebuild of the same log into an empty store by the \
         real consumer loop (decode, validate, one transaction per batch with the offsets). \
         `vs. fastest` is the ratio to the fastest row of this run: the machine is shared and \
         noisy, so compare ratios within one run rather than absolute numbers across runs. The \
         broker runs in memory so that it is not the bottleneck.\n\n",
    );
    report.push_str("| engine | batch_max | rebuild time | orders/s | vs. fastest |\n|---|---:|---:|---:|---:|\n");
    let best = runs.iter().map(|r| r.rate).fold(0.0, f64::max);
    for r in &runs {
        report.push_str(&format!(
            "| {} | {} | {:.1} s | {:.0} | {:.2} |\n",
            r.engine.as_str(),
            r.batch_max,
            r.seconds,
            r.rate,
            r.rate / best
        ));
    }
    std::fs::create_dir_all("bench")?;
    std::fs::write("bench/REBUILD.md", &report)?;
    eprintln!("wrote bench/REBUILD.md");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}
