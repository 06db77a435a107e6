//! What the benchmarks share: a private tansu broker, a bulk producer of
//! valid orders with oms' own producer settings, and the log end.
//!
//! Used by `benches/rebuild.rs` (`mod support;`) and `examples/rawlog.rs`
//! (`#[path]`), so both produce the same records the same way.

#![allow(dead_code)] // each user takes a different part

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use oms::config::BrokerSettings;
use oms::domain::NewOrder;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

/// A tansu broker of the benchmark's own; killed on drop.
pub struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

/// Starts tansu on `port` with `engine` (`memory` or `sqlite`), keeping
/// its state in `dir`, through `scripts/tansu.sh` (the one launcher).
pub fn start_broker(dir: &Path, port: u16, engine: &str) -> anyhow::Result<Broker> {
    let home = std::env::var("HOME").unwrap_or_default();
    let bin = env_or("OMS_TANSU", &format!("{home}/.cache/oms/tools/bin/tansu"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tansu.sh");
    let child = Command::new(script)
        .arg(port.to_string())
        .arg(engine)
        .arg(dir)
        .env("TANSU_BIN", &bin)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {bin} with {script} (run `just install`)"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "tansu did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Broker(child))
}

/// Counts records the broker did not acknowledge.
struct CountFailures(Arc<AtomicU64>);

impl ClientContext for CountFailures {}

impl ProducerContext for CountFailures {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Order `n` of a bulk load, as the record oms itself would write.
pub fn order_record(n: u64) -> anyhow::Result<(String, Vec<u8>)> {
    const SYMBOLS: [&str; 6] = ["USD", "GBP", "JPY", "CHF", "AUD", "CAD"];
    let order = NewOrder::from_value(serde_json::json!({
        "src_currency": SYMBOLS[(n % 6) as usize],
        "dst_currency": "EUR",
        "side": if n % 2 == 0 { "buy" } else { "sell" },
        "price": format!("{}.25", 100 + n % 900),
        "quantity": "10",
        "channel": 11,
        "description": format!("bench order {n}"),
    }))
    .and_then(|o| o.accept(Utc::now()))?;
    Ok((order.symbol(), order.to_record()))
}

/// Produces `orders` valid orders to `topic` as fast as the broker takes
/// them: oms' producer settings (idempotent, `acks=all`, its linger and
/// compression), but without waiting for each ack — the most the broker can
/// absorb from one producer. Fails if any record is not acknowledged.
pub fn produce(broker: &BrokerSettings, topic: &str, orders: u64) -> anyhow::Result<Duration> {
    let failures = Arc::new(AtomicU64::new(0));
    let producer: ThreadedProducer<CountFailures> =
        oms::broker::producer::producer_config(broker, "oms-bench-producer")
            // A bulk load queues far more than a request ever waits for.
            .set("message.timeout.ms", "300000")
            .set("queue.buffering.max.messages", "200000")
            .create_with_context(CountFailures(failures.clone()))?;
    let started = Instant::now();
    for n in 0..orders {
        let (key, payload) = order_record(n)?;
        let mut record = BaseRecord::to(topic).key(&key).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((err, back)) => {
                    anyhow::ensure!(
                        err.rdkafka_error_code()
                            == Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        "produce failed: {err}"
                    );
                    record = back;
                    // Backpressure: let the queue drain.
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(300))?;
    let failed = failures.load(Ordering::Relaxed);
    anyhow::ensure!(
        failed == 0,
        "{failed} of {orders} records were not acknowledged"
    );
    Ok(started.elapsed())
}

/// High watermark of every non-empty partition of `topic`.
pub fn log_end(bootstrap: &str, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut end = BTreeMap::new();
    for p in metadata.topics()[0].partitions() {
        let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        if high > 0 {
            end.insert(p.id(), high);
        }
    }
    Ok(end)
}

/// The log end once the watermarks account for `expected` records, or what
/// they say after 10 s. (tansu 0.6's memory engine reports watermarks below
/// what it holds and serves — 12,215 for 20,000 acknowledged and readable
/// records — so `just bench` counts records instead; the rebuild benchmark
/// rebuilds up to these watermarks and says how many that was.)
pub fn settled_log_end(
    bootstrap: &str,
    topic: &str,
    expected: u64,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let settle = Instant::now() + Duration::from_secs(10);
    loop {
        let end = log_end(bootstrap, topic)?;
        let total: i64 = end.values().sum();
        if total as u64 >= expected || Instant::now() > settle {
            return Ok(end);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
