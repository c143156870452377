//! Webhook management: `GET|POST /v1/webhooks`, `GET|PATCH|DELETE /v1/webhooks/{id}`.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::{json, Value};

use kivihook_core::signing::generate_secret;
use kivihook_core::webhook::{Webhook, WebhookSpec};

use crate::error::ApiError;
use crate::request::{authorize, json_body, Scope};
use crate::AppState;

fn webhook_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|_| ApiError::NotFound("webhook"))
}

pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let (_, hooks) = state.store.list_webhooks().await?;
    let items: Vec<Value> = hooks.iter().map(Webhook::to_public_json).collect();
    Ok(Json(json!({ "webhooks": items })).into_response())
}

pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let value = json_body(&headers, body, state.max_body_bytes).await?;
    let spec = WebhookSpec::from_json(&value)?;
    let now = Utc::now();
    let webhook = Webhook {
        id: format!("wh_{}", uuid::Uuid::new_v4().simple()),
        name: spec.name,
        url: spec.url,
        method: spec.method,
        events: spec.events,
        clinic_ids: spec.clinic_ids,
        headers: spec.headers,
        enabled: spec.enabled,
        disabled_reason: None,
        retry_schedule: spec.retry_schedule,
        rate_limit: spec.rate_limit,
        max_concurrency: spec.max_concurrency,
        secret: generate_secret(),
        created_at: now,
        updated_at: now,
    };
    state.store.put_webhook(&webhook).await?;
    tracing::info!(webhook_id = %webhook.id, "webhook created");
    let mut shown = webhook.to_public_json();
    // The one answer that shows the signing secret in full.
    shown["secret"] = Value::String(webhook.secret.clone());
    Ok((StatusCode::CREATED, Json(shown)).into_response())
}

pub async fn get_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = webhook_id(path)?;
    let webhook = state
        .store
        .get_webhook(&id)
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    Ok(Json(webhook.to_public_json()).into_response())
}

pub async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = webhook_id(path)?;
    let value = json_body(&headers, body, state.max_body_bytes).await?;
    let mut webhook = state
        .store
        .get_webhook(&id)
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    let spec = WebhookSpec::of(&webhook).patched(&value)?;
    let re_enabled = spec.enabled && !webhook.enabled;
    if re_enabled {
        // A fresh start: no disabled reason, no failure streak.
        webhook.disabled_reason = None;
        state.store.reset_health(&webhook.id).await?;
    }
    webhook.name = spec.name;
    webhook.url = spec.url;
    webhook.method = spec.method;
    webhook.events = spec.events;
    webhook.clinic_ids = spec.clinic_ids;
    webhook.headers = spec.headers;
    webhook.enabled = spec.enabled;
    webhook.retry_schedule = spec.retry_schedule;
    webhook.rate_limit = spec.rate_limit;
    webhook.max_concurrency = spec.max_concurrency;
    webhook.updated_at = Utc::now();
    state.store.put_webhook(&webhook).await?;
    tracing::info!(webhook_id = %webhook.id, "webhook updated");
    Ok(Json(webhook.to_public_json()).into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = webhook_id(path)?;
    if state.store.delete_webhook(&id).await? {
        tracing::info!(webhook_id = %id, "webhook deleted");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound("webhook"))
    }
}
