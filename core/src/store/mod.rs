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
    AttemptRecord, DeadLetter, Health, Job, MinuteCounts, ReplayRun, TargetResult, TargetState,
    WebhookCounters, WebhookStats,
};
use crate::webhook::Webhook;

mod batch;
pub mod key_check;
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
    /// Another webhook already has this name: names are unique, since `apply`, the import
    /// and a declared file match webhooks by name. Nothing was written.
    #[error("a webhook named `{name}` already exists ({id}); webhook names are unique")]
    NameTaken {
        name: String,
        /// The webhook that holds the name.
        id: String,
    },
    /// The webhook changed (or was deleted) since it was read: nothing was written. Read it
    /// again and redo the edit, or answer `409 edit_conflict`.
    #[error("webhook {id} changed since it was read; nothing was written")]
    EditConflict { id: String },
}

/// A stored webhook record that cannot be used as it is: it does not parse (left out of the
/// registry), or a secret in it does not open with `KIVIHOOK_SECRET_KEY` (kept, disabled, so
/// that its deliveries become dead letters while every other webhook keeps delivering).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvalidWebhook {
    pub id: String,
    /// Why, for people.
    pub reason: String,
}

/// `updated` with an `updated_at` later than `read`'s, so that a compare-and-set that
/// follows it sees a change even when two edits land within one clock tick.
pub(crate) fn stamped_after(updated: &Webhook, read: &Webhook) -> Webhook {
    let mut w = updated.clone();
    if w.updated_at <= read.updated_at {
        w.updated_at = read.updated_at + chrono::Duration::microseconds(1);
    }
    w
}

/// The state of an event id at ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Nobody had it: this request owns it and must publish it.
    New,
    /// This request owns it and must publish it, but an earlier claim of it was released
    /// (its publish failed, perhaps after the message reached the broker) or taken over (its
    /// request died): another message of the event may exist, so the dispatcher checks its
    /// targets' states before sending.
    Reclaimed,
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
    /// The oldest due job's wait past its time, counting jobs a scheduler claimed and whose
    /// lease ran out without the job being published: what a stalled or absent scheduler
    /// leaves behind (`kivihook_retry_oldest_due_age_seconds`).
    pub oldest_due_age: Duration,
    pub dead_letters: u64,
}

/// Changes kept in the registry's change log; a cache further behind than this reloads
/// everything. A dispatcher reads the log every second, so this covers bursts of thousands of
/// changes a second (an `apply` of 10,000 definitions) and a cache that missed a few polls.
pub const CHANGE_LOG_CAP: usize = 10_000;

/// What changed in the webhook registry after the version a cache holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookChanges {
    /// The registry version now.
    pub version: u64,
    /// Webhooks created, changed or deleted after the cache's version, each once, in the
    /// order of their first change.
    pub ids: Vec<String>,
}

/// What a cache at `since` must apply, decided from the change log as read in one atomic
/// step: the registry `version`, the log's `floor` and its entries from `since` on
/// (`(version, webhook id)`, oldest first).
///
/// Versions come from the store's clock (microseconds, or one more than the last when the
/// clock has not moved past it), so a registry that lost writes (a Redis restarted from an
/// older file, a failover to a replica that lagged) never hands out a version it handed out
/// before: the versions written after such a loss are newer than any the lost writes had.
/// The log therefore proves it holds every change after `since` only when `since` is its
/// floor (the version when logging began, or the newest entry trimmed off) or when it
/// still holds the entry written at exactly `since`. Anything else (a version that went
/// back, a log that no longer reaches `since`, or a history that is not the one the cache
/// followed) is `None`: reload everything.
///
/// Every change writes its entry and the version together, so the newest entry is always at
/// the current version. A version past the newest entry was moved by a writer that keeps no
/// log (a role of an older release, during a rolling upgrade): the log cannot say what that
/// writer changed, so that is `None` too.
pub fn changes_from_log(
    since: u64,
    version: u64,
    floor: Option<u64>,
    entries: &[(u64, &str)],
) -> Option<WebhookChanges> {
    if version < since {
        return None;
    }
    let proven = match floor {
        // Nothing was ever logged: only a cache at the current version is current.
        None => version == since && entries.is_empty(),
        Some(f) => f == since || entries.first().is_some_and(|(v, _)| *v == since),
    };
    let explained = entries.last().map_or(since, |(v, _)| *v) == version;
    if !proven || !explained {
        return None;
    }
    let mut seen = std::collections::HashSet::new();
    let ids = entries
        .iter()
        .filter(|(v, _)| *v > since)
        .filter(|(_, id)| seen.insert(*id))
        .map(|(_, id)| (*id).to_owned())
        .collect();
    Some(WebhookChanges { version, ids })
}

