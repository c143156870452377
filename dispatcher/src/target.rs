//! A target: one event on its way to one webhook, at one attempt number.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use kivihook_core::delivery::{new_job_id, Job, JobKind};
use kivihook_core::webhook::Webhook;

/// Everything one attempt needs.
#[derive(Debug, Clone)]
pub struct Target {
    pub webhook: Arc<Webhook>,
    pub event_id: String,
    pub event_type: String,
    /// The `webhook-id` header: the same on every attempt.
    pub message_id: String,
    pub attempt: u32,
    pub kind: JobKind,
    /// The envelope, shared by every target of one event without copying.
    pub body: Bytes,
    pub received_at: Option<DateTime<Utc>>,
    /// A slot of the webhook's rate limit is reserved for this attempt (`Job::rate_reserved`).
    pub rate_reserved: bool,
}

impl Target {
    /// The job that makes attempt `attempt` of this target later.
    pub fn job(&self, attempt: u32) -> Job {
        Job {
            id: new_job_id(),
            kind: self.kind,
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            webhook_id: self.webhook.id.clone(),
            message_id: self.message_id.clone(),
            attempt,
            body: String::from_utf8_lossy(&self.body).into_owned(),
            created_at: Utc::now(),
            replay_of: None,
            rate_reserved: false,
        }
    }
}
