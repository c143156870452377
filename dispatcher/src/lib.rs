//! kivihook-dispatcher: consumes events and retry jobs, fans each event out to the webhooks
//! that subscribe to it, sends signed HTTP requests and records the outcome.
//!
//! The delivery path, in file order: `consume.rs` → `fanout.rs` → `gate.rs` → `send.rs` →
//! `record.rs`.

use std::sync::Arc;
use std::time::Duration;

use kivihook_core::broker::Queue;
use kivihook_core::retry::RetrySchedule;
use kivihook_core::{Broker, Config, Metrics, Shutdown, Store};

pub mod consume;
pub mod fanout;
pub mod gate;
pub mod record;
pub mod send;
pub mod target;

use kivihook_core::registry::Registry;

/// Everything a dispatcher's tasks share.
/// How often a dispatcher reports `kivihook_retry_oldest_due_age_seconds`.
const DUE_AGE_EVERY: Duration = Duration::from_secs(5);

pub struct Dispatcher {
    pub broker: Arc<dyn Broker>,
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    pub registry: Arc<Registry>,
    pub gates: gate::Gates,
    pub clients: send::Clients,
    pub prefetch: u16,
    /// Events being handled at once from the deliveries queue: `prefetch` of them, whether
    /// they came one a message or many (see `kivihook_core::broker::events`).
    pub events_in_flight: Arc<tokio::sync::Semaphore>,
    pub retry_prefetch: u16,
    /// Jobs being handled at once from the retries queue: `retry_prefetch` of them, whether
    /// they came one a message or many (see `kivihook_core::broker::jobs`).
    pub jobs_in_flight: Arc<tokio::sync::Semaphore>,
    pub delivery_timeout: Duration,
    pub retry_schedule: RetrySchedule,
    pub circuit_threshold: u64,
    pub circuit_cooldown: Duration,
    pub circuit_min_failing: Duration,
    pub auto_disable_after: Duration,
    pub webhook_concurrency: u32,
    /// Label `kivihook_webhook_failures_total` by webhook id (a series per webhook).
    pub metrics_webhook_labels: bool,
    pub consumer_tag: String,
}

impl Dispatcher {
    pub fn new(
        config: &Config,
        broker: Arc<dyn Broker>,
        store: Arc<dyn Store>,
        metrics: Metrics,
    ) -> Result<Self, kivihook_core::http_client::ClientError> {
        Ok(Self {
            registry: Arc::new(Registry::new(store.clone(), metrics.clone(), "dispatcher")),
            gates: gate::Gates::default(),
            clients: send::Clients::new(
                config.delivery_timeout,
                config.outbound.clone(),
                config.max_body,
            )?,
            broker,
            store,
            metrics,
            prefetch: config.prefetch,
            events_in_flight: Arc::new(tokio::sync::Semaphore::new(usize::from(config.prefetch))),
            retry_prefetch: config.retry_prefetch,
            jobs_in_flight: Arc::new(tokio::sync::Semaphore::new(usize::from(
                config.retry_prefetch,
            ))),
            delivery_timeout: config.delivery_timeout,
            retry_schedule: config.retry_schedule.clone(),
            circuit_threshold: config.circuit_threshold,
            circuit_cooldown: config.circuit_cooldown,
            circuit_min_failing: config.circuit_min_failing,
            auto_disable_after: config.auto_disable_after,
            webhook_concurrency: config.webhook_concurrency,
            metrics_webhook_labels: config.metrics_webhook_labels,
            consumer_tag: format!("kivihook-dispatcher-{}", uuid::Uuid::new_v4().simple()),
        })
    }

    /// Run until shutdown: load the registry, follow its changes, consume both queues.
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
        let circuits = tokio::spawn(self.clone().report_circuits(shutdown.clone()));
        let due = tokio::spawn(self.clone().report_due_age(shutdown.clone()));
        tokio::join!(
            consume::run(self.clone(), Queue::Deliveries, shutdown.clone()),
            consume::run(self.clone(), Queue::Retries, shutdown.clone()),
        );
        let _ = watch.await;
        let _ = circuits.await;
        let _ = due.await;
        tracing::info!("dispatcher stopped");
    }

    /// Report how long the oldest due retry has waited: from dispatchers too, so that the
    /// alert fires when no scheduler runs at all (then nothing else reports it).
    async fn report_due_age(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            if let Ok(s) = self.store.schedule_status().await {
                self.metrics
                    .retry_oldest_due_age
                    .set(s.oldest_due_age.as_secs_f64());
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(DUE_AGE_EVERY) => {}
            }
        }
    }

    /// Keep the open-circuits gauge true as circuits close by themselves.
    async fn report_circuits(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            self.metrics
                .circuits_open
                .set(self.gates.open_circuits() as i64);
        }
    }
}
