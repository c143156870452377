//! State access behind a trait: dedup keys, the webhook registry, delivery outcomes.
//!
//! Redis (`redis.rs`) is the production backend; the embedded dev mode supplies an
//! in-memory one behind the same trait.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::webhook::Webhook;

pub mod redis;

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

/// A delivery that could not be made, kept so that it can be inspected and replayed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub webhook_id: String,
    /// The `webhook-id` header the receiver saw.
    pub message_id: String,
    pub failed_at: DateTime<Utc>,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: String,
    /// The envelope, for replay.
    pub event: serde_json::Value,
}

/// The durable result of one (event, webhook) target.
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered { webhook_id: String },
    Dead(Box<DeadLetter>),
}

/// The store, as the roles see it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Readiness: is the store answering?
    async fn ping(&self) -> Result<(), StoreError>;

    /// Claim event ids before publishing them (one round trip for a whole batch), and read
    /// the registry version to stamp on the messages.
    async fn claim_events(&self, ids: &[String]) -> Result<(Vec<Claim>, u64), StoreError>;
    /// Mark claimed ids accepted for the dedup window, once the broker confirmed them.
    async fn confirm_events(&self, ids: &[String], window: Duration) -> Result<(), StoreError>;
    /// Release claims whose publish failed, so a retry of the request is not a "duplicate".
    async fn release_events(&self, ids: &[String]) -> Result<(), StoreError>;

    async fn registry_version(&self) -> Result<u64, StoreError>;
    /// Every webhook, with the registry version they belong to.
    async fn list_webhooks(&self) -> Result<(u64, Vec<Webhook>), StoreError>;
    async fn get_webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError>;
    /// Create or replace; returns the new registry version.
    async fn put_webhook(&self, webhook: &Webhook) -> Result<u64, StoreError>;
    /// Whether it existed.
    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError>;

    /// For each webhook id, whether this event was already delivered to it.
    async fn delivered_targets(
        &self,
        event_id: &str,
        webhook_ids: &[&str],
    ) -> Result<Vec<bool>, StoreError>;
    /// Make every target's outcome durable, all at once.
    async fn record_outcomes(&self, event_id: &str, outcomes: &[Outcome])
        -> Result<(), StoreError>;

    /// Dead letters, newest first.
    async fn list_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError>;
}
