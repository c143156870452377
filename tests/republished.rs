//! The dispatcher reads an event's target states only when a target could already be
//! settled: a redelivery, or a second message of the same id. Ingest marks the message of a
//! clean claim (`x-kivihook-first-publish`); a claim that takes over a released one (its
//! publish failed, perhaps after reaching the broker) publishes without the mark, and its
//! message is checked.

mod common;

use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::{json, Value};

use common::*;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const HEADER: &str = "x-kivihook-first-publish";

/// A publish that fails with RabbitMQ out of reach: ingest answers 503 and leaves the id's
/// claim released.
async fn failed_publish(prefix: &str, body: &Value) {
    let down = Kivihook::start(
        "ingest",
        prefix,
        &[("KIVIHOOK_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")],
    );
    assert_eq!(Api::new(&down).post_event(body).await.status(), 503);
    let mut redis = redis().await;
    let id = body["id"].as_str().unwrap();
    assert_eq!(
        dedup_entry(&mut redis, prefix, id).await.as_deref(),
        Some("r")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_claim_marks_its_message_and_a_reclaim_does_not() {
    let prefix = unique_prefix();
    let names = kivihook_core::amqp::Names::new(&prefix);
    let clean = event("evt_clean", "appointment.booked", None);
    let again = event("evt_again", "appointment.booked", None);
    failed_publish(&prefix, &again).await;

    // Only ingest runs: the messages stay in the queue to be read.
    let k = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&k);
    assert_eq!(api.post_event(&clean).await.status(), 202);
    assert_eq!(api.post_event(&again).await.status(), 202);

    let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut marked = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let m = ch
            .basic_get(&names.deliveries_queue, BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("a message");
        let body: Value = serde_json::from_slice(&m.delivery.data).unwrap();
        let header = m
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(HEADER).cloned());
        marked.insert(body["id"].as_str().unwrap().to_owned(), header);
    }
    assert_eq!(marked["evt_clean"], Some(AMQPValue::Boolean(true)));
    assert_eq!(marked["evt_again"], None, "a reclaimed id is not marked");
    let _ = conn.close(200, "read").await;
    drop(k);
    cleanup(&prefix).await;
}

/// The publish that "failed" did reach the broker (its confirm was lost): that message is
/// delivered. The client's retry is accepted, its message checked, and its target skipped:
/// the receiver gets the event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_publish_that_did_go_through_is_not_delivered_twice() {
    let prefix = unique_prefix();
    let names = kivihook_core::amqp::Names::new(&prefix);
    let body = event("evt_ghost", "appointment.booked", None);
    failed_publish(&prefix, &body).await;

    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let r = Receiver::start().await;
    api.create_webhook(json!({"name": "crm", "url": r.url(), "events": ["*"]}))
        .await;
    // One event first, so the dispatcher knows the webhook (the message below carries no
    // registry version) and the exchange exists.
    let warm = event("evt_warm", "appointment.booked", None);
    assert_eq!(api.post_event(&warm).await.status(), 202);
    wait_until(Duration::from_secs(20), "the first delivery", || {
        r.count() == 1
    })
    .await;

    // The message the failed publish left in the broker, as ingest wrote it (a clean claim).
    let now = chrono::Utc::now().to_rfc3339();
    let mut ghost = body.clone();
    ghost["occurred_at"] = json!(now);
    ghost["received_at"] = json!(now);
    let mut headers = FieldTable::default();
    headers.insert(HEADER.into(), AMQPValue::Boolean(true));
    let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_publish(
        &names.events_exchange,
        "appointment.booked",
        BasicPublishOptions::default(),
        ghost.to_string().as_bytes(),
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let _ = conn.close(200, "published").await;
    // The warm-up event and this one: waiting for a count of 1 raced the delivery (it passed
    // at once, or never when the ghost had already arrived).
    wait_until(
        Duration::from_secs(20),
        "the first message's delivery",
        || r.count() == 2,
    )
    .await;
    eventually(Duration::from_secs(5), "its delivery recorded", || {
        let prefix = prefix.clone();
        async move {
            let mut redis = redis().await;
            dedup_entry(&mut redis, &prefix, "evt_ghost")
                .await
                .is_some_and(|m| m.contains("|~"))
        }
    })
    .await;

    // The client retries its 503: accepted, checked, skipped.
    assert_eq!(api.post_event(&body).await.status(), 202);
    eventually(
        Duration::from_secs(20),
        "the second message skipped",
        || async { metric_sum(&k, "kivihook_redelivery_skips_total").await == 1.0 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.count(), 2, "evt_ghost delivered once");
    let status = get_json(&api, "/v1/events/evt_ghost").await;
    assert_eq!(status["webhooks"][0]["status"], "delivered", "{status}");
    drop(k);
    cleanup(&prefix).await;
}
