//! The Prometheus metrics of every role, registered in one place.
//!
//! Names are prefixed `kivihook_`, in base units, counters end in `_total`, and every label
//! has a bounded set of values (event types are the catalogue plus `custom`; no ids, no URLs).
//! The one exception, `kivihook_webhook_failures_total` by webhook id, is only written when
//! `KIVIHOOK_METRICS_WEBHOOK_LABELS=true` asks for it: with 10,000 webhooks it is 10,000
//! series per dispatcher.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Handles to every metric; cheap to clone (each is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Events by type and outcome (accepted, duplicate, in_progress, unavailable).
    pub events_ingested: IntCounterVec,
    /// Requests refused as invalid, by error code.
    pub ingest_rejected: IntCounterVec,
    /// From publish to broker confirm.
    pub publish_duration: Histogram,
    /// Delivery attempts by outcome (success, failed).
    pub deliveries: IntCounterVec,
    /// One HTTP request to a receiver, by outcome.
    pub delivery_duration: HistogramVec,
    /// From ingest accepting an event to its successful delivery.
    pub event_to_delivery: Histogram,
    pub deliveries_in_flight: IntGauge,
    /// Targets skipped because a redelivered event had already reached them.
    pub redelivery_skips: IntCounter,
    /// Messages that could not be parsed, sent to the dead-letter queue.
    pub poison_messages: IntCounter,
    /// Panics caught while handling a delivery (a bug): the target is recorded as a failed
    /// attempt and retried, or the message dead-lettered; never left unsettled.
    pub delivery_panics: IntCounter,
    /// Dead-letter entries written.
    pub dead_letters: IntCounter,
    pub amqp_reconnects: IntCounterVec,
    pub amqp_errors: IntCounterVec,
    pub redis_errors: IntCounterVec,
    pub redis_reconnects: IntCounterVec,
    /// Webhooks in the registry cache, by state (enabled, disabled).
    pub webhooks: IntGaugeVec,
    /// Registry cache updates, by role and kind (full, incremental).
    pub registry_reloads: IntCounterVec,
    /// Failed attempts given another try later.
    pub retries_scheduled: IntCounter,
    /// Targets put off without a request, by reason (circuit_open, concurrency, rate_limit).
    pub deferrals: IntCounterVec,
    /// Retry jobs skipped because their target had moved on (published twice, or settled).
    pub stale_jobs: IntCounter,
    /// Failed attempts by webhook id, for "top failing webhooks"; written only when
    /// `Config::metrics_webhook_labels` is set, since it has a series per webhook.
    pub webhook_failures: IntCounterVec,
    pub circuits_open: IntGauge,
    /// Stored webhook records the registry could not use (`Store::invalid_webhooks`).
    pub registry_invalid_webhooks: IntGauge,
    pub webhooks_auto_disabled: IntCounterVec,
    pub retry_jobs_published: IntCounter,
    /// The messages those jobs travelled in (several of one webhook's to a message).
    pub retry_messages_published: IntCounter,
    /// Retry jobs a scheduler could not publish (they stay scheduled and are tried again).
    pub scheduler_publish_failures: IntCounter,
    pub leases_expired: IntCounter,
    pub retry_schedule_depth: IntGauge,
    pub retry_jobs_leased: IntGauge,
    pub retry_lag: prometheus::Gauge,
    /// The oldest due retry's wait past its time, expired leases included; reported by
    /// dispatchers too, so that it shows when no scheduler runs.
    pub retry_oldest_due_age: prometheus::Gauge,
    /// Stranded retry jobs (a body neither scheduled nor leased) put back in the schedule.
    pub retry_jobs_rescued: IntCounter,
    pub dead_letter_depth: IntGauge,
    pub queue_messages: IntGaugeVec,
    pub queue_consumers: IntGaugeVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn must<T>(r: prometheus::Result<T>) -> T {
    // Only reachable with a malformed name or a duplicate registration: programmer errors
    // caught by the unit test below, never by input.
    r.expect("metric definitions are static and valid")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                must(registry.register(Box::new(m.clone())));
                m
            }};
        }
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            must(IntCounterVec::new(Opts::new(name, help), labels))
        };
        let role = &["role"];

        let metrics = Self {
            events_ingested: reg!(counter_vec(
                "kivihook_events_ingested_total",
                "Events received by ingest, by event type and outcome.",
                &["type", "outcome"],
            )),
            ingest_rejected: reg!(counter_vec(
                "kivihook_ingest_rejected_total",
                "Ingest requests refused as invalid, by error code.",
                &["code"],
            )),
            publish_duration: reg!(must(Histogram::with_opts(
                HistogramOpts::new(
                    "kivihook_ingest_publish_duration_seconds",
                    "Time from publishing an event to RabbitMQ's confirm.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            ))),
            deliveries: reg!(counter_vec(
                "kivihook_deliveries_total",
                "Delivery attempts, by outcome.",
                &["outcome"],
            )),
            delivery_duration: reg!(must(HistogramVec::new(
                HistogramOpts::new(
                    "kivihook_delivery_duration_seconds",
                    "Duration of one HTTP request to a receiver, by outcome.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["outcome"],
            ))),
            event_to_delivery: reg!(must(Histogram::with_opts(
                HistogramOpts::new(
                    "kivihook_event_to_delivery_seconds",
                    "Time from ingest accepting an event to its successful delivery.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            ))),
            deliveries_in_flight: reg!(must(IntGauge::new(
                "kivihook_deliveries_in_flight",
                "HTTP deliveries currently in progress.",
            ))),
            redelivery_skips: reg!(must(IntCounter::new(
                "kivihook_redelivery_skips_total",
                "Targets skipped because a redelivered or republished event had already reached them.",
            ))),
            delivery_panics: reg!(must(IntCounter::new(
                "kivihook_delivery_panics_total",
                "Panics caught while handling a delivery; each settled its message.",
            ))),
            poison_messages: reg!(must(IntCounter::new(
                "kivihook_poison_messages_total",
                "Messages that could not be parsed and went to the dead-letter queue.",
            ))),
            dead_letters: reg!(must(IntCounter::new(
                "kivihook_dead_letters_total",
                "Dead-letter entries written for deliveries that could not be made.",
            ))),
            amqp_reconnects: reg!(counter_vec(
                "kivihook_amqp_reconnects_total",
                "Connections to RabbitMQ re-established after a loss, by role.",
                role,
            )),
            amqp_errors: reg!(counter_vec(
                "kivihook_amqp_errors_total",
                "Failed attempts to connect to or use RabbitMQ, by role.",
                role,
            )),
            redis_errors: reg!(counter_vec(
                "kivihook_redis_errors_total",
                "Failed Redis operations, by role.",
                role,
            )),
            redis_reconnects: reg!(counter_vec(
                "kivihook_redis_reconnects_total",
                "Connections to Redis dialled again after one broke, by role.",
                role,
            )),
            webhooks: reg!(must(IntGaugeVec::new(
                Opts::new("kivihook_webhooks", "Webhooks in the registry, by state.",),
                &["state"],
            ))),
            registry_reloads: reg!(counter_vec(
                "kivihook_registry_reloads_total",
                "Updates of a process's webhook registry cache, by role and kind: full (every webhook read) or incremental (only those the change log names).",
                &["role", "kind"],
            )),
            retries_scheduled: reg!(must(IntCounter::new(
                "kivihook_retries_scheduled_total",
                "Failed attempts scheduled for another try.",
            ))),
            deferrals: reg!(counter_vec(
                "kivihook_deferrals_total",
                "Targets put off without sending a request, by reason.",
                &["reason"],
            )),
            stale_jobs: reg!(must(IntCounter::new(
                "kivihook_stale_jobs_total",
                "Retry jobs skipped because their target had already moved on.",
            ))),
            webhook_failures: reg!(counter_vec(
                "kivihook_webhook_failures_total",
                "Failed delivery attempts, by webhook id (only with KIVIHOOK_METRICS_WEBHOOK_LABELS=true).",
                &["webhook"],
            )),
            circuits_open: reg!(must(IntGauge::new(
                "kivihook_circuits_open",
                "Webhooks whose circuit breaker is open in this dispatcher.",
            ))),
            registry_invalid_webhooks: reg!(must(IntGauge::new(
                "kivihook_registry_invalid_webhooks",
                "Stored webhook records this process's registry could not use: a record that does not parse (left out) or whose secrets do not open (disabled). GET /readyz lists them.",
            ))),
            webhooks_auto_disabled: reg!(counter_vec(
                "kivihook_webhooks_auto_disabled_total",
                "Webhooks disabled by KiviHook, by reason (gone, failing).",
                &["reason"],
            )),
            scheduler_publish_failures: reg!(must(IntCounter::new(
                "kivihook_scheduler_publish_failures_total",
                "Retry jobs a scheduler could not publish to RabbitMQ; they stay scheduled.",
            ))),
            retry_jobs_published: reg!(must(IntCounter::new(
                "kivihook_retry_jobs_published_total",
                "Due retry jobs moved from the schedule to the retries queue.",
            ))),
            retry_messages_published: reg!(must(IntCounter::new(
                "kivihook_retry_messages_published_total",
                "Messages that carried the published retry jobs to the retries queue (KIVIHOOK_JOBS_PER_MESSAGE of one webhook's at most).",
            ))),
            leases_expired: reg!(must(IntCounter::new(
                "kivihook_retry_leases_expired_total",
                "Claimed retry jobs returned to the schedule because their lease expired.",
            ))),
            retry_schedule_depth: reg!(must(IntGauge::new(
                "kivihook_retry_schedule_depth",
                "Retry jobs waiting in the schedule.",
            ))),
            retry_jobs_leased: reg!(must(IntGauge::new(
                "kivihook_retry_jobs_leased",
                "Retry jobs claimed by a scheduler and not yet published.",
            ))),
            retry_lag: reg!(must(prometheus::Gauge::new(
                "kivihook_retry_lag_seconds",
                "How long the oldest due retry job has waited past its time.",
            ))),
            retry_oldest_due_age: reg!(must(prometheus::Gauge::new(
                "kivihook_retry_oldest_due_age_seconds",
                "How long the oldest due retry job has waited past its time, counting jobs whose scheduler lease ran out; reported by schedulers and dispatchers, so it grows when no scheduler promotes.",
            ))),
            retry_jobs_rescued: reg!(must(IntCounter::new(
                "kivihook_retry_jobs_rescued_total",
                "Stranded retry jobs (a body neither scheduled nor leased) that a scheduler put back in the schedule.",
            ))),
            dead_letter_depth: reg!(must(IntGauge::new(
                "kivihook_dead_letter_depth",
                "Dead-letter entries kept for inspection and replay.",
            ))),
            queue_messages: reg!(must(IntGaugeVec::new(
                Opts::new(
                    "kivihook_queue_messages",
                    "Messages waiting in a RabbitMQ queue."
                ),
                &["queue"],
            ))),
            queue_consumers: reg!(must(IntGaugeVec::new(
                Opts::new(
                    "kivihook_queue_consumers",
                    "Consumers attached to a RabbitMQ queue."
                ),
                &["queue"],
            ))),
            registry,
        };
        let build = must(IntGaugeVec::new(
            Opts::new(
                "kivihook_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        ));
        build.with_label_values(&[crate::VERSION]).set(1);
        must(metrics.registry.register(Box::new(build)));
        #[cfg(target_os = "linux")]
        must(metrics.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )));
        metrics
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_prefixed_and_documented() {
        let m = Metrics::new();
        m.events_ingested
            .with_label_values(&["appointment.booked", "accepted"])
            .inc();
        let text = m.render();
        for line in text.lines().filter(|l| l.starts_with("# HELP")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(
                name.starts_with("kivihook_") || name.starts_with("process_"),
                "{name}"
            );
        }
        assert!(text.contains("kivihook_build_info{version="));
    }
}
