//! State that stays bounded: a delivered event leaves one short field in a dedup bucket for
//! the dedup window, and a deleted webhook leaves nothing behind.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::json;

/// Every key of this prefix matching `pattern` (a glob after the prefix's `{prefix:`).
async fn keys(prefix: &str, pattern: &str) -> Vec<String> {
    let mut r = redis().await;
    redis::cmd("KEYS")
        .arg(format!("{{{prefix}:{pattern}"))
        .query_async(&mut r)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_event_leaves_one_short_field_for_the_dedup_window() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let receiver = Receiver::start().await;
    let hook = api
        .create_webhook(json!({"name": "crm", "url": receiver.url(), "events": ["*"]}))
        .await;
    let wh = hook["id"].as_str().unwrap().to_owned();
    const EVENTS: usize = 500;
    let statuses: Vec<u16> = futures::stream::iter(0..EVENTS)
        .map(|i| {
            let api = api.clone();
            async move {
                let e = event(&format!("evt_{i}"), "appointment.booked", Some("12"));
                api.post_event(&e).await.status().as_u16()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 202));
    wait_until(Duration::from_secs(30), "every delivery", || {
        receiver.count() == EVENTS
    })
    .await;
    // Give the last outcomes a moment to be written after their response.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // No key per event: one field per event in the dedup buckets, no targets hash.
    assert_eq!(keys(&prefix, "e:*").await, Vec::<String>::new());
    let buckets = keys(&prefix, "d:*").await;
    assert!(
        !buckets.is_empty() && buckets.len() <= EVENTS,
        "{} buckets",
        buckets.len()
    );
    let mut r = redis().await;
    let mut fields = 0usize;
    for key in &buckets {
        let entries: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut r)
            .await
            .unwrap();
        for (id, marker) in &entries {
            // Short enough for Redis to keep the bucket packed (hash-max-listpack-value).
            assert!(marker.len() <= 64, "{id}: {marker}");
            assert!(marker.starts_with('a') && marker.contains("|~"), "{marker}");
        }
        fields += entries.len();
        let encoding: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(key)
            .query_async(&mut r)
            .await
            .unwrap();
        assert_eq!(encoding, "listpack", "{key}");
        let ttl: i64 = redis::cmd("TTL")
            .arg(key)
            .query_async(&mut r)
            .await
            .unwrap();
        assert!(
            ttl > 86_400,
            "{key} lives past the dedup window, not {ttl} s"
        );
    }
    assert_eq!(fields, EVENTS, "one field per event");

    // The webhook's attempt log keeps the newest 100; its hourly counters count all 500
    // and expire.
    let len: usize = redis::cmd("LLEN")
        .arg(format!("{{{prefix}:wh:{wh}}}:attempts"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(len, 100);
    let log = get_json(&api, &format!("/v1/webhooks/{wh}/attempts?limit=500")).await;
    assert_eq!(log["total"], 100);
    assert_eq!(log["attempts"].as_array().unwrap().len(), 100);
    let mut successes = 0u64;
    for key in keys(&prefix, &format!("wh:{wh}}}:h:*")).await {
        let s: Option<u64> = redis::cmd("HGET")
            .arg(&key)
            .arg("s")
            .query_async(&mut r)
            .await
            .unwrap();
        successes += s.unwrap_or(0);
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut r)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} never expires ({ttl})");
    }
    assert_eq!(successes, EVENTS as u64);

    // What the marker says reads back: the event, its webhook, delivered.
    let status = get_json(&api, "/v1/events/evt_7").await;
    assert_eq!(status["type"], "appointment.booked");
    assert_eq!(status["clinic_id"], "12");
    assert_eq!(status["webhooks"][0]["status"], "delivered");
    assert!(status["webhooks"][0]["delivered_at"].is_string());
    drop(k);
    cleanup(&prefix).await;
}

