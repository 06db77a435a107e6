//! What the consumer asks of an embedded store per order, without a broker:
//! `cargo bench --bench store_apply` (prints one JSON line per engine;
//! `OMS_BENCH_ORDERS`, default 200,000; `OMS_BENCH_BATCH`, default 100;
//! `OMS_BENCH_ENGINES`, default `redb,sled`).
//!
//! A restart is timed in a fresh process, as a real one is (a cold heap
//! whose every page is faulted in anew): the bench runs itself again with
//! `OMS_BENCH_REOPEN=ENGINE:FOLDER`, which opens that store, counts it and
//! prints the seconds and its CPU seconds; `reopen_s` is the median of three
//! (`reopen_fastest_s` the fastest). `OMS_BENCH_KEEP=1` leaves the folders,
//! for running that mode by hand (under `perf`, say).
//!
//! Two order streams, on three partitions: the load generators'
//! (`k6/orders.js`, `bench/wrk/orders.lua`: six symbols, prices cycling over
//! 900 levels, alternating sides — so each symbol only ever gets one side
//! and nothing trades: every order rests), and `crossing`, the same with the
//! side alternating per symbol, so most orders trade. Each batch goes the consumer's way: `known` for its
//! ids, the books, then one fenced `apply` with the fills and trades — so the numbers
//! are the store's share of oms' CPU per order, free of HTTP and broker
//! noise. For instruction counts that repeat exactly, run the binary under
//! `valgrind --tool=callgrind` with a smaller `OMS_BENCH_ORDERS`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use oms::config::{Engine, StoreSettings, StoreUrl};
use oms::domain::Positioned;
use oms::domain::StoredOrder;
use oms::domain::{Event, NewOrder, Order};
use oms::matching::Matcher;
use oms::store::Batch;

const SYMBOLS: [&str; 6] = ["USD", "GBP", "JPY", "CHF", "AUD", "CAD"];
const TOPIC: &str = "orders";

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds this process has used, every thread (the blocking pool too).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which ends at the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line; the slice starts at
    // field 3, so they sit at 11 and 12. /proc counts in USER_HZ, which
    // Linux fixes at 100 for userspace.
    (ticks(11) + ticks(12)) / 100.0
}

