//! Preview and test send: see the request a sample event makes, then send one for real.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_shows_the_request_and_test_sends_it_for_real() {
    let prefix = unique_prefix();
    let k = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&k);
    let r = Receiver::start().await;
    r.script(vec![(201, vec![("x-receiver", "yes".to_owned())])]);
    let w = api
        .create_webhook(json!({
            "name": "crm", "url": r.url(), "events": ["appointment.*"],
            "auth": {"type": "bearer", "token": "crm-token-0123456789"},
            "body": {"type": "json", "template": "{\"who\": \"{{ patient_name }}\", \"when\": \"{{ appointment_date }}\"}"}
        }))
        .await;
    let id = w["id"].as_str().unwrap();
    let post = |path: String| api.http.post(k.url(&path)).bearer_auth(ADMIN).send();

    let preview: Value = post(format!("/v1/webhooks/{id}/preview"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(preview["event_type"], "appointment.booked");
    assert_eq!(preview["method"], "POST");
    let body: Value = serde_json::from_str(preview["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"who": "Ada Lovelace", "when": "2026-12-01"}));
    assert_eq!(preview["headers"]["authorization"], "Bearer …6789");
    assert!(!preview.to_string().contains("crm-token-0123456789"));
    let other: Value = post(format!(
        "/v1/webhooks/{id}/preview?type=kc_appointment_update"
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(other["event_type"], "appointment.updated");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.count(), 0, "a preview sends nothing");

    let sent: Value = post(format!("/v1/webhooks/{id}/test"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sent["delivered"], true, "{sent}");
    assert_eq!(sent["status"], 201);
    assert_eq!(sent["response_headers"]["x-receiver"], "yes");
    assert!(sent["duration_ms"].is_u64());
    assert_eq!(r.count(), 1);
    let got = &r.received()[0];
    assert!(verify_signature(w["secret"].as_str().unwrap(), got));
    assert_eq!(got.header("authorization"), "Bearer crm-token-0123456789");
    assert_eq!(
        serde_json::from_slice::<Value>(&got.body).unwrap()["who"],
        "Ada Lovelace"
    );

    // Logged like any attempt, marked as a test; not resendable; statistics untouched.
    let log = get_json(&api, &format!("/v1/webhooks/{id}/attempts")).await;
    assert_eq!(log["total"], 1);
    assert_eq!(log["attempts"][0]["test"], true);
    assert_eq!(log["attempts"][0]["id"], sent["attempt_id"]);
    let resend = post(format!(
        "/v1/attempts/{}/resend",
        sent["attempt_id"].as_str().unwrap()
    ))
    .await
    .unwrap();
    assert_eq!(resend.status(), 422);
    assert_eq!(
        get_json(&api, "/v1/stats").await["webhooks"][0]["successes"],
        0
    );

    // A failing endpoint's answer comes back as it is.
    r.respond_with(500);
    let sent: Value = post(format!("/v1/webhooks/{id}/test"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sent["delivered"], false);
    assert_eq!(sent["status"], 500);
    assert_eq!(sent["error_kind"], "http_status");

    let r404 = post("/v1/webhooks/wh_nope/test".into()).await.unwrap();
    assert_eq!(r404.status(), 404);
    let bad = post(format!("/v1/webhooks/{id}/preview?type=nope"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    drop(k);
    cleanup(&prefix).await;
}
