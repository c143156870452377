//! The HTTP API against the real binary, RabbitMQ and Redis: acceptance, de-duplication,
//! webhook management, and every kind of bad input answered with a 4xx JSON error that
//! names the field.

mod common;

use common::*;
use serde_json::{json, Value};

/// Assert a JSON error with this status, code and field.
async fn expect_error(r: reqwest::Response, status: u16, code: &str, field: Option<&str>) {
    assert_eq!(r.status().as_u16(), status, "status");
    let body: Value = r.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    if let Some(f) = field {
        assert_eq!(body["error"]["field"], f, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_accepted_once_and_duplicates_are_answered_200() {
    let prefix = unique_prefix();
    let k = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&k);

    let r = api
        .post_event(&event("evt_dup_1", "appointment.booked", Some("1")))
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"id": "evt_dup_1", "status": "accepted"})
    );

    let r = api
        .post_event(&event("evt_dup_1", "appointment.booked", Some("1")))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"id": "evt_dup_1", "status": "duplicate"})
    );

    // The Idempotency-Key header is the id when the body has none.
    let body = json!({"type": "kc_patient_save", "data": {}});
    let send = || {
        api.http
            .post(k.url("/v1/events"))
            .bearer_auth(INGEST)
            .header("idempotency-key", "idem-42")
            .json(&body)
            .send()
    };
    let r = send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], "idem-42");
    assert_eq!(send().await.unwrap().status(), 200);

    // Without either, an id is generated.
    let r = api
        .post_event(&json!({"type": "patient.created", "data": {}}))
        .await;
    assert_eq!(r.status(), 202);
    assert!(r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .starts_with("evt_"));

    // Exactly the accepted events reached the queue.
    let depth = queue_depth(&format!("{prefix}.deliveries")).await;
    assert_eq!(depth, 3);
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_accept_each_event_once() {
    let prefix = unique_prefix();
    let k = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&k);
    let batch: Vec<Value> = (0..20)
        .map(|i| event(&format!("b{}", i % 15), "kc_appointment_update", None))
        .collect();
    let r = api.post_batch(&json!({"events": batch})).await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], 15);
    assert_eq!(body["duplicates"], 5);
    assert_eq!(body["results"].as_array().unwrap().len(), 20);

    // The same batch again: all duplicates, nothing published, 200.
    let r = api.post_batch(&Value::from(batch)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["accepted"], 0);
    // The 15 events of one type went in one message, and the duplicates added none.
    assert_eq!(queue_depth(&format!("{prefix}.deliveries")).await, 1);

    // A batch larger than one claim call (64 events): the 15 accepted above, spread over it,
    // are duplicates where they stand, and the 185 new events are accepted, each once.
    let old_at = |i: usize| i % 13 == 5 && i / 13 < 15;
    let big: Vec<Value> = (0..200)
        .map(|i| {
            let id = if old_at(i) {
                format!("b{}", i / 13)
            } else {
                format!("big{i}")
            };
            event(&id, "kc_appointment_update", None)
        })
        .collect();
    let r = api.post_batch(&json!({"events": big})).await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], 185, "{body}");
    assert_eq!(body["duplicates"], 15, "{body}");
    for (i, result) in body["results"].as_array().unwrap().iter().enumerate() {
        let wanted = if old_at(i) { "duplicate" } else { "accepted" };
        assert_eq!(result["status"], wanted, "event {i}: {result}");
    }
    // Again: every one of the 200 is now a duplicate.
    let r = api.post_batch(&json!({"events": big})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["duplicates"], 200);
    // 185 events of one type at 50 a message: 4 more messages.
    assert_eq!(queue_depth(&format!("{prefix}.deliveries")).await, 5);
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_event_input_is_a_4xx_naming_the_field() {
    let prefix = unique_prefix();
    let k = Kivihook::start("ingest", &prefix, &[("KIVIHOOK_MAX_BODY_BYTES", "4096")]);
    let http = reqwest::Client::new();
    let post = |path: &str| http.post(k.url(path)).bearer_auth(INGEST);

    // Malformed JSON.
    let r = post("/v1/events")
        .header("content-type", "application/json")
        .body("{\"type\": ")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "invalid_json", None).await;

    // Wrong content type.
    let r = post("/v1/events")
        .header("content-type", "text/plain")
        .body(r#"{"type":"patient.created","data":{}}"#)
        .send()
        .await
        .unwrap();
    expect_error(r, 415, "unsupported_media_type", None).await;

    // Over the body limit, with and without a content-length.
    let big = json!({"type": "patient.created", "data": {"blob": "x".repeat(5000)}});
    let r = post("/v1/events").json(&big).send().await.unwrap();
    expect_error(r, 413, "payload_too_large", None).await;
    let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(
        serde_json::to_vec(&big).unwrap(),
    )]);
    let r = post("/v1/events")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "payload_too_large", None).await;

    // Unknown event type, missing type, bad fields.
    let r = post("/v1/events")
        .json(&json!({"type": "appointment.exploded", "data": {}}))
        .send()
        .await
        .unwrap();
    expect_error(r, 422, "unknown_event_type", Some("type")).await;
    let r = post("/v1/events")
        .json(&json!({"data": {}}))
        .send()
        .await
        .unwrap();
    expect_error(r, 422, "missing_field", Some("type")).await;
    let r = post("/v1/events")
        .json(&json!({"type": "patient.created", "data": []}))
        .send()
        .await
        .unwrap();
    expect_error(r, 422, "invalid_field", Some("data")).await;
    let r = post("/v1/events")
        .json(&json!({"type": "patient.created", "data": {}, "occurred_at": "yesterday"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 422, "invalid_field", Some("occurred_at")).await;
    let r = post("/v1/events")
        .json(&json!({"type": "patient.created", "data": {}, "clinicId": 3}))
        .send()
        .await
        .unwrap();
    expect_error(r, 422, "unknown_field", Some("clinicId")).await;
    let r = post("/v1/events")
        .json(&json!({"id": "has space", "type": "patient.created", "data": {}}))
        .send()
        .await
        .unwrap();
    expect_error(r, 422, "invalid_field", Some("id")).await;
    let r = post("/v1/events")
        .json(&json!([1, 2]))
        .send()
        .await
        .unwrap();
    expect_error(r, 422, "invalid_field", None).await;

    // Missing and wrong tokens.
    let r = http
        .post(k.url("/v1/events"))
        .json(&event("x", "patient.created", None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    expect_error(r, 401, "unauthorized", None).await;
    let r = http
        .post(k.url("/v1/events"))
        .bearer_auth("not-the-token-at-all")
        .json(&event("x", "patient.created", None))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "unauthorized", None).await;

    // Batches: over 500, and one bad event names its index.
    let many: Vec<Value> = (0..501)
        .map(|i| event(&format!("m{i}"), "patient.created", None))
        .collect();
    let r = http
        .post(k.url("/v1/events/batch"))
        .bearer_auth(INGEST)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&many).unwrap())
        .send()
        .await
        .unwrap();
    // 501 small events fit in no 4 KiB body: the size limit answers first.
    assert_eq!(r.status(), 413);
    let k2 = Kivihook::start("ingest", &prefix, &[]);
    let r = http
        .post(k2.url("/v1/events/batch"))
        .bearer_auth(INGEST)
        .json(&many)
        .send()
        .await
        .unwrap();
    expect_error(r, 422, "batch_too_large", Some("events")).await;
    let r = http
        .post(k2.url("/v1/events/batch"))
        .bearer_auth(INGEST)
        .json(&json!({"events": [event("ok1", "patient.created", None), {"type": "nope", "data": {}}]}))
        .send()
        .await
        .unwrap();
    expect_error(r, 422, "unknown_event_type", Some("events[1].type")).await;
    // A `data` that no JSON reader could take back (a number out of range, nesting deeper
    // than the dispatcher reads): the body is not valid JSON for us, and the message names
    // the event's field.
    let unreadable = [
        (
            r#"{"events": [{"id": "ok2", "type": "patient.created", "data": {}},
                {"type": "patient.created", "data": {"n": 1e999}}]}"#
                .to_owned(),
            "events[1].data: number out of range",
        ),
        (
            format!(
                r#"[{{"id": "ok3", "type": "patient.created", "data": {{}}}},
                {{"type": "patient.created", "data": {{"deep": {}1{}}}}}]"#,
                "[".repeat(130),
                "]".repeat(130)
            ),
            "events[1].data: recursion limit exceeded",
        ),
    ];
    for (body, message) in unreadable {
        let r = http
            .post(k2.url("/v1/events/batch"))
            .bearer_auth(INGEST)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_json", "{body}");
        assert_eq!(body["error"]["field"], "events[1].data", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(message)),
            "{body}"
        );
    }

    // None of the refused requests published anything; the bad batch claimed nothing.
    assert_eq!(
        http.get(k2.url("/readyz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(queue_depth(&format!("{prefix}.deliveries")).await, 0);
    for id in ["ok1", "ok2", "ok3"] {
        let r = http
            .post(k2.url("/v1/events"))
            .bearer_auth(INGEST)
            .json(&event(id, "patient.created", None))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            202,
            "{id}: the id of an event in a refused batch is still free"
        );
    }

    // Unknown routes and methods are JSON errors too.
    let r = http.get(k2.url("/v1/nothing")).send().await.unwrap();
    expect_error(r, 404, "not_found", None).await;
    let r = http.put(k2.url("/v1/events")).send().await.unwrap();
    expect_error(r, 405, "method_not_allowed", None).await;
    drop((k, k2));
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_managed_and_bad_definitions_refused_without_damage() {
    let prefix = unique_prefix();
    let k = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&k);
    let http = &api.http;

    let created = api
        .create_webhook(json!({
            "name": "CRM", "url": "https://crm.example/hooks?x=1",
            "events": ["appointment.*", "kc_patient_save"], "clinic_ids": [12, "13"],
            "headers": {"X-Api-Key": "abc"}
        }))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(
        secret.starts_with("whsec_") && secret.len() >= 6 + 32,
        "{secret}"
    );
    assert_eq!(
        created["events"],
        json!(["appointment.*", "patient.created"])
    );
    assert_eq!(created["clinic_ids"], json!(["12", "13"]));
    assert_eq!(created["method"], "POST");
    assert_eq!(created["enabled"], true);

    // Reads mask the secret.
    let got = get_json(&api, &format!("/v1/webhooks/{id}")).await;
    assert_ne!(got["secret"], secret.as_str());
    assert!(!got.to_string().contains(&secret));
    let list = get_json(&api, "/v1/webhooks").await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(&secret));

    // The ingest token cannot manage webhooks.
    let r = http
        .get(k.url("/v1/webhooks"))
        .bearer_auth(INGEST)
        .send()
        .await
        .unwrap();
    expect_error(r, 403, "forbidden", None).await;

    // Bad definitions: each refused with the field, on create and on patch.
    let base = json!({"name": "n", "url": "https://x.example/h", "events": ["*"]});
    let cases = [
        ("url", json!("ftp://x.example/h"), "url"),
        ("url", json!("https://user:pass@x.example/h"), "url"),
        ("url", json!("javascript:alert(1)"), "url"),
        (
            "headers",
            json!({"X-Evil": "a\r\nSet-Cookie: x"}),
            "headers.X-Evil",
        ),
        (
            "headers",
            json!({"X-Evil\r\nB": "a"}),
            "headers.X-Evil\r\nB",
        ),
        ("events", json!(["appointment.nope"]), "events[0]"),
        ("method", json!("TRACE"), "method"),
        ("enabled", json!("yes"), "enabled"),
        ("color", json!("blue"), "color"),
        ("secret", json!("whsec_mine"), "secret"),
    ];
    for (key, value, field) in &cases {
        let mut body = base.clone();
        body[*key] = value.clone();
        let r = http
            .post(k.url("/v1/webhooks"))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        expect_error(r, 422, "invalid_field", Some(field)).await;
        let r = http
            .patch(k.url(&format!("/v1/webhooks/{id}")))
            .bearer_auth(ADMIN)
            .json(&json!({ *key: value }))
            .send()
            .await
            .unwrap();
        expect_error(r, 422, "invalid_field", Some(field)).await;
    }
    // Nothing stored was damaged by the refused patches.
    let after = get_json(&api, &format!("/v1/webhooks/{id}")).await;
    assert_eq!(after, got);
    let list = get_json(&api, "/v1/webhooks").await;
    assert_eq!(
        list["webhooks"].as_array().unwrap().len(),
        1,
        "no refused create was stored"
    );

    // A valid patch changes only what it names.
    let patched: Value = http
        .patch(k.url(&format!("/v1/webhooks/{id}")))
        .bearer_auth(ADMIN)
        .json(&json!({"enabled": false, "method": "put"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["method"], "PUT");
    assert_eq!(patched["url"], got["url"]);

    // Delete, then it is gone.
    let r = http
        .delete(k.url(&format!("/v1/webhooks/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = http
        .get(k.url(&format!("/v1/webhooks/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "not_found", None).await;
    let r = http
        .delete(k.url(&format!("/v1/webhooks/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "not_found", None).await;
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_and_operational_endpoints_answer() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let http = reqwest::Client::new();
    let types: Value = http
        .get(k.url("/v1/event-types"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = types["event_types"].as_array().unwrap();
    assert!(list.iter().any(|t| t["type"] == "appointment.booked"
        && t["kivicare_actions"] == json!(["kc_appointment_book", "kc_after_create_appointment"])));
    assert!(list.iter().any(
        |t| t["type"] == "service.added" && t["kivicare_actions"] == json!(["kc_service_add"])
    ));
    assert_eq!(list.len(), 33);
    assert_eq!(
        http.get(k.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let ready = http.get(k.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["checks"],
        json!({"rabbitmq": "ok", "redis": "ok"})
    );
    let metrics = http
        .get(k.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("kivihook_build_info"));
    assert!(metrics.contains("# HELP kivihook_deliveries_in_flight"));
    drop(k);
    cleanup(&prefix).await;
}
