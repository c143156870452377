//! What operators rely on: declared webhooks applied at start, and Prometheus metrics that
//! `promtool check metrics` accepts from every role. (Registry export and import go through
//! the API: tests/cli.rs.)

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn temp_file(name: &str, content: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kivihook-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

async fn list(api: &Api) -> Vec<Value> {
    get_json(api, "/v1/webhooks").await["webhooks"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_webhooks_are_applied_at_start_and_matched_by_name() {
    let prefix = unique_prefix();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let file = temp_file(
        "webhooks.json",
        &json!([
            {"name": "crm", "url": "https://crm.example/h", "events": ["appointment.*"], "secret": secret},
            {"name": "slack", "url": "https://hooks.example/s", "events": ["kc_patient_save"], "clinic_ids": [3]}
        ])
        .to_string(),
    );
    let path = file.to_str().unwrap().to_owned();
    let k = Kivihook::start("ingest", &prefix, &[("KIVIHOOK_WEBHOOKS_FILE", &path)]);
    let api = Api::new(&k);
    let first = list(&api).await;
    assert_eq!(first.len(), 2);
    let by_name: HashMap<&str, &Value> = first
        .iter()
        .map(|w| (w["name"].as_str().unwrap(), w))
        .collect();
    assert_eq!(by_name["slack"]["events"], json!(["patient.created"]));
    drop(k);

    // Changed, added, and one created by hand in between: the file updates by name only.
    let api_made = {
        let k = Kivihook::start("ingest", &prefix, &[]);
        let api = Api::new(&k);
        api.create_webhook(json!({"name": "by-hand", "url": "https://x.example/", "events": ["*"]}))
            .await
    };
    std::fs::write(
        &file,
        json!([
            {"name": "crm", "url": "https://crm.example/v2", "events": ["appointment.*"], "secret": secret},
            {"name": "slack", "url": "https://hooks.example/s", "events": ["kc_patient_save"], "clinic_ids": [3]},
            {"name": "erp", "url": "https://erp.example/", "events": ["bill.*"], "enabled": false}
        ])
        .to_string(),
    )
    .unwrap();
    let k = Kivihook::start("ingest", &prefix, &[("KIVIHOOK_WEBHOOKS_FILE", &path)]);
    let api = Api::new(&k);
    let second = list(&api).await;
    assert_eq!(second.len(), 4);
    let after: HashMap<&str, &Value> = second
        .iter()
        .map(|w| (w["name"].as_str().unwrap(), w))
        .collect();
    assert_eq!(after["crm"]["id"], by_name["crm"]["id"], "updated in place");
    assert_eq!(after["crm"]["url"], "https://crm.example/v2");
    assert_eq!(
        after["slack"]["updated_at"], by_name["slack"]["updated_at"],
        "unchanged"
    );
    assert_eq!(after["erp"]["enabled"], false);
    assert_eq!(after["by-hand"]["id"], api_made["id"]);

    // The declared secret is the one that signs.
    let crm = get_json(
        &api,
        &format!(
            "/v1/webhooks/{}/secret",
            after["crm"]["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(crm["secret"], secret);
    drop(k);

    // A bad file stops ingest at start, naming the setting and the field.
    let bad = temp_file(
        "bad.json",
        &json!([{"name": "x", "url": "ftp://nope", "events": ["*"]}]).to_string(),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kivihook"))
        .arg("ingest")
        .env("KIVIHOOK_PREFIX", &prefix)
        .env("KIVIHOOK_SECRET_KEY", SECRET_KEY)
        .env("KIVIHOOK_WEBHOOKS_FILE", &bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("KIVIHOOK_WEBHOOKS_FILE") && stderr.contains("webhooks[0].url"),
        "{stderr}"
    );
    cleanup(&prefix).await;
}

/// `promtool check metrics` on one exposition; the tool's own complaint on failure.
fn promtool_check(role: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics on {role}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_serves_metrics_that_promtool_accepts_after_real_traffic() {
    let prefix = unique_prefix();
    let fast = [
        ("KIVIHOOK_RETRY_SCHEDULE", "0.1"),
        ("KIVIHOOK_SCHEDULER_INTERVAL", "0.05"),
        ("KIVIHOOK_CIRCUIT_THRESHOLD", "0"),
    ];
    let ingest = Kivihook::start("ingest", &prefix, &fast);
    let dispatcher = Kivihook::start("dispatcher", &prefix, &fast);
    let scheduler = Kivihook::start("scheduler", &prefix, &fast);
    let api = Api::new(&ingest);
    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.respond_with(500);
    api.create_webhook(json!({"name": "ok", "url": ok.url(), "events": ["*"]}))
        .await;
    api.create_webhook(json!({"name": "failing", "url": failing.url(), "events": ["bill.*"]}))
        .await;
    for i in 0..20 {
        let t = if i % 2 == 0 {
            "bill.paid"
        } else {
            "custom.lab.ready"
        };
        assert_eq!(
            api.post_event(&event(&format!("evt_m{i}"), t, Some("1")))
                .await
                .status(),
            202
        );
    }
    assert_eq!(
        api.post_event(&event("evt_m0", "bill.paid", None))
            .await
            .status(),
        200
    );
    let bad = api.post_event(&json!({"type": "nope", "data": {}})).await;
    assert_eq!(bad.status(), 422);
    wait_until(Duration::from_secs(20), "deliveries and retries", || {
        ok.count() >= 20 && failing.count() >= 20
    })
    .await;

    let http = reqwest::Client::new();
    // The scheduler reports queue gauges every two seconds.
    eventually(
        Duration::from_secs(10),
        "the scheduler's queue gauges",
        || async {
            let text = http
                .get(scheduler.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.contains(r#"kivihook_queue_consumers{queue="deliveries"} 1"#)
        },
    )
    .await;
    let mut texts = HashMap::new();
    for (role, k) in [
        ("ingest", &ingest),
        ("dispatcher", &dispatcher),
        ("scheduler", &scheduler),
    ] {
        let text = http
            .get(k.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        promtool_check(role, &text);
        texts.insert(role, text);
    }
    // Each role's own series are there, with bounded labels.
    assert!(texts["ingest"]
        .contains(r#"kivihook_events_ingested_total{outcome="accepted",type="bill.paid"} 10"#));
    assert!(texts["ingest"]
        .contains(r#"kivihook_events_ingested_total{outcome="accepted",type="custom"} 10"#));
    assert!(
        texts["ingest"].contains(r#"kivihook_ingest_rejected_total{code="unknown_event_type"} 1"#)
    );
    assert!(texts["dispatcher"].contains(r#"kivihook_deliveries_total{outcome="success"}"#));
    assert!(texts["dispatcher"].contains("kivihook_retries_scheduled_total"));
    assert!(texts["dispatcher"].contains("kivihook_event_to_delivery_seconds_bucket"));
    assert!(texts["scheduler"].contains("kivihook_retry_jobs_published_total"));
    assert!(texts["scheduler"].contains(r#"kivihook_queue_consumers{queue="deliveries"} 1"#));
    for text in texts.values() {
        assert!(!text.contains("evt_m"), "no event ids in labels");
        assert!(!text.contains("127.0.0.1"), "no URLs in labels");
        assert!(
            !text.contains("wh_"),
            "no webhook ids in labels unless KIVIHOOK_METRICS_WEBHOOK_LABELS asks"
        );
        assert!(text.contains("process_cpu_seconds_total"));
    }
    drop((ingest, dispatcher, scheduler));
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_secrets_are_encrypted_at_rest_and_still_sign() {
    let prefix = unique_prefix();
    let key = "Y2hhbmdlLW1lLWtpdmlob29rLXNlY3JldC1rZXktMzI=";
    let k = Kivihook::start("all", &prefix, &[("KIVIHOOK_SECRET_KEY", key)]);
    let api = Api::new(&k);
    let r = Receiver::start().await;
    let hook = api
        .create_webhook(json!({"name": "sealed", "url": r.url(), "events": ["*"]}))
        .await;
    let secret = hook["secret"].as_str().unwrap();

    let mut redis = redis().await;
    let raw: String = redis::cmd("HGET")
        .arg(kivihook_core::keys::Keys::new(&prefix).webhooks())
        .arg(hook["id"].as_str().unwrap())
        .query_async(&mut redis)
        .await
        .unwrap();
    let secret_body = secret.trim_start_matches("whsec_");
    assert!(
        !raw.contains(secret_body),
        "the raw Redis value holds no secret: {raw}"
    );
    assert!(
        raw.contains("enc:v2:"),
        "sealed and bound to the webhook: {raw}"
    );

    assert_eq!(
        api.post_event(&event("evt_sealed", "patient.created", None))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(10), "the signed delivery", || {
        r.count() == 1
    })
    .await;
    assert!(verify_signature(secret, &r.received()[0]));
    drop(k);

    // Under another key the sealed registry is not readable: a role started with one stops
    // at start (tests/secret_key_check.rs).
    cleanup(&prefix).await;
}
