//! What the delivery path records: jobs, attempts, outcomes, dead letters, and the state of
//! each (event, webhook) target.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Why a job exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// A scheduled retry. Runs only while the target still points at this job, so a job that
    /// was published twice (a scheduler died after publishing) runs once.
    Retry,
    /// A replay or resend asked for by a person: one attempt, whatever the target's state.
    Manual,
}

/// One attempt of one event to one webhook, waiting in the retry schedule or travelling on
/// the retries queue. It carries the envelope, so it needs nothing else to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    pub event_id: String,
    pub event_type: String,
    pub webhook_id: String,
    /// The `webhook-id` header: the same on every attempt.
    pub message_id: String,
    /// The number of the attempt this job makes (1-based).
    pub attempt: u32,
    /// The envelope JSON, exactly as first delivered.
    pub body: String,
    pub created_at: DateTime<Utc>,
    /// The dead letter this job replays. The job is written before the dead letter is
    /// removed, and the dispatcher removes it (if it is still there) before the attempt, so
    /// a replay interrupted between the two steps leaves neither a lost delivery nor a stale
    /// dead letter behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<String>,
    /// The attempt holds a slot its webhook's rate limit reserved for it when it was put
    /// off: it goes when due without taking another token (so a backlog behind a rate limit
    /// is put off once, each to its own slot, not again every second).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rate_reserved: bool,
}

pub fn new_job_id() -> String {
    prefixed_uuid(&["job_"], uuid::Uuid::new_v4())
}

/// The parts of `prefix`, then `id` in its simple form (32 lowercase hex digits), written
/// straight into one string of the right size.
pub fn prefixed_uuid(prefix: &[&str], id: uuid::Uuid) -> String {
    let mut hex = uuid::Uuid::encode_buffer();
    let len = prefix.iter().map(|p| p.len()).sum::<usize>();
    let mut out = String::with_capacity(len + uuid::fmt::Simple::LENGTH);
    prefix.iter().for_each(|p| out.push_str(p));
    out.push_str(id.simple().encode_lower(&mut hex));
    out
}

/// The state of one (event, webhook) target, kept in the event's targets hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    Delivered {
        at: DateTime<Utc>,
    },
    Retrying {
        attempt: u32,
        due: DateTime<Utc>,
        job_id: String,
    },
    Dead {
        dead_letter_id: String,
    },
}

impl TargetState {
    pub fn encode(&self) -> String {
        match self {
            Self::Delivered { at } => format!("d:{}", at.timestamp_millis()),
            Self::Retrying {
                attempt,
                due,
                job_id,
            } => format!("r:{attempt}:{}:{job_id}", due.timestamp_millis()),
            Self::Dead { dead_letter_id } => format!("x:{dead_letter_id}"),
        }
    }

    pub fn decode(s: &str) -> Option<Self> {
        let millis = |m: &str| Utc.timestamp_millis_opt(m.parse().ok()?).single();
        let (tag, rest) = s.split_once(':')?;
        match tag {
            "d" => Some(Self::Delivered { at: millis(rest)? }),
            "r" => {
                let mut parts = rest.splitn(3, ':');
                let attempt = parts.next()?.parse().ok()?;
                let due = millis(parts.next()?)?;
                let job_id = parts.next()?.to_owned();
                Some(Self::Retrying {
                    attempt,
                    due,
                    job_id,
                })
            }
            "x" => Some(Self::Dead {
                dead_letter_id: rest.to_owned(),
            }),
            _ => None,
        }
    }

    /// The name shown by `GET /v1/events/{id}`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Delivered { .. } => "delivered",
            Self::Retrying { .. } => "retrying",
            Self::Dead { .. } => "dead",
        }
    }
}

impl Job {
    /// An attempt asked for by hand (a dead letter replayed, an attempt resent), due now.
    pub fn manual(
        event_id: &str,
        event_type: &str,
        webhook_id: &str,
        message_id: &str,
        attempt: u32,
        body: String,
    ) -> Self {
        Self {
            id: new_job_id(),
            kind: JobKind::Manual,
            event_id: event_id.to_owned(),
            event_type: event_type.to_owned(),
            webhook_id: webhook_id.to_owned(),
            message_id: message_id.to_owned(),
            attempt,
            body,
            created_at: Utc::now(),
            replay_of: None,
            rate_reserved: false,
        }
    }

