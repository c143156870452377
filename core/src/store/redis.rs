//! Redis backend: a few multiplexed connections that reconnect by themselves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Claim, DeadLetter, Outcome, Store, StoreError};
use crate::keys::Keys;
use crate::webhook::Webhook;

/// Multiplexed connections in the pool. Each pipelines every request given to it; a few
/// spread the parsing of large replies over threads.
const POOL_SIZE: usize = 4;
/// How long a claim lives while its publish is in flight; a crash in that window frees
/// the id again after this long.
const CLAIM_TTL_SECS: u64 = 60;
/// How long "delivered" markers are kept: longer than any redelivery can take.
const DELIVERED_TTL_SECS: i64 = 7 * 86_400;
/// Dead letters kept per installation (oldest dropped first).
const DEAD_LETTER_CAP: isize = 100_000;

/// The production store.
pub struct RedisStore {
    keys: Keys,
    pool: Vec<ConnectionManager>,
    next: AtomicUsize,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    /// Connect the pool. Fails if Redis cannot be reached now; the connections reconnect by
    /// themselves after that.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(3))
            .set_response_timeout(Duration::from_secs(5))
            .set_number_of_retries(2);
        let mut pool = Vec::with_capacity(POOL_SIZE);
        for _ in 0..POOL_SIZE {
            pool.push(
                ConnectionManager::new_with_config(client.clone(), config.clone())
                    .await
                    .map_err(unavailable)?,
            );
        }
        Ok(Self {
            keys: Keys::new(prefix),
            pool,
            next: AtomicUsize::new(0),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn conn(&self) -> ConnectionManager {
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
                tracing::warn!("Redis has appendonly off: a Redis restart loses dedup keys, delivery markers and the registry; production needs AOF");
            }
        }
        if let Ok(v) = policy {
            if v.get(1).is_some_and(|s| s != "noeviction") {
                tracing::warn!(policy = %v[1], "Redis may evict keys under memory pressure; production needs maxmemory-policy noeviction");
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

    async fn confirm_events(&self, ids: &[String], window: Duration) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("SET")
                .arg(self.keys.dedup(id))
                .arg("a")
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
        for (id, json) in raw {
            match serde_json::from_str::<Webhook>(&json) {
                Ok(w) => hooks.push(w),
                Err(e) => {
                    tracing::error!(webhook_id = %id, error = %e, "skipping a corrupt webhook record")
                }
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
                .map_err(|e| StoreError::Corrupt(format!("webhook {id}: {e}")))
        })
        .transpose()
    }

    async fn put_webhook(&self, webhook: &Webhook) -> Result<u64, StoreError> {
        let json =
            serde_json::to_string(webhook).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.conn();
        let (version,): (u64,) = redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(self.keys.webhooks())
            .arg(&webhook.id)
            .arg(json)
            .ignore()
            .cmd("INCR")
            .arg(self.keys.webhooks_version())
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(version)
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let mut c = self.conn();
        let (removed, _version): (u64, u64) = redis::pipe()
            .atomic()
            .cmd("HDEL")
            .arg(self.keys.webhooks())
            .arg(id)
            .cmd("INCR")
            .arg(self.keys.webhooks_version())
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(removed > 0)
    }

    async fn delivered_targets(
        &self,
        event_id: &str,
        webhook_ids: &[&str],
    ) -> Result<Vec<bool>, StoreError> {
        if webhook_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn();
        let done: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys.delivered(event_id))
            .arg(webhook_ids)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(done.into_iter().map(|d| d.is_some()).collect())
    }

    async fn record_outcomes(
        &self,
        event_id: &str,
        outcomes: &[Outcome],
    ) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let now = Utc::now();
        let delivered_key = self.keys.delivered(event_id);
        let mut pipe = redis::pipe();
        let mut any_dead = false;
        for outcome in outcomes {
            match outcome {
                Outcome::Delivered { webhook_id } => {
                    pipe.cmd("HSET")
                        .arg(&delivered_key)
                        .arg(webhook_id)
                        .arg(now.timestamp_millis())
                        .ignore();
                }
                Outcome::Dead(dl) => {
                    let json = serde_json::to_string(dl)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    pipe.cmd("HSET")
                        .arg(self.keys.dead_letters())
                        .arg(&dl.id)
                        .arg(json)
                        .ignore();
                    pipe.cmd("ZADD")
                        .arg(self.keys.dead_letters_index())
                        .arg(dl.failed_at.timestamp_millis())
                        .arg(&dl.id)
                        .ignore();
                    // The target is settled: a redelivery must not dead-letter it twice.
                    pipe.cmd("HSET")
                        .arg(&delivered_key)
                        .arg(&dl.webhook_id)
                        .arg(format!("dead:{}", dl.id))
                        .ignore();
                    any_dead = true;
                }
            }
        }
        pipe.cmd("EXPIRE")
            .arg(&delivered_key)
            .arg(DELIVERED_TTL_SECS)
            .ignore();
        let mut c = self.conn();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)?;
        if any_dead {
            self.trim_dead_letters().await;
        }
        Ok(())
    }

    async fn list_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let mut c = self.conn();
        let ids: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(self.keys.dead_letters_index())
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys.dead_letters())
            .arg(&ids)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(raw
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect())
    }
}

impl RedisStore {
    /// Keep the dead-letter list bounded; runs rarely (only after dead letters are written).
    async fn trim_dead_letters(&self) {
        let mut c = self.conn();
        let count: Result<isize, _> = redis::cmd("ZCARD")
            .arg(self.keys.dead_letters_index())
            .query_async(&mut c)
            .await;
        if let Ok(n) = count {
            if n > DEAD_LETTER_CAP {
                let old: Result<Vec<String>, _> = redis::cmd("ZRANGE")
                    .arg(self.keys.dead_letters_index())
                    .arg(0)
                    .arg(n - DEAD_LETTER_CAP - 1)
                    .query_async(&mut c)
                    .await;
                if let Ok(old) = old {
                    let _: Result<(), _> = redis::pipe()
                        .atomic()
                        .cmd("ZREM")
                        .arg(self.keys.dead_letters_index())
                        .arg(&old)
                        .ignore()
                        .cmd("HDEL")
                        .arg(self.keys.dead_letters())
                        .arg(&old)
                        .ignore()
                        .query_async(&mut c)
                        .await;
                }
            }
        }
    }
}
