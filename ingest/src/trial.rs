//! Trying a webhook out: `POST /v1/webhooks/{id}/preview` shows the request a sample event
//! makes, without sending it; `POST /v1/webhooks/{id}/test` sends it for real, signed, and
//! answers with the response. A test send is logged like any attempt, marked as a test.

use std::collections::HashMap;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::Utc;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use kivihook_core::delivery::new_attempt_id;
use kivihook_core::http_client::{self, AttemptOf};
use kivihook_core::samples::{sample_event, types_matching};
use kivihook_core::signing::generate_secret;
use kivihook_core::webhook::{
    check_templates, is_secret_header, mask_credential, Auth, InvalidField, KeyLocation, Pattern,
    Webhook, WebhookSpec,
};
use kivihook_core::{Event, EventType};

use crate::error::ApiError;
use crate::openapi::{errors, inputs, WebhookId};
use crate::request::{authorize, json_body, path_id, Scope};
use crate::AppState;

async fn webhook_and_event(
    state: &AppState,
    headers: &HeaderMap,
    path: Result<Path<String>, PathRejection>,
    q: &HashMap<String, String>,
) -> Result<(Webhook, Event), ApiError> {
    authorize(state, headers, Scope::Admin)?;
    let id = path_id(path, "webhook")?;
    let webhook = state
        .store
        .get_webhook(&id)
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    let event = sample_for(&webhook, q)?;
    Ok((webhook, event))
}

/// A sample event of the type asked for, or of the first type the webhook subscribes to.
fn sample_for(webhook: &Webhook, q: &HashMap<String, String>) -> Result<Event, ApiError> {
    if let Some(k) = q.keys().find(|k| k.as_str() != "type") {
        return Err(ApiError::invalid(
            "invalid_parameter",
            k.as_str(),
            "is not a parameter; the one parameter is type",
        ));
    }
    let event_type = match q.get("type") {
        Some(t) => EventType::parse(t)
            .map_err(|e| ApiError::invalid("unknown_event_type", "type", e.to_string()))?
            .as_str()
            .to_owned(),
        None => webhook
            .events
            .iter()
            .filter_map(|p| Pattern::parse(p).ok())
            .flat_map(|p| types_matching(&p))
            .next()
            .unwrap_or_else(|| "custom.sample".to_owned()),
    };
    let mut event = sample_event(&event_type);
    event.id = format!("evt_test_{}", uuid::Uuid::new_v4().simple());
    event.received_at = Utc::now();
    Ok(event)
}

fn envelope(event: &Event) -> Bytes {
    Bytes::from(serde_json::to_vec(event).unwrap_or_default())
}

/// `?type=`: which sample event to use.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SampleType {
    /// An event type or KiviCare action name; by default the first type the webhook
    /// subscribes to.
    #[param(schema_with = crate::openapi::inputs::event_type_schema)]
    r#type: Option<String>,
}

/// The request a sample event makes, as it would be sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct Preview {
    pub event_type: String,
    pub method: kivihook_core::webhook::Method,
    /// With query parameters; a query credential masked.
    pub url: String,
    /// Credentials and the signature masked.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Null for a method that sends no body.
    pub body: Option<String>,
    /// Placeholders the sample event does not have, which render empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `POST /v1/webhooks/{id}/preview`: the request a sample event makes, credentials and
/// signature masked, without sending it.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/preview",
    tag = "webhooks",
    operation_id = "preview_webhook",
    params(WebhookId, SampleType),
    responses(
        (status = 200, description = "The request a sample event makes; nothing is sent", body = Preview),
        errors::AdminAuth, errors::NotFound, errors::InvalidParameter, errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
pub async fn preview(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (webhook, event) = webhook_and_event(&state, &headers, path, &q).await?;
    Ok(Json(rendered(&state, &webhook, &event).await?).into_response())
}

/// `POST /v1/webhooks/preview`: the same for a webhook definition that is not saved yet (the
/// body of `POST /v1/webhooks`), so a form can show what it would send while it is edited.
/// An invalid definition or template is a 422 naming the field, as saving it would be.
#[utoipa::path(
    post,
    path = "/v1/webhooks/preview",
    tag = "webhooks",
    operation_id = "preview_draft",
    params(SampleType),
    request_body(content = inputs::WebhookDraft, content_type = "application/json"),
    responses(
        (status = 200, description = "The request a sample event would make; nothing is saved or sent",
            body = Preview),
        errors::AdminAuth, errors::JsonBody,
    ),
    security(("admin_token" = [])),
)]
pub async fn preview_draft(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let value = json_body(&headers, body, state.max_body_bytes).await?;
    let spec = WebhookSpec::from_json(&value)?;
    check_templates(&spec)?;
    // Never stored, so it signs with a throwaway secret (the preview masks signatures).
    let webhook = Webhook::create(spec, generate_secret());
    let event = sample_for(&webhook, &q)?;
    Ok(Json(rendered(&state, &webhook, &event).await?).into_response())
}

