//! Every Redis key KiviHook uses, built in one place.
//!
//! All keys live under the configured prefix so several installations (and parallel tests)
//! share one Redis. On Redis Cluster a script or transaction may only touch keys of one hash
//! slot, so keys that change together share a `{…}` hash tag; and so that no single slot
//! carries the whole installation, the tags follow the data: one per event, one per webhook,
//! one per shard of the retry schedule, one per hour of the minute counters.

/// Shards of the retry schedule. Each is a schedule, its jobs and its leases under one hash
/// tag (the claim script moves jobs between the three atomically); a job's shard follows
/// from its id, so nothing else needs to remember it.
pub const RETRY_SHARDS: u16 = 16;

/// Shards of the installation-wide dead-letter index (and of its owner hash), which every
/// dispatcher writes to when a delivery goes dead: spread as the retry schedule is.
pub const DEAD_LETTER_SHARDS: u16 = 16;

/// Hash tags the dedup buckets are spread over. With `DEDUP_SLOT_SECS`, this sets how many
/// events a bucket holds: events per slot / `DEDUP_TAGS`. Up to `hash-max-listpack-entries`
/// (128 by default) a bucket is a listpack, its entries packed end to end; past it, a hash
/// table, about half again as large per event (see docs/operations.md).
pub const DEDUP_TAGS: u16 = 2048;

/// Length of a dedup time slot: a bucket takes the events received in one slot and
/// expires a dedup window after the slot ends, so an entry lives between one window and one
/// window plus a slot.
pub const DEDUP_SLOT_SECS: i64 = 6 * 3600;

/// The time slot of `at`.
pub fn dedup_slot(at: chrono::DateTime<chrono::Utc>) -> i64 {
    at.timestamp().div_euclid(DEDUP_SLOT_SECS)
}

