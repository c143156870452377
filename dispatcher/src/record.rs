//! Decide what follows an attempt, make it durable, then acknowledge the message.
//!
//! The order is the whole point: a message is acked only after every target's outcome
//! (delivered, a retry job, or a dead letter) is in the store. A crash before the ack means
//! a redelivery, and the recorded target states make the redelivery skip what was done.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use kivihook_core::broker::Acker;
use kivihook_core::delivery::{
    new_attempt_id, new_dead_letter_id, DeadLetter, Health, JobKind, Outcome, TargetResult,
};
use kivihook_core::retry::RetrySchedule;
use kivihook_core::webhook::Webhook;
use kivihook_core::Shutdown;
use kivihook_core::StoreError;

use crate::gate::Probe;
use crate::send::{Attempt, ErrorKind};
use crate::target::Target;
use crate::Dispatcher;
use kivihook_core::http_client::AttemptOf;

/// One target's result, with what it means for its webhook.
pub struct Processed {
    pub webhook: Arc<Webhook>,
    pub result: TargetResult,
    /// Disable the webhook, for this reason (it answered 410 Gone).
    pub disable: Option<String>,
}

fn schedule_of(d: &Dispatcher, webhook: &Webhook) -> RetrySchedule {
    webhook
        .retry_schedule
        .clone()
        .and_then(|s| RetrySchedule::new(s).ok())
        .unwrap_or_else(|| d.retry_schedule.clone())
}

fn dead_letter(
    target: &Target,
    status: Option<u16>,
    error: String,
    attempt_id: Option<String>,
) -> DeadLetter {
    DeadLetter {
        id: new_dead_letter_id(),
        event_id: target.event_id.clone(),
        event_type: target.event_type.clone(),
        webhook_id: target.webhook.id.clone(),
        message_id: target.message_id.clone(),
        failed_at: Utc::now(),
        attempts: target.attempt,
        last_status: status,
        last_error: error,
        last_attempt_id: attempt_id,
        event: serde_json::from_slice(&target.body).unwrap_or_default(),
    }
}

