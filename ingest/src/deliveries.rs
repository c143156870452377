//! What happened to deliveries: `GET /v1/events/{id}`, attempt logs, dead letters (list and
//! replay), resending an attempt, and statistics.

use std::collections::HashMap;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::{json, Value};

use kivihook_core::delivery::{new_job_id, Job, JobKind, TargetState, TotalStats};
use kivihook_core::webhook::Subscription;

use crate::error::ApiError;
use crate::query::{page_fields, paging};
use crate::request::{authorize, Scope};
use crate::AppState;

fn path_id(
    path: Result<Path<String>, PathRejection>,
    what: &'static str,
) -> Result<String, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|_| ApiError::NotFound(what))
}

/// `GET /v1/events/{id}`: per webhook, pending / delivered / retrying / dead.
pub async fn event_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = path_id(path, "event")?;
    let (info, states, (_, hooks)) = tokio::try_join!(
        state.store.event_info(&id),
        state.store.all_target_states(&id),
        state.store.list_webhooks(),
    )?;
    if info.is_none() && states.is_empty() {
        return Err(ApiError::NotFound("event"));
    }
    let names: HashMap<&str, &str> = hooks
        .iter()
        .map(|w| (w.id.as_str(), w.name.as_str()))
        .collect();
    let mut webhooks: Vec<Value> = states
        .iter()
        .map(|(webhook_id, s)| {
            let mut v = json!({
                "webhook_id": webhook_id,
                "name": names.get(webhook_id.as_str()),
                "status": s.name(),
            });
            match s {
                TargetState::Delivered { at } => v["delivered_at"] = json!(at),
                TargetState::Retrying { attempt, due, .. } => {
                    v["next_attempt"] = json!(attempt);
                    v["next_attempt_at"] = json!(due);
                }
                TargetState::Dead { dead_letter_id } => v["dead_letter_id"] = json!(dead_letter_id),
            }
            v
        })
        .collect();
    // Webhooks that subscribe but have no outcome yet are pending.
    if let Some(info) = &info {
        for w in hooks {
            if states.contains_key(&w.id) {
                continue;
            }
            let sub = Subscription::new(w);
            if sub.matches(&info.event_type, info.clinic_id.as_deref()) {
                webhooks.push(json!({
                    "webhook_id": sub.webhook.id,
                    "name": sub.webhook.name,
                    "status": "pending",
                }));
            }
        }
    }
    webhooks.sort_by(|a, b| a["webhook_id"].as_str().cmp(&b["webhook_id"].as_str()));
    Ok(Json(json!({
        "id": id,
        "type": info.as_ref().map(|i| &i.event_type),
        "clinic_id": info.as_ref().and_then(|i| i.clinic_id.as_ref()),
        "received_at": info.as_ref().map(|i| i.received_at),
        "webhooks": webhooks,
    }))
    .into_response())
}

/// `GET /v1/webhooks/{id}/attempts`, newest first.
pub async fn attempts(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = path_id(path, "webhook")?;
    let p = paging(&q)?;
    if state.store.get_webhook(&id).await?.is_none() {
        return Err(ApiError::NotFound("webhook"));
    }
    let page = state.store.list_attempts(&id, p.offset, p.limit).await?;
    let mut body = page_fields(p, page.items.len(), page.total);
    body["attempts"] = json!(page.items);
    Ok(Json(body).into_response())
}

/// `GET /v1/dead-letters?webhook_id=`, newest first.
pub async fn dead_letters(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let p = paging(&q)?;
    if let Some(k) = q
        .keys()
        .find(|k| !matches!(k.as_str(), "limit" | "offset" | "webhook_id"))
    {
        return Err(ApiError::invalid(
            "invalid_parameter",
            k.as_str(),
            "is not a parameter; parameters are webhook_id, limit, offset",
        ));
    }
    let page = state
        .store
        .list_dead_letters(q.get("webhook_id").map(String::as_str), p.offset, p.limit)
        .await?;
    let mut body = page_fields(p, page.items.len(), page.total);
    body["dead_letters"] = json!(page.items);
    Ok(Json(body).into_response())
}

/// `POST /v1/dead-letters/{id}/replay`: one more attempt, now.
pub async fn replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = path_id(path, "dead letter")?;
    let dl = state
        .store
        .take_dead_letter(&id)
        .await?
        .ok_or(ApiError::NotFound("dead letter"))?;
    let job = Job {
        id: new_job_id(),
        kind: JobKind::Manual,
        event_id: dl.event_id.clone(),
        event_type: dl.event_type.clone(),
        webhook_id: dl.webhook_id.clone(),
        message_id: dl.message_id.clone(),
        attempt: dl.attempts + 1,
        body: serde_json::to_string(&dl.event).unwrap_or_default(),
        created_at: Utc::now(),
    };
    state.store.schedule_job(&job, Utc::now()).await?;
    tracing::info!(dead_letter_id = %id, job_id = %job.id, webhook_id = %dl.webhook_id, "dead letter replayed");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"dead_letter_id": id, "job_id": job.id, "status": "scheduled"})),
    )
        .into_response())
}

/// `POST /v1/attempts/{id}/resend`: the same request again, now.
pub async fn resend(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = path_id(path, "attempt")?;
    let attempt = state
        .store
        .find_attempt(&id)
        .await?
        .ok_or(ApiError::NotFound("attempt"))?;
    if attempt.test || attempt.request_body.is_empty() {
        return Err(ApiError::invalid(
            "not_resendable",
            "id",
            "this attempt's request body was not kept (a test send, or a body over 64 KiB); replay its dead letter instead",
        ));
    }
    if state
        .store
        .get_webhook(&attempt.webhook_id)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound("webhook"));
    }
    let job = Job {
        id: new_job_id(),
        kind: JobKind::Manual,
        event_id: attempt.event_id.clone(),
        event_type: attempt.event_type.clone(),
        webhook_id: attempt.webhook_id.clone(),
        message_id: attempt.message_id.clone(),
        attempt: attempt.attempt + 1,
        body: attempt.request_body.clone(),
        created_at: Utc::now(),
    };
    state.store.schedule_job(&job, Utc::now()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"attempt_id": id, "job_id": job.id, "status": "scheduled"})),
    )
        .into_response())
}

/// `GET /v1/stats`: totals and per webhook.
pub async fn stats(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let (_, hooks) = state.store.list_webhooks().await?;
    let ids: Vec<&str> = hooks.iter().map(|w| w.id.as_str()).collect();
    let (per, schedule) = tokio::try_join!(
        state.store.webhook_stats(&ids),
        state.store.schedule_status()
    )?;
    let mut totals = TotalStats::default();
    let mut webhooks = Vec::with_capacity(hooks.len());
    for (w, s) in hooks.iter().zip(&per) {
        totals.successes += s.successes;
        totals.failures += s.failures;
        totals.retries += s.retries;
        let mut v = serde_json::to_value(s).unwrap_or_default();
        v["webhook_id"] = json!(w.id);
        v["name"] = json!(w.name);
        v["enabled"] = json!(w.enabled);
        v["disabled_reason"] = json!(w.disabled_reason);
        webhooks.push(v);
    }
    totals.dead_letters = schedule.dead_letters;
    Ok(Json(json!({
        "totals": totals,
        "retry_schedule": {"depth": schedule.depth, "leased": schedule.leased, "lag_seconds": schedule.lag.as_secs_f64()},
        "webhooks": webhooks,
    }))
    .into_response())
}