/// The Redis key space of one installation.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hash tag of an event's dedup buckets: one of `DEDUP_TAGS`, from the event id.
    pub fn dedup_tag(&self, event_id: &str) -> u16 {
        crc16(event_id.as_bytes()) % DEDUP_TAGS
    }

    /// A dedup bucket: a hash of event id → marker for the events whose id falls on `tag`
    /// and that were received in time slot `slot` (`DEDUP_SLOT_SECS` long). The bucket
    /// expires as a whole one dedup window after its slot ends. Every bucket of one tag is
    /// one hash slot on a cluster, so a claim checks all of the window's at once.
    pub fn dedup_bucket(&self, tag: u16, slot: i64) -> String {
        Self::in_slot(&self.dedup_buckets_of(tag), slot)
    }

    /// What every dedup bucket of `tag` starts with (`{<prefix>:d:<tag>}:`), for
    /// `in_slot`: a claim names several buckets of one tag per event, and building each
    /// with `format!` was about a tenth of ingest's CPU.
    pub fn dedup_buckets_of(&self, tag: u16) -> String {
        let mut k = String::with_capacity(self.prefix.len() + 10);
        k.push('{');
        k.push_str(&self.prefix);
        k.push_str(":d:");
        k.push_str(itoa::Buffer::new().format(tag));
        k.push_str("}:");
        k
    }

    /// The bucket of `slot` among those `dedup_buckets_of` starts.
    pub fn in_slot(buckets_of: &str, slot: i64) -> String {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(slot);
        let mut k = String::with_capacity(buckets_of.len() + digits.len());
        k.push_str(buckets_of);
        k.push_str(digits);
        k
    }

    /// The bucket an event received at `at` is claimed in.
    pub fn dedup_bucket_at(&self, event_id: &str, at: chrono::DateTime<chrono::Utc>) -> String {
        self.dedup_bucket(self.dedup_tag(event_id), dedup_slot(at))
    }

    /// When the first process that keeps dedup markers in buckets started on this
    /// installation (ms since the epoch; `SET NX`), or 0 for an installation that was new
    /// then: claims check the previous layout's markers for one dedup window after it.
    pub fn dedup_layout_since(&self) -> String {
        format!("{{{}:layout}}:dedup-buckets", self.prefix)
    }

    /// An event's marker in the previous layout, one key per event (`SET NX EX`). Still
    /// read (and checked by claims) for the dedup window after an upgrade, never written.
    pub fn legacy_dedup(&self, event_id: &str) -> String {
        format!("{{{}:e:{}}}", self.prefix, event_id)
    }

    /// Hash of webhook id → `TargetState` for one event's targets that were not simply
    /// delivered on their first attempt (retrying, dead, or delivered by a retry).
    pub fn targets(&self, event_id: &str) -> String {
        format!("{{{}:e:{}}}:t", self.prefix, event_id)
    }

    /// Hash of webhook id → webhook JSON. Shares a hash tag with its version counter, which
    /// every change bumps in the same transaction.
    pub fn webhooks(&self) -> String {
        format!("{{{}:wh}}:webhooks", self.prefix)
    }

    /// Counter bumped on every registry change; caches compare it to know they are stale.
    pub fn webhooks_version(&self) -> String {
        format!("{{{}:wh}}:version", self.prefix)
    }

    /// A fixed value sealed with `KIVIHOOK_SECRET_KEY`, written by the first role to start:
    /// a role whose key does not open it stops at start (`store::key_check`). Under the
    /// registry's tag, beside the secrets it vouches for.
    pub fn secret_key_check(&self) -> String {
        format!("{{{}:wh}}:key_check", self.prefix)
    }

    /// What `/readyz` writes to learn that Redis takes writes (not only that it answers).
    pub fn ready_probe(&self) -> String {
        format!("{{{}:ready}}:probe", self.prefix)
    }

    /// The progress of one bulk replay (`GET /v1/replays/{id}`), kept for a day.
    pub fn replay_run(&self, run_id: &str) -> String {
        format!("{{{}:replay:{}}}", self.prefix, run_id)
    }

    /// The shard of the dead-letter index that lists this dead letter.
    pub fn dead_letter_shard(&self, dead_letter_id: &str) -> u16 {
        crc16(dead_letter_id.as_bytes()) % DEAD_LETTER_SHARDS
    }

    /// Sorted set of one shard's dead-letter ids by time, for listing newest first (the
    /// shards merged). Shares a hash tag with the shard's owner hash.
    pub fn dead_letters_index(&self, shard: u16) -> String {
        format!("{{{}:dlq:{}}}:index", self.prefix, shard)
    }

    /// Hash of dead-letter id → the webhook that holds it, one shard's, for finding one by
    /// id.
    pub fn dead_letter_owners(&self, shard: u16) -> String {
        format!("{{{}:dlq:{}}}:owner", self.prefix, shard)
    }

    /// Hash of dead-letter id → entry JSON, one webhook's.
    pub fn dead_letters_of_entries(&self, webhook_id: &str) -> String {
        format!("{{{}:wh:{}}}:dl", self.prefix, webhook_id)
    }

    /// Sorted set of one webhook's dead-letter ids by time (capped per webhook).
    pub fn dead_letters_of(&self, webhook_id: &str) -> String {
        format!("{{{}:wh:{}}}:dl:index", self.prefix, webhook_id)
    }

    /// The shard of the retry schedule that holds this job.
    pub fn retry_shard(&self, job_id: &str) -> u16 {
        crc16(job_id.as_bytes()) % RETRY_SHARDS
    }

    /// Sorted set of retry job ids by due time (ms), one shard's. Shares a hash tag with the
    /// shard's jobs and leases, which the claim script moves between atomically.
    pub fn retry_schedule(&self, shard: u16) -> String {
        format!("{{{}:retry:{}}}:schedule", self.prefix, shard)
    }

    /// Hash of retry job id → job JSON, one shard's.
    pub fn retry_jobs(&self, shard: u16) -> String {
        format!("{{{}:retry:{}}}:jobs", self.prefix, shard)
    }

    /// Sorted set of claimed job ids by lease expiry (ms), one shard's.
    pub fn retry_leases(&self, shard: u16) -> String {
        format!("{{{}:retry:{}}}:leases", self.prefix, shard)
    }

    /// A webhook's counters and failure streak. Shares a hash tag with its hourly buckets
    /// and attempt log, which one script updates together.
    pub fn webhook_stats(&self, webhook_id: &str) -> String {
        format!("{{{}:wh:{}}}:stats", self.prefix, webhook_id)
    }

    /// A webhook's successes and failures in one hour (`hour` = Unix time / 3600).
    pub fn webhook_hour(&self, webhook_id: &str, hour: i64) -> String {
        format!("{{{}:wh:{}}}:h:{}", self.prefix, webhook_id, hour)
    }

    /// A webhook's attempt log, newest first, capped.
    pub fn attempts(&self, webhook_id: &str) -> String {
        format!("{{{}:wh:{}}}:attempts", self.prefix, webhook_id)
    }

    /// A webhook's rate-limit token bucket.
    pub fn rate_bucket(&self, webhook_id: &str) -> String {
        format!("{{{}:wh:{}}}:bucket", self.prefix, webhook_id)
    }

    /// Installation-wide attempt outcomes in one minute (`minute` = Unix time / 60), for the
    /// dashboard's overview; expires after a day. The minutes of one hour share a tag, so
    /// the overview's day of them is read from 25 slots, not 1,440.
    pub fn minute_counts(&self, minute: i64) -> String {
        format!("{{{}:m:{}}}:{}", self.prefix, minute.div_euclid(60), minute)
    }

    /// Keys of the layout before the retry schedule, the dead letters and the event markers
    /// were spread over slots; read once at start to move what they hold (`migrate`).
    pub fn legacy(&self) -> LegacyKeys {
        LegacyKeys {
            retry_schedule: format!("{{{}:retry}}:schedule", self.prefix),
            retry_jobs: format!("{{{}:retry}}:jobs", self.prefix),
            retry_leases: format!("{{{}:retry}}:leases", self.prefix),
            dead_letters: format!("{{{}:dlq}}:entries", self.prefix),
            dead_letters_index: format!("{{{}:dlq}}:index", self.prefix),
            dead_letter_owners: format!("{{{}:dlq}}:owner", self.prefix),
        }
    }

    /// Every key of this installation matches one of these globs (for tests and tooling).
    pub fn all_pattern(&self) -> Vec<String> {
        vec![format!("{}:*", self.prefix), format!("{{{}:*", self.prefix)]
    }
}

