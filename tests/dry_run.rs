//! `POST /v1/webhooks?dry_run=true` and `PATCH /v1/webhooks/{id}?dry_run=true`: every check
//! the real call runs (the outbound guard and the unique name included) answers as the real
//! call would, and nothing is stored.

mod common;

use common::*;
use serde_json::{json, Value};

/// An ingest whose outbound policy allows 10.0.0.0/8 only: loopback and the cloud metadata
/// address are refused, as they are by default.
fn strict(prefix: &str) -> Kivihook {
    Kivihook::start(
        "ingest",
        prefix,
        &[("KIVIHOOK_OUTBOUND_ALLOW", "10.0.0.0/8")],
    )
}

async fn send(api: &Api, method: reqwest::Method, path: &str, body: &Value) -> (u16, Value) {
    let r = api
        .http
        .request(method, format!("{}{path}", api.base))
        .bearer_auth(ADMIN)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(api: &Api, path: &str, body: &Value) -> (u16, Value) {
    send(api, reqwest::Method::POST, path, body).await
}

async fn patch(api: &Api, path: &str, body: &Value) -> (u16, Value) {
    send(api, reqwest::Method::PATCH, path, body).await
}

async fn listed(api: &Api) -> Vec<Value> {
    get_json(api, "/v1/webhooks").await["webhooks"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_create_meets_the_outbound_guard_and_stores_nothing() {
    let prefix = unique_prefix();
    let k = strict(&prefix);
    let api = Api::new(&k);

    for url in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data/",
    ] {
        let body = json!({"name": "crm", "url": url, "events": ["*"]});
        let (status, real) = post(&api, "/v1/webhooks", &body).await;
        assert_eq!(status, 422, "{url}: {real}");
        assert_eq!(real["error"]["code"], "forbidden_destination", "{real}");
        assert_eq!(real["error"]["field"], "url", "{real}");
        // The dry run is refused exactly as the create is.
        let (status, dry) = post(&api, "/v1/webhooks?dry_run=true", &body).await;
        assert_eq!(status, 422, "{url}: {dry}");
        assert_eq!(dry, real, "{url}");
    }
    assert!(listed(&api).await.is_empty(), "nothing stored");

    // A good one: answered as it would be, marked, with no id and no secret minted.
    let body = json!({"name": "crm", "url": "http://10.1.2.3/hook", "events": ["appointment.*"]});
    let (status, dry) = post(&api, "/v1/webhooks?dry_run=true", &body).await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["name"], "crm");
    assert_eq!(dry["url"], "http://10.1.2.3/hook");
    assert_eq!(dry["events"], json!(["appointment.*"]));
    assert!(dry.get("id").is_none(), "no id is given out: {dry}");
    assert_eq!(dry["secret"], "whsec_…", "no secret is minted: {dry}");
    // A secret given is masked, as every answer but the real create's masks it.
    let given = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut with_secret = body.clone();
    with_secret["secret"] = json!(given);
    let (status, dry) = post(&api, "/v1/webhooks?dry_run=true", &with_secret).await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["secret"], "whsec_…LaSw", "{dry}");
    assert!(!dry.to_string().contains(given), "{dry}");
    assert!(listed(&api).await.is_empty(), "a dry run stores nothing");

    // The name is still free: the real create takes it.
    let (status, created) = post(&api, "/v1/webhooks", &body).await;
    assert_eq!(status, 201, "{created}");

    // `dry_run=false` is the real call; any other value or parameter is refused by name.
    let other = json!({"name": "erp", "url": "http://10.1.2.4/hook", "events": ["*"]});
    for (query, field) in [
        ("dry_run=yes", "dry_run"),
        ("dry_run=", "dry_run"),
        ("dryrun=true", "dryrun"),
    ] {
        let (status, e) = post(&api, &format!("/v1/webhooks?{query}"), &other).await;
        assert_eq!(status, 422, "{query}: {e}");
        assert_eq!(e["error"]["code"], "invalid_parameter", "{query}: {e}");
        assert_eq!(e["error"]["field"], field, "{query}: {e}");
    }
    assert_eq!(listed(&api).await.len(), 1, "nothing stored by a refusal");
    let (status, real) = post(&api, "/v1/webhooks?dry_run=false", &other).await;
    assert_eq!(status, 201, "{real}");
    assert!(real.get("dry_run").is_none(), "{real}");
    assert_eq!(listed(&api).await.len(), 2);

    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_answers_name_taken_and_a_dry_run_patch_changes_nothing() {
    let prefix = unique_prefix();
    let k = strict(&prefix);
    let api = Api::new(&k);
    let crm = api
        .create_webhook(json!({"name": "crm", "url": "http://10.1.2.3/hook", "events": ["*"]}))
        .await;
    let erp = api
        .create_webhook(json!({"name": "erp", "url": "http://10.1.2.4/hook", "events": ["*"]}))
        .await;
    let crm_id = crm["id"].as_str().unwrap();
    let erp_path = format!("/v1/webhooks/{}", erp["id"].as_str().unwrap());
    let before = listed(&api).await;

    // A second `crm`: the same 409 as the real create, naming `name`.
    let second = json!({"name": "crm", "url": "http://10.9.9.9/hook", "events": ["*"]});
    let (status, real) = post(&api, "/v1/webhooks", &second).await;
    assert_eq!(status, 409, "{real}");
    let (status, dry) = post(&api, "/v1/webhooks?dry_run=true", &second).await;
    assert_eq!(status, 409, "{dry}");
    assert_eq!(dry["error"]["code"], "name_taken", "{dry}");
    assert_eq!(dry["error"]["field"], "name", "{dry}");
    assert!(
        dry["error"]["message"].as_str().unwrap().contains(crm_id),
        "names the holder: {dry}"
    );
    assert_eq!(dry, real);

    // A rename onto a taken name, dry: the same 409; keeping its own name is no conflict.
    let dry_path = format!("{erp_path}?dry_run=true");
    let (status, dry) = patch(&api, &dry_path, &json!({"name": "crm"})).await;
    assert_eq!(status, 409, "{dry}");
    assert_eq!(dry["error"]["code"], "name_taken", "{dry}");
    let (status, dry) = patch(&api, &dry_path, &json!({"name": "erp", "enabled": false})).await;
    assert_eq!(status, 200, "{dry}");

    // The outbound guard, dry: the same 422 as the real PATCH.
    let (status, real) = patch(&api, &erp_path, &json!({"url": "http://127.0.0.1:9/x"})).await;
    assert_eq!(status, 422, "{real}");
    let (status, dry) = patch(&api, &dry_path, &json!({"url": "http://127.0.0.1:9/x"})).await;
    assert_eq!(status, 422, "{dry}");
    assert_eq!(dry["error"]["code"], "forbidden_destination", "{dry}");
    assert_eq!(dry, real);

    // A good change, dry: the answer shows it; the stored webhook is as it was.
    let change = json!({"name": "erp-v2", "url": "http://10.1.2.5/hook", "enabled": false});
    let (status, dry) = patch(&api, &dry_path, &change).await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["id"], erp["id"]);
    assert_eq!(dry["name"], "erp-v2");
    assert_eq!(dry["url"], "http://10.1.2.5/hook");
    assert_eq!(dry["enabled"], false);
    assert_eq!(
        dry["secret"],
        erp["secret"]
            .as_str()
            .map(|s| format!("whsec_…{}", &s[s.len() - 4..]))
            .unwrap()
    );
    assert_eq!(listed(&api).await, before, "a dry run changes nothing");
    assert_eq!(get_json(&api, &erp_path).await["name"], "erp");
    // The old name is still held, the new one still free.
    let (status, _) = post(
        &api,
        "/v1/webhooks?dry_run=true",
        &json!({"name": "erp", "url": "http://10.1.2.6/hook", "events": ["*"]}),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = post(
        &api,
        "/v1/webhooks?dry_run=true",
        &json!({"name": "erp-v2", "url": "http://10.1.2.6/hook", "events": ["*"]}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, e) = patch(&api, &format!("{erp_path}?dry_run=1"), &change).await;
    assert_eq!(status, 422, "{e}");
    assert_eq!(e["error"]["field"], "dry_run", "{e}");
    assert_eq!(listed(&api).await, before);

    drop(k);
    cleanup(&prefix).await;
}
