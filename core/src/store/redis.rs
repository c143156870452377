//! Redis backend: a few multiplexed connections that redial by themselves, pipelines
//! for everything on the per-event path, and Lua where several keys must change together.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};

use super::redis_conn::Conn;
use super::{changes_from_log, WebhookChanges, CHANGE_LOG_CAP};
use super::{Claim, EventInfo, Page, ScheduleStatus, Store, StoreError};
use crate::crypto::{is_sealed, SecretBox};
use crate::delivery::WebhookCounters;
use crate::delivery::{
    webhook_of_attempt, AttemptRecord, DeadLetter, Health, Job, MinuteCounts, Outcome,
    TargetResult, TargetState, WebhookStats,
};
use crate::keys::Keys;
use crate::webhook::Webhook;

/// Multiplexed connections in the pool. Each pipelines every request given to it; a few
/// spread the parsing of large replies over threads. Each redials by itself when it breaks.
const POOL_SIZE: usize = 4;
/// How long a claim lives while its publish is in flight; a crash in that window frees
/// the id again after this long.
const CLAIM_TTL_SECS: u64 = 60;
/// How long target states are kept: longer than any retry schedule can run.
const TARGETS_TTL_SECS: i64 = 14 * 86_400;
/// Dead letters kept per installation (oldest dropped first).
const DEAD_LETTER_CAP: isize = 100_000;
/// Entries kept in each webhook's attempt log.
const ATTEMPT_LOG_CAP: usize = 100;
const HOUR_BUCKET_TTL_SECS: u64 = 25 * 3600;
/// Installation-wide minute counters cover the overview's "today" and "last 24 hours".
const MINUTE_BUCKET_TTL_SECS: u64 = 25 * 3600;

/// Move due jobs to a lease; return `id, json` pairs.
const CLAIM_SCRIPT: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
if #due == 0 then return {} end
local lease_until = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], lease_until, id)
end
local jobs = redis.call('HMGET', KEYS[3], unpack(due))
local out = {}
for i, id in ipairs(due) do
  out[#out + 1] = id
  out[#out + 1] = jobs[i] or ''
end
return out
";

/// Return expired leases to the schedule, due now.
const SWEEP_SCRIPT: &str = r"
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], ARGV[1], id)
end
return #expired
";

/// Record one attempt in a webhook's counters, hourly bucket and log; return its streak.
const ATTEMPT_SCRIPT: &str = r"
if ARGV[1] == '1' then
  redis.call('HINCRBY', KEYS[1], 'successes', 1)
  redis.call('HSET', KEYS[1], 'consecutive_failures', 0)
  redis.call('HDEL', KEYS[1], 'failing_since')
  redis.call('HINCRBY', KEYS[2], 's', 1)
else
  redis.call('HINCRBY', KEYS[1], 'failures', 1)
  redis.call('HINCRBY', KEYS[1], 'consecutive_failures', 1)
  redis.call('HSETNX', KEYS[1], 'failing_since', ARGV[3])
  redis.call('HINCRBY', KEYS[2], 'f', 1)
end
if ARGV[6] == '1' then redis.call('HINCRBY', KEYS[1], 'retries', 1) end
redis.call('HSET', KEYS[1], 'last_status', ARGV[2], 'last_attempt_at', ARGV[3])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[7]))
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
return {tonumber(redis.call('HGET', KEYS[1], 'consecutive_failures')), redis.call('HGET', KEYS[1], 'failing_since') or ''}
";

/// A token bucket on the server's clock, shared by every dispatcher; returns the wait in ms.
const TOKEN_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], 60000 + math.ceil(burst * 1000 / rate))
return wait
";

/// The production store.
pub struct RedisStore {
    keys: Keys,
    pool: Vec<Conn>,
    next: AtomicUsize,
    claim: redis::Script,
    sweep: redis::Script,
    attempt: redis::Script,
    token: redis::Script,
    sealer: Option<SecretBox>,
    /// Installation-wide minute counters not yet written: (minute, outcome) → count. The
    /// delivery path only adds here; a task writes them once a second (`flush_minutes`).
    minutes: Arc<Mutex<PendingMinutes>>,
}

type PendingMinutes = HashMap<(i64, &'static str), u64>;

/// How often the minute counters are written to Redis.
const MINUTE_FLUSH_EVERY: Duration = Duration::from_secs(1);

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn millis(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

fn parse_all<T: serde::de::DeserializeOwned>(raw: impl IntoIterator<Item = String>) -> Vec<T> {
    raw.into_iter()
        .filter_map(|json| match serde_json::from_str(&json) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %e, "skipping a corrupt stored record");
                None
            }
        })
        .collect()
}

