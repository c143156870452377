//! Receivers that answer what no HTTP library expects: nothing they send can crash a
//! delivery, hold its message, or touch the event's other webhooks.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A receiver on a raw socket: reads one request head and body, answers `reply` verbatim,
/// closes. Returns its URL.
async fn raw_receiver(reply: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                // Enough of the request to answer it: the head, then Content-Length bytes.
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = socket.write_all(&reply).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    url
}

async fn panics_counted(k: &Kivihook) -> f64 {
    let text = reqwest::get(k.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("kivihook_delivery_panics_total "))
        .expect("kivihook_delivery_panics_total is exported")
        .trim()
        .parse()
        .unwrap()
}

/// A response header of 511 ASCII bytes and then `é` (the cut at 512 bytes falls inside the
/// character) used to panic the delivery task and leave the message unacked: the event's
/// other webhook stayed pending and was sent the event again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_with_utf8_at_the_cut_is_kept_whole_and_holds_nothing() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let long = format!("{}é{}", "a".repeat(511), "b".repeat(100));
    let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Long: ".to_vec();
    reply.extend_from_slice(long.as_bytes());
    reply.extend_from_slice(b"\r\nConnection: close\r\n\r\nok");
    let hostile = raw_receiver(reply).await;
    let innocent = Receiver::start().await;
    let bad = api
        .create_webhook(json!({"name": "hostile", "url": hostile, "events": ["*"]}))
        .await;
    api.create_webhook(json!({"name": "innocent", "url": innocent.url(), "events": ["*"]}))
        .await;
    let bad = bad["id"].as_str().unwrap().to_owned();

    const EVENTS: usize = 20;
    for i in 0..EVENTS {
        let r = api
            .post_event(&event(&format!("evt_h{i}"), "appointment.booked", None))
            .await;
        assert_eq!(r.status(), 202);
    }
    eventually(
        Duration::from_secs(30),
        "every event delivered to both",
        || {
            let api = api.clone();
            let bad = bad.clone();
            async move {
                let log = get_json(&api, &format!("/v1/webhooks/{bad}/attempts?limit=100")).await;
                log["total"].as_u64() == Some(EVENTS as u64)
            }
        },
    )
    .await;
    let log = get_json(&api, &format!("/v1/webhooks/{bad}/attempts?limit=100")).await;
    for a in log["attempts"].as_array().unwrap() {
        assert_eq!(a["status"], 200, "{a}");
        assert_eq!(a["outcome"], "delivered", "{a}");
        assert_eq!(
            a["response_headers"]["x-long"],
            "a".repeat(511),
            "cut before the é"
        );
    }
    for i in 0..EVENTS {
        let status = get_json(&api, &format!("/v1/events/evt_h{i}")).await;
        let webhooks = status["webhooks"].as_array().unwrap();
        assert_eq!(webhooks.len(), 2, "{status}");
        assert!(
            webhooks.iter().all(|w| w["status"] == "delivered"),
            "{status}"
        );
    }
    // Nothing was sent twice to the other webhook: no message was left unacked.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for r in innocent.received() {
        *per_event
            .entry(r.json()["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_event.len(), EVENTS);
    assert!(per_event.values().all(|n| *n == 1), "{per_event:?}");
    assert_eq!(panics_counted(&k).await, 0.0);
    let mut k = k;
    assert!(k.alive());
    drop(k);
    cleanup(&prefix).await;
}

/// Status lines, headers and bodies no server should send: each attempt is recorded (as
/// delivered or failed, never lost), the other webhook gets every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_fail_their_attempt_and_nothing_else() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &[("KIVIHOOK_RETRY_SCHEDULE", "60")]);
    let api = Api::new(&k);
    let innocent = Receiver::start().await;
    api.create_webhook(json!({"name": "innocent", "url": innocent.url(), "events": ["*"]}))
        .await;
    let replies: Vec<Vec<u8>> = vec![
        b"HTTP/1.1 999 \xff\xfe\r\n\r\n".to_vec(),
        b"garbage\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nX-Bin: \x80\x81\x82\r\nContent-Length: 3\r\n\r\n\xff\xfe\xfd".to_vec(),
        [
            b"HTTP/1.1 500 Oops\r\nContent-Length: 6000\r\n\r\n".to_vec(),
            "é".repeat(3000).into_bytes(),
        ]
        .concat(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort".to_vec(),
        Vec::new(),
    ];
    let mut hooks = Vec::new();
    for (i, reply) in replies.into_iter().enumerate() {
        let url = raw_receiver(reply).await;
        let w = api
            .create_webhook(json!({"name": format!("odd-{i}"), "url": url, "events": ["*"]}))
            .await;
        hooks.push(w["id"].as_str().unwrap().to_owned());
    }
    for i in 0..5 {
        let r = api
            .post_event(&event(&format!("evt_m{i}"), "appointment.booked", None))
            .await;
        assert_eq!(r.status(), 202);
    }
    for id in &hooks {
        eventually(Duration::from_secs(30), "an attempt per event", || {
            let api = api.clone();
            let id = id.clone();
            async move {
                get_json(&api, &format!("/v1/webhooks/{id}/attempts?limit=100")).await["total"]
                    .as_u64()
                    == Some(5)
            }
        })
        .await;
        let log = get_json(&api, &format!("/v1/webhooks/{id}/attempts?limit=100")).await;
        for a in log["attempts"].as_array().unwrap() {
            let body = a["response_body"].as_str().unwrap_or_default();
            assert!(body.len() <= 4096, "the kept body is an excerpt");
            assert!(
                ["delivered", "retry"].contains(&a["outcome"].as_str().unwrap()),
                "{a}"
            );
        }
    }
    wait_until(Duration::from_secs(10), "the other webhook", || {
        innocent.count() == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(innocent.count(), 5, "each event once");
    assert_eq!(panics_counted(&k).await, 0.0);
    drop(k);
    cleanup(&prefix).await;
}
