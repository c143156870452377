//! Webhook management: `GET|POST /v1/webhooks` (paged by cursor, searchable), `GET|PATCH|DELETE /v1/webhooks/{id}`, the
//! signing secret (`GET /v1/webhooks/{id}/secret`, `POST …/rotate-secret`).
//!
//! A signing secret may be given on create and on PATCH, so that a registry can be restored
//! from a backup, or declared in a file, with the secrets its receivers already verify with.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use kivihook_core::definitions::parse_secret;
use kivihook_core::registry::Snapshot;
use kivihook_core::signing::generate_secret;
use kivihook_core::webhook::{check_templates, mask, Auth, Webhook, WebhookSpec};
use kivihook_core::StoreError;

use crate::error::ApiError;
use crate::openapi::{errors, inputs, WebhookId};
use crate::query::{self, cursor_paging, encode_cursor, found, search, CursorPaging};
use crate::query::{CursorParams, DryRunParams, SearchParams};
use crate::request::{authorize, json_body, path_id, Scope};
use crate::AppState;

/// Refuse a URL that the outbound guard would refuse at delivery: better a 422 now than
/// a dead letter later.
async fn check_destination(state: &AppState, url: &str) -> Result<(), ApiError> {
    if kivihook_core::template::is_template(url) {
        // Where it leads depends on each event; every delivery checks it.
        return Ok(());
    }
    let parsed = url::Url::parse(url)
        .map_err(|e| ApiError::invalid("invalid_field", "url", e.to_string()))?;
    state
        .clients
        .guard
        .check_url(&parsed)
        .await
        .map_err(|e| ApiError::invalid("forbidden_destination", "url", e.to_string()))
}

/// Take the optional `secret` out of a create or update body: the rest is a definition.
fn take_secret(body: &mut Value) -> Result<Option<String>, ApiError> {
    match body.as_object_mut().and_then(|o| o.remove("secret")) {
        None => Ok(None),
        Some(v) => Ok(parse_secret(&v)?),
    }
}

async fn load(state: &AppState, id: &str) -> Result<Webhook, ApiError> {
    state
        .store
        .get_webhook(id)
        .await?
        .ok_or(ApiError::NotFound("webhook"))
}

/// `GET /v1/webhooks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    /// Each as `Webhook::to_public_json` shows it, in creation order.
    #[schema(value_type = Vec<Webhook>)]
    pub webhooks: Vec<Value>,
    /// Pass it as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
    /// Webhooks on every page together (those `q` finds, with `q`).
    pub total: u64,
}

/// One page of the webhooks `keep` keeps, in creation order after the cursor, and the
/// cursor of the next page if any is left.
pub(crate) fn page<'a>(
    snapshot: &'a Snapshot,
    paging: &CursorPaging,
    keep: impl Fn(&Webhook) -> bool,
) -> (Vec<&'a Arc<Webhook>>, Option<String>) {
    let after = paging.after.as_ref().map(|(at, id)| (at, id.as_str()));
    let mut kept = snapshot.after(after).filter(|w| keep(w));
    let items: Vec<&Arc<Webhook>> = kept.by_ref().take(paging.limit).collect();
    let next = match (items.last(), kept.next()) {
        (Some(last), Some(_)) => Some(encode_cursor(&last.created_at, &last.id)),
        _ => None,
    };
    (items, next)
}

/// The webhooks, a page at a time in creation order, secrets and credentials masked;
/// `q` finds them by name or URL.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    operation_id = "list_webhooks",
    params(CursorParams, SearchParams),
    responses(
        (status = 200, description = "A page of webhooks, in creation order", body = WebhookList),
        errors::AdminAuth, errors::InvalidParameter, errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    query::only(&q, &["limit", "cursor", "q"])?;
    let paging = cursor_paging(&q)?;
    let needle = search(&q)?;
    let snapshot = state.registry.refresh().await?;
    let keep = |w: &Webhook| {
        needle
            .as_deref()
            .is_none_or(|n| found(n, &w.name, &w.display_url()))
    };
    let total = match &needle {
        None => snapshot.len(),
        Some(_) => snapshot.webhooks().filter(|w| keep(w)).count(),
    } as u64;
    let (items, next_cursor) = page(&snapshot, &paging, keep);
    let webhooks = items.iter().map(|w| w.to_public_json()).collect();
    Ok(Json(WebhookList {
        webhooks,
        next_cursor,
        total,
    })
    .into_response())
}

