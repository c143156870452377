//! The dashboard in a real headless Chromium (tests/browser/dashboard.mjs, driven by
//! playwright-core), against `kivihook all` on real RabbitMQ and Redis and real receivers.
//! This side prepares a webhook with a dead letter, runs the browser script, and then checks
//! from outside what the clicks did: the test send arrived signed with the secret the page
//! showed, the replayed dead letter was delivered, the deleted webhook is gone.
//!
//! Needs Node.js, `npm ci --prefix tests/browser` and Debian's `chromium`; `bash .ci/run`
//! installs them. Screenshots land in `target/screenshots/dashboard/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .join("screenshots")
        .join("dashboard")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrator_manages_webhooks_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/browser/dashboard.mjs");
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .is_dir(),
        "playwright-core is not installed: run `npm ci --prefix tests/browser` (bash .ci/run does)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium package (bash .ci/run does)"
    );

    let prefix = unique_prefix();
    let good = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.respond_with(500);
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);

    // A webhook whose receiver fails: one quick retry, then a dead letter.
    let billing = api
        .create_webhook(json!({
            "name": "Billing system",
            "url": failing.url(),
            "events": ["*"],
            "retry_schedule": [0.1],
        }))
        .await;
    let billing_id = billing["id"].as_str().expect("webhook id").to_owned();
    let dead_event = format!("evt_dash_{}", &prefix[3..]);
    let r = api
        .post_event(&event(&dead_event, "appointment.booked", Some("12")))
        .await;
    assert_eq!(r.status(), 202);
    eventually(
        Duration::from_secs(20),
        "the event is dead-lettered",
        || async {
            get_json(&api, &format!("/v1/dead-letters?webhook_id={billing_id}")).await["total"]
                .as_u64()
                == Some(1)
        },
    )
    .await;
    let before_replay = failing.count();
    failing.respond_with(200);

    let shots = screenshot_dir();
    let _ = std::fs::remove_dir_all(&shots);
    let out = Command::new("node")
        .arg(&script)
        .current_dir(root)
        .env("KIVIHOOK_URL", k.url(""))
        .env("ADMIN_TOKEN", ADMIN)
        .env("RECEIVER_URL", good.url())
        .env("FAILING_WEBHOOK_ID", &billing_id)
        .env("DEAD_EVENT_ID", &dead_event)
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node (install Node.js)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser script failed");

    // What the page showed, checked against what really happened.
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("the script printed no {key}"))
            .to_owned()
    };
    let secret = value("secret=");
    let created_id = value("webhook_id=");

    let test_send = good
        .received()
        .into_iter()
        .next()
        .expect("the Send test button reached the receiver");
    assert!(
        verify_signature(&secret, &test_send),
        "the test send is signed with the secret the page showed once"
    );
    assert_eq!(test_send.header("x-clinic-chain"), "north");
    let body: serde_json::Value =
        serde_json::from_slice(&test_send.body).expect("the templated body is JSON");
    assert_eq!(body["patient"], "Ada Lovelace");

    eventually(
        Duration::from_secs(20),
        "the replayed dead letter is delivered",
        || async {
            failing
                .received()
                .iter()
                .skip(before_replay)
                .any(|r| r.accepted && String::from_utf8_lossy(&r.body).contains(&dead_event))
        },
    )
    .await;

    let gone = api.admin_get(&format!("/v1/webhooks/{created_id}")).await;
    assert_eq!(
        gone.status(),
        404,
        "the webhook deleted in the page is gone"
    );

    let saved = std::fs::read_dir(&shots)
        .map(|d| d.filter_map(Result::ok).count())
        .unwrap_or(0);
    assert!(saved >= 14, "14 screenshots are saved, found {saved}");
    println!("screenshots: {}", shots.display());

    drop(k);
    cleanup(&prefix).await;
}
