//! The webhook registry, cached in each process that reads it (the dispatcher for every
//! event, ingest for listings).
//!
//! Matching never reads Redis: it looks the event up in the snapshot's index. The cache
//! follows the store's change log: a dispatcher reads it once a second, and synchronously
//! when a message carries a newer registry version than the cache holds (ingest stamps each
//! event with the version it saw, so a webhook created before an event was accepted is
//! always considered for it). Only the webhooks that changed are read (and their secrets
//! opened); everything is read again only when the log cannot prove it holds every change
//! since the cache's version (see `store::changes_from_log`), or at start.
//!
//! A snapshot never goes backwards: reads and installs happen one at a time, and a snapshot
//! is only ever replaced by one whose read began after it was installed. So a slow reload
//! can never put an older registry over a newer one, and the one case where the new
//! snapshot has a lower version than the old (a Redis that lost writes, whose version went
//! back) installs what Redis holds now, read after the old snapshot was installed.

pub mod index;
mod snapshot;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::webhook::Webhook;
use crate::{Metrics, Shutdown, Store, StoreError};
pub use snapshot::Snapshot;

/// How often a watching registry reads the change log.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A registry cache and how it keeps up with the store.
pub struct Registry {
    store: Arc<dyn Store>,
    metrics: Metrics,
    /// The role whose metrics this cache reports under.
    role: &'static str,
    snapshot: RwLock<Arc<Snapshot>>,
    /// One read of the store at a time. Holds when the last read that installed (or found
    /// nothing to install) began: a caller that asked before then is served by it.
    reload: tokio::sync::Mutex<Option<Instant>>,
}

/// What brought a snapshot in, for `kivihook_registry_reloads_total`.
#[derive(Clone, Copy)]
enum Kind {
    Full,
    Incremental,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Incremental => "incremental",
        }
    }
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, metrics: Metrics, role: &'static str) -> Self {
        Self {
            store,
            metrics,
            role,
            snapshot: RwLock::new(Arc::new(Snapshot::empty())),
            reload: tokio::sync::Mutex::new(None),
        }
    }

    /// The snapshot installed now (empty before the first read).
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every enabled webhook that wants this event, in creation order.
    pub fn matching(&self, event_type: &str, clinic_id: Option<&str>) -> Vec<Arc<Webhook>> {
        self.current().matching(event_type, clinic_id)
    }

    /// One webhook by id, enabled or not.
    pub fn get(&self, id: &str) -> Option<Arc<Webhook>> {
        self.current().get(id).cloned()
    }

    /// Make sure the cache is at least at `version`. Callers that wait while another
    /// catches up find it done when their turn comes, so a stream of messages stamped with
    /// new versions costs one read of the change log per turn, not one per message.
    pub async fn ensure(&self, version: u64) -> Result<(), StoreError> {
        let fresh = |s: &Snapshot| s.loaded && s.version >= version;
        if fresh(&self.current()) {
            return Ok(());
        }
        let mut last = self.reload.lock().await;
        if fresh(&self.current()) {
            return Ok(());
        }
        self.catch_up(&mut last).await
    }

    /// Catch up with the store now and return the snapshot: what a listing that must show
    /// every change made before it was asked for calls. Callers that ask while a read is
    /// in progress wait for the next one, which began after they asked.
    pub async fn refresh(&self) -> Result<Arc<Snapshot>, StoreError> {
        let asked = Instant::now();
        let mut last = self.reload.lock().await;
        if last.is_some_and(|began| began >= asked) {
            return Ok(self.current());
        }
        self.catch_up(&mut last).await?;
        Ok(self.current())
    }

    /// Read the whole registry from the store.
    pub async fn load(&self) -> Result<(), StoreError> {
        let mut last = self.reload.lock().await;
        let from = self.current();
        let began = Instant::now();
        self.load_from(&from).await?;
        *last = Some(began);
        Ok(())
    }

    /// Apply what changed since the current snapshot, or read everything if the change log
    /// cannot say. Runs under the `reload` lock.
    async fn catch_up(&self, last: &mut Option<Instant>) -> Result<(), StoreError> {
        let from = self.current();
        let began = Instant::now();
        if !from.loaded {
            self.load_from(&from).await?;
            *last = Some(began);
            return Ok(());
        }
        match self.store.webhook_changes_since(from.version).await? {
            None => self.load_from(&from).await?,
            // Quiet: a good moment to merge what recent changes left in the delta.
            Some(c) if c.ids.is_empty() && c.version == from.version => {
                if from.has_delta() {
                    self.install(from.compacted(), &from, None);
                }
            }
            Some(c) => {
                let ids: Vec<&str> = c.ids.iter().map(String::as_str).collect();
                let webhooks = self.store.get_webhooks(&ids).await?;
                let next = from.with_changes(c.version, ids.into_iter().zip(webhooks).collect());
                self.install(next, &from, Some(Kind::Incremental));
            }
        }
        *last = Some(began);
        Ok(())
    }

    async fn load_from(&self, from: &Snapshot) -> Result<(), StoreError> {
        let (version, webhooks) = self.store.list_webhooks().await?;
        if from.loaded && version < from.version {
            tracing::warn!(
                cached = from.version,
                stored = version,
                "the registry version went back (Redis lost writes); reloading what it holds now"
            );
        }
        self.install(Snapshot::of(version, webhooks), from, Some(Kind::Full));
        Ok(())
    }

    /// Install `next` if the snapshot it was read from is still the current one: a read
    /// that another install overtook cannot tell whether it is the fresher, so it yields.
    /// `kind` is what a read brought in (`None`: the same webhooks, merged into one layer).
    /// Returns whether it was installed.
    fn install(&self, mut next: Snapshot, from: &Snapshot, kind: Option<Kind>) -> bool {
        let mut slot = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
        if slot.generation != from.generation {
            tracing::debug!(
                version = next.version,
                "a registry read was overtaken by a newer install; dropping it"
            );
            return false;
        }
        next.generation = from.generation + 1;
        self.metrics
            .registry_invalid_webhooks
            .set(self.store.invalid_webhooks().len() as i64);
        let enabled = next.webhooks().filter(|w| w.enabled).count() as i64;
        self.metrics
            .webhooks
            .with_label_values(&["enabled"])
            .set(enabled);
        self.metrics
            .webhooks
            .with_label_values(&["disabled"])
            .set(next.len() as i64 - enabled);
        if let Some(kind) = kind {
            self.metrics
                .registry_reloads
                .with_label_values(&[self.role, kind.label()])
                .inc();
            tracing::debug!(
                version = next.version,
                webhooks = next.len(),
                kind = kind.label(),
                "webhook registry updated"
            );
        }
        *slot = Arc::new(next);
        true
    }

    /// Follow registry changes until shutdown.
    pub async fn watch(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
            let mut last = self.reload.lock().await;
            if let Err(e) = self.catch_up(&mut last).await {
                self.metrics
                    .redis_errors
                    .with_label_values(&[self.role])
                    .inc();
                tracing::warn!(error = %e, "could not follow the webhook registry");
            }
        }
    }
}

#[cfg(test)]
mod tests;
