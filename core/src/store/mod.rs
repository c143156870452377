//! State access behind a trait: dedup keys, the webhook registry, target states, the retry
//! schedule, attempt logs, dead letters and statistics.
//!
//! Redis (`redis.rs`) is the production backend; the embedded dev mode supplies an
//! in-memory one behind the same trait.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::delivery::{
    AttemptRecord, DeadLetter, Health, Job, MinuteCounts, TargetResult, TargetState, WebhookStats,
};
use crate::webhook::Webhook;

mod batch;
pub mod marker;
pub mod memory;
pub mod redis;
mod redis_conn;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

/// What went wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// The state of an event id at ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Nobody had it: this request owns it and must publish it.
    New,
    /// Another request is publishing it right now.
    InProgress,
    /// Accepted before, within the dedup window.
    Duplicate,
}

/// What ingest remembers of an accepted event (kept as long as its dedup key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventInfo {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub clinic_id: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// The retry schedule at a glance.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScheduleStatus {
    /// Jobs waiting for their time.
    pub depth: u64,
    /// Jobs claimed by a scheduler and not yet published.
    pub leased: u64,
    /// How long the oldest due job has been waiting past its time.
    pub lag: Duration,
    pub dead_letters: u64,
}

/// The store, as the roles see it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Readiness: is the store answering?
    async fn ping(&self) -> Result<(), StoreError>;

    // --- ingest ---------------------------------------------------------------------

    /// Claim event ids before publishing them (one round trip for a whole batch), and read
    /// the registry version to stamp on the messages.
    async fn claim_events(&self, ids: &[String]) -> Result<(Vec<Claim>, u64), StoreError>;
    /// Mark claimed events accepted for the dedup window, once the broker confirmed them.
    async fn confirm_events(
        &self,
        events: &[EventInfo],
        window: Duration,
    ) -> Result<(), StoreError>;
    /// Release claims whose publish failed, so a retry of the request is not a "duplicate".
    async fn release_events(&self, ids: &[String]) -> Result<(), StoreError>;
    /// What was accepted under this id, within the dedup window.
    async fn event_info(&self, id: &str) -> Result<Option<EventInfo>, StoreError>;

    // --- the webhook registry -----------------------------------------------------------

    async fn registry_version(&self) -> Result<u64, StoreError>;
    /// Every webhook, with the registry version they belong to.
    async fn list_webhooks(&self) -> Result<(u64, Vec<Webhook>), StoreError>;
    async fn get_webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError>;
    /// Create or replace; returns the new registry version.
    async fn put_webhook(&self, webhook: &Webhook) -> Result<u64, StoreError>;
    /// Whether it existed.
    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError>;

    // --- delivery -------------------------------------------------------------------------

    /// For each webhook id, the target's state for this event (`None`: not settled yet).
    async fn target_states(
        &self,
        event_id: &str,
        webhook_ids: &[&str],
    ) -> Result<Vec<Option<TargetState>>, StoreError>;
    /// Every settled target of an event.
    async fn all_target_states(
        &self,
        event_id: &str,
    ) -> Result<HashMap<String, TargetState>, StoreError>;
    /// Make every result durable in one round trip: each outcome (retry job, dead letter)
    /// before the target state that points at it, attempt logs, statistics. Returns each
    /// result's webhook health after its attempt (`None` where no request was sent).
    async fn record(&self, results: &[TargetResult]) -> Result<Vec<Option<Health>>, StoreError>;

    // --- the retry schedule -------------------------------------------------------------

    /// Put a job in the schedule (replays and resends).
    async fn schedule_job(&self, job: &Job, due: DateTime<Utc>) -> Result<(), StoreError>;
    /// Atomically move up to `limit` due jobs from the schedule to a lease of `lease`.
    async fn claim_due_jobs(&self, limit: usize, lease: Duration) -> Result<Vec<Job>, StoreError>;
    /// Forget jobs that were published.
    async fn complete_jobs(&self, ids: &[String]) -> Result<(), StoreError>;
    /// Put claimed jobs back in the schedule, due now (their publish failed).
    async fn release_jobs(&self, ids: &[String]) -> Result<(), StoreError>;
    /// Return every job whose lease expired to the schedule; how many.
    async fn sweep_leases(&self) -> Result<u64, StoreError>;
    async fn schedule_status(&self) -> Result<ScheduleStatus, StoreError>;

    // --- logs, dead letters, statistics -------------------------------------------------

    /// A webhook's attempts, newest first.
    async fn list_attempts(
        &self,
        webhook_id: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Page<AttemptRecord>, StoreError>;
    async fn find_attempt(&self, attempt_id: &str) -> Result<Option<AttemptRecord>, StoreError>;
    /// Append a test-send's attempt to the log without touching statistics.
    async fn log_attempt(&self, attempt: &AttemptRecord) -> Result<(), StoreError>;

    /// Dead letters, newest first, optionally of one webhook.
    async fn list_dead_letters(
        &self,
        webhook_id: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<Page<DeadLetter>, StoreError>;
    /// Put a dead letter (back) in the queue: one whose replay could not be scheduled.
    async fn put_dead_letter(&self, dl: &DeadLetter) -> Result<(), StoreError>;
    /// Remove a dead letter and return it (for replay).
    async fn take_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError>;

    async fn webhook_stats(&self, webhook_ids: &[&str]) -> Result<Vec<WebhookStats>, StoreError>;
    /// Installation-wide attempt outcomes per minute, oldest first, for every minute from
    /// `first` to `last` inclusive (Unix time / 60; at most a day is kept).
    async fn minute_counts(&self, first: i64, last: i64) -> Result<Vec<MinuteCounts>, StoreError>;
    /// Forget a webhook's failure streak (it was enabled again).
    async fn reset_health(&self, webhook_id: &str) -> Result<(), StoreError>;
    /// Take one token from a webhook's shared bucket (`rate` per second, bursts of `burst`);
    /// `Some(wait)` when none is left.
    async fn take_token(
        &self,
        webhook_id: &str,
        rate: f64,
        burst: u32,
    ) -> Result<Option<Duration>, StoreError>;
}
