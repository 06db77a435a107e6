//! Logs (`tracing-subscriber`, pretty or JSON), traces (OpenTelemetry over
//! OTLP/HTTP) and the Prometheus recorder.
//!
//! With `telemetry.otlp_endpoint` set, oms' spans go through the
//! OpenTelemetry layer: each request gets a trace id (on its log lines and,
//! when sampled, in its record's `traceparent` header). Without an endpoint
//! there is nowhere to send a span, so the request path creates none
//! ([`spans_enabled`]) and the OpenTelemetry layer is not installed: that
//! per-request work was a measurable share of oms' CPU per order.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::subscriber::Interest;
use tracing::{Level, Metadata, Subscriber, span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{LogFormat, TelemetrySettings};

/// The W3C Trace Context header (HTTP and record headers alike).
pub const TRACEPARENT: &str = "traceparent";

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

/// Matching one batch: microseconds (a few hundred ns per order).
const MATCH_BUCKETS: [f64; 12] = [
    0.000_001, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005,
    0.01, 0.1,
];

/// How long shutdown waits for the last spans to reach the collector.
const EXPORT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why logging or tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid telemetry.log_filter")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    #[error("telemetry.sample_ratio must be between 0.0 and 1.0, not {0}")]
    SampleRatio(f64),
    #[error("cannot build the OTLP exporter for {endpoint}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Keeps the tracer provider alive; [`Telemetry::shutdown`] sends what is
/// still buffered.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flushes and stops the exporter (blocking; at most a few seconds).
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown_with_timeout(EXPORT_SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %err, "traces not flushed on shutdown");
        }
    }
}

/// Whether spans are exported (set once by [`init`]).
static SPANS: AtomicBool = AtomicBool::new(false);

/// Are spans exported? The request and record paths create spans only then.
pub fn spans_enabled() -> bool {
    SPANS.load(Ordering::Relaxed)
}

/// Installs the global subscriber: log lines filtered by `log_filter`, and
/// oms' own spans (info and above, whatever the log filter says) to
/// OpenTelemetry. A second call (tests) keeps the first subscriber.
pub fn init(settings: &TelemetrySettings) -> Result<Telemetry, TelemetryError> {
    let exporting = otlp_endpoint(settings).is_some();
    let filter = OmsFilter {
        logs: EnvFilter::try_new(&settings.log_filter)?,
        exporting,
    };
    let provider = tracer_provider(settings)?;
    // Colours only on a terminal: `just up` writes logs to files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let logs = match settings.log_format {
        // The current span's fields (trace_id, order_id, route) go on every line.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_ansi(ansi).boxed(),
    };
    let traces = exporting.then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("oms"))
            .with_threads(false)
    });
    let installed = Registry::default()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    if installed {
        SPANS.store(exporting, Ordering::Relaxed);
    }
    Ok(Telemetry { provider })
}

/// One global filter: what `log_filter` enables, plus — when spans are
/// exported — oms' spans at info and above, which traces need even when the
/// logs say `warn`.
///
/// Deliberately not two per-layer filters: tracing-subscriber carries
/// per-layer decisions in a thread-local that a `log` record (rdkafka and
/// sqlx log through the `log` crate) can leave stale, and then a span is
/// silently dropped (tokio-rs/tracing#2519, #2704). The test
/// `http_producer_and_consumer_spans_form_one_trace` caught exactly that.
struct OmsFilter {
    logs: EnvFilter,
    exporting: bool,
}

impl OmsFilter {
    fn is_traced(&self, metadata: &Metadata<'_>) -> bool {
        let target = metadata.target();
        self.exporting
            && metadata.is_span()
            && *metadata.level() <= Level::INFO
            && (target == "oms" || target.starts_with("oms::"))
    }
}

impl<S> Layer<S> for OmsFilter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.is_traced(metadata) {
            Interest::always()
        } else {
            <EnvFilter as Layer<S>>::register_callsite(&self.logs, metadata)
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: LayerContext<'_, S>) -> bool {
        self.is_traced(metadata) || self.logs.enabled(metadata, ctx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let logs = <EnvFilter as Layer<S>>::max_level_hint(&self.logs)?;
        Some(if self.exporting {
            logs.max(LevelFilter::INFO)
        } else {
            logs
        })
    }

    // The log filter's span-scoped directives (`[span{field=…}]`) need these.
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: LayerContext<'_, S>) {
        self.logs.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: LayerContext<'_, S>) {
        self.logs.on_record(id, values, ctx);
    }

    fn on_enter(&self, id: &span::Id, ctx: LayerContext<'_, S>) {
        self.logs.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &span::Id, ctx: LayerContext<'_, S>) {
        self.logs.on_exit(id, ctx);
    }

    fn on_close(&self, id: span::Id, ctx: LayerContext<'_, S>) {
        self.logs.on_close(id, ctx);
    }
}

