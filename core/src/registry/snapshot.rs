//! One consistent view of the registry, cheap to copy with a few webhooks changed.
//!
//! Indexing 10,000 webhooks takes milliseconds, too long to redo for every change: during an
//! `apply` of thousands of definitions with events flowing, a dispatcher catches up many
//! times a second. So a snapshot is a large base layer, shared by every snapshot made from
//! it, plus a small indexed delta of the webhooks changed since the base was built. A change
//! copies and re-indexes only the delta; once the delta grows past `COMPACT_AT` webhooks (or
//! the registry is quiet, see `Registry::catch_up`), base and delta are merged into a new
//! base. Matching and listings merge the two layers in creation order, so what a snapshot
//! answers does not depend on how its webhooks are split between them.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::iter::Peekable;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::index::Index;
use crate::webhook::{Subscription, Webhook};

/// Changed webhooks a delta holds before it is merged into a new base: re-indexing the
/// delta stays well under a millisecond, and the full rebuild is paid once per this many
/// changes.
const COMPACT_AT: usize = 256;

/// Where a webhook sits in listings and answers: creation time, then id.
type OrderKey<'a> = (&'a DateTime<Utc>, &'a str);

fn order_key(s: &Subscription) -> OrderKey<'_> {
    (&s.webhook.created_at, s.webhook.id.as_str())
}

/// Webhooks in creation order, indexed.
#[derive(Default)]
struct Layer {
    ordered: Vec<Arc<Subscription>>,
    /// Position in `ordered` by webhook id.
    by_id: HashMap<String, u32>,
    index: Index,
}

