//! kivihook-dispatcher: consumes events, fans each out to the webhooks that subscribe to
//! it, sends signed HTTP requests and records the outcome.
//!
//! The delivery path, in file order: `consume.rs` → `fanout.rs` → `send.rs` → `record.rs`.

use std::sync::Arc;
use std::time::Duration;

use kivihook_core::{Broker, Config, Metrics, Shutdown, Store};

pub mod consume;
pub mod fanout;
pub mod record;
pub mod registry;
pub mod send;

use registry::Registry;

/// Everything a dispatcher's tasks share.
pub struct Dispatcher {
    pub broker: Arc<dyn Broker>,
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    pub registry: Arc<Registry>,
    pub client: reqwest::Client,
    pub prefetch: u16,
    pub delivery_timeout: Duration,
    pub consumer_tag: String,
}

impl Dispatcher {
    pub fn new(
        config: &Config,
        broker: Arc<dyn Broker>,
        store: Arc<dyn Store>,
        metrics: Metrics,
    ) -> Self {
        Self {
            registry: Arc::new(Registry::new(store.clone(), metrics.clone())),
            client: send::client(config.delivery_timeout),
            broker,
            store,
            metrics,
            prefetch: config.prefetch,
            delivery_timeout: config.delivery_timeout,
            consumer_tag: format!("kivihook-dispatcher-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// Run until shutdown: load the registry, follow its changes, consume.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let mut waiting = shutdown.clone();
        let loaded = record::persist(&self, &mut waiting, "load the webhook registry", || {
            self.registry.load()
        })
        .await;
        if loaded.is_none() {
            return;
        }
        let watch = tokio::spawn(self.registry.clone().watch(shutdown.clone()));
        consume::run(self.clone(), shutdown).await;
        let _ = watch.await;
        tracing::info!("dispatcher stopped");
    }
}