    /// One more attempt of a dead letter. Its id is the dead letter's, so replaying one dead
    /// letter twice (a retried request, two clients at once) schedules one job.
    pub fn replay(dl: &DeadLetter) -> Self {
        let mut job = Self::manual(
            &dl.event_id,
            &dl.event_type,
            &dl.webhook_id,
            &dl.message_id,
            dl.attempts + 1,
            serde_json::to_string(&dl.event).unwrap_or_default(),
        );
        job.id = format!("job_{}", dl.id.strip_prefix("dl_").unwrap_or(&dl.id));
        job.replay_of = Some(dl.id.clone());
        job
    }
}

/// One attempt as shown in the attempt log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct AttemptRecord {
    pub id: String,
    pub webhook_id: String,
    pub event_id: String,
    pub event_type: String,
    pub message_id: String,
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub method: String,
    pub url: String,
    /// The event envelope (what a resend sends again), empty past 64 KiB.
    pub request_body: String,
    /// The body as sent, where the webhook's templates made it differ from the envelope: at
    /// most 4 KiB of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendered_body: Option<String>,
    pub status: Option<u16>,
    pub response_headers: BTreeMap<String, String>,
    /// At most 4 KiB of the response body.
    pub response_body: String,
    pub duration_ms: u64,
    /// `timeout`, `connect`, `dns`, `tls`, `http_status`, `request`, `config`, `blocked`,
    /// `render` (the templates could not make a request for this event; nothing was sent),
    /// `internal`, or none on success.
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// What followed: `delivered`, `retry`, `dead`, `disabled`.
    pub outcome: String,
    /// Placeholders that rendered empty because the event did not have them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// A test send from the API, not part of any event's delivery.
    #[serde(default)]
    pub test: bool,
}

/// An attempt id names its webhook, so `POST /v1/attempts/{id}/resend` finds its log.
pub fn new_attempt_id(webhook_id: &str) -> String {
    prefixed_uuid(&["att_", webhook_id, "_"], uuid::Uuid::new_v4())
}

/// The webhook id inside an attempt id.
pub fn webhook_of_attempt(attempt_id: &str) -> Option<&str> {
    let rest = attempt_id.strip_prefix("att_")?;
    let (webhook, _) = rest.rsplit_once('_')?;
    (!webhook.is_empty()).then_some(webhook)
}

/// A delivery that could not be made, kept so that it can be inspected and replayed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_id: Option<String>,
    /// The envelope, for replay.
    pub event: serde_json::Value,
}

pub fn new_dead_letter_id() -> String {
    prefixed_uuid(&["dl_"], uuid::Uuid::new_v4())
}

/// Where a bulk replay stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplayStatus {
    /// Moving dead letters to the retry schedule.
    Running,
    /// Every dead letter it collected was moved (or had been replayed by someone else).
    Done,
    /// It stopped on an error; `error` says which. Dead letters not reached are still dead
    /// letters: run it again.
    Failed,
}

/// A bulk replay of one webhook's dead letters, run apart from the request that started it
/// so that a client that goes away does not stop it halfway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ReplayRun {
    /// `rpl_…`
    pub id: String,
    pub webhook_id: String,
    pub status: ReplayStatus,
    /// Dead letters collected when it started.
    pub total: u64,
    /// Moved to the retry schedule so far.
    pub replayed: u64,
    /// Gone before it reached them (replayed by another request, or trimmed).
    pub skipped: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    /// When its progress was last written; a `running` replay whose `updated_at` stops
    /// moving was cut short (its process stopped): run it again.
    pub updated_at: DateTime<Utc>,
}

/// The durable result of one (event, webhook) target.
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered,
    Retry {
        job: Job,
        due: DateTime<Utc>,
    },
    Dead(Box<DeadLetter>),
    /// A manual attempt (a resend or a replay) that failed: a new dead letter. The target's
    /// state points at it only if no automatic retry is pending: a manual attempt leaves the
    /// automatic schedule alone, so the retry it would cancel still runs.
    DeadAside(Box<DeadLetter>),
    /// Nothing to change for the target (a manual resend that failed, say).
    Untouched,
}

