//! RFC 9457 problem details: every 4xx/5xx oms answers has this body, with
//! content type `application/problem+json`.

use poem::http::StatusCode;
use poem_openapi::Object;

use crate::order::ValidationErrors;

/// The media type of every error body.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// One field that broke one rule.
#[derive(Debug, Clone, PartialEq, Eq, Object)]
pub struct FieldProblem {
    /// The field, as named in the request (`price`, `side`, a query parameter...).
    pub field: String,
    /// A stable rule name: `pattern`, `range`, `enum`, `decimal`, `distinct`,
    /// `max_length`, `length`, `required`, `type`, `unknown_field`.
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
        Problem::validation(&ValidationErrors(vec![crate::order::FieldError {
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

    /// 400: the request could not be parsed. poem-openapi's message is kept as
    /// the detail, and the field it names (if any) is reported in `errors`.
    pub fn malformed(detail: String) -> Self {
        let mut problem = Self::new(StatusCode::BAD_REQUEST, "malformed-request", detail.clone());
        if let Some(field) = field_named_in(&detail) {
            let rule = if detail.contains("unknown field") {
                "unknown_field"
            } else if detail.contains("expects a value") || detail.contains("required") {
                "required"
            } else {
                "type"
            };
            problem.errors.push(FieldProblem {
                field,
                rule: rule.into(),
                message: detail,
            });
        }
        problem
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

/// Finds the field a poem-openapi/serde parse message is about: the last
/// `` `name` `` or `"name"` quoted token that looks like a field name.
fn field_named_in(message: &str) -> Option<String> {
    const FIELDS: [&str; 8] = [
        "src_currency",
        "dst_currency",
        "side",
        "price",
        "quantity",
        "channel",
        "description",
        "client_order_id",
    ];
    let mut best: Option<(usize, &str)> = None;
    for field in FIELDS {
        for quoted in [format!("`{field}`"), format!("\"{field}\"")] {
            if let Some(at) = message.rfind(&quoted) {
                if best.is_none_or(|(pos, _)| at > pos) {
                    best = Some((at, field));
                }
            }
        }
    }
    best.map(|(_, f)| f.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_field_in_parse_messages() {
        assert_eq!(
            field_named_in(r#"failed to parse "NewOrder": field `price` is required"#).as_deref(),
            Some("price")
        );
        assert_eq!(
            field_named_in(r#"failed to parse "Side": ... (occurred while parsing "side")"#)
                .as_deref(),
            Some("side")
        );
        assert_eq!(field_named_in("expected value at line 1 column 1"), None);
    }
}