/// Create a webhook. Its URL is checked against the outbound policy and its templates are
/// rendered against a sample of every event type it subscribes to, so that a mistake is a
/// `422` now instead of a failed delivery later. Names are unique: a name another webhook
/// has is a `409 name_taken`. The answer is the one place the signing secret is shown in
/// full.
///
/// With `dry_run=true` every one of those checks runs and nothing is stored: the answer is
/// `200` with the webhook as it would be created and `"dry_run": true`, without an `id` (none
/// was given out) and its `secret` masked (the one given, or none minted); a refusal is the
/// very error the create would get.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    operation_id = "create_webhook",
    params(DryRunParams),
    request_body(content = inputs::WebhookCreate, content_type = "application/json"),
    responses(
        (status = 200, description = "A dry run (`dry_run=true`) that every check passed: the webhook as it would be created (`WebhookPlan`: no `id`, `secret` masked), with `\"dry_run\": true`; nothing was stored", body = Webhook),
        (status = 201, description = "Created; `secret` is shown in full this once", body = Webhook,
            links(
                ("GetWebhook" = (operation_id = "get_webhook", parameters(("id" = "$response.body#/id")))),
                ("UpdateWebhook" = (operation_id = "update_webhook", parameters(("id" = "$response.body#/id")))),
                ("DeleteWebhook" = (operation_id = "delete_webhook", parameters(("id" = "$response.body#/id")))),
                ("WebhookAttempts" = (operation_id = "webhook_attempts", parameters(("id" = "$response.body#/id")))),
                ("RotateSecret" = (operation_id = "rotate_secret", parameters(("id" = "$response.body#/id")))),
                ("PreviewWebhook" = (operation_id = "preview_webhook", parameters(("id" = "$response.body#/id")))),
                ("TestWebhook" = (operation_id = "test_webhook", parameters(("id" = "$response.body#/id")))),
            )),
        errors::AdminAuth, errors::JsonBody, errors::NameTaken, errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    query::only(&q, &["dry_run"])?;
    let dry_run = query::dry_run(&q)?;
    let mut value = json_body(&headers, body, state.max_body_bytes).await?;
    let secret = take_secret(&mut value)?;
    let spec = WebhookSpec::from_json(&value)?;
    check_templates(&spec)?;
    check_destination(&state, &spec.url).await?;
    if dry_run {
        // The name is checked as the write would check it, without writing.
        if let Some(holder) = state.store.name_holder(&spec.name, None).await? {
            return Err(StoreError::NameTaken {
                name: spec.name,
                id: holder,
            }
            .into());
        }
        // No secret is minted for a webhook that is never stored; a given one is masked.
        let webhook = Webhook::create(spec, secret.unwrap_or_default());
        let mut shown = webhook.to_public_json();
        // No id: nothing was created, so there is nothing to address (a client, or a
        // stateful API tester, must not follow it to a webhook that does not exist).
        if let Some(o) = shown.as_object_mut() {
            o.remove("id");
        }
        shown["dry_run"] = Value::Bool(true);
        return Ok(Json(shown).into_response());
    }
    let webhook = Webhook::create(spec, secret.unwrap_or_else(generate_secret));
    state.store.put_webhook(&webhook).await?;
    tracing::info!(webhook_id = %webhook.id, "webhook created");
    let mut shown = webhook.to_public_json();
    // The one answer that shows the signing secret in full.
    shown["secret"] = Value::String(webhook.secret.clone());
    Ok((StatusCode::CREATED, Json(shown)).into_response())
}

