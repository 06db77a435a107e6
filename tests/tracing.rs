//! Traces through the log: a real OTLP/HTTP receiver (protobuf, decoded with
//! the OpenTelemetry protocol's own types) started by the test receives what
//! a real `oms serve` exports, and the HTTP, producer and consumer spans of
//! an order must form one trace.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{OmsProcess, bootstrap, eventually, free_port, order_body, settings};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use poem::listener::TcpListener;
use poem::web::Data;
use poem::{EndpointExt, Route, Server, handler, post};
use prost::Message;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

#[derive(Default)]
struct Inbox {
    requests: usize,
    spans: Vec<Received>,
}

/// An OTLP/HTTP trace receiver (`POST /v1/traces`, binary protobuf).
struct Receiver {
    base: String,
    inbox: Arc<Mutex<Inbox>>,
    stop: CancellationToken,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[handler]
fn export(body: Vec<u8>, inbox: Data<&Arc<Mutex<Inbox>>>) -> poem::Response {
    let Ok(request) = ExportTraceServiceRequest::decode(body.as_slice()) else {
        return poem::Response::builder()
            .status(poem::http::StatusCode::BAD_REQUEST)
            .finish();
    };
    let mut inbox = inbox.lock().expect("inbox");
    inbox.requests += 1;
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| string_value(kv.value.as_ref()))
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            inbox.spans.push(Received {
                service: service.clone(),
                name: span.name,
                kind: span.kind,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                attributes: span
                    .attributes
                    .iter()
                    .filter_map(|kv| Some((kv.key.clone(), string_value(kv.value.as_ref())?)))
                    .collect(),
            });
        }
    }
    poem::Response::builder()
        .content_type("application/x-protobuf")
        .body(ExportTraceServiceResponse::default().encode_to_vec())
}

