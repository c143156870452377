//! Edits of one webhook cannot undo each other: PATCH, rotate-secret, enable/disable and the
//! dispatcher's auto-disable write by compare-and-set over what they read, against a real
//! Redis and the real binary.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use common::*;
use serde_json::{json, Value};

use kivihook_core::signing::generate_secret;
use kivihook_core::store::{RedisStore, Store};
use kivihook_core::webhook::{Webhook, WebhookSpec};
use kivihook_core::StoreError;

fn hook(name: &str) -> Webhook {
    let spec = WebhookSpec::from_json(&json!({
        "name": name, "url": "https://example.com/hook", "events": ["*"]
    }))
    .unwrap();
    Webhook::create(spec, generate_secret())
}

#[tokio::test]
async fn a_write_over_a_stale_read_is_refused_and_a_deleted_webhook_stays_deleted() {
    let prefix = unique_prefix();
    let store = RedisStore::connect("redis://127.0.0.1:6379", &prefix)
        .await
        .unwrap();
    let original = hook("stale");
    store.put_webhook(&original).await.unwrap();
    let read_a = store.get_webhook(&original.id).await.unwrap().unwrap();
    let read_b = read_a.clone();

    // A rotates the secret over its read: saved.
    let mut rotated = read_a.clone();
    rotated.rotate_secret(generate_secret(), chrono::Duration::hours(24));
    store.update_webhook(&rotated, &read_a).await.unwrap();

    // B disables over the same (now stale) read: refused, and the rotation stands.
    let mut disabled = read_b.clone();
    disabled.enabled = false;
    disabled.updated_at = Utc::now();
    match store.update_webhook(&disabled, &read_b).await {
        Err(StoreError::EditConflict { id }) => assert_eq!(id, original.id),
        other => panic!("a write over a stale read: {other:?}"),
    }
    let now = store.get_webhook(&original.id).await.unwrap().unwrap();
    assert_eq!(now.secret, rotated.secret);
    assert!(now.enabled);

    // Over a fresh read it goes through, keeping the rotated secret.
    let mut disabled = now.clone();
    disabled.enabled = false;
    store.update_webhook(&disabled, &now).await.unwrap();
    let now2 = store.get_webhook(&original.id).await.unwrap().unwrap();
    assert!(!now2.enabled);
    assert_eq!(now2.secret, rotated.secret);
    assert!(
        now2.updated_at > now.updated_at,
        "every saved edit moves updated_at"
    );

    // A write over a read of a webhook deleted since does not bring it back.
    assert!(store.delete_webhook(&original.id).await.unwrap());
    assert!(matches!(
        store.update_webhook(&now2, &now2).await,
        Err(StoreError::EditConflict { .. })
    ));
    assert!(store.get_webhook(&original.id).await.unwrap().is_none());
    cleanup(&prefix).await;
}