/// One webhook, secret and credentials masked.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "get_webhook",
    params(WebhookId),
    responses(
        (status = 200, description = "The webhook", body = Webhook),
        errors::AdminAuth, errors::NotFound, errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
pub async fn get_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = path_id(path, "webhook")?;
    let webhook = load(&state, &id).await?;
    Ok(Json(webhook.to_public_json()).into_response())
}

/// Change some fields of a webhook; fields left out keep their value. A masked credential
/// sent back as shown keeps the real one. Renaming to a name another webhook has is a
/// `409 name_taken`; the old name is free once the rename is saved. Enabling a disabled webhook clears its disabled
/// reason and failure streak.
///
/// With `dry_run=true` every one of those checks runs and nothing is stored: the answer is
/// the webhook as the change would leave it, with `"dry_run": true`; a refusal is the very
/// error the change would get.
#[utoipa::path(
    patch,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "update_webhook",
    params(WebhookId, DryRunParams),
    request_body(content = inputs::WebhookPatch, content_type = "application/json"),
    responses(
        (status = 200, description = "The webhook as changed (with `dry_run=true`: as it would be changed, with `\"dry_run\": true`; nothing was stored)", body = Webhook),
        errors::AdminAuth, errors::JsonBody, errors::NotFound, errors::NameTakenOrEditConflict,
        errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
pub async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = path_id(path, "webhook")?;
    query::only(&q, &["dry_run"])?;
    let dry_run = query::dry_run(&q)?;
    let body = json_body(&headers, body, state.max_body_bytes).await?;
    let mut checked_url: Option<String> = None;
    let _turn = state.edit_turn(&id).await;
    // Compare-and-set over what was read: an edit saved meanwhile (a rotation, the
    // dispatcher's auto-disable, another PATCH) makes this one apply the patch again over it,
    // so neither undoes the other.
    let mut tries = 0;
    let webhook = loop {
        tries += 1;
        let read = load(&state, &id).await?;
        let mut value = body.clone();
        // Sending back the masked secret that GET shows keeps the real one, as with credentials.
        if let Some(v) = value.get("secret") {
            if v.as_str() == Some(mask(&read.secret).as_str()) {
                if let Some(o) = value.as_object_mut() {
                    o.remove("secret");
                }
            }
        }
        let secret = take_secret(&mut value)?;
        let spec = WebhookSpec::of(&read).patched(&value)?;
        check_templates(&spec)?;
        if spec.url != read.url && checked_url.as_deref() != Some(spec.url.as_str()) {
            check_destination(&state, &spec.url).await?;
            checked_url = Some(spec.url.clone());
        }
        let enabling = spec.enabled && !read.enabled;
        let mut webhook = read.clone();
        webhook.apply(spec);
        if let Some(secret) = secret.filter(|s| *s != webhook.secret) {
            // A secret given outright replaces the current one at once: unlike a rotation, no
            // old secret keeps signing, so the webhook signs with exactly what was given.
            webhook.secret = secret;
            webhook.previous_secrets.clear();
        }
        if dry_run {
            // A rename is checked as the write would check it (keeping the name never is),
            // without writing.
            if webhook.name != read.name {
                if let Some(holder) = state.store.name_holder(&webhook.name, Some(&id)).await? {
                    return Err(StoreError::NameTaken {
                        name: webhook.name,
                        id: holder,
                    }
                    .into());
                }
            }
            let mut shown = webhook.to_public_json();
            shown["dry_run"] = Value::Bool(true);
            return Ok(Json(shown).into_response());
        }
        if enabling {
            // A fresh start: no disabled reason, no failure streak.
            state.store.reset_health(&read.id).await?;
        }
        match state.store.update_webhook(&webhook, &read).await {
            Ok(_) => break webhook,
            Err(StoreError::EditConflict { .. }) if tries < EDIT_TRIES => continue,
            Err(e) => return Err(e.into()),
        }
    };
    tracing::info!(webhook_id = %webhook.id, "webhook updated");
    Ok(Json(webhook.to_public_json()).into_response())
}

