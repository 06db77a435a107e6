//! The Kafka-API log's clients that are not the consumer loop: topic
//! admin, the order producer, and the dead-letter writer and reader.

pub mod admin;
pub mod dlq;
pub mod producer;

use rdkafka::ClientConfig;
use rdkafka::message::{Headers, Message};

use crate::config::BrokerSettings;

/// How long a metadata request (health probe, partition lookup) may take.
pub const METADATA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The librdkafka settings every oms client shares.
pub fn client_config(settings: &BrokerSettings, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.bootstrap)
        .set("client.id", client_id)
        // Loopback brokers restart in well under a second; reconnect quickly.
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "1000")
        .set("log_level", "4");
    config
}

/// The first header `key` of `message`, if it is UTF-8.
pub fn header_str<'m>(message: &'m impl Message, key: &str) -> Option<&'m str> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}
