//! One bad webhook record cannot stall or hide: a record that does not parse is left out,
//! one whose sealed secret does not open is disabled, both are counted and shown, and every
//! other webhook keeps delivering. Real Redis, RabbitMQ, receivers and processes.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

use kivihook_core::keys::Keys;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_record_leaves_the_others_delivering_and_is_shown() {
    let prefix = unique_prefix();
    let good = Receiver::start().await;
    let other = Receiver::start().await;
    let (healthy, garbled, swapped) = {
        let k = Kivihook::start("ingest", &prefix, &[]);
        let api = Api::new(&k);
        let mut ids = Vec::new();
        for (name, url) in [
            ("healthy", good.url()),
            ("garbled", other.url()),
            ("swapped", other.url()),
        ] {
            let h = api
                .create_webhook(json!({"name": name, "url": url, "events": ["*"]}))
                .await;
            ids.push(h["id"].as_str().unwrap().to_owned());
        }
        (ids[0].clone(), ids[1].clone(), ids[2].clone())
    };

    // One record no longer parses; another carries the healthy webhook's sealed secret,
    // which is bound to the healthy webhook and so does not open as its own.
    let keys = Keys::new(&prefix);
    let mut r = redis().await;
    let stored = |id: &str| {
        let key = keys.webhooks();
        let id = id.to_owned();
        let mut r = r.clone();
        async move {
            let raw: String = redis::cmd("HGET")
                .arg(&key)
                .arg(&id)
                .query_async(&mut r)
                .await
                .unwrap();
            serde_json::from_str::<Value>(&raw).unwrap()
        }
    };
    let healthy_record = stored(&healthy).await;
    let mut swapped_record = stored(&swapped).await;
    assert!(healthy_record["secret"]
        .as_str()
        .unwrap()
        .starts_with("enc:"));
    swapped_record["secret"] = healthy_record["secret"].clone();
    let _: () = redis::cmd("HSET")
        .arg(keys.webhooks())
        .arg(&swapped)
        .arg(swapped_record.to_string())
        .arg(&garbled)
        .arg("{\"id\": \"half a record")
        .query_async(&mut r)
        .await
        .unwrap();

    let k = Kivihook::start("all", &prefix, &[("KIVIHOOK_SCHEDULER_INTERVAL", "0.05")]);
    let api = Api::new(&k);
    for i in 0..20 {
        let e = event(&format!("evt_bad_{i}"), "patient.created", None);
        assert_eq!(api.post_event(&e).await.status(), 202);
    }
    wait_until(
        Duration::from_secs(20),
        "20 deliveries to the healthy webhook",
        || good.count() >= 20,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(good.count(), 20);
    assert!(good.received().iter().all(|x| x.accepted));
    assert_eq!(
        other.count(),
        0,
        "nothing reaches the webhooks whose records are bad"
    );

    // Shown: /readyz lists both (and stays ready), the metric counts them, the stats name
    // them, and the listing shows the one that parses as disabled with the reason.
    let ready = api.http.get(k.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    let listed: Vec<&str> = ready["invalid_webhooks"]
        .as_array()
        .unwrap_or_else(|| panic!("{ready}"))
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    let mut expected = vec![garbled.as_str(), swapped.as_str()];
    expected.sort();
    assert_eq!(listed, expected, "{ready}");
    let reasons = ready["invalid_webhooks"].to_string();
    assert!(reasons.contains("does not parse"), "{reasons}");
    assert!(reasons.contains("KIVIHOOK_SECRET_KEY"), "{reasons}");
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
        metrics.contains("kivihook_registry_invalid_webhooks 2"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("invalid"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let stats = get_json(&api, "/v1/stats").await;
    assert_eq!(stats["invalid_webhooks"].as_array().unwrap().len(), 2);
    let w = get_json(&api, "/v1/webhooks").await;
    let shown: Vec<&Value> = w["webhooks"].as_array().unwrap().iter().collect();
    assert_eq!(shown.len(), 2, "the garbled record is left out: {w}");
    let s = shown.iter().find(|x| x["id"] == swapped.as_str()).unwrap();
    assert_eq!(s["enabled"], false);
    assert!(s["disabled_reason"]
        .as_str()
        .unwrap()
        .contains("KIVIHOOK_SECRET_KEY"));

    // Deleting the bad records clears them.
    for id in [&garbled, &swapped] {
        let r = api
            .http
            .delete(format!("{}/v1/webhooks/{id}", api.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    eventually(
        Duration::from_secs(10),
        "the list of bad records to empty",
        || async {
            let ready: Value = api
                .http
                .get(k.url("/readyz"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            ready.get("invalid_webhooks").is_none()
        },
    )
    .await;
    drop(k);
    cleanup(&prefix).await;
}