fn order(n: usize, crossing: bool) -> Order {
    let turn = if crossing { n / SYMBOLS.len() } else { n };
    NewOrder::from_value(serde_json::json!({
        "src_currency": SYMBOLS[n % SYMBOLS.len()],
        "dst_currency": "EUR",
        "side": if turn % 2 == 0 { "buy" } else { "sell" },
        "price": format!("{}.25", 100 + n % 900),
        "quantity": format!("{}", 1 + n % 50),
        "channel": 11,
        "description": "store bench",
        "client_order_id": format!("store-bench-{n}"),
    }))
    .and_then(|o| o.accept(Utc::now()))
    .unwrap_or_else(|e| panic!("a valid order: {e:?}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Ok(target) = std::env::var("OMS_BENCH_REOPEN") {
        return reopen(&target).await;
    }
    let orders = env_usize("OMS_BENCH_ORDERS", 200_000);
    let batch_size = env_usize("OMS_BENCH_BATCH", 100).max(1);
    let engines = std::env::var("OMS_BENCH_ENGINES").unwrap_or_else(|_| "redb,sled".into());
    for (profile, crossing) in [("load generators", false), ("crossing", true)] {
        // Prebuilt, so the clock measures the consumer's side only.
        let events: Vec<Positioned> = (0..orders)
            .map(|n| Positioned {
                partition: (n % SYMBOLS.len() % 3) as i32,
                offset: (n / 3) as i64,
                event: Event::Order(order(n, crossing)),
            })
            .collect();
        for name in engines.split(',') {
            run(name.trim(), profile, &events, batch_size).await?;
        }
    }
    Ok(())
}

/// One engine through every batch of `events`; prints its JSON line.
async fn run(
    name: &str,
    profile: &str,
    events: &[Positioned],
    batch_size: usize,
) -> anyhow::Result<()> {
    let orders = events.len();
    let engine = <Engine as clap::ValueEnum>::from_str(name, true).map_err(anyhow::Error::msg)?;
    let folder = PathBuf::from(format!(
        "/dev/shm/oms-bench/{}",
        uuid::Uuid::now_v7().simple()
    ));
    let settings = settings_of(engine, &folder)?;
    let rss_before = rss_mib();
    let store = oms::store::open(&settings).await?;
    let mut books = Matcher::new();
    let mut stored: BTreeMap<i32, i64> = BTreeMap::new();
    let (mut trades, mut store_seconds) = (0usize, 0.0f64);
    let cpu = cpu_seconds();
    let started = Instant::now();
    for chunk in events.chunks(batch_size) {
        let mut offsets = BTreeMap::new();
        let mut rows = Vec::with_capacity(chunk.len());
        let mut ids = Vec::with_capacity(chunk.len());
        for e in chunk {
            offsets.insert(e.partition, e.offset + 1);
            if let Event::Order(o) = &e.event {
                ids.push(o.id);
                rows.push(StoredOrder::new(o.clone(), e.partition, e.offset));
            }
        }
        let timed = Instant::now();
        let known: HashSet<_> = store.known(ids).await?;
        store_seconds += timed.elapsed().as_secs_f64();
        let outcome = books.run(chunk, &known);
        trades += outcome.trades.len();
        let expected = offsets
            .keys()
            .filter_map(|p| stored.get(p).map(|o| (*p, *o)))
            .collect();
        let batch = Batch::new(TOPIC, rows, offsets.clone())
            .matched(outcome.states, outcome.trades)
            .expecting(expected);
        let timed = Instant::now();
        store.apply(Arc::new(batch)).await?;
        store_seconds += timed.elapsed().as_secs_f64();
        stored.extend(offsets);
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    // What the store holds in this process (the memory engine's state;
    // redb's and sled's caches), freed pages given back first as oms'
    // trim thread does every second; then what a restart costs: close (the
    // memory engine writes its last snapshot) and open again.
    oms::memory::trim();
    let held_mib = rss_mib() - rss_before;
    let timed = Instant::now();
    drop(store);
    let close_seconds = timed.elapsed().as_secs_f64();
    // This machine's page-fault cost moves several-fold from one minute to
    // the next, and a restart is mostly faults: the median of three.
    let mut reopens = (0..REOPENS)
        .map(|_| reopen_in_a_fresh_process(name, &folder))
        .collect::<anyhow::Result<Vec<_>>>()?;
    reopens.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let fastest = reopens[0].seconds;
    let Reopened {
        seconds: reopen_seconds,
        cpu_seconds: reopen_cpu,
        orders: count,
    } = reopens[REOPENS / 2];
    println!(
        "{{\"engine\": \"{name}\", \"profile\": \"{profile}\", \"orders\": {orders}, \"batch\": {batch_size}, \"trades\": {trades}, \"seconds\": {seconds:.3}, \"cpu_us_per_order\": {:.1}, \"store_us_per_order\": {:.1}, \"held_mib\": {held_mib:.0}, \"close_s\": {close_seconds:.2}, \"reopen_s\": {reopen_seconds:.2}, \"reopen_fastest_s\": {fastest:.2}, \"reopen_cpu_s\": {reopen_cpu:.2}, \"reopened_orders\": {count}}}",
        cpu * 1e6 / orders as f64,
        store_seconds * 1e6 / orders as f64,
    );
    if std::env::var_os("OMS_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&folder);
    }
    Ok(())
}

fn settings_of(engine: Engine, folder: &Path) -> anyhow::Result<StoreSettings> {
    Ok(StoreSettings {
        url: StoreUrl::embedded(engine, folder).map_err(anyhow::Error::msg)?,
        ..StoreSettings::default()
    })
}

/// How many fresh processes time a restart.
const REOPENS: usize = 3;

/// A restart timed by a fresh process: from open to the first answer.
#[derive(Clone, Copy)]
struct Reopened {
    seconds: f64,
    cpu_seconds: f64,
    orders: u64,
}

/// `reopen`'s line on a child's stdout.
fn reopen_in_a_fresh_process(name: &str, folder: &Path) -> anyhow::Result<Reopened> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .env("OMS_BENCH_REOPEN", format!("{name}:{}", folder.display()))
        .stderr(std::process::Stdio::inherit())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "the reopening process failed: {}",
        out.status
    );
    let line = String::from_utf8(out.stdout)?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [seconds, cpu_seconds, orders] = fields[..] else {
        anyhow::bail!("unexpected reopen line {line:?}");
    };
    Ok(Reopened {
        seconds: seconds.parse()?,
        cpu_seconds: cpu_seconds.parse()?,
        orders: orders.parse()?,
    })
}

/// The child's side: `SECONDS CPU_SECONDS ORDERS` on one line.
async fn reopen(target: &str) -> anyhow::Result<()> {
    let (name, folder) = target
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("OMS_BENCH_REOPEN is ENGINE:FOLDER, not {target:?}"))?;
    let engine = <Engine as clap::ValueEnum>::from_str(name, true).map_err(anyhow::Error::msg)?;
    let settings = settings_of(engine, Path::new(folder))?;
    let (timed, cpu) = (Instant::now(), cpu_seconds());
    let store = oms::store::open(&settings).await?;
    let count = store.count().await?;
    println!(
        "{:.3} {:.3} {count}",
        timed.elapsed().as_secs_f64(),
        cpu_seconds() - cpu
    );
    // A restart is ready once it answers; what a drop costs is not in it.
    std::mem::forget(store);
    Ok(())
}

/// This process' resident memory, MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The allocator oms runs on.
#[global_allocator]
static ALLOCATOR: oms::memory::Allocator = oms::memory::Allocator;
