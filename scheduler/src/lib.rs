//! kivihook-scheduler: moves due retries from Redis back into RabbitMQ.
//!
//! Claiming is one Lua script that moves due jobs from the schedule to a lease, so several
//! schedulers never take the same job; a job is removed only after RabbitMQ confirmed its
//! message, and a lease that expires (its scheduler died between claim and publish) puts
//! the job back. Nothing here needs a leader.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kivihook_core::broker::{jobs, OutboundMessage, Queue};
use kivihook_core::{Broker, Config, Metrics, Shutdown, Store};

/// Jobs claimed per round from each shard of the schedule; a round that brings this many or
/// more is followed at once by another.
const BATCH: usize = 500;
/// The most bytes of job bodies one retries message carries; a single larger job travels
/// alone. Well under RabbitMQ's smallest default limit on a message (16 MiB).
const MESSAGE_BYTES: usize = 4 << 20;
const STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// While publishing fails, how often the running count is logged.
const OUTAGE_REPORT: Duration = Duration::from_secs(60);

/// A publishing outage as the log tells it: one line when it starts, a count every minute
/// while it lasts, one line when it ends (not a line per job per tick).
#[derive(Default)]
struct Outage {
    since: Option<Instant>,
    failed: u64,
    reported: Option<Instant>,
}

pub struct Scheduler {
    broker: Arc<dyn Broker>,
    store: Arc<dyn Store>,
    metrics: Metrics,
    lease: Duration,
    interval: Duration,
    stranded_scan: Duration,
    jobs_per_message: usize,
    outage: Mutex<Outage>,
}

impl Scheduler {
    pub fn new(
        config: &Config,
        broker: Arc<dyn Broker>,
        store: Arc<dyn Store>,
        metrics: Metrics,
    ) -> Self {
        Self {
            broker,
            store,
            metrics,
            lease: config.retry_lease,
            interval: config.scheduler_interval,
            stranded_scan: config.stranded_scan_interval,
            jobs_per_message: config.jobs_per_message,
            outage: Mutex::default(),
        }
    }