/// The store, as the roles see it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Readiness: is the store answering?
    async fn ping(&self) -> Result<(), StoreError>;

    // --- ingest ---------------------------------------------------------------------

    /// Claim event ids before publishing them (one round trip for a whole batch), and read
    /// the registry version to stamp on the messages.
    /// `at` is when the events were received (every event of a request shares it).
    async fn claim_events(
        &self,
        ids: &[String],
        token: &str,
        at: DateTime<Utc>,
    ) -> Result<(Vec<Claim>, u64), StoreError>;
    /// Mark claimed events accepted for the dedup window, once the broker confirmed them.
    async fn confirm_events(
        &self,
        events: &[EventInfo],
        window: Duration,
    ) -> Result<(), StoreError>;
    /// Release claims whose publish failed, so a retry of the request is not a "duplicate".
    /// `at` is the time their claim was made with.
    async fn release_events(
        &self,
        ids: &[String],
        token: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// What was accepted under this id, within the dedup window.
    async fn event_info(&self, id: &str) -> Result<Option<EventInfo>, StoreError>;

    // --- the webhook registry -----------------------------------------------------------

    async fn registry_version(&self) -> Result<u64, StoreError>;
    /// Every webhook, with the registry version they belong to.
    async fn list_webhooks(&self) -> Result<(u64, Vec<Webhook>), StoreError>;
    async fn get_webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError>;
    /// Create or replace; returns the new registry version. Names are unique: a webhook
    /// that takes a name another webhook holds (created with it, or renamed to it) is
    /// `StoreError::NameTaken` and nothing is written. A write that keeps the webhook's name
    /// is never refused, so webhooks that shared a name before names were checked can still
    /// be edited; renaming or deleting a webhook frees its name.
    async fn put_webhook(&self, webhook: &Webhook) -> Result<u64, StoreError>;
    /// The webhook other than `except` that holds `name`, as `put_webhook` would find it when
    /// a webhook takes that name; writes nothing, so that a dry run can answer `name_taken`
    /// exactly when the real write would.
    async fn name_holder(
        &self,
        name: &str,
        except: Option<&str>,
    ) -> Result<Option<String>, StoreError>;
    /// Replace `read` with `updated` only if the stored webhook is still the one read (its
    /// `updated_at` unchanged, and not deleted): compare-and-set, so that two edits made from
    /// the same read cannot undo each other. A lost race is `StoreError::EditConflict` and
    /// nothing is written. `updated.updated_at` must be later than `read.updated_at`.
    async fn update_webhook(&self, updated: &Webhook, read: &Webhook) -> Result<u64, StoreError>;
    /// Whether it existed.
    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError>;
    /// The records the last registry reads found unusable (see `InvalidWebhook`); a
    /// listing or a read of changes never fails for them.
    fn invalid_webhooks(&self) -> Vec<InvalidWebhook> {
        Vec::new()
    }
    /// Which webhooks changed after `version`, so that a cache reads only those; `None`
    /// when the change log cannot prove it holds every change since (see
    /// `changes_from_log`): the cache must reload everything.
    async fn webhook_changes_since(
        &self,
        version: u64,
    ) -> Result<Option<WebhookChanges>, StoreError>;
    /// These webhooks, in the order asked; `None` for an id that does not exist.
    async fn get_webhooks(&self, ids: &[&str]) -> Result<Vec<Option<Webhook>>, StoreError>;

    // --- delivery -------------------------------------------------------------------------

    /// For each webhook id, the target's state for this event (`None`: not settled yet).
    /// `received_at`, when known, is when ingest received the event (it narrows the lookup).
    async fn target_states(
        &self,
        event_id: &str,
        webhook_ids: &[&str],
        received_at: Option<DateTime<Utc>>,
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
    /// Find retry jobs that are stranded: a body in the schedule's job table that is neither
    /// scheduled nor leased, so no scheduler would ever run it. Those found stranded by the
    /// scan before (`suspects`, a scan or more ago: long past the instant between a job's
    /// body and its place being written) are scheduled now; returns the ones found stranded
    /// this time and not yet rescued (the next scan's suspects), and how many were rescued.
    async fn rescue_stranded_jobs(
        &self,
        suspects: &std::collections::HashSet<String>,
    ) -> Result<(std::collections::HashSet<String>, u64), StoreError>;
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
    /// Move a dead letter to a manual job due now (`Job::replay`): the job is written
    /// (durably) before the dead letter is removed, so an interruption between the two leaves
    /// both, never neither; the dispatcher removes a replayed dead letter that is still there
    /// before it makes the attempt. `None` if there is no such dead letter.
    async fn replay_dead_letter(&self, id: &str) -> Result<Option<Job>, StoreError>;
    /// Write a bulk replay's progress (kept for a day).
    async fn put_replay_run(&self, run: &ReplayRun) -> Result<(), StoreError>;
    async fn get_replay_run(&self, id: &str) -> Result<Option<ReplayRun>, StoreError>;

    async fn webhook_stats(&self, webhook_ids: &[&str]) -> Result<Vec<WebhookStats>, StoreError>;
    /// The counters of every webhook asked, for installation-wide totals; a store that can
    /// read them more cheaply than whole statistics does.
    async fn webhook_counters(
        &self,
        webhook_ids: &[&str],
    ) -> Result<Vec<WebhookCounters>, StoreError> {
        Ok(self
            .webhook_stats(webhook_ids)
            .await?
            .iter()
            .map(WebhookCounters::from)
            .collect())
    }
    /// Installation-wide attempt outcomes per minute, oldest first, for every minute from
    /// `first` to `last` inclusive (Unix time / 60; at most a day is kept).
    async fn minute_counts(&self, first: i64, last: i64) -> Result<Vec<MinuteCounts>, StoreError>;
    /// Forget a webhook's failure streak (it was enabled again).
    async fn reset_health(&self, webhook_id: &str) -> Result<(), StoreError>;
    /// Take one token from a webhook's shared bucket (`rate` per second, bursts of `burst`).
    /// The bucket reserves: with none left the token is taken anyway (the count goes below
    /// zero) and `Some(wait)` says when it refills; that slot belongs to the caller, who goes
    /// then without taking another, so a backlog costs one write per request, not one per
    /// request per second.
    async fn take_token(
        &self,
        webhook_id: &str,
        rate: f64,
        burst: u32,
    ) -> Result<Option<Duration>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_at_the_floor_or_at_a_logged_version_gets_only_later_changes() {
        let log = [(7, "wh_a"), (9, "wh_b"), (12, "wh_a")];
        let at_entry = changes_from_log(7, 12, Some(3), &log).unwrap();
        assert_eq!(at_entry.version, 12);
        assert_eq!(at_entry.ids, vec!["wh_b", "wh_a"], "each id once");
        let at_floor = changes_from_log(3, 5, Some(3), &[(5, "wh_c")]).unwrap();
        assert_eq!(at_floor.ids, vec!["wh_c"]);
        let current = changes_from_log(12, 12, Some(3), &[(12, "wh_a")]).unwrap();
        assert!(current.ids.is_empty());
    }

    #[test]
    fn a_log_that_cannot_prove_continuity_asks_for_a_full_reload() {
        // The version went back: the store lost writes the cache has seen.
        assert_eq!(changes_from_log(12, 10, Some(3), &[]), None);
        // Trimmed past the cache's version.
        assert_eq!(changes_from_log(5, 12, Some(8), &[(9, "wh_a")]), None);
        // Moved on past the cache's version, but not from it: the entry at 7 is not there,
        // so these changes were written after a loss, on another history.
        assert_eq!(changes_from_log(7, 20, Some(3), &[(15, "wh_a")]), None);
        // The version moved without an entry: a writer that keeps no log changed something.
        assert_eq!(
            changes_from_log(7, 13, Some(3), &[(7, "wh_a"), (12, "wh_b")]),
            None
        );
        assert_eq!(changes_from_log(3, 4, Some(3), &[]), None);
        // Nothing logged yet: only a cache at the current version is current.
        assert_eq!(changes_from_log(4, 6, None, &[]), None);
        assert_eq!(
            changes_from_log(6, 6, None, &[]),
            Some(WebhookChanges {
                version: 6,
                ids: Vec::new()
            })
        );
    }
}
