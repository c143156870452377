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

use kivihook_core::delivery::{
    new_job_id, DeadLetter, Job, JobKind, MinuteCounts, TargetState, TotalStats,
};
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

/// The attempt outcomes `?outcome=` can select; `failed` is every outcome but `delivered`.
const OUTCOMES: &[&str] = &["delivered", "failed", "retry", "dead", "disabled"];

/// The most attempts a filtered listing reads: every webhook's log is capped below this.
const LOG_READ_LIMIT: usize = 1_000;

/// `GET /v1/webhooks/{id}/attempts?outcome=&event_id=`, newest first.
pub async fn attempts(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = path_id(path, "webhook")?;
    let p = paging(&q)?;
    if let Some(k) = q
        .keys()
        .find(|k| !matches!(k.as_str(), "limit" | "offset" | "outcome" | "event_id"))
    {
        return Err(ApiError::invalid(
            "invalid_parameter",
            k.as_str(),
            "is not a parameter; parameters are outcome, event_id, limit, offset",
        ));
    }
    let outcome = match q.get("outcome").map(String::as_str) {
        Some(o) if !OUTCOMES.contains(&o) => {
            return Err(ApiError::invalid(
                "invalid_parameter",
                "outcome",
                format!("must be one of {}", OUTCOMES.join(", ")),
            ))
        }
        o => o,
    };
    let event_id = q.get("event_id").map(String::as_str);
    if state.store.get_webhook(&id).await?.is_none() {
        return Err(ApiError::NotFound("webhook"));
    }
    let (items, total) = if outcome.is_none() && event_id.is_none() {
        let page = state.store.list_attempts(&id, p.offset, p.limit).await?;
        (page.items, page.total)
    } else {
        // The log is short (capped per webhook), so a filter reads all of it.
        let all = state.store.list_attempts(&id, 0, LOG_READ_LIMIT).await?;
        let kept: Vec<_> = all
            .items
            .into_iter()
            .filter(|a| event_id.is_none_or(|e| a.event_id == e))
            .filter(|a| match outcome {
                None => true,
                Some("failed") => a.outcome != "delivered",
                Some(o) => a.outcome == o,
            })
            .collect();
        let total = kept.len() as u64;
        (
            kept.into_iter().skip(p.offset).take(p.limit).collect(),
            total,
        )
    };
    let mut body = page_fields(p, items.len(), total);
    body["attempts"] = json!(items);
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
    let job = schedule_replay(&state, dl).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"dead_letter_id": id, "job_id": job.id, "status": "scheduled"})),
    )
        .into_response())
}

/// One more attempt of a dead letter that was just taken out of the queue, now.
async fn schedule_replay(state: &AppState, dl: DeadLetter) -> Result<Job, ApiError> {
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
    if let Err(e) = state.store.schedule_job(&job, Utc::now()).await {
        // Taken but not scheduled: put it back rather than lose it.
        if let Err(e2) = state.store.put_dead_letter(&dl).await {
            tracing::error!(dead_letter_id = %dl.id, error = %e2, "a dead letter could not be restored after a failed replay");
        }
        return Err(e.into());
    }
    tracing::info!(dead_letter_id = %dl.id, job_id = %job.id, webhook_id = %dl.webhook_id, "dead letter replayed");
    Ok(job)
}

/// How many dead letters one call replays, so that a call has a bounded duration; the
/// answer says how many are left.
const REPLAY_ALL_MAX: usize = 10_000;

/// `POST /v1/webhooks/{id}/dead-letters/replay`: every dead letter of one webhook, again.
///
/// The ids are collected before any is replayed: a replay that fails again becomes a new dead
/// letter, which this call must not replay in turn.
pub async fn replay_all(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = path_id(path, "webhook")?;
    if state.store.get_webhook(&id).await?.is_none() {
        return Err(ApiError::NotFound("webhook"));
    }
    let mut ids = Vec::new();
    while ids.len() < REPLAY_ALL_MAX {
        let page = state
            .store
            .list_dead_letters(Some(&id), ids.len(), crate::query::MAX_LIMIT)
            .await?;
        if page.items.is_empty() {
            break;
        }
        ids.extend(page.items.into_iter().map(|dl| dl.id));
    }
    ids.truncate(REPLAY_ALL_MAX);
    let mut replayed = 0usize;
    for dl_id in &ids {
        // Another request may have replayed it since the listing.
        if let Some(dl) = state.store.take_dead_letter(dl_id).await? {
            schedule_replay(&state, dl).await?;
            replayed += 1;
        }
    }
    let remaining = state.store.list_dead_letters(Some(&id), 0, 1).await?.total;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"webhook_id": id, "replayed": replayed, "remaining": remaining, "status": "scheduled"})),
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
    let deliveries = recent_deliveries(&state).await?;
    Ok(Json(json!({
        "totals": totals,
        "deliveries": deliveries,
        "retry_schedule": {"depth": schedule.depth, "leased": schedule.leased, "lag_seconds": schedule.lag.as_secs_f64()},
        "webhooks": webhooks,
    }))
    .into_response())
}

/// Minutes in the overview's chart.
const CHART_MINUTES: i64 = 60;

/// Outcomes summed over some minutes, with the share delivered.
fn summed<'a>(minutes: impl Iterator<Item = &'a MinuteCounts>) -> Value {
    let mut sum = MinuteCounts::default();
    for m in minutes {
        sum.delivered += m.delivered;
        sum.retrying += m.retrying;
        sum.dead += m.dead;
    }
    let attempts = sum.delivered + sum.retrying + sum.dead;
    json!({
        "delivered": sum.delivered,
        "retrying": sum.retrying,
        "dead": sum.dead,
        "attempts": attempts,
        "success_rate": (attempts > 0).then(|| sum.delivered as f64 / attempts as f64),
    })
}

/// Installation-wide attempt outcomes: today (UTC), the last 24 hours, and per minute over
/// the last hour, for the dashboard's overview.
async fn recent_deliveries(state: &AppState) -> Result<Value, ApiError> {
    let now = Utc::now().timestamp().div_euclid(60);
    let first = now - 24 * 60 + 1;
    let minutes = state.store.minute_counts(first, now).await?;
    let midnight = now - now.rem_euclid(24 * 60);
    let per_minute: Vec<Value> = minutes
        .iter()
        .filter(|m| m.minute > now - CHART_MINUTES)
        .map(|m| {
            json!({
                "minute": chrono::DateTime::from_timestamp(m.minute * 60, 0),
                "delivered": m.delivered,
                "retrying": m.retrying,
                "dead": m.dead,
            })
        })
        .collect();
    Ok(json!({
        "today": summed(minutes.iter().filter(|m| m.minute >= midnight)),
        "last_24h": summed(minutes.iter()),
        "per_minute": per_minute,
    }))
}