impl RedisStore {
    /// Connect the pool. Fails if Redis cannot be reached now; the connections reconnect by
    /// themselves after that.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        Self::connect_counted(url, prefix, None).await
    }

    /// Like `connect`, counting every redial in `redials`.
    pub async fn connect_counted(
        url: &str,
        prefix: &str,
        redials: Option<prometheus::IntCounter>,
    ) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let mut pool = Vec::with_capacity(POOL_SIZE);
        for _ in 0..POOL_SIZE {
            pool.push(
                Conn::open(client.clone(), redials.clone())
                    .await
                    .map_err(unavailable)?,
            );
        }
        let store = Self {
            keys: Keys::new(prefix),
            pool,
            next: AtomicUsize::new(0),
            claim: redis::Script::new(CLAIM_SCRIPT),
            sweep: redis::Script::new(SWEEP_SCRIPT),
            attempt: redis::Script::new(ATTEMPT_SCRIPT),
            token: redis::Script::new(TOKEN_SCRIPT),
            sealer: None,
            minutes: Arc::default(),
        };
        tokio::spawn(flush_minutes(
            Arc::downgrade(&store.minutes),
            store.conn(),
            store.keys.clone(),
        ));
        Ok(store)
    }

    /// Seal signing secrets with this key before they are stored, and open them on read.
    pub fn with_secret_key(mut self, key: Option<SecretBox>) -> Self {
        self.sealer = key;
        self
    }

    /// Every secret a webhook holds: its signing secrets and its endpoint credential.
    fn secrets_of(w: &mut Webhook) -> Vec<&mut String> {
        let mut out = vec![&mut w.secret];
        out.extend(w.previous_secrets.iter_mut().map(|p| &mut p.secret));
        out.extend(w.auth.credential_mut());
        out
    }

    fn seal(&self, webhook: &Webhook) -> Webhook {
        let mut stored = webhook.clone();
        if let Some(b) = &self.sealer {
            for s in Self::secrets_of(&mut stored) {
                *s = b.seal(s);
            }
        }
        stored
    }

    fn open(&self, mut stored: Webhook) -> Result<Webhook, StoreError> {
        for s in Self::secrets_of(&mut stored) {
            if is_sealed(s) {
                let b = self.sealer.as_ref().ok_or_else(|| {
                    corrupt("stored secrets are encrypted, and KIVIHOOK_SECRET_KEY is not set")
                })?;
                *s = b.open(s).map_err(corrupt)?;
            }
        }
        Ok(stored)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn conn(&self) -> Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        self.pool[i].clone()
    }

    /// Warn at start about settings under which Redis may lose KiviHook's state.
    pub async fn check_durability(&self) {
        let mut c = self.conn();
        let get = |name: &'static str| redis::cmd("CONFIG").arg("GET").arg(name).clone();
        let aof: Result<Vec<String>, _> = get("appendonly").query_async(&mut c).await;
        let policy: Result<Vec<String>, _> = get("maxmemory-policy").query_async(&mut c).await;
        if let Ok(v) = aof {
            if v.get(1).is_some_and(|s| s != "yes") {
                tracing::warn!("Redis has appendonly off: a Redis restart loses dedup keys, retry jobs and the registry; production needs AOF");
            }
        }
        if let Ok(v) = policy {
            if let Some(p) = v.get(1).filter(|s| *s != "noeviction") {
                tracing::warn!(policy = %p, "Redis may evict keys under memory pressure; production needs maxmemory-policy noeviction");
            }
        }
    }

    /// Keep the dead-letter list bounded; runs only after dead letters were written.
    async fn trim_dead_letters(&self) {
        let mut c = self.conn();
        let count: Result<isize, _> = redis::cmd("ZCARD")
            .arg(self.keys.dead_letters_index())
            .query_async(&mut c)
            .await;
        let Ok(n) = count else { return };
        if n <= DEAD_LETTER_CAP {
            return;
        }
        let old: Result<Vec<String>, _> = redis::cmd("ZRANGE")
            .arg(self.keys.dead_letters_index())
            .arg(0)
            .arg(n - DEAD_LETTER_CAP - 1)
            .query_async(&mut c)
            .await;
        if let Ok(old) = old {
            for id in old {
                let _ = self.take_dead_letter(&id).await;
            }
        }
    }

    fn add_attempt(&self, pipe: &mut redis::Pipeline, a: &AttemptRecord, ok: bool) {
        let json = serde_json::to_string(a).unwrap_or_default();
        let hour = a.at.timestamp() / 3600;
        let status = a.status.map(|s| s.to_string()).unwrap_or_default();
        pipe.cmd("EVALSHA")
            .arg(self.attempt.get_hash())
            .arg(3)
            .arg(self.keys.webhook_stats(&a.webhook_id))
            .arg(self.keys.webhook_hour(&a.webhook_id, hour))
            .arg(self.keys.attempts(&a.webhook_id))
            .arg(if ok { "1" } else { "0" })
            .arg(status)
            .arg(a.at.timestamp_millis())
            .arg(json)
            .arg(ATTEMPT_LOG_CAP)
            .arg(if a.attempt > 1 { "1" } else { "0" })
            .arg(HOUR_BUCKET_TTL_SECS);
    }

    fn record_pipeline(&self, results: &[TargetResult]) -> (redis::Pipeline, Vec<bool>, bool) {
        let mut pipe = redis::pipe();
        let mut has_attempt = Vec::with_capacity(results.len());
        let mut any_dead = false;
        let now = Utc::now();
        for r in results {
            let targets = self.keys.targets(&r.event_id);
            // The outcome first, then the state that points at it: if the connection drops
            // halfway, a state never points at something that was not written.
            let state = match &r.outcome {
                Outcome::Delivered => Some(TargetState::Delivered { at: now }),
                Outcome::Retry { job, due } => {
                    let json = serde_json::to_string(job).unwrap_or_default();
                    pipe.cmd("HSET")
                        .arg(self.keys.retry_jobs())
                        .arg(&job.id)
                        .arg(json)
                        .ignore();
                    pipe.cmd("ZADD")
                        .arg(self.keys.retry_schedule())
                        .arg(due.timestamp_millis())
                        .arg(&job.id)
                        .ignore();
                    Some(TargetState::Retrying {
                        attempt: job.attempt,
                        due: *due,
                        job_id: job.id.clone(),
                    })
                }
                Outcome::Dead(dl) => {
                    any_dead = true;
                    self.add_dead_letter(&mut pipe, dl);
                    Some(TargetState::Dead {
                        dead_letter_id: dl.id.clone(),
                    })
                }
                Outcome::Untouched => None,
            };
            if let Some(a) = &r.attempt {
                let ok = matches!(r.outcome, Outcome::Delivered);
                self.add_attempt(&mut pipe, a, ok);
            }
            has_attempt.push(r.attempt.is_some());
            if let Some(state) = state {
                pipe.cmd("HSET")
                    .arg(&targets)
                    .arg(&r.webhook_id)
                    .arg(state.encode())
                    .ignore();
                pipe.cmd("EXPIRE")
                    .arg(&targets)
                    .arg(TARGETS_TTL_SECS)
                    .ignore();
            }
        }
        (pipe, has_attempt, any_dead)
    }

    /// The entry and both of its indexes.
    fn add_dead_letter(&self, pipe: &mut redis::Pipeline, dl: &DeadLetter) {
        let json = serde_json::to_string(dl).unwrap_or_default();
        let score = dl.failed_at.timestamp_millis();
        pipe.cmd("HSET")
            .arg(self.keys.dead_letters())
            .arg(&dl.id)
            .arg(json)
            .ignore();
        pipe.cmd("ZADD")
            .arg(self.keys.dead_letters_index())
            .arg(score)
            .arg(&dl.id)
            .ignore();
        pipe.cmd("ZADD")
            .arg(self.keys.dead_letters_of(&dl.webhook_id))
            .arg(score)
            .arg(&dl.id)
            .ignore();
    }

    /// Add what `results` did to the minute counters waiting to be written.
    fn count_minutes(&self, results: &[TargetResult]) {
        let mut pending = self
            .minutes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for r in results {
            if let (Some(a), Some(field)) = (&r.attempt, MinuteCounts::field_of(&r.outcome)) {
                *pending
                    .entry((a.at.timestamp().div_euclid(60), field))
                    .or_default() += 1;
            }
        }
    }

    async fn load_scripts(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        for s in [ATTEMPT_SCRIPT] {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(s)
                .query_async::<String>(&mut c)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

/// Write the minute counters once a second, off the delivery path: they feed the dashboard's
/// overview, so one `HINCRBY` per key and second replaces two commands per recorded message.
/// Counts that cannot be written are kept for the next try (a write that broke off part-way
/// may then count some twice); a process that stops loses at most its last second of them.
/// They are statistics for a chart: the per-webhook statistics are written with each attempt.
/// Ends when the store is dropped.
async fn flush_minutes(pending: Weak<Mutex<PendingMinutes>>, mut conn: Conn, keys: Keys) {
    let mut tick = tokio::time::interval(MINUTE_FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pending) = pending.upgrade() else {
            return;
        };
        let batch: PendingMinutes = std::mem::take(
            &mut *pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if batch.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for (&(minute, field), &n) in &batch {
            let key = keys.minute_counts(minute);
            pipe.cmd("HINCRBY").arg(&key).arg(field).arg(n).ignore();
            pipe.cmd("EXPIRE")
                .arg(&key)
                .arg(MINUTE_BUCKET_TTL_SECS)
                .ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::debug!(error = %e, "minute counters not written; retrying with the next ones");
            let mut p = pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (k, n) in batch {
                *p.entry(k).or_default() += n;
            }
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn claim_events(&self, ids: &[String]) -> Result<(Vec<Claim>, u64), StoreError> {
        let mut pipe = redis::pipe();
        for id in ids {
            // NX with GET (Redis ≥ 7): one command both claims and tells who had it.
            pipe.cmd("SET")
                .arg(self.keys.dedup(id))
                .arg("p")
                .arg("NX")
                .arg("GET")
                .arg("EX")
                .arg(CLAIM_TTL_SECS);
        }
        pipe.cmd("GET").arg(self.keys.webhooks_version());
        let mut c = self.conn();
        let mut replies: Vec<Option<String>> =
            pipe.query_async(&mut c).await.map_err(unavailable)?;
        let version = replies
            .pop()
            .flatten()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let claims = replies
            .into_iter()
            .map(|previous| match previous.as_deref() {
                None => Claim::New,
                Some("p") => Claim::InProgress,
                Some(_) => Claim::Duplicate,
            })
            .collect();
        Ok((claims, version))
    }

    async fn confirm_events(
        &self,
        events: &[EventInfo],
        window: Duration,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for e in events {
            let json = serde_json::to_string(e).map_err(corrupt)?;
            pipe.cmd("SET")
                .arg(self.keys.dedup(&e.id))
                .arg(json)
                .arg("EX")
                .arg(window.as_secs().max(1))
                .ignore();
        }
        let mut c = self.conn();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }

    async fn release_events(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.keys.dedup(id)).collect();
        let mut c = self.conn();
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn event_info(&self, id: &str) -> Result<Option<EventInfo>, StoreError> {
        let mut c = self.conn();
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.keys.dedup(id))
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(raw.and_then(|json| serde_json::from_str(&json).ok()))
    }

    async fn registry_version(&self) -> Result<u64, StoreError> {
        let mut c = self.conn();
        let v: Option<u64> = redis::cmd("GET")
            .arg(self.keys.webhooks_version())
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(v.unwrap_or(0))
    }

    async fn list_webhooks(&self) -> Result<(u64, Vec<Webhook>), StoreError> {
        let mut c = self.conn();
        let (version, raw): (Option<u64>, HashMap<String, String>) = redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(self.keys.webhooks_version())
            .cmd("HGETALL")
            .arg(self.keys.webhooks())
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let mut hooks = Vec::with_capacity(raw.len());
        for w in parse_all::<Webhook>(raw.into_values()) {
            match self.open(w) {
                Ok(w) => hooks.push(w),
                // Never skip silently: a webhook that cannot be opened would stop receiving.
                Err(e) => return Err(e),
            }
        }
        hooks.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok((version.unwrap_or(0), hooks))
    }

    async fn get_webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError> {
        let mut c = self.conn();
        let raw: Option<String> = redis::cmd("HGET")
            .arg(self.keys.webhooks())
            .arg(id)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        raw.map(|json| {
            serde_json::from_str(&json)
                .map_err(|e| corrupt(format!("webhook {id}: {e}")))
                .and_then(|w| self.open(w))
        })
        .transpose()
    }

    async fn put_webhook(&self, webhook: &Webhook) -> Result<u64, StoreError> {
        let json = serde_json::to_string(&self.seal(webhook)).map_err(corrupt)?;
        Ok(self.change_webhook(&webhook.id, Some(&json)).await?.0)
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.change_webhook(id, None).await?.1)
    }

    async fn target_states(
        &self,
        event_id: &str,
        webhook_ids: &[&str],
    ) -> Result<Vec<Option<TargetState>>, StoreError> {
        if webhook_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn();
        let raw: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys.targets(event_id))
            .arg(webhook_ids)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(raw
            .into_iter()
            .map(|s| s.and_then(|s| TargetState::decode(&s)))
            .collect())
    }

    async fn all_target_states(
        &self,
        event_id: &str,
    ) -> Result<HashMap<String, TargetState>, StoreError> {
        let mut c = self.conn();
        let raw: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.targets(event_id))
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| TargetState::decode(&v).map(|s| (k, s)))
            .collect())
    }

    async fn record(&self, results: &[TargetResult]) -> Result<Vec<Option<Health>>, StoreError> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let (pipe, has_attempt, any_dead) = self.record_pipeline(results);
        let mut c = self.conn();
        let mut replies: Result<Vec<(u64, String)>, _> = pipe.query_async(&mut c).await;
        if let Err(e) = &replies {
            if e.kind() == redis::ErrorKind::NoScriptError {
                // A restarted Redis forgot the script. No script in this pipeline ran, and every
                // other command in it is idempotent (no counters outside the script), so
                // running it again is exact.
                self.load_scripts().await?;
                replies = pipe.query_async(&mut c).await;
            }
        }
        let mut replies = replies.map_err(unavailable)?.into_iter();
        self.count_minutes(results);
        if any_dead {
            self.trim_dead_letters().await;
        }
        Ok(has_attempt
            .into_iter()
            .map(|has| {
                has.then(|| replies.next())
                    .flatten()
                    .map(|(streak, since)| Health {
                        consecutive_failures: streak,
                        failing_since: since.parse().ok().and_then(millis),
                    })
            })
            .collect())
    }

    async fn schedule_job(&self, job: &Job, due: DateTime<Utc>) -> Result<(), StoreError> {
        let json = serde_json::to_string(job).map_err(corrupt)?;
        let mut c = self.conn();
        redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(self.keys.retry_jobs())
            .arg(&job.id)
            .arg(json)
            .ignore()
            .cmd("ZADD")
            .arg(self.keys.retry_schedule())
            .arg(due.timestamp_millis())
            .arg(&job.id)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn claim_due_jobs(&self, limit: usize, lease: Duration) -> Result<Vec<Job>, StoreError> {
        let mut c = self.conn();
        let pairs: Vec<String> = self
            .claim
            .key(self.keys.retry_schedule())
            .key(self.keys.retry_leases())
            .key(self.keys.retry_jobs())
            .arg(Utc::now().timestamp_millis())
            .arg(lease.as_millis() as u64)
            .arg(limit.max(1))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        let mut jobs = Vec::with_capacity(pairs.len() / 2);
        let mut orphans = Vec::new();
        for pair in pairs.chunks(2) {
            let [id, json] = pair else { continue };
            match serde_json::from_str::<Job>(json) {
                Ok(job) => jobs.push(job),
                Err(_) => {
                    tracing::error!(job_id = %id, "a scheduled job has no readable body; dropping it");
                    orphans.push(id.clone());
                }
            }
        }
        if !orphans.is_empty() {
            self.complete_jobs(&orphans).await?;
        }
        Ok(jobs)
    }

    async fn complete_jobs(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut c = self.conn();
        redis::pipe()
            .atomic()
            .cmd("ZREM")
            .arg(self.keys.retry_leases())
            .arg(ids)
            .ignore()
            .cmd("HDEL")
            .arg(self.keys.retry_jobs())
            .arg(ids)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn release_jobs(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = Utc::now().timestamp_millis();
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("ZREM")
            .arg(self.keys.retry_leases())
            .arg(ids)
            .ignore();
        for id in ids {
            pipe.cmd("ZADD")
                .arg(self.keys.retry_schedule())
                .arg(now)
                .arg(id)
                .ignore();
        }
        let mut c = self.conn();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }

    async fn sweep_leases(&self) -> Result<u64, StoreError> {
        let mut c = self.conn();
        self.sweep
            .key(self.keys.retry_leases())
            .key(self.keys.retry_schedule())
            .arg(Utc::now().timestamp_millis())
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn schedule_status(&self) -> Result<ScheduleStatus, StoreError> {
        let mut c = self.conn();
        let (depth, leased, oldest, dead): (u64, u64, Vec<(String, f64)>, u64) = redis::pipe()
            .cmd("ZCARD")
            .arg(self.keys.retry_schedule())
            .cmd("ZCARD")
            .arg(self.keys.retry_leases())
            .cmd("ZRANGE")
            .arg(self.keys.retry_schedule())
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .cmd("ZCARD")
            .arg(self.keys.dead_letters_index())
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let now = Utc::now().timestamp_millis() as f64;
        let lag = oldest
            .first()
            .map(|(_, due)| ((now - due) / 1000.0).max(0.0))
            .unwrap_or(0.0);
        Ok(ScheduleStatus {
            depth,
            leased,
            lag: Duration::from_secs_f64(lag),
            dead_letters: dead,
        })
    }

    async fn list_attempts(
        &self,
        webhook_id: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Page<AttemptRecord>, StoreError> {
        let key = self.keys.attempts(webhook_id);
        let mut c = self.conn();
        let (raw, total): (Vec<String>, u64) = redis::pipe()
            .cmd("LRANGE")
            .arg(&key)
            .arg(offset)
            .arg((offset + limit).saturating_sub(1))
            .cmd("LLEN")
            .arg(&key)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(Page {
            items: if limit == 0 {
                Vec::new()
            } else {
                parse_all(raw)
            },
            total,
        })
    }

    async fn find_attempt(&self, attempt_id: &str) -> Result<Option<AttemptRecord>, StoreError> {
        let Some(webhook_id) = webhook_of_attempt(attempt_id) else {
            return Ok(None);
        };
        let mut c = self.conn();
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(self.keys.attempts(webhook_id))
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(parse_all::<AttemptRecord>(raw)
            .into_iter()
            .find(|a| a.id == attempt_id))
    }

    async fn log_attempt(&self, attempt: &AttemptRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(attempt).map_err(corrupt)?;
        let key = self.keys.attempts(&attempt.webhook_id);
        let mut c = self.conn();
        redis::pipe()
            .atomic()
            .cmd("LPUSH")
            .arg(&key)
            .arg(json)
            .ignore()
            .cmd("LTRIM")
            .arg(&key)
            .arg(0)
            .arg(ATTEMPT_LOG_CAP - 1)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn list_dead_letters(
        &self,
        webhook_id: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<Page<DeadLetter>, StoreError> {
        let index = match webhook_id {
            Some(w) => self.keys.dead_letters_of(w),
            None => self.keys.dead_letters_index(),
        };
        let mut c = self.conn();
        let (ids, total): (Vec<String>, u64) = redis::pipe()
            .cmd("ZREVRANGE")
            .arg(&index)
            .arg(offset)
            .arg((offset + limit).saturating_sub(1))
            .cmd("ZCARD")
            .arg(&index)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        if ids.is_empty() || limit == 0 {
            return Ok(Page {
                items: Vec::new(),
                total,
            });
        }
        let raw: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys.dead_letters())
            .arg(&ids)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(Page {
            items: parse_all(raw.into_iter().flatten()),
            total,
        })
    }

    async fn put_dead_letter(&self, dl: &DeadLetter) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.add_dead_letter(&mut pipe, dl);
        let mut c = self.conn();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }

    async fn take_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let mut c = self.conn();
        let raw: Option<String> = redis::cmd("HGET")
            .arg(self.keys.dead_letters())
            .arg(id)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let Some(raw) = raw else { return Ok(None) };
        let dl: DeadLetter = serde_json::from_str(&raw).map_err(corrupt)?;
        let (removed,): (u64,) = redis::pipe()
            .atomic()
            .cmd("HDEL")
            .arg(self.keys.dead_letters())
            .arg(id)
            .cmd("ZREM")
            .arg(self.keys.dead_letters_index())
            .arg(id)
            .ignore()
            .cmd("ZREM")
            .arg(self.keys.dead_letters_of(&dl.webhook_id))
            .arg(id)
            .ignore()
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        // Two replays of one dead letter at once: only the one that removed it proceeds.
        Ok((removed > 0).then_some(dl))
    }

    async fn webhook_stats(&self, webhook_ids: &[&str]) -> Result<Vec<WebhookStats>, StoreError> {
        if webhook_ids.is_empty() {
            return Ok(Vec::new());
        }
        let hour = Utc::now().timestamp() / 3600;
        let mut pipe = redis::pipe();
        for id in webhook_ids {
            pipe.cmd("HGETALL").arg(self.keys.webhook_stats(id));
            for h in (hour - 23)..=hour {
                pipe.cmd("HMGET")
                    .arg(self.keys.webhook_hour(id, h))
                    .arg("s")
                    .arg("f");
            }
        }
        let mut c = self.conn();
        let replies: Vec<redis::Value> = pipe.query_async(&mut c).await.map_err(unavailable)?;
        let mut replies = replies.into_iter();
        let mut out = Vec::with_capacity(webhook_ids.len());
        for _ in webhook_ids {
            let fields: HashMap<String, String> = replies
                .next()
                .and_then(|v| redis::from_redis_value(&v).ok())
                .unwrap_or_default();
            let num = |k: &str| {
                fields
                    .get(k)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let time = |k: &str| {
                fields
                    .get(k)
                    .and_then(|v| v.parse::<i64>().ok())
                    .and_then(millis)
            };
            let (mut ok, mut failed) = (0u64, 0u64);
            for _ in 0..24 {
                let sf: Vec<Option<u64>> = replies
                    .next()
                    .and_then(|v| redis::from_redis_value(&v).ok())
                    .unwrap_or_default();
                ok += sf.first().copied().flatten().unwrap_or(0);
                failed += sf.get(1).copied().flatten().unwrap_or(0);
            }
            out.push(WebhookStats {
                successes: num("successes"),
                failures: num("failures"),
                retries: num("retries"),
                last_status: fields.get("last_status").and_then(|v| v.parse().ok()),
                last_attempt_at: time("last_attempt_at"),
                consecutive_failures: num("consecutive_failures"),
                failing_since: time("failing_since"),
                success_rate_24h: (ok + failed > 0).then(|| ok as f64 / (ok + failed) as f64),
                attempts_24h: ok + failed,
            });
        }
        Ok(out)
    }

    async fn minute_counts(&self, first: i64, last: i64) -> Result<Vec<MinuteCounts>, StoreError> {
        if last < first {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for minute in first..=last {
            pipe.cmd("HMGET")
                .arg(self.keys.minute_counts(minute))
                .arg("delivered")
                .arg("retrying")
                .arg("dead");
        }
        let mut c = self.conn();
        let replies: Vec<Vec<Option<u64>>> = pipe.query_async(&mut c).await.map_err(unavailable)?;
        Ok((first..=last)
            .zip(replies)
            .map(|(minute, v)| {
                let n = |i: usize| v.get(i).copied().flatten().unwrap_or(0);
                MinuteCounts {
                    minute,
                    delivered: n(0),
                    retrying: n(1),
                    dead: n(2),
                }
            })
            .collect())
    }

    async fn reset_health(&self, webhook_id: &str) -> Result<(), StoreError> {
        let mut c = self.conn();
        redis::cmd("HDEL")
            .arg(self.keys.webhook_stats(webhook_id))
            .arg("consecutive_failures")
            .arg("failing_since")
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn take_token(
        &self,
        webhook_id: &str,
        rate: f64,
        burst: u32,
    ) -> Result<Option<Duration>, StoreError> {
        let mut c = self.conn();
        let wait_ms: u64 = self
            .token
            .key(self.keys.rate_bucket(webhook_id))
            .arg(rate)
            .arg(burst.max(1))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }

    async fn webhook_changes_since(
        &self,
        version: u64,
    ) -> Result<Option<WebhookChanges>, StoreError> {
        self.read_changes_since(version).await
    }

    async fn get_webhooks(&self, ids: &[&str]) -> Result<Vec<Option<Webhook>>, StoreError> {
        self.read_webhooks(ids).await
    }

    async fn webhook_counters(
        &self,
        webhook_ids: &[&str],
    ) -> Result<Vec<WebhookCounters>, StoreError> {
        self.read_counters(webhook_ids).await
    }
}

/// Change one webhook: write or delete it, move the registry version and log the change,
/// in one script on the registry's slot, so that no cache can see one without the others.
/// The version comes from the server's clock in microseconds (or one more than the last,
/// if the clock has not moved past it): after Redis lost writes, the versions it hands out
/// are newer than any it lost, never the same numbers again (see `changes_from_log`).
/// `ARGV[2]` empty deletes; deleting what is not there changes nothing. Returns the version
/// and how many webhooks were removed.
const CHANGE_SCRIPT: &str = r"
local removed = 0
if ARGV[2] == '' then
  removed = redis.call('HDEL', KEYS[1], ARGV[1])
  if removed == 0 then return {redis.call('GET', KEYS[2]) or '0', 0} end
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local current = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('SET', KEYS[4], string.format('%.0f', current))
end
local t = redis.call('TIME')
local version = tonumber(t[1]) * 1000000 + tonumber(t[2])
if version <= current then version = current + 1 end
local v = string.format('%.0f', version)
redis.call('SET', KEYS[2], v)
redis.call('ZADD', KEYS[3], v, v .. ':' .. ARGV[1])
local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[3])
if excess > 0 then
  local gone = redis.call('ZRANGE', KEYS[3], 0, excess - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, excess - 1)
  redis.call('SET', KEYS[4], string.match(gone[#gone], '^(%d+):'))
end
return {v, removed}
";

static CHANGE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(CHANGE_SCRIPT));

/// Webhooks read per `HMGET`, so that one reply stays a few megabytes.
const WEBHOOKS_PER_READ: usize = 1_000;

/// The registry's change log, and reads of only some webhooks.
impl RedisStore {
    async fn change_webhook(
        &self,
        id: &str,
        json: Option<&str>,
    ) -> Result<(u64, bool), StoreError> {
        let mut c = self.conn();
        let (version, removed): (String, u64) = CHANGE
            .key(self.keys.webhooks())
            .key(self.keys.webhooks_version())
            .key(self.keys.webhook_changes())
            .key(self.keys.webhook_changes_floor())
            .arg(id)
            .arg(json.unwrap_or(""))
            .arg(CHANGE_LOG_CAP)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        let version = version
            .parse()
            .map_err(|_| corrupt(format!("the registry version is not a number: {version:?}")))?;
        Ok((version, removed > 0))
    }

    async fn read_changes_since(&self, since: u64) -> Result<Option<WebhookChanges>, StoreError> {
        let mut c = self.conn();
        let (version, floor, members): (Option<String>, Option<String>, Vec<String>) =
            redis::pipe()
                .atomic()
                .cmd("GET")
                .arg(self.keys.webhooks_version())
                .cmd("GET")
                .arg(self.keys.webhook_changes_floor())
                .cmd("ZRANGE")
                .arg(self.keys.webhook_changes())
                .arg(since)
                .arg("+inf")
                .arg("BYSCORE")
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
        let number = |what: &str, v: Option<String>| -> Result<Option<u64>, StoreError> {
            v.map(|v| {
                v.parse()
                    .map_err(|_| corrupt(format!("the registry {what} is not a number: {v:?}")))
            })
            .transpose()
        };
        let version = number("version", version)?.unwrap_or(0);
        let floor = number("change log floor", floor)?;
        let mut entries = Vec::with_capacity(members.len());
        for m in &members {
            let parsed = m
                .split_once(':')
                .and_then(|(v, id)| Some((v.parse::<u64>().ok()?, id)));
            match parsed {
                Some(entry) => entries.push(entry),
                // Unreadable, it cannot prove anything: a full reload is always correct.
                None => return Ok(None),
            }
        }
        Ok(changes_from_log(since, version, floor, &entries))
    }

    async fn read_webhooks(&self, ids: &[&str]) -> Result<Vec<Option<Webhook>>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(WEBHOOKS_PER_READ) {
            let mut c = self.conn();
            let raw: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(self.keys.webhooks())
                .arg(chunk)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            for (id, json) in chunk.iter().zip(raw) {
                // As in `list_webhooks`, never skip one silently: it would stop receiving.
                out.push(
                    json.map(|json| {
                        serde_json::from_str(&json)
                            .map_err(|e| corrupt(format!("webhook {id}: {e}")))
                            .and_then(|w| self.open(w))
                    })
                    .transpose()?,
                );
            }
        }
        Ok(out)
    }

    /// Four fields of each webhook's statistics, without the hourly buckets.
    async fn read_counters(&self, ids: &[&str]) -> Result<Vec<WebhookCounters>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(WEBHOOKS_PER_READ) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HMGET")
                    .arg(self.keys.webhook_stats(id))
                    .arg("successes")
                    .arg("failures")
                    .arg("retries")
                    .arg("consecutive_failures");
            }
            let mut c = self.conn();
            let replies: Vec<Vec<Option<u64>>> =
                pipe.query_async(&mut c).await.map_err(unavailable)?;
            out.extend(replies.into_iter().map(|v| {
                let n = |i: usize| v.get(i).copied().flatten().unwrap_or(0);
                WebhookCounters {
                    successes: n(0),
                    failures: n(1),
                    retries: n(2),
                    consecutive_failures: n(3),
                }
            }));
        }
        Ok(out)
    }
}