/// Where the previous layout kept the retry schedule and the dead letters.
#[derive(Debug, Clone)]
pub struct LegacyKeys {
    pub retry_schedule: String,
    pub retry_jobs: String,
    pub retry_leases: String,
    pub dead_letters: String,
    pub dead_letters_index: String,
    /// The previous layout's one owner hash (beside `dead_letters_index`), before the
    /// dead-letter index was sharded.
    pub dead_letter_owners: String,
}

/// The Redis Cluster hash slot of a key: CRC16 (XMODEM) of its hash tag, or of the whole key
/// when it has none, modulo 16,384 (the cluster specification's definition).
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(tagged) % 16_384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The registry's change log. Each key extends `webhooks()`, so it carries the same hash tag
/// (the first `{…}` of a key) whatever that tag is: the script that changes a webhook
/// touches the hash, the version, the log and the name index in one slot.
impl Keys {
    /// Sorted set of the registry's changes, `<version>:<webhook id>` scored by version,
    /// capped; caches read it to fetch only the webhooks that changed.
    pub fn webhook_changes(&self) -> String {
        format!("{}:changes", self.webhooks())
    }

    /// The version from which the change log holds every change: when logging began, or
    /// the newest entry trimmed off.
    pub fn webhook_changes_floor(&self) -> String {
        format!("{}:changes:floor", self.webhooks())
    }

    /// Hash of webhook name → the id of the webhook that holds it: names are unique, and the
    /// script that changes a webhook checks and moves its name here in the same step.
    pub fn webhook_names(&self) -> String {
        format!("{}:names", self.webhooks())
    }

    /// Set of names that several webhooks held when the name index was first built (a
    /// registry from before names were unique); while any of them holds one, no other
    /// webhook may take it.
    pub fn webhook_names_shared(&self) -> String {
        format!("{}:names:shared", self.webhooks())
    }
}

#[cfg(test)]
mod change_log_tests {
    use super::*;

    fn hash_tag(key: &str) -> Option<&str> {
        let open = key.find('{')?;
        let close = open + key[open..].find('}')?;
        Some(&key[open + 1..close])
    }

