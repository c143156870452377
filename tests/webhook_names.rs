//! Webhook names are unique: `apply`, the KiviCare import and declared files match webhooks
//! by name, so a second webhook of a name is a `409 name_taken` naming `name`, on create,
//! on a rename, on import, and under concurrent creates. A registry written before names
//! were checked, with webhooks that share a name, still loads and can still be edited.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

use kivihook_core::keys::Keys;
use kivihook_core::signing::generate_secret;
use kivihook_core::webhook::{Webhook, WebhookSpec};

async fn create(api: &Api, body: Value) -> reqwest::Response {
    api.http
        .post(format!("{}/v1/webhooks", api.base))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn patch(api: &Api, id: &str, body: Value) -> reqwest::Response {
    api.http
        .patch(format!("{}/v1/webhooks/{id}", api.base))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A create with `?dry_run=true`: every check, nothing stored.
async fn dry_create(api: &Api, body: Value) -> reqwest::Response {
    api.http
        .post(format!("{}/v1/webhooks?dry_run=true", api.base))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn delete(api: &Api, id: &str) -> u16 {
    api.http
        .delete(format!("{}/v1/webhooks/{id}", api.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A `409 name_taken` naming `name`; its message.
async fn name_taken(r: reqwest::Response) -> String {
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "name_taken", "{body}");
    assert_eq!(body["error"]["field"], "name", "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

async fn names(api: &Api) -> Vec<String> {
    let list = get_json(api, "/v1/webhooks").await;
    let mut names: Vec<String> = list["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn hook(name: &str, url: &str) -> Value {
    json!({"name": name, "url": url, "events": ["*"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_webhook_of_a_name_is_409_name_taken() {
    let prefix = unique_prefix();
    let k = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&k);
    let url = "http://127.0.0.1:9/crm";

    // The README's create, run twice.
    let crm = api.create_webhook(hook("CRM", url)).await;
    let crm_id = crm["id"].as_str().unwrap().to_owned();
    let message = name_taken(create(&api, hook("CRM", url)).await).await;
    assert!(
        message.contains("CRM") && message.contains(&crm_id),
        "{message}"
    );
    assert_eq!(names(&api).await, ["CRM"]);

    // Editing the holder, its name kept or sent again, is not a second webhook.
    let r = patch(&api, &crm_id, json!({"name": "CRM", "enabled": false})).await;
    assert_eq!(r.status(), 200);

    // A rename onto a taken name is refused; a rename frees the old name.
    let billing = api.create_webhook(hook("Billing", url)).await;
    let billing_id = billing["id"].as_str().unwrap().to_owned();
    name_taken(patch(&api, &billing_id, json!({"name": "CRM"})).await).await;
    let r = patch(&api, &crm_id, json!({"name": "CRM (old)"})).await;
    assert_eq!(r.status(), 200);
    let r = patch(&api, &billing_id, json!({"name": "CRM"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(names(&api).await, ["CRM", "CRM (old)"]);

    // Deleting frees a name.
    name_taken(create(&api, hook("CRM (old)", url)).await).await;
    assert_eq!(delete(&api, &crm_id).await, 204);
    assert_eq!(create(&api, hook("CRM (old)", url)).await.status(), 201);

    // The KiviCare import: a row whose name a webhook has, or an earlier row has, creates
    // nothing.
    let row = |name: &str| {
        json!({"name": name, "module_name": "patient", "event_name": "kc_patient_save",
               "methods": "POST", "status": 1, "webhook_data": {"url": url}})
    };
    let import = |rows: Value| {
        api.http
            .post(k.url("/v1/webhooks/import/kivicare"))
            .bearer_auth(ADMIN)
            .json(&rows)
            .send()
    };
    let message = name_taken(import(json!([row("Fresh"), row("CRM")])).await.unwrap()).await;
    assert!(message.contains("row 1"), "{message}");
    let message = name_taken(import(json!([row("Twin"), row("Twin")])).await.unwrap()).await;
    assert!(
        message.contains("row 1") && message.contains("row 0"),
        "{message}"
    );
    assert_eq!(names(&api).await, ["CRM", "CRM (old)"], "nothing imported");
    let r = import(json!([row("Fresh"), row("Twin")])).await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(names(&api).await, ["CRM", "CRM (old)", "Fresh", "Twin"]);

    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_name_make_one_webhook() {
    let prefix = unique_prefix();
    let k = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&k);
    for round in 0..3 {
        let name = format!("Race {round}");
        let answers = futures::future::join_all(
            (0..16).map(|_| create(&api, hook(&name, "http://127.0.0.1:9/race"))),
        )
        .await;
        let mut statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
        statuses.sort_unstable();
        let mut expected = vec![201];
        expected.extend([409; 15]);
        assert_eq!(statuses, expected, "{name}");
    }
    assert_eq!(names(&api).await, ["Race 0", "Race 1", "Race 2"]);
    drop(k);
    cleanup(&prefix).await;
}

/// A webhook as a release that did not check names wrote it.
fn stored(name: &str, url: &str) -> (String, String) {
    let spec = WebhookSpec::from_json(&hook(name, url)).unwrap();
    let w = Webhook::create(spec, generate_secret());
    (w.id.clone(), serde_json::to_string(&w).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_that_shared_a_name_before_still_load_and_keep_it_taken() {
    let prefix = unique_prefix();
    let keys = Keys::new(&prefix);
    let receiver = Receiver::start().await;
    let (first, first_json) = stored("CRM", &receiver.url());
    let (second, second_json) = stored("CRM", &receiver.url());
    let mut r = redis().await;
    let _: () = redis::cmd("HSET")
        .arg(keys.webhooks())
        .arg(&first)
        .arg(&first_json)
        .arg(&second)
        .arg(&second_json)
        .query_async(&mut r)
        .await
        .unwrap();

    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    assert_eq!(names(&api).await, ["CRM", "CRM"], "both load");
    // A dry run finds the name taken before any write has built the name index (and builds
    // none: the real create below still finds both holders).
    name_taken(dry_create(&api, hook("CRM", &receiver.url())).await).await;
    let index: bool = redis::cmd("EXISTS")
        .arg(keys.webhook_names())
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(!index, "a dry run writes no name index");
    assert_eq!(
        api.post_event(&json!({"id": "evt_names_1", "type": "bill.paid", "data": {}}))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(10), "both deliver", || {
        receiver.count() == 2
    })
    .await;

    // Either can be edited, its name kept.
    for id in [&first, &second] {
        let r = patch(
            &api,
            id,
            json!({"url": format!("{}?edited", receiver.url())}),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    // While either has the name, no third webhook takes it.
    name_taken(create(&api, hook("CRM", &receiver.url())).await).await;
    let r = patch(&api, &first, json!({"name": "CRM (old)"})).await;
    assert_eq!(r.status(), 200);
    name_taken(create(&api, hook("CRM", &receiver.url())).await).await;
    name_taken(dry_create(&api, hook("CRM", &receiver.url())).await).await;
    // Once neither has it, it is free.
    assert_eq!(delete(&api, &second).await, 204);
    assert_eq!(
        dry_create(&api, hook("CRM", &receiver.url()))
            .await
            .status(),
        200
    );
    assert_eq!(
        create(&api, hook("CRM", &receiver.url())).await.status(),
        201
    );
    name_taken(create(&api, hook("CRM", &receiver.url())).await).await;

    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_keeps_names_unique_as_redis_does() {
    let prefix = unique_prefix();
    let k = Kivihook::start("dev", &prefix, &[]);
    let api = Api::new(&k);
    let url = "http://127.0.0.1:9/crm";
    let crm = api.create_webhook(hook("CRM", url)).await;
    let crm_id = crm["id"].as_str().unwrap().to_owned();
    name_taken(create(&api, hook("CRM", url)).await).await;
    name_taken(dry_create(&api, hook("CRM", url)).await).await;
    let billing = api.create_webhook(hook("Billing", url)).await;
    let billing_id = billing["id"].as_str().unwrap().to_owned();
    name_taken(patch(&api, &billing_id, json!({"name": "CRM"})).await).await;
    assert_eq!(
        patch(&api, &crm_id, json!({"name": "CRM"})).await.status(),
        200
    );
    assert_eq!(delete(&api, &crm_id).await, 204);
    assert_eq!(
        patch(&api, &billing_id, json!({"name": "CRM"}))
            .await
            .status(),
        200
    );
    drop(k);
}
