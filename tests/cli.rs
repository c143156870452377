//! The API client commands (`kivihook webhooks | events | dead-letters …`), run as the real
//! binary against a real `kivihook all`, RabbitMQ, Redis and HTTP receivers; and the API
//! they rely on to carry signing secrets (`GET /v1/webhooks/{id}/secret`, `secret` on create
//! and PATCH).
//!
//! The client runs with a cleared environment holding only the API address and a token: it
//! needs no `KIVIHOOK_SECRET_KEY`, RabbitMQ or Redis.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// What one run of the client printed, and how it exited.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "stdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }

    /// The last line of standard output: the summary of `apply` and `import`.
    fn summary(&self) -> &str {
        self.stdout.lines().last().unwrap_or("")
    }
}

/// Run `kivihook ARGS` with only these environment variables, and this standard input.
async fn run_with(env: &[(&str, &str)], args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kivihook"));
    cmd.args(args)
        .env_clear()
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the client");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the client finished within a minute")
        .expect("client output");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    run
}

/// Run the client against this instance with the admin token.
async fn cli(k: &Kivihook, args: &[&str]) -> Run {
    cli_stdin(k, args, None).await
}

async fn cli_stdin(k: &Kivihook, args: &[&str], stdin: Option<&str>) -> Run {
    let url = k.url("");
    run_with(
        &[("KIVIHOOK_API_URL", &url), ("KIVIHOOK_ADMIN_TOKEN", ADMIN)],
        args,
        stdin,
    )
    .await
}

