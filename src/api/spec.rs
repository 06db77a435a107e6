//! The OpenAPI document as served (`/openapi.json`, `/openapi.yaml`, Swagger
//! UI at `/docs`), printed (`oms openapi`) and committed (`openapi/oms.yaml`).
//!
//! poem-openapi derives it from the handlers and types; two things its
//! derive cannot say are added here: that each shape of a `NewOrder` has
//! no other properties (`additionalProperties: false`, so generated clients and
//! fuzzers know unknown fields are refused), and the link from a `202` to
//! the order it accepted (`GET /orders/{id}`), which lets clients and
//! stateful fuzzers follow it.

use std::sync::LazyLock;

use poem::endpoint::make_sync;
use poem::web::Html;
use poem::{Endpoint, Response};
use serde_json::{Value, json};

use super::openapi;

static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
    let derived = openapi().spec();
    let mut doc: Value = serde_json::from_str(&derived)
        .unwrap_or_else(|e| unreachable!("poem-openapi writes JSON: {e}"));
    for shape in ["NewLimitOrder", "NewMarketOrder"] {
        doc["components"]["schemas"][shape]["additionalProperties"] = Value::Bool(false);
    }
    doc["paths"]["/orders"]["post"]["responses"]["202"]["links"] = json!({
        "GetOrderById": {
            "operationId": "getOrder",
            "parameters": { "id": "$response.body#/id" },
            "description": "The accepted order. Readable at once: a read that misses waits for the consumer (read-your-writes).",
        }
    });
    doc
});

/// The document as JSON.
pub fn json() -> String {
    serde_json::to_string_pretty(&*DOCUMENT)
        .unwrap_or_else(|e| unreachable!("a JSON value serialises: {e}"))
}

/// The document as YAML.
pub fn yaml() -> String {
    serde_yaml::to_string(&*DOCUMENT).unwrap_or_else(|e| unreachable!("a JSON value is YAML: {e}"))
}

/// Serves a fixed `body` as `content_type`.
fn fixed(body: String, content_type: &'static str) -> impl Endpoint {
    make_sync(move |_| {
        Response::builder()
            .content_type(content_type)
            .body(body.clone())
    })
}

/// `GET /openapi.json`.
pub fn json_endpoint() -> impl Endpoint {
    fixed(json(), "application/json")
}

/// `GET /openapi.yaml`.
pub fn yaml_endpoint() -> impl Endpoint {
    fixed(yaml(), "application/x-yaml")
}

/// poem-openapi's Swagger UI page, which embeds its own derived document
/// once (`let spec = …;`), with this document swapped in.
fn swagger_ui_html() -> String {
    let api = openapi();
    api.swagger_ui_html().replacen(&api.spec(), &json(), 1)
}

/// Swagger UI showing this document.
pub fn swagger_ui() -> impl Endpoint {
    let html = swagger_ui_html();
    poem::Route::new().at("/", make_sync(move |_| Html(html.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_refuses_unknown_order_fields_and_links_the_202() {
        let doc: Value = serde_json::from_str(&json()).expect("json");
        for shape in ["NewLimitOrder", "NewMarketOrder"] {
            assert_eq!(
                doc["components"]["schemas"][shape]["additionalProperties"],
                false
            );
        }
        let link = &doc["paths"]["/orders"]["post"]["responses"]["202"]["links"]["GetOrderById"];
        assert_eq!(link["operationId"], "getOrder");
        assert!(doc["paths"]["/orders/{id}"]["get"]["operationId"] == "getOrder");
        let yaml: Value = serde_yaml::from_str(&yaml()).expect("yaml");
        assert_eq!(yaml, doc);
    }

    #[test]
    fn swagger_ui_shows_this_document() {
        assert!(
            swagger_ui_html().contains("GetOrderById"),
            "the derived document was not swapped"
        );
    }
}
