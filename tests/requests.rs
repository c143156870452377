//! Requests that fit the receiver: every auth type, credentials sealed at rest and masked in
//! answers, and signing-secret rotation with both signatures valid during the overlap.

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::{json, Value};

const KEY: &str = "Y2hhbmdlLW1lLWtpdmlob29rLXNlY3JldC1rZXktMzI=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_type_reaches_the_endpoint_and_is_sealed_and_masked() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[("KIVIHOOK_SECRET_KEY", KEY)]);
    let api = Api::new(&k);
    let cases = [
        json!({"type": "api_key", "name": "X-Api-Key", "value": "key-header-0123456789", "in": "header"}),
        json!({"type": "api_key", "name": "api_key", "value": "key query&=0123456789", "in": "query"}),
        json!({"type": "bearer", "token": "bearer-token-0123456789"}),
        json!({"type": "basic", "username": "AC123", "password": "basic-pass-0123456789"}),
        json!({"type": "none"}),
    ];
    let mut receivers = Vec::new();
    let mut ids = Vec::new();
    for (i, auth) in cases.iter().enumerate() {
        let r = Receiver::start().await;
        let w = api
            .create_webhook(json!({"name": format!("auth{i}"), "url": format!("{}?clinic=12", r.url()), "events": ["*"], "auth": auth}))
            .await;
        // Answers show the credential masked.
        let shown = w["auth"].to_string();
        for secret in [
            "key-header-0123456789",
            "key query&=0123456789",
            "bearer-token-0123456789",
            "basic-pass-0123456789",
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
        ids.push(w["id"].as_str().unwrap().to_owned());
        receivers.push(r);
    }
    assert_eq!(
        api.post_event(&event("evt_auth", "patient.created", None))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(10), "every endpoint", || {
        receivers.iter().all(|r| r.count() == 1)
    })
    .await;
    let got: Vec<Received> = receivers.iter().map(|r| r.received()[0].clone()).collect();
    assert_eq!(got[0].header("x-api-key"), "key-header-0123456789");
    assert_eq!(
        got[1].uri,
        "/hook?clinic=12&api_key=key+query%26%3D0123456789"
    );
    assert_eq!(
        got[2].header("authorization"),
        "Bearer bearer-token-0123456789"
    );
    let basic = base64::engine::general_purpose::STANDARD.encode("AC123:basic-pass-0123456789");
    assert_eq!(got[3].header("authorization"), format!("Basic {basic}"));
    assert_eq!(got[4].header("authorization"), "");
    assert_eq!(got[4].uri, "/hook?clinic=12");

    // At rest, Redis holds none of the credentials.
    let mut redis = redis().await;
    let raw: Vec<String> = redis::cmd("HVALS")
        .arg(kivihook_core::keys::Keys::new(&prefix).webhooks())
        .query_async(&mut redis)
        .await
        .unwrap();
    let all = raw.join("\n");
    for secret in [
        "key-header-0123456789",
        "key query&=0123456789",
        "bearer-token-0123456789",
        "basic-pass-0123456789",
    ] {
        assert!(!all.contains(secret), "{secret} stored in the clear");
    }
    // The attempt log keeps the URL without the query credential.
    eventually(Duration::from_secs(5), "the attempt log", || async {
        get_json(&api, &format!("/v1/webhooks/{}/attempts", ids[1])).await["total"] == 1
    })
    .await;
    let log = get_json(&api, &format!("/v1/webhooks/{}/attempts", ids[1])).await;
    assert!(!log.to_string().contains("0123456789"), "{log}");

    // Sending back the masked credential keeps the real one; the next delivery still has it.
    let shown = get_json(&api, &format!("/v1/webhooks/{}", ids[2])).await;
    let r = api
        .http
        .patch(k.url(&format!("/v1/webhooks/{}", ids[2])))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "renamed", "auth": shown["auth"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        api.post_event(&event("evt_auth_2", "patient.created", None))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(10), "the second delivery", || {
        receivers[2].count() == 2
    })
    .await;
    assert_eq!(
        receivers[2].received()[1].header("authorization"),
        "Bearer bearer-token-0123456789"
    );

    // Logs never carry a credential.
    let logs = k.logs.lock().unwrap().join("\n");
    assert!(!logs.contains("0123456789"), "a credential reached the log");
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_new_one_during_the_overlap() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[("KIVIHOOK_SECRET_KEY", KEY)]);
    let api = Api::new(&k);
    let r = Receiver::start().await;
    let w = api
        .create_webhook(json!({"name": "rot", "url": r.url(), "events": ["*"]}))
        .await;
    let id = w["id"].as_str().unwrap();
    let old = w["secret"].as_str().unwrap().to_owned();

    let rotated: Value = api
        .admin_post(&format!("/v1/webhooks/{id}/rotate-secret"))
        .await
        .json()
        .await
        .unwrap();
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(rotated["previous_secret_expires_at"].is_string());
    // Only the rotate answer shows it.
    let shown = get_json(&api, &format!("/v1/webhooks/{id}"))
        .await
        .to_string();
    assert!(
        !shown.contains(&new[6..]) && !shown.contains(&old[6..]),
        "{shown}"
    );

    assert_eq!(
        api.post_event(&event("evt_rot", "bill.paid", None))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(10), "the delivery", || r.count() == 1).await;
    let got = &r.received()[0];
    assert_eq!(got.header("webhook-signature").split(' ').count(), 2);
    assert!(verify_signature(&new, got), "the new secret verifies");
    assert!(verify_signature(&old, got), "the old secret still verifies");
    // And so does the public Standard Webhooks library that receivers use.
    for secret in [&new, &old] {
        verify_with_standardwebhooks(secret, got);
    }

    let r404 = api.admin_post("/v1/webhooks/wh_nope/rotate-secret").await;
    assert_eq!(r404.status(), 404);
    drop(k);
    cleanup(&prefix).await;
}

/// Verify a delivery with the public `standardwebhooks` Python library (.ci/run installs it).
fn verify_with_standardwebhooks(secret: &str, r: &Received) {
    use std::io::Write;
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
req = json.load(sys.stdin)
Webhook(req["secret"]).verify(req["body"].encode(), req["headers"])
print("verified")
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let input = json!({
        "secret": secret,
        "body": String::from_utf8(r.body.to_vec()).unwrap(),
        "headers": {
            "webhook-id": r.header("webhook-id"),
            "webhook-timestamp": r.header("webhook-timestamp"),
            "webhook-signature": r.header("webhook-signature"),
        },
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("verified"),
        "standardwebhooks refused the delivery: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
