//! The HTTP surface: the OpenAPI service (orders, health), Swagger UI at
//! `/docs`, the spec at `/openapi.json` and `/openapi.yaml`, `/metrics`, and
//! the middleware every request passes (body limit, metrics, problem+json).

pub mod auth;
pub mod fields;
pub mod health;
pub mod orders;
pub mod problem;
pub mod spec;
pub mod stream;
pub mod trading;

use std::sync::Arc;
use std::time::Instant;

use metrics::SharedString;
use metrics_exporter_prometheus::PrometheusHandle;
use poem::http::StatusCode;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route, get, handler};
use poem_openapi::{OpenApiService, Tags};
use tokio::io::AsyncReadExt;
use tracing::Instrument;

use crate::broker::producer::OrderProducer;
use crate::consumer::ConsumerStatus;
use crate::store::Store;
use problem::Problem;

/// What the handlers share.
pub struct AppState {
    pub producer: OrderProducer,
    pub store: Arc<dyn Store>,
    pub consumer: ConsumerStatus,
    pub retry_after_secs: u32,
    /// When the consumer counts as stalled (`consumer.stall_after_ms`).
    pub stall_after: std::time::Duration,
    /// How long a read that misses waits for the consumer (`http.read_wait_ms`).
    pub read_wait: std::time::Duration,
    /// The orders topic (whose offsets the store keeps).
    pub topic: String,
    /// The consumer's order books (`GET /orderbook/{symbol}`).
    pub books: crate::consumer::Books,
    /// Whether the consumer matches orders (`consumer.matching`).
    pub matching: bool,
    /// The API keys in force (`src/auth`).
    pub keys: Arc<crate::auth::Keyring>,
    /// The live feed (`GET /stream`).
    pub feed: crate::feed::Feed,
}

#[derive(Tags)]
pub enum ApiTags {
    /// Submit and read orders.
    Orders,
    /// Trades and order books: what matching the orders did.
    Trading,
    /// Liveness and readiness probes.
    Health,
}

/// The OpenAPI service: the handlers and the document derived from them
/// ([`spec`] serves and prints it).
pub fn openapi() -> OpenApiService<
    (
        orders::OrdersApi,
        trading::TradingApi,
        stream::StreamApi,
        health::HealthApi,
    ),
    (),
> {
    OpenApiService::new(
        (
            orders::OrdersApi,
            trading::TradingApi,
            stream::StreamApi,
            health::HealthApi,
        ),
        "oms",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Order ingest: every accepted order is appended to a Kafka-API log \
             (acks=all, idempotent producer) and consumed exactly once into the \
             configured store, where it is matched against its symbol's \
             price-time book (status, fills, trades, cancels). Errors are RFC 9457 problem details \
             (`application/problem+json`).",
    )
}

/// The whole HTTP application.
/// `body_limit`: `http.body_limit_bytes`; `public`: the paths served
/// without a key (`auth.public`).
pub fn routes(
    state: Arc<AppState>,
    metrics: PrometheusHandle,
    body_limit: usize,
    public: Vec<String>,
) -> impl Endpoint {
    let keys = state.keys.clone();
    let public = Arc::new(public);
    Route::new()
        .nest("/", openapi())
        .nest("/docs", spec::swagger_ui())
        .nest("/feed", feed_page())
        .at("/openapi.json", spec::json_endpoint())
        .at("/openapi.yaml", spec::yaml_endpoint())
        .at("/metrics", get(render_metrics).data(metrics))
        .data(state)
        .around(move |ep, req| auth::guard_unlisted(ep, req, keys.clone(), public.clone()))
        .around(move |ep, req| limit_body(ep, req, body_limit))
        .around(record_metrics)
        .around(trace_request)
        .catch_all_error(|err: poem::Error| async move {
            let status = err.status();
            let allow = (status == StatusCode::METHOD_NOT_ALLOWED).then(|| allowed_methods(&err));
            let kind = match status {
                StatusCode::NOT_FOUND => "not-found",
                StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
                StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
                StatusCode::UNAUTHORIZED => "unauthorized",
                s if s.is_server_error() => "internal",
                _ => "bad-request",
            };
            let mut response = Problem::new(status, kind, err.to_string()).into_response();
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    poem::http::header::WWW_AUTHENTICATE,
                    poem::http::HeaderValue::from_static(auth::CHALLENGE),
                );
            }
            if let Some(allow) = allow.flatten() {
                if let Ok(value) = poem::http::HeaderValue::from_str(allow) {
                    response
                        .headers_mut()
                        .insert(poem::http::header::ALLOW, value);
                }
            }
            response
        })
}

