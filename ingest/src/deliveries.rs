//! What happened to deliveries: `GET /v1/events/{id}`, attempt logs, dead letters (list and
//! replay), resending an attempt, and statistics.

use std::collections::{HashMap, HashSet};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use kivihook_core::delivery::{
    AttemptRecord, DeadLetter, Job, MinuteCounts, ReplayRun, ReplayStatus, TargetState, TotalStats,
    WebhookStats,
};
use kivihook_core::registry::Snapshot;
use kivihook_core::webhook::Webhook;

use crate::error::ApiError;
use crate::openapi::{errors, WebhookId};
use crate::query::{self, cursor_paging, found, paging, search, PageInfo, PageParams};
use crate::query::{CursorParams, SearchParams};
use crate::request::{authorize, path_id, Scope};
use crate::AppState;

/// Where one event stands, per webhook that wants it.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventStatus {
    pub id: String,
    /// Null when only delivery outcomes are left (the event's record expired).
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub clinic_id: Option<String>,
    pub received_at: Option<DateTime<Utc>>,
    /// Ordered by webhook id.
    pub webhooks: Vec<TargetStatus>,
}

/// Where an event stands with one webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetStatus {
    pub webhook_id: String,
    /// Null when the webhook has since been deleted.
    pub name: Option<String>,
    pub status: TargetStage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
    /// The number of the attempt that is scheduled next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Replay it with `POST /v1/dead-letters/{id}/replay`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_id: Option<String>,
}

/// `pending` (no outcome yet), `delivered`, `retrying` (an attempt is scheduled) or `dead`
/// (retries exhausted; a dead letter holds it).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetStage {
    Pending,
    Delivered,
    Retrying,
    Dead,
}

impl TargetStatus {
    fn new(webhook_id: String, name: Option<String>, status: TargetStage) -> Self {
        Self {
            webhook_id,
            name,
            status,
            delivered_at: None,
            next_attempt: None,
            next_attempt_at: None,
            dead_letter_id: None,
        }
    }
}

/// `GET /v1/events/{id}`: per webhook, pending / delivered / retrying / dead.
#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    tag = "events",
    operation_id = "event_status",
    params(("id" = String, Path, description = "The event id")),
    responses(
        (status = 200, description = "The event and its state with every webhook that wants it",
            body = EventStatus),
        errors::AdminAuth, errors::NotFound, errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
pub async fn event_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = path_id(path, "event")?;
    let (info, states, registry) = tokio::try_join!(
        state.store.event_info(&id),
        state.store.all_target_states(&id),
        state.registry.refresh(),
    )?;
    if info.is_none() && states.is_empty() {
        return Err(ApiError::NotFound("event"));
    }
    let mut webhooks: Vec<TargetStatus> = states
        .iter()
        .map(|(webhook_id, s)| {
            let name = registry.get(webhook_id).map(|w| w.name.clone());
            match s {
                TargetState::Delivered { at } => TargetStatus {
                    delivered_at: Some(*at),
                    ..TargetStatus::new(webhook_id.clone(), name, TargetStage::Delivered)
                },
                TargetState::Retrying { attempt, due, .. } => TargetStatus {
                    next_attempt: Some(*attempt),
                    next_attempt_at: Some(*due),
                    ..TargetStatus::new(webhook_id.clone(), name, TargetStage::Retrying)
                },
                TargetState::Dead { dead_letter_id } => TargetStatus {
                    dead_letter_id: Some(dead_letter_id.clone()),
                    ..TargetStatus::new(webhook_id.clone(), name, TargetStage::Dead)
                },
            }
        })
        .collect();
    // Webhooks that subscribe but have no outcome yet are pending.
    if let Some(info) = &info {
        for w in registry.matching(&info.event_type, info.clinic_id.as_deref()) {
            if !states.contains_key(&w.id) {
                webhooks.push(TargetStatus::new(
                    w.id.clone(),
                    Some(w.name.clone()),
                    TargetStage::Pending,
                ));
            }
        }
    }
    webhooks.sort_by(|a, b| a.webhook_id.cmp(&b.webhook_id));
    Ok(Json(EventStatus {
        id,
        event_type: info.as_ref().map(|i| i.event_type.clone()),
        clinic_id: info.as_ref().and_then(|i| i.clinic_id.clone()),
        received_at: info.as_ref().map(|i| i.received_at),
        webhooks,
    })
    .into_response())
}

