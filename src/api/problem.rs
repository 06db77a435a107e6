//! RFC 9457 problem details: every 4xx/5xx oms answers has this body, with
//! content type `application/problem+json`.

use poem::http::StatusCode;
use poem_openapi::Object;

use crate::domain::ValidationErrors;

/// The media type of every error body.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// One field that broke one rule.
#[derive(Debug, Clone, PartialEq, Eq, Object)]
pub struct FieldProblem {
    /// The field, as named in the request (`price`, `side`, a query parameter...).
    pub field: String,
    /// A stable rule name: `required`, `type`, `unknown_field`, `pattern`,
    /// `range`, `enum`, `decimal`, `distinct`, `max_length`, `length`.
    pub rule: String,
    /// What is wrong, for humans.
    pub message: String,
}

/// An error response (RFC 9457 problem details).
#[derive(Debug, Clone, PartialEq, Eq, Object)]
#[oai(example)]
pub struct Problem {
    /// A URI reference naming the kind of problem.
    #[oai(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Each field that broke a rule (validation problems only).
    #[oai(skip_serializing_if_is_empty, default)]
    pub errors: Vec<FieldProblem>,
}

impl poem_openapi::types::Example for Problem {
    fn example() -> Self {
        Problem::validation(&ValidationErrors(vec![crate::domain::FieldError {
            field: "price".into(),
            rule: "range".into(),
            message: "must be greater than zero".into(),
        }]))
    }
}

impl Problem {
    /// A problem with no field details.
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:oms:problem:{kind}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    /// 422: the request was well-formed JSON but broke the order rules.
    pub fn validation(errors: &ValidationErrors) -> Self {
        let mut problem = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            format!("the order breaks {} rule(s); see `errors`", errors.0.len()),
        );
        problem.errors = errors
            .0
            .iter()
            .map(|e| FieldProblem {
                field: e.field.clone(),
                rule: e.rule.clone(),
                message: e.message.clone(),
            })
            .collect();
        problem
    }

    /// 503: a store read failed (logged here, with its causes).
    pub fn store_unavailable(err: &crate::store::StoreError) -> Self {
        tracing::error!(error = %crate::error::Chain(err), "store read failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            "the store cannot be read right now",
        )
    }

    /// 501: `consumer.matching = false`, so there are no books.
    pub fn matching_off() -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "matching-off",
            "this oms runs with consumer.matching = false: orders are stored, not traded, so there is no book",
        )
    }

    /// 400: the request could not be parsed; poem-openapi's reason is the detail.
    pub fn malformed(detail: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed-request", detail)
    }

    /// Renders this problem as a plain poem response (outside poem-openapi).
    pub fn into_response(self) -> poem::Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({
            "type": self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        });
        poem::Response::builder()
            .status(status)
            .content_type(CONTENT_TYPE)
            .body(body.to_string())
    }
}
