//! kivihook-ingest: the HTTP front door — event intake, webhook management, the catalogue.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use kivihook_core::config::Secret;
use kivihook_core::event::{EventTypeInfo, CATALOGUE};
use kivihook_core::ops::{self, OpsState};
use kivihook_core::registry::Registry;
use kivihook_core::{Broker, Config, Event, Metrics, Store};

pub mod dashboard;
pub mod declared;
pub mod deliveries;
pub mod error;
pub mod events;
pub mod import;
pub mod intake;
pub mod openapi;
pub mod query;
pub mod request;
pub mod trial;
pub mod webhooks;

use error::ApiError;

/// What every handler shares, behind one `Arc`: axum clones the state for every extractor
/// of every request, and a clone is then one count, not one per metric and a copy of each
/// token.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state itself (see `AppState`).
pub struct Shared {
    pub broker: Arc<dyn Broker>,
    pub store: Arc<dyn Store>,
    /// The registry, cached: listings page and search it in memory after reading only what
    /// changed since the last request.
    pub registry: Arc<Registry>,
    pub metrics: Metrics,
    pub admin_token: Secret,
    pub ingest_token: Secret,
    pub max_body_bytes: usize,
    pub dedup_window: Duration,
    /// Events of one type one AMQP message may carry (`KIVIHOOK_EVENTS_PER_MESSAGE`).
    pub events_per_message: usize,
    /// The outbound client (test deliveries) and its guard (checked when webhooks are saved).
    pub clients: kivihook_core::http_client::Clients,
    /// Edits of one webhook through this process take turns (`edit_turn`); the
    /// compare-and-set in Redis still guards against edits made through other processes.
    pub edit_turns: Box<[tokio::sync::Mutex<()>]>,
}

/// Locks the webhook edits of one process are spread over, by webhook id.
const EDIT_TURNS: usize = 64;

impl AppState {
    /// This process's turn to edit webhook `id`: edits of one webhook here run one at a
    /// time, so two of them (a PATCH and a rotation in a loop, say) never keep invalidating
    /// each other's read until one gives up with `409 edit_conflict`.
    pub async fn edit_turn(&self, id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        self.edit_turns[(h.finish() % self.edit_turns.len() as u64) as usize]
            .lock()
            .await
    }
}

impl AppState {
    pub fn new(
        config: &Config,
        broker: Arc<dyn Broker>,
        store: Arc<dyn Store>,
        metrics: Metrics,
    ) -> Result<Self, kivihook_core::http_client::ClientError> {
        Ok(Self(Arc::new(Shared {
            registry: Arc::new(Registry::new(store.clone(), metrics.clone(), "ingest")),
            broker,
            store,
            metrics,
            admin_token: config.admin_token.clone(),
            ingest_token: config.ingest_token.clone(),
            max_body_bytes: config.max_body_bytes,
            dedup_window: config.dedup_window,
            events_per_message: config.events_per_message,
            clients: kivihook_core::http_client::Clients::new(
                config.delivery_timeout,
                config.outbound.clone(),
                config.max_body,
            )?,
            edit_turns: (0..EDIT_TURNS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        })))
    }
}

/// The API routes with their documentation: `routes!` registers a handler and its
/// `#[utoipa::path]` together, so nothing is served that the document does not describe.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(events::post_event))
        .routes(routes!(events::post_batch))
        .routes(routes!(deliveries::event_status))
        .routes(routes!(event_types))
        .routes(routes!(sample))
        .routes(routes!(webhooks::list, webhooks::create))
        .routes(routes!(
            webhooks::get_one,
            webhooks::update,
            webhooks::delete
        ))
        .routes(routes!(deliveries::attempts))
        .routes(routes!(webhooks::secret))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(import::kivicare))
        .routes(routes!(trial::preview_draft))
        .routes(routes!(trial::preview))
        .routes(routes!(trial::test))
        .routes(routes!(deliveries::replay_all))
        .routes(routes!(deliveries::dead_letters))
        .routes(routes!(deliveries::replay))
        .routes(routes!(deliveries::replay_progress))
        .routes(routes!(deliveries::resend))
        .routes(routes!(deliveries::stats))
        .routes(routes!(deliveries::webhook_stats))
}

/// The OpenAPI document of everything ingest serves.
pub fn openapi_document() -> serde_json::Value {
    openapi::document(api().into_openapi())
}

/// Every route ingest serves, including the operational ones and `/openapi.json`.
pub fn router(state: AppState) -> Router {
    let ops = ops::router(OpsState {
        metrics: state.metrics.clone(),
        broker: state.broker.clone(),
        store: state.store.clone(),
    });
    let (api, paths) = api().split_for_parts();
    let document = openapi::Rendered(Arc::from(openapi::document(paths).to_string()));
    api
        // Handlers read bodies themselves, with the configured limit and a JSON error.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
        .route("/openapi.json", get(openapi::serve).with_state(document))
        .merge(dashboard::router())
        .merge(ops)
        // Last, so that they cover every route above, the operational ones included.
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
}

/// `GET /v1/event-types`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypes {
    #[schema(value_type = Vec<EventTypeInfo>)]
    pub event_types: &'static [EventTypeInfo],
    /// How clinic-defined types are named.
    pub custom: &'static str,
}

/// `GET /v1/event-types/{type}/sample`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Sample {
    /// A sample event of the type, as a `default`-body webhook would receive it.
    pub event: Event,
    /// The `{{placeholders}}` this event offers to templates, sorted.
    pub placeholders: Vec<String>,
}

/// `GET /v1/event-types/{type}/sample`: a sample event and the placeholders it offers.
#[utoipa::path(
    get,
    path = "/v1/event-types/{type}/sample",
    tag = "catalogue",
    operation_id = "event_type_sample",
    params(("type" = String, Path,
        description = "An event type or KiviCare action name (custom types have no sample fields)")),
    responses(
        (status = 200, description = "A sample event and its placeholders", body = Sample),
        openapi::errors::NotFound,
    ),
    // Public, like the catalogue: samples hold made-up data, nothing of a clinic's.
    security(()),
)]
async fn sample(
    path: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Sample>, ApiError> {
    let axum::extract::Path(name) = path.map_err(|_| ApiError::NotFound("event type"))?;
    let event_type =
        kivihook_core::EventType::parse(&name).map_err(|_| ApiError::NotFound("event type"))?;
    let event = kivihook_core::samples::sample_event(event_type.as_str());
    let context = kivihook_core::template::context(&event);
    let mut placeholders: Vec<String> = context
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| !v.is_object())
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    placeholders.sort();
    Ok(Json(Sample {
        event,
        placeholders,
    }))
}

/// The event catalogue with each type's KiviCare action names.
#[utoipa::path(
    get,
    path = "/v1/event-types",
    tag = "catalogue",
    operation_id = "event_types",
    responses((status = 200, description = "Every event type KiviHook knows", body = EventTypes)),
    // Public: the catalogue is the same for every installation and names no clinic data.
    security(()),
)]
async fn event_types() -> Json<EventTypes> {
    Json(EventTypes {
        event_types: CATALOGUE,
        custom:
            "custom.<name>: lowercase letters, digits, '_', '-' and '.'; any clinic-defined event",
    })
}