/// The attempt outcomes `?outcome=` can select; `failed` is every outcome but `delivered`.
const OUTCOMES: &[&str] = &["delivered", "failed", "retry", "dead", "disabled"];

/// The most attempts a filtered listing reads: every webhook's log is capped below this.
const LOG_READ_LIMIT: usize = 1_000;

/// `?outcome=&event_id=`: which attempts to list.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AttemptFilter {
    /// Only attempts with this outcome; `failed` is every outcome but `delivered`.
    #[param(schema_with = outcome_schema)]
    outcome: Option<String>,
    /// Only attempts of this event.
    event_id: Option<String>,
}

fn outcome_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(OUTCOMES.iter().copied()))
        .build()
}

/// A page of a webhook's attempt log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptPage {
    #[serde(flatten)]
    pub page: PageInfo,
    pub attempts: Vec<AttemptRecord>,
}

/// `GET /v1/webhooks/{id}/attempts?outcome=&event_id=`, newest first.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/attempts",
    tag = "deliveries",
    operation_id = "webhook_attempts",
    params(WebhookId, AttemptFilter, PageParams),
    responses(
        (status = 200, description = "The attempt log, newest first: request, response status, headers and body excerpt, duration, error",
            body = AttemptPage),
        errors::AdminAuth, errors::NotFound, errors::InvalidParameter, errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
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
    Ok(Json(AttemptPage {
        page: PageInfo::of(p, items.len(), total),
        attempts: items,
    })
    .into_response())
}

/// A page of dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    #[serde(flatten)]
    pub page: PageInfo,
    pub dead_letters: Vec<DeadLetter>,
}

/// `GET /v1/dead-letters?webhook_id=`, newest first.
#[utoipa::path(
    get,
    path = "/v1/dead-letters",
    tag = "deliveries",
    operation_id = "list_dead_letters",
    params(
        ("webhook_id" = Option<String>, Query, description = "Only this webhook's dead letters"),
        PageParams,
    ),
    responses(
        (status = 200, description = "Deliveries whose retries ran out, newest first", body = DeadLetterPage),
        errors::AdminAuth, errors::InvalidParameter, errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
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
    Ok(Json(DeadLetterPage {
        page: PageInfo::of(p, page.items.len(), page.total),
        dead_letters: page.items,
    })
    .into_response())
}

/// `scheduled`: the attempt is in the retry schedule, due now.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scheduled {
    Scheduled,
}

/// The answer to a replay.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub dead_letter_id: String,
    /// The scheduled attempt.
    pub job_id: String,
    pub status: Scheduled,
}

/// The answer to a resend.
#[derive(Debug, Serialize, ToSchema)]
pub struct Resent {
    pub attempt_id: String,
    /// The scheduled attempt.
    pub job_id: String,
    pub status: Scheduled,
}

/// `POST /v1/dead-letters/{id}/replay`: one more attempt, now.
#[utoipa::path(
    post,
    path = "/v1/dead-letters/{id}/replay",
    tag = "deliveries",
    operation_id = "replay_dead_letter",
    params(("id" = String, Path, description = "The dead letter id (`dl_…`)")),
    responses(
        (status = 202, description = "One more attempt is scheduled now; the dead letter is removed",
            body = Replayed),
        errors::AdminAuth, errors::NotFound, errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
pub async fn replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = path_id(path, "dead letter")?;
    let job = state
        .store
        .replay_dead_letter(&id)
        .await?
        .ok_or(ApiError::NotFound("dead letter"))?;
    tracing::info!(dead_letter_id = %id, job_id = %job.id, webhook_id = %job.webhook_id, "dead letter replayed");
    Ok((
        StatusCode::ACCEPTED,
        Json(Replayed {
            dead_letter_id: id,
            job_id: job.id,
            status: Scheduled::Scheduled,
        }),
    )
        .into_response())
}

