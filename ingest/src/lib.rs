//! kivihook-ingest: the HTTP front door — event intake, webhook management, the catalogue.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use kivihook_core::config::Secret;
use kivihook_core::event::CATALOGUE;
use kivihook_core::ops::{self, OpsState};
use kivihook_core::{Broker, Config, Metrics, Store};

pub mod dashboard;
pub mod declared;
pub mod deliveries;
pub mod error;
pub mod events;
pub mod import;
pub mod query;
pub mod request;
pub mod trial;
pub mod webhooks;

use error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub broker: Arc<dyn Broker>,
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    pub admin_token: Secret,
    pub ingest_token: Secret,
    pub max_body_bytes: usize,
    pub dedup_window: Duration,
    /// The outbound client (test deliveries) and its guard (checked when webhooks are saved).
    pub clients: kivihook_core::http_client::Clients,
}

impl AppState {
    pub fn new(
        config: &Config,
        broker: Arc<dyn Broker>,
        store: Arc<dyn Store>,
        metrics: Metrics,
    ) -> Self {
        Self {
            broker,
            store,
            metrics,
            admin_token: config.admin_token.clone(),
            ingest_token: config.ingest_token.clone(),
            max_body_bytes: config.max_body_bytes,
            dedup_window: config.dedup_window,
            clients: kivihook_core::http_client::Clients::new(
                config.delivery_timeout,
                config.outbound.clone(),
            ),
        }
    }
}

/// Every route ingest serves, including the operational ones.
pub fn router(state: AppState) -> Router {
    let ops = ops::router(OpsState {
        metrics: state.metrics.clone(),
        broker: state.broker.clone(),
        store: state.store.clone(),
    });
    Router::new()
        .route("/v1/events", post(events::post_event))
        .route("/v1/events/batch", post(events::post_batch))
        .route("/v1/events/{id}", get(deliveries::event_status))
        .route("/v1/event-types", get(event_types))
        .route("/v1/event-types/{type}/sample", get(sample))
        .route("/v1/webhooks", get(webhooks::list).post(webhooks::create))
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get_one)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/v1/webhooks/{id}/attempts", get(deliveries::attempts))
        .route("/v1/webhooks/{id}/secret", get(webhooks::secret))
        .route(
            "/v1/webhooks/{id}/rotate-secret",
            post(webhooks::rotate_secret),
        )
        .route("/v1/webhooks/import/kivicare", post(import::kivicare))
        .route("/v1/webhooks/preview", post(trial::preview_draft))
        .route("/v1/webhooks/{id}/preview", post(trial::preview))
        .route("/v1/webhooks/{id}/test", post(trial::test))
        .route(
            "/v1/webhooks/{id}/dead-letters/replay",
            post(deliveries::replay_all),
        )
        .route("/v1/dead-letters", get(deliveries::dead_letters))
        .route("/v1/dead-letters/{id}/replay", post(deliveries::replay))
        .route("/v1/attempts/{id}/resend", post(deliveries::resend))
        .route("/v1/stats", get(deliveries::stats))
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Handlers read bodies themselves, with the configured limit and a JSON error.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
        .merge(dashboard::router())
        .merge(ops)
}

/// `GET /v1/event-types/{type}/sample`: a sample event and the placeholders it offers.
async fn sample(
    path: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let axum::extract::Path(name) = path.map_err(|_| ApiError::NotFound("event type"))?;
    let event_type =
        kivihook_core::EventType::parse(&name).map_err(|_| ApiError::NotFound("event type"))?;
    let event = kivihook_core::samples::sample_event(event_type.as_str());
    let context = kivihook_core::template::context(&event);
    let mut placeholders: Vec<&String> = context
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| !v.is_object())
                .map(|(k, _)| k)
                .collect()
        })
        .unwrap_or_default();
    placeholders.sort();
    Ok(Json(json!({"event": event, "placeholders": placeholders})))
}

async fn event_types() -> Json<serde_json::Value> {
    Json(json!({
        "event_types": CATALOGUE,
        "custom": "custom.<name>: lowercase letters, digits, '_', '-' and '.'; any clinic-defined event",
    }))
}
