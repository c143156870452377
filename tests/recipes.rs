//! Every recipe in docs/recipes is a valid webhook, and what it sends for a sample event has
//! the shape its service documents.

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::{json, Value};

/// The recipe, pointed at a local receiver (same path and query).
fn local(recipe: &Value, receiver: &Receiver) -> Value {
    let mut def = recipe["webhook"].clone();
    let url = url::Url::parse(def["url"].as_str().unwrap()).unwrap();
    let mut local = url::Url::parse(&format!("http://{}", receiver.addr)).unwrap();
    local.set_path(url.path());
    local.set_query(url.query());
    def["url"] = json!(local.to_string());
    def
}

fn json_body(r: &Received) -> Value {
    assert_eq!(r.header("content-type"), "application/json");
    serde_json::from_slice(&r.body).expect("a JSON body")
}

fn nonempty(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.trim().is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recipe_sends_what_its_service_expects() {
    let prefix = unique_prefix();
    let k = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&k);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/recipes");
    let mut checked = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files {
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let recipe: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(
            nonempty(&recipe["service"]) && nonempty(&recipe["docs"]),
            "{name}: service and docs"
        );
        let receiver = Receiver::start().await;
        let created = api.create_webhook(local(&recipe, &receiver)).await;
        let id = created["id"].as_str().unwrap();
        let sent: Value = api
            .admin_post(&format!("/v1/webhooks/{id}/test"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(sent["delivered"], true, "{name}: {sent}");
        let r = &receiver.received()[0];
        assert!(
            verify_signature(created["secret"].as_str().unwrap(), r),
            "{name}: signed"
        );
        let original = url::Url::parse(recipe["webhook"]["url"].as_str().unwrap()).unwrap();
        assert!(r.uri.starts_with(original.path()), "{name}: path kept");
        match name.as_str() {
            "slack" => {
                let b = json_body(r);
                assert!(
                    nonempty(&b["text"]) && b["text"].as_str().unwrap().contains("Ada Lovelace"),
                    "{b}"
                );
            }
            "teams" => {
                let b = json_body(r);
                assert_eq!(b["@type"], "MessageCard");
                assert_eq!(b["@context"], "http://schema.org/extensions");
                assert!(nonempty(&b["summary"]) && nonempty(&b["text"]));
                assert!(b["sections"][0]["facts"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty()));
            }
            "discord" => {
                let b = json_body(r);
                let content = b["content"].as_str().unwrap();
                assert!(!content.is_empty() && content.chars().count() <= 2000);
            }
            "twilio-sms" => {
                assert_eq!(
                    r.header("content-type"),
                    "application/x-www-form-urlencoded"
                );
                let form: HashMap<String, String> =
                    url::form_urlencoded::parse(&r.body).into_owned().collect();
                assert!(form["To"].starts_with('+') && form["From"].starts_with('+'));
                assert!(form["Body"].contains("Ada Lovelace"));
                assert!(r.header("authorization").starts_with("Basic "));
                assert!(r.uri.ends_with("/Messages.json"));
            }
            "sendgrid" => {
                let b = json_body(r);
                assert!(r.header("authorization").starts_with("Bearer "));
                assert!(b["personalizations"][0]["to"][0]["email"]
                    .as_str()
                    .unwrap()
                    .contains('@'));
                assert!(b["from"]["email"].as_str().unwrap().contains('@'));
                assert!(nonempty(&b["subject"]));
                assert_eq!(b["content"][0]["type"], "text/plain");
                assert!(nonempty(&b["content"][0]["value"]));
            }
            "hubspot-contact" => {
                let b = json_body(r);
                assert!(r.header("authorization").starts_with("Bearer "));
                assert!(b["properties"]["email"].as_str().unwrap().contains('@'));
                assert!(nonempty(&b["properties"]["firstname"]));
            }
            "zapier" | "make" | "n8n" => {
                let b = json_body(r);
                assert!(nonempty(&b["id"]) && nonempty(&b["type"]) && b["data"].is_object());
            }
            other => panic!("recipe {other} has no shape check"),
        }
        checked.push(name);
    }
    assert_eq!(checked.len(), 9, "{checked:?}");
    drop(k);
    cleanup(&prefix).await;
}

/// The five services whose URL is the credential mark it secret: sealed at rest, masked in
/// every answer.
#[test]
fn capability_url_recipes_mark_the_url_secret() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/recipes");
    for name in ["slack", "discord", "teams", "make", "zapier"] {
        let recipe: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(recipe["webhook"]["url_secret"], true, "{name}");
    }
}
