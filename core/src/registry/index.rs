//! Which webhooks want an event, found without looking at the others.
//!
//! A snapshot of the registry is indexed once, when it is built: by exact event type, by
//! family prefix (`appointment.`), and `*`; under each, the webhooks for every clinic apart
//! from those scoped to clinics, which are found by clinic id. An event looks up its type,
//! each family prefix it starts with, and `*`, so matching costs what the webhooks that could
//! want it cost, not what the registry holds: 10,000 webhooks subscribed elsewhere add a few
//! hash lookups.

use std::collections::HashMap;
use std::sync::Arc;

use crate::webhook::{Pattern, Subscription};

/// The webhooks under one key, as positions in the snapshot's creation order.
#[derive(Debug, Default)]
struct Bucket {
    every_clinic: Vec<u32>,
    by_clinic: HashMap<String, Vec<u32>>,
}

impl Bucket {
    fn add(&mut self, position: u32, clinic_ids: &[String]) {
        if clinic_ids.is_empty() {
            self.every_clinic.push(position);
        }
        for c in clinic_ids {
            self.by_clinic.entry(c.clone()).or_default().push(position);
        }
    }

    fn collect(&self, clinic_id: Option<&str>, into: &mut Vec<u32>) {
        into.extend_from_slice(&self.every_clinic);
        if let Some(scoped) = clinic_id.and_then(|c| self.by_clinic.get(c)) {
            into.extend_from_slice(scoped);
        }
    }
}

/// The enabled webhooks of one snapshot, by what they subscribe to.
#[derive(Debug, Default)]
pub struct Index {
    exact: HashMap<String, Bucket>,
    /// Keyed by the prefix a `Pattern::Family` holds: `Pattern::parse` (the only way a
    /// subscription gets its patterns) makes it a family name and a dot, `appointment.`.
    family: HashMap<String, Bucket>,
    all: Bucket,
}

impl Index {
    /// Index the enabled subscriptions; a position is one in `subscriptions`.
    pub fn build(subscriptions: &[Arc<Subscription>]) -> Self {
        let mut index = Self::default();
        for (position, sub) in subscriptions.iter().enumerate() {
            if !sub.webhook.enabled {
                continue;
            }
            let position = u32::try_from(position).unwrap_or(u32::MAX);
            let clinics = sub.webhook.clinic_ids.as_slice();
            for pattern in sub.patterns() {
                let bucket = match pattern {
                    Pattern::All => &mut index.all,
                    Pattern::Exact(t) => index.exact.entry(t.clone()).or_default(),
                    Pattern::Family(p) => index.family.entry(p.clone()).or_default(),
                };
                bucket.add(position, clinics);
            }
        }
        index
    }

    /// Positions of the enabled webhooks that want this event, ascending (creation order),
    /// each once however many of its patterns match.
    pub fn positions(&self, event_type: &str, clinic_id: Option<&str>) -> Vec<u32> {
        let mut hits = Vec::new();
        if let Some(b) = self.exact.get(event_type) {
            b.collect(clinic_id, &mut hits);
        }
        // A family prefix ends in `.`, so it is the type up to one of its dots.
        for (i, _) in event_type.match_indices('.') {
            if let Some(b) = self.family.get(&event_type[..=i]) {
                b.collect(clinic_id, &mut hits);
            }
        }
        self.all.collect(clinic_id, &mut hits);
        hits.sort_unstable();
        hits.dedup();
        hits
    }
}
