//! `/openapi.json` against the routes the real binary serves: the document is OpenAPI 3.1,
//! names every route of the API contract, every operation it names is really routed, every
//! operation declares its security and its error answers, and every `$ref` resolves.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::Value;

/// The API section of the design contract: every route and its methods.
const CONTRACT: &[(&str, &[&str])] = &[
    ("/v1/events", &["post"]),
    ("/v1/events/batch", &["post"]),
    ("/v1/events/{id}", &["get"]),
    ("/v1/webhooks", &["get", "post"]),
    ("/v1/webhooks/{id}", &["get", "patch", "delete"]),
    ("/v1/webhooks/{id}/test", &["post"]),
    ("/v1/webhooks/{id}/rotate-secret", &["post"]),
    ("/v1/webhooks/{id}/attempts", &["get"]),
    ("/v1/webhooks/{id}/secret", &["get"]),
    ("/v1/webhooks/{id}/dead-letters/replay", &["post"]),
    ("/v1/dead-letters", &["get"]),
    ("/v1/dead-letters/{id}/replay", &["post"]),
    ("/v1/replays/{id}", &["get"]),
    ("/v1/attempts/{id}/resend", &["post"]),
    ("/v1/stats", &["get"]),
    ("/v1/webhooks/{id}/stats", &["get"]),
    ("/v1/event-types", &["get"]),
    ("/metrics", &["get"]),
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/openapi.json", &["get"]),
];

/// Served without a token, so documented without one.
const UNAUTHENTICATED: &[&str] = &["/metrics", "/healthz", "/readyz", "/openapi.json"];

/// Pages for people, not API: served (once the dashboard is there) but never documented.
const PAGES: &[&str] = &["/", "/assets/app.js"];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// What the router answers for a path it does not serve.
fn is_route_fallback(status: u16, body: &Value) -> bool {
    status == 404 && body["error"]["message"] == "route not found"
}

