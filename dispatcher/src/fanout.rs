//! Which targets a message holds: for a new event, every subscribing webhook that it has not
//! reached yet; for a retry job, its one target, if the job is still current.

use bytes::Bytes;

use chrono::{DateTime, Utc};
use kivihook_core::delivery::{Job, JobKind, TargetState};
use kivihook_core::StoreError;
use serde::Deserialize;

use crate::send::message_id;
use crate::target::Target;
use crate::Dispatcher;

/// What the dispatcher reads of an event message: its envelope is sent as it came (the body
/// bytes), so its `data` is checked to be JSON but never built into a tree.
#[derive(Debug, Deserialize)]
pub struct EventHead {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub clinic_id: Option<String>,
    /// Checked by ingest and sent as it came: present, never read here.
    #[allow(dead_code)]
    occurred_at: serde::de::IgnoredAny,
    pub received_at: DateTime<Utc>,
    #[allow(dead_code)]
    data: serde::de::IgnoredAny,
}

/// The targets of a new event that are not settled yet.
///
/// The "already settled" check (`check_settled`) costs one Redis round trip per event (one
/// `HMGET` for all targets); it is what makes a redelivery after a crash, or a second
/// message of a republished id, skip the targets already reached. The first delivery of the
/// only message of an event has nothing to skip and does without it.
pub async fn event_targets(
    d: &Dispatcher,
    event: &EventHead,
    body: &Bytes,
    check_settled: bool,
) -> Result<Vec<Target>, StoreError> {
    let hooks = d
        .registry
        .matching(&event.event_type, event.clinic_id.as_deref());
    if hooks.is_empty() {
        return Ok(Vec::new());
    }
    let states = if check_settled {
        let ids: Vec<&str> = hooks.iter().map(|w| w.id.as_str()).collect();
        d.store
            .target_states(&event.id, &ids, Some(event.received_at))
            .await?
    } else {
        vec![None; hooks.len()]
    };
    let skipped = states.iter().filter(|s| s.is_some()).count();
    if skipped > 0 {
        d.metrics.redelivery_skips.inc_by(skipped as u64);
        tracing::info!(event_id = %event.id, skipped, "redelivered event: skipping targets already settled");
    }
    Ok(hooks
        .into_iter()
        .zip(states)
        .filter(|(_, s)| s.is_none())
        .map(|(webhook, _)| Target {
            message_id: message_id(&event.id, &webhook.id),
            webhook,
            event_id: event.id.clone(),
            event_type: event.event_type.clone(),
            attempt: 1,
            kind: JobKind::Retry,
            body: body.clone(),
            received_at: Some(event.received_at),
            rate_reserved: false,
        })
        .collect())
}

/// What to do with a retry or manual job.
pub enum JobTarget {
    Run(Target),
    /// The webhook is disabled: keep the delivery as a dead letter.
    Disabled(Target),
    /// Nothing to do (the webhook was deleted, or the target moved on).
    Skip(&'static str),
    /// The target's state does not point at this job yet: it has no state, or another
    /// job's. The dispatcher that made the job writes it first and the state that points at
    /// it a round trip later (another slot, on a cluster), so a job that comes due quickly
    /// (a deferral, 1 s) can be published and taken before its state is written. Read again
    /// shortly; only a job whose state never comes to point at it is stale.
    NotYet,
}

pub async fn job_target(d: &Dispatcher, job: Job) -> Result<JobTarget, StoreError> {
    let webhook = match d.registry.get(&job.webhook_id) {
        Some(w) => w,
        None => {
            // Perhaps created a moment ago on another ingest: catch up once. Jobs of a deleted
            // webhook come here too, so this reads the change log, not the whole registry.
            match d.registry.refresh().await?.get(&job.webhook_id).cloned() {
                Some(w) => w,
                None => return Ok(JobTarget::Skip("webhook deleted")),
            }
        }
    };
    if job.kind == JobKind::Retry {
        let state = d
            .store
            .target_states(&job.event_id, &[job.webhook_id.as_str()], None)
            .await?
            .pop()
            .flatten();
        match &state {
            Some(TargetState::Retrying { job_id, .. }) if *job_id == job.id => {}
            None | Some(TargetState::Retrying { .. }) => return Ok(JobTarget::NotYet),
            Some(_) => return Ok(JobTarget::Skip("target moved on")),
        }
    }
    if let Some(dl) = &job.replay_of {
        // A replay whose request stopped after writing this job, before removing the dead
        // letter, left it behind: it goes now, before the attempt (which, if it fails, makes
        // a dead letter of its own).
        d.store.take_dead_letter(dl).await?;
    }
    let received_at = serde_json::from_str::<ReceivedAt>(&job.body)
        .ok()
        .map(|r| r.received_at);
    let enabled = webhook.enabled;
    let target = Target {
        webhook,
        event_id: job.event_id,
        event_type: job.event_type,
        message_id: job.message_id,
        attempt: job.attempt,
        kind: job.kind,
        body: Bytes::from(job.body),
        received_at,
        rate_reserved: job.rate_reserved,
    };
    Ok(if enabled {
        JobTarget::Run(target)
    } else {
        JobTarget::Disabled(target)
    })
}

#[derive(serde::Deserialize)]
struct ReceivedAt {
    received_at: chrono::DateTime<chrono::Utc>,
}
