//! The operational endpoints every role serves: `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

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

async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

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
        Ok(()) => json!("ok"),
        Err(e) => json!(e),
    };
    let body = json!({
        "status": if broker.is_ok() && store.is_ok() { "ready" } else { "not_ready" },
        "checks": { "rabbitmq": show(&broker), "redis": show(&store) },
    });
    let code = if broker.is_ok() && store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}
