//! The dashboard in a real headless Chromium (tests/browser/dashboard.mjs, driven by
//! playwright-core), against `kivihook all` on real RabbitMQ and Redis and real receivers.
//! This side prepares a webhook with a dead letter, runs the browser script, and then checks
//! from outside what the clicks did: the test send arrived signed with the secret the page
//! showed, the replayed dead letter was delivered, the deleted webhook is gone.
//!
//! A second test imports 10,000 webhooks through the API and runs
//! tests/browser/many_webhooks.mjs: the overview renders within 2 s, the list shows one page at
//! a time, and the search finds one webhook by name and one by URL.
//!
//! Needs Node.js, `npm ci --prefix tests/browser` and Debian's `chromium`; `bash .ci/run`
//! installs them. Screenshots land in `target/screenshots/dashboard/` (the second test's
//! start with `many-`).

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

/// The screenshots of the 10,000-webhook test start with this; the other test's do not.
const MANY: &str = "many-";

/// One browser test at a time: both share the screenshot directory, and the overview's 2 s
/// must not be timed while another `kivihook` and Chromium take the CPU.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The repository root and the Chromium to drive, or a message saying what to install.
fn browser_setup() -> (&'static Path, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
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
    (root, chromium)
}

/// The screenshots in `dir` that `mine` says are this test's.
fn screenshots(dir: &Path, mine: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with(".png") && mine(n))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Remove an earlier run's screenshots of this test, and only those.
fn clear_screenshots(dir: &Path, mine: impl Fn(&str) -> bool) {
    for p in screenshots(dir, mine) {
        let _ = std::fs::remove_file(p);
    }
}

/// Run a browser script with this environment; its output, echoed, and whether it passed.
fn run_script(root: &Path, script: &str, env: &[(&str, &str)]) -> (String, bool) {
    let mut cmd = Command::new("node");
    cmd.arg(root.join("tests/browser").join(script))
        .current_dir(root);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run node (install Node.js)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    (stdout, out.status.success())
}

