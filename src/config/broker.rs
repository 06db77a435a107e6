//! `[broker]`: where the log is and how oms produces to it.

use serde::{Deserialize, Serialize};

/// `[broker]`: the Kafka-API log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// `bootstrap.servers` for librdkafka.
    pub bootstrap: String,
    /// Topic of accepted orders.
    pub topic: String,
    /// Dead-letter topic for records the consumer cannot store.
    pub dlq_topic: String,
    /// Topic the consumer publishes every trade to (key `SRC-DST`).
    pub trades_topic: String,
    /// Longest a `POST /orders` waits for the broker's ack before answering 503.
    pub produce_timeout_ms: u64,
    /// Producer `linger.ms`: how long records wait to be batched. With a
    /// closed-loop client every ms of it is latency and so throughput. Below
    /// the broker's produce latency, librdkafka's broker thread busy-polls
    /// whenever a partition has its 5 idempotent requests in flight and a
    /// batch past its linger: on the unpatched tansu (~7 ms per produce) 1 ms
    /// cost 209 µs of oms CPU per order; on the patched one (deployment/tansu)
    /// 2 ms costs what 5 ms did and serves 1.6× the orders at 35 connections
    /// (bench/analysis.md).
    pub linger_ms: u64,
    /// Producer `compression.type`: none, lz4, zstd, snappy or gzip. `none`
    /// on loopback: tansu inflates every batch on produce and serves records
    /// uncompressed, so compressing only costs CPU on both sides.
    pub compression: String,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            bootstrap: "127.0.0.1:9092".into(),
            topic: "orders".into(),
            dlq_topic: "orders.dlq".into(),
            trades_topic: "trades".into(),
            produce_timeout_ms: 2_000,
            linger_ms: 2,
            compression: "none".into(),
        }
    }
}