/// `scheduled`: every dead letter collected is in the retry schedule; `running`: the replay
/// goes on after this answer (follow it at `GET /v1/replays/{replay_id}`).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplayAllStatus {
    Scheduled,
    Running,
}

/// The answer to replaying a webhook's dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayedAll {
    pub webhook_id: String,
    /// Dead letters scheduled again by this call so far.
    pub replayed: u64,
    /// Dead letters of the webhook left (not reached yet, past this call's limit, or new
    /// since).
    pub remaining: u64,
    pub status: ReplayAllStatus,
    /// Its progress: `GET /v1/replays/{replay_id}`.
    pub replay_id: String,
}

/// How many dead letters one call replays, so that a call has a bounded duration; the
/// answer says how many are left.
const REPLAY_ALL_MAX: usize = 10_000;

/// How long the request waits for its replay before answering `running`.
const REPLAY_ALL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a running replay writes its progress.
const REPLAY_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// `POST /v1/webhooks/{id}/dead-letters/replay`: every dead letter of one webhook, again.
///
/// The ids are collected before any is replayed: a replay that fails again becomes a new dead
/// letter, which this call must not replay in turn. The replay runs apart from the request:
/// a client that disconnects does not stop it, and each dead letter is moved to the retry
/// schedule in one step (`Store::replay_dead_letter`), so one cut short at any point (the
/// process killed) leaves every dead letter either still a dead letter or scheduled. The
/// answer comes when it is done, or after 10 s with `status: running`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/dead-letters/replay",
    tag = "deliveries",
    operation_id = "replay_webhook_dead_letters",
    params(WebhookId),
    responses(
        (status = 202, description = "Every dead letter of the webhook (at most 10000 a call) is scheduled again now (`scheduled`), or is being scheduled (`running`)",
            body = ReplayedAll),
        errors::AdminAuth, errors::NotFound, errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
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
    let now = Utc::now();
    let run = ReplayRun {
        id: format!("rpl_{}", uuid::Uuid::new_v4().simple()),
        webhook_id: id.clone(),
        status: ReplayStatus::Running,
        total: ids.len() as u64,
        replayed: 0,
        skipped: 0,
        error: None,
        started_at: now,
        updated_at: now,
    };
    state.store.put_replay_run(&run).await?;
    tracing::info!(replay_id = %run.id, webhook_id = %id, dead_letters = ids.len(), "bulk replay started");
    let replay_id = run.id.clone();
    let task = tokio::spawn(run_replay(state.store.clone(), run, ids));
    let (replayed, status) = match tokio::time::timeout(REPLAY_ALL_WAIT, task).await {
        Ok(Ok(run)) if run.status == ReplayStatus::Done => {
            (run.replayed, ReplayAllStatus::Scheduled)
        }
        Ok(Ok(run)) => {
            return Err(ApiError::Unavailable(format!(
                "the replay stopped after {} of {}: {}; the rest are still dead letters, so run it again",
                run.replayed,
                run.total,
                run.error.unwrap_or_default()
            )))
        }
        Ok(Err(e)) => {
            return Err(ApiError::Unavailable(format!("the replay stopped: {e}")));
        }
        Err(_) => {
            let so_far = state.store.get_replay_run(&replay_id).await?;
            (
                so_far.map_or(0, |r| r.replayed),
                ReplayAllStatus::Running,
            )
        }
    };
    let remaining = state.store.list_dead_letters(Some(&id), 0, 1).await?.total;
    Ok((
        StatusCode::ACCEPTED,
        Json(ReplayedAll {
            webhook_id: id,
            replayed,
            remaining,
            status,
            replay_id,
        }),
    )
        .into_response())
}