/// An event delivered to three webhooks is folded in one call: its one field names all
/// three, each with when it was delivered, and no targets hash is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_fanned_out_leaves_one_field_naming_every_webhook() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let receiver = Receiver::start().await;
    for name in ["crm", "sms", "billing"] {
        api.create_webhook(json!({"name": name, "url": receiver.url(), "events": ["*"]}))
            .await;
    }
    let e = event("evt_fanned", "appointment.booked", Some("12"));
    assert_eq!(api.post_event(&e).await.status(), 202);
    wait_until(Duration::from_secs(20), "three deliveries", || {
        receiver.count() == 3
    })
    .await;
    let mut r = redis().await;
    eventually(Duration::from_secs(5), "the three folded", || {
        let prefix = prefix.clone();
        async move {
            let mut r = redis().await;
            dedup_entry(&mut r, &prefix, "evt_fanned")
                .await
                .is_some_and(|m| m.matches("|~").count() == 3)
        }
    })
    .await;
    let marker = dedup_entry(&mut r, &prefix, "evt_fanned").await.unwrap();
    assert!(marker.starts_with('a'), "{marker}");
    assert_eq!(marker.matches('@').count(), 3, "{marker}");
    assert_eq!(keys(&prefix, "e:*").await, Vec::<String>::new());
    let status = get_json(&api, "/v1/events/evt_fanned").await;
    let webhooks = status["webhooks"].as_array().unwrap();
    assert_eq!(webhooks.len(), 3, "{status}");
    for w in webhooks {
        assert_eq!(w["status"], "delivered", "{status}");
        assert!(w["delivered_at"].is_string(), "{status}");
    }
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_webhook_leaves_nothing_behind() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[("KIVIHOOK_CIRCUIT_THRESHOLD", "0")]);
    let api = Api::new(&k);
    let receiver = Receiver::start().await;
    receiver.respond_with(500);
    // One dead letter at once (no retries), and one retry waiting an hour.
    let dying = api
        .create_webhook(
            json!({"name": "dying", "url": receiver.url(), "events": ["bill.paid"],
            "retry_schedule": []}),
        )
        .await;
    let waiting = api
        .create_webhook(
            json!({"name": "waiting", "url": receiver.url(), "events": ["bill.paid"],
            "retry_schedule": [3600]}),
        )
        .await;
    let other = Receiver::start().await;
    let keep = api
        .create_webhook(json!({"name": "keep", "url": other.url(), "events": ["bill.paid"]}))
        .await;
    for i in 0..5 {
        let r = api
            .post_event(&event(&format!("evt_gone_{i}"), "bill.paid", None))
            .await;
        assert_eq!(r.status(), 202);
    }
    wait_until(Duration::from_secs(30), "every first attempt", || {
        receiver.count() == 10 && other.count() == 5
    })
    .await;
    let dead = get_json(&api, "/v1/dead-letters").await;
    eventually(Duration::from_secs(10), "dead letters and jobs", || {
        let api = api.clone();
        let prefix = prefix.clone();
        async move {
            let dead = get_json(&api, "/v1/dead-letters").await;
            let jobs = keys(&prefix, "retry:*").await;
            dead["dead_letters"].as_array().map_or(0, |a| a.len()) == 5 && !jobs.is_empty()
        }
    })
    .await;
    drop(dead);

    for hook in [&dying, &waiting] {
        let id = hook["id"].as_str().unwrap();
        assert!(!keys(&prefix, &format!("wh:{id}}}*")).await.is_empty());
        let r = api
            .http
            .delete(format!("{}/v1/webhooks/{id}", api.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let mut r = redis().await;
    eventually(
        Duration::from_secs(10),
        "nothing left of the deleted webhooks",
        || {
            let prefix = prefix.clone();
            let ids = [
                dying["id"].as_str().unwrap().to_owned(),
                waiting["id"].as_str().unwrap().to_owned(),
            ];
            async move {
                for id in &ids {
                    if !keys(&prefix, &format!("wh:{id}}}*")).await.is_empty() {
                        return false;
                    }
                }
                // No retry job of theirs is left in any shard.
                let mut c = redis().await;
                for key in keys(&prefix, "retry:*}:jobs").await {
                    let jobs: Vec<String> = redis::cmd("HVALS")
                        .arg(key)
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    if jobs
                        .iter()
                        .any(|j| ids.iter().any(|id| j.contains(id.as_str())))
                    {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    let dead = get_json(&api, "/v1/dead-letters").await;
    assert_eq!(dead["dead_letters"].as_array().unwrap().len(), 0);
    assert_eq!(dead["total"], 0);
    let owners: u64 = redis::cmd("HLEN")
        .arg(format!("{{{prefix}:dlq}}:owner"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(owners, 0);
    // The webhook that stays keeps its own state.
    let id = keep["id"].as_str().unwrap();
    assert!(!keys(&prefix, &format!("wh:{id}}}*")).await.is_empty());
    drop(k);
    cleanup(&prefix).await;
}
