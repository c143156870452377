//! Redis backend, for one Redis or a Redis Cluster: a few multiplexed connections that
//! redial by themselves, pipelines for everything on the per-event path (one per hash slot
//! on a cluster, see `batch.rs`), and Lua where several keys of one slot change together.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use redis::{FromRedisValue, Value};

use super::batch::{Batch, WaitReplicas};
use super::key_check::{self, KeyCheckError};
use super::marker;
use super::redis_conn::{AnyConn, ClusterConn, Conn};
use super::{changes_from_log, WebhookChanges, CHANGE_LOG_CAP};
use super::{Claim, EventInfo, Page, ScheduleStatus, Store, StoreError};
use crate::crypto::{is_sealed, SecretBox};
use crate::delivery::WebhookCounters;
use crate::delivery::{
    webhook_of_attempt, AttemptRecord, DeadLetter, Health, Job, MinuteCounts, Outcome, ReplayRun,
    TargetResult, TargetState, WebhookStats,
};
use crate::keys::{dedup_slot, Keys, DEAD_LETTER_SHARDS, DEDUP_SLOT_SECS, RETRY_SHARDS};
use crate::webhook::Webhook;

/// Multiplexed connections in the pool. Each pipelines every request given to it; the first
/// carries the per-event batches (`run`), the others the rest, so that a large reply (a
/// listing, a registry reload) is parsed beside the delivery path, not in front of it. Each
/// redials by itself when it breaks.
const POOL_SIZE: usize = 4;
/// The most time slots a lookup goes back (far more than the longest dedup window, 30 days,
/// covers): a bound on a claim's keys whatever window the store is given.
const MAX_DEDUP_SLOTS: i64 = 400;
/// How long a claim lives while its publish is in flight; a crash in that window frees
/// the id again after this long.
const CLAIM_TTL_SECS: u64 = 60;
/// How long target states of retried targets are kept: longer than any retry schedule runs.
const TARGETS_TTL_SECS: i64 = 14 * 86_400;
/// Dead letters kept per webhook (its oldest dropped first), so that one failing endpoint
/// cannot push another's out.
pub const DEAD_LETTER_CAP_PER_WEBHOOK: usize = 10_000;
/// Entries kept in each webhook's attempt log.
const ATTEMPT_LOG_CAP: usize = 100;
const HOUR_BUCKET_TTL_SECS: u64 = 25 * 3600;
/// Installation-wide minute counters cover the overview's "today" and "last 24 hours".
const MINUTE_BUCKET_TTL_SECS: u64 = 25 * 3600;
/// Events one call of a many-event script (claim, confirm, fold) takes at most, so that one
/// call holds Redis for a bounded time.
const EVENTS_PER_SCRIPT_CALL: usize = 64;

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

/// Forget published jobs: out of the lease, and the body too unless the job is back in the
/// schedule (its dispatcher's `record` was retried and wrote it again after this claim:
/// that write must keep its body, or the schedule would hold an id with nothing to run).
const COMPLETE_SCRIPT: &str = r"
for _, id in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], id)
  if not redis.call('ZSCORE', KEYS[2], id) then
    redis.call('HDEL', KEYS[3], id)
  end
end
return 0
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

/// One `HSCAN` step over a shard's job bodies: the next cursor, then the ids that are
/// neither scheduled nor leased (`KEYS`: jobs, schedule, leases).
const STRANDED_SCAN_SCRIPT: &str = r"
local r = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', 500)
local out = {r[1]}
local kv = r[2]
for i = 1, #kv, 2 do
  local id = kv[i]
  if not redis.call('ZSCORE', KEYS[2], id) and not redis.call('ZSCORE', KEYS[3], id) then
    out[#out + 1] = id
  end
end
return out
";

/// Schedule, due now, each job that still has a body and is still neither scheduled nor
/// leased (`KEYS`: jobs, schedule, leases; `ARGV[1]`: now in ms).
const RESCUE_SCRIPT: &str = r"
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], id) == 1 and not redis.call('ZSCORE', KEYS[2], id)
    and not redis.call('ZSCORE', KEYS[3], id) then
    redis.call('ZADD', KEYS[2], ARGV[1], id)
    n = n + 1
  end
end
return n
";

/// Record one attempt in a webhook's counters, hourly bucket and log; return its streak.
/// Every command counts on the hot path (one call per delivery): a success sets its three
/// fields in one `HSET` and knows its streak without reading it back, the hourly bucket gets
/// its expiry when a counter of it is new, and the log is trimmed only when over its cap.
const ATTEMPT_SCRIPT: &str = r"
local n
if ARGV[1] == '1' then
  redis.call('HINCRBY', KEYS[1], 'successes', 1)
  redis.call('HSET', KEYS[1], 'consecutive_failures', 0, 'last_status', ARGV[2], 'last_attempt_at', ARGV[3])
  redis.call('HDEL', KEYS[1], 'failing_since')
  n = redis.call('HINCRBY', KEYS[2], 's', 1)
else
  redis.call('HINCRBY', KEYS[1], 'failures', 1)
  redis.call('HINCRBY', KEYS[1], 'consecutive_failures', 1)
  redis.call('HSETNX', KEYS[1], 'failing_since', ARGV[3])
  redis.call('HSET', KEYS[1], 'last_status', ARGV[2], 'last_attempt_at', ARGV[3])
  n = redis.call('HINCRBY', KEYS[2], 'f', 1)
end
if ARGV[6] == '1' then redis.call('HINCRBY', KEYS[1], 'retries', 1) end
if n == 1 then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[7])) end
local cap = tonumber(ARGV[5])
if redis.call('LPUSH', KEYS[3], ARGV[4]) > cap then redis.call('LTRIM', KEYS[3], 0, cap - 1) end
if ARGV[1] == '1' then return {0, ''} end
return {tonumber(redis.call('HGET', KEYS[1], 'consecutive_failures')), redis.call('HGET', KEYS[1], 'failing_since') or ''}
";

/// Several successful attempts of one webhook in one hour, in the order made: what
/// `ATTEMPT_SCRIPT` does for each, in one call. `ARGV`: the last one's status and time (ms),
/// the log's cap, how many were retries, the hour bucket's TTL, then each attempt's record.
const DELIVERED_SCRIPT: &str = r"
local n = #ARGV - 5
redis.call('HINCRBY', KEYS[1], 'successes', n)
redis.call('HSET', KEYS[1], 'consecutive_failures', 0, 'last_status', ARGV[1], 'last_attempt_at', ARGV[2])
redis.call('HDEL', KEYS[1], 'failing_since')
if ARGV[4] ~= '0' then redis.call('HINCRBY', KEYS[1], 'retries', tonumber(ARGV[4])) end
if redis.call('HINCRBY', KEYS[2], 's', n) == n then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5])) end
local cap = tonumber(ARGV[3])
if redis.call('LPUSH', KEYS[3], unpack(ARGV, 6)) > cap then redis.call('LTRIM', KEYS[3], 0, cap - 1) end
return n
";

/// Every script a batch calls by hash.
pub(super) const SCRIPTS: [&str; 12] = [
    UNLESS_RETRYING_SCRIPT,
    STRANDED_SCAN_SCRIPT,
    RESCUE_SCRIPT,
    ATTEMPT_SCRIPT,
    DELIVERED_SCRIPT,
    CONFIRM_SCRIPT,
    RELEASE_SCRIPT,
    FOLD_SCRIPT,
    DEDUP_CLAIM_SCRIPT,
    CLAIM_SCRIPT,
    COMPLETE_SCRIPT,
    SWEEP_SCRIPT,
];

