//! The raw broker baseline of `just bench`: rdkafka straight to the log, no
//! HTTP and no store, with oms' own producer and consumer settings.
//!
//!   cargo run --release --example rawlog -- produce --bootstrap 127.0.0.1:9092 --topic bench --count 1000000
//!   cargo run --release --example rawlog -- consume --bootstrap 127.0.0.1:9092 --topic bench
//!
//! Each prints one JSON line with what it measured.

#[path = "../benches/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use oms::config::{BrokerSettings, ConsumerSettings};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the topic (oms' partition count) and fill it with valid orders.
    Produce {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        count: u64,
    },
    /// Read the topic from the beginning, storing nothing: `--expect` records
    /// (what the producer had acknowledged), or else up to the watermarks.
    Consume {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        expect: Option<u64>,
    },
}

fn broker(bootstrap: &str, topic: &str) -> BrokerSettings {
    BrokerSettings {
        bootstrap: bootstrap.into(),
        topic: topic.into(),
        dlq_topic: format!("{topic}.dlq"),
        ..BrokerSettings::default()
    }
}

fn produce(settings: &BrokerSettings, count: u64) -> anyhow::Result<serde_json::Value> {
    tokio::runtime::Runtime::new()?
        .block_on(oms::broker::admin::create_topics(settings))
        .context("creating the topic")?;
    let took = support::produce(settings, &settings.topic, count)?;
    let end = support::settled_log_end(&settings.bootstrap, &settings.topic, count)?;
    Ok(serde_json::json!({
        "produced": count,
        "on_log": end.values().sum::<i64>(),
        "seconds": took.as_secs_f64(),
        "per_second": count as f64 / took.as_secs_f64(),
    }))
}

/// How long the raw consumer waits for a record before it gives up. Long:
/// tansu's sqlite engine takes tens of seconds to answer the first fetch of
/// a large partition.
const IDLE: Duration = Duration::from_secs(300);

fn consume(settings: &BrokerSettings, expect: Option<u64>) -> anyhow::Result<serde_json::Value> {
    let end = support::log_end(&settings.bootstrap, &settings.topic)?;
    let total: i64 = end.values().sum();
    let consumer: BaseConsumer =
        oms::consumer::consumer_config(settings, &ConsumerSettings::default()).create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in end.keys() {
        assignment.add_partition_offset(&settings.topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut next = std::collections::BTreeMap::new();
    let (mut records, mut bytes) = (0_u64, 0_u64);
    // tansu 0.6's memory engine reports watermarks below what it serves, so
    // with `--expect` the acknowledged count decides when the log is read.
    let done = |records: u64, next: &std::collections::BTreeMap<i32, i64>| match expect {
        Some(n) => records >= n,
        None => end
            .iter()
            .all(|(p, high)| next.get(p).copied().unwrap_or(0) >= *high),
    };
    let started = Instant::now();
    let mut last = Instant::now();
    let mut first_record = None;
    while !done(records, &next) {
        anyhow::ensure!(
            last.elapsed() < IDLE,
            "no record for {IDLE:?} after {records} records (expected {expect:?}, watermarks {total})"
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        last = Instant::now();
        first_record.get_or_insert_with(|| started.elapsed().as_secs_f64());
        records += 1;
        bytes += message.payload().map_or(0, |p| p.len() as u64);
        next.insert(message.partition(), message.offset() + 1);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "records": records,
        "on_log": total,
        "bytes": bytes,
        "seconds": seconds,
        "first_record_seconds": first_record,
        "per_second": records as f64 / seconds,
    }))
}

fn main() -> anyhow::Result<()> {
    let result = match Cli::parse().command {
        Cmd::Produce {
            bootstrap,
            topic,
            count,
        } => produce(&broker(&bootstrap, &topic), count)?,
        Cmd::Consume {
            bootstrap,
            topic,
            expect,
        } => consume(&broker(&bootstrap, &topic), expect)?,
    };
    println!("{result}");
    Ok(())
}