/// Every route of the OpenAPI service, as its document writes the path,
/// and the methods it answers — the one table behind the `Allow` header of
/// a 405 and the route label of the metrics. The handlers' `#[oai(path)]`s
/// must say the same: a test compares this table with the document.
const ROUTES: [(&str, &str); 7] = [
    ("/orders", "GET, POST"),
    ("/orders/{id}", "GET, DELETE"),
    ("/trades", "GET"),
    ("/orderbook/{symbol}", "GET"),
    ("/stream", "GET"),
    ("/healthz", "GET"),
    ("/readyz", "GET"),
];

/// The route of the service a raw path falls on: `{…}` matches one segment.
fn service_route(path: &str) -> Option<(&'static str, &'static str)> {
    ROUTES.into_iter().find(|(template, _)| {
        let (mut want, mut got) = (template.split('/'), path.split('/'));
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some(w), Some(g)) if w == g || (w.starts_with('{') && !g.is_empty()) => {}
                _ => return false,
            }
        }
    })
}

/// RFC 9110 wants `Allow` on every 405. poem's error does not say which path
/// it was for, so the route is carried in a request extension (see `record_metrics`).
fn allowed_methods(err: &poem::Error) -> Option<&'static str> {
    err.data::<RouteLabel>().map(|route| {
        ROUTES
            .iter()
            .find(|(template, _)| *template == route.0)
            .map_or("GET", |(_, allow)| allow)
    })
}

/// The matched route of a request, attached to its errors.
#[derive(Debug, Clone, Copy)]
struct RouteLabel(&'static str);

#[handler]
fn render_metrics(handle: poem::web::Data<&PrometheusHandle>) -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}

fn too_large(limit: usize) -> poem::Error {
    poem::Error::from_string(
        format!("request body larger than {limit} bytes"),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
}

/// Refuses bodies over `limit` with 413 — by `Content-Length` before reading,
/// and by counting for chunked bodies, so an endless body cannot exhaust memory.
async fn limit_body<E: Endpoint>(ep: E, mut req: Request, limit: usize) -> poem::Result<Response> {
    let declared = req
        .header(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > limit as u64 => return Err(too_large(limit)),
        Some(_) => {}
        None if req.method() == poem::http::Method::POST
            || req.method() == poem::http::Method::PUT =>
        {
            let mut bytes = Vec::new();
            let mut reader = req.take_body().into_async_read().take(limit as u64 + 1);
            reader
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| poem::Error::from_string(e.to_string(), StatusCode::BAD_REQUEST))?;
            if bytes.len() > limit {
                return Err(too_large(limit));
            }
            req.set_body(bytes);
        }
        None => {}
    }
    ep.call(req).await.map(IntoResponse::into_response)
}

/// The feed's page (`/feed`): `GET /stream` in the browser, with
/// `EventSource`.
fn feed_page() -> impl Endpoint {
    poem::Route::new().at(
        "/",
        poem::endpoint::make_sync(|_| poem::web::Html(include_str!("static/feed.html"))),
    )
}

/// Bounded-cardinality route label: the matched template, never the raw path.
fn route_label(path: &str) -> &'static str {
    if let Some((template, _)) = service_route(path) {
        return template;
    }
    match path {
        "/metrics" => "/metrics",
        "/openapi.json" | "/openapi.yaml" => "/openapi",
        p if p.starts_with("/docs") => "/docs",
        p if p == "/feed" || p.starts_with("/feed/") => "/feed",
        _ => "other",
    }
}

/// Request headers as an OpenTelemetry carrier (for an incoming `traceparent`).
struct HeaderCarrier<'a>(&'a poem::http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(poem::http::HeaderName::as_str).collect()
    }
}

