//! A 503 frees the id: when Redis fails during the accept path (a private Redis, paused with
//! `CLIENT PAUSE`, or at `maxmemory` part way through a batch's claims), the request answers
//! 503, and every claim it made, even one that lands after the request gave up, is
//! released, so the client's retry is accepted at once and never `in_progress`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        api.http
            .post(k.url("/v1/events/batch"))
            .bearer_auth(INGEST)
            .json(&batch)
            .send()
            .await
            .unwrap()
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
    let r = api
        .http
        .post(k.url("/v1/events/batch"))
        .bearer_auth(INGEST)
        .json(&batch)
        .send()
        .await
        .unwrap();
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

/// At `maxmemory` (noeviction) part way through a batch: the first claims land, the rest are
/// refused, the batch answers 503, and its retry once memory is back accepts every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_part_way_by_maxmemory_leaves_no_claim_behind() {
    let redis = PrivateRedis::start();
    let prefix = unique_prefix();
    let url = redis.url();
    let k = Kivihook::start("ingest", &prefix, &[("KIVIHOOK_REDIS_URL", url.as_str())]);
    let api = Api::new(&k);
    // Warm the connection and the registry, then leave room for a few claims only.
    assert_eq!(
        api.post_event(&event("evt_m0", "appointment.booked", None))
            .await
            .status(),
        202
    );
    let used: u64 = redis
        .cli(&["MEMORY", "STATS"])
        .lines()
        .skip_while(|l| *l != "total.allocated")
        .nth(1)
        .and_then(|v| v.trim().parse().ok())
        .expect("total.allocated");
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis.cli(&["CONFIG", "SET", "maxmemory", &(used + 3000).to_string()]);
    let events: Vec<Value> = (0..200)
        .map(|i| event(&format!("evt_m{}", i + 1), "appointment.booked", None))
        .collect();
    let batch = json!({ "events": events });
    let post = || async {
        let r = api
            .http
            .post(k.url("/v1/events/batch"))
            .bearer_auth(INGEST)
            .json(&batch)
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    let (status, body) = post().await;
    assert_eq!(status, 503, "{body}");
    redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = post().await;
    assert_eq!(status, 202, "{body}");
    let results = body["results"].as_array().unwrap();
    let accepted = results.iter().filter(|r| r["status"] == "accepted").count();
    assert_eq!(accepted, 200, "none in progress: {body}");
    drop(k);
    cleanup(&prefix).await;
}
