//! With RabbitMQ out of reach, ingest answers 503 with Retry-After and leaves nothing
//! half-done: the event's dedup claim is released, so the client's retry is not a
//! "duplicate" of an event that was never published.

mod common;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_answers_503_and_releases_the_dedup_key_when_the_broker_is_unreachable() {
    let prefix = unique_prefix();
    // Nothing listens on port 1.
    let k = Kivihook::start(
        "ingest",
        &prefix,
        &[("KIVIHOOK_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")],
    );
    let api = Api::new(&k);
    let mut redis = redis().await;

    for _ in 0..3 {
        let r = api
            .post_event(&event("evt_down_1", "appointment.booked", None))
            .await;
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unavailable");
        // Released, not deleted: the next claim takes it over (this loop's next request is
        // `503` again, not `409`) and says that the failed publish may have gone through.
        let entry = dedup_entry(&mut redis, &prefix, "evt_down_1").await;
        assert_eq!(entry.as_deref(), Some("r"), "the dedup claim was released");
    }

    let batch = serde_json::json!({"events": [event("evt_down_2", "patient.created", None)]});
    let r = api.post_batch(&batch).await;
    assert_eq!(r.status(), 503);

    let ready = api.http.get(k.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["redis"], "ok");
    assert_ne!(body["checks"]["rabbitmq"], "ok");
    // Liveness is not readiness: the process itself is fine.
    assert_eq!(
        api.http
            .get(k.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let metrics = api
        .http
        .get(k.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"kivihook_events_ingested_total{outcome="unavailable",type="appointment.booked"} 3"#
        ),
        "{metrics}"
    );
    drop(k);
    cleanup(&prefix).await;
}

/// A scheduler that cannot reach RabbitMQ says so once, counts the failed publishes in a
/// metric, and loses no job: a scheduler that can publish delivers every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_without_rabbitmq_logs_the_outage_once_and_keeps_every_job() {
    use std::time::Duration;
    let prefix = unique_prefix();
    // Every event fails its first attempt at once and has a retry due: no breaker, no cap.
    let fast = [
        ("KIVIHOOK_RETRY_SCHEDULE", "0.2,0.2"),
        ("KIVIHOOK_CIRCUIT_THRESHOLD", "0"),
        ("KIVIHOOK_WEBHOOK_CONCURRENCY", "256"),
    ];
    let ingest = Kivihook::start("ingest", &prefix, &fast);
    let dispatcher = Kivihook::start("dispatcher", &prefix, &fast);
    let api = Api::new(&ingest);
    let receiver = Receiver::start().await;
    receiver.respond_with(500);
    api.create_webhook(serde_json::json!({"name": "down", "url": receiver.url(), "events": ["*"]}))
        .await;
    const EVENTS: usize = 200;
    for i in 0..EVENTS {
        let r = api
            .post_event(&event(&format!("evt_s{i}"), "appointment.booked", None))
            .await;
        assert_eq!(r.status(), 202);
    }
    wait_until(Duration::from_secs(30), "every first attempt", || {
        receiver.count() == EVENTS
    })
    .await;
    // Every event now has a retry due; this scheduler cannot publish any of them.
    let cut_off = Kivihook::start(
        "scheduler",
        &prefix,
        &[("KIVIHOOK_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")],
    );
    let metrics_of = |k: &Kivihook| {
        let url = k.url("/metrics");
        async move {
            let text = reqwest::get(url).await.unwrap().text().await.unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("kivihook_scheduler_publish_failures_total "))
                .map(|v| v.trim().parse::<f64>().unwrap())
                .unwrap_or(0.0)
        }
    };
    eventually(Duration::from_secs(30), "failed publishes counted", || {
        let f = metrics_of(&cut_off);
        async move { f.await >= (EVENTS * 5) as f64 }
    })
    .await;
    let warnings: Vec<String> = cut_off
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("\"WARN\"") || l.contains("\"level\":\"warn\""))
        .cloned()
        .collect();
    // The scheduler's own lines: one for the outage (the broker handle's reconnect attempts
    // are its own, with backoff).
    let own: Vec<&String> = warnings
        .iter()
        .filter(|l| l.contains("\"target\":\"kivihook_scheduler\""))
        .collect();
    assert_eq!(
        own.len(),
        1,
        "{} scheduler warnings for {EVENTS} jobs over many ticks: {:?}",
        own.len(),
        &own[..own.len().min(3)]
    );
    assert!(warnings.len() <= 10, "{warnings:#?}");
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("cannot publish retry jobs")),
        "{warnings:?}"
    );
    drop(cut_off);
    // Nothing was lost: a scheduler that can publish brings every retry back.
    receiver.respond_with(200);
    let _scheduler = Kivihook::start("scheduler", &prefix, &[]);
    wait_until(Duration::from_secs(60), "every retry delivered", || {
        receiver.received().iter().filter(|r| r.accepted).count() == EVENTS
    })
    .await;
    drop(dispatcher);
    drop(ingest);
    cleanup(&prefix).await;
}