/// What follows a request that was sent.
pub fn after_attempt(d: &Dispatcher, target: &Target, attempt: Attempt) -> Processed {
    let webhook = target.webhook.clone();
    let now = Utc::now();
    let mut disable = None;
    let (outcome, label) = if attempt.succeeded() {
        (Outcome::Delivered, "delivered")
    } else if attempt.status == Some(410) {
        disable = Some(format!(
            "the endpoint answered 410 Gone at {}",
            now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
        let dl = dead_letter(target, attempt.status, attempt.describe(), None);
        (Outcome::Dead(Box::new(dl)), "dead")
    } else {
        let next = match target.kind {
            // A replay or resend is one attempt; if it fails it is a dead letter again.
            JobKind::Manual => None,
            // The templates cannot make a request from this event: the same event would fail
            // the same way. A dead letter at once, to replay once the webhook is fixed.
            JobKind::Retry if attempt.error_kind == Some(ErrorKind::Render) => None,
            JobKind::Retry => schedule_of(d, &webhook).delay_after(target.attempt),
        };
        match next {
            Some(delay) => {
                // Retry-After is honoured: the next attempt is never earlier than asked.
                let wait = attempt.retry_after.map_or(delay, |ra| ra.max(delay));
                let due = now + chrono::Duration::from_std(wait).unwrap_or_default();
                let job = target.job(target.attempt + 1);
                (Outcome::Retry { job, due }, "retry")
            }
            None => {
                let dl = dead_letter(target, attempt.status, attempt.describe(), None);
                (Outcome::Dead(Box::new(dl)), "dead")
            }
        }
    };
    let attempt_id = new_attempt_id(&webhook.id);
    let outcome = match outcome {
        Outcome::Dead(mut dl) => {
            dl.last_attempt_id = Some(attempt_id.clone());
            if target.kind == JobKind::Manual {
                // A failed resend or replay must not cancel a retry that is still pending.
                Outcome::DeadAside(dl)
            } else {
                Outcome::Dead(dl)
            }
        }
        other => other,
    };
    let record = attempt.into_record(
        attempt_id,
        &webhook,
        AttemptOf {
            event_id: &target.event_id,
            event_type: &target.event_type,
            message_id: &target.message_id,
            attempt: target.attempt,
            envelope: &target.body,
        },
        label,
        false,
    );
    Processed {
        result: TargetResult {
            event_id: target.event_id.clone(),
            webhook_id: webhook.id.clone(),
            outcome,
            attempt: Some(record),
            received_at: target.received_at,
        },
        webhook,
        disable,
    }
}

/// A target put off without a request: the same attempt, later.
pub fn deferred(target: &Target, until: DateTime<Utc>, reserved: bool) -> Processed {
    // Spread the comeback over a second so that a reopened endpoint is not hit all at once;
    // a reserved rate-limit slot is its own spread.
    let spread = if reserved {
        0
    } else {
        rand::thread_rng().gen_range(0..1000)
    };
    let due = until + chrono::Duration::milliseconds(spread);
    let mut job = target.job(target.attempt);
    job.rate_reserved = reserved;
    Processed {
        webhook: target.webhook.clone(),
        result: TargetResult {
            event_id: target.event_id.clone(),
            webhook_id: target.webhook.id.clone(),
            outcome: Outcome::Retry { job, due },
            attempt: None,
            received_at: target.received_at,
        },
        disable: None,
    }
}

/// A target whose webhook is disabled: kept as a dead letter, replayable once it is enabled.
pub fn refused(target: &Target, reason: &str) -> Processed {
    let dl = dead_letter(target, None, reason.to_owned(), None);
    Processed {
        webhook: target.webhook.clone(),
        result: TargetResult {
            event_id: target.event_id.clone(),
            webhook_id: target.webhook.id.clone(),
            outcome: Outcome::Dead(Box::new(dl)),
            attempt: None,
            received_at: target.received_at,
        },
        disable: None,
    }
}

/// Run a store operation until it succeeds, backing off; `None` if shutdown came first.
pub async fn persist<T, E, F, Fut>(
    d: &Dispatcher,
    shutdown: &mut Shutdown,
    what: &str,
    mut op: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(50);
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => {
                d.metrics
                    .redis_errors
                    .with_label_values(&["dispatcher"])
                    .inc();
                tracing::warn!(error = %e, what, retry_in_ms = backoff.as_millis() as u64, "store operation failed; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Record every result, act on what they say about the webhooks, then ack. If shutdown
/// interrupts the recording, hand the message back instead: nothing is acked unrecorded.
pub async fn settle(
    d: &Dispatcher,
    shutdown: &mut Shutdown,
    processed: Vec<Processed>,
    acker: Box<dyn Acker>,
) {
    let recorded = record(d, shutdown, processed).await;
    ack_if(recorded, acker).await;
}

/// Ack a message whose outcomes are recorded; hand one back that shutdown interrupted.
pub async fn ack_if(recorded: bool, acker: Box<dyn Acker>) {
    if !recorded {
        let _ = acker.requeue().await;
    } else if let Err(e) = acker.ack().await {
        // The broker redelivers it; the recorded target states make that a no-op.
        tracing::warn!(error = %e, "could not ack a message; it will be redelivered");
    }
}

/// Make these results durable, then act on what they say about their webhooks. False when
/// shutdown came first: the message must then be handed back, not acked.
pub async fn record(d: &Dispatcher, shutdown: &mut Shutdown, processed: Vec<Processed>) -> bool {
    // The results move into the store's call (an attempt record is the largest part of one);
    // what is acted on afterwards stays beside them.
    let (after, results): (Vec<_>, Vec<TargetResult>) = processed
        .into_iter()
        .map(|p| ((p.webhook, p.disable, Counted::of(&p.result)), p.result))
        .unzip();
    let healths = persist(d, shutdown, "record delivery outcomes", || {
        d.store.record(&results)
    })
    .await;
    let Some(healths) = healths else {
        return false;
    };
    for ((webhook, disable, counted), health) in after.into_iter().zip(healths) {
        counted.count(d);
        if let Some(reason) = &disable {
            disable_webhook(d, &webhook.id, "gone", reason).await;
        } else if let Some(h) = health {
            react_to_health(d, &webhook, h).await;
        }
    }
    true
}

/// The counter an outcome adds to once it is recorded.
enum Counted {
    RetryScheduled,
    DeadLetter,
    Nothing,
}

impl Counted {
    fn of(r: &TargetResult) -> Self {
        match &r.outcome {
            Outcome::Retry { .. } if r.attempt.is_some() => Self::RetryScheduled,
            Outcome::Dead(_) | Outcome::DeadAside(_) => Self::DeadLetter,
            _ => Self::Nothing,
        }
    }

    fn count(self, d: &Dispatcher) {
        match self {
            Self::RetryScheduled => d.metrics.retries_scheduled.inc(),
            Self::DeadLetter => d.metrics.dead_letters.inc(),
            Self::Nothing => {}
        }
    }
}

/// Open the circuit after too many failures in a row over a long enough time without a
/// success; close a half-open one on a success; disable after failing for too long.
async fn react_to_health(d: &Dispatcher, webhook: &Webhook, h: Health) {
    let success = h.consecutive_failures == 0;
    if d.circuit_threshold > 0 {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(d.circuit_cooldown).unwrap_or_default();
        match d
            .gates
            .probe_result(webhook, success, d.circuit_threshold, until)
        {
            Probe::Closed => {
                d.metrics.circuits_open.set(d.gates.open_circuits() as i64);
                tracing::info!(webhook_id = %webhook.id, "circuit closed: a half-open probe succeeded");
            }
            Probe::Reopened => {
                tracing::warn!(webhook_id = %webhook.id, until = %until, "circuit open again: the half-open probes failed");
            }
            Probe::Failed => {}
            Probe::NotAProbe => {
                // A receiver whose retries succeed while first attempts fail has successes
                // between its failures: only failures in a row over `circuit_min_failing`
                // without any success open the circuit.
                let failing_long_enough = h.failing_since.is_none_or(|since| {
                    now - since
                        >= chrono::Duration::from_std(d.circuit_min_failing).unwrap_or_default()
                });
                if !success
                    && h.consecutive_failures >= d.circuit_threshold
                    && failing_long_enough
                    && !d.gates.has_circuit(webhook)
                {
                    let open = d.gates.open_circuit(webhook, until);
                    d.metrics.circuits_open.set(open as i64);
                    tracing::warn!(webhook_id = %webhook.id, consecutive_failures = h.consecutive_failures, until = %until, "circuit open: holding deliveries to this webhook");
                }
            }
        }
    }
    if success {
        return;
    }
    if let Some(since) = h.failing_since {
        let limit = chrono::Duration::from_std(d.auto_disable_after).unwrap_or_default();
        if Utc::now() - since > limit {
            let reason = format!(
                "failing without a success since {}; disabled after {} s",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                d.auto_disable_after.as_secs()
            );
            disable_webhook(d, &webhook.id, "failing", &reason).await;
        }
    }
}

/// Disable a webhook with a reason shown in the API; enabling it again resets its health.
pub async fn disable_webhook(d: &Dispatcher, webhook_id: &str, kind: &'static str, reason: &str) {
    // Compare-and-set over what was read: a rotation, an edit or a delete saved meanwhile is
    // never undone (nor a deleted webhook written back); the disable is decided again over
    // the fresh record.
    for _ in 0..5 {
        let read = match d.store.get_webhook(webhook_id).await {
            Ok(Some(w)) => w,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(webhook_id, error = %e, "could not disable the webhook; it will be tried again on its next failure");
                return;
            }
        };
        if !read.enabled {
            return;
        }
        let mut updated = read.clone();
        updated.enabled = false;
        updated.disabled_reason = Some(reason.to_owned());
        updated.updated_at = Utc::now();
        match d.store.update_webhook(&updated, &read).await {
            Ok(version) => {
                d.metrics
                    .webhooks_auto_disabled
                    .with_label_values(&[kind])
                    .inc();
                tracing::warn!(webhook_id, reason, "webhook disabled");
                let _ = d.registry.ensure(version).await;
                return;
            }
            Err(StoreError::EditConflict { .. }) => continue,
            Err(e) => {
                tracing::warn!(webhook_id, error = %e, "could not disable the webhook");
                return;
            }
        }
    }
    tracing::warn!(webhook_id, "could not disable the webhook: it kept changing; it will be tried again on its next failure");
}
