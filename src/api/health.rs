//! `/healthz` (the process answers) and `/readyz` (it can do its job).

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::{ApiTags, AppState};
use crate::consumer::ConsumerState;
use crate::error::Chain;

/// Liveness.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// One dependency's state.
#[derive(Debug, Clone, Object)]
pub struct Check {
    pub ok: bool,
    /// Why it is not ok, or what it is doing.
    pub detail: String,
}

/// Readiness: every dependency's state.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct Readiness {
    /// `ready` or `degraded`.
    pub status: String,
    /// The broker answers metadata requests, acknowledges produced records
    /// and serves the log end.
    pub broker: Check,
    /// The store answers reads.
    pub store: Check,
    /// The consumer is storing records (not blocked retrying a failure, not
    /// stalled with records waiting).
    pub consumer: Check,
    /// Group mode only: the group has formed, and every partition with
    /// records the store does not hold has a live member draining it —
    /// checked against the shared store by every instance, so a partition
    /// left behind shows on all of them.
    #[oai(skip_serializing_if_is_none)]
    pub group: Option<Check>,
}

impl Example for Health {
    fn example() -> Self {
        Health {
            status: "ok".into(),
        }
    }
}

impl Example for Readiness {
    fn example() -> Self {
        let ok = |detail: &str| Check {
            ok: true,
            detail: detail.into(),
        };
        Readiness {
            status: "ready".into(),
            broker: ok("reachable"),
            store: ok("redb open"),
            consumer: ok("running"),
            group: None,
        }
    }
}

#[derive(Debug, ApiResponse)]
pub enum ReadyResponse {
    /// Broker reachable, store open, consumer running.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// At least one check failed; the body says which.
    #[oai(status = 503)]
    Degraded(Json<Readiness>),
}

/// Health endpoints for orchestrators and load balancers.
pub struct HealthApi;

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness probe
    ///
    /// `200` whenever the process can answer HTTP.
    #[oai(path = "/healthz", method = "get", operation_id = "healthz")]
    async fn healthz(&self) -> Json<Health> {
        Json(Health {
            status: "ok".into(),
        })
    }

    /// Readiness probe
    ///
    /// `200` when the broker is reachable, the store answers and the consumer
    /// is not stuck retrying; `503` with the failing checks otherwise.
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self, state: Data<&Arc<AppState>>) -> ReadyResponse {
        let (broker, store) = tokio::join!(state.producer.probe(), state.store.health());
        let fail = |detail: String| Check { ok: false, detail };
        // A broker that accepts connections and answers metadata can still
        // fail every produce or fetch (a wedged storage engine): the
        // producer's and the log watcher's own evidence counts too.
        let broker = match broker {
            Err(e) => fail(format!("metadata: {}", Chain(&e))),
            Ok(()) => match (state.producer.stalled(), state.consumer.log_end_error()) {
                (Some(stalled), _) => fail(format!("produce: {stalled}")),
                (None, Some(err)) => fail(format!("fetch: {err}")),
                (None, None) => Check {
                    ok: true,
                    detail: "reachable".into(),
                },
            },
        };
        let store = match store {
            Ok(()) => Check {
                ok: true,
                detail: format!("{} open", state.store.engine()),
            },
            Err(e) => fail(Chain(&e).to_string()),
        };
        let consumer = match state.consumer.get() {
            ConsumerState::Running => match state.consumer.stall(state.stall_after) {
                Some(stall) => fail(stall.to_string()),
                None => Check {
                    ok: true,
                    detail: "running".into(),
                },
            },
            ConsumerState::Starting => fail("starting".into()),
            ConsumerState::Waiting { reason } => fail(reason),
            ConsumerState::Stopped => fail("stopped".into()),
        };
        let group = state
            .consumer
            .grouped()
            .then(|| match state.consumer.group() {
                Some(report) => Check {
                    ok: report.ok,
                    detail: report.detail,
                },
                None => fail("joining: no heartbeat answered by the store yet".into()),
            });
        let ready = broker.ok && store.ok && consumer.ok && group.as_ref().is_none_or(|g| g.ok);
        let body = Readiness {
            status: if ready { "ready" } else { "degraded" }.into(),
            broker,
            store,
            consumer,
            group,
        };
        if ready {
            ReadyResponse::Ready(Json(body))
        } else {
            ReadyResponse::Degraded(Json(body))
        }
    }
}