    /// Run until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        tracing::info!(
            lease_ms = self.lease.as_millis() as u64,
            "scheduler running"
        );
        let status = tokio::spawn(self.clone().report(shutdown.clone()));
        let rescue = tokio::spawn(self.clone().rescue_stranded(shutdown.clone()));
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
            match self.store.sweep_leases().await {
                Ok(0) => {}
                Ok(n) => {
                    self.metrics.leases_expired.inc_by(n);
                    tracing::warn!(
                        jobs = n,
                        "retry leases expired; jobs returned to the schedule"
                    );
                }
                Err(e) => self.store_error("sweep expired leases", &e),
            }
            while !shutdown.is_triggered() {
                match self.promote().await {
                    Ok(n) if n >= BATCH => continue,
                    Ok(_) => break,
                    Err(()) => break,
                }
            }
        }
        let _ = status.await;
        let _ = rescue.await;
        tracing::info!("scheduler stopped");
    }

    /// Put stranded retry jobs back in the schedule: a job body that two scans in a row find
    /// neither scheduled nor leased would otherwise never run.
    async fn rescue_stranded(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut suspects = std::collections::HashSet::new();
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(self.stranded_scan) => {}
            }
            match self.store.rescue_stranded_jobs(&suspects).await {
                Ok((next, rescued)) => {
                    if rescued > 0 {
                        self.metrics.retry_jobs_rescued.inc_by(rescued);
                        tracing::warn!(
                            jobs = rescued,
                            "stranded retry jobs (neither scheduled nor leased) put back in the schedule"
                        );
                    }
                    suspects = next;
                }
                Err(e) => self.store_error("look for stranded retry jobs", &e),
            }
        }
    }

    fn store_error(&self, what: &str, e: &kivihook_core::StoreError) {
        self.metrics
            .redis_errors
            .with_label_values(&["scheduler"])
            .inc();
        tracing::warn!(error = %e, what, "store operation failed");
    }

    /// Claim one batch of due jobs and publish it; returns how many were claimed.
    async fn promote(&self) -> Result<usize, ()> {
        let jobs = match self.store.claim_due_jobs(BATCH, self.lease).await {
            Ok(jobs) => jobs,
            Err(e) => {
                self.store_error("claim due jobs", &e);
                return Err(());
            }
        };
        if jobs.is_empty() {
            return Ok(0);
        }
        let messages = jobs::messages(&jobs, self.jobs_per_message, MESSAGE_BYTES);
        let publishes = messages.iter().map(|group| async move {
            let body = jobs::encode(group).map_err(|e| e.to_string())?;
            let msg = OutboundMessage {
                queue: Queue::Retries,
                routing_key: String::new(),
                body,
                registry_version: 0,
                first_publish: false,
            };
            self.broker.publish(&msg).await.map_err(|e| e.to_string())
        });
        let results = futures::future::join_all(publishes).await;
        let mut done = Vec::with_capacity(jobs.len());
        let mut failed = Vec::new();
        let mut first_error = None;
        let mut sent = 0u64;
        for (group, r) in messages.iter().zip(results) {
            let ids = group.iter().map(|j| j.id.clone());
            match r {
                Ok(()) => {
                    sent += 1;
                    done.extend(ids);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                    failed.extend(ids);
                }
            }
        }
        self.metrics.retry_messages_published.inc_by(sent);
        self.outage_news(done.len(), failed.len(), first_error.as_deref());
        // Only confirmed jobs are forgotten; if this fails, their leases expire and they are
        // published again, which the dispatcher's job check turns into a no-op.
        if let Err(e) = self.store.complete_jobs(&done).await {
            self.store_error("complete published jobs", &e);
        }
        if let Err(e) = self.store.release_jobs(&failed).await {
            self.store_error("release unpublished jobs", &e);
        }
        self.metrics.retry_jobs_published.inc_by(done.len() as u64);
        if !failed.is_empty() {
            return Err(());
        }
        Ok(jobs.len())
    }

    /// Log an outage of publishing once as it starts, as a count while it lasts, once as it
    /// ends; count every failed publish in `kivihook_scheduler_publish_failures_total`.
    fn outage_news(&self, published: usize, failed: usize, error: Option<&str>) {
        let mut o = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if failed > 0 {
            self.metrics
                .scheduler_publish_failures
                .inc_by(failed as u64);
            o.failed += failed as u64;
            match o.since {
                None => {
                    o.since = Some(now);
                    o.reported = Some(now);
                    tracing::warn!(
                        error = error.unwrap_or_default(),
                        jobs = failed,
                        "cannot publish retry jobs to RabbitMQ; they stay scheduled and are tried again every tick"
                    );
                }
                Some(since) if o.reported.is_some_and(|r| now - r >= OUTAGE_REPORT) => {
                    o.reported = Some(now);
                    tracing::warn!(
                        error = error.unwrap_or_default(),
                        failed_publishes = o.failed,
                        for_seconds = (now - since).as_secs(),
                        "still cannot publish retry jobs to RabbitMQ"
                    );
                }
                Some(_) => {}
            }
        } else if published > 0 {
            if let Some(since) = o.since.take() {
                tracing::info!(
                    failed_publishes = o.failed,
                    for_seconds = (now - since).as_secs(),
                    "publishing retry jobs to RabbitMQ works again"
                );
                o.failed = 0;
                o.reported = None;
            }
        }
    }

    /// Gauges of the schedule, the dead letters and the queues.
    async fn report(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            match self.store.schedule_status().await {
                Ok(s) => {
                    self.metrics.retry_schedule_depth.set(s.depth as i64);
                    self.metrics.retry_jobs_leased.set(s.leased as i64);
                    self.metrics.retry_lag.set(s.lag.as_secs_f64());
                    self.metrics
                        .retry_oldest_due_age
                        .set(s.oldest_due_age.as_secs_f64());
                    self.metrics.dead_letter_depth.set(s.dead_letters as i64);
                }
                Err(e) => self.store_error("read the schedule status", &e),
            }
            for (queue, label) in [
                (Queue::Deliveries, "deliveries"),
                (Queue::Retries, "retries"),
            ] {
                if let Ok((messages, consumers)) = self.broker.queue_status(queue).await {
                    self.metrics
                        .queue_messages
                        .with_label_values(&[label])
                        .set(messages.into());
                    self.metrics
                        .queue_consumers
                        .with_label_values(&[label])
                        .set(consumers.into());
                }
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(STATUS_INTERVAL) => {}
            }
        }
    }
}
