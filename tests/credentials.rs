//! Credentials outside `auth`: headers whose names mark a credential, headers marked
//! `"secret": true`, and capability URLs are sealed at rest (bound to their webhook and
//! field), masked in every answer, and sent in full only to the receiver.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const API_KEY: &str = "hdr-secret-1234567890";
const CUSTOM: &str = "custom-secret-9876543210";
const PATH: &str = "/services/T0001/B0002/CapabilityPathXyZ";

async fn stored_webhooks(prefix: &str) -> std::collections::HashMap<String, String> {
    let mut r = redis().await;
    let key = kivihook_core::keys::Keys::new(prefix).webhooks();
    redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut r)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_headers_and_capability_urls_are_sealed_masked_and_sent_whole() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let r = Receiver::start().await;
    let url = format!("http://{}{PATH}", r.addr);
    let created = api
        .create_webhook(json!({
            "name": "capability", "url": url, "url_secret": true, "events": ["*"],
            "headers": {
                "X-Api-Key": API_KEY,
                "X-Custom": {"value": CUSTOM, "secret": true},
                "X-Clinic": "12",
            },
        }))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();

    // Every answer masks them.
    let shown = get_json(&api, &format!("/v1/webhooks/{id}")).await;
    let listed = get_json(&api, "/v1/webhooks").await;
    let preview: Value = api
        .admin_post(&format!("/v1/webhooks/{id}/preview"))
        .await
        .json()
        .await
        .unwrap();
    for answer in [&created, &shown, &listed, &preview] {
        let text = answer.to_string();
        assert!(
            !text.contains(API_KEY) && !text.contains(CUSTOM) && !text.contains("CapabilityPath"),
            "{text}"
        );
    }
    assert_eq!(shown["headers"]["X-Clinic"], "12");
    assert_eq!(shown["headers"]["X-Api-Key"], "…7890");
    assert_eq!(shown["headers"]["X-Custom"], "…3210");
    assert_eq!(shown["url"], format!("http://{}/…hXyZ", r.addr));
    assert_eq!(shown["secret_headers"], json!(["X-Custom"]));

    // Sealed at rest.
    let stored = stored_webhooks(&prefix).await;
    let record = &stored[&id];
    assert!(
        !record.contains(API_KEY) && !record.contains(CUSTOM) && !record.contains("Capability"),
        "{record}"
    );
    assert!(record.contains("enc:v2:"), "{record}");

    // The receiver gets them whole; the attempt log shows the URL masked.
    assert_eq!(
        api.post_event(&event("evt_c1", "appointment.booked", None))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(20), "the delivery", || r.count() == 1).await;
    let got = &r.received()[0];
    assert_eq!(got.uri, PATH);
    assert_eq!(got.header("x-api-key"), API_KEY);
    assert_eq!(got.header("x-custom"), CUSTOM);
    eventually(Duration::from_secs(10), "the attempt logged", || {
        let api = api.clone();
        let id = id.clone();
        async move { get_json(&api, &format!("/v1/webhooks/{id}/attempts")).await["total"] == 1 }
    })
    .await;
    let log = get_json(&api, &format!("/v1/webhooks/{id}/attempts")).await;
    let text = log.to_string();
    assert!(
        !text.contains("CapabilityPath") && !text.contains(API_KEY),
        "{text}"
    );

    // A PATCH that sends back what it was shown keeps the real values.
    let r2 = api
        .http
        .patch(format!("{}/v1/webhooks/{id}", api.base))
        .bearer_auth(ADMIN)
        .json(&json!({"url": shown["url"], "headers": {
            "X-Api-Key": "…7890",
            "X-Custom": {"value": "…3210", "secret": true},
            "X-Clinic": "13",
        }}))
        .send()
        .await
        .unwrap();
    assert_eq!(r2.status(), 200);
    assert_eq!(
        api.post_event(&event("evt_c2", "appointment.booked", None))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(20), "the second delivery", || {
        r.count() == 2
    })
    .await;
    let got = &r.received()[1];
    assert_eq!(got.uri, PATH);
    assert_eq!(got.header("x-api-key"), API_KEY);
    assert_eq!(got.header("x-custom"), CUSTOM);
    assert_eq!(got.header("x-clinic"), "13");

    // The admin-only secret endpoint gives them whole, for a real export.
    let full = get_json(&api, &format!("/v1/webhooks/{id}/secret")).await;
    assert_eq!(full["url"], url);
    assert_eq!(full["headers"]["X-Api-Key"], API_KEY);
    drop(k);
    cleanup(&prefix).await;
}

/// A sealed value copied from one webhook into another does not open there: the swap is
/// refused instead of handing one webhook's credential to the other's endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_value_swapped_into_another_webhook_does_not_open() {
    let prefix = unique_prefix();
    let k = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&k);
    let mut ids = Vec::new();
    for (name, token) in [
        ("a", "token-of-a-0123456789"),
        ("b", "token-of-b-0123456789"),
    ] {
        let w = api
            .create_webhook(json!({
                "name": name, "url": "https://a.example/hook", "events": ["*"],
                "auth": {"type": "bearer", "token": token},
            }))
            .await;
        ids.push(w["id"].as_str().unwrap().to_owned());
    }
    let stored = stored_webhooks(&prefix).await;
    let mut a: Value = serde_json::from_str(&stored[&ids[0]]).unwrap();
    let b: Value = serde_json::from_str(&stored[&ids[1]]).unwrap();
    a["auth"]["token"] = b["auth"]["token"].clone();
    let mut r = redis().await;
    let key = kivihook_core::keys::Keys::new(&prefix).webhooks();
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg(&ids[0])
        .arg(a.to_string())
        .query_async(&mut r)
        .await
        .unwrap();
    let answer = api
        .http
        .get(format!("{}/v1/webhooks/{}/secret", api.base, ids[0]))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let text = answer.text().await.unwrap();
    assert!(!text.contains("token-of-b"), "{text}");
    assert!(!status.is_success(), "{status} {text}");
    drop(k);
    cleanup(&prefix).await;
}
