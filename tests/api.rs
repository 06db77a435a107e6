//! The order API against a real broker: accepted orders become readable, bad
//! input gets a problem+json answer naming the field, and nothing bad is produced.

mod common;

use std::time::Duration;

use common::{TestApp, bootstrap, order_body, settings};
use serde_json::{Value, json};

const PROBLEM: &str = "application/problem+json";

async fn app() -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    (
        TestApp::spawn(settings(&bootstrap(), dir.path())).await,
        dir,
    )
}

async fn problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status(), status);
    let content_type = resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        content_type.starts_with(PROBLEM),
        "content type {content_type}"
    );
    let body: Value = resp.json().await.expect("problem body");
    assert_eq!(body["status"], status);
    body
}

fn fields(problem: &Value) -> Vec<(String, String)> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    (
                        e["field"].as_str().unwrap_or("?").into(),
                        e["rule"].as_str().unwrap_or("?").into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn an_accepted_order_becomes_readable() {
    let (app, _dir) = app().await;
    let body = order_body(7);
    let resp = app.post_json(&body).await;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let accepted: Value = resp.json().await.expect("json");
    let id = accepted["id"].as_str().expect("id").to_owned();
    assert_eq!(location, format!("/orders/{id}"));
    assert_eq!(accepted["symbol"], "USD-EUR");
    assert!(
        accepted["partition"]
            .as_i64()
            .is_some_and(|p| (0..3).contains(&p))
    );
    assert!(accepted["offset"].as_i64().is_some_and(|o| o >= 0));

    let stored = app
        .wait_for_order(id.parse().expect("uuid"), Duration::from_secs(5))
        .await
        .expect("readable within 5 s");
    for field in [
        "src_currency",
        "dst_currency",
        "side",
        "price",
        "quantity",
        "channel",
        "description",
    ] {
        assert_eq!(stored[field], body[field], "{field}");
    }
    assert_eq!(stored["partition"], accepted["partition"]);
    assert_eq!(stored["offset"], accepted["offset"]);
    // Absent, not null: the schema says string.
    assert!(stored.get("client_order_id").is_none(), "{stored}");

    let page = app.page("symbol=USD-EUR").await;
    assert_eq!(page["orders"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["orders"][0]["id"], id.as_str());
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn each_rule_is_rejected_naming_its_field() {
    let (app, _dir) = app().await;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("src_currency", json!("usd"), "pattern"),
        ("src_currency", json!("US"), "pattern"),
        ("dst_currency", json!("EURO1"), "pattern"),
        ("dst_currency", json!("USD"), "distinct"),
        ("side", json!("hold"), "enum"),
        ("price", json!("0"), "range"),
        ("price", json!("-3.5"), "range"),
        ("price", json!("cheap"), "decimal"),
        ("price", json!(12.5), "type"),
        ("quantity", json!("1e999"), "decimal"),
        (
            "quantity",
            json!("123456789012345678901234567890"),
            "decimal",
        ),
        ("channel", json!(5), "enum"),
        ("channel", json!(1.5), "enum"),
        ("channel", json!("11"), "type"),
        ("description", json!("x".repeat(1025)), "max_length"),
        ("client_order_id", json!(""), "length"),
        ("client_order_id", json!("k".repeat(65)), "length"),
    ];
    for (field, value, rule) in cases {
        let mut body = order_body(1);
        body[field] = value.clone();
        let p = problem(app.post_json(&body).await, 422).await;
        assert_eq!(
            fields(&p),
            vec![(field.to_owned(), rule.to_owned())],
            "{field} = {value}"
        );
    }

    // Missing and unknown fields, several problems at once.
    let mut body = order_body(1);
    body.as_object_mut().expect("object").remove("price");
    body["side"] = json!("up");
    body["quantitiy"] = json!("1");
    let p = problem(app.post_json(&body).await, 422).await;
    let mut got = fields(&p);
    got.sort();
    assert_eq!(
        got,
        vec![
            ("price".to_owned(), "required".to_owned()),
            ("quantitiy".to_owned(), "unknown_field".to_owned()),
            ("side".to_owned(), "enum".to_owned()),
        ]
    );

    // Nothing that was refused reached the log: the store stays empty.
    let accepted = app.accept(&order_body(2)).await;
    app.wait_for_order(accepted, Duration::from_secs(5))
        .await
        .expect("readable");
    let page = app.page("symbol=USD-EUR").await;
    assert_eq!(page["orders"].as_array().map(Vec::len), Some(1));
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn malformed_requests_get_clear_problems() {
    let (app, _dir) = app().await;
    problem(app.post_raw("application/json", "{\"price\": ").await, 400).await;
    problem(app.post_raw("application/json", "[1, 2]").await, 400).await;
    problem(app.post_raw("application/json", "").await, 400).await;
    problem(
        app.post_raw("application/json", vec![0xff, 0xfe, 0x00])
            .await,
        400,
    )
    .await;
    problem(
        app.post_raw("application/json", "[".repeat(10_000)).await,
        400,
    )
    .await;
    problem(app.post_raw("text/plain", "hello").await, 415).await;
    // A JSON number beyond f64 is not JSON serde can hold: 400, not a crash.
    let huge = r#"{"src_currency":"USD","dst_currency":"EUR","side":"buy","price":"1","quantity":"1","channel":1e400}"#;
    problem(app.post_raw("application/json", huge).await, 400).await;

    let limit = app.settings.http.body_limit_bytes;
    let mut big = order_body(1);
    big["description"] = json!("x".repeat(limit));
    let p = problem(app.post_json(&big).await, 413).await;
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&limit.to_string()))
    );
    // Chunked (no Content-Length) bodies are counted too.
    let chunks = futures::stream::iter((0..64).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])));
    let resp = app
        .client
        .post(format!("{}/orders", app.base))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("chunked POST");
    problem(resp, 413).await;

    problem(app.get("/orders/not-a-uuid").await, 400).await;
    problem(
        app.get(&format!("/orders/{}", uuid::Uuid::now_v7())).await,
        404,
    )
    .await;
    problem(app.get("/orders?symbol=usd-eur").await, 400).await;
    problem(app.get("/orders?symbol=USD-EUR&limit=0").await, 400).await;
    problem(app.get("/no-such-route").await, 404).await;
    for (method, path, allow) in [
        ("DELETE", "/orders", "GET, POST"),
        ("TRACE", "/healthz", "GET"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = app
            .client
            .request(method, format!("{}{path}", app.base))
            .send()
            .await
            .expect("request");
        assert_eq!(
            resp.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some(allow)
        );
        problem(resp, 405).await;
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_retried_client_order_id_creates_one_order() {
    let (app, _dir) = app().await;
    let mut body = order_body(3);
    body["client_order_id"] = json!("retry-me-1");
    let first = app.accept(&body).await;
    body["description"] = json!("the retry");
    let second = app.accept(&body).await;
    assert_eq!(first, second, "same key, same id");
    assert_eq!(first.get_version_num(), 5);

    let marker = app.accept(&order_body(4)).await;
    app.wait_for_order(marker, Duration::from_secs(5))
        .await
        .expect("readable");
    let stored = app
        .wait_for_order(first, Duration::from_secs(5))
        .await
        .expect("readable");
    assert_eq!(stored["description"], "test order 3", "first write wins");
    let page = app.page("symbol=USD-EUR").await;
    let ids: Vec<&str> = page["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .filter_map(|o| o["id"].as_str())
        .collect();
    assert_eq!(ids.iter().filter(|id| **id == first.to_string()).count(), 1);
    assert_eq!(ids.len(), 2);
    app.stop().await.expect("clean stop");
}

/// A client that follows the `Location` of a 202 at once is never told the
/// order does not exist: the read waits for the consumer instead. An id that
/// was never accepted still answers 404 once the store holds the whole log.
#[tokio::test]
async fn following_the_location_of_a_202_never_answers_404() {
    let (app, _dir) = app().await;
    let mut waited = Vec::new();
    for n in 0..40 {
        let resp = app.post_json(&order_body(n)).await;
        assert_eq!(resp.status(), 202);
        let location = resp.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned();
        let started = std::time::Instant::now();
        let read = app.get(&location).await;
        waited.push(started.elapsed());
        assert_eq!(read.status(), 200, "GET {location} right after its 202");
        let order: Value = read.json().await.expect("order");
        assert_eq!(order["description"], order_body(n)["description"]);
    }
    waited.sort();
    eprintln!(
        "read after 202: p50 {:?}, max {:?}",
        waited[waited.len() / 2],
        waited[waited.len() - 1]
    );
    let unknown = uuid::Uuid::now_v7();
    let body = problem(app.get(&format!("/orders/{unknown}")).await, 404).await;
    assert_eq!(
        body["type"].as_str().map(|t| t.ends_with("not-found")),
        Some(true),
        "{body}"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn listing_pages_through_a_symbol() {
    let (app, _dir) = app().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(app.accept(&order_body(n)).await);
    }
    let mut other = order_body(9);
    other["src_currency"] = json!("GBP");
    app.accept(&other).await;
    for id in &ids {
        app.wait_for_order(*id, Duration::from_secs(5))
            .await
            .expect("readable");
    }
    ids.sort();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let query = match &after {
            Some(a) => format!("symbol=USD-EUR&limit=2&after={a}"),
            None => "symbol=USD-EUR&limit=2".to_owned(),
        };
        let page = app.page(&query).await;
        for order in page["orders"].as_array().expect("orders") {
            seen.push(
                order["id"]
                    .as_str()
                    .expect("id")
                    .parse::<uuid::Uuid>()
                    .expect("uuid"),
            );
        }
        if page.get("next_after").is_some() {
            assert!(
                page["next_after"].is_string(),
                "next_after is absent or a string"
            );
        }
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn probes_docs_and_metrics_answer() {
    let (app, _dir) = app().await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let ready = common::eventually(Duration::from_secs(10), || async {
        let resp = app.get("/readyz").await;
        (resp.status() == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "ready within 10 s");
    let docs = app.get("/docs").await;
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.expect("html").contains("swagger"));
    let spec: Value = app.get("/openapi.json").await.json().await.expect("spec");
    assert!(spec["paths"]["/orders"]["post"].is_object());
    assert!(
        app.get("/openapi.yaml")
            .await
            .text()
            .await
            .expect("yaml")
            .contains("openapi:")
    );

    app.accept(&order_body(1)).await;
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    for series in [
        "http_requests_total",
        "messages_produced_total",
        "produce_latency_seconds_bucket",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
    app.stop().await.expect("clean stop");
}
