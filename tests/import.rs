//! Moving from KiviCare's webhook add-on: its rows become webhooks that deliver as before,
//! and a batch with a row that cannot be translated creates nothing.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::{json, Value};

fn rows(slack: &Receiver, twilio: &Receiver, crm: &Receiver) -> Value {
    let basic = base64::engine::general_purpose::STANDARD.encode("AC0001:twilio-auth-token-99");
    json!([
        {
            "name": "Slack booking alert", "module_name": "appointment", "event_name": "kc_appointment_book",
            "methods": "POST", "status": 1,
            "webhook_data": json!({
                "url": slack.url(), "content_type": "json",
                "headers": [{"key": "Content-Type", "value": "application/json"}],
                "query_parameters": [], "form_data": [],
                "json_data": "{\"text\": \"New appointment: {{patient_name}} with {{doctor_name}} on {{appointment_date}}\"}"
            }).to_string()
        },
        {
            "name": "Twilio SMS", "module_name": "appointment", "event_name": "kc_appointment_book",
            "methods": "POST", "status": "1",
            "webhook_data": {
                "url": format!("http://{}/2010-04-01/Accounts/AC0001/Messages.json", twilio.addr),
                "content_type": "form",
                "headers": [{"key": "Authorization", "value": format!("Basic {basic}")}],
                "query_parameters": [],
                "form_data": [
                    {"key": "To", "value": "{{patient_contact_number}}"},
                    {"key": "From", "value": "+15005550006"},
                    {"key": "Body", "value": "Hi {{ patient_name }}, see you on {{appointment_date}}"}
                ],
                "json_data": ""
            }
        },
        {
            "name": "CRM patient sync", "module_name": "patient", "event_name": "kc_patient_save",
            "methods": "GET", "status": 1,
            "webhook_data": {
                "url": format!("{}/patients", crm.url()), "content_type": "",
                "headers": [{"key": "X-Api-Key", "value": "crm-key"}],
                "query_parameters": [
                    {"key": "name", "value": "{{patient_name}}"},
                    {"key": "email", "value": "{{patient_email}}"}
                ],
                "form_data": [], "json_data": ""
            }
        }
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_on_rows_become_webhooks_that_deliver() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let (slack, twilio, crm) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let r = api
        .http
        .post(k.url("/v1/webhooks/import/kivicare"))
        .bearer_auth(ADMIN)
        .json(&rows(&slack, &twilio, &crm))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let imported: Value = r.json().await.unwrap();
    assert_eq!(imported["imported"].as_array().unwrap().len(), 3);

    // The Twilio row's Authorization header became sealed, masked basic auth.
    let hooks = get_json(&api, "/v1/webhooks").await;
    let twilio_hook = hooks["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "Twilio SMS")
        .unwrap()
        .clone();
    assert_eq!(twilio_hook["auth"]["type"], "basic");
    assert_eq!(twilio_hook["auth"]["username"], "AC0001");
    assert!(!twilio_hook.to_string().contains("twilio-auth-token-99"));
    assert_eq!(twilio_hook["events"], json!(["appointment.booked"]));

    let booking = json!({"id": "evt_imp_1", "type": "kc_appointment_book", "clinic_id": 3, "data": {
        "appointment": {"appointment_date": "2026-12-02"},
        "patient": {"patient_name": "Mary Seacole", "patient_contact_number": "+15550111", "patient_email": "mary@example.com"},
        "doctor": {"doctor_name": "Dr. Snow"}}});
    let patient = json!({"id": "evt_imp_2", "type": "kc_patient_save", "data": {
        "patient": {"patient_name": "Mary Seacole", "patient_email": "mary@example.com"}}});
    assert_eq!(api.post_event(&booking).await.status(), 202);
    assert_eq!(api.post_event(&patient).await.status(), 202);
    wait_until(Duration::from_secs(10), "the three deliveries", || {
        slack.count() == 1 && twilio.count() == 1 && crm.count() == 1
    })
    .await;

    let s = &slack.received()[0];
    let body: Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(
        body["text"],
        "New appointment: Mary Seacole with Dr. Snow on 2026-12-02"
    );

    let t = &twilio.received()[0];
    assert_eq!(t.uri, "/2010-04-01/Accounts/AC0001/Messages.json");
    assert_eq!(
        t.header("authorization"),
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("AC0001:twilio-auth-token-99")
        )
    );
    let form: HashMap<String, String> = url::form_urlencoded::parse(&t.body).into_owned().collect();
    assert_eq!(form["To"], "+15550111");
    assert_eq!(form["Body"], "Hi Mary Seacole, see you on 2026-12-02");

    let c = &crm.received()[0];
    assert_eq!(c.method, "GET");
    assert_eq!(c.header("x-api-key"), "crm-key");
    let q: HashMap<String, String> =
        url::form_urlencoded::parse(c.uri.split_once('?').unwrap().1.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(q["name"], "Mary Seacole");
    assert_eq!(q["email"], "mary@example.com");
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_an_untranslatable_row_creates_nothing_and_names_the_row() {
    let prefix = unique_prefix();
    let k = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&k);
    let r0 = Receiver::start().await;
    let mut batch = rows(&r0, &r0, &r0);
    batch.as_array_mut().unwrap().push(json!({
        "name": "Broken", "module_name": "patient", "event_name": "kc_patient_save", "methods": "POST", "status": 1,
        "webhook_data": {"url": r0.url(), "content_type": "json", "json_data": "{\"when\": \"{{appointment_date}}\"}"}
    }));
    batch.as_array_mut().unwrap().push(json!({
        "name": "Unknown event", "event_name": "kc_nonsense", "webhook_data": {"url": r0.url()}
    }));
    let r = api
        .http
        .post(k.url("/v1/webhooks/import/kivicare"))
        .bearer_auth(ADMIN)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "import_failed");
    let problems = body["rows"].as_array().unwrap();
    assert_eq!(problems.len(), 2, "{body}");
    assert_eq!(problems[0]["row"], 3);
    assert_eq!(problems[0]["field"], "body.template");
    assert!(problems[0]["message"]
        .as_str()
        .unwrap()
        .contains("appointment_date"));
    assert_eq!(problems[1]["row"], 4);
    assert_eq!(problems[1]["field"], "events[0]");
    assert_eq!(
        get_json(&api, "/v1/webhooks").await["webhooks"],
        json!([]),
        "nothing half-imported"
    );
    drop(k);
    cleanup(&prefix).await;
}