impl Layer {
    fn build(mut ordered: Vec<Arc<Subscription>>) -> Self {
        ordered.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
        let by_id = ordered
            .iter()
            .enumerate()
            .map(|(i, s)| (s.webhook.id.clone(), u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        let index = Index::build(&ordered);
        Self {
            ordered,
            by_id,
            index,
        }
    }

    fn get(&self, id: &str) -> Option<&Arc<Subscription>> {
        self.ordered.get(*self.by_id.get(id)? as usize)
    }

    fn after(&self, key: Option<OrderKey<'_>>) -> std::slice::Iter<'_, Arc<Subscription>> {
        let start = key.map_or(0, |k| self.ordered.partition_point(|s| order_key(s) <= k));
        self.ordered[start..].iter()
    }
}

/// One consistent view of the registry: every webhook in creation order, indexed.
pub struct Snapshot {
    pub(super) version: u64,
    /// False only for the empty snapshot a registry starts with, before any read.
    pub(super) loaded: bool,
    /// Bumped by every install: a read installs only over the snapshot it started from.
    pub(super) generation: u64,
    base: Arc<Layer>,
    /// Every webhook changed since `base` was built, as it is now (`None`: deleted).
    changes: HashMap<String, Option<Arc<Subscription>>>,
    /// The changed webhooks that exist, indexed.
    delta: Layer,
    /// Ids of `base` that `changes` replaces or deletes: their base entries are not answered.
    shadowed: HashSet<String>,
}

impl Snapshot {
    pub(super) fn empty() -> Self {
        Self::with_base(0, Layer::default(), false)
    }

    fn with_base(version: u64, base: Layer, loaded: bool) -> Self {
        Self {
            version,
            loaded,
            generation: 0,
            base: Arc::new(base),
            changes: HashMap::new(),
            delta: Layer::default(),
            shadowed: HashSet::new(),
        }
    }

    /// Every webhook in `webhooks`, at `version`.
    pub fn of(version: u64, webhooks: Vec<Webhook>) -> Self {
        let ordered = webhooks
            .into_iter()
            .map(|w| Arc::new(Subscription::new(w)))
            .collect();
        Self::with_base(version, Layer::build(ordered), true)
    }

    /// A copy at `version` with these webhooks replaced (`None`: deleted). The base is
    /// shared; only the delta is copied and indexed, until it is large enough to merge.
    pub(super) fn with_changes(&self, version: u64, changed: Vec<(&str, Option<Webhook>)>) -> Self {
        let mut changes = self.changes.clone();
        for (id, w) in changed {
            changes.insert(id.to_owned(), w.map(|w| Arc::new(Subscription::new(w))));
        }
        let next = self.layered(version, changes);
        if next.changes.len() > COMPACT_AT {
            next.compacted()
        } else {
            next
        }
    }

    fn layered(&self, version: u64, changes: HashMap<String, Option<Arc<Subscription>>>) -> Self {
        let shadowed = changes
            .keys()
            .filter(|id| self.base.by_id.contains_key(id.as_str()))
            .cloned()
            .collect();
        let delta = Layer::build(changes.values().flatten().cloned().collect());
        Self {
            version,
            loaded: true,
            generation: 0,
            base: self.base.clone(),
            changes,
            delta,
            shadowed,
        }
    }

    /// The same webhooks with the delta merged into a new base.
    pub(super) fn compacted(&self) -> Self {
        let ordered = self.subscriptions(None).cloned().collect();
        Self::with_base(self.version, Layer::build(ordered), self.loaded)
    }

    /// Whether some changes sit in the delta, unmerged.
    pub(super) fn has_delta(&self) -> bool {
        !self.changes.is_empty()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.base.ordered.len() - self.shadowed.len() + self.delta.ordered.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn visible<'a>(&'a self, s: &'a Arc<Subscription>) -> bool {
        self.shadowed.is_empty() || !self.shadowed.contains(s.webhook.id.as_str())
    }

    /// Both layers after `key`, merged in creation order.
    fn subscriptions<'a>(
        &'a self,
        key: Option<OrderKey<'_>>,
    ) -> impl Iterator<Item = &'a Arc<Subscription>> {
        Merged {
            a: self.base.after(key).filter(|s| self.visible(s)).peekable(),
            b: self.delta.after(key).peekable(),
        }
    }

    /// Every webhook, enabled or not, in creation order.
    pub fn webhooks(&self) -> impl Iterator<Item = &Arc<Webhook>> {
        self.subscriptions(None).map(|s| &s.webhook)
    }

    /// The webhooks that come after `(created_at, id)` in creation order (all of them
    /// without a key), for listings that page.
    pub fn after(
        &self,
        key: Option<(&DateTime<Utc>, &str)>,
    ) -> impl Iterator<Item = &Arc<Webhook>> {
        self.subscriptions(key).map(|s| &s.webhook)
    }

    /// One webhook by id, enabled or not.
    pub fn get(&self, id: &str) -> Option<&Arc<Webhook>> {
        match self.changes.get(id) {
            Some(changed) => changed.as_ref().map(|s| &s.webhook),
            None => self.base.get(id).map(|s| &s.webhook),
        }
    }

    /// Every enabled webhook that wants this event, in creation order, each once.
    pub fn matching(&self, event_type: &str, clinic_id: Option<&str>) -> Vec<Arc<Webhook>> {
        let base = self.base.index.positions(event_type, clinic_id);
        let base = base
            .iter()
            .filter_map(|&i| self.base.ordered.get(i as usize))
            .filter(|s| self.visible(s))
            .peekable();
        if self.delta.ordered.is_empty() {
            return base.map(|s| s.webhook.clone()).collect();
        }
        let delta = self.delta.index.positions(event_type, clinic_id);
        let delta = delta
            .iter()
            .filter_map(|&i| self.delta.ordered.get(i as usize))
            .peekable();
        Merged { a: base, b: delta }
            .map(|s| s.webhook.clone())
            .collect()
    }
}

/// Two iterators already in creation order, merged into one. They never hold the same
/// webhook: the delta's ids are shadowed in the base.
struct Merged<
    'a,
    A: Iterator<Item = &'a Arc<Subscription>>,
    B: Iterator<Item = &'a Arc<Subscription>>,
> {
    a: Peekable<A>,
    b: Peekable<B>,
}

impl<'a, A, B> Iterator for Merged<'a, A, B>
where
    A: Iterator<Item = &'a Arc<Subscription>>,
    B: Iterator<Item = &'a Arc<Subscription>>,
{
    type Item = &'a Arc<Subscription>;

    fn next(&mut self) -> Option<Self::Item> {
        let first = match (self.a.peek(), self.b.peek()) {
            (Some(a), Some(b)) => order_key(a).cmp(&order_key(b)),
            (Some(_), None) => Ordering::Less,
            (None, _) => Ordering::Greater,
        };
        match first {
            Ordering::Greater => self.b.next(),
            _ => self.a.next(),
        }
    }
}
