//! The API behind the dashboard, on real RabbitMQ, Redis and receivers: delivery outcomes per
//! minute in `/v1/stats`, attempt filters, replaying every dead letter of a webhook, and the
//! preview of a webhook that is not saved yet.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Two webhooks, one healthy and one whose receiver fails: three events make three
/// deliveries, three failed attempts that retry and three dead letters.
async fn healthy_and_failing(
    api: &Api,
    prefix: &str,
) -> (Receiver, Receiver, String, String, Vec<String>) {
    let good = Receiver::start().await;
    let bad = Receiver::start().await;
    bad.respond_with(500);
    let healthy = api
        .create_webhook(json!({"name": "CRM", "url": good.url(), "events": ["appointment.*"]}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failing = api
        .create_webhook(json!({
            "name": "Billing", "url": bad.url(), "events": ["appointment.*"],
            "retry_schedule": [0.1],
        }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut events = Vec::new();
    for i in 0..3 {
        let id = format!("evt_{prefix}_{i}");
        let r = api
            .post_event(&event(&id, "appointment.booked", Some("12")))
            .await;
        assert_eq!(r.status(), 202);
        events.push(id);
    }
    eventually(Duration::from_secs(20), "three dead letters", || async {
        get_json(api, &format!("/v1/dead-letters?webhook_id={failing}")).await["total"] == 3
    })
    .await;
    eventually(Duration::from_secs(20), "three deliveries", || async {
        good.count() == 3
    })
    .await;
    (good, bad, healthy, failing, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_each_outcome_per_minute_and_leave_test_sends_out() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);

    let empty = get_json(&api, "/v1/stats").await;
    assert_eq!(empty["deliveries"]["last_24h"]["attempts"], 0);
    assert_eq!(empty["deliveries"]["last_24h"]["success_rate"], Value::Null);
    assert_eq!(
        empty["deliveries"]["per_minute"].as_array().unwrap().len(),
        60
    );

    let (_good, _bad, healthy, _, _) = healthy_and_failing(&api, &prefix).await;
    // A test send is logged but is not a delivery.
    assert_eq!(
        api.admin_post(&format!("/v1/webhooks/{healthy}/test"))
            .await
            .status(),
        200
    );

    // The minute counters are written once a second, off the delivery path.
    eventually(Duration::from_secs(5), "the minute counters", || async {
        get_json(&api, "/v1/stats").await["deliveries"]["last_24h"]["attempts"] == 9
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let d = get_json(&api, "/v1/stats").await["deliveries"].clone();
    for window in ["today", "last_24h"] {
        let w = &d[window];
        assert_eq!(
            (&w["delivered"], &w["retrying"], &w["dead"], &w["attempts"]),
            (&json!(3), &json!(3), &json!(3), &json!(9)),
            "{window}: {w}"
        );
        assert_eq!(w["success_rate"].as_f64(), Some(3.0 / 9.0));
    }
    let per_minute = d["per_minute"].as_array().unwrap();
    assert_eq!(per_minute.len(), 60);
    let sum = |k: &str| {
        per_minute
            .iter()
            .map(|m| m[k].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!((sum("delivered"), sum("retrying"), sum("dead")), (3, 3, 3));
    // Oldest first, one minute apart, ending now.
    let minutes: Vec<chrono::DateTime<chrono::Utc>> = per_minute
        .iter()
        .map(|m| m["minute"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(minutes
        .windows(2)
        .all(|w| (w[1] - w[0]).num_seconds() == 60));
    assert!((chrono::Utc::now() - minutes[59]).num_seconds() < 61);

    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_filter_by_outcome_and_event() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let (_good, _bad, _, failing, events) = healthy_and_failing(&api, &prefix).await;

    let page = |q: String| {
        let api = &api;
        let failing = &failing;
        async move { get_json(api, &format!("/v1/webhooks/{failing}/attempts?{q}")).await }
    };
    assert_eq!(page(String::new()).await["total"], 6);
    let dead = page("outcome=dead".into()).await;
    assert_eq!(dead["total"], 3);
    assert!(dead["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["outcome"] == "dead" && a["attempt"] == 2));
    assert_eq!(page("outcome=failed".into()).await["total"], 6);
    assert_eq!(page("outcome=delivered".into()).await["total"], 0);
    let one = page(format!("event_id={}", events[1])).await;
    assert_eq!(one["total"], 2);
    assert!(one["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["event_id"] == events[1].as_str()));
    let paged = page("outcome=failed&limit=4&offset=4".into()).await;
    assert_eq!(
        (
            paged["attempts"].as_array().unwrap().len(),
            &paged["next_offset"]
        ),
        (2, &Value::Null)
    );

    for (q, field) in [("outcome=lost", "outcome"), ("status=200", "status")] {
        let r = api
            .admin_get(&format!("/v1/webhooks/{failing}/attempts?{q}"))
            .await;
        assert_eq!(r.status(), 422, "{q}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["field"], field);
    }

    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_every_dead_letter_of_a_webhook_delivers_each_once() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let (_good, bad, healthy, failing, events) = healthy_and_failing(&api, &prefix).await;
    // Still failing: each is replayed once, fails again and becomes a new dead letter, which
    // the same call does not replay in turn.
    let before_first = bad.count();
    let r = api
        .admin_post(&format!("/v1/webhooks/{failing}/dead-letters/replay"))
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["replayed"], 3);
    eventually(
        Duration::from_secs(20),
        "three dead letters again",
        || async {
            get_json(&api, &format!("/v1/dead-letters?webhook_id={failing}")).await["total"] == 3
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bad.count() - before_first, 3, "replayed once each");

    let failed_before = bad.count();
    bad.respond_with(200);

    // Another webhook's dead letters are not touched.
    let r = api
        .admin_post(&format!("/v1/webhooks/{healthy}/dead-letters/replay"))
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["replayed"], 0);

    let r = api
        .admin_post(&format!("/v1/webhooks/{failing}/dead-letters/replay"))
        .await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (&body["replayed"], &body["remaining"]),
        (&json!(3), &json!(0))
    );
    eventually(
        Duration::from_secs(20),
        "three replays delivered",
        || async {
            bad.received()
                .iter()
                .skip(failed_before)
                .filter(|r| r.accepted)
                .count()
                == 3
        },
    )
    .await;
    // Each event exactly once, under the webhook-id its receiver saw before.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let replays: Vec<String> = bad
        .received()
        .iter()
        .skip(failed_before)
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(replays.len(), 3);
    for e in &events {
        assert_eq!(replays.iter().filter(|b| b.contains(e.as_str())).count(), 1);
    }
    assert_eq!(
        get_json(&api, &format!("/v1/dead-letters?webhook_id={failing}")).await["total"],
        0
    );
    for e in &events {
        let status = get_json(&api, &format!("/v1/events/{e}")).await;
        assert!(status["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["status"] == "delivered"));
    }

    let r = api
        .admin_post("/v1/webhooks/wh_nope/dead-letters/replay")
        .await;
    assert_eq!(r.status(), 404);

    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsaved_webhook_can_be_previewed() {
    let prefix = unique_prefix();
    let k = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&k);
    let preview = |body: Value, token: &'static str| {
        let api = &api;
        async move {
            api.http
                .post(format!(
                    "{}/v1/webhooks/preview?type=appointment.booked",
                    api.base
                ))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let draft = json!({
        "name": "draft", "url": "https://crm.example/patients/{{ patient_id }}",
        "events": ["appointment.*"], "method": "PUT",
        "auth": {"type": "bearer", "token": "very-secret-token"},
        "body": {"type": "json", "template": "{\"who\": \"{{ patient_name }}\"}"},
    });
    let r = preview(draft.clone(), ADMIN).await;
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["method"], "PUT");
    assert_eq!(p["event_type"], "appointment.booked");
    assert!(p["url"]
        .as_str()
        .unwrap()
        .starts_with("https://crm.example/patients/"));
    assert_eq!(p["body"], "{\"who\": \"Ada Lovelace\"}");
    assert!(!p.to_string().contains("very-secret-token"), "{p}");
    // Nothing was saved.
    assert_eq!(
        get_json(&api, "/v1/webhooks").await["webhooks"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    let mut broken = draft.clone();
    broken["body"]["template"] = json!("{\"who\": \"{{ patient_name \"}");
    let r = preview(broken, ADMIN).await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["field"],
        "body.template"
    );
    assert_eq!(preview(draft.clone(), INGEST).await.status(), 403);

    drop(k);
    cleanup(&prefix).await;
}
