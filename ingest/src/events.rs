//! Event intake: `POST /v1/events` and `POST /v1/events/batch`.
//!
//! An event is answered `202 accepted` only after RabbitMQ confirmed the persistent message.
//! The id is claimed in Redis first (`SET NX`), so the same id within the dedup window is a
//! `200 duplicate` and is not published again; if publishing fails, the claim is released so
//! the client's retry is not mistaken for a duplicate.

use std::collections::HashSet;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use kivihook_core::broker::{OutboundMessage, Queue};
use kivihook_core::event::{generate_event_id, metric_label, valid_event_id, EventType};
use kivihook_core::store::{Claim, EventInfo};
use kivihook_core::webhook::clinic_id_of;

use crate::error::ApiError;
use crate::intake::{self, Fields, Intake, Top};
use crate::openapi::{errors, inputs};
use crate::request::{authorize, json_bytes, Scope};
use crate::AppState;

/// The most events one batch may carry.
pub const MAX_BATCH: usize = 500;

const EVENT_FIELDS: &[&str] = &["id", "type", "clinic_id", "occurred_at", "data"];

/// What happened to one event of a request: `accepted` (durable in RabbitMQ), `duplicate`
/// (its id was accepted within the dedup window; nothing published), or `in_progress`
/// (another request is accepting the same id right now; retry shortly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Accepted,
    Duplicate,
    InProgress,
}

/// The answer for one event.
#[derive(Debug, Serialize, ToSchema)]
pub struct Receipt {
    /// The event id: the body's, else the `Idempotency-Key`, else a generated `evt_…`.
    pub id: String,
    pub status: Status,
}

/// The answer for a batch, one result per event in the order sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchReceipt {
    pub accepted: usize,
    pub duplicates: usize,
    pub results: Vec<Receipt>,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::InProgress => "in_progress",
        }
    }
}

/// Accept one event. It is answered `202` only once RabbitMQ has confirmed it; the same id
/// again within the dedup window (24 h) is a `200 duplicate` and is not delivered twice.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    operation_id = "post_event",
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,200}$",
            description = "The event id when the body has none: 1 to 200 printable ASCII characters without spaces"),
    ),
    request_body(content = inputs::EventIn, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: durable in RabbitMQ", body = Receipt,
            links(("EventStatus" = (operation_id = "event_status",
                parameters(("id" = "$response.body#/id")))))),
        (status = 200, description = "A duplicate of an event accepted within the dedup window; nothing was published",
            body = Receipt),
        errors::IngestAuth, errors::JsonBody, errors::InProgress, errors::Unavailable,
    ),
    security(("ingest_token" = []), ("admin_token" = [])),
)]
pub async fn post_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let result = async {
        authorize(&state, &headers, Scope::Ingest)?;
        let bytes = json_bytes(&headers, body, state.max_body_bytes).await?;
        let fields = match intake::top(&bytes)? {
            Top::Object(fields) => Some(fields),
            Top::Array(_) | Top::Other => None,
        };
        let idempotency_key = match headers.get("idempotency-key") {
            Some(v) => {
                let key = v
                    .to_str()
                    .ok()
                    .filter(|k| valid_event_id(k))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "invalid_header",
                            "Idempotency-Key",
                            "must be 1 to 200 printable characters without spaces",
                        )
                    })?;
                Some(key.to_owned())
            }
            None => None,
        };
        let event = parse_event(&bytes, fields, "", 1, idempotency_key, Utc::now())?;
        let id = event.id.clone();
        let statuses = accept(&state, vec![event]).await?;
        Ok::<_, ApiError>(match statuses[0] {
            Status::Accepted => (
                StatusCode::ACCEPTED,
                Json(Receipt {
                    id,
                    status: Status::Accepted,
                }),
            )
                .into_response(),
            Status::Duplicate => (
                StatusCode::OK,
                Json(Receipt {
                    id,
                    status: Status::Duplicate,
                }),
            )
                .into_response(),
            Status::InProgress => return Err(ApiError::InProgress(id)),
        })
    }
    .await;
    count_rejection(&state, &result);
    result
}

