//! A registry of thousands of webhooks against the real binary, RabbitMQ and Redis: a change
//! reaches the dispatcher from the change log (no full reload), listings page through every
//! webhook exactly once and search by name or URL, and metrics carry no webhook ids unless
//! asked to.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};

/// Webhooks registered besides the one that receives.
const OTHERS: usize = 2_000;

/// `kivihook_registry_reloads_total{role, kind}` from a `/metrics` exposition.
fn reloads(metrics: &str, role: &str, kind: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("kivihook_registry_reloads_total{"))
        .filter(|l| {
            l.contains(&format!("role=\"{role}\"")) && l.contains(&format!("kind=\"{kind}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .next()
        .unwrap_or(0)
}

async fn metrics(k: &Kivihook) -> String {
    reqwest::get(k.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Create many webhooks at once, a few requests in flight; their ids.
async fn create_many(api: &Api, definitions: Vec<Value>) -> Vec<String> {
    futures::stream::iter(definitions)
        .map(|d| {
            let api = api.clone();
            async move {
                api.create_webhook(d).await["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

async fn error_field(api: &Api, path: &str) -> (u16, Value) {
    let r = api.admin_get(path).await;
    let status = r.status().as_u16();
    (
        status,
        r.json::<Value>().await.unwrap()["error"]["field"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_among_thousands_of_webhooks_reaches_the_dispatcher_without_a_full_reload() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let target = Receiver::start().await;
    let elsewhere = Receiver::start().await;

    // Subscribed to other types, or to the same type for other clinics.
    let others: Vec<Value> = (0..OTHERS)
        .map(|i| {
            let mut d = json!({"name": format!("other {i}"), "url": elsewhere.url()});
            if i % 2 == 0 {
                d["events"] = json!(["doctor.created", "encounter.*"]);
            } else {
                d["events"] = json!(["patient.created"]);
                d["clinic_ids"] = json!([format!("other-{i}")]);
            }
            d
        })
        .collect();
    let started = Instant::now();
    let mut ids = create_many(&api, others).await;
    let hook = api
        .create_webhook(
            json!({"name": "Front Desk CRM", "url": target.url(), "events": ["bill.paid"]}),
        )
        .await;
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    ids.push(hook_id.clone());
    println!(
        "registered {} webhooks in {:?}",
        ids.len(),
        started.elapsed()
    );

    // The dispatcher has caught up with every creation.
    eventually(
        Duration::from_secs(10),
        "the dispatcher to hold every webhook",
        || async {
            metrics(&k).await.contains(&format!(
                "kivihook_webhooks{{state=\"enabled\"}} {}",
                OTHERS + 1
            ))
        },
    )
    .await;
    let before = metrics(&k).await;
    let full_before = reloads(&before, "dispatcher", "full");
    let incremental_before = reloads(&before, "dispatcher", "incremental");
    assert!(
        full_before >= 1,
        "the dispatcher loaded the registry at start"
    );

    // One webhook changes; the dispatcher applies it from the change log within 2 s, with
    // no event asking it to.
    let r = api
        .http
        .patch(k.url(&format!("/v1/webhooks/{hook_id}")))
        .bearer_auth(ADMIN)
        .json(&json!({"events": ["patient.created"], "clinic_ids": ["7"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let patched = Instant::now();
    eventually(
        Duration::from_secs(2),
        "the change to reach the dispatcher",
        || async { reloads(&metrics(&k).await, "dispatcher", "incremental") > incremental_before },
    )
    .await;
    println!(
        "the change reached the dispatcher in {:?}",
        patched.elapsed()
    );
    assert_eq!(
        api.post_event(&event("evt_reg_1", "patient.created", Some("7")))
            .await
            .status(),
        202
    );
    wait_until(
        Duration::from_secs(10),
        "the patched webhook to receive",
        || target.count() == 1,
    )
    .await;
    let after = metrics(&k).await;
    assert_eq!(
        reloads(&after, "dispatcher", "full"),
        full_before,
        "no full reload for one change"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(elsewhere.count(), 0, "no other webhook wants that event");

    // Paging returns every webhook exactly once, in creation order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/webhooks?limit=333&cursor={c}"),
            None => "/v1/webhooks?limit=333".to_owned(),
        };
        let page = get_json(&api, &path).await;
        assert_eq!(page["total"], OTHERS as u64 + 1);
        let items = page["webhooks"].as_array().unwrap();
        assert!(items.len() <= 333);
        seen.extend(items.iter().map(|w| w["id"].as_str().unwrap().to_owned()));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, (OTHERS + 1).div_ceil(333));
    assert_eq!(seen.len(), ids.len(), "each webhook once");
    assert_eq!(
        seen.iter().collect::<HashSet<_>>(),
        ids.iter().collect::<HashSet<_>>()
    );
    assert_eq!(seen.last(), Some(&hook_id), "created last, listed last");
    let first = get_json(&api, "/v1/webhooks").await;
    assert_eq!(
        first["webhooks"].as_array().unwrap().len(),
        100,
        "100 by default"
    );

    // Search by name or URL, in any case.
    let found = get_json(&api, "/v1/webhooks?q=front%20DESK").await;
    assert_eq!(found["total"], 1);
    assert_eq!(found["webhooks"][0]["id"], hook_id.as_str());
    assert!(found["next_cursor"].is_null());
    let port = target.addr.port().to_string();
    let by_url = get_json(&api, &format!("/v1/webhooks?q=:{port}/")).await;
    assert_eq!(by_url["total"], 1);

    // Statistics page the same way, with totals over every webhook; one webhook's have a
    // route of their own.
    let stats = get_json(&api, "/v1/stats?limit=10").await;
    assert_eq!(stats["webhooks"].as_array().unwrap().len(), 10);
    assert!(stats["next_cursor"].is_string());
    assert_eq!(stats["webhook_counts"]["total"], OTHERS as u64 + 1);
    eventually(
        Duration::from_secs(5),
        "the delivery in the statistics",
        || async {
            let one = get_json(&api, &format!("/v1/webhooks/{hook_id}/stats")).await;
            let totals = get_json(&api, "/v1/stats?limit=1").await["totals"].clone();
            one["successes"] == 1 && one["name"] == "Front Desk CRM" && totals["successes"] == 1
        },
    )
    .await;
    let r = api.admin_get("/v1/webhooks/wh_nope/stats").await;
    assert_eq!(r.status(), 404);

    // Bad paging is a 422 naming the parameter.
    for (path, field) in [
        ("/v1/webhooks?limit=0", "limit"),
        ("/v1/webhooks?limit=1001", "limit"),
        ("/v1/webhooks?cursor=nonsense", "cursor"),
        ("/v1/webhooks?sort=name", "sort"),
        ("/v1/stats?limit=x", "limit"),
        ("/v1/stats?cursor=%2F", "cursor"),
        ("/v1/stats?attention=maybe", "attention"),
    ] {
        assert_eq!(error_field(&api, path).await, (422, json!(field)), "{path}");
    }

    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_redis_lost_is_reloaded_whole_and_nothing_is_delivered_to_the_lost() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let lost = Receiver::start().await;
    let fresh = Receiver::start().await;
    api.create_webhook(json!({"name": "lost", "url": lost.url(), "events": ["*"]}))
        .await;
    eventually(
        Duration::from_secs(5),
        "the dispatcher to hold it",
        || async {
            metrics(&k)
                .await
                .contains("kivihook_webhooks{state=\"enabled\"} 1")
        },
    )
    .await;
    let full_before = reloads(&metrics(&k).await, "dispatcher", "full");

    // Redis forgets the registry (a restart without persistence), then a webhook is created:
    // the version moves past the dispatcher's, but the change log cannot vouch for it.
    let keys = kivihook_core::keys::Keys::new(&prefix);
    let mut r = redis().await;
    let _: () = redis::cmd("DEL")
        .arg(keys.webhooks())
        .arg(keys.webhooks_version())
        .arg(keys.webhook_changes())
        .arg(keys.webhook_changes_floor())
        .query_async(&mut r)
        .await
        .unwrap();
    api.create_webhook(json!({"name": "fresh", "url": fresh.url(), "events": ["*"]}))
        .await;
    assert_eq!(
        api.post_event(&event("evt_lost_1", "bill.paid", None))
            .await
            .status(),
        202
    );
    wait_until(
        Duration::from_secs(10),
        "the fresh webhook to receive",
        || fresh.count() == 1,
    )
    .await;
    assert!(reloads(&metrics(&k).await, "dispatcher", "full") > full_before);
    assert_eq!(lost.count(), 0, "the webhook Redis lost receives nothing");

    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_by_a_writer_that_keeps_no_log_is_still_picked_up() {
    // During a rolling upgrade, a role of the previous release changes webhooks the old
    // way (HSET and INCR, no change log): the new dispatcher must not miss it.
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let before = Receiver::start().await;
    let after = Receiver::start().await;
    let hook = api
        .create_webhook(json!({"name": "moving", "url": before.url(), "events": ["*"]}))
        .await;
    let id = hook["id"].as_str().unwrap();
    eventually(
        Duration::from_secs(5),
        "the dispatcher to hold it",
        || async {
            metrics(&k)
                .await
                .contains("kivihook_webhooks{state=\"enabled\"} 1")
        },
    )
    .await;

    let keys = kivihook_core::keys::Keys::new(&prefix);
    let mut r = redis().await;
    let stored: String = redis::cmd("HGET")
        .arg(keys.webhooks())
        .arg(id)
        .query_async(&mut r)
        .await
        .unwrap();
    let mut stored: Value = serde_json::from_str(&stored).unwrap();
    stored["url"] = json!(after.url());
    let _: () = redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg(keys.webhooks())
        .arg(id)
        .arg(stored.to_string())
        .ignore()
        .cmd("INCR")
        .arg(keys.webhooks_version())
        .ignore()
        .query_async(&mut r)
        .await
        .unwrap();

    assert_eq!(
        api.post_event(&event("evt_legacy_1", "bill.paid", None))
            .await
            .status(),
        202
    );
    wait_until(
        Duration::from_secs(10),
        "the delivery at the new URL",
        || after.count() == 1,
    )
    .await;
    assert_eq!(before.count(), 0);

    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_metrics_are_labelled_by_webhook_only_when_asked() {
    let failing = Receiver::start().await;
    failing.respond_with(500);
    for labels in [false, true] {
        let prefix = unique_prefix();
        let env = [
            ("KIVIHOOK_RETRY_SCHEDULE", ""),
            (
                "KIVIHOOK_METRICS_WEBHOOK_LABELS",
                if labels { "true" } else { "false" },
            ),
        ];
        let k = Kivihook::start("all", &prefix, &env);
        let api = Api::new(&k);
        let hook = api
            .create_webhook(
                json!({"name": "failing", "url": failing.url(), "events": ["bill.paid"]}),
            )
            .await;
        let id = hook["id"].as_str().unwrap().to_owned();
        assert_eq!(
            api.post_event(&event("evt_lbl_1", "bill.paid", None))
                .await
                .status(),
            202
        );
        eventually(Duration::from_secs(10), "the failed attempt", || async {
            metrics(&k)
                .await
                .contains(r#"kivihook_deliveries_total{outcome="failed"} 1"#)
        })
        .await;
        let text = metrics(&k).await;
        assert_eq!(
            text.contains(&format!(
                r#"kivihook_webhook_failures_total{{webhook="{id}"}} 1"#
            )),
            labels,
            "labelled by webhook id: {labels}"
        );
        assert_eq!(text.contains(&id), labels);
        drop(k);
        cleanup(&prefix).await;
    }
}