/// Move each collected dead letter to the retry schedule, writing progress as it goes.
async fn run_replay(
    store: std::sync::Arc<dyn kivihook_core::Store>,
    mut run: ReplayRun,
    ids: Vec<String>,
) -> ReplayRun {
    let mut last_write = std::time::Instant::now();
    for dl_id in &ids {
        let mut backoff = std::time::Duration::from_millis(100);
        let mut tries = 0;
        let moved = loop {
            tries += 1;
            match store.replay_dead_letter(dl_id).await {
                Ok(moved) => break Ok(moved),
                Err(e) if tries >= 5 => break Err(e),
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        };
        match moved {
            Ok(Some(_)) => run.replayed += 1,
            // Replayed by another request since the listing, or trimmed.
            Ok(None) => run.skipped += 1,
            Err(e) => {
                tracing::warn!(replay_id = %run.id, error = %e, "bulk replay stopped");
                run.status = ReplayStatus::Failed;
                run.error = Some(e.to_string());
                break;
            }
        }
        if last_write.elapsed() >= REPLAY_PROGRESS_EVERY {
            run.updated_at = Utc::now();
            let _ = store.put_replay_run(&run).await;
            last_write = std::time::Instant::now();
        }
    }
    if run.status == ReplayStatus::Running {
        run.status = ReplayStatus::Done;
    }
    run.updated_at = Utc::now();
    // The outcome is written until it sticks (a running replay that never says done would
    // look cut short).
    for _ in 0..10 {
        if store.put_replay_run(&run).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    tracing::info!(replay_id = %run.id, replayed = run.replayed, skipped = run.skipped, status = ?run.status, "bulk replay ended");
    run
}

/// `GET /v1/replays/{id}`: how far a bulk replay has come.
#[utoipa::path(
    get,
    path = "/v1/replays/{id}",
    tag = "deliveries",
    operation_id = "replay_progress",
    params(("id" = String, Path, description = "The replay id (`rpl_…`) a bulk replay answered")),
    responses(
        (status = 200, description = "The replay's progress (kept for a day)", body = ReplayRun),
        errors::AdminAuth, errors::NotFound, errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
pub async fn replay_progress(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = path_id(path, "replay")?;
    let run = state
        .store
        .get_replay_run(&id)
        .await?
        .ok_or(ApiError::NotFound("replay"))?;
    Ok(Json(run).into_response())
}

/// `POST /v1/attempts/{id}/resend`: the same request again, now.
#[utoipa::path(
    post,
    path = "/v1/attempts/{id}/resend",
    tag = "deliveries",
    operation_id = "resend_attempt",
    params(("id" = String, Path, description = "The attempt id (`att_…`)")),
    responses(
        (status = 202, description = "The same request is scheduled again now", body = Resent),
        errors::AdminAuth, errors::NotFound, errors::NotResendable, errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
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
        return Err(ApiError::NotResendable);
    }
    if state
        .store
        .get_webhook(&attempt.webhook_id)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound("webhook"));
    }
    let job = Job::manual(
        &attempt.event_id,
        &attempt.event_type,
        &attempt.webhook_id,
        &attempt.message_id,
        attempt.attempt + 1,
        attempt.request_body.clone(),
    );
    state.store.schedule_job(&job, Utc::now()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Resent {
            attempt_id: id,
            job_id: job.id,
            status: Scheduled::Scheduled,
        }),
    )
        .into_response())
}

/// `GET /v1/stats`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    /// Over every webhook, whatever the page.
    pub totals: TotalStats,
    /// Attempt outcomes today, over 24 hours and per minute over the last hour.
    pub deliveries: RecentDeliveries,
    pub retry_schedule: ScheduleStats,
    /// One page of webhooks, in creation order (as `GET /v1/webhooks` pages them).
    pub webhooks: Vec<WebhookStatsView>,
    /// Pass it as `cursor` for the next page of `webhooks`; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
    /// How many webhooks are in each state, over every webhook.
    pub webhook_counts: WebhookCounts,
    /// Stored webhook records that cannot be used (one that does not parse is left out of
    /// every listing; one whose secrets do not open is disabled): each with why.
    pub invalid_webhooks: Vec<kivihook_core::store::InvalidWebhook>,
}