/// The request `webhook` makes for `event`, credentials and signature masked; what its
/// templates cannot render for it (see `http_client::prepare`) is a 422 naming the part.
async fn rendered(state: &AppState, webhook: &Webhook, event: &Event) -> Result<Preview, ApiError> {
    let body = envelope(event);
    let prepared = http_client::prepare_off_thread(webhook, &body, state.clients.max_body)
        .await
        .map_err(|e| InvalidField {
            field: e.part,
            message: e.message,
        })?;
    let mut shown: Vec<(String, String)> = prepared
        .headers
        .iter()
        .map(|(k, v)| {
            let v = if is_secret_header(k) {
                mask_credential(v)
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect();
    shown.push(("content-type".into(), prepared.content_type.into()));
    let mut url = prepared.url.to_string();
    match &webhook.auth {
        Auth::None => {}
        Auth::ApiKey {
            name,
            value,
            location: KeyLocation::Header,
        } => {
            shown.push((name.clone(), mask_credential(value)));
        }
        Auth::ApiKey {
            name,
            value,
            location: KeyLocation::Query,
        } => {
            if let Ok(mut u) = url::Url::parse(&url) {
                u.query_pairs_mut()
                    .append_pair(name, &mask_credential(value));
                url = u.into();
            }
        }
        Auth::Bearer { token } => shown.push((
            "authorization".into(),
            format!("Bearer {}", mask_credential(token)),
        )),
        Auth::Basic { username, .. } => {
            shown.push(("authorization".into(), format!("Basic {username}:…")))
        }
    }
    shown.push((
        "webhook-id".into(),
        http_client::message_id(&event.id, &webhook.id),
    ));
    shown.push((
        "webhook-timestamp".into(),
        Utc::now().timestamp().to_string(),
    ));
    shown.push(("webhook-signature".into(), "v1,…".into()));
    Ok(Preview {
        event_type: event.event_type.clone(),
        method: webhook.method,
        url,
        headers: shown.into_iter().collect(),
        body: prepared
            .has_body
            .then(|| String::from_utf8_lossy(&prepared.body).into_owned()),
        warnings: prepared.warnings,
    })
}

/// What a test send got back.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestResult {
    /// Its entry in the attempt log (marked as a test).
    pub attempt_id: String,
    pub event_type: String,
    /// The receiver answered 2xx.
    pub delivered: bool,
    /// The receiver's status; null when none came (timeout, refused connection, …).
    pub status: Option<u16>,
    pub response_headers: std::collections::BTreeMap<String, String>,
    /// At most 4 KiB of it.
    pub response_body: String,
    pub duration_ms: u64,
    /// `timeout`, `connect`, `dns`, `tls`, `http_status`, `request`, `config`, `blocked`;
    /// null on success.
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// Placeholders the sample event does not have, which rendered empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A real, signed delivery of a sample event; the response comes back in the answer.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/test",
    tag = "webhooks",
    operation_id = "test_webhook",
    params(WebhookId, SampleType),
    responses(
        (status = 200, description = "The receiver's answer (or why none came); bounded by the delivery timeout",
            body = TestResult),
        errors::AdminAuth, errors::NotFound, errors::InvalidParameter, errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
pub async fn test(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (webhook, event) = webhook_and_event(&state, &headers, path, &q).await?;
    let body = envelope(&event);
    let message_id = http_client::message_id(&event.id, &webhook.id);
    let attempt = http_client::send(&state.clients, &webhook, &message_id, &body).await;
    let outcome = if attempt.succeeded() {
        "delivered"
    } else {
        "failed"
    };
    let record = attempt.record(
        new_attempt_id(&webhook.id),
        &webhook,
        AttemptOf {
            event_id: &event.id,
            event_type: &event.event_type,
            message_id: &message_id,
            attempt: 1,
            envelope: &body,
        },
        outcome,
        true,
    );
    if let Err(e) = state.store.log_attempt(&record).await {
        tracing::warn!(webhook_id = %webhook.id, error = %e, "could not log a test send");
    }
    Ok(Json(TestResult {
        attempt_id: record.id,
        event_type: event.event_type,
        delivered: attempt.succeeded(),
        status: attempt.status,
        response_headers: attempt.response_headers,
        response_body: attempt.response_body,
        duration_ms: record.duration_ms,
        error_kind: record.error_kind,
        error: attempt.error,
        warnings: attempt.warnings,
    })
    .into_response())
}
