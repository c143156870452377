//! The operational endpoints every role serves: `/metrics`, `/healthz`, `/readyz`.
//!
//! They are documented here, beside their handlers, so that ingest's OpenAPI document can
//! include them (`OpsApi`) without restating what they answer.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::{Broker, Metrics, Store};

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What readiness checks, and where metrics come from.
#[derive(Clone)]
pub struct OpsState {
    pub metrics: Metrics,
    pub broker: Arc<dyn Broker>,
    pub store: Arc<dyn Store>,
}

/// Routes for `/metrics`, `/healthz` and `/readyz`; merged into each role's router.
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The OpenAPI description of the operational endpoints. They take no token: probes and
/// Prometheus scrape them from inside the cluster.
#[derive(OpenApi)]
#[openapi(paths(metrics, healthz, readyz))]
pub struct OpsApi;

/// `GET /healthz`: the process is up.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: Live,
}

/// The only answer liveness has.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Live {
    Ok,
}

/// `GET /readyz`: whether RabbitMQ and Redis answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub status: Ready,
    pub checks: ReadinessChecks,
    /// Stored webhook records this process could not use, with why (a record that does not
    /// parse is left out; one whose secrets do not open is disabled). They do not make the
    /// process unready: every other webhook keeps delivering. Absent when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invalid_webhooks: Vec<crate::store::InvalidWebhook>,
}

/// `ready` when every check passed, else `not_ready`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ready {
    Ready,
    NotReady,
}

/// Each dependency's check: `ok`, or why it failed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessChecks {
    pub rabbitmq: String,
    pub redis: String,
}

/// Prometheus metrics of this process.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4",
            body = String, content_type = "text/plain"),
    ),
)]
async fn metrics(State(state): State<OpsState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Liveness: the process is up and serving HTTP; it checks nothing else, so that a broker
/// outage never gets a healthy process restarted.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    responses((status = 200, description = "The process is up", body = Health)),
)]
async fn healthz() -> Response {
    Json(Health { status: Live::Ok }).into_response()
}

/// Readiness: RabbitMQ and Redis both answer within 2 seconds.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    responses(
        (status = 200, description = "RabbitMQ takes publishes and Redis takes writes", body = Readiness),
        (status = 503, description = "RabbitMQ or Redis does not answer, or Redis refuses writes (maxmemory, read-only); `checks` says which and why",
            body = Readiness),
    ),
)]
async fn readyz(State(state): State<OpsState>) -> Response {
    let broker = async {
        match tokio::time::timeout(CHECK_TIMEOUT, state.broker.ready()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
    };
    let store = async {
        match tokio::time::timeout(CHECK_TIMEOUT, state.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
    };
    let (broker, store) = tokio::join!(broker, store);
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let body = Readiness {
        status: if broker.is_ok() && store.is_ok() {
            Ready::Ready
        } else {
            Ready::NotReady
        },
        checks: ReadinessChecks {
            rabbitmq: show(&broker),
            redis: show(&store),
        },
        invalid_webhooks: state.store.invalid_webhooks(),
    };
    let code = if broker.is_ok() && store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}
