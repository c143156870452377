//! Make each target's outcome durable, then acknowledge the message.
//!
//! The order is the whole point: a message is acked only after every target's outcome is in
//! the store. A crash before the ack means a redelivery, and the recorded outcomes make the
//! redelivery skip what was already done.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;

use kivihook_core::broker::Acker;
use kivihook_core::store::{DeadLetter, Outcome};
use kivihook_core::webhook::Webhook;
use kivihook_core::{Event, Shutdown};

use crate::send::Attempt;
use crate::Dispatcher;

/// The durable outcome of one attempt (until retries exist, a failure is a dead letter).
pub fn outcome(event: &Event, webhook: &Webhook, msg_id: &str, attempt: &Attempt) -> Outcome {
    if attempt.succeeded() {
        return Outcome::Delivered {
            webhook_id: webhook.id.clone(),
        };
    }
    Outcome::Dead(Box::new(DeadLetter {
        id: format!("dl_{}", uuid::Uuid::new_v4().simple()),
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        webhook_id: webhook.id.clone(),
        message_id: msg_id.to_owned(),
        failed_at: Utc::now(),
        attempts: 1,
        last_status: attempt.status,
        last_error: attempt.describe(),
        event: serde_json::to_value(event).unwrap_or_default(),
    }))
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

/// Record every outcome, then ack. If shutdown interrupts the recording, hand the message
/// back instead: nothing is acked that is not recorded.
pub async fn settle(
    d: &Dispatcher,
    shutdown: &mut Shutdown,
    event_id: &str,
    outcomes: Vec<Outcome>,
    acker: Box<dyn Acker>,
) {
    let recorded = persist(d, shutdown, "record delivery outcomes", || {
        d.store.record_outcomes(event_id, &outcomes)
    })
    .await;
    let settled = match recorded {
        Some(()) => acker.ack().await,
        None => acker.requeue().await,
    };
    if let Err(e) = settled {
        // The broker redelivers it; the recorded outcomes make that redelivery a no-op.
        tracing::warn!(event_id, error = %e, "could not settle the message; it will be redelivered");
    }
}