/// A server span per order request when spans are exported, continuing the
/// caller's trace when the request carries a `traceparent`. Its `trace_id`
/// field puts the trace id on every log line of the request. Without an
/// exporter only a caller's `traceparent` earns a (log-only) span. Probes,
/// metrics and docs are not traced.
async fn trace_request<E: Endpoint>(ep: E, req: Request) -> poem::Result<Response> {
    let route = route_label(req.uri().path());
    if !route.starts_with("/orders") {
        return ep.call(req).await.map(IntoResponse::into_response);
    }
    if !crate::telemetry::spans_enabled() {
        // Nothing exports spans, but a caller's trace id still correlates
        // the log lines of its request: a plain span, only for such requests.
        let Some(trace_id) = crate::telemetry::caller_trace_id(&HeaderCarrier(req.headers()))
        else {
            return ep.call(req).await.map(IntoResponse::into_response);
        };
        let span = tracing::info_span!("HTTP request", http.route = route, trace_id);
        return ep
            .call(req)
            .instrument(span)
            .await
            .map(IntoResponse::into_response);
    }
    let span = tracing::info_span!(
        "HTTP request",
        otel.name = %format_args!("{} {route}", req.method()),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, &HeaderCarrier(req.headers()));
    span.record("trace_id", crate::telemetry::trace_id(&span));
    let result = ep
        .call(req)
        .instrument(span.clone())
        .await
        .map(IntoResponse::into_response);
    let status = match &result {
        Ok(resp) => resp.status(),
        Err(err) => err.status(),
    };
    span.record("http.response.status_code", status.as_u16());
    result
}

async fn record_metrics<E: Endpoint>(ep: E, req: Request) -> poem::Result<Response> {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = route_label(req.uri().path());
    let result = ep
        .call(req)
        .await
        .map(IntoResponse::into_response)
        .map_err(|mut err| {
            err.set_data(RouteLabel(route));
            err
        });
    let status = match &result {
        Ok(resp) => resp.status(),
        Err(err) => err.status(),
    };
    // Static label values: no allocation per request for the common answers.
    let status: SharedString = match status_label(status) {
        Some(code) => SharedString::const_str(code),
        None => SharedString::from(status.as_str().to_owned()),
    };
    let labels = [
        ("method", SharedString::const_str(method)),
        ("route", SharedString::const_str(route)),
        ("status", status),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    result
}

/// Bounded-cardinality method label.
fn method_label(method: &poem::http::Method) -> &'static str {
    use poem::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// The statuses oms answers, as static strings.
fn status_label(status: StatusCode) -> Option<&'static str> {
    Some(match status.as_u16() {
        200 => "200",
        202 => "202",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        501 => "501",
        503 => "503",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_spec_is_generated_from_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/oms.yaml");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == spec::yaml(),
            "openapi/oms.yaml differs from the code's spec: run `just openapi` and commit the result"
        );
    }

    #[test]
    fn the_route_table_is_the_documents() {
        let spec: serde_json::Value = serde_json::from_str(&spec::json()).expect("the spec");
        let mut documented: Vec<(String, String)> = spec["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .map(|(path, item)| {
                let mut methods: Vec<String> = item
                    .as_object()
                    .expect("operations")
                    .keys()
                    .map(|m| m.to_uppercase())
                    .collect();
                methods.sort();
                (path.clone(), methods.join(", "))
            })
            .collect();
        documented.sort();
        let mut table: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(path, allow)| {
                let mut methods: Vec<&str> = allow.split(", ").collect();
                methods.sort();
                ((*path).to_owned(), methods.join(", "))
            })
            .collect();
        table.sort();
        assert_eq!(table, documented);
    }

    #[test]
    fn route_labels_are_bounded() {
        assert_eq!(
            route_label("/orders/0b0f7a8e-3c5d-5e1a-9f62-2a7d4c1e8b90"),
            "/orders/{id}"
        );
        assert_eq!(route_label("/docs/oai.js"), "/docs");
        assert_eq!(route_label("/orderbook/USD-EUR"), "/orderbook/{symbol}");
        assert_eq!(route_label("/wp-admin.php"), "other");
    }
}