/// Webhooks by state.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct WebhookCounts {
    pub total: u64,
    pub enabled: u64,
    pub disabled: u64,
    /// Enabled, with failures since their last success.
    pub failing: u64,
}

/// The retry schedule at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleStats {
    /// Attempts waiting for their time.
    pub depth: u64,
    /// Attempts claimed by a scheduler and not yet published.
    pub leased: u64,
    /// How long the oldest due attempt has been waiting past its time.
    pub lag_seconds: f64,
}

/// One webhook's statistics.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookStatsView {
    pub webhook_id: String,
    pub name: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    #[serde(flatten)]
    pub stats: WebhookStats,
}

impl WebhookStatsView {
    fn new(w: &Webhook, stats: WebhookStats) -> Self {
        Self {
            webhook_id: w.id.clone(),
            name: w.name.clone(),
            enabled: w.enabled,
            disabled_reason: w.disabled_reason.clone(),
            stats,
        }
    }
}

/// `?attention=` as documented; the handler reads it.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AttentionParam {
    /// Only webhooks that need attention: disabled, or failing since their last success.
    attention: Option<bool>,
}

/// Installation-wide totals and counts, and which webhooks need attention, from the
/// counters of every webhook (a few fields each, not their hourly buckets).
async fn survey(
    state: &AppState,
    snapshot: &Snapshot,
) -> Result<(TotalStats, WebhookCounts, HashSet<String>), ApiError> {
    let ids: Vec<&str> = snapshot.webhooks().map(|w| w.id.as_str()).collect();
    let counters = state.store.webhook_counters(&ids).await?;
    let mut totals = TotalStats::default();
    let mut counts = WebhookCounts::default();
    let mut attention = HashSet::new();
    for (w, c) in snapshot.webhooks().zip(&counters) {
        totals.successes += c.successes;
        totals.failures += c.failures;
        totals.retries += c.retries;
        counts.total += 1;
        if !w.enabled {
            counts.disabled += 1;
            attention.insert(w.id.clone());
        } else {
            counts.enabled += 1;
            if c.consecutive_failures > 0 {
                counts.failing += 1;
                attention.insert(w.id.clone());
            }
        }
    }
    Ok((totals, counts, attention))
}

/// `GET /v1/stats`: totals over every webhook, and one page of webhooks' statistics.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "deliveries",
    operation_id = "stats",
    params(CursorParams, SearchParams, AttentionParam),
    responses(
        (status = 200, description = "Totals, the retry schedule, and a page of webhooks", body = Stats),
        errors::AdminAuth, errors::InvalidParameter, errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
pub async fn stats(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    query::only(&q, &["limit", "cursor", "q", "attention"])?;
    let paging = cursor_paging(&q)?;
    let needle = search(&q)?;
    let only_attention = match q.get("attention").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_parameter",
                "attention",
                "must be true or false",
            ))
        }
    };
    let snapshot = state.registry.refresh().await?;
    let ((mut totals, webhook_counts, attention), schedule) =
        tokio::try_join!(survey(&state, &snapshot), async {
            state.store.schedule_status().await.map_err(ApiError::from)
        })?;
    let keep = |w: &Webhook| {
        needle
            .as_deref()
            .is_none_or(|n| found(n, &w.name, &w.display_url()))
            && (!only_attention || attention.contains(&w.id))
    };
    let (items, next_cursor) = crate::webhooks::page(&snapshot, &paging, keep);
    let ids: Vec<&str> = items.iter().map(|w| w.id.as_str()).collect();
    let per = state.store.webhook_stats(&ids).await?;
    let webhooks = items
        .iter()
        .zip(per)
        .map(|(w, s)| WebhookStatsView::new(w, s))
        .collect();
    totals.dead_letters = schedule.dead_letters;
    let deliveries = recent_deliveries(&state).await?;
    Ok(Json(Stats {
        totals,
        deliveries,
        retry_schedule: ScheduleStats {
            depth: schedule.depth,
            leased: schedule.leased,
            lag_seconds: schedule.lag.as_secs_f64(),
        },
        webhooks,
        next_cursor,
        webhook_counts,
        invalid_webhooks: state.store.invalid_webhooks(),
    })
    .into_response())
}