/// Accept up to 500 events at once. Every event is checked before any is claimed or
/// published, so a bad batch changes nothing; each result says what happened to its event.
#[utoipa::path(
    post,
    path = "/v1/events/batch",
    tag = "events",
    operation_id = "post_batch",
    request_body(content = inputs::BatchIn, content_type = "application/json"),
    responses(
        (status = 202, description = "At least one event accepted", body = BatchReceipt),
        (status = 200, description = "No event accepted: every one a duplicate or in progress",
            body = BatchReceipt),
        errors::IngestAuth, errors::JsonBody, errors::Unavailable,
    ),
    security(("ingest_token" = []), ("admin_token" = [])),
)]
pub async fn post_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let result = async {
        authorize(&state, &headers, Scope::Ingest)?;
        let bytes = json_bytes(&headers, body, state.max_body_bytes).await?;
        // The containers around each event's `data`: the array, and the object around it.
        let (items, enclosing) = match intake::top(&bytes)? {
            Top::Array(items) => (items, 2),
            Top::Object(obj) => {
                if let Some(k) = obj.keys().find(|k| k.as_str() != "events") {
                    return Err(ApiError::invalid(
                        "unknown_field",
                        k.as_str(),
                        "a batch is {\"events\": [...]} or a JSON array of events",
                    ));
                }
                match obj.get("events").map(|v| intake::events(v)).transpose()? {
                    Some(Some(events)) => (events, 3),
                    _ => {
                        return Err(ApiError::invalid(
                            "invalid_field",
                            "events",
                            "must be an array of events",
                        ))
                    }
                }
            }
            Top::Other => {
                return Err(ApiError::invalid(
                    "invalid_field",
                    "events",
                    "a batch is {\"events\": [...]} or a JSON array of events",
                ))
            }
        };
        if items.is_empty() {
            return Err(ApiError::invalid(
                "invalid_field",
                "events",
                "must hold at least one event",
            ));
        }
        if items.len() > MAX_BATCH {
            return Err(ApiError::invalid(
                "batch_too_large",
                "events",
                format!(
                    "holds {} events; a batch holds at most {MAX_BATCH}",
                    items.len()
                ),
            ));
        }
        // Every event is checked before any is claimed or published: a bad batch changes nothing.
        let now = Utc::now();
        let events = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let fields = intake::fields(item)?;
                parse_event(
                    &bytes,
                    fields,
                    &format!("events[{i}]."),
                    enclosing,
                    None,
                    now,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        let statuses = accept(&state, events).await?;
        let accepted = statuses.iter().filter(|s| **s == Status::Accepted).count();
        let duplicates = statuses.iter().filter(|s| **s == Status::Duplicate).count();
        let results: Vec<Receipt> = ids
            .into_iter()
            .zip(statuses)
            .map(|(id, status)| Receipt { id, status })
            .collect();
        let code = if accepted > 0 {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        Ok((
            code,
            Json(BatchReceipt {
                accepted,
                duplicates,
                results,
            }),
        )
            .into_response())
    }
    .await;
    count_rejection(&state, &result);
    result
}

fn count_rejection(state: &AppState, result: &Result<Response, ApiError>) {
    if let Err(e) = result {
        state
            .metrics
            .ingest_rejected
            .with_label_values(&[e.code()])
            .inc();
    }
}

/// Parse one event (`None`: the value was not an object), received `now` (the request's
/// time, shared by a batch's events); `at` prefixes field names (`events[3].`) inside a
/// batch, and `enclosing` counts the containers of `body` around its `data`.
fn parse_event<'a>(
    body: &[u8],
    fields: Option<Fields<'a>>,
    at: &str,
    enclosing: usize,
    idempotency_key: Option<String>,
    now: DateTime<Utc>,
) -> Result<Intake<'a>, ApiError> {
    let field = |name: &str| format!("{at}{name}");
    let Some(obj) = fields else {
        return Err(ApiError::invalid(
            "invalid_field",
            at.trim_end_matches('.'),
            "an event must be a JSON object",
        ));
    };
    if let Some(k) = obj.keys().find(|k| !EVENT_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            "unknown_field",
            field(k),
            format!(
                "is not an event field; fields are {}",
                EVENT_FIELDS.join(", ")
            ),
        ));
    }
    // The small fields as values; one that cannot be read as a value (nested too deep, a
    // number out of range) is as invalid as one of the wrong type (`Some(None)`).
    let get = |name: &str| obj.get(name).map(|raw| intake::small(raw));
    let id = match get("id") {
        None | Some(Some(Value::Null)) => idempotency_key.unwrap_or_else(generate_event_id),
        Some(Some(Value::String(s))) if valid_event_id(&s) => s,
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_field",
                field("id"),
                "must be a string of 1 to 200 printable characters without spaces",
            ))
        }
    };
    let event_type = match get("type") {
        Some(Some(Value::String(s))) => EventType::parse(&s)
            .map_err(|e| ApiError::invalid("unknown_event_type", field("type"), e.to_string()))?,
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_field",
                field("type"),
                "must be a string",
            ))
        }
        None => {
            return Err(ApiError::invalid(
                "missing_field",
                field("type"),
                "is required",
            ))
        }
    };
    let clinic_id = match get("clinic_id") {
        None | Some(Some(Value::Null)) => None,
        Some(v) => Some(v.as_ref().and_then(clinic_id_of).ok_or_else(|| {
            ApiError::invalid(
                "invalid_field",
                field("clinic_id"),
                "must be a non-empty string or an integer",
            )
        })?),
    };
    let occurred_at = match get("occurred_at") {
        None | Some(Some(Value::Null)) => now,
        Some(v) => v
            .as_ref()
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| {
                ApiError::invalid(
                    "invalid_field",
                    field("occurred_at"),
                    "must be an RFC 3339 time such as 2026-11-27T09:00:00Z",
                )
            })?,
    };
    let data = match obj.get("data") {
        Some(raw) if raw.get().starts_with('{') => {
            intake::check_data(body, raw, || field("data"), enclosing)?;
            *raw
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_field",
                field("data"),
                "must be a JSON object",
            ))
        }
        None => {
            return Err(ApiError::invalid(
                "missing_field",
                field("data"),
                "is required",
            ))
        }
    };
    Ok(Intake {
        id,
        event_type: event_type.as_str().to_owned(),
        clinic_id,
        occurred_at,
        received_at: now,
        data,
    })
}