fn string_value(
    value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>,
) -> Option<String> {
    match value?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let port = free_port();
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let stop = CancellationToken::new();
        let app = Route::new()
            .at("/v1/traces", post(export))
            .data(inbox.clone());
        let server = Server::new(TcpListener::bind(format!("127.0.0.1:{port}")));
        let token = stop.clone();
        tokio::spawn(async move {
            server
                .run_with_graceful_shutdown(app, token.cancelled_owned(), None)
                .await
        });
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let up = eventually(Duration::from_secs(5), || {
            let probe = client.post(format!("{base}/v1/traces")).body(Vec::new());
            async move { probe.send().await.ok().map(drop) }
        })
        .await;
        assert!(up.is_some(), "the OTLP receiver listens");
        inbox.lock().expect("inbox").requests = 0; // the probe above
        Receiver { base, inbox, stop }
    }

    fn spans(&self) -> Vec<Received> {
        self.inbox.lock().expect("inbox").spans.clone()
    }

    fn requests(&self) -> usize {
        self.inbox.lock().expect("inbox").requests
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A W3C trace context of the test's own, as an upstream caller would send it.
fn caller_context() -> (String, String) {
    let trace_id = Uuid::now_v7().simple().to_string();
    let span_id = Uuid::now_v7().simple().to_string()[16..].to_owned();
    (trace_id, span_id)
}

async fn start_oms(
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (OmsProcess, std::path::PathBuf) {
    let cfg = settings(&bootstrap(), &dir.join("store"));
    oms::broker::admin::create_topics(&cfg.broker)
        .await
        .expect("topics");
    let args = common::serve_args(&cfg);
    let log = dir.join("oms.log");
    let mut env = env.to_vec();
    env.extend([
        ("OMS__TELEMETRY__LOG_FORMAT", "json"),
        ("OMS__TELEMETRY__LOG_FILTER", "warn,oms=debug"),
    ]);
    (
        OmsProcess::start_with_env(free_port(), &args, &env, &log).await,
        log,
    )
}

/// Posts an order (with `traceparent` if given) and waits until it is stored.
async fn submit(oms: &OmsProcess, n: u64, traceparent: Option<&str>) -> Uuid {
    let client = common::client(Duration::from_secs(30));
    let mut request = client
        .post(format!("{}/orders", oms.base))
        .json(&order_body(n));
    if let Some(tp) = traceparent {
        request = request.header("traceparent", tp);
    }
    let resp = request.send().await.expect("POST /orders");
    assert_eq!(resp.status(), 202);
    let id = common::accepted_id(resp).await;
    let stored = eventually(Duration::from_secs(15), || {
        let url = format!("{}/orders/{id}", oms.base);
        let client = client.clone();
        async move {
            let resp = client.get(url).send().await.ok()?;
            (resp.status() == 200).then_some(())
        }
    })
    .await;
    assert!(stored.is_some(), "order {id} stored");
    id
}

/// The JSON log line `message` about `order_id`.
fn log_line(log: &std::path::Path, message: &str, order_id: Uuid) -> Option<Value> {
    std::fs::read_to_string(log)
        .expect("oms log")
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|v| v["message"] == message && v["order_id"].as_str() == Some(&order_id.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_producer_and_consumer_spans_form_one_trace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start().await;
    let (oms, log) = start_oms(
        dir.path(),
        &[
            ("OMS__TELEMETRY__OTLP_ENDPOINT", &receiver.base),
            ("OMS__TELEMETRY__SERVICE_NAME", "oms-trace-test"),
            // The SDK's standard knob: export every 200 ms instead of 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    )
    .await;

    // A caller that is itself traced: oms must continue its trace.
    let (trace_id, caller_span) = caller_context();
    let traced = submit(&oms, 1, Some(&format!("00-{trace_id}-{caller_span}-01"))).await;
    // A caller without a trace: oms starts one.
    let fresh = submit(&oms, 2, None).await;

    let span_of = |spans: &[Received], kind: SpanKind, order: Option<Uuid>, trace: Option<&str>| {
        spans
            .iter()
            .find(|s| {
                s.kind == kind as i32
                    && order.is_none_or(|id| s.attributes.get("order_id") == Some(&id.to_string()))
                    && trace.is_none_or(|t| s.trace_id == t)
            })
            .cloned()
    };
    // Spans arrive in batches (the SDK exports every few seconds).
    let chain = eventually(Duration::from_secs(30), || {
        let spans = receiver.spans();
        let server = span_of(&spans, SpanKind::Server, None, Some(&trace_id));
        let producer = span_of(&spans, SpanKind::Producer, Some(traced), None);
        let consumer = span_of(&spans, SpanKind::Consumer, Some(traced), None);
        let fresh_consumer = span_of(&spans, SpanKind::Consumer, Some(fresh), None);
        async move { Some((server?, producer?, consumer?, fresh_consumer?)) }
    })
    .await;
    let (server, producer, consumer, fresh_consumer) = chain.unwrap_or_else(|| {
        panic!(
            "server, producer and consumer spans exported within 30 s; received {} request(s): {:#?}",
            receiver.requests(),
            receiver.spans()
        )
    });

    assert_eq!(server.service, "oms-trace-test");
    assert_eq!(server.name, "POST /orders");
    assert_eq!(
        server.parent_span_id, caller_span,
        "continues the caller's span"
    );
    assert_eq!(
        server
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("202")
    );
    assert_eq!(
        producer.trace_id, trace_id,
        "producer span in the caller's trace"
    );
    assert_eq!(
        producer.parent_span_id, server.span_id,
        "produced within the request"
    );
    assert_eq!(
        consumer.trace_id, trace_id,
        "consumer span joins the same trace"
    );
    assert_eq!(
        consumer.parent_span_id, producer.span_id,
        "the record's traceparent names the producer span"
    );
    assert!(consumer.attributes.contains_key("store.engine"));

    let spans = receiver.spans();
    let fresh_trace = &fresh_consumer.trace_id;
    assert_ne!(
        fresh_trace, &trace_id,
        "a request without traceparent gets its own trace"
    );
    let fresh_server = span_of(&spans, SpanKind::Server, None, Some(fresh_trace));
    let fresh_producer = span_of(&spans, SpanKind::Producer, Some(fresh), Some(fresh_trace));
    assert!(
        fresh_server.is_some() && fresh_producer.is_some(),
        "the fresh trace holds its server and producer spans too"
    );

    // Logs about the order carry its id and its trace id.
    assert!(oms.terminate(Duration::from_secs(20)).success());
    let accepted = log_line(&log, "order accepted", traced).expect("'order accepted' logged");
    assert_eq!(
        accepted["span"]["trace_id"],
        trace_id.as_str(),
        "{accepted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start().await;
    // Even the standard OTLP variable must not switch exporting on: oms
    // exports only where `telemetry.otlp_endpoint` says.
    let (oms, log) = start_oms(
        dir.path(),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.base)],
    )
    .await;

    let (trace_id, caller_span) = caller_context();
    let id = submit(&oms, 1, Some(&format!("00-{trace_id}-{caller_span}-01"))).await;
    // Graceful shutdown flushes any exporter there is, so after it the
    // receiver has seen everything it ever will.
    assert!(oms.terminate(Duration::from_secs(20)).success());
    assert_eq!(
        receiver.requests(),
        0,
        "no export request reached the receiver"
    );

    // The trace id still correlates the logs.
    let accepted = log_line(&log, "order accepted", id).expect("'order accepted' logged");
    assert_eq!(
        accepted["span"]["trace_id"],
        trace_id.as_str(),
        "{accepted}"
    );
}