/// Everything to record about one target after one pass of the delivery path.
#[derive(Debug, Clone)]
pub struct TargetResult {
    pub event_id: String,
    pub webhook_id: String,
    pub outcome: Outcome,
    /// `None` when no request was sent (deferred by the circuit breaker or a cap).
    pub attempt: Option<AttemptRecord>,
    /// When ingest received the event, when known (a first attempt): says which dedup
    /// bucket holds its marker, where otherwise the window's buckets are searched.
    pub received_at: Option<DateTime<Utc>>,
}

/// A webhook's failure streak, as the store saw it after recording an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub consecutive_failures: u64,
    pub failing_since: Option<DateTime<Utc>>,
}

/// Per-webhook statistics (`GET /v1/stats`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, ToSchema)]
pub struct WebhookStats {
    pub successes: u64,
    pub failures: u64,
    pub retries: u64,
    pub last_status: Option<u16>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub consecutive_failures: u64,
    pub failing_since: Option<DateTime<Utc>>,
    /// Successes over attempts in the last 24 hours; `None` without attempts.
    pub success_rate_24h: Option<f64>,
    pub attempts_24h: u64,
}

/// Installation-wide outcomes of delivery attempts in one minute (test sends excluded): how
/// many were delivered, how many failed and were scheduled again, and how many failed for
/// the last time and became dead letters.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct MinuteCounts {
    /// Unix time / 60.
    pub minute: i64,
    pub delivered: u64,
    pub retrying: u64,
    pub dead: u64,
}

impl MinuteCounts {
    /// The counter field an outcome adds to; `None` for targets that made no attempt.
    pub fn field_of(outcome: &Outcome) -> Option<&'static str> {
        match outcome {
            Outcome::Delivered => Some("delivered"),
            Outcome::Retry { .. } => Some("retrying"),
            Outcome::Dead(_) | Outcome::DeadAside(_) => Some("dead"),
            Outcome::Untouched => None,
        }
    }

    pub fn add(&mut self, field: &str, n: u64) {
        match field {
            "delivered" => self.delivered += n,
            "retrying" => self.retrying += n,
            "dead" => self.dead += n,
            _ => {}
        }
    }
}

/// The few counters of a webhook that installation-wide figures add up: cheap enough to read
/// for every webhook at once, where `WebhookStats` reads a day of hourly buckets as well.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookCounters {
    pub successes: u64,
    pub failures: u64,
    pub retries: u64,
    pub consecutive_failures: u64,
}

impl From<&WebhookStats> for WebhookCounters {
    fn from(s: &WebhookStats) -> Self {
        Self {
            successes: s.successes,
            failures: s.failures,
            retries: s.retries,
            consecutive_failures: s.consecutive_failures,
        }
    }
}

/// Installation-wide counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq, ToSchema)]
pub struct TotalStats {
    pub successes: u64,
    pub failures: u64,
    pub retries: u64,
    pub dead_letters: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_states_round_trip() {
        let at = Utc.timestamp_millis_opt(1_764_000_000_123).unwrap();
        for s in [
            TargetState::Delivered { at },
            TargetState::Retrying {
                attempt: 3,
                due: at,
                job_id: "job_abc".into(),
            },
            TargetState::Dead {
                dead_letter_id: "dl_x".into(),
            },
        ] {
            assert_eq!(TargetState::decode(&s.encode()), Some(s));
        }
        assert_eq!(TargetState::decode("garbage"), None);
    }

    #[test]
    fn attempt_ids_name_their_webhook() {
        let id = new_attempt_id("wh_0123abcd");
        assert_eq!(webhook_of_attempt(&id), Some("wh_0123abcd"));
        assert_eq!(webhook_of_attempt("att_"), None);
        assert_eq!(webhook_of_attempt("nope"), None);
    }

    #[test]
    fn ids_are_a_prefix_and_32_lowercase_hex_digits() {
        let hex = |s: &str| {
            s.len() == 32
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let att = new_attempt_id("wh_0123abcd");
        assert!(hex(att.strip_prefix("att_wh_0123abcd_").unwrap()), "{att}");
        for (id, prefix) in [(new_job_id(), "job_"), (new_dead_letter_id(), "dl_")] {
            assert!(hex(id.strip_prefix(prefix).unwrap()), "{id}");
        }
        let id = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(prefixed_uuid(&["x_"], id), format!("x_{}", id.simple()));
        assert_ne!(new_job_id(), new_job_id());
    }
}