/// Every `$ref` in the document, with where it is.
fn refs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                if k == "$ref" {
                    if let Some(r) = child.as_str() {
                        out.push((at.to_owned(), r.to_owned()));
                    }
                } else {
                    refs(child, &format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                refs(child, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// `#/a/b` within the document.
fn resolve<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
    doc.pointer(r.strip_prefix('#')?)
}

/// A response, with a `$ref` followed.
fn response<'a>(doc: &'a Value, r: &'a Value) -> &'a Value {
    r.get("$ref")
        .and_then(Value::as_str)
        .and_then(|p| resolve(doc, p))
        .unwrap_or(r)
}

/// Whether a response's JSON schema is, or may be, the error envelope.
fn is_error_envelope(doc: &Value, resp: &Value) -> bool {
    let schema = &resp["content"]["application/json"]["schema"];
    let is = |s: &Value| s["$ref"] == "#/components/schemas/ErrorBody";
    is(schema)
        || schema["anyOf"]
            .as_array()
            .is_some_and(|items| items.iter().any(is))
        || {
            // Or an object whose `error` property is the error detail.
            let target = schema["$ref"]
                .as_str()
                .and_then(|r| resolve(doc, r))
                .unwrap_or(schema);
            target["properties"]["error"]["$ref"] == "#/components/schemas/ErrorDetail"
        }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let prefix = unique_prefix();
    let k = Kivihook::start("ingest", &prefix, &[]);
    let http = reqwest::Client::new();

    let r = http.get(k.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200, "/openapi.json needs no token");
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let doc: Value = r.json().await.expect("the document is JSON");
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "OpenAPI {version}");
    let paths = doc["paths"].as_object().expect("paths");

    // Every route of the contract, with each of its methods.
    for (path, methods) in CONTRACT {
        let item = paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is not documented"));
        for m in *methods {
            assert!(
                item.get(*m).is_some(),
                "{} {path} is not documented",
                m.to_uppercase()
            );
        }
    }
    for page in PAGES {
        assert!(!paths.contains_key(*page), "{page} is a page, not API");
    }
    assert!(
        !paths.keys().any(|p| p.starts_with("/assets")),
        "dashboard assets are not API"
    );

    // Create and PATCH of a webhook take `?dry_run=`, and a dry create answers 200, not 201.
    for (path, method) in [("/v1/webhooks", "post"), ("/v1/webhooks/{id}", "patch")] {
        let op = &paths[path][method];
        let dry_run = op["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "dry_run"))
            .unwrap_or_else(|| panic!("{method} {path}: no dry_run parameter"));
        assert_eq!(dry_run["in"], "query");
        assert_eq!(dry_run["schema"]["type"], "boolean");
        assert!(op["responses"]["200"].is_object(), "{method} {path}: 200");
    }
    assert_eq!(
        doc["components"]["schemas"]["Webhook"]["properties"]["dry_run"]["type"],
        "boolean"
    );

    // Every $ref resolves.
    let mut all = Vec::new();
    refs(&doc, "#", &mut all);
    assert!(!all.is_empty());
    for (at, r) in &all {
        assert!(resolve(&doc, r).is_some(), "{at}: `{r}` does not resolve");
    }

    let schemes: BTreeSet<&str> = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(schemes, BTreeSet::from(["admin_token", "ingest_token"]));
    for s in &schemes {
        let scheme = &doc["components"]["securitySchemes"][s];
        assert_eq!(scheme["type"], "http", "{s}");
        assert_eq!(scheme["scheme"], "bearer", "{s}");
    }

    let mut operation_ids = BTreeMap::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let what = format!("{} {path}", method.to_uppercase());
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(!id.is_empty(), "{what}: no operationId");
            assert!(
                operation_ids.insert(id.to_owned(), what.clone()).is_none(),
                "{what}: operationId {id} is used twice"
            );
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{what}: no success answer"
            );
            // Every error answer is the documented envelope.
            for (status, r) in responses {
                let resp = response(&doc, r);
                if status.starts_with('4') || (status.starts_with('5') && path != "/readyz") {
                    assert!(
                        is_error_envelope(&doc, resp),
                        "{what} {status}: not the error envelope"
                    );
                }
                if status == "401" {
                    assert!(
                        resp["headers"]["WWW-Authenticate"].is_object(),
                        "{what} 401: WWW-Authenticate"
                    );
                }
                if status == "503" && path != "/readyz" {
                    assert!(
                        resp["headers"]["Retry-After"].is_object(),
                        "{what} 503: Retry-After"
                    );
                }
            }

            if UNAUTHENTICATED.contains(&path.as_str()) {
                assert!(
                    op.get("security").is_none(),
                    "{what}: the operational routes take no token"
                );
                continue;
            }
            // Everything else declares its security: the schemes it takes, or `{}` for the
            // public catalogue.
            let security = op["security"]
                .as_array()
                .unwrap_or_else(|| panic!("{what}: no security declared"));
            assert!(!security.is_empty(), "{what}: empty security");
            let names: BTreeSet<&str> = security
                .iter()
                .flat_map(|req| req.as_object().expect("requirement").keys())
                .map(String::as_str)
                .collect();
            for n in &names {
                assert!(schemes.contains(n), "{what}: unknown scheme {n}");
            }
            let public = names.is_empty();
            if public {
                assert!(
                    path.starts_with("/v1/event-types"),
                    "{what}: only the catalogue is public"
                );
            } else {
                assert!(responses.contains_key("401"), "{what}: 401 not documented");
                // Everything that reads or writes state may find Redis or RabbitMQ away; a
                // preview of an unsaved definition touches neither.
                if id != "preview_draft" {
                    assert!(responses.contains_key("503"), "{what}: 503 not documented");
                }
                if names.contains("ingest_token") {
                    // Intake takes either token.
                    assert!(names.contains("admin_token"), "{what}: admin token too");
                    assert!(
                        ["/v1/events", "/v1/events/batch"].contains(&path.as_str()),
                        "{what}: the ingest token is for intake only"
                    );
                } else {
                    assert!(responses.contains_key("403"), "{what}: 403 not documented");
                }
            }
            if path.contains('{') {
                assert!(responses.contains_key("404"), "{what}: 404 not documented");
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "415", "422"] {
                    assert!(
                        responses.contains_key(status),
                        "{what}: {status} not documented"
                    );
                }
                assert!(op["requestBody"]["content"]["application/json"]["schema"].is_object());
            }
        }
    }

    // Every documented operation is routed: with a made-up id and no token, the answer is
    // the operation's own (401, a 404 naming what is missing, …), never the router's.
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let url = k.url(&path.replace("{id}", "nope-0").replace("{type}", "nope"));
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = http.request(m, &url).send().await.unwrap();
            let status = r.status().as_u16();
            let www = r.headers().get("www-authenticate").cloned();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let what = format!("{} {path}", method.to_uppercase());
            assert!(!is_route_fallback(status, &body), "{what} is not routed");
            assert_ne!(status, 405, "{what}: method not served");
            let secured = op["security"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|req| req.as_object().is_some_and(|o| !o.is_empty()))
            });
            if secured {
                assert_eq!(status, 401, "{what} without a token: {body}");
                assert_eq!(
                    www.as_ref().map(|v| v.as_bytes()),
                    Some(&b"Bearer"[..]),
                    "{what}"
                );
                assert_eq!(body["error"]["code"], "unauthorized", "{what}");
            } else {
                assert!(status < 500, "{what}: {status}");
            }
            // A bad token is refused the same way.
            if secured {
                let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let r = http
                    .request(m, &url)
                    .bearer_auth("not-a-token")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 401, "{what} with a wrong token");
            }
        }
    }

    // The detector above can tell: an undocumented path is the router's 404, and a method a
    // documented path does not serve is a 405 with the methods it does.
    let r = http.get(k.url("/v1/no-such-route")).send().await.unwrap();
    let status = r.status().as_u16();
    assert!(is_route_fallback(status, &r.json().await.unwrap()));
    let r = http.put(k.url("/v1/stats")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert!(
        r.headers().contains_key("allow"),
        "405 names what is allowed"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");

    // Pages, where served, are HTML for people; the router's JSON 404 otherwise.
    for page in PAGES {
        let r = http.get(k.url(page)).send().await.unwrap();
        if r.status() == 404 {
            continue;
        }
        assert!(r.status().is_success(), "{page}: {}", r.status());
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(
            !ct.starts_with("application/json"),
            "{page} is a page: {ct}"
        );
    }

    drop(k);
    cleanup(&prefix).await;
}