/// `GET /v1/webhooks/{id}/stats`: one webhook's statistics, without reading every other's.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/stats",
    tag = "deliveries",
    operation_id = "webhook_stats",
    params(WebhookId),
    responses(
        (status = 200, description = "The webhook's statistics", body = WebhookStatsView),
        errors::AdminAuth, errors::NotFound, errors::Unavailable,
    ),
    security(("admin_token" = [])),
)]
pub async fn webhook_stats(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Admin)?;
    let id = path_id(path, "webhook")?;
    let webhook = state
        .store
        .get_webhook(&id)
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    let stats = state
        .store
        .webhook_stats(&[id.as_str()])
        .await?
        .pop()
        .unwrap_or_default();
    Ok(Json(WebhookStatsView::new(&webhook, stats)).into_response())
}

/// Minutes in the overview's chart.
const CHART_MINUTES: i64 = 60;

/// Installation-wide attempt outcomes (test sends excluded).
#[derive(Debug, Serialize, ToSchema)]
pub struct RecentDeliveries {
    /// Since midnight UTC.
    pub today: OutcomeSums,
    pub last_24h: OutcomeSums,
    /// The last hour, oldest first; minutes without attempts are left out.
    pub per_minute: Vec<MinuteOutcomes>,
}

/// Attempt outcomes summed over some minutes.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutcomeSums {
    pub delivered: u64,
    /// Failed and scheduled again.
    pub retrying: u64,
    /// Failed for the last time: dead letters.
    pub dead: u64,
    pub attempts: u64,
    /// Delivered over attempts; null without attempts.
    pub success_rate: Option<f64>,
}

/// Attempt outcomes in one minute.
#[derive(Debug, Serialize, ToSchema)]
pub struct MinuteOutcomes {
    /// The minute's start.
    pub minute: Option<DateTime<Utc>>,
    pub delivered: u64,
    pub retrying: u64,
    pub dead: u64,
}

/// Outcomes summed over some minutes, with the share delivered.
fn summed<'a>(minutes: impl Iterator<Item = &'a MinuteCounts>) -> OutcomeSums {
    let mut sum = MinuteCounts::default();
    for m in minutes {
        sum.delivered += m.delivered;
        sum.retrying += m.retrying;
        sum.dead += m.dead;
    }
    let attempts = sum.delivered + sum.retrying + sum.dead;
    OutcomeSums {
        delivered: sum.delivered,
        retrying: sum.retrying,
        dead: sum.dead,
        attempts,
        success_rate: (attempts > 0).then(|| sum.delivered as f64 / attempts as f64),
    }
}

/// Installation-wide attempt outcomes: today (UTC), the last 24 hours, and per minute over
/// the last hour, for the dashboard's overview.
async fn recent_deliveries(state: &AppState) -> Result<RecentDeliveries, ApiError> {
    let now = Utc::now().timestamp().div_euclid(60);
    let first = now - 24 * 60 + 1;
    let minutes = state.store.minute_counts(first, now).await?;
    let midnight = now - now.rem_euclid(24 * 60);
    let per_minute = minutes
        .iter()
        .filter(|m| m.minute > now - CHART_MINUTES)
        .map(|m| MinuteOutcomes {
            minute: DateTime::from_timestamp(m.minute * 60, 0),
            delivered: m.delivered,
            retrying: m.retrying,
            dead: m.dead,
        })
        .collect();
    Ok(RecentDeliveries {
        today: summed(minutes.iter().filter(|m| m.minute >= midnight)),
        last_24h: summed(minutes.iter()),
        per_minute,
    })
}