fn temp_file(name: &str, content: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kivihook-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// Every webhook by name, as the API shows it.
async fn by_name(api: &Api) -> HashMap<String, Value> {
    get_json(api, "/v1/webhooks").await["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["name"].as_str().unwrap().to_owned(), w.clone()))
        .collect()
}

/// A webhook's signing secret and credential, in full.
async fn secret_of(api: &Api, id: &str) -> Value {
    get_json(api, &format!("/v1/webhooks/{id}/secret")).await
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_and_list_see_every_webhook_past_the_first_page() {
    // More than one page of the CLI's (1,000) and ten of the API's default (100).
    const MANY: usize = 1_050;
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let definitions: Vec<Value> = (0..MANY)
        .map(|i| json!({"name": format!("clinic-{i:04}"), "url": format!("http://127.0.0.1:9/c{i}"), "events": ["*"]}))
        .collect();
    let file = temp_file("many.json", &json!({ "webhooks": definitions }).to_string());
    let path = file.to_str().unwrap();

    let first = cli(&k, &["webhooks", "apply", "-f", path]).await;
    first.ok();
    assert_eq!(
        first.summary(),
        format!("created {MANY}, updated 0, deleted 0, unchanged 0")
    );
    // Applied again, every webhook is found (on whichever page) and left alone.
    let again = cli(&k, &["webhooks", "apply", "-f", path]).await;
    again.ok();
    assert_eq!(
        again.summary(),
        format!("created 0, updated 0, deleted 0, unchanged {MANY}")
    );
    let listed = cli(&k, &["webhooks", "list", "-o", "json"]).await;
    listed.ok();
    let names: std::collections::HashSet<String> = listed.json()["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), MANY);

    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_makes_the_registry_match_the_file_and_changes_only_what_differs() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    // Written as people write them: aliases, numeric clinic ids, defaults left out.
    let v1 = format!(
        r#"webhooks:
  - name: crm
    url: http://127.0.0.1:9/crm
    events: [kc_patient_save, appointment.*]
    clinic_ids: [3, 4]
    auth: {{type: bearer, token: crm-token-0123456789}}
  - name: slack
    url: http://127.0.0.1:9/slack
    events: ["*"]
    secret: {SECRET}
  - name: erp
    url: http://127.0.0.1:9/erp
    events: [bill.*]
    enabled: false
"#
    );
    let file = temp_file("webhooks.yaml", &v1);
    let path = file.to_str().unwrap();

    let first = cli(&k, &["webhooks", "apply", "-f", path]).await;
    first.ok();
    assert_eq!(
        first.summary(),
        "created 3, updated 0, deleted 0, unchanged 0"
    );
    let created = by_name(&api).await;
    assert_eq!(created.len(), 3);
    assert_eq!(
        created["crm"]["events"],
        json!(["patient.created", "appointment.*"])
    );
    assert_eq!(created["crm"]["clinic_ids"], json!(["3", "4"]));
    assert_eq!(created["erp"]["enabled"], false);
    let slack_id = created["slack"]["id"].as_str().unwrap();
    assert_eq!(secret_of(&api, slack_id).await["secret"], SECRET);
    let crm_id = created["crm"]["id"].as_str().unwrap();
    assert_eq!(
        secret_of(&api, crm_id).await["auth"]["token"],
        "crm-token-0123456789"
    );

    // The same file again: nothing to do, and nothing touched.
    let again = cli(&k, &["webhooks", "apply", "-f", path]).await;
    again.ok();
    assert_eq!(
        again.summary(),
        "created 0, updated 0, deleted 0, unchanged 3"
    );
    assert_eq!(
        by_name(&api).await,
        created,
        "a second apply changes nothing"
    );

    // One webhook edited: a dry run shows it and changes nothing; then only it is updated.
    let v2 = v1.replace("http://127.0.0.1:9/crm", "http://127.0.0.1:9/crm-v2");
    std::fs::write(&file, &v2).unwrap();
    let dry = cli(&k, &["webhooks", "apply", "-f", path, "--dry-run"]).await;
    dry.ok();
    assert!(
        dry.stdout
            .contains(&format!("would update crm ({crm_id}): url")),
        "{}",
        dry.stdout
    );
    assert!(dry.summary().contains("nothing changed"), "{}", dry.stdout);
    assert_eq!(by_name(&api).await, created, "a dry run changes nothing");

    let edit = cli(&k, &["webhooks", "apply", "-f", path]).await;
    edit.ok();
    assert_eq!(
        edit.summary(),
        "created 0, updated 1, deleted 0, unchanged 2"
    );
    assert!(
        edit.stdout
            .contains(&format!("updated crm ({crm_id}): url")),
        "{}",
        edit.stdout
    );
    let edited = by_name(&api).await;
    assert_eq!(
        edited["crm"]["id"], created["crm"]["id"],
        "updated in place"
    );
    assert_eq!(edited["crm"]["url"], "http://127.0.0.1:9/crm-v2");
    assert_ne!(edited["crm"]["updated_at"], created["crm"]["updated_at"]);
    assert_eq!(edited["slack"], created["slack"], "untouched");
    assert_eq!(edited["erp"], created["erp"], "untouched");

    // A webhook made by hand and one dropped from the file: kept with --no-prune, and
    // deleted by a plain apply (a dry run of which deletes nothing).
    let by_hand = api
        .create_webhook(json!({"name": "by-hand", "url": "http://127.0.0.1:9/h", "events": ["*"]}))
        .await;
    let v3: String = v2.split("  - name: erp").next().unwrap().to_owned();
    std::fs::write(&file, &v3).unwrap();
    let kept = cli(&k, &["webhooks", "apply", "-f", path, "--no-prune"]).await;
    kept.ok();
    assert_eq!(
        kept.summary(),
        "created 0, updated 0, deleted 0, unchanged 2"
    );
    assert_eq!(by_name(&api).await.len(), 4);

    let dry = cli(&k, &["webhooks", "apply", "-f", path, "--dry-run"]).await;
    dry.ok();
    assert!(dry.stdout.contains("would delete erp"), "{}", dry.stdout);
    assert!(
        dry.stdout.contains("would delete by-hand"),
        "{}",
        dry.stdout
    );
    assert_eq!(by_name(&api).await.len(), 4, "a dry run deletes nothing");

    let pruned = cli(&k, &["webhooks", "apply", "-f", path]).await;
    pruned.ok();
    assert_eq!(
        pruned.summary(),
        "created 0, updated 0, deleted 2, unchanged 2"
    );
    let left = by_name(&api).await;
    let mut names: Vec<&String> = left.keys().collect();
    names.sort();
    assert_eq!(names, ["crm", "slack"]);
    let r = api
        .admin_get(&format!("/v1/webhooks/{}", by_hand["id"].as_str().unwrap()))
        .await;
    assert_eq!(r.status(), 404);

    // JSON is YAML too.
    let as_json = temp_file(
        "webhooks.json",
        &json!([
            {"name": "crm", "url": "http://127.0.0.1:9/crm-v2", "events": ["patient.created", "appointment.*"],
             "clinic_ids": ["3", "4"], "auth": {"type": "bearer", "token": "crm-token-0123456789"}},
            {"name": "slack", "url": "http://127.0.0.1:9/slack", "events": ["*"], "secret": SECRET}
        ])
        .to_string(),
    );
    let same = cli(&k, &["webhooks", "apply", "-f", as_json.to_str().unwrap()]).await;
    same.ok();
    assert_eq!(
        same.summary(),
        "created 0, updated 0, deleted 0, unchanged 2"
    );
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_changes_nothing_and_names_the_entry_and_field() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    api.create_webhook(json!({"name": "existing", "url": "http://127.0.0.1:9/e", "events": ["*"]}))
        .await;
    let before = by_name(&api).await;

    // Entry 0 is new and fine, `existing` would be pruned, entry 1 is wrong: nothing happens.
    let bad = temp_file(
        "bad.yaml",
        "- {name: fresh, url: 'http://127.0.0.1:9/f', events: ['*']}\n- {name: broken, url: 'ftp://x.example/', events: ['*']}\n",
    );
    let r = cli(&k, &["webhooks", "apply", "-f", bad.to_str().unwrap()]).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
    assert!(
        r.stderr.starts_with("error: ")
            && r.stderr.contains("webhooks[1].url")
            && r.stderr.contains("`broken`"),
        "{}",
        r.stderr
    );
    assert_eq!(by_name(&api).await, before, "nothing changed");

    // Names must be unique; a template must render; the secret must be a secret.
    for (content, field) in [
        (
            "- {name: twice, url: 'http://127.0.0.1:9/a', events: ['*']}\n- {name: twice, url: 'http://127.0.0.1:9/b', events: ['*']}\n",
            "webhooks[1].name",
        ),
        (
            "- {name: t, url: 'http://127.0.0.1:9/a', events: [bill.paid], body: {type: json, template: '{\"x\": {{nope}}}'}}\n",
            "webhooks[0].body.template",
        ),
        (
            "- {name: s, url: 'http://127.0.0.1:9/a', events: ['*'], secret: whsec_short}\n",
            "webhooks[0].secret",
        ),
        ("name: not-a-list\n", "must be a list"),
        ("[: not yaml", "is not valid YAML"),
    ] {
        let f = temp_file("bad.yaml", content);
        let r = cli(&k, &["webhooks", "apply", "-f", f.to_str().unwrap()]).await;
        assert_eq!(r.code, Some(2), "{content}: {}", r.stderr);
        assert!(r.stderr.contains(field), "{field}: {}", r.stderr);
        // import reads the same format, and refuses the same files whole.
        let r = cli(&k, &["webhooks", "import", f.to_str().unwrap()]).await;
        assert_eq!(r.code, Some(2), "{content}: {}", r.stderr);
    }
    assert_eq!(by_name(&api).await, before, "nothing changed");

    // What only the API can refuse (an internal address) is reported naming the entry.
    let refused = temp_file(
        "refused.yaml",
        "- {name: existing, url: 'http://127.0.0.1:9/e', events: ['*']}\n- {name: internal, url: 'http://10.0.0.1/x', events: ['*']}\n",
    );
    let r = cli(&k, &["webhooks", "apply", "-f", refused.to_str().unwrap()]).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("webhooks[1] (webhook `internal`): 422 forbidden_destination: url:"),
        "{}",
        r.stderr
    );
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reports_what_the_api_would_refuse_and_changes_nothing() {
    let prefix = unique_prefix();
    // Loopback is refused, as it is by default; 10.0.0.0/8 is allowed.
    let k = Kivihook::start(
        "ingest",
        &prefix,
        &[("KIVIHOOK_OUTBOUND_ALLOW", "10.0.0.0/8")],
    );
    let api = Api::new(&k);

    // A file whose first webhook the outbound guard refuses: the plan says so, with the
    // API's code, field and message, and never "would create" it.
    let file = temp_file(
        "webhooks.yaml",
        "- {name: crm, url: 'http://127.0.0.1:9/crm', events: ['*']}\n- {name: erp, url: 'http://10.1.2.3/erp', events: ['*']}\n",
    );
    let path = file.to_str().unwrap();
    let dry = cli(&k, &["webhooks", "apply", "-f", path, "--dry-run"]).await;
    assert!(
        dry.stdout
            .contains("cannot create crm: 422 forbidden_destination: url: "),
        "{}",
        dry.stdout
    );
    assert!(!dry.stdout.contains("would create crm"), "{}", dry.stdout);
    assert!(dry.stdout.contains("would create erp"), "{}", dry.stdout);
    assert!(
        dry.summary().contains("1 planned change would be refused"),
        "{}",
        dry.stdout
    );
    assert_eq!(dry.stderr.lines().count(), 1, "{}", dry.stderr);
    assert!(
        dry.stderr
            .contains("webhooks[0] (webhook `crm`): 422 forbidden_destination: url:"),
        "{}",
        dry.stderr
    );
    assert!(by_name(&api).await.is_empty(), "a dry run stores nothing");
    // The real apply fails on it the same way, with the same exit code.
    let real = cli(&k, &["webhooks", "apply", "-f", path]).await;
    assert_eq!(real.code, Some(1), "{}", real.stderr);
    assert_eq!(dry.code, real.code, "{}", dry.stderr);
    assert!(
        real.stderr
            .contains("webhooks[0] (webhook `crm`): 422 forbidden_destination: url:"),
        "{}",
        real.stderr
    );
    assert!(by_name(&api).await.is_empty());

    // A good file: planned as would be created, and still nothing stored.
    std::fs::write(
        &file,
        "- {name: erp, url: 'http://10.1.2.3/erp', events: ['*']}\n",
    )
    .unwrap();
    let dry = cli(&k, &["webhooks", "apply", "-f", path, "--dry-run"]).await;
    dry.ok();
    assert!(dry.stdout.contains("would create erp"), "{}", dry.stdout);
    assert_eq!(
        dry.summary(),
        "dry run, nothing changed: would have created 1, updated 0, deleted 0, unchanged 0"
    );
    assert!(by_name(&api).await.is_empty(), "a dry run stores nothing");
    cli(&k, &["webhooks", "apply", "-f", path]).await.ok();
    let created = by_name(&api).await;
    let erp_id = created["erp"]["id"].as_str().unwrap().to_owned();

    // An update the guard refuses: reported by the dry run of import as of apply, changing
    // nothing.
    std::fs::write(
        &file,
        "- {name: erp, url: 'http://169.254.169.254/latest/meta-data/', events: ['*']}\n",
    )
    .unwrap();
    for args in [
        ["webhooks", "apply", "-f", path, "--dry-run"].as_slice(),
        ["webhooks", "import", path, "--dry-run"].as_slice(),
    ] {
        let dry = cli(&k, args).await;
        assert_eq!(dry.code, Some(1), "{args:?}: {}", dry.stderr);
        assert!(
            dry.stdout.contains(&format!(
                "cannot update erp ({erp_id}): url: 422 forbidden_destination: url: "
            )),
            "{args:?}: {}",
            dry.stdout
        );
        assert!(!dry.stdout.contains("would update"), "{}", dry.stdout);
    }
    assert_eq!(by_name(&api).await, created, "a dry run changes nothing");

    drop(k);
    cleanup(&prefix).await;
}

/// An API that predates `?dry_run=`: it lists no webhooks and answers every POST as such an
/// ingest answers an empty definition. Counts the POSTs it gets.
async fn api_without_dry_run() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let posts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = posts.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // The head, then as much body as it announces.
            loop {
                let n = conn.read(&mut buf).await.unwrap_or(0);
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if n == 0 || request.len() >= end + 4 + length {
                        break;
                    }
                } else if n == 0 {
                    break;
                }
            }
            let (status, body) = if request.starts_with(b"POST") {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (
                    "422 Unprocessable Entity",
                    r#"{"error": {"code": "invalid_field", "field": "name", "message": "is required"}}"#,
                )
            } else {
                (
                    "200 OK",
                    r#"{"webhooks": [], "next_cursor": null, "total": 0}"#,
                )
            };
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(answer.as_bytes()).await;
        }
    });
    (url, posts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_against_an_api_that_cannot_check_it_sends_no_change() {
    let (url, posts) = api_without_dry_run().await;
    let file = temp_file(
        "webhooks.yaml",
        "- {name: erp, url: 'http://10.1.2.3/erp', events: ['*']}\n",
    );
    let r = run_with(
        &[("KIVIHOOK_API_URL", &url), ("KIVIHOOK_ADMIN_TOKEN", ADMIN)],
        &[
            "webhooks",
            "apply",
            "-f",
            file.to_str().unwrap(),
            "--dry-run",
        ],
        None,
    )
    .await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("does not check dry runs"), "{}", r.stderr);
    assert!(!r.stdout.contains("would create"), "{}", r.stdout);
    // Only the probe, which no API stores: never the definition itself.
    assert_eq!(posts.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_imported_into_a_fresh_instance_keeps_definitions_and_secrets() {
    let from = unique_prefix();
    let a = Kivihook::start("all", &from, &[]);
    let api_a = Api::new(&a);
    let receiver = Receiver::start().await;
    let signed = api_a
        .create_webhook(json!({
            "name": "signed", "url": receiver.url(), "events": ["appointment.*"], "clinic_ids": [12],
            "auth": {"type": "bearer", "token": "receiver-token-0123456789"},
            "headers": {"X-Clinic": "{{clinic_id}}"}, "retry_schedule": [1, 5],
        }))
        .await;
    let other = api_a
        .create_webhook(json!({
            "name": "other", "url": "http://127.0.0.1:9/o", "events": ["bill.*"], "enabled": false,
            "body": {"type": "form", "fields": {"who": "{{patient_name}}"}},
        }))
        .await;
    let secrets = [
        signed["secret"].as_str().unwrap().to_owned(),
        other["secret"].as_str().unwrap().to_owned(),
    ];

    let yaml = cli(&a, &["webhooks", "export", "-o", "yaml"]).await;
    yaml.ok();
    for s in &secrets {
        assert!(yaml.stdout.contains(s.as_str()), "secrets included");
    }
    assert!(yaml.stdout.contains("receiver-token-0123456789"));
    let json_export = cli(&a, &["webhooks", "export", "-o", "json"]).await;
    json_export.ok();
    assert_eq!(json_export.json().as_array().map(Vec::len), Some(2));

    let to = unique_prefix();
    let b = Kivihook::start("all", &to, &[]);
    let api_b = Api::new(&b);
    let file = temp_file("backup.yaml", &yaml.stdout);
    let imported = cli(&b, &["webhooks", "import", file.to_str().unwrap()]).await;
    imported.ok();
    assert_eq!(
        imported.summary(),
        "created 2, updated 0, deleted 0, unchanged 0"
    );

    // The same definitions (everything but ids and times), the same secrets, the same
    // credential.
    let strip = |mut w: Value| {
        for k in ["id", "created_at", "updated_at"] {
            w.as_object_mut().unwrap().remove(k);
        }
        w
    };
    let (was, now) = (by_name(&api_a).await, by_name(&api_b).await);
    assert_eq!(now.len(), 2);
    for name in ["signed", "other"] {
        assert_eq!(strip(now[name].clone()), strip(was[name].clone()), "{name}");
        let (s_was, s_now) = (
            secret_of(&api_a, was[name]["id"].as_str().unwrap()).await,
            secret_of(&api_b, now[name]["id"].as_str().unwrap()).await,
        );
        assert_eq!(s_now["secret"], s_was["secret"], "{name}");
        assert_eq!(s_now["auth"], s_was["auth"], "{name}");
    }

    // The proof: a delivery from the restored instance verifies with the exported secret
    // and carries the restored credential.
    assert_eq!(
        api_b
            .post_event(&event("evt_restored", "appointment.booked", Some("12")))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(15), "the delivery", || {
        receiver.count() == 1
    })
    .await;
    let got = &receiver.received()[0];
    assert_eq!(got.json()["id"], "evt_restored");
    assert!(
        verify_signature(&secrets[0], got),
        "verifies with the exported secret"
    );
    assert_eq!(
        got.header("authorization"),
        "Bearer receiver-token-0123456789"
    );
    assert_eq!(got.header("x-clinic"), "12");

    // Importing again, or the JSON export, changes nothing.
    let again = cli_stdin(&b, &["webhooks", "import", "-"], Some(&json_export.stdout)).await;
    again.ok();
    assert_eq!(
        again.summary(),
        "created 0, updated 0, deleted 0, unchanged 2"
    );

    // Without secrets: nothing secret in it, and applying it keeps what the webhooks have.
    let bare = cli(&b, &["webhooks", "export", "--no-secrets", "-o", "yaml"]).await;
    bare.ok();
    for s in &secrets {
        assert!(!bare.stdout.contains(s.as_str()));
    }
    assert!(!bare.stdout.contains("receiver-token-0123456789"));
    let bare_file = temp_file("bare.yaml", &bare.stdout);
    let kept = cli(
        &b,
        &["webhooks", "apply", "-f", bare_file.to_str().unwrap()],
    )
    .await;
    kept.ok();
    assert_eq!(
        kept.summary(),
        "created 0, updated 0, deleted 0, unchanged 2"
    );
    drop(a);
    drop(b);
    cleanup(&from).await;
    cleanup(&to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_stored_webhooks_from_earlier_versions_imports() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let other_secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    // What `kivihook webhooks export` wrote when it read Redis: whole stored webhooks.
    let stored = |id: &str, name: &str, secret: &str, enabled: bool| {
        let mut w = json!({
            "id": id, "name": name, "url": format!("http://127.0.0.1:9/{name}"), "method": "POST",
            "events": ["appointment.booked"], "clinic_ids": ["7"], "headers": {}, "enabled": enabled,
            "retry_schedule": null, "rate_limit": 3.0, "max_concurrency": null,
            "auth": {"type": "basic", "username": "u", "password": "pass-0123456789"},
            "follow_redirects": false, "query": {}, "body": {"type": "default"},
            "previous_secrets": [{"secret": other_secret, "expires_at": "2030-01-01T00:00:00Z"}],
            "secret": secret,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-02T00:00:00Z",
        });
        if !enabled {
            w["disabled_reason"] = json!("the endpoint answered 410 Gone");
        }
        w
    };
    let old = json!([
        stored("wh_old1", "legacy-crm", SECRET, true),
        stored("wh_old2", "legacy-erp", other_secret, false),
    ]);
    let text = serde_json::to_string_pretty(&old).unwrap();

    // A damaged record refuses the whole file, naming it.
    let mut damaged = old.clone();
    damaged[1]["url"] = json!("not a url");
    let r = cli_stdin(&k, &["webhooks", "import", "-"], Some(&damaged.to_string())).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("webhooks[1].url"), "{}", r.stderr);
    assert!(by_name(&api).await.is_empty(), "nothing half-imported");

    let r = cli_stdin(&k, &["webhooks", "import", "-"], Some(&text)).await;
    r.ok();
    assert_eq!(r.summary(), "created 2, updated 0, deleted 0, unchanged 0");
    let now = by_name(&api).await;
    assert_eq!(now["legacy-crm"]["clinic_ids"], json!(["7"]));
    assert_eq!(now["legacy-crm"]["rate_limit"], 3.0);
    assert_eq!(now["legacy-erp"]["enabled"], false);
    let crm = secret_of(&api, now["legacy-crm"]["id"].as_str().unwrap()).await;
    assert_eq!(crm["secret"], SECRET);
    assert_eq!(crm["auth"]["password"], "pass-0123456789");
    let erp = secret_of(&api, now["legacy-erp"]["id"].as_str().unwrap()).await;
    assert_eq!(erp["secret"], other_secret);
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_send_is_delivered_to_the_receiver() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let receiver = Receiver::start().await;
    let hook = api
        .create_webhook(json!({"name": "r", "url": receiver.url(), "events": ["appointment.*"]}))
        .await;

    let args = [
        "events",
        "send",
        "--type",
        "kc_appointment_book",
        "--clinic",
        "12",
        "--id",
        "evt_cli_1",
        "--data",
        r#"{"patient_name": "Ada"}"#,
    ];
    let sent = cli(&k, &args).await;
    sent.ok();
    assert_eq!(sent.stdout.trim(), "evt_cli_1 accepted");
    wait_until(Duration::from_secs(15), "the delivery", || {
        receiver.count() == 1
    })
    .await;
    let got = &receiver.received()[0];
    let body = got.json();
    assert_eq!(body["id"], "evt_cli_1");
    assert_eq!(body["type"], "appointment.booked");
    assert_eq!(body["clinic_id"], "12");
    assert_eq!(body["data"]["patient_name"], "Ada");
    assert!(verify_signature(hook["secret"].as_str().unwrap(), got));

    let again = cli(&k, &args).await;
    again.ok();
    assert_eq!(again.stdout.trim(), "evt_cli_1 duplicate");

    // A whole event from standard input, with the ingest token.
    let url = k.url("");
    let whole = json!({"id": "evt_cli_2", "type": "appointment.cancelled", "data": {"patient_name": "Grace"}});
    let r = run_with(
        &[
            ("KIVIHOOK_API_URL", &url),
            ("KIVIHOOK_INGEST_TOKEN", INGEST),
        ],
        &["events", "send", "-f", "-", "-o", "json"],
        Some(&whole.to_string()),
    )
    .await;
    r.ok();
    assert_eq!(r.json(), json!({"id": "evt_cli_2", "status": "accepted"}));
    wait_until(Duration::from_secs(15), "the second delivery", || {
        receiver.count() == 2
    })
    .await;
    assert_eq!(
        receiver.received()[1].json()["data"]["patient_name"],
        "Grace"
    );

    // An event the API refuses: its reason, one line, exit 1.
    let r = cli(&k, &["events", "send", "--type", "nope.nope"]).await;
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.starts_with("error: 422 "), "{}", r.stderr);
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_once_the_receiver_recovers() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[("KIVIHOOK_SCHEDULER_INTERVAL", "0.05")]);
    let api = Api::new(&k);
    let receiver = Receiver::start().await;
    receiver.respond_with(500);
    let hook = api
        .create_webhook(json!({
            "name": "flaky", "url": receiver.url(), "events": ["bill.*"], "retry_schedule": [0.2],
        }))
        .await;
    let wh = hook["id"].as_str().unwrap().to_owned();
    for id in ["evt_dl_1", "evt_dl_2"] {
        cli(&k, &["events", "send", "--type", "bill.paid", "--id", id])
            .await
            .ok();
    }
    let path = format!("/v1/dead-letters?webhook_id={wh}");
    eventually(Duration::from_secs(20), "two dead letters", || async {
        get_json(&api, &path).await["total"] == 2
    })
    .await;

    let listed = cli(&k, &["dead-letters", "list", "--webhook", &wh]).await;
    listed.ok();
    assert!(listed.stdout.starts_with("ID "), "{}", listed.stdout);
    for id in ["evt_dl_1", "evt_dl_2"] {
        assert!(listed.stdout.contains(id), "{}", listed.stdout);
    }
    assert!(listed.stdout.contains("500"), "{}", listed.stdout);
    let as_json = cli(
        &k,
        &["dead-letters", "list", "--webhook", &wh, "-o", "json"],
    )
    .await;
    as_json.ok();
    let dls = as_json.json();
    assert_eq!(dls["total"], 2);
    let first = dls["dead_letters"][0].clone();

    // The receiver is fixed: one by id, then the rest of the webhook's.
    receiver.respond_with(200);
    let delivered = |event_id: &'static str| {
        let receiver = &receiver;
        move || {
            receiver
                .received()
                .iter()
                .any(|r| r.accepted && r.json()["id"] == event_id)
        }
    };
    let one = cli(
        &k,
        &["dead-letters", "replay", first["id"].as_str().unwrap()],
    )
    .await;
    one.ok();
    assert!(one.stdout.starts_with("replayed dl_"), "{}", one.stdout);
    let first_event: &'static str = if first["event_id"] == "evt_dl_1" {
        "evt_dl_1"
    } else {
        "evt_dl_2"
    };
    let second_event = if first_event == "evt_dl_1" {
        "evt_dl_2"
    } else {
        "evt_dl_1"
    };
    wait_until(
        Duration::from_secs(15),
        "the replayed delivery",
        delivered(first_event),
    )
    .await;
    assert!(!delivered(second_event)(), "only the one replayed");

    let all = cli(&k, &["dead-letters", "replay", "--webhook", &wh, "--all"]).await;
    all.ok();
    assert_eq!(
        all.summary(),
        format!("replayed 1 dead letters of webhook {wh}")
    );
    wait_until(
        Duration::from_secs(15),
        "the second replayed delivery",
        delivered(second_event),
    )
    .await;
    let empty = cli(&k, &["dead-letters", "list", "--webhook", &wh]).await;
    empty.ok();
    assert_eq!(empty.stdout.trim(), "no dead letters");
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_one_clear_line_and_a_non_zero_exit() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let url = k.url("");

    let wrong = run_with(
        &[
            ("KIVIHOOK_API_URL", &url),
            ("KIVIHOOK_ADMIN_TOKEN", "not-the-admin-token-000"),
        ],
        &["webhooks", "list"],
        None,
    )
    .await;
    assert_eq!(wrong.code, Some(1));
    assert_eq!(wrong.stderr.lines().count(), 1, "{}", wrong.stderr);
    assert!(
        wrong.stderr.starts_with("error: 401 unauthorized")
            && wrong.stderr.contains("KIVIHOOK_ADMIN_TOKEN"),
        "{}",
        wrong.stderr
    );

    // The ingest token may send events but not manage webhooks.
    let forbidden = run_with(
        &[("KIVIHOOK_API_URL", &url), ("KIVIHOOK_ADMIN_TOKEN", INGEST)],
        &["webhooks", "export"],
        None,
    )
    .await;
    assert_eq!(forbidden.code, Some(1));
    assert!(
        forbidden.stderr.contains("403 forbidden"),
        "{}",
        forbidden.stderr
    );
    assert!(forbidden.stdout.is_empty(), "no partial export");

    let none = run_with(&[("KIVIHOOK_API_URL", &url)], &["webhooks", "list"], None).await;
    assert_eq!(none.code, Some(2));
    assert!(
        none.stderr.contains("KIVIHOOK_ADMIN_TOKEN"),
        "{}",
        none.stderr
    );

    let missing = cli(&k, &["webhooks", "get", "wh_does_not_exist"]).await;
    assert_eq!(missing.code, Some(1));
    assert!(
        missing.stderr.contains("404 not_found"),
        "{}",
        missing.stderr
    );

    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("http://127.0.0.1:{port}");
    let down = run_with(
        &[
            ("KIVIHOOK_API_URL", &nowhere),
            ("KIVIHOOK_ADMIN_TOKEN", ADMIN),
        ],
        &["webhooks", "list"],
        None,
    )
    .await;
    assert_eq!(down.code, Some(1));
    assert_eq!(down.stderr.lines().count(), 1, "{}", down.stderr);
    assert!(
        down.stderr.contains(&nowhere) && down.stderr.contains("KIVIHOOK_API_URL"),
        "{}",
        down.stderr
    );

    // Without KIVIHOOK_API_URL, the address comes from KIVIHOOK_BIND, as next to ingest.
    let bind = run_with(
        &[
            ("KIVIHOOK_BIND", &format!("0.0.0.0:{}", k.addr.port())),
            ("KIVIHOOK_ADMIN_TOKEN", ADMIN),
        ],
        &["webhooks", "list", "-o", "json"],
        None,
    )
    .await;
    bind.ok();
    assert_eq!(bind.json(), json!({"webhooks": []}));

    let bad_file = cli(
        &k,
        &["webhooks", "apply", "-f", "/nonexistent/webhooks.yaml"],
    )
    .await;
    assert_eq!(bad_file.code, Some(2), "an input file is wrong");
    assert!(
        bad_file.stderr.contains("cannot read"),
        "{}",
        bad_file.stderr
    );
    drop(k);
    cleanup(&prefix).await;
}