/// How long a release keeps trying: as long as a claim can live.
const RELEASE_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Release this request's claims in the background, trying until Redis answers (or the
/// claims have expired by themselves).
fn release_later(state: &AppState, ids: Vec<String>, token: String, at: DateTime<Utc>) {
    if ids.is_empty() {
        return;
    }
    let store = state.store.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let mut wait = std::time::Duration::from_millis(100);
        loop {
            match store.release_events(&ids, &token, at).await {
                Ok(()) => return,
                Err(e) if started.elapsed() >= RELEASE_FOR => {
                    tracing::warn!(error = %e, count = ids.len(), "could not release dedup claims; they expire by themselves");
                    return;
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(2));
                }
            }
        }
    });
}

/// The messages that carry `to_publish` (indices into it): the events of one type together,
/// in the order sent, at most `per_message` in one. The routing key is the type, so whatever
/// is bound to the exchange by type still gets exactly the events of that type.
fn messages(
    events: &[Intake],
    to_publish: &[(usize, bool)],
    per_message: usize,
) -> Vec<Vec<usize>> {
    let mut messages: Vec<Vec<usize>> = Vec::new();
    let mut open: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (m, &(i, _)) in to_publish.iter().enumerate() {
        let key = events[i].event_type.as_str();
        match open.get(key) {
            Some(&at) if messages[at].len() < per_message.max(1) => messages[at].push(m),
            _ => {
                open.insert(key, messages.len());
                messages.push(vec![m]);
            }
        }
    }
    messages
}