/// Delete a webhook. Deliveries already scheduled for it are dropped when they come due.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "delete_webhook",
    params(WebhookId),
    responses(
        (status = 204, description = "Deleted"),
        errors::AdminAuth, errors::NotFound, errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = path_id(path, "webhook")?;
    if state.store.delete_webhook(&id).await? {
        tracing::info!(webhook_id = %id, "webhook deleted");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound("webhook"))
    }
}

/// A webhook's secrets in full.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookSecret {
    pub id: String,
    /// `whsec_…`
    pub secret: String,
    /// With its credential unmasked.
    pub auth: Auth,
    /// The URL in full (a `url_secret` one is masked everywhere else).
    pub url: String,
    /// Every header in full (credential headers are masked everywhere else).
    pub headers: std::collections::BTreeMap<String, String>,
}

/// `GET /v1/webhooks/{id}/secret`: the signing secret, the endpoint credential, credential
/// headers and a capability URL, in full.
///
/// Every other answer masks them; this one exists so that an export through the API is a
/// real backup (and so that a declarative apply can tell whether a credential changed).
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/secret",
    tag = "webhooks",
    operation_id = "webhook_secret",
    params(WebhookId),
    responses(
        (status = 200, description = "The signing secret and the endpoint credential, unmasked",
            body = WebhookSecret),
        errors::AdminAuth, errors::NotFound, errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
pub async fn secret(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = path_id(path, "webhook")?;
    let webhook = load(&state, &id).await?;
    tracing::info!(webhook_id = %webhook.id, "signing secret read");
    Ok(Json(WebhookSecret {
        id: webhook.id,
        secret: webhook.secret,
        auth: webhook.auth,
        url: webhook.url,
        headers: webhook.headers,
    })
    .into_response())
}

/// How many times an edit is made again over a fresh read after another edit was saved
/// between its read and its write; past that, `409 edit_conflict`.
const EDIT_TRIES: usize = 5;

/// How long a rotated-out signing secret keeps signing beside the new one.
const ROTATION_OVERLAP_HOURS: i64 = 24;

/// The answer to a rotation: the new secret in full, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedSecret {
    pub id: String,
    /// `whsec_…`
    pub secret: String,
    /// Until when the previous secret keeps signing beside the new one.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

/// `POST /v1/webhooks/{id}/rotate-secret`: a new signing secret, shown once; the old one
/// keeps signing beside it for 24 hours so that receivers can switch without a gap.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/rotate-secret",
    tag = "webhooks",
    operation_id = "rotate_secret",
    params(WebhookId),
    responses(
        (status = 200, description = "The new secret; the old one signs beside it for 24 hours",
            body = RotatedSecret),
        errors::AdminAuth, errors::NotFound, errors::EditConflict, errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = path_id(path, "webhook")?;
    let secret = generate_secret();
    let _turn = state.edit_turn(&id).await;
    let mut tries = 0;
    let webhook = loop {
        tries += 1;
        let read = load(&state, &id).await?;
        let mut webhook = read.clone();
        webhook.rotate_secret(
            secret.clone(),
            chrono::Duration::hours(ROTATION_OVERLAP_HOURS),
        );
        // Compare-and-set: a rotation never undoes an edit saved meanwhile, nor is undone.
        match state.store.update_webhook(&webhook, &read).await {
            Ok(_) => break webhook,
            Err(StoreError::EditConflict { .. }) if tries < EDIT_TRIES => continue,
            Err(e) => return Err(e.into()),
        }
    };
    tracing::info!(webhook_id = %webhook.id, "signing secret rotated");
    let previous_secret_expires_at = webhook.previous_secrets.first().map(|p| p.expires_at);
    Ok(Json(RotatedSecret {
        id: webhook.id,
        secret: webhook.secret,
        previous_secret_expires_at,
    })
    .into_response())
}
