//! Every Redis key KiviHook uses, built in one place.
//!
//! All keys live under the configured prefix so several installations (and parallel tests)
//! share one Redis. Keys that one script or transaction touches together share a `{…}` hash
//! tag so they land in one Redis Cluster slot.

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

    /// `SET NX EX` marker of an accepted event id: `p` while being published, `a` once the
    /// broker has confirmed it.
    pub fn dedup(&self, event_id: &str) -> String {
        format!("{}:dedup:{}", self.prefix, event_id)
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

    /// Hash of webhook id → `TargetState` for one event: which targets are settled and how.
    pub fn targets(&self, event_id: &str) -> String {
        format!("{}:targets:{}", self.prefix, event_id)
    }

    /// Hash of dead-letter id → entry JSON.
    pub fn dead_letters(&self) -> String {
        format!("{{{}:dlq}}:entries", self.prefix)
    }

    /// Sorted set of dead-letter ids by time, for listing newest first.
    pub fn dead_letters_index(&self) -> String {
        format!("{{{}:dlq}}:index", self.prefix)
    }

    /// Sorted set of one webhook's dead-letter ids by time.
    pub fn dead_letters_of(&self, webhook_id: &str) -> String {
        format!("{{{}:dlq}}:webhook:{}", self.prefix, webhook_id)
    }

    /// Sorted set of retry job ids by due time (ms). Shares a hash tag with the jobs and
    /// leases, which the claim script moves between atomically.
    pub fn retry_schedule(&self) -> String {
        format!("{{{}:retry}}:schedule", self.prefix)
    }

    /// Hash of retry job id → job JSON.
    pub fn retry_jobs(&self) -> String {
        format!("{{{}:retry}}:jobs", self.prefix)
    }

    /// Sorted set of claimed job ids by lease expiry (ms).
    pub fn retry_leases(&self) -> String {
        format!("{{{}:retry}}:leases", self.prefix)
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
    /// dashboard's overview; expires after a day.
    pub fn minute_counts(&self, minute: i64) -> String {
        format!("{}:stats:m:{}", self.prefix, minute)
    }

    /// Every key of this installation matches this glob (for tests and tooling).
    pub fn all_pattern(&self) -> Vec<String> {
        vec![format!("{}:*", self.prefix), format!("{{{}:*", self.prefix)]
    }
}

/// The registry's change log. Each key extends `webhooks()`, so it carries the same hash tag
/// (the first `{…}` of a key) whatever that tag is: the script that changes a webhook
/// touches the hash, the version and the log in one slot.
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
        ] {
            assert_eq!(hash_tag(&key), tag, "{key}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_and_grouped_by_hash_tag() {
        let k = Keys::new("kh");
        assert_eq!(k.dedup("evt_1"), "kh:dedup:evt_1");
        assert!(k.webhooks().starts_with("{kh:wh}"));
        assert!(k.webhooks_version().starts_with("{kh:wh}"));
        assert!(k.dead_letters().starts_with("{kh:dlq}"));
        assert!(k.dead_letters_index().starts_with("{kh:dlq}"));
        assert!(k.dead_letters_of("wh_1").starts_with("{kh:dlq}"));
        for key in [k.retry_schedule(), k.retry_jobs(), k.retry_leases()] {
            assert!(key.starts_with("{kh:retry}"), "{key}");
        }
        for key in [
            k.webhook_stats("wh_1"),
            k.webhook_hour("wh_1", 7),
            k.attempts("wh_1"),
        ] {
            assert!(key.starts_with("{kh:wh:wh_1}"), "{key}");
        }
    }
}