/// Claim event ids, each in its dedup bucket (the first of its buckets in `KEYS`, the bucket
/// of the slot it is received in) unless one of the window's buckets (the rest of its
/// `KEYS`, one hash tag) already holds it. Returns, per id in order, what held it, an empty
/// string when the claim is this request's, or `!` when it is but took over an earlier
/// claim: one past its expiry (`p!<token>!<ms base 36>`; its request crashed) or one
/// released (`r`; its publish failed). Deliveries appended to what is taken over are kept.
/// `ARGV`: buckets per id (`KEYS` holds that many per id, in the ids' order), claim, now in
/// ms, when a new bucket expires (s since the epoch), then the ids. One call claims many
/// ids: a script call costs Redis more than the few commands inside it.
const DEDUP_CLAIM_SCRIPT: &str = r"
local k = tonumber(ARGV[1])
local now = tonumber(ARGV[3])
local out = {}
for e = 5, #ARGV do
  local id = ARGV[e]
  local base = (e - 5) * k
  local held = nil
  local reclaimed = false
  local kept = ''
  for i = base + 1, base + k do
    local m = redis.call('HGET', KEYS[i], id)
    if m then
      local expiry = string.sub(m, 1, 2) == 'p!' and string.match(m, '^p![^!|]*!([0-9a-z]+)')
      local stale = expiry and tonumber(expiry, 36) < now
      if not (stale or string.sub(m, 1, 1) == 'r') then
        held = m
        break
      end
      kept = kept .. (string.match(m, '|~.*$') or '')
      redis.call('HDEL', KEYS[i], id)
      reclaimed = true
    end
  end
  if held then
    out[#out + 1] = held
  else
    local bucket = KEYS[base + 1]
    redis.call('HSET', bucket, id, ARGV[2] .. kept)
    if redis.call('TTL', bucket) == -1 then redis.call('EXPIREAT', bucket, ARGV[4]) end
    out[#out + 1] = reclaimed and '!' or ''
  end
end
return out
";

/// Release a claim, only while it is still this request's (`ARGV[2]`, `p!<token>!`,
/// whatever follows): it becomes `r` (released), keeping any deliveries appended to it. The
/// id is free to claim again; the claim that takes it over says so, because the failed
/// publish may still have reached the broker. With `ARGV[3]` `0` (nothing was published) a
/// claim with no deliveries is deleted instead.
const RELEASE_SCRIPT: &str = r"
local m = redis.call('HGET', KEYS[1], ARGV[1])
if m and string.sub(m, 1, string.len(ARGV[2])) == ARGV[2] then
  local kept = string.match(m, '|~.*$') or ''
  if ARGV[3] == '0' and kept == '' then
    redis.call('HDEL', KEYS[1], ARGV[1])
  else
    redis.call('HSET', KEYS[1], ARGV[1], 'r' .. kept)
  end
  return 1
end
return 0
";

/// Ingest's accept: each entry becomes what was accepted, keeping any deliveries a
/// dispatcher appended while the publish was being confirmed. `KEYS`: each event's bucket;
/// `ARGV`: per event, its id, its accepted marker and when its bucket expires. A bucket
/// that holds the entry already has its expiry (whatever creates a bucket sets it), so only
/// an entry that is missing (a Redis that lost it) makes the script look.
const CONFIRM_SCRIPT: &str = r"
local n = 0
for i = 1, #KEYS do
  local id = ARGV[3 * i - 2]
  local m = redis.call('HGET', KEYS[i], id)
  if not (m and string.sub(m, 1, 1) == 'a') then
    local rest = ''
    if m then rest = string.match(m, '|~.*$') or '' end
    redis.call('HSET', KEYS[i], id, ARGV[3 * i - 1] .. rest)
    if not m and redis.call('TTL', KEYS[i]) == -1 then
      redis.call('EXPIREAT', KEYS[i], ARGV[3 * i])
    end
    n = n + 1
  end
end
return n
";

/// Events' delivered targets, appended (each with the seconds since the event was
/// received) to the event's entry in whichever of its buckets holds it, so a delivered
/// event is one short field. Returns, per event in order, `f` when it was, `n` when no bucket
/// holds the event (a retry delivered after the dedup window): the caller keeps target-hash
/// entries then. `ARGV`: now in ms, then per event its id, how many of `KEYS` (the next ones,
/// in order) are its buckets, how many entries follow, and the entries.
const FOLD_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local digits = '0123456789abcdefghijklmnopqrstuvwxyz'
local out = {}
local a = 2
local k = 0
while a <= #ARGV do
  local id = ARGV[a]
  local nk = tonumber(ARGV[a + 1])
  local first = a + 3
  local last = first + tonumber(ARGV[a + 2]) - 1
  local done = 'n'
  for i = k + 1, k + nk do
    local m = redis.call('HGET', KEYS[i], id)
    if m then
      local after = ''
      if string.sub(m, 1, 1) == 'a' then
        local bar = string.find(m, '|', 2, true)
        local received = bar and tonumber(string.sub(m, 2, bar - 1), 36)
        if received then
          local secs = math.max(0, math.floor((now - received) / 1000))
          local s = ''
          repeat
            local d = secs % 36
            s = string.sub(digits, d + 1, d + 1) .. s
            secs = math.floor(secs / 36)
          until secs == 0
          after = '@' .. s
        end
      end
      local parts = {m}
      for j = first, last do parts[#parts + 1] = ARGV[j] .. after end
      redis.call('HSET', KEYS[i], id, table.concat(parts))
      done = 'f'
      break
    end
  end
  out[#out + 1] = done
  k = k + nk
  a = last + 1
end
return out
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
-- Reserving: the token is taken now even when there is none yet (the count goes below 0),
-- and the wait is until the one taken is refilled; that slot is the caller's.
tokens = tokens - 1
local wait = 0
if tokens < 0 then wait = math.ceil(-tokens * 1000 / rate) end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], 60000 + wait + math.ceil(burst * 1000 / rate))
return wait
";

/// The production store.
pub struct RedisStore {
    keys: Keys,
    pool: Vec<AnyConn>,
    next: AtomicUsize,
    claim: redis::Script,
    complete: redis::Script,
    sweep: redis::Script,
    attempt: redis::Script,
    delivered: redis::Script,
    release: redis::Script,
    confirm: redis::Script,
    fold: redis::Script,
    dedup_claim: redis::Script,
    /// The dedup window the window's buckets are looked up over (`with_dedup_window`).
    window: Duration,
    /// Until when (ms since the epoch) claims also check the previous layout's per-event
    /// markers: -1 until read (`legacy_dedup_until`).
    legacy_until: Arc<std::sync::atomic::AtomicI64>,
    token: redis::Script,
    sealer: Option<SecretBox>,
    wait: Option<WaitReplicas>,
    /// Records the registry reads found unusable, by id (`Store::invalid_webhooks`).
    invalid: Arc<Mutex<std::collections::BTreeMap<String, String>>>,
    /// Installation-wide minute counters not yet written: (minute, outcome) → count. The
    /// delivery path only adds here; a task writes them once a second (`flush_minutes`).
    minutes: Arc<Mutex<PendingMinutes>>,
}

type PendingMinutes = HashMap<(i64, &'static str), u64>;

/// How often the minute counters are written to Redis.
const MINUTE_FLUSH_EVERY: Duration = Duration::from_secs(1);

/// A target's state set unless it is `r:` (an automatic retry pending), which a manual
/// attempt leaves alone.
const UNLESS_RETRYING_SCRIPT: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.sub(cur, 1, 2) == 'r:' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
";
static UNLESS_RETRYING: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(UNLESS_RETRYING_SCRIPT));

fn b_set_unless_retrying(b: &mut Batch, targets: &str, r: &TargetResult, state: &TargetState) {
    b.script(&UNLESS_RETRYING, &[targets])
        .arg(&r.webhook_id)
        .arg(state.encode())
        .arg(TARGETS_TTL_SECS);
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn millis(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

fn from<T: FromRedisValue>(v: Option<Value>) -> Result<T, StoreError> {
    T::from_owned_redis_value(v.unwrap_or(Value::Nil)).map_err(unavailable)
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
    /// Release this request's claims of `ids` (see `RELEASE_SCRIPT`); `published`: a publish
    /// of them was tried, so the next claim must be told (they stay marked released).
    async fn release_claims(
        &self,
        ids: &[String],
        token: &str,
        at: DateTime<Utc>,
        published: bool,
    ) -> Result<(), StoreError> {
        let claim = marker::claim_prefix(token);
        let mut b = Batch::new();
        for id in ids {
            let bucket = self.keys.dedup_bucket_at(id, at);
            b.script(&self.release, &[&bucket])
                .arg(id)
                .arg(&claim)
                .arg(if published { "1" } else { "0" });
        }
        self.run(b, false).await.map(|_| ())
    }
}

/// Remove `ids` from each key with its command (`ZREM`, `HDEL`), in one pipeline: what the
/// moves to the sharded layout do once a page is in its new place.
async fn remove_ids<C: redis::aio::ConnectionLike, T: redis::ToRedisArgs>(
    c: &mut C,
    from: &[(&str, &str)],
    ids: &[T],
) -> Result<(), StoreError> {
    let mut pipe = redis::pipe();
    for (cmd, key) in from {
        pipe.cmd(cmd).arg(key).arg(ids).ignore();
    }
    pipe.query_async::<()>(c).await.map_err(unavailable)
}

/// The deliveries of one event that one `record` folds into its marker in one call, and
/// their entries.
struct Fold<'a> {
    results: Vec<&'a TargetResult>,
    entries: Vec<String>,
}

/// The attempt scripts of one `record`, in the order the attempts were made, with each run
/// of successes of one webhook (in one hour, up to the log's cap) made one call: a
/// failure is a call of its own and ends its webhook's run, so every attempt still counts
/// in its webhook's failure streak in order.
#[derive(Default)]
struct AttemptCalls<'a> {
    calls: Vec<AttemptCall<'a>>,
    /// The run of successes still open for (webhook, hour): its index in `calls`.
    open: HashMap<(&'a str, i64), usize>,
}

enum AttemptCall<'a> {
    Failed(&'a AttemptRecord),
    Delivered(Vec<&'a AttemptRecord>),
}

impl<'a> AttemptCalls<'a> {
    fn add(&mut self, a: &'a AttemptRecord, ok: bool) {
        if !ok {
            self.open.retain(|(webhook, _), _| *webhook != a.webhook_id);
            self.calls.push(AttemptCall::Failed(a));
            return;
        }
        let key = (a.webhook_id.as_str(), a.at.timestamp() / 3600);
        if let Some(&at) = self.open.get(&key) {
            if let AttemptCall::Delivered(group) = &mut self.calls[at] {
                group.push(a);
                if group.len() >= ATTEMPT_LOG_CAP {
                    self.open.remove(&key);
                }
                return;
            }
        }
        self.open.insert(key, self.calls.len());
        self.calls.push(AttemptCall::Delivered(vec![a]));
    }
}

/// An attempt as it is kept in its webhook's log. The buffer starts at about the record's
/// size (its fields, the envelope with room for escaping, the response excerpt), so writing
/// it does not grow it again and again.
fn attempt_json(a: &AttemptRecord) -> String {
    let size = 512
        + a.request_body.len() * 9 / 8
        + a.response_body.len()
        + a.rendered_body.as_ref().map_or(0, String::len);
    let mut out = Vec::with_capacity(size);
    match serde_json::to_writer(&mut out, a) {
        // serde_json writes UTF-8 only.
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Ids grouped by the shard that holds them (`shard`: `Keys::retry_shard`,
/// `Keys::dead_letter_shard`).
fn by_shard(ids: &[String], shard: impl Fn(&str) -> u16) -> HashMap<u16, Vec<&String>> {
    let mut out: HashMap<u16, Vec<&String>> = HashMap::new();
    for id in ids {
        out.entry(shard(id)).or_default().push(id);
    }
    out
}

impl RedisStore {
    /// Connect the pool to one Redis. Fails if Redis cannot be reached now; the connections
    /// reconnect by themselves after that.
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
            pool.push(AnyConn::Single(
                Conn::open(client.clone(), redials.clone())
                    .await
                    .map_err(unavailable)?,
            ));
        }
        Ok(Self::with_pool(pool, prefix))
    }

    /// Connect to a Redis Cluster through any of its nodes. Fails if none answers now.
    pub async fn connect_cluster(nodes: &[String], prefix: &str) -> Result<Self, StoreError> {
        Self::connect_cluster_counted(nodes, prefix, None).await
    }

    /// Like `connect_cluster`, counting every client replaced in `redials`.
    pub async fn connect_cluster_counted(
        nodes: &[String],
        prefix: &str,
        redials: Option<prometheus::IntCounter>,
    ) -> Result<Self, StoreError> {
        let mut pool = Vec::with_capacity(POOL_SIZE);
        for _ in 0..POOL_SIZE {
            pool.push(AnyConn::Cluster(
                ClusterConn::open(nodes, redials.clone())
                    .await
                    .map_err(unavailable)?,
            ));
        }
        Ok(Self::with_pool(pool, prefix))
    }

    fn with_pool(pool: Vec<AnyConn>, prefix: &str) -> Self {
        let store = Self {
            keys: Keys::new(prefix),
            pool,
            next: AtomicUsize::new(0),
            claim: redis::Script::new(CLAIM_SCRIPT),
            complete: redis::Script::new(COMPLETE_SCRIPT),
            sweep: redis::Script::new(SWEEP_SCRIPT),
            attempt: redis::Script::new(ATTEMPT_SCRIPT),
            delivered: redis::Script::new(DELIVERED_SCRIPT),
            confirm: redis::Script::new(CONFIRM_SCRIPT),
            release: redis::Script::new(RELEASE_SCRIPT),
            fold: redis::Script::new(FOLD_SCRIPT),
            dedup_claim: redis::Script::new(DEDUP_CLAIM_SCRIPT),
            window: Duration::from_secs(86_400),
            legacy_until: Arc::new(std::sync::atomic::AtomicI64::new(-1)),
            token: redis::Script::new(TOKEN_SCRIPT),
            sealer: None,
            wait: None,
            invalid: Arc::default(),
            minutes: Arc::default(),
        };
        tokio::spawn(flush_minutes(
            Arc::downgrade(&store.minutes),
            store.conn(),
            store.keys.clone(),
        ));
        store
    }

    /// Seal signing secrets with this key before they are stored, and open them on read.
    pub fn with_secret_key(mut self, key: Option<SecretBox>) -> Self {
        self.sealer = key;
        self
    }

    /// Stop a role whose `KIVIHOOK_SECRET_KEY` is not the one this installation's secrets
    /// are sealed with, before it looks healthy (see `key_check`); nothing to check without
    /// a key.
    pub async fn check_secret_key(&self) -> Result<(), KeyCheckError> {
        match &self.sealer {
            Some(key) => key_check::check(&mut self.conn(), &self.keys, key).await,
            None => Ok(()),
        }
    }

    /// Look events up over this dedup window (`KIVIHOOK_DEDUP_WINDOW`; 24 h if not set).
    pub fn with_dedup_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The dedup buckets an event received around `at` may be in, over the dedup window:
    /// the one of `at`'s slot first (where a claim at `at` goes), then the older ones, then
    /// the next slot's (an ingest whose clock runs ahead). All share the event's hash tag.
    fn dedup_buckets(&self, event_id: &str, at: DateTime<Utc>) -> Vec<String> {
        let tag = self.keys.dedup_tag(event_id);
        let slot = dedup_slot(at);
        let window = chrono::Duration::from_std(self.window).unwrap_or(chrono::Duration::MAX);
        let oldest = at
            .checked_sub_signed(window)
            .map_or(slot - 1, dedup_slot)
            .max(slot - MAX_DEDUP_SLOTS);
        let of_tag = self.keys.dedup_buckets_of(tag);
        let mut out = Vec::with_capacity((slot - oldest + 2) as usize);
        out.push(Keys::in_slot(&of_tag, slot));
        out.extend((oldest..slot).rev().map(|s| Keys::in_slot(&of_tag, s)));
        out.push(Keys::in_slot(&of_tag, slot + 1));
        out
    }

    /// The buckets that may hold an event's marker: the one of the slot it was received in
    /// when that is known (its claim went there), else every bucket of the window.
    fn marker_buckets(
        &self,
        event_id: &str,
        received_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Vec<String> {
        match received_at {
            Some(at) => vec![self.keys.dedup_bucket_at(event_id, at)],
            None => self.dedup_buckets(event_id, now),
        }
    }

    /// When the bucket of `slot` expires (s since the epoch): a dedup window after the slot
    /// ends, so every entry in it lives at least a window.
    fn bucket_expiry(slot: i64, window: Duration) -> i64 {
        (slot + 1) * DEDUP_SLOT_SECS + window.as_secs() as i64 + 60
    }

    /// Read (or, on an installation's first start with this layout, write) whether claims
    /// must check the previous layout's markers; done at start, before this process can
    /// create a webhook, so that a new installation is seen to be new.
    pub async fn check_dedup_layout(&self) -> Result<(), StoreError> {
        self.legacy_dedup_until().await.map(|_| ())
    }

    /// Until when claims must also check the previous layout's per-event markers: one dedup
    /// window (and a day for a rolling upgrade) after the first process of this layout
    /// started on this installation, read once per process. An installation that had no
    /// registry when that process started is new: it has no old markers to check (events
    /// accepted with no webhook registered reached nobody, so there is nothing to deliver
    /// twice), and the key says so with 0.
    async fn legacy_dedup_until(&self) -> Result<i64, StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let known = self.legacy_until.load(Relaxed);
        if known >= 0 {
            return Ok(known);
        }
        let mut c = self.conn();
        let key = self.keys.dedup_layout_since();
        let mut since: Option<i64> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        if since.is_none() {
            let upgraded: bool = redis::cmd("EXISTS")
                .arg(self.keys.webhooks_version())
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            let now = if upgraded {
                Utc::now().timestamp_millis()
            } else {
                0
            };
            let (_, read): (Value, Option<i64>) = redis::pipe()
                .cmd("SET")
                .arg(&key)
                .arg(now)
                .arg("NX")
                .cmd("GET")
                .arg(&key)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            since = read;
        }
        let until = match since {
            Some(0) => 0,
            Some(since) => since + self.window.as_millis() as i64 + 86_400_000,
            None => Utc::now().timestamp_millis() + self.window.as_millis() as i64 + 86_400_000,
        };
        self.legacy_until.store(until, Relaxed);
        Ok(until)
    }

    /// Make every write on the accept and outcome paths wait until `replicas` replicas
    /// have it (`WAIT`), failing when they do not within `timeout`.
    pub fn with_wait_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait = (replicas > 0).then_some(WaitReplicas { replicas, timeout });
        self
    }

    /// Every secret a webhook holds, with the field it is bound to when sealed: its signing
    /// secrets, its endpoint credential, its credential headers, and a capability URL.
    fn secrets_of(w: &mut Webhook) -> Vec<(String, &mut String)> {
        let id = w.id.clone();
        let credential_headers: Vec<String> = w
            .headers
            .keys()
            .filter(|name| w.is_credential_header(name))
            .cloned()
            .collect();
        let mut out = vec![(format!("{id}:secret"), &mut w.secret)];
        out.extend(
            w.previous_secrets
                .iter_mut()
                .map(|p| (format!("{id}:previous_secret"), &mut p.secret)),
        );
        out.extend(w.auth.credential_mut().map(|c| (format!("{id}:auth"), c)));
        for (name, value) in w.headers.iter_mut() {
            if credential_headers.contains(name) {
                out.push((format!("{id}:headers.{}", name.to_ascii_lowercase()), value));
            }
        }
        if w.url_secret {
            out.push((format!("{id}:url"), &mut w.url));
        }
        out
    }

    fn seal(&self, webhook: &Webhook) -> Webhook {
        let mut stored = webhook.clone();
        if let Some(b) = &self.sealer {
            for (context, s) in Self::secrets_of(&mut stored) {
                *s = b.seal_bound(s, &context);
            }
        }
        stored
    }

    /// A registry record as the registry can use it: opened; or, when a secret in it does
    /// not open, disabled with the reason and its secrets blanked (never used to sign); or
    /// `None` when it does not parse. Either problem is remembered for `invalid_webhooks`.
    fn usable(&self, id: &str, json: &str) -> Option<Webhook> {
        let mut invalid = self
            .invalid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stored: Webhook = match serde_json::from_str(json) {
            Ok(w) => w,
            Err(e) => {
                let reason = format!("the stored record does not parse: {e}");
                if invalid.insert(id.to_owned(), reason.clone()).as_ref() != Some(&reason) {
                    tracing::error!(webhook_id = id, reason, "a webhook record cannot be read; it is left out of the registry, every other webhook keeps delivering");
                }
                return None;
            }
        };
        match self.open(stored.clone()) {
            Ok(w) => {
                invalid.remove(id);
                Some(w)
            }
            Err(e) => {
                let reason = format!(
                    "a stored secret does not open with KIVIHOOK_SECRET_KEY ({e}); restore the key, or delete the webhook and create it again"
                );
                if invalid.insert(id.to_owned(), reason.clone()).as_ref() != Some(&reason) {
                    tracing::error!(webhook_id = id, reason, "a webhook's secrets cannot be opened; it is disabled, every other webhook keeps delivering");
                }
                let mut w = stored;
                for (_, secret) in Self::secrets_of(&mut w) {
                    secret.clear();
                }
                w.enabled = false;
                w.disabled_reason = Some(reason);
                Some(w)
            }
        }
    }

    fn open(&self, mut stored: Webhook) -> Result<Webhook, StoreError> {
        for (context, s) in Self::secrets_of(&mut stored) {
            if is_sealed(s) {
                let b = self.sealer.as_ref().ok_or_else(|| {
                    corrupt("stored secrets are encrypted, and KIVIHOOK_SECRET_KEY is not set")
                })?;
                *s = b.open_bound(s, &context).map_err(corrupt)?;
            }
        }
        Ok(stored)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A connection for reads and writes off the per-event path (listings, the registry,
    /// statistics): any but the first, whose large replies then never queue in front of
    /// the per-event batches.
    fn conn(&self) -> AnyConn {
        let others = self.pool.len().saturating_sub(1).max(1);
        let i = self.next.fetch_add(1, Ordering::Relaxed) % others;
        self.pool[(i + 1).min(self.pool.len() - 1)].clone()
    }

    /// Send a batch; `durable` ones wait for the configured replicas. Batches share the
    /// first connection, so that those sent at once leave in one write (one system call
    /// for many events); with `WAIT`, which holds the connection it is sent on until the
    /// replicas answer, they spread over every connection instead.
    /// Whether a batch runs in the order it was written: on one Redis (one pipeline on one
    /// connection) it does; on a cluster each slot's commands go apart.
    fn in_order(&self) -> bool {
        matches!(self.pool.first(), Some(AnyConn::Single(_)))
    }

    /// Items (by the first key each touches) in groups for one call of a many-event script
    /// each: on one Redis, every item, in chunks of `EVENTS_PER_SCRIPT_CALL`; on a cluster, a
    /// call's keys must share a slot, so the items of each slot apart. Each group keeps its
    /// items' order (an id repeated in a call is claimed, confirmed or folded in order).
    fn script_groups<'k>(&self, first_keys: impl Iterator<Item = &'k str>) -> Vec<Vec<usize>> {
        let one_slot = self.in_order();
        let mut by_slot: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
        for (i, key) in first_keys.enumerate() {
            let slot = if one_slot {
                0
            } else {
                crate::keys::slot(key.as_bytes())
            };
            by_slot.entry(slot).or_default().push(i);
        }
        by_slot
            .into_values()
            .flat_map(|items| {
                items
                    .chunks(EVENTS_PER_SCRIPT_CALL)
                    .map(<[usize]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    async fn run(&self, batch: Batch, durable: bool) -> Result<Vec<Value>, StoreError> {
        let wait = if durable { self.wait } else { None };
        let conn = if self.wait.is_some() {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
            &self.pool[i]
        } else {
            &self.pool[0]
        };
        batch
            .run(conn, wait, || self.load_scripts())
            .await
            .map_err(unavailable)
    }

    /// Say how an acknowledged write is kept, and warn about settings under which Redis may
    /// lose KiviHook's state.
    pub async fn check_durability(&self) {
        match self.wait {
            Some(w) => tracing::info!(
                replicas = w.replicas,
                timeout_ms = w.timeout.as_millis() as u64,
                "an event is accepted, and a message acked, only once that many Redis replicas have its writes (WAIT)"
            ),
            None => tracing::info!(
                "an event is accepted, and a message acked, once the Redis primary has its writes; what survives a crash of that primary is what its AOF (appendfsync) has on disk. With replicas, KIVIHOOK_REDIS_WAIT_REPLICAS waits for them"
            ),
        }
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

    /// One page of the installation's dead-letter ids, newest first, and how many there
    /// are: the first `offset + limit` of every shard (and of the previous layout's single
    /// index, until the scheduler has moved it), merged.
    async fn newest_dead_letters(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<String>, u64), StoreError> {
        let legacy = self.keys.legacy();
        let indexes: Vec<String> = (0..DEAD_LETTER_SHARDS)
            .map(|s| self.keys.dead_letters_index(s))
            .chain([legacy.dead_letters_index])
            .collect();
        let mut b = Batch::new();
        for index in &indexes {
            b.cmd("ZREVRANGE", index)
                .arg(0)
                .arg((offset + limit).saturating_sub(1))
                .arg("WITHSCORES");
            b.cmd("ZCARD", index);
        }
        let mut replies = self.run(b, false).await?.into_iter();
        let mut all: Vec<(String, f64)> = Vec::new();
        let mut total = 0u64;
        for _ in &indexes {
            let page: Vec<(String, f64)> = from(replies.next())?;
            all.extend(page);
            total += from::<u64>(replies.next())?;
        }
        // Newest first; an id that is in a shard and still in the old index (being moved)
        // once.
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        let mut seen = std::collections::HashSet::new();
        let ids = all
            .into_iter()
            .filter(|(id, _)| seen.insert(id.clone()))
            .skip(offset)
            .take(limit)
            .map(|(id, _)| id)
            .collect();
        Ok((ids, total))
    }

    /// A dead letter and the webhook that owns it.
    async fn read_dead_letter(&self, id: &str) -> Result<Option<(String, DeadLetter)>, StoreError> {
        let owners = self
            .dead_letter_owners(std::slice::from_ref(&id.to_owned()))
            .await?;
        let Some(owner) = owners.into_iter().next().flatten() else {
            return Ok(None);
        };
        let mut c = self.conn();
        let raw: Option<String> = redis::cmd("HGET")
            .arg(self.keys.dead_letters_of_entries(&owner))
            .arg(id)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let Some(raw) = raw else { return Ok(None) };
        let dl: DeadLetter = serde_json::from_str(&raw).map_err(corrupt)?;
        Ok(Some((owner, dl)))
    }

    /// Remove one dead letter (entry, indexes, owner); whether its entry was still there.
    async fn remove_dead_letter(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        let mut b = Batch::new();
        b.cmd("HDEL", &self.keys.dead_letters_of_entries(owner))
            .arg(id);
        b.ignored("ZREM", &self.keys.dead_letters_of(owner)).arg(id);
        self.unindex_dead_letters(&mut b, std::slice::from_ref(&id.to_owned()));
        let replies = self.run(b, false).await?;
        let removed: u64 = from(replies.into_iter().next())?;
        Ok(removed > 0)
    }

    /// Keep each webhook's dead letters under its cap; runs only after dead letters were
    /// written for it.
    async fn trim_dead_letters(&self, webhook_id: &str) {
        let index = self.keys.dead_letters_of(webhook_id);
        let mut c = self.conn();
        let count: Result<usize, _> = redis::cmd("ZCARD").arg(&index).query_async(&mut c).await;
        let Ok(n) = count else { return };
        if n <= DEAD_LETTER_CAP_PER_WEBHOOK {
            return;
        }
        let old: Result<Vec<String>, _> = redis::cmd("ZRANGE")
            .arg(&index)
            .arg(0)
            .arg(n - DEAD_LETTER_CAP_PER_WEBHOOK - 1)
            .query_async(&mut c)
            .await;
        if let Ok(old) = old {
            let mut b = Batch::new();
            self.remove_dead_letters(&mut b, webhook_id, &old);
            let _ = self.run(b, false).await;
        }
    }

    /// Forget dead letters of one webhook: its entries and index, and the global index.
    fn remove_dead_letters(&self, b: &mut Batch, webhook_id: &str, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        b.ignored("HDEL", &self.keys.dead_letters_of_entries(webhook_id))
            .arg(ids);
        b.ignored("ZREM", &self.keys.dead_letters_of(webhook_id))
            .arg(ids);
        self.unindex_dead_letters(b, ids);
    }

    /// Take dead letters out of the installation-wide index: their shards', and the
    /// previous layout's single index, which may still list them.
    fn unindex_dead_letters(&self, b: &mut Batch, ids: &[String]) {
        for (shard, ids) in by_shard(ids, |id| self.keys.dead_letter_shard(id)) {
            b.ignored("ZREM", &self.keys.dead_letters_index(shard))
                .arg(&ids);
            b.ignored("HDEL", &self.keys.dead_letter_owners(shard))
                .arg(&ids);
        }
        let legacy = self.keys.legacy();
        b.ignored("ZREM", &legacy.dead_letters_index).arg(ids);
        b.ignored("HDEL", &legacy.dead_letter_owners).arg(ids);
    }

    /// The webhook that holds each dead letter: its shard's owner hash, else the previous
    /// layout's single one (until the scheduler has moved it).
    async fn dead_letter_owners(&self, ids: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let legacy = self.keys.legacy();
        let mut b = Batch::new();
        for id in ids {
            let shard = self.keys.dead_letter_shard(id);
            b.cmd("HGET", &self.keys.dead_letter_owners(shard)).arg(id);
        }
        b.cmd("HMGET", &legacy.dead_letter_owners).arg(ids);
        let mut replies = self.run(b, false).await?;
        let old: Vec<Option<String>> = from(replies.pop())?;
        replies
            .into_iter()
            .zip(old)
            .map(|(v, old)| Ok(from::<Option<String>>(Some(v))?.or(old)))
            .collect()
    }

    /// An attempt's keys: its webhook's statistics, the hour's counters, the attempt log.
    fn attempt_keys(&self, a: &AttemptRecord) -> [String; 3] {
        [
            self.keys.webhook_stats(&a.webhook_id),
            self.keys
                .webhook_hour(&a.webhook_id, a.at.timestamp() / 3600),
            self.keys.attempts(&a.webhook_id),
        ]
    }

    /// Successful attempts of one webhook in one hour (a run of `AttemptCalls`), in one call.
    fn add_delivered(&self, b: &mut Batch, attempts: &[&AttemptRecord]) {
        let Some(last) = attempts.iter().max_by_key(|a| a.at) else {
            return;
        };
        let [stats, bucket, log] = self.attempt_keys(attempts[0]);
        let call = b
            .script(&self.delivered, &[&stats, &bucket, &log])
            .arg(last.status.map(|s| s.to_string()).unwrap_or_default())
            .arg(last.at.timestamp_millis())
            .arg(ATTEMPT_LOG_CAP)
            .arg(attempts.iter().filter(|a| a.attempt > 1).count())
            .arg(HOUR_BUCKET_TTL_SECS);
        for a in attempts {
            call.arg(attempt_json(a));
        }
    }

    fn add_attempt(&self, b: &mut Batch, a: &AttemptRecord, ok: bool) {
        let json = attempt_json(a);
        let status = a.status.map(|s| s.to_string()).unwrap_or_default();
        let [stats, bucket, log] = self.attempt_keys(a);
        b.script(&self.attempt, &[&stats, &bucket, &log])
            .arg(if ok { "1" } else { "0" })
            .arg(status)
            .arg(a.at.timestamp_millis())
            .arg(json)
            .arg(ATTEMPT_LOG_CAP)
            .arg(if a.attempt > 1 { "1" } else { "0" })
            .arg(HOUR_BUCKET_TTL_SECS);
    }

    /// A job and its place in its shard's schedule, the body first.
    fn add_job(&self, b: &mut Batch, job: &Job, due: DateTime<Utc>) -> Result<(), StoreError> {
        let json = serde_json::to_string(job).map_err(corrupt)?;
        let shard = self.keys.retry_shard(&job.id);
        b.ignored("HSET", &self.keys.retry_jobs(shard))
            .arg(&job.id)
            .arg(json);
        b.ignored("ZADD", &self.keys.retry_schedule(shard))
            .arg(due.timestamp_millis())
            .arg(&job.id);
        Ok(())
    }

    /// The entry, its webhook's index, and the global index with the entry's owner.
    fn add_dead_letter(&self, b: &mut Batch, dl: &DeadLetter) {
        let json = serde_json::to_string(dl).unwrap_or_default();
        let score = dl.failed_at.timestamp_millis();
        b.ignored("HSET", &self.keys.dead_letters_of_entries(&dl.webhook_id))
            .arg(&dl.id)
            .arg(json);
        b.ignored("ZADD", &self.keys.dead_letters_of(&dl.webhook_id))
            .arg(score)
            .arg(&dl.id);
        self.index_dead_letter(b, &dl.id, score, &dl.webhook_id);
    }

    /// List a dead letter in the installation-wide index (its shard's), with its owner.
    fn index_dead_letter(&self, b: &mut Batch, id: &str, score: i64, owner: &str) {
        let shard = self.keys.dead_letter_shard(id);
        b.ignored("ZADD", &self.keys.dead_letters_index(shard))
            .arg(score)
            .arg(id);
        b.ignored("HSET", &self.keys.dead_letter_owners(shard))
            .arg(id)
            .arg(owner);
    }

    /// A target's state: its entry, to fold into the event's marker when delivered (the
    /// caller folds the entries of one event in one call, see `add_folds`), else set in
    /// its targets hash (for as long as a retry schedule can run).
    fn add_state(&self, b: &mut Batch, r: &TargetResult, state: &TargetState) -> Option<String> {
        if let TargetState::Delivered { .. } = state {
            if let Some(entry) = marker::delivered_entry(&r.webhook_id, None, Utc::now()) {
                // A retry's state gives way to the folded delivery (reads prefer the fold;
                // this keeps the hash from holding it for two weeks). A first attempt has
                // no state to remove.
                if r.attempt.as_ref().is_none_or(|a| a.attempt > 1) {
                    b.ignored("HDEL", &self.keys.targets(&r.event_id))
                        .arg(&r.webhook_id);
                }
                return Some(entry);
            }
        }
        self.set_target_state(b, &r.event_id, &r.webhook_id, state);
        None
    }

    /// One fold per event of `folds` (its results in order, with their entries); the
    /// batch's replies to them are `f` or `n`, in the same order.
    /// The folds' script calls; returns, per call, the folds it holds (their indexes).
    fn add_folds(&self, b: &mut Batch, folds: &[Fold<'_>]) -> Vec<Vec<usize>> {
        let now = Utc::now();
        let buckets: Vec<Vec<String>> = folds
            .iter()
            .map(|f| {
                let first = f.results[0];
                self.marker_buckets(&first.event_id, first.received_at, now)
            })
            .collect();
        let groups = self.script_groups(buckets.iter().map(|b| b[0].as_str()));
        for group in &groups {
            let keys: Vec<&str> = group
                .iter()
                .flat_map(|&i| buckets[i].iter().map(String::as_str))
                .collect();
            let call = b.script(&self.fold, &keys).arg(now.timestamp_millis());
            for &i in group {
                let f = &folds[i];
                call.arg(&f.results[0].event_id)
                    .arg(buckets[i].len())
                    .arg(f.entries.len());
                for entry in &f.entries {
                    call.arg(entry);
                }
            }
        }
        groups
    }

    /// A target's state in its event's targets hash, kept as long as a retry schedule runs.
    fn set_target_state(
        &self,
        b: &mut Batch,
        event_id: &str,
        webhook_id: &str,
        state: &TargetState,
    ) {
        let targets = self.keys.targets(event_id);
        b.ignored("HSET", &targets)
            .arg(webhook_id)
            .arg(state.encode());
        b.ignored("EXPIRE", &targets).arg(TARGETS_TTL_SECS);
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

    /// Load every script the batches use by hash (on a cluster, on every node). Every new
    /// connection loads them before its first request too (`redis_conn`), so that a batch
    /// meets `NOSCRIPT` only after a `SCRIPT FLUSH` (or a cluster failover), not after a
    /// Redis restart: a batch that meets it is run again whole.
    async fn load_scripts(&self) -> redis::RedisResult<()> {
        super::redis_conn::load_scripts(&mut self.conn()).await
    }

    /// Read an event's marker, from whichever of the window's buckets holds it (or the
    /// previous layout's key), and its targets hash: one round trip (two slots on a
    /// cluster). `Some(&[])` reads the marker only.
    async fn event_state(
        &self,
        event_id: &str,
        webhook_ids: Option<&[&str]>,
        received_at: Option<DateTime<Utc>>,
    ) -> Result<(Option<marker::Marker>, Value), StoreError> {
        let now = Utc::now();
        let legacy = self.legacy_dedup_until().await? > now.timestamp_millis();
        let buckets = self.marker_buckets(event_id, received_at, now);
        let mut b = Batch::new();
        for bucket in &buckets {
            b.cmd("HGET", bucket).arg(event_id);
        }
        if legacy {
            b.cmd("GET", &self.keys.legacy_dedup(event_id));
        }
        let targets = self.keys.targets(event_id);
        match webhook_ids {
            Some([]) => {}
            Some(ids) => {
                b.cmd("HMGET", &targets).arg(ids);
            }
            None => {
                b.cmd("HGETALL", &targets);
            }
        }
        let mut replies = self.run(b, false).await?;
        let targets = if webhook_ids.is_some_and(<[&str]>::is_empty) {
            Value::Nil
        } else {
            replies.pop().unwrap_or(Value::Nil)
        };
        // A bucket's accepted entry over anything else (a claim left by a crashed request
        // in another slot's bucket).
        let found: Vec<String> = replies
            .into_iter()
            .filter_map(|v| from::<Option<String>>(Some(v)).ok().flatten())
            .collect();
        let raw = found
            .iter()
            .find(|m| !m.starts_with(marker::IN_PROGRESS))
            .or(found.first());
        Ok((raw.and_then(|r| marker::parse(r)), targets))
    }

    /// Move what the previous key layout holds (one retry schedule and one dead-letter hash
    /// for the whole installation) into the sharded layout. Safe to run from several
    /// processes at once: a job or dead letter keeps its id, so it lands on the same key
    /// whoever moves it, and it leaves the old key only after it is in the new one. Returns
    /// how many records were moved.
    /// The target states the previous layout kept (`<prefix>:targets:<event id>`, a hash of
    /// webhook id → state) for these (event, webhook) pairs.
    async fn legacy_target_states<'a>(
        &self,
        targets: impl Iterator<Item = &'a (String, String)>,
    ) -> Result<Vec<Option<String>>, StoreError> {
        let mut pipe = redis::pipe();
        let mut n = 0;
        for (event_id, webhook_id) in targets {
            pipe.cmd("HGET")
                .arg(format!("{}:targets:{}", self.keys.prefix(), event_id))
                .arg(webhook_id);
            n += 1;
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut c = self.conn();
        pipe.query_async(&mut c).await.map_err(unavailable)
    }

    /// A target state moved from the previous layout, unless the new layout already has one
    /// (written since by a dispatcher of this release).
    fn add_moved_state(&self, b: &mut Batch, event_id: &str, webhook_id: &str, state: &str) {
        let targets = self.keys.targets(event_id);
        b.ignored("HSETNX", &targets).arg(webhook_id).arg(state);
        b.ignored("EXPIRE", &targets).arg(TARGETS_TTL_SECS);
    }

    pub async fn migrate_legacy(&self) -> Result<u64, StoreError> {
        let legacy = self.keys.legacy();
        let mut moved = 0u64;
        loop {
            let mut c = self.conn();
            let (scheduled, leased): (Vec<(String, f64)>, Vec<String>) = redis::pipe()
                .cmd("ZRANGE")
                .arg(&legacy.retry_schedule)
                .arg(0)
                .arg(499)
                .arg("WITHSCORES")
                .cmd("ZRANGE")
                .arg(&legacy.retry_leases)
                .arg(0)
                .arg(499)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            let now = Utc::now().timestamp_millis() as f64;
            let due: Vec<(String, f64)> = scheduled
                .into_iter()
                .chain(leased.into_iter().map(|id| (id, now)))
                .collect();
            if due.is_empty() {
                break;
            }
            let ids: Vec<&String> = due.iter().map(|(id, _)| id).collect();
            let bodies: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(&legacy.retry_jobs)
                .arg(&ids)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            // Each job's target state moves with it: the dispatcher runs a retry only while
            // its target's state points at it, and reads states only in the new layout.
            let targets: Vec<Option<(String, String)>> = bodies
                .iter()
                .map(|b| {
                    b.as_deref()
                        .and_then(|b| serde_json::from_str::<Job>(b).ok())
                        .map(|j| (j.event_id, j.webhook_id))
                })
                .collect();
            let states = self.legacy_target_states(targets.iter().flatten()).await?;
            let mut b = Batch::new();
            for ((event_id, webhook_id), state) in targets.iter().flatten().zip(&states) {
                if let Some(state) = state {
                    self.add_moved_state(&mut b, event_id, webhook_id, state);
                }
            }
            for ((id, score), body) in due.iter().zip(&bodies) {
                let Some(body) = body else { continue };
                let shard = self.keys.retry_shard(id);
                b.ignored("HSET", &self.keys.retry_jobs(shard))
                    .arg(id)
                    .arg(body);
                b.ignored("ZADD", &self.keys.retry_schedule(shard))
                    .arg(*score as i64)
                    .arg(id);
            }
            self.run(b, true).await?;
            remove_ids(
                &mut c,
                &[
                    ("ZREM", &legacy.retry_schedule),
                    ("ZREM", &legacy.retry_leases),
                    ("HDEL", &legacy.retry_jobs),
                ],
                &ids,
            )
            .await?;
            moved += ids.len() as u64;
        }
        loop {
            let mut c = self.conn();
            let (_, page): (u64, Vec<String>) = redis::cmd("HSCAN")
                .arg(&legacy.dead_letters)
                .arg(0)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            if page.is_empty() {
                break;
            }
            let letters: Vec<Option<DeadLetter>> = page
                .chunks(2)
                .map(|pair| pair.get(1).and_then(|j| serde_json::from_str(j).ok()))
                .collect();
            let targets: Vec<(String, String)> = letters
                .iter()
                .flatten()
                .map(|dl| (dl.event_id.clone(), dl.webhook_id.clone()))
                .collect();
            let states = self.legacy_target_states(targets.iter()).await?;
            let mut b = Batch::new();
            for ((event_id, webhook_id), state) in targets.iter().zip(&states) {
                if let Some(state) = state {
                    self.add_moved_state(&mut b, event_id, webhook_id, state);
                }
            }
            let mut ids = Vec::with_capacity(page.len() / 2);
            for pair in page.chunks(2) {
                let [id, json] = pair else { continue };
                if let Ok(dl) = serde_json::from_str::<DeadLetter>(json) {
                    self.add_dead_letter(&mut b, &dl);
                    b.ignored(
                        "DEL",
                        &format!("{{{}:dlq}}:webhook:{}", self.keys.prefix(), dl.webhook_id),
                    );
                } else {
                    tracing::error!(dead_letter_id = %id, "an old dead letter cannot be read; leaving it where it is");
                    continue;
                }
                ids.push(id.clone());
            }
            if ids.is_empty() {
                break;
            }
            self.run(b, true).await?;
            redis::cmd("HDEL")
                .arg(&legacy.dead_letters)
                .arg(&ids)
                .query_async::<()>(&mut c)
                .await
                .map_err(unavailable)?;
            moved += ids.len() as u64;
        }
        moved += self.shard_dead_letter_index().await?;
        if moved > 0 {
            tracing::info!(
                records = moved,
                "moved retry jobs and dead letters to the sharded key layout"
            );
        }
        Ok(moved)
    }
}

impl RedisStore {
    /// Move the previous layout's single dead-letter index and owner hash (`{<prefix>:dlq}`)
    /// into their shards, 500 at a time: each entry is in its shard before it leaves the old
    /// keys, and reads merge both meanwhile. Returns how many were moved.
    async fn shard_dead_letter_index(&self) -> Result<u64, StoreError> {
        let legacy = self.keys.legacy();
        let mut moved = 0u64;
        loop {
            let mut c = self.conn();
            let page: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(&legacy.dead_letters_index)
                .arg(0)
                .arg(499)
                .arg("WITHSCORES")
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            if page.is_empty() {
                return Ok(moved);
            }
            let ids: Vec<String> = page.iter().map(|(id, _)| id.clone()).collect();
            let owners: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(&legacy.dead_letter_owners)
                .arg(&ids)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            let mut b = Batch::new();
            for ((id, score), owner) in page.iter().zip(&owners) {
                // An id without an owner cannot be read any more: it is only dropped.
                let Some(owner) = owner else { continue };
                // Scores are milliseconds, read back as doubles.
                self.index_dead_letter(&mut b, id, *score as i64, owner);
            }
            if !b.is_empty() {
                self.run(b, true).await?;
            }
            remove_ids(
                &mut c,
                &[
                    ("ZREM", &legacy.dead_letters_index),
                    ("HDEL", &legacy.dead_letter_owners),
                ],
                &ids,
            )
            .await?;
            moved += ids.len() as u64;
        }
    }
}

/// Remove every retry job of a deleted webhook from every shard of the schedule.
async fn purge_jobs(mut conn: AnyConn, keys: Keys, webhook_id: String) {
    let mut removed = 0usize;
    for shard in 0..RETRY_SHARDS {
        let jobs_key = keys.retry_jobs(shard);
        let mut cursor = 0u64;
        loop {
            let page: Result<(u64, Vec<String>), _> = redis::cmd("HSCAN")
                .arg(&jobs_key)
                .arg(cursor)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await;
            let Ok((next, pairs)) = page else {
                tracing::warn!(webhook_id = %webhook_id, "could not scan the retry schedule for a deleted webhook's jobs; they are dropped when due");
                return;
            };
            let ids: Vec<&String> = pairs
                .chunks(2)
                .filter_map(|pair| match pair {
                    [id, json] => serde_json::from_str::<Job>(json)
                        .ok()
                        .filter(|j| j.webhook_id == webhook_id)
                        .map(|_| id),
                    _ => None,
                })
                .collect();
            if !ids.is_empty() {
                let gone: Result<(), _> = redis::pipe()
                    .cmd("ZREM")
                    .arg(keys.retry_schedule(shard))
                    .arg(&ids)
                    .ignore()
                    .cmd("ZREM")
                    .arg(keys.retry_leases(shard))
                    .arg(&ids)
                    .ignore()
                    .cmd("HDEL")
                    .arg(&jobs_key)
                    .arg(&ids)
                    .ignore()
                    .query_async(&mut conn)
                    .await;
                if gone.is_ok() {
                    removed += ids.len();
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    if removed > 0 {
        tracing::info!(webhook_id = %webhook_id, jobs = removed, "removed the retry jobs of a deleted webhook");
    }
}

/// Write the minute counters once a second, off the delivery path: they feed the dashboard's
/// overview, so one `HINCRBY` per key and second replaces two commands per recorded message.
/// Counts that cannot be written are kept for the next try (a write that broke off part-way
/// may then count some twice); a process that stops loses at most its last second of them.
/// They are statistics for a chart: the per-webhook statistics are written with each attempt.
/// Ends when the store is dropped.
async fn flush_minutes(pending: Weak<Mutex<PendingMinutes>>, conn: AnyConn, keys: Keys) {
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
        let mut b = Batch::new();
        for (&(minute, field), &n) in &batch {
            let key = keys.minute_counts(minute);
            b.ignored("HINCRBY", &key).arg(field).arg(n);
            b.ignored("EXPIRE", &key).arg(MINUTE_BUCKET_TTL_SECS);
        }
        let sent = b.run(&conn, None, || async { Ok(()) }).await;
        if let Err(e) = sent {
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
    /// A write, not a `PING`: at `maxmemory` (noeviction), read-only or out of disk, Redis
    /// still answers a `PING` while every write of the accept path fails.
    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        redis::cmd("SET")
            .arg(self.keys.ready_probe())
            .arg(chrono::Utc::now().timestamp_millis())
            .arg("PX")
            .arg(60_000)
            .query_async::<Value>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn claim_events(
        &self,
        ids: &[String],
        token: &str,
        at: DateTime<Utc>,
    ) -> Result<(Vec<Claim>, u64), StoreError> {
        let now = Utc::now();
        let claim = marker::claim(
            token,
            now + chrono::Duration::seconds(CLAIM_TTL_SECS as i64),
        );
        let expiry = Self::bucket_expiry(dedup_slot(at), self.window);
        let legacy = self.legacy_dedup_until().await? > now.timestamp_millis();
        let buckets: Vec<Vec<String>> = ids.iter().map(|id| self.dedup_buckets(id, at)).collect();
        let groups = self.script_groups(buckets.iter().map(|b| b[0].as_str()));
        let per_id = buckets.first().map_or(0, Vec::len);
        let mut b = Batch::new();
        for group in &groups {
            let keys: Vec<&str> = group
                .iter()
                .flat_map(|&i| buckets[i].iter().map(String::as_str))
                .collect();
            let call = b
                .script(&self.dedup_claim, &keys)
                .arg(per_id)
                .arg(&claim)
                .arg(now.timestamp_millis())
                .arg(expiry);
            for &i in group {
                call.arg(&ids[i]);
            }
        }
        if legacy {
            for id in ids {
                b.cmd("GET", &self.keys.legacy_dedup(id));
            }
        }
        b.cmd("GET", &self.keys.webhooks_version());
        let mut replies = self.run(b, false).await?;
        let version: Option<u64> = from(replies.pop())?;
        let of = |previous: Option<String>| match previous.as_deref() {
            None => Claim::New,
            Some(marker::RECLAIMED) => Claim::Reclaimed,
            Some(p) if p.starts_with(marker::IN_PROGRESS) => Claim::InProgress,
            Some(_) => Claim::Duplicate,
        };
        // Each group's reply holds one entry per id of the group, in order: what held it,
        // or empty when the claim is this request's.
        let mut previous: Vec<Option<String>> = vec![None; ids.len()];
        let mut replies = replies.into_iter();
        for group in &groups {
            let held: Vec<String> = from(replies.next())?;
            if held.len() != group.len() {
                return Err(StoreError::Corrupt(format!(
                    "a claim of {} ids answered {}",
                    group.len(),
                    held.len()
                )));
            }
            for (&i, h) in group.iter().zip(held) {
                previous[i] = (!h.is_empty()).then_some(h);
            }
        }
        let mut claims = Vec::with_capacity(ids.len());
        let mut undo = Vec::new();
        for (id, previous) in ids.iter().zip(previous) {
            let mut claim = of(previous);
            if legacy {
                let old = of(from(replies.next())?);
                let ours = matches!(claim, Claim::New | Claim::Reclaimed);
                if ours && old != Claim::New {
                    // Accepted before the upgrade: this claim is given back.
                    undo.push(id.clone());
                    claim = old;
                } else if ours {
                    // The previous layout deleted released claims: nothing says whether
                    // one was, so every claim in the upgrade's window is checked.
                    claim = Claim::Reclaimed;
                }
            }
            claims.push(claim);
        }
        if !undo.is_empty() {
            self.release_claims(&undo, token, at, false).await?;
        }
        Ok((claims, version.unwrap_or(0)))
    }

    async fn confirm_events(
        &self,
        events: &[EventInfo],
        window: Duration,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let buckets: Vec<String> = events
            .iter()
            .map(|e| self.keys.dedup_bucket_at(&e.id, e.received_at))
            .collect();
        let mut b = Batch::new();
        for group in self.script_groups(buckets.iter().map(String::as_str)) {
            let keys: Vec<&str> = group.iter().map(|&i| buckets[i].as_str()).collect();
            let call = b.script(&self.confirm, &keys);
            for &i in &group {
                let e = &events[i];
                call.arg(&e.id)
                    .arg(marker::accepted(e))
                    .arg(Self::bucket_expiry(dedup_slot(e.received_at), window));
            }
        }
        self.run(b, true).await.map(|_| ())
    }

    async fn release_events(
        &self,
        ids: &[String],
        token: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.release_claims(ids, token, at, true).await
    }

    async fn event_info(&self, id: &str) -> Result<Option<EventInfo>, StoreError> {
        let (marker, _) = self.event_state(id, Some(&[]), None).await?;
        Ok(marker.and_then(|m| m.info).map(|info| EventInfo {
            id: id.to_owned(),
            ..info
        }))
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
        // One bad record never fails the load (nor stalls a dispatcher): it is set aside,
        // counted and shown (`invalid_webhooks`), and the rest load.
        self.invalid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|id, _| raw.contains_key(id));
        let mut hooks: Vec<Webhook> = raw
            .iter()
            .filter_map(|(id, json)| self.usable(id, json))
            .collect();
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
        Ok(self
            .change_webhook(&webhook.id, Some((&webhook.name, &json)), None)
            .await?
            .0)
    }

    async fn name_holder(
        &self,
        name: &str,
        except: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let mut c = self.conn();
        let holder: String = NAME_HOLDER
            .key(self.keys.webhooks())
            .key(self.keys.webhook_names())
            .key(self.keys.webhook_names_shared())
            .arg(name)
            .arg(except.unwrap_or_default())
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok((!holder.is_empty()).then_some(holder))
    }

    async fn update_webhook(&self, updated: &Webhook, read: &Webhook) -> Result<u64, StoreError> {
        let updated = &super::stamped_after(updated, read);
        let json = serde_json::to_string(&self.seal(updated)).map_err(corrupt)?;
        let expected = serde_json::to_value(read.updated_at).map_err(corrupt)?;
        let expected = expected.as_str().unwrap_or_default();
        Ok(self
            .change_webhook(&updated.id, Some((&updated.name, &json)), Some(expected))
            .await?
            .0)
    }

    fn invalid_webhooks(&self) -> Vec<super::InvalidWebhook> {
        self.invalid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(id, reason)| super::InvalidWebhook {
                id: id.clone(),
                reason: reason.clone(),
            })
            .collect()
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        if !self.change_webhook(id, None, None).await?.1 {
            return Ok(false);
        }
        let mut c = self.conn();
        // What the webhook leaves behind goes with it: its counters, hourly buckets, attempt
        // log, rate bucket and dead letters, and (in the background, as they are found by a
        // scan of the schedule) its retry jobs. A job the scan has not reached yet is dropped
        // by the dispatcher when it comes due, since its webhook is gone.
        tokio::spawn(purge_jobs(self.conn(), self.keys.clone(), id.to_owned()));
        let dead: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.keys.dead_letters_of(id))
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let mut b = Batch::new();
        self.remove_dead_letters(&mut b, id, &dead);
        let hour = Utc::now().timestamp() / 3600;
        let mut keys = vec![
            self.keys.webhook_stats(id),
            self.keys.attempts(id),
            self.keys.rate_bucket(id),
            self.keys.dead_letters_of(id),
            self.keys.dead_letters_of_entries(id),
        ];
        keys.extend((hour - 26..=hour + 1).map(|h| self.keys.webhook_hour(id, h)));
        // One slot (the webhook's tag), so one multi-key DEL.
        b.ignored("DEL", &keys[0]).arg(&keys[1..]);
        self.run(b, false).await?;
        Ok(true)
    }

    async fn target_states(
        &self,
        event_id: &str,
        webhook_ids: &[&str],
        received_at: Option<DateTime<Utc>>,
    ) -> Result<Vec<Option<TargetState>>, StoreError> {
        if webhook_ids.is_empty() {
            return Ok(Vec::new());
        }
        let (marker, targets) = self
            .event_state(event_id, Some(webhook_ids), received_at)
            .await?;
        let raw: Vec<Option<String>> = from(Some(targets))?;
        let received = marker
            .as_ref()
            .and_then(|m| m.info.as_ref())
            .map(|i| i.received_at);
        Ok(webhook_ids
            .iter()
            .zip(raw)
            .map(|(id, s)| {
                let folded = marker
                    .as_ref()
                    .and_then(|m| m.delivered.iter().find(|(w, _)| w == id));
                match folded {
                    Some((_, at)) => Some(TargetState::Delivered {
                        at: at.or(received).unwrap_or_else(Utc::now),
                    }),
                    None => s.and_then(|s| TargetState::decode(&s)),
                }
            })
            .collect())
    }

    async fn all_target_states(
        &self,
        event_id: &str,
    ) -> Result<HashMap<String, TargetState>, StoreError> {
        let (marker, targets) = self.event_state(event_id, None, None).await?;
        let raw: HashMap<String, String> = from(Some(targets))?;
        let mut out: HashMap<String, TargetState> = raw
            .into_iter()
            .filter_map(|(k, v)| TargetState::decode(&v).map(|s| (k, s)))
            .collect();
        if let Some(m) = marker {
            let received = m.info.as_ref().map(|i| i.received_at);
            for (id, at) in m.delivered {
                out.insert(
                    id,
                    TargetState::Delivered {
                        at: at.or(received).unwrap_or_else(Utc::now),
                    },
                );
            }
        }
        Ok(out)
    }

    async fn record(&self, results: &[TargetResult]) -> Result<Vec<Option<Health>>, StoreError> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        // The outcome first, then the state that points at it: if the connection drops (or a
        // process dies) halfway, a state never points at a job or dead letter that was not
        // written. One Redis runs one batch in order, so there the states follow in the same
        // batch; on a cluster the two are different slots, so a message with a retry or a
        // dead letter takes two batches; one whose targets were all delivered takes one. The
        // attempt's statistics go in the first, so every attempt counts in its webhook's
        // failure streak in the order it was made (a failure recorded a round trip later than
        // the successes around it would make streaks out of nothing).
        let now = Utc::now();
        let two_steps = !self.in_order()
            && results.iter().any(|r| {
                matches!(
                    r.outcome,
                    Outcome::Retry { .. } | Outcome::Dead(_) | Outcome::DeadAside(_)
                )
            });
        let mut first = Batch::new();
        let mut second = Batch::new();
        let mut has_attempt = Vec::with_capacity(results.len());
        let mut attempts = AttemptCalls::default();
        let mut dead_for: Vec<&str> = Vec::new();
        // The deliveries each batch folds into markers, one fold per event, in order.
        let mut folds: [Vec<Fold<'_>>; 2] = [Vec::new(), Vec::new()];
        for r in results {
            let state = match &r.outcome {
                Outcome::Delivered => Some(TargetState::Delivered { at: now }),
                Outcome::Retry { job, due } => {
                    self.add_job(&mut first, job, *due)?;
                    Some(TargetState::Retrying {
                        attempt: job.attempt,
                        due: *due,
                        job_id: job.id.clone(),
                    })
                }
                Outcome::Dead(dl) => {
                    self.add_dead_letter(&mut first, dl);
                    dead_for.push(&dl.webhook_id);
                    Some(TargetState::Dead {
                        dead_letter_id: dl.id.clone(),
                    })
                }
                Outcome::DeadAside(dl) => {
                    self.add_dead_letter(&mut first, dl);
                    dead_for.push(&dl.webhook_id);
                    // Points at it unless an automatic retry is pending (checked in Redis).
                    let states = if two_steps { &mut second } else { &mut first };
                    let state = TargetState::Dead {
                        dead_letter_id: dl.id.clone(),
                    };
                    b_set_unless_retrying(states, &self.keys.targets(&r.event_id), r, &state);
                    None
                }
                Outcome::Untouched => None,
            };
            let ok = matches!(r.outcome, Outcome::Delivered);
            if let Some(a) = &r.attempt {
                attempts.add(a, ok);
            }
            has_attempt.push(r.attempt.as_ref().map(|_| ok));
            if let Some(state) = state {
                let states = if two_steps { &mut second } else { &mut first };
                if let Some(entry) = self.add_state(states, r, &state) {
                    let event_folds = &mut folds[usize::from(two_steps)];
                    match event_folds.iter_mut().find(|f| {
                        f.results[0].event_id == r.event_id
                            && f.results[0].received_at == r.received_at
                    }) {
                        Some(f) => {
                            f.results.push(r);
                            f.entries.push(entry);
                        }
                        None => event_folds.push(Fold {
                            results: vec![r],
                            entries: vec![entry],
                        }),
                    }
                }
            }
        }
        for call in &attempts.calls {
            match call {
                AttemptCall::Failed(a) => self.add_attempt(&mut first, a, false),
                AttemptCall::Delivered(group) => self.add_delivered(&mut first, group),
            }
        }
        // Where each batch's fold replies start among its kept replies, and which folds each
        // of its fold calls holds.
        let fold_at = [first.kept(), second.kept()];
        let fold_calls = [
            self.add_folds(&mut first, &folds[0]),
            self.add_folds(&mut second, &folds[1]),
        ];
        // The replies kept: the states set unless retrying (integers) and the attempt
        // scripts' (arrays for failures, in order), then the fold calls' (`f` or `n` a fold).
        let replies = self.run(first, true).await?;
        let second_replies = if second.is_empty() {
            Vec::new()
        } else {
            self.run(second, true).await?
        };
        // Per fold, whether a bucket held its event; a reply that cannot be read counts as
        // not folded, which keeps the targets-hash entries (more writes, nothing lost).
        let folded = |batch: usize, replies: &[Value]| -> Vec<bool> {
            let mut ok = vec![false; folds[batch].len()];
            let calls = replies.get(fold_at[batch]..).unwrap_or_default();
            for (call, reply) in fold_calls[batch].iter().zip(calls) {
                let answers = Vec::<String>::from_redis_value(reply).unwrap_or_default();
                for (&i, answer) in call.iter().zip(answers) {
                    ok[i] = answer == "f";
                }
            }
            ok
        };
        // A delivery whose event no bucket holds any longer keeps a targets-hash entry.
        let mut unfolded = Batch::new();
        for (batch, replies) in [&replies, &second_replies].into_iter().enumerate() {
            for (f, ok) in folds[batch].iter().zip(folded(batch, replies)) {
                if !ok {
                    let state = TargetState::Delivered { at: now };
                    for r in &f.results {
                        self.set_target_state(&mut unfolded, &r.event_id, &r.webhook_id, &state);
                    }
                }
            }
        }
        if !unfolded.is_empty() {
            self.run(unfolded, true).await?;
        }
        let mut streaks = replies
            .into_iter()
            .take(fold_at[0])
            .filter_map(|v| match v {
                Value::Array(_) => <(u64, String)>::from_owned_redis_value(v).ok(),
                _ => None,
            });
        self.count_minutes(results);
        dead_for.sort_unstable();
        dead_for.dedup();
        for webhook_id in dead_for {
            self.trim_dead_letters(webhook_id).await;
        }
        // A success resets its webhook's streak; a failure's streak is what its script saw.
        Ok(has_attempt
            .into_iter()
            .map(|attempt| match attempt {
                None => None,
                Some(true) => Some(Health {
                    consecutive_failures: 0,
                    failing_since: None,
                }),
                Some(false) => streaks.next().map(|(streak, since)| Health {
                    consecutive_failures: streak,
                    failing_since: since.parse().ok().and_then(millis),
                }),
            })
            .collect())
    }

    async fn schedule_job(&self, job: &Job, due: DateTime<Utc>) -> Result<(), StoreError> {
        let mut b = Batch::new();
        self.add_job(&mut b, job, due)?;
        self.run(b, true).await.map(|_| ())
    }

    async fn claim_due_jobs(&self, limit: usize, lease: Duration) -> Result<Vec<Job>, StoreError> {
        let now = Utc::now().timestamp_millis();
        let mut b = Batch::new();
        for shard in 0..RETRY_SHARDS {
            let schedule = self.keys.retry_schedule(shard);
            let leases = self.keys.retry_leases(shard);
            let jobs = self.keys.retry_jobs(shard);
            b.script(&self.claim, &[&schedule, &leases, &jobs])
                .arg(now)
                .arg(lease.as_millis() as u64)
                .arg(limit.max(1));
        }
        let replies = self.run(b, false).await?;
        let mut jobs = Vec::new();
        let mut orphans = Vec::new();
        for reply in replies {
            let pairs: Vec<String> = from(Some(reply))?;
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
        }
        if !orphans.is_empty() {
            self.complete_jobs(&orphans).await?;
        }
        Ok(jobs)
    }

    async fn complete_jobs(&self, ids: &[String]) -> Result<(), StoreError> {
        let mut b = Batch::new();
        for (shard, ids) in by_shard(ids, |id| self.keys.retry_shard(id)) {
            let leases = self.keys.retry_leases(shard);
            let schedule = self.keys.retry_schedule(shard);
            let jobs = self.keys.retry_jobs(shard);
            b.script(&self.complete, &[&leases, &schedule, &jobs])
                .arg(&ids);
        }
        self.run(b, false).await.map(|_| ())
    }

    async fn release_jobs(&self, ids: &[String]) -> Result<(), StoreError> {
        let now = Utc::now().timestamp_millis();
        let mut b = Batch::new();
        for (shard, ids) in by_shard(ids, |id| self.keys.retry_shard(id)) {
            // Back in the schedule first, then out of the lease: never in neither.
            let add = b.ignored("ZADD", &self.keys.retry_schedule(shard));
            for id in &ids {
                add.arg(now).arg(*id);
            }
            b.ignored("ZREM", &self.keys.retry_leases(shard)).arg(&ids);
        }
        self.run(b, false).await.map(|_| ())
    }

    async fn sweep_leases(&self) -> Result<u64, StoreError> {
        let now = Utc::now().timestamp_millis();
        let mut b = Batch::new();
        for shard in 0..RETRY_SHARDS {
            let leases = self.keys.retry_leases(shard);
            let schedule = self.keys.retry_schedule(shard);
            b.script(&self.sweep, &[&leases, &schedule]).arg(now);
        }
        let mut total = 0;
        for reply in self.run(b, false).await? {
            total += from::<u64>(Some(reply))?;
        }
        Ok(total)
    }

    async fn rescue_stranded_jobs(
        &self,
        suspects: &std::collections::HashSet<String>,
    ) -> Result<(std::collections::HashSet<String>, u64), StoreError> {
        let scan = redis::Script::new(STRANDED_SCAN_SCRIPT);
        let rescue = redis::Script::new(RESCUE_SCRIPT);
        let mut next = std::collections::HashSet::new();
        let mut rescued = 0u64;
        for shard in 0..RETRY_SHARDS {
            let jobs = self.keys.retry_jobs(shard);
            let schedule = self.keys.retry_schedule(shard);
            let leases = self.keys.retry_leases(shard);
            let mut cursor = "0".to_owned();
            let mut stranded = Vec::new();
            loop {
                let mut c = self.conn();
                let reply: Vec<String> = scan
                    .key(&jobs)
                    .key(&schedule)
                    .key(&leases)
                    .arg(&cursor)
                    .invoke_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                let mut reply = reply.into_iter();
                cursor = reply.next().unwrap_or_else(|| "0".to_owned());
                stranded.extend(reply);
                if cursor == "0" {
                    break;
                }
            }
            let (now, later): (Vec<String>, Vec<String>) =
                stranded.into_iter().partition(|id| suspects.contains(id));
            next.extend(later);
            if !now.is_empty() {
                let mut c = self.conn();
                let n: u64 = rescue
                    .key(&jobs)
                    .key(&schedule)
                    .key(&leases)
                    .arg(Utc::now().timestamp_millis())
                    .arg(&now)
                    .invoke_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                rescued += n;
            }
        }
        Ok((next, rescued))
    }

    async fn schedule_status(&self) -> Result<ScheduleStatus, StoreError> {
        let mut b = Batch::new();
        for shard in 0..RETRY_SHARDS {
            let schedule = self.keys.retry_schedule(shard);
            b.cmd("ZCARD", &schedule);
            b.cmd("ZCARD", &self.keys.retry_leases(shard));
            b.cmd("ZRANGE", &schedule).arg(0).arg(0).arg("WITHSCORES");
            b.cmd("ZRANGE", &self.keys.retry_leases(shard))
                .arg(0)
                .arg(0)
                .arg("WITHSCORES");
        }
        for shard in 0..DEAD_LETTER_SHARDS {
            b.cmd("ZCARD", &self.keys.dead_letters_index(shard));
        }
        b.cmd("ZCARD", &self.keys.legacy().dead_letters_index);
        let mut replies = self.run(b, false).await?;
        let mut dead = 0u64;
        for _ in 0..=DEAD_LETTER_SHARDS {
            dead += from::<u64>(replies.pop())?;
        }
        let (mut depth, mut leased) = (0u64, 0u64);
        let mut oldest: Option<f64> = None;
        let mut oldest_lease: Option<f64> = None;
        let mut replies = replies.into_iter();
        for _ in 0..RETRY_SHARDS {
            depth += from::<u64>(replies.next())?;
            leased += from::<u64>(replies.next())?;
            let first: Vec<(String, f64)> = from(replies.next())?;
            if let Some((_, due)) = first.first() {
                oldest = Some(oldest.map_or(*due, |o: f64| o.min(*due)));
            }
            let lease: Vec<(String, f64)> = from(replies.next())?;
            if let Some((_, until)) = lease.first() {
                oldest_lease = Some(oldest_lease.map_or(*until, |o: f64| o.min(*until)));
            }
        }
        let now = Utc::now().timestamp_millis() as f64;
        let past = |at: Option<f64>| at.map(|t| ((now - t) / 1000.0).max(0.0)).unwrap_or(0.0);
        let lag = past(oldest);
        Ok(ScheduleStatus {
            depth,
            leased,
            lag: Duration::from_secs_f64(lag),
            oldest_due_age: Duration::from_secs_f64(lag.max(past(oldest_lease))),
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
        let (ids, total, owners) = match webhook_id {
            Some(w) => {
                let index = self.keys.dead_letters_of(w);
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
                let owners = vec![Some(w.to_owned()); ids.len()];
                (ids, total, owners)
            }
            None => {
                let (ids, total) = self.newest_dead_letters(offset, limit).await?;
                let owners = self.dead_letter_owners(&ids).await?;
                (ids, total, owners)
            }
        };
        if ids.is_empty() || limit == 0 {
            return Ok(Page {
                items: Vec::new(),
                total,
            });
        }
        let mut b = Batch::new();
        for (id, owner) in ids.iter().zip(&owners) {
            if let Some(owner) = owner {
                b.cmd("HGET", &self.keys.dead_letters_of_entries(owner))
                    .arg(id);
            }
        }
        let raw = self.run(b, false).await?;
        let mut entries = Vec::with_capacity(raw.len());
        for v in raw {
            if let Some(json) = from::<Option<String>>(Some(v))? {
                entries.push(json);
            }
        }
        Ok(Page {
            items: parse_all(entries),
            total,
        })
    }

    async fn put_dead_letter(&self, dl: &DeadLetter) -> Result<(), StoreError> {
        let mut b = Batch::new();
        self.add_dead_letter(&mut b, dl);
        self.run(b, true).await?;
        self.trim_dead_letters(&dl.webhook_id).await;
        Ok(())
    }

    async fn take_dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let Some((owner, dl)) = self.read_dead_letter(id).await? else {
            return Ok(None);
        };
        let removed = self.remove_dead_letter(&owner, id).await?;
        // Two replays of one dead letter at once: only the one that removed it proceeds.
        Ok(removed.then_some(dl))
    }

    async fn put_replay_run(&self, run: &ReplayRun) -> Result<(), StoreError> {
        let json = serde_json::to_string(run).map_err(corrupt)?;
        let mut c = self.conn();
        redis::cmd("SET")
            .arg(self.keys.replay_run(&run.id))
            .arg(json)
            .arg("EX")
            .arg(86_400)
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn get_replay_run(&self, id: &str) -> Result<Option<ReplayRun>, StoreError> {
        let mut c = self.conn();
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.keys.replay_run(id))
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        raw.map(|j| serde_json::from_str(&j).map_err(corrupt))
            .transpose()
    }

    async fn replay_dead_letter(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let Some((owner, dl)) = self.read_dead_letter(id).await? else {
            return Ok(None);
        };
        // The job first, durably; then the dead letter goes. On a cluster the two live in
        // different slots, so no one script can do both: this order means an interruption
        // between them leaves both (the dispatcher then removes the dead letter), never
        // neither. The job's id is the dead letter's, so doing it twice schedules one job.
        let job = Job::replay(&dl);
        let mut b = Batch::new();
        self.add_job(&mut b, &job, Utc::now())?;
        self.run(b, true).await?;
        self.remove_dead_letter(&owner, id).await?;
        Ok(Some(job))
    }

    async fn webhook_stats(&self, webhook_ids: &[&str]) -> Result<Vec<WebhookStats>, StoreError> {
        if webhook_ids.is_empty() {
            return Ok(Vec::new());
        }
        let hour = Utc::now().timestamp() / 3600;
        let mut b = Batch::new();
        for id in webhook_ids {
            b.cmd("HGETALL", &self.keys.webhook_stats(id));
            for h in (hour - 23)..=hour {
                b.cmd("HMGET", &self.keys.webhook_hour(id, h))
                    .arg("s")
                    .arg("f");
            }
        }
        let mut replies = self.run(b, false).await?.into_iter();
        let mut out = Vec::with_capacity(webhook_ids.len());
        for _ in webhook_ids {
            let fields: HashMap<String, String> = replies
                .next()
                .and_then(|v| redis::from_owned_redis_value(v).ok())
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
                    .and_then(|v| redis::from_owned_redis_value(v).ok())
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
        let mut b = Batch::new();
        for minute in first..=last {
            b.cmd("HMGET", &self.keys.minute_counts(minute))
                .arg("delivered")
                .arg("retrying")
                .arg("dead");
        }
        let replies = self.run(b, false).await?;
        let mut out = Vec::with_capacity(replies.len());
        for (minute, v) in (first..=last).zip(replies) {
            let v: Vec<Option<u64>> = from(Some(v))?;
            let n = |i: usize| v.get(i).copied().flatten().unwrap_or(0);
            out.push(MinuteCounts {
                minute,
                delivered: n(0),
                retrying: n(1),
                dead: n(2),
            });
        }
        Ok(out)
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
/// `ARGV[2]` empty deletes; deleting what is not there changes nothing.
///
/// Names are unique, and checked here, atomically with the write: `KEYS[5]` maps each name
/// to the webhook that holds it. A write that takes a name (a new webhook, or a rename)
/// whose holder still has it changes nothing and returns that holder; a write that keeps
/// the webhook's name is never refused. Renaming or deleting a webhook frees its old name.
/// The index is built from the registry by the first change that finds it missing (a
/// registry written before names were unique): webhooks that shared a name then keep it,
/// the name goes in `KEYS[6]`, and while any of them holds it no other webhook may take it
/// (only for those names is the registry scanned). An index entry whose webhook no longer
/// has the name (written by an older release, which keeps no index) is not trusted.
///
/// With `ARGV[5]` set, a write happens only if the stored record's `updated_at` is that
/// value (compare-and-set over what the caller read).
///
/// Returns the version, how many webhooks were removed, the holder of a taken name (empty
/// when the write went through), and 1 when the compare-and-set found another record.
const CHANGE_SCRIPT: &str = r"
local function name_of(json)
  if not json then return nil end
  local ok, w = pcall(cjson.decode, json)
  if ok and type(w) == 'table' and type(w.name) == 'string' then return w.name end
  return nil
end
if redis.call('EXISTS', KEYS[5]) == 0 then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local n = name_of(all[i + 1])
    if n then
      if redis.call('HSETNX', KEYS[5], n, all[i]) == 0 then redis.call('SADD', KEYS[6], n) end
    end
  end
end
-- The webhook other than `except` that has this name, if any.
local function holder_of(name, except)
  local h = redis.call('HGET', KEYS[5], name)
  if h and h ~= except and name_of(redis.call('HGET', KEYS[1], h)) == name then return h end
  if redis.call('SISMEMBER', KEYS[6], name) == 1 then
    local all = redis.call('HGETALL', KEYS[1])
    for i = 1, #all, 2 do
      if all[i] ~= except and name_of(all[i + 1]) == name then return all[i] end
    end
    redis.call('SREM', KEYS[6], name)
  end
  return nil
end
-- This webhook no longer has `name`: hand it to another holder, or free it.
local function release(name, id)
  if name and redis.call('HGET', KEYS[5], name) == id then
    local other = holder_of(name, id)
    if other then redis.call('HSET', KEYS[5], name, other) else redis.call('HDEL', KEYS[5], name) end
  end
end
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[5] ~= '' then
  -- Compare-and-set: only over the record that was read (same updated_at, not deleted).
  local ok, w = false, nil
  if stored then ok, w = pcall(cjson.decode, stored) end
  if not (ok and type(w) == 'table' and w.updated_at == ARGV[5]) then
    return {redis.call('GET', KEYS[2]) or '0', 0, '', 1}
  end
end
local old_name = name_of(stored)
local removed = 0
if ARGV[2] == '' then
  removed = redis.call('HDEL', KEYS[1], ARGV[1])
  if removed == 0 then return {redis.call('GET', KEYS[2]) or '0', 0, '', 0} end
  release(old_name, ARGV[1])
else
  local name = ARGV[4]
  if name == old_name then
    redis.call('HSETNX', KEYS[5], name, ARGV[1])
  else
    local holder = holder_of(name, ARGV[1])
    if holder then return {redis.call('GET', KEYS[2]) or '0', 0, holder, 0} end
    redis.call('HSET', KEYS[5], name, ARGV[1])
    release(old_name, ARGV[1])
  end
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
return {v, removed, '', 0}
";

static CHANGE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(CHANGE_SCRIPT));

/// Who holds a name, found as `CHANGE_SCRIPT` finds it when a webhook takes that name,
/// but read only: with no index yet (a registry written before names were unique) the
/// registry is scanned instead of the index being built. `ARGV[2]` is the webhook asking
/// (empty for a new one); returns the holder's id, or empty when the name is free.
const NAME_HOLDER_SCRIPT: &str = r"
local function name_of(json)
  if not json then return nil end
  local ok, w = pcall(cjson.decode, json)
  if ok and type(w) == 'table' and type(w.name) == 'string' then return w.name end
  return nil
end
local name, except = ARGV[1], ARGV[2]
if redis.call('EXISTS', KEYS[2]) == 1 then
  local h = redis.call('HGET', KEYS[2], name)
  if h and h ~= except and name_of(redis.call('HGET', KEYS[1], h)) == name then return h end
  if redis.call('SISMEMBER', KEYS[3], name) == 0 then return '' end
end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= except and name_of(all[i + 1]) == name then return all[i] end
end
return ''
";

static NAME_HOLDER: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(NAME_HOLDER_SCRIPT));

/// Webhooks read per `HMGET`, so that one reply stays a few megabytes.
const WEBHOOKS_PER_READ: usize = 1_000;

/// The registry's change log, and reads of only some webhooks.
impl RedisStore {
    /// Write (`Some((name, json))`) or delete one webhook, a write only over the record whose
    /// `updated_at` is `expected_updated_at` when that is given; the new version, and whether
    /// one was removed.
    async fn change_webhook(
        &self,
        id: &str,
        write: Option<(&str, &str)>,
        expected_updated_at: Option<&str>,
    ) -> Result<(u64, bool), StoreError> {
        let mut c = self.conn();
        let (name, json) = write.unwrap_or(("", ""));
        let (version, removed, holder, conflict): (String, u64, String, u8) = CHANGE
            .key(self.keys.webhooks())
            .key(self.keys.webhooks_version())
            .key(self.keys.webhook_changes())
            .key(self.keys.webhook_changes_floor())
            .key(self.keys.webhook_names())
            .key(self.keys.webhook_names_shared())
            .arg(id)
            .arg(json)
            .arg(CHANGE_LOG_CAP)
            .arg(name)
            .arg(expected_updated_at.unwrap_or_default())
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        if conflict == 1 {
            return Err(StoreError::EditConflict { id: id.to_owned() });
        }
        if !holder.is_empty() {
            return Err(StoreError::NameTaken {
                name: name.to_owned(),
                id: holder,
            });
        }
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
                // As in `list_webhooks`: a bad record is set aside and shown, never fatal.
                match json {
                    Some(json) => out.push(self.usable(id, &json)),
                    None => {
                        self.invalid
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .remove(*id);
                        out.push(None);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Four fields of each webhook's statistics, without the hourly buckets.
    async fn read_counters(&self, ids: &[&str]) -> Result<Vec<WebhookCounters>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(WEBHOOKS_PER_READ) {
            let mut b = Batch::new();
            for id in chunk {
                b.cmd("HMGET", &self.keys.webhook_stats(id))
                    .arg("successes")
                    .arg("failures")
                    .arg("retries")
                    .arg("consecutive_failures");
            }
            out.extend(self.run(b, false).await?.into_iter().map(|v| {
                let v: Vec<Option<u64>> = redis::from_owned_redis_value(v).unwrap_or_default();
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
