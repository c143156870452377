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

    /// Hash of webhook id → delivery time for one event: which targets are done.
    pub fn delivered(&self, event_id: &str) -> String {
        format!("{}:delivered:{}", self.prefix, event_id)
    }

    /// Hash of dead-letter id → entry JSON.
    pub fn dead_letters(&self) -> String {
        format!("{{{}:dlq}}:entries", self.prefix)
    }

    /// Sorted set of dead-letter ids by time, for listing newest first.
    pub fn dead_letters_index(&self) -> String {
        format!("{{{}:dlq}}:index", self.prefix)
    }

    /// Every key of this installation matches this glob (for tests and tooling).
    pub fn all_pattern(&self) -> Vec<String> {
        vec![format!("{}:*", self.prefix), format!("{{{}:*", self.prefix)]
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
    }
}
