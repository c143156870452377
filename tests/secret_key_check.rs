//! A wrong `KIVIHOOK_SECRET_KEY` must not look healthy: a role started with a key other than
//! the one the installation's secrets are sealed with stops at start, with one line naming
//! the setting and exit code 2, instead of answering `202` and `/readyz` while it can open
//! no secret and deliver nothing.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

use kivihook_core::keys::Keys;

/// Another valid key (32 bytes in base64), not the harness's `SECRET_KEY`.
const OTHER_KEY: &str = "b3RoZXIta2V5LWZvci1zZWFsaW5nLXNlY3JldHMtMzI=";

/// Run a role with this key until it exits (or 30 s, after which it is killed: it looked
/// healthy); its exit code and stderr.
fn run_role(role: &str, prefix: &str, key: &str) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kivihook"))
        .arg(role)
        .env("KIVIHOOK_BIND", "127.0.0.1:0")
        .env("KIVIHOOK_PREFIX", prefix)
        .env("KIVIHOOK_ADMIN_TOKEN", ADMIN)
        .env("KIVIHOOK_INGEST_TOKEN", INGEST)
        .env("KIVIHOOK_SECRET_KEY", key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kivihook");
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (code, stderr)
}

async fn key_check_exists(prefix: &str) -> bool {
    let mut r = redis().await;
    redis::cmd("EXISTS")
        .arg(Keys::new(prefix).secret_key_check())
        .query_async::<bool>(&mut r)
        .await
        .unwrap()
}

fn assert_refused(role: &str, code: Option<i32>, stderr: &str) {
    assert_eq!(code, Some(2), "{role} with another key: {stderr}");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "{role}: one line: {stderr}"
    );
    assert!(stderr.contains("KIVIHOOK_SECRET_KEY"), "{role}: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_started_with_another_secret_key_exits_2_naming_it() {
    let prefix = unique_prefix();
    // Started with key A…
    let k = Kivihook::start("ingest", &prefix, &[]);
    drop(k);

    // …then with key B, every role stops at start.
    for role in ["ingest", "dispatcher", "scheduler", "all"] {
        let (code, stderr) = run_role(role, &prefix, OTHER_KEY);
        assert_refused(role, code, &stderr);
    }
    assert!(key_check_exists(&prefix).await, "key A wrote the check");

    // With key A again, it starts and serves.
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let receiver = Receiver::start().await;
    api.create_webhook(json!({"name": "crm", "url": receiver.url(), "events": ["*"]}))
        .await;
    let ready = api.http.get(k.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_sealed_before_the_check_existed_decide_which_key_may_write_it() {
    let prefix = unique_prefix();
    let k = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&k);
    api.create_webhook(json!({"name": "crm", "url": "http://127.0.0.1:9/crm", "events": ["*"]}))
        .await;
    drop(k);
    // An installation from before the check: secrets sealed with key A, no check.
    let mut r = redis().await;
    let _: () = redis::cmd("DEL")
        .arg(Keys::new(&prefix).secret_key_check())
        .query_async(&mut r)
        .await
        .unwrap();

    // Key B does not open those secrets: it stops, and does not claim the installation.
    let (code, stderr) = run_role("dispatcher", &prefix, OTHER_KEY);
    assert_refused("dispatcher", code, &stderr);
    assert!(!key_check_exists(&prefix).await, "key B wrote no check");

    // Key A opens them: it starts, and writes the check.
    let k = Kivihook::start("ingest", &prefix, &[]);
    assert!(key_check_exists(&prefix).await);
    let list = get_json(&Api::new(&k), "/v1/webhooks").await;
    assert_eq!(list["total"], 1);
    drop(k);
    cleanup(&prefix).await;
}