    #[test]
    fn the_change_log_shares_the_registry_hash_tag() {
        let k = Keys::new("kh");
        let registry = k.webhooks();
        let tag = hash_tag(&registry);
        assert_eq!(tag, Some("kh:wh"));
        for key in [
            k.webhooks_version(),
            k.webhook_changes(),
            k.webhook_changes_floor(),
            k.webhook_names(),
            k.webhook_names_shared(),
        ] {
            assert_eq!(hash_tag(&key), tag, "{key}");
            assert_eq!(slot(key.as_bytes()), slot(registry.as_bytes()), "{key}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_change_together_share_a_slot() {
        let k = Keys::new("kh");
        // The previous layout's marker and the targets hash (read in one pipeline).
        assert_eq!(
            slot(k.legacy_dedup("evt_1").as_bytes()),
            slot(k.targets("evt_1").as_bytes())
        );
        // Every time slot's bucket of one event, which a claim checks in one script.
        let tag = k.dedup_tag("evt_1");
        assert_eq!(
            slot(k.dedup_bucket(tag, 100).as_bytes()),
            slot(k.dedup_bucket(tag, 101).as_bytes())
        );
        assert_eq!(
            slot(k.webhooks().as_bytes()),
            slot(k.webhooks_version().as_bytes())
        );
        assert_eq!(
            slot(k.dead_letters_index(3).as_bytes()),
            slot(k.dead_letter_owners(3).as_bytes())
        );
        for shard in 0..RETRY_SHARDS {
            let s = slot(k.retry_schedule(shard).as_bytes());
            assert_eq!(s, slot(k.retry_jobs(shard).as_bytes()));
            assert_eq!(s, slot(k.retry_leases(shard).as_bytes()));
        }
        let w = slot(k.webhook_stats("wh_1").as_bytes());
        for key in [
            k.webhook_hour("wh_1", 7),
            k.attempts("wh_1"),
            k.rate_bucket("wh_1"),
            k.dead_letters_of("wh_1"),
            k.dead_letters_of_entries("wh_1"),
        ] {
            assert_eq!(slot(key.as_bytes()), w, "{key}");
        }
        assert_eq!(
            slot(k.minute_counts(120).as_bytes()),
            slot(k.minute_counts(179).as_bytes())
        );
    }

    #[test]
    fn load_spreads_over_slots() {
        let k = Keys::new("kh");
        let events: std::collections::HashSet<u16> = (0..1000)
            .map(|i| {
                slot(
                    k.dedup_bucket(k.dedup_tag(&format!("evt_{i}")), 1)
                        .as_bytes(),
                )
            })
            .collect();
        assert!(events.len() > 600, "{} slots", events.len());
        let shards: std::collections::HashSet<u16> = (0..RETRY_SHARDS)
            .map(|s| slot(k.retry_schedule(s).as_bytes()))
            .collect();
        assert_eq!(shards.len(), RETRY_SHARDS as usize);
        let used: std::collections::HashSet<u16> = (0..1000)
            .map(|i| k.retry_shard(&format!("job_{i}")))
            .collect();
        assert_eq!(used.len(), RETRY_SHARDS as usize);
    }

    #[test]
    fn slots_match_the_cluster_specification() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
    }

    #[test]
    fn dedup_bucket_names_are_what_they_always_were() {
        let k = Keys::new("kivihook:prod");
        for tag in [0, 7, 2047] {
            for slot in [0, 1, 82_000, i64::MAX, -3] {
                assert_eq!(
                    k.dedup_bucket(tag, slot),
                    format!("{{kivihook:prod:d:{tag}}}:{slot}")
                );
            }
        }
    }

    #[test]
    fn every_key_is_under_the_prefix() {
        let k = Keys::new("kh");
        for key in [
            k.dedup_bucket(7, 1),
            k.legacy_dedup("e"),
            k.dedup_layout_since(),
            k.targets("e"),
            k.webhooks(),
            k.secret_key_check(),
            k.retry_jobs(3),
            k.minute_counts(5),
            k.dead_letters_of("w"),
        ] {
            assert!(key.starts_with("{kh:"), "{key}");
        }
    }
}