/// Ten webhooks whose receivers fail every request are auto-disabled by the dispatcher while
/// the API rotates their secrets as fast as it answers. Every webhook ends disabled and signs
/// with the secret its last rotation returned: no auto-disable wrote back an old secret, and
/// no rotation re-enabled a webhook from a read taken before it was disabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_and_auto_disable_keep_the_rotated_secret() {
    let prefix = unique_prefix();
    let env = [
        (
            "KIVIHOOK_RETRY_SCHEDULE",
            "0.05,0.05,0.05,0.05,0.05,0.05,0.05,0.05",
        ),
        ("KIVIHOOK_SCHEDULER_INTERVAL", "0.05"),
        // No circuit: every failure reaches the auto-disable check.
        ("KIVIHOOK_CIRCUIT_THRESHOLD", "0"),
        ("KIVIHOOK_AUTO_DISABLE_AFTER", "1"),
    ];
    let k = Kivihook::start("all", &prefix, &env);
    let api = Api::new(&k);
    let r = Receiver::start().await;
    r.respond_with(500);
    let mut ids = Vec::new();
    for i in 0..10 {
        let h = api
            .create_webhook(json!({
                "name": format!("racing-{i}"), "url": r.url(), "events": ["*"],
                "clinic_ids": [format!("c{i}")]
            }))
            .await;
        ids.push(h["id"].as_str().unwrap().to_owned());
    }
    // Failures for every webhook, all along.
    let feeder = {
        let api = api.clone();
        tokio::spawn(async move {
            for n in 0.. {
                for i in 0..10 {
                    let e = event(
                        &format!("evt_race_{n}_{i}"),
                        "encounter.created",
                        Some(&format!("c{i}")),
                    );
                    let _ = api.post_event(&e).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Rotate each webhook until it is disabled; remember the last secret handed out.
    let mut rotators = Vec::new();
    for id in ids.clone() {
        let api = api.clone();
        rotators.push(tokio::spawn(async move {
            let mut last = String::new();
            let mut rotations = 0u32;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let w = get_json(&api, &format!("/v1/webhooks/{id}")).await;
                if w["enabled"] == false || tokio::time::Instant::now() > deadline {
                    break;
                }
                let r = api
                    .admin_post(&format!("/v1/webhooks/{id}/rotate-secret"))
                    .await;
                assert_eq!(r.status(), 200);
                let body: Value = r.json().await.unwrap();
                last = body["secret"].as_str().unwrap().to_owned();
                rotations += 1;
            }
            (id, last, rotations)
        }));
    }
    let mut last_secret = HashMap::new();
    for t in rotators {
        let (id, last, rotations) = t.await.unwrap();
        assert!(rotations > 0, "{id} was disabled before any rotation");
        last_secret.insert(id, last);
    }
    feeder.abort();
    for id in &ids {
        let w = get_json(&api, &format!("/v1/webhooks/{id}")).await;
        assert_eq!(w["enabled"], false, "{id} ends disabled: {w}");
        assert!(
            w["disabled_reason"]
                .as_str()
                .is_some_and(|r| r.contains("failing")),
            "{w}"
        );
        let secret: Value = api
            .admin_get(&format!("/v1/webhooks/{id}/secret"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            secret["secret"].as_str().unwrap(),
            last_secret[id],
            "{id} signs with the secret its last rotation returned"
        );
    }
    drop(k);
    cleanup(&prefix).await;
}

/// A PATCH that loses the compare-and-set is made again over the fresh record, so a rename
/// racing a rotation keeps both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_and_rotations_keep_both() {
    let prefix = unique_prefix();
    let k = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&k);
    let h = api
        .create_webhook(json!({"name": "both", "url": "http://127.0.0.1:9/x", "events": ["*"]}))
        .await;
    let id = h["id"].as_str().unwrap().to_owned();
    let rotations = {
        let api = api.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut last = String::new();
            for _ in 0..40 {
                let r = api
                    .admin_post(&format!("/v1/webhooks/{id}/rotate-secret"))
                    .await;
                assert_eq!(r.status(), 200);
                let body: Value = r.json().await.unwrap();
                last = body["secret"].as_str().unwrap().to_owned();
            }
            last
        })
    };
    let mut last_path = String::new();
    for i in 0..40 {
        last_path = format!("/hook/{i}");
        let r = api
            .http
            .patch(format!("{}/v1/webhooks/{id}", api.base))
            .bearer_auth(ADMIN)
            .json(&json!({"url": format!("http://127.0.0.1:9{last_path}")}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        // Five lost races in a row would be a 409 edit_conflict; with one rival it is not.
        assert_eq!(status, 200, "{body}");
    }
    let last_secret = rotations.await.unwrap();
    let w = get_json(&api, &format!("/v1/webhooks/{id}")).await;
    assert_eq!(w["url"], format!("http://127.0.0.1:9{last_path}"));
    let secret: Value = api
        .admin_get(&format!("/v1/webhooks/{id}/secret"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(secret["secret"], last_secret.as_str());
    drop(k);
    cleanup(&prefix).await;
}
