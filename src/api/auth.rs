//! The API's side of keys: the bearer scheme the OpenAPI document declares
//! and every order and trading operation takes ([`ApiKey`]), the answers
//! of a refused request (`401` with `WWW-Authenticate`, `403`, `429` with
//! `Retry-After`, each problem+json), and the guard of the paths outside
//! the document (`/metrics`, `/docs`, `/feed`, the spec) when `auth.public` leaves
//! them out.

use std::sync::Arc;

use poem::http::{Method, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::SecurityScheme;
use poem_openapi::auth::{Bearer, BearerAuthorization};

use super::AppState;
use super::problem::Problem;
use crate::auth::{Caller, Denied, Keyring};

/// An API key, sent as `Authorization: Bearer <key>` (make one with
/// `oms keys create --account NAME`, or `just key NAME` for the local
/// stack). A `trader` key submits, cancels and reads its account's orders;
/// a `reader` key only reads.
#[derive(SecurityScheme)]
#[oai(
    ty = "bearer",
    bearer_format = "oms_<id>_<secret>",
    checker = "check_key",
    rename = "ApiKey"
)]
pub struct ApiKey(pub Caller);

/// Submitting and cancelling change state; everything else reads.
fn trades(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::DELETE | Method::PUT | Method::PATCH
    )
}

async fn check_key(req: &Request, bearer: Bearer) -> poem::Result<Caller> {
    check(req, &bearer.token)
}

/// Checks `key` for `req` against the keys in force.
pub fn check(req: &Request, key: &str) -> poem::Result<Caller> {
    let Some(state) = req.data::<Arc<AppState>>() else {
        return Err(poem::Error::from_status(StatusCode::INTERNAL_SERVER_ERROR));
    };
    state
        .keys
        .check(Some(key), trades(req.method()))
        .map_err(|denied| poem::Error::new(denied, StatusCode::UNAUTHORIZED))
}

/// `WWW-Authenticate` of every 401 (RFC 6750).
pub const CHALLENGE: &str = "Bearer realm=\"oms\"";

/// How a refused request is answered.
pub enum Refusal {
    Unauthorized(Problem),
    Forbidden(Problem),
    TooManyRequests(Problem, u32),
}

impl Refusal {
    /// The answer as the document declares it: problem+json, with
    /// `WWW-Authenticate` on a 401 and `Retry-After` on a 429.
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthorized(p) => {
                let mut r = p.into_response();
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    poem::http::HeaderValue::from_static(CHALLENGE),
                );
                r
            }
            Refusal::Forbidden(p) => p.into_response(),
            Refusal::TooManyRequests(p, secs) => {
                let mut r = p.into_response();
                r.headers_mut().insert(header::RETRY_AFTER, secs.into());
                r
            }
        }
    }
}

impl From<&Denied> for Refusal {
    fn from(denied: &Denied) -> Self {
        let detail = denied.to_string();
        match denied {
            Denied::Missing | Denied::Unknown | Denied::Revoked { .. } => Refusal::Unauthorized(
                Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail),
            ),
            Denied::Forbidden { .. } => {
                Refusal::Forbidden(Problem::new(StatusCode::FORBIDDEN, "forbidden", detail))
            }
            Denied::RateLimited { .. } | Denied::InFlight { .. } => Refusal::TooManyRequests(
                Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", detail),
                denied.retry_after_secs().unwrap_or(1),
            ),
        }
    }
}

/// The refusal an extractor error stands for, if it is one: no bearer
/// credential at all (poem-openapi's own error) or the key check's.
pub fn refusal(err: &poem::Error) -> Option<Refusal> {
    if err.is::<poem_openapi::error::AuthorizationError>() {
        metrics::counter!("auth_refused_total", "reason" => Denied::Missing.reason()).increment(1);
        return Some(Refusal::from(&Denied::Missing));
    }
    err.downcast_ref::<Denied>().map(Refusal::from)
}

/// Turns a refusal into a variant of an operation's response enum, whose
/// `Unauthorized` and `TooManyRequests` variants (and `Forbidden`, for an
/// operation that trades) every protected operation declares the same way.
/// `reads`: the operation only reads, which any role may — it has no
/// `Forbidden` to answer.
macro_rules! refused {
    ($err:expr, $response:ident) => {
        $crate::api::auth::refused!(@with $err, $response, |p| $response::Forbidden(
            poem_openapi::payload::Json(p)
        ))
    };
    ($err:expr, $response:ident, reads) => {
        $crate::api::auth::refused!(@with $err, $response, |p| $response::Unauthorized(
            poem_openapi::payload::Json(p),
            $crate::api::auth::CHALLENGE.to_owned(),
        ))
    };
    (@with $err:expr, $response:ident, $forbidden:expr) => {
        if let Some(refusal) = $crate::api::auth::refusal(&$err) {
            use $crate::api::auth::Refusal;
            return match refusal {
                Refusal::Unauthorized(p) => $response::Unauthorized(
                    poem_openapi::payload::Json(p),
                    $crate::api::auth::CHALLENGE.to_owned(),
                ),
                Refusal::Forbidden(p) => ($forbidden)(p),
                Refusal::TooManyRequests(p, secs) => {
                    $response::TooManyRequests(poem_openapi::payload::Json(p), secs)
                }
            };
        }
    };
}
pub(crate) use refused;

/// Whether `path` is served without a key (`auth.public`); a listed
/// prefix covers what is under it (`/docs` covers `/docs/oai.js`).
fn is_public(public: &[String], path: &str) -> bool {
    public.iter().any(|p| {
        path == p
            || path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The paths outside the OpenAPI operations' own check — the probes, the
/// metrics, Swagger UI and the spec — need a key (any role) unless
/// `auth.public` lists them.
pub async fn guard_unlisted<E: Endpoint>(
    ep: E,
    req: Request,
    keys: Arc<Keyring>,
    public: Arc<Vec<String>>,
) -> poem::Result<Response> {
    let path = req.uri().path();
    let guarded = matches!(
        super::route_label(path),
        "/metrics" | "/openapi" | "/docs" | "/feed" | "/healthz" | "/readyz"
    ) && !is_public(&public, path);
    if guarded {
        // The same reading of the header as the scheme's (`ApiKey`).
        let token = <Bearer as BearerAuthorization>::from_request(&req)
            .ok()
            .map(|bearer| bearer.token);
        if let Err(denied) = keys.check(token.as_deref(), false) {
            let response = Refusal::from(&denied).into_response();
            return Ok(response);
        }
    }
    ep.call(req).await.map(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_prefix_covers_its_subpaths_only() {
        let public = vec!["/docs".to_owned(), "/healthz".to_owned()];
        assert!(is_public(&public, "/docs"));
        assert!(is_public(&public, "/docs/oai.js"));
        assert!(!is_public(&public, "/docsx"));
        assert!(is_public(&public, "/healthz"));
        assert!(!is_public(&public, "/readyz"));
    }
}
