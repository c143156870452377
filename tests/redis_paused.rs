//! A 503 frees the id: when Redis stalls during the accept path (a private Redis, paused with
//! `CLIENT PAUSE`), or a claim lands but its reply is lost (a proxy that drops Redis's
//! replies), the request answers 503, and the claims it made are released, so the client's
//! retry is accepted at once and never `in_progress`.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;
use serde_json::{json, Value};

/// A Redis of this test's own, on a free port; stopped when dropped.
struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pause(&self, ms: u64) {
        self.cli(&["CLIENT", "PAUSE", &ms.to_string(), "ALL"]);
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_while_redis_stalls_frees_the_id_for_the_retry() {
    let redis = PrivateRedis::start();
    let prefix = unique_prefix();
    let url = redis.url();
    let k = Kivihook::start("ingest", &prefix, &[("KIVIHOOK_REDIS_URL", url.as_str())]);
    let api = Api::new(&k);
    // Longer than a Redis request may take (5 s): the claims time out and answer 503, and
    // land when the pause ends.
    redis.pause(7000);
    let single = event("evt_p1", "appointment.booked", None);
    let batch = json!({"events": [
        event("evt_p2", "appointment.booked", None),
        event("evt_p3", "patient.created", None),
    ]});
    let (one, many) = tokio::join!(api.post_event(&single), async {
        api.post_batch(&batch).await
    });
    assert_eq!(one.status(), 503);
    assert_eq!(many.status(), 503);
    // The pause ends; the late claims have landed and been released.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let retry = api.post_event(&single).await;
    let status = retry.status();
    let body: Value = retry.json().await.unwrap();
    assert_eq!(
        status, 202,
        "the retry is accepted, not in progress: {body}"
    );
    let r = api.post_batch(&batch).await;
    let body: Value = r.json().await.unwrap();
    let statuses: Vec<&str> = body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["accepted", "accepted"], "{body}");
    drop(k);
    cleanup(&prefix).await;
}

/// A TCP proxy to Redis that forwards every command and, while told to, cuts the connection
/// when Redis replies: the command was carried out, the client never hears so (a connection
/// lost between a command and its reply).
struct ReplyDroppingProxy {
    port: u16,
    drop_replies: Arc<AtomicBool>,
}

impl ReplyDroppingProxy {
    async fn start(upstream: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let drop_replies = Arc::new(AtomicBool::new(false));
        let dropping = drop_replies.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
                });
                let dropping = dropping.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match server_rx.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if dropping.load(Ordering::SeqCst) {
                            // The reply is lost with the connection.
                            let _ = client_tx.shutdown().await;
                            return;
                        }
                        if client_tx.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { port, drop_replies }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_landed_but_whose_reply_was_lost_is_released_for_the_retry() {
    let proxy = ReplyDroppingProxy::start("127.0.0.1:6379").await;
    let prefix = unique_prefix();
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let k = Kivihook::start("ingest", &prefix, &[("KIVIHOOK_REDIS_URL", url.as_str())]);
    let api = Api::new(&k);
    let single = event("evt_lost_1", "appointment.booked", None);
    let batch = json!({"events": [
        event("evt_lost_2", "appointment.booked", None),
        event("evt_lost_3", "patient.created", None),
    ]});
    // Redis carries out the claims; the connection is lost before ingest hears back, and it
    // answers 503.
    proxy.drop_replies.store(true, Ordering::SeqCst);
    let (one, many) = tokio::join!(api.post_event(&single), async {
        api.post_batch(&batch).await
    });
    assert_eq!(one.status(), 503);
    assert_eq!(many.status(), 503);
    let mut r = redis().await;
    let landed = dedup_entry(&mut r, &prefix, "evt_lost_1").await;
    proxy.drop_replies.store(false, Ordering::SeqCst);
    // The retry after the 503 is accepted (within the release's first backoff steps), not
    // `in_progress` until the claim expires a minute later.
    let started = Instant::now();
    let status = loop {
        let retry = api.post_event(&single).await;
        let status = retry.status().as_u16();
        if status == 202 || started.elapsed() > Duration::from_secs(8) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        status, 202,
        "the claim that landed ({landed:?}) still held the id after the 503"
    );
    // The batch's claims are released by a task of their own, on the same backoff: its
    // retry gets the same time as the single one's.
    let started = Instant::now();
    let (statuses, body) = loop {
        let r = api.post_batch(&batch).await;
        let body: Value = r.json().await.unwrap();
        let statuses: Vec<String> = body["results"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"))
            .iter()
            .map(|r| r["status"].as_str().unwrap().to_owned())
            .collect();
        if statuses.iter().all(|s| s != "in_progress") || started.elapsed() > Duration::from_secs(8)
        {
            break (statuses, body);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(statuses, ["accepted", "accepted"], "{body}");
    drop(k);
    cleanup(&prefix).await;
}

/// Readiness tells the truth: a Redis that answers but refuses writes (at `maxmemory` with
/// noeviction) makes `/readyz` say not ready, naming the reason; ready again once it takes
/// writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_503_while_redis_refuses_writes() {
    let redis = PrivateRedis::start();
    let prefix = unique_prefix();
    let url = redis.url();
    let k = Kivihook::start("ingest", &prefix, &[("KIVIHOOK_REDIS_URL", url.as_str())]);
    let ready = || async {
        let r = reqwest::get(k.url("/readyz")).await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    eventually(Duration::from_secs(10), "ready", || async {
        ready().await.0 == 200
    })
    .await;
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["rabbitmq"], "ok", "{body}");
    let reason = body["checks"]["redis"].as_str().unwrap();
    assert!(
        reason.to_lowercase().contains("maxmemory") || reason.contains("OOM"),
        "{reason}"
    );
    // And the accept path agrees.
    let r = Api::new(&k)
        .post_event(&event("evt_oom", "appointment.booked", None))
        .await;
    assert_eq!(r.status(), 503);
    redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    eventually(Duration::from_secs(10), "ready again", || async {
        ready().await.0 == 200
    })
    .await;
    drop(k);
    cleanup(&prefix).await;
}