/// The collector base URL, if spans are exported at all.
fn otlp_endpoint(settings: &TelemetrySettings) -> Option<&str> {
    let endpoint = settings.otlp_endpoint.trim().trim_end_matches('/');
    (!endpoint.is_empty()).then_some(endpoint)
}

fn tracer_provider(settings: &TelemetrySettings) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = otlp_endpoint(settings) else {
        return Ok(builder.with_sampler(Sampler::AlwaysOff).build());
    };
    let ratio = settings.sample_ratio;
    if !(0.0..=1.0).contains(&ratio) {
        return Err(TelemetryError::SampleRatio(ratio));
    }
    let traces_url = format!("{endpoint}/v1/traces");
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(&traces_url)
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: traces_url,
            source,
        })?;
    Ok(builder
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_batch_exporter(exporter)
        .build())
}

/// The W3C `traceparent` of `span`, for a record's header — only when its
/// trace is sampled: an unsampled context would make every record carry
/// (and the broker store) a header nobody reads.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_sampled() {
        return None;
    }
    let mut slot = TraceParentSlot(None);
    TraceContextPropagator::new().inject_context(&context, &mut slot);
    slot.0
}

/// Receives the injected `traceparent` (a map per produced record would be
/// an allocation on the request path for one value).
struct TraceParentSlot(Option<String>);

impl opentelemetry::propagation::Injector for TraceParentSlot {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

/// Makes `span` a child of the context in `carrier` (a `traceparent`, from
/// an HTTP request or a record), if it holds one.
pub fn continue_trace(span: &tracing::Span, carrier: &dyn Extractor) {
    let parent = TraceContextPropagator::new().extract(carrier);
    if parent.span().span_context().is_valid() {
        // Fails only when the span is disabled or already started: then it
        // simply keeps its own trace.
        let _ = span.set_parent(parent);
    }
}

/// The trace id a caller sent in `carrier` (its `traceparent`), if valid:
/// with no exporter, it still correlates oms' log lines with the caller's trace.
pub fn caller_trace_id(carrier: &dyn Extractor) -> Option<String> {
    let context = TraceContextPropagator::new().extract(carrier);
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The trace id of `span` as 32 hex digits (what Jaeger searches for).
pub fn trace_id(span: &tracing::Span) -> String {
    span.context().span().span_context().trace_id().to_string()
}

/// A lone `traceparent` value as a carrier.
pub struct TraceParent<'a>(pub Option<&'a str>);

impl Extractor for TraceParent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// Is `traceparent` a sampled W3C trace context (flags `01`)?
pub fn is_sampled(traceparent: &str) -> bool {
    TraceContextPropagator::new()
        .extract(&TraceParent(Some(traceparent)))
        .span()
        .span_context()
        .is_sampled()
}

/// Counters whose absence would read as "no data" rather than zero on a
/// dashboard start at 0, with every label value they can take.
fn register_zeroes() {
    for reason in ["decode", "validate", "store"] {
        metrics::counter!("dlq_messages_total", "reason" => reason).absolute(0);
    }
    for kind in ["timeout", "queue_full", "refused"] {
        metrics::counter!("produce_errors_total", "kind" => kind).absolute(0);
    }
    metrics::counter!("orders_replayed_total").absolute(0);
    metrics::counter!("consumer_log_replaced_total").absolute(0);
    for name in [
        "orders_matched_total",
        "orders_cancelled_total",
        "trades_total",
        "cancels_produced_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
}

/// The Prometheus recorder could not be installed (kept, once, for every
/// caller: the recorder is process-wide).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the Prometheus recorder could not be installed")]
pub struct MetricsError(#[source] std::sync::Arc<metrics_exporter_prometheus::BuildError>);

impl MetricsError {
    fn of(err: metrics_exporter_prometheus::BuildError) -> Self {
        Self(std::sync::Arc::new(err))
    }
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics() -> Result<PrometheusHandle, MetricsError> {
    static HANDLE: OnceLock<Result<PrometheusHandle, MetricsError>> = OnceLock::new();
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
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("match_seconds".into()), &MATCH_BUCKETS)
                })
                .map_err(MetricsError::of)?
                .install_recorder()
                .map_err(MetricsError::of)
                .inspect(|_| register_zeroes())
        })
        .clone()
}
