//! The whole pipeline: `kivihook all`, real receivers, 1,000 events.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};

/// The event types sent, some by their KiviCare action names, with their canonical names.
const TYPES: &[(&str, &str)] = &[
    ("kc_appointment_book", "appointment.booked"),
    ("appointment.cancelled", "appointment.cancelled"),
    ("kc_patient_save", "patient.created"),
    ("patient.updated", "patient.updated"),
    ("bill.paid", "bill.paid"),
    ("custom.lab.result_ready", "custom.lab.result_ready"),
    ("kc_encounter_save", "encounter.created"),
    ("kcpro_clinic_update", "clinic.updated"),
];

/// Each test receiver's subscription, and the same rule written independently for checking.
struct Sub {
    def: Value,
    wants: fn(&str, Option<&str>) -> bool,
}

fn subs() -> Vec<Sub> {
    vec![
        Sub {
            def: json!({"events": ["appointment.*"]}),
            wants: |t, _| t.starts_with("appointment."),
        },
        Sub {
            def: json!({"events": ["kc_patient_save", "patient.updated"], "clinic_ids": [1, "2"]}),
            wants: |t, c| t.starts_with("patient.") && matches!(c, Some("1") | Some("2")),
        },
        Sub {
            def: json!({"events": ["*"], "clinic_ids": ["3"]}),
            wants: |_, c| c == Some("3"),
        },
        Sub {
            def: json!({"events": ["custom.*", "bill.paid"]}),
            wants: |t, _| t.starts_with("custom.") || t == "bill.paid",
        },
        Sub {
            def: json!({"events": ["encounter.created"], "enabled": false}),
            wants: |_, _| false,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_receiver_gets_exactly_its_events_signed_with_stable_ids() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[("KIVIHOOK_PREFETCH", "200")]);
    let api = Api::new(&k);

    let subs = subs();
    let mut receivers = Vec::new();
    let mut secrets = Vec::new();
    let mut ids = Vec::new();
    for (i, sub) in subs.iter().enumerate() {
        let r = Receiver::start().await;
        let mut def = sub.def.clone();
        def["name"] = json!(format!("receiver {i}"));
        def["url"] = json!(r.url());
        def["headers"] = json!({"X-Receiver": i.to_string()});
        let created = api.create_webhook(def).await;
        secrets.push(created["secret"].as_str().unwrap().to_owned());
        ids.push(created["id"].as_str().unwrap().to_owned());
        receivers.push(r);
    }

    // 1,000 events of mixed types and clinics (some with none), 32 requests at a time.
    let events: Vec<(String, &str, &str, Option<String>)> = (0..1000)
        .map(|i| {
            let (sent, canonical) = TYPES[i % TYPES.len()];
            let clinic = match i % 5 {
                0 => None,
                n => Some(n.to_string()),
            };
            (format!("evt_e2e_{i}"), sent, canonical, clinic)
        })
        .collect();
    let started = Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(events.iter())
        .map(|(id, sent, _, clinic)| {
            let api = api.clone();
            let body = event(id, sent, clinic.as_deref());
            async move { api.post_event(&body).await.status().as_u16() }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 202), "every event accepted");
    let ingested = started.elapsed();

    let expected: Vec<HashSet<String>> = subs
        .iter()
        .map(|s| {
            events
                .iter()
                .filter(|(_, _, t, c)| (s.wants)(t, c.as_deref()))
                .map(|(id, ..)| id.clone())
                .collect()
        })
        .collect();
    let total: usize = expected.iter().map(HashSet::len).sum();
    wait_until(Duration::from_secs(120), "every expected delivery", || {
        receivers
            .iter()
            .zip(&expected)
            .all(|(r, e)| r.count() >= e.len())
    })
    .await;
    let delivered = started.elapsed();
    // Anything extra would arrive within moments; give it the chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "moved 1000 events ({total} deliveries) in {:.2}s: ingest {:.0} events/s, end to end {:.0} events/s, {:.0} deliveries/s",
        delivered.as_secs_f64(),
        1000.0 / ingested.as_secs_f64(),
        1000.0 / delivered.as_secs_f64(),
        total as f64 / delivered.as_secs_f64()
    );

    let canonical: HashMap<&str, (&str, Option<String>)> = events
        .iter()
        .map(|(id, _, t, c)| (id.as_str(), (*t, c.clone())))
        .collect();
    let mut seen_msg_ids = HashSet::new();
    for (i, (r, want)) in receivers.iter().zip(&expected).enumerate() {
        let got = r.received();
        let got_ids: Vec<String> = got
            .iter()
            .map(|g| g.json()["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            got_ids.len(),
            want.len(),
            "receiver {i}: no duplicates, nothing missing"
        );
        assert_eq!(
            got_ids.iter().cloned().collect::<HashSet<_>>(),
            *want,
            "receiver {i}"
        );
        for g in &got {
            assert!(
                verify_signature(&secrets[i], g),
                "receiver {i}: signature verifies"
            );
            assert_eq!(g.method, "POST");
            assert_eq!(g.header("content-type"), "application/json");
            assert_eq!(
                g.header("user-agent"),
                format!("KiviHook/{}", env!("CARGO_PKG_VERSION"))
            );
            assert_eq!(g.header("x-receiver"), i.to_string(), "custom header");
            let ts: i64 = g.header("webhook-timestamp").parse().unwrap();
            assert!((chrono_now() - ts).abs() < 300);
            let body = g.json();
            let id = body["id"].as_str().unwrap();
            let (t, clinic) = &canonical[id];
            assert_eq!(
                body["type"], *t,
                "KiviCare aliases arrive under their canonical name"
            );
            assert_eq!(body["clinic_id"].as_str(), clinic.as_deref());
            assert_eq!(body["data"]["appointment_id"], id);
            let msg_id = g.header("webhook-id").to_owned();
            assert!(msg_id.starts_with("msg_"));
            assert!(
                seen_msg_ids.insert(msg_id),
                "webhook-id is unique per event and webhook"
            );
        }
    }
    drop(k);
    cleanup(&prefix).await;
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_created_just_before_an_event_receives_it() {
    // Ingest stamps each event with the registry version it saw; the dispatcher catches up
    // before matching, so there is no window in which a fresh webhook misses events.
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let mut receivers = Vec::new();
    for round in 0..10 {
        let r = Receiver::start().await;
        api.create_webhook(json!({"name": format!("fresh {round}"), "url": r.url(), "events": ["patient.created"]}))
            .await;
        let e = event(&format!("fresh_{round}"), "patient.created", None);
        assert_eq!(api.post_event(&e).await.status(), 202);
        receivers.push(r);
    }
    wait_until(Duration::from_secs(30), "fresh webhooks to receive", || {
        receivers
            .iter()
            .enumerate()
            .all(|(i, r)| r.count() >= 10 - i)
    })
    .await;
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_with_no_retries_left_becomes_a_dead_letter_and_is_never_dropped() {
    let prefix = unique_prefix();
    // An empty schedule: one attempt, then a dead letter.
    let k = Kivihook::start("all", &prefix, &[("KIVIHOOK_RETRY_SCHEDULE", "")]);
    let api = Api::new(&k);
    let bad = Receiver::start().await;
    bad.respond_with(404);
    let good = Receiver::start().await;
    let bad_hook = api
        .create_webhook(json!({"name": "bad", "url": bad.url(), "events": ["*"]}))
        .await;
    api.create_webhook(json!({"name": "good", "url": good.url(), "events": ["*"]}))
        .await;
    assert_eq!(
        api.post_event(&event("evt_dl_1", "bill.created", None))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(30), "both attempts", || {
        bad.count() == 1 && good.count() == 1
    })
    .await;

    // The 4xx is a failure, recorded as a dead letter with its status; the message is acked.
    let mut r = redis().await;
    let keys = kivihook_core::keys::Keys::new(&prefix);
    let mut entries: Vec<String> = Vec::new();
    for _ in 0..100 {
        entries = redis::cmd("HVALS")
            .arg(keys.dead_letters_of_entries(bad_hook["id"].as_str().unwrap()))
            .query_async(&mut r)
            .await
            .unwrap();
        if !entries.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(entries.len(), 1);
    let dl: Value = serde_json::from_str(&entries[0]).unwrap();
    assert_eq!(dl["event_id"], "evt_dl_1");
    assert_eq!(dl["webhook_id"], bad_hook["id"]);
    assert_eq!(dl["last_status"], 404);
    assert_eq!(dl["event"]["type"], "bill.created");
    assert_eq!(dl["message_id"], bad.received()[0].header("webhook-id"));
    for _ in 0..100 {
        if queue_depth(&format!("{prefix}.deliveries")).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queue_depth(&format!("{prefix}.deliveries")).await, 0);
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparseable_message_goes_to_the_dead_letter_queue() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    // Wait until the topology exists, then publish garbage straight to the exchange.
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(k.url("/readyz")).send().await.unwrap().status(),
        200
    );
    let conn = lapin::Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_publish(
        &format!("{prefix}.events"),
        "patient.created",
        lapin::options::BasicPublishOptions::default(),
        b"{not json",
        lapin::BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let dead = format!("{prefix}.dead-letters");
    for _ in 0..200 {
        if queue_depth(&dead).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queue_depth(&dead).await, 1);
    assert_eq!(queue_depth(&format!("{prefix}.deliveries")).await, 0);
    let metrics = http
        .get(k.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kivihook_poison_messages_total 1"),
        "{metrics}"
    );
    let _ = conn.close(200, "done").await;
    drop(k);
    cleanup(&prefix).await;
}
