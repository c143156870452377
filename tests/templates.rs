//! Requests shaped by templates: every method, JSON and form bodies, URL, header and query
//! templates, values escaped for where they land, and templates checked when saved.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const NAME: &str = "O\"Brien & Co <x>";

fn appointment(id: &str) -> Value {
    json!({
        "id": id, "type": "kc_appointment_book", "clinic_id": 12,
        "data": {
            "appointment": {"appointment_id": "1042", "appointment_date": "2026-12-01", "appointment_start_time": "09:30"},
            "patient": {"patient_name": NAME, "patient_email": "obrien@example.com", "patient_contact_number": "+15550100"},
            "doctor": {"doctor_name": "Dr. Grace Hopper"},
            "clinic": {"clinic_name": "Central Clinic"}
        }
    })
}

fn query_of(uri: &str) -> HashMap<String, String> {
    let q = uri.split_once('?').map(|(_, q)| q).unwrap_or("");
    url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templated_requests_arrive_intact_with_every_method() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let json_r = Receiver::start().await;
    let form_r = Receiver::start().await;
    let get_r = Receiver::start().await;
    let methods_r = Receiver::start().await;
    let json_hook = api
        .create_webhook(json!({
            "name": "slack-like", "url": json_r.url(), "events": ["appointment.*"],
            "headers": {"X-Patient": "{{ patient_name }}"},
            "body": {"type": "json", "template": "{\"text\": \"New appointment for {{patient_name}} on {{appointment_date}} at {{appointment_start_time}}\",\n \"clinic\": \"{{ clinic_name }}\", \"event\": \"{{ event.type }}\"}"}
        }))
        .await;
    api.create_webhook(json!({
        "name": "twilio-like", "url": form_r.url(), "events": ["appointment.booked"],
        "auth": {"type": "basic", "username": "AC123", "password": "secret-password-123"},
        "body": {"type": "form", "fields": {"To": "{{ patient_contact_number }}", "Body": "Hi {{patient_name}}, see you {{appointment_date}}"}}
    }))
    .await;
    api.create_webhook(json!({
        "name": "get-like", "url": format!("http://127.0.0.1:{}/appointments/{{{{appointment_id}}}}/{{{{patient_name}}}}", get_r.addr.port()),
        "method": "GET", "events": ["appointment.booked"],
        "query": {"name": "{{ patient_name }}", "email": "{{patient_email}}"}
    }))
    .await;
    for method in ["PUT", "PATCH", "DELETE"] {
        api.create_webhook(json!({"name": method, "url": methods_r.url(), "method": method, "events": ["appointment.booked"]}))
            .await;
    }
    assert_eq!(
        api.post_event(&appointment("evt_tpl_1")).await.status(),
        202
    );
    wait_until(Duration::from_secs(10), "every templated request", || {
        json_r.count() == 1 && form_r.count() == 1 && get_r.count() == 1 && methods_r.count() == 3
    })
    .await;

    // JSON: escaped inside the string, still valid JSON, signed over what was sent.
    let got = &json_r.received()[0];
    let body: Value = serde_json::from_slice(&got.body).expect("valid JSON");
    assert_eq!(
        body["text"],
        format!("New appointment for {NAME} on 2026-12-01 at 09:30")
    );
    assert_eq!(body["clinic"], "Central Clinic");
    assert_eq!(body["event"], "appointment.booked");
    assert_eq!(got.header("content-type"), "application/json");
    assert_eq!(got.header("x-patient"), NAME);
    assert!(verify_signature(json_hook["secret"].as_str().unwrap(), got));

    // Form: URL-encoded, decoded intact, with basic auth.
    let got = &form_r.received()[0];
    assert_eq!(
        got.header("content-type"),
        "application/x-www-form-urlencoded"
    );
    let form: HashMap<String, String> = url::form_urlencoded::parse(&got.body)
        .into_owned()
        .collect();
    assert_eq!(form["Body"], format!("Hi {NAME}, see you 2026-12-01"));
    assert_eq!(form["To"], "+15550100");
    assert!(got.header("authorization").starts_with("Basic "));

    // GET: URL path and query templates, percent-encoded and decoded intact, no body.
    let got = &get_r.received()[0];
    assert_eq!(got.method, "GET");
    assert!(
        got.uri
            .starts_with("/appointments/1042/O%22Brien%20%26%20Co%20%3Cx%3E?"),
        "{}",
        got.uri
    );
    let q = query_of(&got.uri);
    assert_eq!(q["name"], NAME);
    assert_eq!(q["email"], "obrien@example.com");
    assert!(got.body.is_empty());

    // PUT and PATCH carry the envelope; DELETE does not.
    let mut methods: Vec<(String, bool)> = methods_r
        .received()
        .iter()
        .map(|g| (g.method.clone(), g.body.is_empty()))
        .collect();
    methods.sort();
    assert_eq!(
        methods,
        vec![
            ("DELETE".into(), true),
            ("PATCH".into(), false),
            ("PUT".into(), false)
        ]
    );

    // The attempt log shows what was rendered, beside the envelope a resend would send.
    let path = format!(
        "/v1/webhooks/{}/attempts",
        json_hook["id"].as_str().unwrap()
    );
    eventually(Duration::from_secs(5), "the attempt log", || async {
        get_json(&api, &path).await["total"] == 1
    })
    .await;
    let attempt = &get_json(&api, &path).await["attempts"][0];
    assert!(attempt["rendered_body"]
        .as_str()
        .unwrap()
        .contains("New appointment for"));
    assert_eq!(
        serde_json::from_str::<Value>(attempt["request_body"].as_str().unwrap()).unwrap()["id"],
        "evt_tpl_1"
    );
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_templates_are_refused_when_saved_naming_template_placeholder_and_line() {
    let prefix = unique_prefix();
    let k = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&k);
    let cases = [
        // A placeholder that patient events do not have.
        (
            json!({"events": ["patient.created"], "body": {"type": "json", "template": "{\n\"when\": \"{{ appointment_date }}\"\n}"}}),
            "body.template",
            "appointment_date",
        ),
        // A string placeholder outside quotes: not JSON.
        (
            json!({"events": ["appointment.booked"], "body": {"type": "json", "template": "{\"name\": {{ patient_name }}}"}}),
            "body.template",
            "valid JSON",
        ),
        (
            json!({"events": ["*"], "body": {"type": "json", "template": "{{ nope"}}),
            "body.template",
            "not a valid template",
        ),
        (
            json!({"events": ["doctor.*"], "headers": {"X-Who": "{{ patient_name }}"}}),
            "headers.X-Who",
            "patient_name",
        ),
        (
            json!({"events": ["bill.paid"], "query": {"q": "{{ encounter_id }}"}}),
            "query.q",
            "encounter_id",
        ),
        (
            json!({"events": ["bill.paid"], "body": {"type": "form", "fields": {"x": "{{ doctor_name }}"}}}),
            "body.fields.x",
            "doctor_name",
        ),
        (
            json!({"events": ["*"], "body": {"type": "xml"}}),
            "body.type",
            "default, json, form",
        ),
    ];
    for (extra, field, says) in cases {
        let mut def = json!({"name": "bad", "url": "https://x.example/h"});
        for (k2, v) in extra.as_object().unwrap() {
            def[k2] = v.clone();
        }
        let r = api
            .http
            .post(k.url("/v1/webhooks"))
            .bearer_auth(ADMIN)
            .json(&def)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{def}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["field"], field, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    }
    // The line is named where it can be.
    let r = api
        .http
        .post(k.url("/v1/webhooks"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "bad", "url": "https://x.example/h", "events": ["patient.created"],
                       "body": {"type": "json", "template": "{\n\"when\": \"{{ appointment_date }}\"\n}"}}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 2"),
        "{body}"
    );
    assert_eq!(
        get_json(&api, "/v1/webhooks").await["webhooks"],
        json!([]),
        "nothing stored"
    );

    // Samples show what a type offers.
    let sample = get_json(&api, "/v1/event-types/kc_appointment_book/sample").await;
    assert_eq!(sample["event"]["type"], "appointment.booked");
    let names: Vec<&str> = sample["placeholders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for p in [
        "patient_name",
        "doctor_name",
        "clinic_name",
        "appointment_date",
        "current_date",
    ] {
        assert!(names.contains(&p), "{p}");
    }
    let r = api
        .http
        .get(k.url("/v1/event-types/nope/sample"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    drop(k);
    cleanup(&prefix).await;
}
