//! What an event's data can and cannot change in a request, and where credentials go:
//! data cannot walk the URL's path or choose its host, a template that renders something
//! unsendable sends nothing, rendering is bounded, redirects to another origin carry no
//! credential, and no error holds a credential.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn attempts(api: &Api, webhook: &str) -> Vec<Value> {
    get_json(api, &format!("/v1/webhooks/{webhook}/attempts?limit=100")).await["attempts"]
        .as_array()
        .unwrap()
        .clone()
}

async fn wait_attempts(api: &Api, webhook: &str, n: usize) -> Vec<Value> {
    eventually(Duration::from_secs(30), "attempts logged", || {
        let api = api.clone();
        let webhook = webhook.to_owned();
        async move { attempts(&api, &webhook).await.len() >= n }
    })
    .await;
    attempts(api, webhook).await
}

fn id(w: &Value) -> String {
    w["id"].as_str().unwrap().to_owned()
}

async fn post(api: &Api, id: &str, data: Value) {
    let e = json!({"id": id, "type": "appointment.booked", "clinic_id": "12", "data": data});
    assert_eq!(api.post_event(&e).await.status(), 202);
}

async fn refused(api: &Api, path: &str, body: Value) -> Value {
    let r = api
        .http
        .post(format!("{}{path}", api.base))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "{path} {body}");
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_data_cannot_walk_the_path_and_bad_renders_send_nothing() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[("KIVIHOOK_MAX_BODY", "4096")]);
    let api = Api::new(&k);
    let r = Receiver::start().await;
    let base = format!("http://{}", r.addr);
    let walk = api
        .create_webhook(json!({
            "name": "walk", "method": "DELETE", "events": ["appointment.booked"],
            "url": format!("{base}/api/clinics/{{{{clinic_id}}}}/patients/{{{{patient_id}}}}/appointments"),
            "auth": {"type": "bearer", "token": "bearer-token-0123456789"},
        }))
        .await;
    let json_body = api
        .create_webhook(json!({
            "name": "json", "url": format!("{base}/json"), "events": ["appointment.booked"],
            "body": {"type": "json", "template": "{\"status\": {{appointment_status}}}"},
        }))
        .await;
    let header = api
        .create_webhook(json!({
            "name": "header", "url": format!("{base}/header"), "events": ["appointment.booked"],
            "headers": {"X-Clinic": "{{clinic_name}}"},
        }))
        .await;
    let form = api
        .create_webhook(json!({
            "name": "form", "url": format!("{base}/form"), "events": ["appointment.booked"],
            "body": {"type": "form", "fields": {"a": "{{patient_name}}", "b": "{{patient_name}}"}},
        }))
        .await;

    // A healthy event goes where the template says.
    post(
        &api,
        "evt_ok",
        json!({"patient_id": "7", "appointment_status": 1, "clinic_name": "North", "patient_name": "Ada"}),
    )
    .await;
    wait_until(Duration::from_secs(20), "four deliveries", || {
        r.count() == 4
    })
    .await;
    let got = r.received();
    assert!(got
        .iter()
        .any(|g| g.method == "DELETE" && g.uri == "/api/clinics/12/patients/7/appointments"));
    assert!(got.iter().any(|g| g.header("x-clinic") == "North"));

    // Hostile data: every template renders something it must not send.
    post(
        &api,
        "evt_bad",
        json!({
            "patient_id": "..",
            "appointment_status": "1}, \"x\": [",
            "clinic_name": "North\u{1}\r\nX-Injected: yes",
            "patient_name": "y".repeat(3000),
        }),
    )
    .await;
    for (w, part) in [
        (&walk, "url"),
        (&json_body, "body.template"),
        (&header, "headers.X-Clinic"),
        (&form, "body"),
    ] {
        let log = wait_attempts(&api, &id(w), 2).await;
        let bad = log.iter().find(|a| a["event_id"] == "evt_bad").unwrap();
        assert_eq!(bad["error_kind"], "render", "{bad}");
        assert_eq!(
            bad["outcome"], "dead",
            "a render error is not retried: {bad}"
        );
        assert!(
            bad["error"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{part}:")),
            "{part}: {bad}"
        );
        assert!(bad["status"].is_null(), "nothing was sent: {bad}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        r.count(),
        4,
        "nothing of the hostile event reached the receiver"
    );
    let log = attempts(&api, &id(&walk)).await;
    let bad = log.iter().find(|a| a["event_id"] == "evt_bad").unwrap();
    assert!(bad["error"].as_str().unwrap().contains("`..`"), "{bad}");

    // A single dot, and a segment left empty, are refused as well.
    post(&api, "evt_dot", json!({"patient_id": "."})).await;
    post(&api, "evt_empty", json!({"patient_id": ""})).await;
    let log = wait_attempts(&api, &id(&walk), 4).await;
    for e in ["evt_dot", "evt_empty"] {
        let a = log.iter().find(|a| a["event_id"] == e).unwrap();
        assert_eq!(a["error_kind"], "render", "{a}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deletes: Vec<String> = r
        .received()
        .iter()
        .filter(|g| g.method == "DELETE")
        .map(|g| g.uri.clone())
        .collect();
    assert_eq!(deletes, ["/api/clinics/12/patients/7/appointments"]);
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_that_choose_the_host_or_work_without_bound_are_refused_at_save_and_preview() {
    let prefix = unique_prefix();
    let k = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&k);
    for url in [
        "https://{{ data.host }}/x",
        "https://api.example.com:{{ clinic_id }}/x",
        "https://{{ clinic_id }}.example.com/x",
    ] {
        let body = json!({"name": "host", "url": url, "events": ["appointment.booked"]});
        for path in ["/v1/webhooks", "/v1/webhooks/preview"] {
            let e = refused(&api, path, body.clone()).await;
            assert_eq!(e["error"]["field"], "url", "{url}: {e}");
            assert!(
                e["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("path and query"),
                "{url} {path}: {e}"
            );
        }
    }
    // In the scheme: not an http(s) URL at all.
    let e = refused(
        &api,
        "/v1/webhooks",
        json!({"name": "s", "url": "{{ event_type }}://api.example.com/x", "events": ["*"]}),
    )
    .await;
    assert_eq!(e["error"]["field"], "url", "{e}");
    let heavy = "{% for i in range(12000) %}{% for j in range(12000) %}x{% endfor %}{% endfor %}";
    let body = json!({
        "name": "heavy", "url": "https://api.example.com/x", "events": ["appointment.booked"],
        "body": {"type": "json", "template": format!("{{\"a\": \"{heavy}\"}}")},
    });
    let started = std::time::Instant::now();
    let (save, preview, health) = tokio::join!(
        refused(&api, "/v1/webhooks", body.clone()),
        refused(&api, "/v1/webhooks/preview", body.clone()),
        async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let t = std::time::Instant::now();
            let s = reqwest::get(k.url("/healthz")).await.unwrap().status();
            (s, t.elapsed())
        }
    );
    for e in [save, preview] {
        assert_eq!(e["error"]["field"], "body.template", "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains("fuel"),
            "{e}"
        );
    }
    assert_eq!(health.0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5) && health.1 < Duration::from_secs(2),
        "bounded: {:?}, /healthz {:?}",
        started.elapsed(),
        health.1
    );
    assert_eq!(get_json(&api, "/v1/webhooks").await["webhooks"], json!([]));
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_query_key_is_in_no_attempt_log_and_no_process_log() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[("KIVIHOOK_RETRY_SCHEDULE", "60")]);
    let api = Api::new(&k);
    // A port nothing listens on: the connection is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    const KEY: &str = "query-key-5e3f9a0b71c2";
    let w = api
        .create_webhook(json!({
            "name": "refused", "url": format!("http://127.0.0.1:{port}/hook?x=1"),
            "events": ["*"],
            "auth": {"type": "api_key", "name": "key", "value": KEY, "in": "query"},
        }))
        .await;
    post(&api, "evt_q", json!({})).await;
    let log = wait_attempts(&api, &id(&w), 1).await;
    let a = &log[0];
    assert_eq!(a["error_kind"], "connect", "{a}");
    let error = a["error"].as_str().unwrap();
    assert!(
        error.to_lowercase().contains("refused"),
        "the root cause: {error}"
    );
    assert!(!error.contains("for url"), "{error}");
    let text = serde_json::to_string(&log).unwrap();
    assert!(!text.contains(KEY) && !text.contains("5e3f9a0b"), "{text}");
    // The process log at every level.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = k.logs.lock().unwrap().join("\n");
    assert!(logs.contains("delivery failed"), "the failure is logged");
    assert!(!logs.contains(KEY) && !logs.contains("5e3f9a0b"), "{logs}");
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_origin_carries_no_credential_and_no_signature() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let first = Receiver::start().await;
    let other = Receiver::start().await;
    // Same host, another port: another origin.
    first.script(vec![
        (
            307,
            vec![("location", format!("http://{}/moved", other.addr))],
        ),
        (308, vec![("location", "/same-origin".into())]),
    ]);
    api.create_webhook(json!({
        "name": "redirected", "url": first.url(), "events": ["*"], "follow_redirects": true,
        "headers": {"X-Api-Key": "header-key-0123456789", "X-Clinic": "12"},
        "auth": {"type": "bearer", "token": "bearer-token-0123456789"},
    }))
    .await;
    post(&api, "evt_r1", json!({})).await;
    wait_until(
        Duration::from_secs(20),
        "the hop to the other origin",
        || other.count() == 1,
    )
    .await;
    let hop = &other.received()[0];
    assert_eq!(hop.method, "POST", "307 repeats the request");
    assert_eq!(hop.uri, "/moved");
    for h in ["x-api-key", "authorization", "webhook-signature"] {
        assert_eq!(hop.header(h), "", "{h} went to another origin");
    }
    assert_eq!(hop.header("x-clinic"), "12", "other headers go on");
    assert_eq!(hop.json()["id"], "evt_r1");
    // The first request had everything.
    let sent = &first.received()[0];
    assert_eq!(sent.header("x-api-key"), "header-key-0123456789");
    assert!(sent.header("webhook-signature").starts_with("v1,"));

    // A redirect within the origin keeps them.
    post(&api, "evt_r2", json!({})).await;
    wait_until(Duration::from_secs(20), "the same-origin hop", || {
        first.count() == 3
    })
    .await;
    let same = &first.received()[2];
    assert_eq!(same.uri, "/same-origin");
    assert_eq!(same.header("x-api-key"), "header-key-0123456789");
    assert_eq!(
        same.header("authorization"),
        "Bearer bearer-token-0123456789"
    );
    assert!(same.header("webhook-signature").starts_with("v1,"));
    drop(k);
    cleanup(&prefix).await;
}