/// The value the script printed as `key=value`.
fn printed(stdout: &str, key: &str) -> String {
    let prefix = format!("{key}=");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("the script printed no {key}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrator_manages_webhooks_in_a_real_browser() {
    let _one_at_a_time = BROWSER.lock().await;
    let (root, chromium) = browser_setup();

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
    let ours = |name: &str| !name.starts_with(MANY);
    clear_screenshots(&shots, ours);
    let (stdout, passed) = run_script(
        root,
        "dashboard.mjs",
        &[
            ("KIVIHOOK_URL", &k.url("")),
            ("ADMIN_TOKEN", ADMIN),
            ("RECEIVER_URL", &good.url()),
            ("FAILING_WEBHOOK_ID", &billing_id),
            ("DEAD_EVENT_ID", &dead_event),
            ("SCREENSHOT_DIR", &shots.to_string_lossy()),
            ("CHROMIUM", &chromium),
        ],
    );
    assert!(passed, "the browser script failed");

    // What the page showed, checked against what really happened.
    let secret = printed(&stdout, "secret");
    let created_id = printed(&stdout, "webhook_id");

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

    let saved = screenshots(&shots, ours).len();
    assert!(saved >= 14, "14 screenshots are saved, found {saved}");
    println!("screenshots: {}", shots.display());

    drop(k);
    cleanup(&prefix).await;
}

/// Webhooks in the 10,000-webhook test.
const MANY_WEBHOOKS: usize = 10_000;
/// Rows per import request: the most `POST /v1/webhooks/import/kivicare` takes.
const IMPORT_ROWS: usize = 500;
/// Every this many webhooks, one is imported disabled (so the overview has some to flag).
const DISABLED_EVERY: usize = 1_000;
/// The webhook searched for by name, and the one searched for by a piece of its URL.
const BY_NAME: usize = 4_217;
const BY_URL: usize = 7_391;

fn clinic_name(i: usize) -> String {
    format!("Clinic {i:05} front desk")
}

/// A KiviCare add-on row: names and URLs are unique, and no name holds a piece of a URL.
fn clinic_row(i: usize) -> serde_json::Value {
    let event = ["kc_appointment_book", "kc_patient_save"][i % 2];
    json!({
        "name": clinic_name(i),
        "module_name": "appointment",
        "event_name": event,
        "methods": "POST",
        "status": u8::from(i % DISABLED_EVERY != DISABLED_EVERY - 1),
        "webhook_data": {"url": format!("https://hooks-{i:05}.crm.example/kivihook")},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_webhooks_page_search_and_render_quickly() {
    let _one_at_a_time = BROWSER.lock().await;
    let (root, chromium) = browser_setup();
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);

    // 10,000 webhooks through the API, 500 a request, one after the other (so that creation
    // order, which the list follows, is the rows' order).
    let started = std::time::Instant::now();
    let rows: Vec<serde_json::Value> = (0..MANY_WEBHOOKS).map(clinic_row).collect();
    let url = k.url("/v1/webhooks/import/kivicare");
    let mut answers = Vec::new();
    for chunk in rows.chunks(IMPORT_ROWS) {
        let r = api
            .http
            .post(&url)
            .bearer_auth(ADMIN)
            .json(&json!({ "webhooks": chunk }))
            .send()
            .await
            .expect("import");
        assert_eq!(r.status(), 201, "an import of {} rows", chunk.len());
        answers.push(r.json::<serde_json::Value>().await.expect("import answer"));
    }
    let ids: std::collections::HashMap<String, String> = answers
        .iter()
        .flat_map(|a| a["imported"].as_array().expect("imported").iter())
        .map(|w| {
            (
                w["name"].as_str().expect("name").to_owned(),
                w["id"].as_str().expect("id").to_owned(),
            )
        })
        .collect();
    assert_eq!(ids.len(), MANY_WEBHOOKS, "every row became a webhook");
    let listed = get_json(&api, "/v1/webhooks?limit=1").await;
    assert_eq!(listed["total"].as_u64(), Some(MANY_WEBHOOKS as u64));
    let load_ms = started.elapsed().as_millis();
    println!(
        "imported {MANY_WEBHOOKS} webhooks in {} requests in {load_ms} ms",
        MANY_WEBHOOKS.div_ceil(IMPORT_ROWS)
    );

    let shots = screenshot_dir();
    let ours = |name: &str| name.starts_with(MANY);
    clear_screenshots(&shots, ours);
    let name_expected = clinic_name(BY_NAME);
    let url_expected = clinic_name(BY_URL);
    let (stdout, passed) = run_script(
        root,
        "many_webhooks.mjs",
        &[
            ("KIVIHOOK_URL", &k.url("")),
            ("ADMIN_TOKEN", ADMIN),
            ("SCREENSHOT_DIR", &shots.to_string_lossy()),
            ("CHROMIUM", &chromium),
            ("TOTAL_WEBHOOKS", &MANY_WEBHOOKS.to_string()),
            (
                "DISABLED_WEBHOOKS",
                &(MANY_WEBHOOKS / DISABLED_EVERY).to_string(),
            ),
            // Another case than the name's: the search ignores case.
            ("NAME_QUERY", &name_expected.to_uppercase()),
            ("NAME_EXPECTED", &name_expected),
            ("URL_QUERY", &format!("hooks-{BY_URL:05}.crm")),
            ("URL_EXPECTED", &url_expected),
        ],
    );
    assert!(passed, "the browser script failed");

    // Every step ran, and what the page found is the webhook the API created under that name.
    let steps = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(
        steps >= 6 && stdout.lines().any(|l| l == format!("1..{steps}")),
        "the script ran every step ({steps} passed)"
    );
    let overview_ms: u64 = printed(&stdout, "overview_ms")
        .parse()
        .expect("overview_ms is a number");
    assert!(
        overview_ms <= 2_000,
        "the overview took {overview_ms} ms to render"
    );
    assert_eq!(printed(&stdout, "name_found"), ids[&name_expected]);
    assert_eq!(printed(&stdout, "url_found"), ids[&url_expected]);
    let saved = screenshots(&shots, ours).len();
    assert!(saved >= 4, "4 screenshots are saved, found {saved}");
    println!(
        "{MANY_WEBHOOKS} webhooks loaded in {load_ms} ms; overview rendered in {overview_ms} ms; screenshots: {}",
        shots.display()
    );

    drop(k);
    cleanup(&prefix).await;
}
