//! `[telemetry]`: logs and traces.

use serde::{Deserialize, Serialize};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// `[telemetry]`: logs and traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    /// `tracing` filter directives, e.g. `info,oms=debug`.
    pub log_filter: String,
    /// OTLP/HTTP collector base URL (`/v1/traces` is appended), e.g.
    /// `http://localhost:4318`. Empty: no exporter, nothing leaves the process.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces recorded, 0.0–1.0. A request that arrives with a
    /// sampled `traceparent` is always recorded (parent-based sampling).
    pub sample_ratio: f64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_filter: "info".into(),
            otlp_endpoint: String::new(),
            service_name: "oms".into(),
            sample_ratio: 1.0,
        }
    }
}
