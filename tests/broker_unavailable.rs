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
    let key = kivihook_core::keys::Keys::new(&prefix).dedup("evt_down_1");

    for _ in 0..3 {
        let r = api
            .post_event(&event("evt_down_1", "appointment.booked", None))
            .await;
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unavailable");
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(!exists, "the dedup claim was released");
    }

    let batch = serde_json::json!({"events": [event("evt_down_2", "patient.created", None)]});
    let r = api
        .http
        .post(k.url("/v1/events/batch"))
        .bearer_auth(INGEST)
        .json(&batch)
        .send()
        .await
        .unwrap();
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
