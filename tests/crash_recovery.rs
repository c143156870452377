//! Nothing accepted is ever lost: a dispatcher killed with SIGKILL mid-stream, restarted,
//! delivers every event that was answered 202; the only duplicates are messages that were
//! in flight when it died, and they carry the same `webhook-id` as their first delivery.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::json;

const EVENTS: usize = 800;
const PREFETCH: usize = 40;
const RETRY_PREFETCH: usize = 10;
const KILLS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_dispatcher_loses_nothing_and_duplicates_only_in_flight_messages() {
    let prefix = unique_prefix();
    let ingest = Kivihook::start("ingest", &prefix, &[]);
    let prefetch = PREFETCH.to_string();
    let retry_prefetch = RETRY_PREFETCH.to_string();
    let dispatcher_env = [
        ("KIVIHOOK_PREFETCH", prefetch.as_str()),
        ("KIVIHOOK_RETRY_PREFETCH", retry_prefetch.as_str()),
    ];
    let mut dispatcher = Kivihook::start("dispatcher", &prefix, &dispatcher_env);
    // Deliveries put off while the receiver is busy come back through the schedule.
    let _scheduler = Kivihook::start("scheduler", &prefix, &[]);
    let api = Api::new(&ingest);

    let receiver = Receiver::start().await;
    // Slow enough that many deliveries are in flight when the dispatcher dies.
    receiver.delay(Duration::from_millis(15));
    let hook = api
        .create_webhook(json!({"name": "crm", "url": receiver.url(), "events": ["*"]}))
        .await;
    let secret = hook["secret"].as_str().unwrap().to_owned();

    // Post in the background while the dispatcher is killed and restarted.
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let posted = Arc::new(AtomicUsize::new(0));
    let producer = {
        let api = api.clone();
        let accepted = accepted.clone();
        let posted = posted.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..EVENTS)
                .map(|i| {
                    let api = api.clone();
                    async move {
                        let id = format!("evt_crash_{i}");
                        let status = api
                            .post_event(&event(&id, "appointment.booked", Some("7")))
                            .await
                            .status();
                        (id, status.as_u16())
                    }
                })
                .buffer_unordered(16)
                .for_each(|(id, status)| {
                    posted.fetch_add(1, Ordering::Relaxed);
                    if status == 202 {
                        accepted.lock().unwrap().push(id);
                    }
                    async {}
                })
                .await;
        })
    };

    for kill in 1..=KILLS {
        let target = kill * EVENTS / (KILLS + 1);
        wait_until(
            Duration::from_secs(60),
            "deliveries before the kill",
            || receiver.count() >= target,
        )
        .await;
        dispatcher.kill();
        dispatcher = Kivihook::start("dispatcher", &prefix, &dispatcher_env);
    }
    producer.await.unwrap();
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), EVENTS, "every event was answered 202");

    wait_until(
        Duration::from_secs(120),
        "every accepted event delivered",
        || {
            let got: std::collections::HashSet<String> = receiver
                .received()
                .iter()
                .map(|r| r.json()["id"].as_str().unwrap().to_owned())
                .collect();
            accepted.iter().all(|id| got.contains(id))
        },
    )
    .await;
    // The queue is empty: nothing is stuck.
    for _ in 0..100 {
        if queue_depth(&format!("{prefix}.deliveries")).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queue_depth(&format!("{prefix}.deliveries")).await, 0);

    let mut per_event: HashMap<String, Vec<String>> = HashMap::new();
    for r in receiver.received() {
        assert!(verify_signature(&secret, &r));
        per_event
            .entry(r.json()["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(r.header("webhook-id").to_owned());
    }
    let duplicates: usize = per_event.values().map(|v| v.len() - 1).sum();
    println!(
        "{} events accepted, {} deliveries, {duplicates} duplicates after {KILLS} kills (at most {} in flight per kill)",
        accepted.len(),
        receiver.count(),
        PREFETCH + RETRY_PREFETCH
    );
    // In flight: the first-attempt prefetch plus the retry prefetch (targets put off while
    // the receiver was busy come back as retry jobs).
    let in_flight = PREFETCH + RETRY_PREFETCH;
    assert!(
        duplicates <= KILLS * in_flight,
        "{duplicates} duplicates: more than the {KILLS} × {in_flight} messages that can be in flight"
    );
    for (id, msg_ids) in &per_event {
        assert!(
            msg_ids.iter().all(|m| *m == msg_ids[0]),
            "{id}: webhook-id stable across redeliveries"
        );
    }
    drop(dispatcher);
    drop(ingest);
    cleanup(&prefix).await;
}
