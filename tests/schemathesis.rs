//! schemathesis (the property-based API tester) against the real binary, RabbitMQ and
//! Redis: it reads `/openapi.json`, sends what the document allows and what it forbids,
//! and fails on any 5xx, any answer the document does not describe (status, content type,
//! headers, body schema), any valid request refused or invalid one accepted, and any
//! route whose documented auth is not enforced.
//!
//! schemathesis must be installed (`.ci/run` installs it); the test fails, never skips,
//! when it is missing.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The pinned version `.ci/run` installs.
const VERSION: &str = "4.32.5";

/// Test cases per operation and phase: enough to reach every branch of every schema, few
/// enough that a run takes a few minutes on two cores.
const EXAMPLES: &str = "25";

/// What schemathesis may see and what it must not count as a failure, with the reason for
/// each exception.
const CONFIG: &str = r#"
[checks.negative_data_rejection]
# A body over KIVIHOOK_MAX_BODY_BYTES (too many clinic_ids, say) is refused with 413 before
# it is parsed: a rejection like the others.
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]

[[operations]]
# Webhook definitions (saved, patched, previewed or imported) are checked beyond what JSON
# Schema can say: a URL must parse as a WHATWG URL, templates ({{placeholders}} in the URL,
# headers, query and body) must render against a sample of every subscribed event type, a
# JSON body template must render to JSON, and an add-on row's webhook_data text must be JSON.
# A schema-valid request that fails those checks is answered 422 with the field, which is the
# documented behaviour.
include-operation-id-regex = "^(create_webhook|update_webhook|preview_draft|import_kivicare)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]

[[operations]]
# A cursor is opaque: only one the API gave out (a page's `next_cursor`) reads back. Any
# other string is schema-valid and answered 422 naming `cursor`, the documented behaviour.
include-operation-id-regex = "^(list_webhooks|stats)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "422"]

[[operations]]
# An attempt whose request was not kept (a test send, or a body over 64 KiB) exists but
# cannot be sent again: a valid id that the API refuses with 422 `not_resendable`, as it has
# since resending was added.
include-operation-id-regex = "^resend_attempt$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "422"]
"#;

/// A stand-in for an egress proxy that refuses everything: every outbound request is sent to
/// it (`KIVIHOOK_OUTBOUND_PROXY`), so webhooks that generated data points at public addresses
/// never leave the machine. It accepts and closes at once, so a delivery
/// fails in milliseconds instead of waiting for a timeout.
fn refusing_proxy() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            drop(conn);
        }
    });
    addr
}

/// Through the interpreter, so that no script needs to be on PATH.
fn schemathesis() -> Command {
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "schemathesis.cli"]);
    cmd
}

fn schemathesis_version() -> Option<String> {
    let out = schemathesis().arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Run schemathesis with `args`, print everything it says, and return whether it passed.
fn run(dir: &Path, base: &str, header: Option<&str>, args: &[&str], limit: Duration) -> bool {
    let config = dir.join("schemathesis.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    let mut cmd = schemathesis();
    cmd.arg("--no-color")
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--checks", "all"])
        // One worker: with two, Hypothesis's example generation shares caches that are not
        // thread-safe, and schemathesis now and then reports its own KeyError as an error.
        .args(["--workers", "1"])
        .args(["--request-timeout", "20"])
        .args(["--report", "junit", "--report-dir"])
        .arg(dir.join("report"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(h) = header {
        cmd.args(["--header", h]);
    }
    let mut child = cmd.spawn().expect("start schemathesis");
    // Read both pipes while it runs: a full pipe would stop it mid-run.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for schemathesis") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("{}", out.join().unwrap_or_default());
    eprintln!("{}", err.join().unwrap_or_default());
    status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_departure_from_the_document() {
    let version = schemathesis_version().unwrap_or_else(|| {
        panic!(
            "schemathesis is not installed; `python3 -m pip install schemathesis=={VERSION}` \
             (.ci/run does it)"
        )
    });
    assert!(
        version.contains(VERSION),
        "schemathesis {VERSION} expected, found `{version}`"
    );

    let proxy = format!("http://{}", refusing_proxy());
    let prefix = unique_prefix();
    let k = Kivihook::start(
        "all",
        &prefix,
        &[
            // Generated webhooks may point anywhere: every delivery goes to a proxy that
            // refuses it, so nothing leaves the machine.
            ("KIVIHOOK_OUTBOUND_PROXY", &proxy),
            // A test send to a loopback port that never answers ends in 2 s.
            ("KIVIHOOK_DELIVERY_TIMEOUT", "2"),
        ],
    );
    let base = format!("http://{}", k.addr);
    let dir = std::env::temp_dir().join(format!("kivihook-{prefix}-schemathesis"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());

    let admin = format!("Authorization: Bearer {ADMIN}");
    let passed_admin = tokio::task::block_in_place(|| {
        run(
            &dir,
            &base,
            Some(&admin),
            &["--max-examples", EXAMPLES, "--seed", &seed],
            Duration::from_secs(900),
        )
    });
    // The ingest token: intake must accept it and every management route must answer 403
    // as documented.
    let ingest = format!("Authorization: Bearer {INGEST}");
    let passed_ingest = tokio::task::block_in_place(|| {
        run(
            &dir,
            &base,
            Some(&ingest),
            &[
                "--max-examples",
                "5",
                "--seed",
                &seed,
                "--phases",
                "examples,coverage,fuzzing",
            ],
            Duration::from_secs(600),
        )
    });

    drop(k);
    cleanup(&prefix).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        passed_admin,
        "schemathesis (admin token) reported failures; see its output above"
    );
    assert!(
        passed_ingest,
        "schemathesis (ingest token) reported failures; see its output above"
    );
}
