//! The webhook registry, cached in the process.
//!
//! Matching never reads Redis. The cache reloads when the registry version in Redis moves
//! (polled once a second) and, synchronously, when a message carries a newer version than the
//! cache holds: ingest stamps each event with the version it saw, so a webhook created
//! before an event was accepted is always considered for it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use kivihook_core::webhook::{Subscription, Webhook};
use kivihook_core::{Metrics, Shutdown, Store, StoreError};

const POLL_INTERVAL: Duration = Duration::from_secs(1);

struct Snapshot {
    version: u64,
    subscriptions: Vec<Subscription>,
}

pub struct Registry {
    store: Arc<dyn Store>,
    metrics: Metrics,
    snapshot: RwLock<Arc<Snapshot>>,
    reload: tokio::sync::Mutex<()>,
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, metrics: Metrics) -> Self {
        Self {
            store,
            metrics,
            snapshot: RwLock::new(Arc::new(Snapshot {
                version: 0,
                subscriptions: Vec::new(),
            })),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every enabled webhook that wants this event.
    pub fn matching(&self, event_type: &str, clinic_id: Option<&str>) -> Vec<Arc<Webhook>> {
        self.current()
            .subscriptions
            .iter()
            .filter(|s| s.matches(event_type, clinic_id))
            .map(|s| s.webhook.clone())
            .collect()
    }

    /// One webhook by id, enabled or not.
    pub fn get(&self, id: &str) -> Option<Arc<Webhook>> {
        self.current()
            .subscriptions
            .iter()
            .find(|s| s.webhook.id == id)
            .map(|s| s.webhook.clone())
    }

    /// Make sure the cache is at least at `version`.
    pub async fn ensure(&self, version: u64) -> Result<(), StoreError> {
        if self.current().version >= version {
            return Ok(());
        }
        let _one_at_a_time = self.reload.lock().await;
        if self.current().version >= version {
            return Ok(());
        }
        self.load().await
    }

    /// Reload from the store unconditionally.
    pub async fn load(&self) -> Result<(), StoreError> {
        let (version, hooks) = self.store.list_webhooks().await?;
        let enabled = hooks.iter().filter(|w| w.enabled).count() as i64;
        self.metrics
            .webhooks
            .with_label_values(&["enabled"])
            .set(enabled);
        self.metrics
            .webhooks
            .with_label_values(&["disabled"])
            .set(hooks.len() as i64 - enabled);
        let subscriptions = hooks.into_iter().map(Subscription::new).collect();
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Snapshot {
            version,
            subscriptions,
        });
        tracing::debug!(version, "webhook registry loaded");
        Ok(())
    }

    /// Follow registry changes until shutdown.
    pub async fn watch(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
            match self.store.registry_version().await {
                // A different version, higher or lower (a Redis that lost its data), reloads.
                Ok(v) if v != self.current().version => {
                    let _one_at_a_time = self.reload.lock().await;
                    if let Err(e) = self.load().await {
                        tracing::warn!(error = %e, "could not reload the webhook registry");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.metrics
                        .redis_errors
                        .with_label_values(&["dispatcher"])
                        .inc();
                    tracing::warn!(error = %e, "could not read the webhook registry version");
                }
            }
        }
    }
}
