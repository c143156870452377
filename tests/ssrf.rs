//! The outbound guard: internal addresses are refused when a webhook is saved and again at
//! delivery (a name that resolves somewhere else later is caught too); an allowed block works.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_addresses_are_refused_at_save_and_at_delivery() {
    let prefix = unique_prefix();
    // No allowance at all: the guard's defaults.
    let strict = Kivihook::start("all", &prefix, &[("KIVIHOOK_OUTBOUND_ALLOW", "")]);
    let api = Api::new(&strict);
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://[::1]:8080/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
    ] {
        let r = api
            .http
            .post(strict.url("/v1/webhooks"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "ssrf", "url": url, "events": ["*"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{url}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "forbidden_destination",
            "{url}: {body}"
        );
        assert_eq!(body["error"]["field"], "url");
    }
    assert_eq!(
        get_json(&api, "/v1/webhooks").await["webhooks"],
        json!([]),
        "nothing stored"
    );
    drop(strict);

    // Saved where loopback was allowed, then delivered by a dispatcher where it is not: the
    // delivery is refused (the name `localhost` and the literal address alike).
    // (Saving only checks literal addresses against the list: nothing connects to them.)
    let open = Kivihook::start(
        "ingest",
        &prefix,
        &[(
            "KIVIHOOK_OUTBOUND_ALLOW",
            "127.0.0.0/8,10.0.0.0/8,169.254.0.0/16,::1/128",
        )],
    );
    let api = Api::new(&open);
    let r = Receiver::start().await;
    let port = r.addr.port();
    let by_name = api
        .create_webhook(json!({"name": "by-name", "url": format!("http://localhost:{port}/hook"), "events": ["*"]}))
        .await;
    let by_ip = api
        .create_webhook(json!({"name": "by-ip", "url": format!("http://127.0.0.1:{port}/hook"), "events": ["*"]}))
        .await;
    let mut literals = Vec::new();
    for url in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/hook".to_owned(),
        format!("http://[::1]:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
    ] {
        literals.push(
            api.create_webhook(json!({"name": url, "url": url, "events": ["*"]}))
                .await,
        );
    }
    let _dispatcher = Kivihook::start(
        "dispatcher",
        &prefix,
        &[
            ("KIVIHOOK_OUTBOUND_ALLOW", ""),
            ("KIVIHOOK_RETRY_SCHEDULE", ""),
        ],
    );
    assert_eq!(
        api.post_event(&event("evt_ssrf", "patient.created", None))
            .await
            .status(),
        202
    );
    for hook in [&by_name, &by_ip].into_iter().chain(literals.iter()) {
        let path = format!("/v1/webhooks/{}/attempts", hook["id"].as_str().unwrap());
        eventually(Duration::from_secs(10), "the refused attempt", || async {
            get_json(&api, &path).await["total"] == 1
        })
        .await;
        let attempt = &get_json(&api, &path).await["attempts"][0];
        assert_eq!(attempt["error_kind"], "blocked", "{attempt}");
        assert!(attempt["status"].is_null());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.count(), 0, "nothing reached the internal receiver");
    drop(open);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_unless_the_webhook_opts_in_and_then_are_checked() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[("KIVIHOOK_RETRY_SCHEDULE", "")]);
    let api = Api::new(&k);
    let target = Receiver::start().await;
    let hop = Receiver::start().await;
    // Every request to `hop` is answered with a redirect to `target`.
    hop.respond_with(307);
    hop.script(vec![(307, vec![("location", target.url())]); 4]);
    api.create_webhook(json!({"name": "stays", "url": hop.url(), "events": ["bill.paid"]}))
        .await;
    api.create_webhook(json!({"name": "follows", "url": hop.url(), "events": ["bill.created"], "follow_redirects": true}))
        .await;
    assert_eq!(
        api.post_event(&event("evt_r1", "bill.paid", None))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(10), "the first request", || {
        hop.count() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(target.count(), 0, "a redirect is not followed by default");
    assert_eq!(
        api.post_event(&event("evt_r2", "bill.created", None))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(10), "the followed redirect", || {
        target.count() == 1
    })
    .await;
    assert_eq!(target.received()[0].json()["id"], "evt_r2");

    // A followed redirect to an internal address is refused like any other request.
    let sneaky = Receiver::start().await;
    sneaky.script(vec![(
        302,
        vec![(
            "location",
            "http://169.254.169.254/latest/meta-data/".to_owned(),
        )],
    )]);
    let w = api
        .create_webhook(json!({"name": "sneaky", "url": sneaky.url(), "events": ["patient.created"], "follow_redirects": true}))
        .await;
    assert_eq!(
        api.post_event(&event("evt_r3", "patient.created", None))
            .await
            .status(),
        202
    );
    let path = format!("/v1/webhooks/{}/attempts", w["id"].as_str().unwrap());
    eventually(Duration::from_secs(10), "the refused redirect", || async {
        get_json(&api, &path).await["total"] == 1
    })
    .await;
    let attempt = &get_json(&api, &path).await["attempts"][0];
    assert_eq!(attempt["error_kind"], "blocked", "{attempt}");
    drop(k);
    cleanup(&prefix).await;
}

/// A stand-in for an egress proxy: records the request line of each request it is sent and
/// answers `200` with an empty body.
async fn recording_proxy() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                record
                    .lock()
                    .unwrap()
                    .push(text.lines().next().unwrap_or("").to_owned());
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (url, seen)
}

/// `POST /v1/webhooks/{id}/test`, answered.
async fn test_send(api: &Api, hook: &Value) -> Value {
    api.admin_post(&format!(
        "/v1/webhooks/{}/test",
        hook["id"].as_str().unwrap()
    ))
    .await
    .json()
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environments_proxy_is_ignored_and_only_the_configured_one_is_used() {
    let (env_proxy, env_seen) = recording_proxy().await;
    let receiver = Receiver::start().await;

    // HTTP(S)_PROXY in the environment would let the proxy resolve names, out of the guard's
    // sight: it is ignored, and the delivery goes straight to the (allowed) receiver.
    let prefix = unique_prefix();
    let k = Kivihook::start(
        "all",
        &prefix,
        &[
            ("HTTP_PROXY", &env_proxy),
            ("HTTPS_PROXY", &env_proxy),
            ("ALL_PROXY", &env_proxy),
            ("http_proxy", &env_proxy),
            ("https_proxy", &env_proxy),
            ("all_proxy", &env_proxy),
        ],
    );
    let api = Api::new(&k);
    let hook = api
        .create_webhook(json!({"name": "direct", "url": receiver.url(), "events": ["*"]}))
        .await;
    let sent = test_send(&api, &hook).await;
    assert_eq!(sent["delivered"], true, "{sent}");
    assert_eq!(receiver.count(), 1);
    assert!(
        env_seen.lock().unwrap().is_empty(),
        "the environment's proxy was used"
    );
    drop(k);
    cleanup(&prefix).await;

    // KIVIHOOK_OUTBOUND_PROXY: every delivery goes through it, by name, and literal internal
    // addresses are still refused.
    let (proxy, seen) = recording_proxy().await;
    let prefix = unique_prefix();
    let k = Kivihook::start(
        "all",
        &prefix,
        &[
            ("KIVIHOOK_OUTBOUND_PROXY", &proxy),
            ("KIVIHOOK_OUTBOUND_ALLOW", ""),
        ],
    );
    let api = Api::new(&k);
    let hook = api
        .create_webhook(
            json!({"name": "proxied", "url": "http://crm.example.invalid/hook", "events": ["*"]}),
        )
        .await;
    let sent = test_send(&api, &hook).await;
    assert_eq!(sent["delivered"], true, "{sent}");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["POST http://crm.example.invalid/hook HTTP/1.1"]
    );
    let r = api
        .http
        .post(format!("{}/v1/webhooks", api.base))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "internal", "url": "http://10.0.0.1/hook", "events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    drop(k);
    cleanup(&prefix).await;
}