/// Claim, publish with confirms, then settle the claims. Returns one status per event.
async fn accept(state: &AppState, events: Vec<Intake<'_>>) -> Result<Vec<Status>, ApiError> {
    // An id repeated inside one request is published once; later copies are duplicates.
    let mut seen = HashSet::with_capacity(events.len());
    let first: Vec<bool> = events.iter().map(|e| seen.insert(e.id.clone())).collect();
    let unique: Vec<String> = events
        .iter()
        .zip(&first)
        .filter(|(_, f)| **f)
        .map(|(e, _)| e.id.clone())
        .collect();

    // The claim names this request, so a release removes this request's claim only, and a
    // claim that lands after the request gave up on it is removed by the release after it.
    // 64 random bits: enough to tell concurrent requests apart, and short, so a claim with
    // a delivery appended still fits a packed dedup bucket (64 bytes a value).
    let token = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let at = events.first().map_or_else(Utc::now, |e| e.received_at);
    let (claims, registry_version) = match state.store.claim_events(&unique, &token, at).await {
        Ok(claimed) => claimed,
        Err(e) => {
            // The claim may still land (Redis paused, a reply lost): release it, so the
            // client's retry after this 503 is accepted, not `in_progress`.
            release_later(state, unique, token, at);
            return Err(e.into());
        }
    };
    let mut claim_of = unique
        .iter()
        .zip(claims)
        .collect::<std::collections::HashMap<_, _>>();

    let mut statuses = Vec::with_capacity(events.len());
    let mut to_publish = Vec::new();
    for (i, (event, is_first)) in events.iter().zip(&first).enumerate() {
        let status = if !is_first {
            Status::Duplicate
        } else {
            match claim_of.remove(&event.id).unwrap_or(Claim::Duplicate) {
                claim @ (Claim::New | Claim::Reclaimed) => {
                    to_publish.push((i, claim == Claim::New));
                    Status::Accepted
                }
                Claim::InProgress => Status::InProgress,
                Claim::Duplicate => Status::Duplicate,
            }
        };
        statuses.push(status);
    }

    let started = Instant::now();
    let messages = messages(&events, &to_publish, state.events_per_message);
    // An envelope that cannot be written fails its message alone; the rest go together.
    let mut published: Vec<Result<(), String>> = Vec::with_capacity(messages.len());
    let mut outbound = Vec::with_capacity(messages.len());
    for members in &messages {
        let first = &events[to_publish[members[0]].0];
        let envelopes: Result<Vec<Vec<u8>>, _> = members
            .iter()
            .map(|&m| serde_json::to_vec(&events[to_publish[m].0]))
            .collect();
        match envelopes {
            Ok(envelopes) => {
                published.push(Ok(()));
                outbound.push(OutboundMessage {
                    queue: Queue::Deliveries,
                    routing_key: first.event_type.clone(),
                    body: kivihook_core::broker::events::encode(&envelopes),
                    registry_version,
                    // Marked only when every event in it was claimed clean: one reclaimed
                    // event makes the dispatcher check the states of all (a check of a clean
                    // one finds nothing).
                    first_publish: members.iter().all(|&m| to_publish[m].1),
                });
            }
            Err(e) => published.push(Err(e.to_string())),
        }
    }
    let mut sent = state.broker.publish_all(&outbound).await.into_iter();
    for result in published.iter_mut().filter(|r| r.is_ok()) {
        *result = match sent.next() {
            Some(r) => r.map_err(|e| e.to_string()),
            None => Err("the broker gave no answer for this message".to_owned()),
        };
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut results = vec![Ok(()); to_publish.len()];
    for (members, result) in messages.iter().zip(published) {
        for &m in members {
            results[m] = result.clone();
        }
    }

    let mut confirmed = Vec::new();
    let mut failed = HashSet::new();
    let mut first_error = None;
    for (&(i, _), result) in to_publish.iter().zip(results) {
        match result {
            Ok(()) => {
                state.metrics.publish_duration.observe(elapsed);
                let e = &events[i];
                confirmed.push(EventInfo {
                    id: e.id.clone(),
                    event_type: e.event_type.clone(),
                    clinic_id: e.clinic_id.clone(),
                    received_at: e.received_at,
                });
            }
            Err(e) => {
                first_error.get_or_insert(e);
                failed.insert(events[i].id.clone());
            }
        }
    }
    if let Err(e) = state
        .store
        .confirm_events(&confirmed, state.dedup_window)
        .await
    {
        // The events are durable in RabbitMQ, so they are accepted; only the dedup window
        // shrinks to the claim's lifetime.
        tracing::warn!(error = %e, count = confirmed.len(), "could not extend dedup keys of confirmed events");
    }
    for (event, status) in events.iter().zip(&statuses) {
        let outcome = if failed.contains(&event.id) && *status == Status::Accepted {
            "unavailable"
        } else {
            status.as_str()
        };
        state
            .metrics
            .events_ingested
            .with_label_values(&[metric_label(&event.event_type), outcome])
            .inc();
    }
    if !failed.is_empty() {
        let failed: Vec<String> = failed.into_iter().collect();
        if let Err(e) = state.store.release_events(&failed, &token, at).await {
            tracing::warn!(error = %e, count = failed.len(), "could not release dedup claims; trying again in the background");
            release_later(state, failed.clone(), token.clone(), at);
        }
        let error = first_error.unwrap_or_default();
        tracing::warn!(error = %error, failed = failed.len(), "publishing to RabbitMQ failed; answering 503");
        return Err(ApiError::Unavailable(format!(
            "the message broker is unavailable ({error}); nothing was accepted that was not confirmed; retry shortly"
        )));
    }
    Ok(statuses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, event_type: &str) -> Intake<'static> {
        Intake {
            id: id.to_owned(),
            event_type: event_type.to_owned(),
            clinic_id: None,
            occurred_at: Utc::now(),
            received_at: Utc::now(),
            data: serde_json::from_str("{}").unwrap(),
        }
    }

    #[test]
    fn a_message_holds_events_of_one_type_in_the_order_sent_up_to_the_cap() {
        let events: Vec<Intake> = ["a", "b", "a", "a", "b", "a", "c"]
            .iter()
            .enumerate()
            .map(|(i, t)| event(&format!("e{i}"), t))
            .collect();
        // Event 2 is not published (a duplicate): its place in the list is skipped.
        let to_publish: Vec<(usize, bool)> =
            [0, 1, 3, 4, 5, 6].iter().map(|&i| (i, true)).collect();
        let types = |m: &[usize]| -> Vec<&str> {
            m.iter()
                .map(|&p| events[to_publish[p].0].event_type.as_str())
                .collect()
        };
        let groups = messages(&events, &to_publish, 2);
        assert_eq!(groups, vec![vec![0, 2], vec![1, 3], vec![4], vec![5]]);
        for g in &groups {
            let t = types(g);
            assert!(t.iter().all(|x| *x == t[0]), "{t:?}");
        }
        assert_eq!(messages(&events, &to_publish, 1).len(), 6);
        assert_eq!(
            messages(&events, &to_publish, 50),
            vec![vec![0, 2, 4], vec![1, 3], vec![5]]
        );
        assert!(messages(&events, &[], 50).is_empty());
    }
}
