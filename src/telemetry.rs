//! Logs (`tracing-subscriber`, pretty or JSON) and the Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetrySettings};

/// Latency buckets from 100 µs to 10 s: loopback requests are sub-millisecond,
/// a produce timeout is seconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Records per consumer batch.
const BATCH_BUCKETS: [f64; 10] = [
    1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0,
];

/// Installs the global log subscriber. A second call (tests) is a no-op.
pub fn init_logs(
    settings: &TelemetrySettings,
) -> Result<(), tracing_subscriber::filter::ParseError> {
    let filter = EnvFilter::try_new(&settings.log_filter)?;
    // Colours only on a terminal: `just up` writes logs to files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let _already_set = match settings.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    Ok(())
}

/// Counters whose absence would read as "no data" rather than zero on a
/// dashboard start at 0, with every label value they can take.
fn register_zeroes() {
    for reason in ["decode", "validate", "store"] {
        metrics::counter!("dlq_messages_total", "reason" => reason).absolute(0);
    }
    for kind in ["timeout", "refused"] {
        metrics::counter!("produce_errors_total", "kind" => kind).absolute(0);
    }
    metrics::counter!("orders_replayed_total").absolute(0);
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("consumer_batch_size".into()),
                        &BATCH_BUCKETS,
                    )
                })
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())
                .inspect(|_| register_zeroes())
        })
        .clone()
}