/// An input file that cannot be read is the command line's fault, like one that does not
/// parse: exit 2, one line naming the file, and nothing sent (nothing listens at the API
/// address here, which would be exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_input_file_exits_2_with_one_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("http://127.0.0.1:{port}");
    let env = [
        ("KIVIHOOK_API_URL", nowhere.as_str()),
        ("KIVIHOOK_ADMIN_TOKEN", ADMIN),
        ("KIVIHOOK_INGEST_TOKEN", INGEST),
    ];
    let missing = "/nonexistent/webhooks.yaml".to_owned();
    let directory = std::env::temp_dir().display().to_string();
    for file in [&missing, &directory] {
        for args in [
            vec!["webhooks", "apply", "-f", file],
            vec!["webhooks", "apply", "--dry-run", "-f", file],
            vec!["webhooks", "import", file],
            vec!["webhooks", "create", "-f", file],
            vec!["events", "send", "--type", "bill.paid", "-f", file],
        ] {
            let r = run_with(&env, &args, None).await;
            assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
            assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
            assert!(
                r.stderr.starts_with("error: ")
                    && r.stderr.contains("cannot read")
                    && r.stderr.contains(file.as_str()),
                "{args:?}: {}",
                r.stderr
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_secrets_can_be_given_read_and_replaced_through_the_api() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let receiver = Receiver::start().await;

    // Given on create: answered once in full, readable by the admin, masked elsewhere.
    let hook = api
        .create_webhook(
            json!({"name": "given", "url": receiver.url(), "events": ["*"], "secret": SECRET}),
        )
        .await;
    assert_eq!(hook["secret"], SECRET);
    let id = hook["id"].as_str().unwrap().to_owned();
    let read = secret_of(&api, &id).await;
    assert_eq!(read["id"], id.as_str());
    assert_eq!(read["secret"], SECRET);
    let shown = get_json(&api, &format!("/v1/webhooks/{id}")).await;
    assert_ne!(shown["secret"], SECRET);

    // Not a signing secret: 422 naming the field, on create and on PATCH.
    for bad in [json!("whsec_short"), json!("no-prefix"), json!(42)] {
        let r = api
            .http
            .post(k.url("/v1/webhooks"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "bad", "url": receiver.url(), "events": ["*"], "secret": bad}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["field"], "secret");
        let r = api
            .http
            .patch(k.url(&format!("/v1/webhooks/{id}")))
            .bearer_auth(ADMIN)
            .json(&json!({"secret": bad}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["field"], "secret");
    }

    // Sending back the masked value GET shows keeps the real secret.
    let patch = |body: Value| {
        api.http
            .patch(k.url(&format!("/v1/webhooks/{id}")))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
    };
    let r = patch(json!({"secret": shown["secret"], "name": "given-2"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(secret_of(&api, &id).await["secret"], SECRET);

    // A rotation leaves the old secret signing; a secret given by PATCH replaces both at once.
    let rotated = api
        .admin_post(&format!("/v1/webhooks/{id}/rotate-secret"))
        .await;
    assert_eq!(rotated.status(), 200);
    let replacement = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let r = patch(json!({"secret": replacement})).await.unwrap();
    assert_eq!(r.status(), 200);
    let after: Value = r.json().await.unwrap();
    assert_eq!(after["previous_secrets"], json!([]));
    assert_eq!(secret_of(&api, &id).await["secret"], replacement);
    assert_eq!(
        api.post_event(&event("evt_secret", "bill.paid", None))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(15), "the delivery", || {
        receiver.count() == 1
    })
    .await;
    let got = &receiver.received()[0];
    assert_eq!(got.header("webhook-signature").split(' ').count(), 1);
    assert!(verify_signature(replacement, got));
    assert!(!verify_signature(SECRET, got));

    // Only the admin reads secrets.
    let r = api
        .http
        .get(k.url(&format!("/v1/webhooks/{id}/secret")))
        .bearer_auth(INGEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        api.admin_get("/v1/webhooks/wh_nope/secret").await.status(),
        404
    );
    drop(k);
    cleanup(&prefix).await;
}
