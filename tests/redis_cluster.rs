//! KiviHook on a real Redis Cluster (3 primaries, 3 replicas, on private loopback ports):
//! the whole pipeline with retries, dead letters and replay; keys spread over every primary;
//! and a primary killed mid-stream, its replica promoted, with `KIVIHOOK_REDIS_WAIT_REPLICAS`,
//! losing no event that was answered 202.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/redis-cluster.sh"
);

/// A private cluster; stopped (and its files removed) when dropped.
struct Cluster {
    dir: PathBuf,
    base: u16,
}

impl Cluster {
    fn start() -> Self {
        let base = free_base_port();
        let dir = std::env::temp_dir().join(format!("kivihook-redis-cluster-{base}"));
        let _ = std::fs::remove_dir_all(&dir);
        let status = Command::new("bash")
            .arg(SCRIPT)
            .arg("start")
            .arg(&dir)
            .arg(base.to_string())
            .status()
            .expect("run the cluster script");
        let cluster = Self { dir, base };
        assert!(status.success(), "the Redis Cluster did not start");
        cluster
    }

    fn ports(&self) -> Vec<u16> {
        (self.base..self.base + 6).collect()
    }

    /// The setting's value: every node, so a client still finds the cluster after a failover.
    fn nodes(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn primaries(&self) -> Vec<u16> {
        self.ports()
            .into_iter()
            .filter(|p| self.info(*p, "replication").contains("role:master"))
            .collect()
    }

    fn info(&self, port: u16, section: &str) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "info", section])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys_on(&self, port: u16, prefix: &str) -> usize {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["--scan", "--pattern", &format!("{{{prefix}:*")])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    /// SIGKILL one node: no chance to hand anything over.
    fn kill(&self, port: u16) {
        let pid = std::fs::read_to_string(self.dir.join(port.to_string()).join("redis.pid"))
            .expect("pid file");
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn restart(&self, port: u16) {
        let status = Command::new("bash")
            .arg(SCRIPT)
            .arg("restart")
            .arg(&self.dir)
            .arg(port.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "node {port} did not restart");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// Six ports in a row whose cluster bus ports (+10000) are free too. Each test of this file
/// probes from its own offset so two clusters never race for the same range.
fn free_base_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let offset = NEXT.fetch_add(1, Ordering::Relaxed) as u16;
    let start = 7100 + (std::process::id() % 40) as u16 * 20 + offset * 10;
    for base in (start..17000).step_by(20) {
        let free = (base..base + 6).all(|p| {
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no free ports for a Redis Cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_on_a_redis_cluster_with_retries_dead_letters_and_replay() {
    let cluster = Cluster::start();
    let prefix = unique_prefix();
    let nodes = cluster.nodes();
    let k = Kivihook::start(
        "all",
        &prefix,
        &[
            ("KIVIHOOK_REDIS_CLUSTER", nodes.as_str()),
            // A URL that reaches nothing: the cluster setting replaces it.
            ("KIVIHOOK_REDIS_URL", "redis://127.0.0.1:1"),
            ("KIVIHOOK_RETRY_SCHEDULE", "1,1"),
            // Every first attempt to one endpoint fails on purpose: no circuit for that.
            ("KIVIHOOK_CIRCUIT_THRESHOLD", "0"),
        ],
    );
    let api = Api::new(&k);
    let good = Receiver::start().await;
    let flaky = Receiver::start().await;
    flaky.fail_first_attempts();
    let broken = Receiver::start().await;
    broken.respond_with(500);
    let good_hook = api
        .create_webhook(json!({"name": "good", "url": good.url(), "events": ["*"]}))
        .await;
    let flaky_hook = api
        .create_webhook(json!({"name": "flaky", "url": flaky.url(), "events": ["appointment.*"]}))
        .await;
    let broken_hook = api
        .create_webhook(json!({"name": "broken", "url": broken.url(), "events": ["bill.paid"]}))
        .await;

    const EVENTS: usize = 300;
    let types = ["appointment.booked", "patient.created", "bill.paid"];
    let posts = futures::stream::iter(0..EVENTS)
        .map(|i| {
            let api = api.clone();
            async move {
                let e = event(&format!("evt_c{i}"), types[i % 3], Some("12"));
                api.post_event(&e).await.status().as_u16()
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<u16>>()
        .await;
    assert!(posts.iter().all(|s| *s == 202), "{posts:?}");
    // The same id again is a duplicate: the marker is found on whichever node holds it.
    let again = api.post_event(&event("evt_c0", types[0], Some("12"))).await;
    assert_eq!(again.status(), 200);
    // A batch's events spread over many slots, each slot's claims one call: the ten accepted
    // above are duplicates where they stand, the 140 new patients are accepted.
    const NEW: usize = 140;
    let batch: Vec<Value> = (0..10)
        .map(|i| event(&format!("evt_c{}", i * 3), types[0], Some("12")))
        .chain((0..NEW).map(|i| event(&format!("evt_cb{i}"), "patient.created", Some("12"))))
        .collect();
    let r = api.post_batch(&json!({ "events": batch })).await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], NEW, "{body}");
    assert_eq!(body["duplicates"], 10, "{body}");
    let statuses: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert!(statuses[..10].iter().all(|s| *s == "duplicate"), "{body}");
    assert!(statuses[10..].iter().all(|s| *s == "accepted"), "{body}");
    let r = api.post_batch(&json!({ "events": batch })).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["duplicates"], 150);

    let appointments = EVENTS / 3;
    let bills = EVENTS / 3;
    wait_until(Duration::from_secs(60), "every delivery and retry", || {
        let flaky_ok = flaky
            .received()
            .iter()
            .filter(|r| r.status_sent_ok())
            .count();
        good.count() == EVENTS + NEW && flaky_ok == appointments
    })
    .await;
    // The broken endpoint's deliveries go dead after 1 + 2 attempts each.
    let listing = format!(
        "/v1/dead-letters?webhook_id={}&limit=200",
        broken_hook["id"].as_str().unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let dead = loop {
        let v = get_json(&api, &listing).await;
        if v["dead_letters"].as_array().map_or(0, |a| a.len()) == bills {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for dead letters: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(broken.count(), bills * 3);
    let all = get_json(&api, "/v1/dead-letters?limit=200").await;
    assert_eq!(all["dead_letters"].as_array().unwrap().len(), bills);

    // Per-event state reads back from the event's own slot.
    let status = get_json(&api, "/v1/events/evt_c0").await;
    let states: HashMap<String, String> = status["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["webhook_id"].as_str().unwrap().to_owned(),
                w["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(states[good_hook["id"].as_str().unwrap()], "delivered");
    assert_eq!(states[flaky_hook["id"].as_str().unwrap()], "delivered");
    let bill = get_json(&api, "/v1/events/evt_c2").await;
    assert!(bill["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["webhook_id"] == broken_hook["id"] && w["status"] == "dead"));

    // A replay, once the endpoint recovers, delivers.
    broken.respond_with(200);
    let dl_id = dead["dead_letters"][0]["id"].as_str().unwrap().to_owned();
    let r = api
        .admin_post(&format!("/v1/dead-letters/{dl_id}/replay"))
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    wait_until(Duration::from_secs(30), "the replay", || {
        broken.received().iter().any(|r| r.status_sent_ok())
    })
    .await;
    let stats = get_json(&api, "/v1/stats").await;
    assert!(stats
        .to_string()
        .contains(good_hook["id"].as_str().unwrap()));

    // The state is spread over the cluster: every primary holds some of this test's keys.
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    for p in &primaries {
        let n = cluster.keys_on(*p, &prefix);
        println!("primary {p}: {n} keys");
        assert!(n > 0, "primary {p} holds none of the keys");
    }
    drop(k);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_stream_loses_no_accepted_event_with_wait_replicas() {
    let cluster = Cluster::start();
    let prefix = unique_prefix();
    let nodes = cluster.nodes();
    let env = [
        ("KIVIHOOK_REDIS_CLUSTER", nodes.as_str()),
        ("KIVIHOOK_REDIS_WAIT_REPLICAS", "1"),
        ("KIVIHOOK_REDIS_WAIT_TIMEOUT", "1"),
        // Debug, so that a failure can say what became of the events it misses.
        ("KIVIHOOK_LOG", "info,kivihook_dispatcher=debug"),
    ];
    let ingest = Kivihook::start("ingest", &prefix, &env);
    let dispatcher = Kivihook::start("dispatcher", &prefix, &env);
    let scheduler = Kivihook::start("scheduler", &prefix, &env);
    let api = Api::new(&ingest);
    let receiver = Receiver::start().await;
    api.create_webhook(json!({"name": "crm", "url": receiver.url(), "events": ["*"]}))
        .await;

    const EVENTS: usize = 3000;
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let victim = cluster.primaries()[0];
    let started = Instant::now();
    let posting = {
        let api = api.clone();
        let accepted = accepted.clone();
        let refused = refused.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..EVENTS)
                .map(|i| {
                    let api = api.clone();
                    let accepted = accepted.clone();
                    let refused = refused.clone();
                    async move {
                        let id = format!("evt_f{i}");
                        let e = event(&id, "appointment.booked", Some("7"));
                        match api.post_event(&e).await.status().as_u16() {
                            202 => {
                                accepted.lock().unwrap().insert(id);
                            }
                            _ => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<()>>()
                .await;
        })
    };
    // Mid-stream, the first primary dies; its replica takes over its slots.
    eventually(Duration::from_secs(60), "a third of the events", || {
        let n = accepted.lock().unwrap().len();
        async move { n >= EVENTS / 3 }
    })
    .await;
    cluster.kill(victim);
    println!("killed primary {victim} after {:?}", started.elapsed());
    eventually(Duration::from_secs(30), "the replica promoted", || {
        let primaries = cluster.primaries().len();
        async move { primaries == 3 }
    })
    .await;
    println!("replica promoted after {:?}", started.elapsed());
    // The promoted primary has no replica of its own, so writes to its slots cannot be
    // acknowledged by one (WAIT 1 fails) until the old primary comes back as its replica.
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.restart(victim);
    posting.await.unwrap();

    let accepted: HashSet<String> = accepted.lock().unwrap().clone();
    let delivered = || -> HashSet<String> {
        receiver
            .received()
            .iter()
            .filter(|r| r.status_sent_ok())
            .map(|r| r.json()["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let waiting = Instant::now();
    loop {
        let got = delivered();
        let mut missing: Vec<&String> = accepted.iter().filter(|id| !got.contains(*id)).collect();
        if missing.is_empty() {
            break;
        }
        if waiting.elapsed() > Duration::from_secs(120) {
            missing.sort();
            diagnose(
                &cluster,
                &prefix,
                &missing,
                &[
                    ("ingest", &ingest),
                    ("dispatcher", &dispatcher),
                    ("scheduler", &scheduler),
                ],
            );
            panic!(
                "timed out waiting for every accepted event delivered: {} of {} missing",
                missing.len(),
                accepted.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for r in receiver.received().iter().filter(|r| r.status_sent_ok()) {
        *per_event
            .entry(r.json()["id"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let duplicates: usize = per_event.values().map(|n| n - 1).sum();
    println!(
        "{} posted, {} accepted, {} refused while the cluster failed over, all {} delivered, {duplicates} duplicates, in {:?}",
        EVENTS,
        accepted.len(),
        refused.load(Ordering::Relaxed),
        accepted.len(),
        started.elapsed()
    );
    assert!(accepted.len() >= EVENTS / 2, "most events are accepted");
    // At-least-once: a request sent again is one whose outcome could not be written (its
    // shard's primary died, or its WAIT failed) before the message went back to the queue;
    // at most what the dispatcher had in flight (its prefetch, 256).
    assert!(
        duplicates <= 256,
        "{duplicates} deliveries sent twice: more than the dispatcher had in flight"
    );

    // The redelivery promise, after the failover: every accepted event sent again with the
    // same id reaches no webhook a second time (its delivered state survived: outcomes are
    // written with WAIT).
    let before = receiver.count();
    let mut ids: Vec<String> = accepted.iter().cloned().collect();
    ids.sort();
    let resent: Vec<u16> = futures::stream::iter(ids)
        .map(|id| {
            let api = api.clone();
            async move {
                api.post_event(&event(&id, "appointment.booked", Some("7")))
                    .await
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = receiver.count() - before;
    let answered_duplicate = resent.iter().filter(|s| **s == 200).count();
    println!(
        "sent again after the failover: {} answered 200 duplicate, {} others; {again} deliveries",
        answered_duplicate,
        resent.len() - answered_duplicate
    );
    assert_eq!(
        again, 0,
        "accepted events sent again after the failover were delivered again"
    );
}

/// What the cluster, RabbitMQ and the processes' logs say about events never delivered:
/// their markers and target states, the retry schedule, the queues, and every kind of
/// warning (the first few of each, and how many).
fn diagnose(cluster: &Cluster, prefix: &str, missing: &[&String], procs: &[(&str, &Kivihook)]) {
    println!(
        "MISSING {}: {:?}",
        missing.len(),
        &missing[..missing.len().min(40)]
    );
    let live: Vec<u16> = cluster
        .ports()
        .into_iter()
        .filter(|p| !cluster.info(*p, "replication").is_empty())
        .collect();
    for p in cluster.ports() {
        let info = cluster.info(p, "replication");
        let role = info
            .lines()
            .filter(|l| {
                l.starts_with("role:") || l.starts_with("slave0:") || l.starts_with("master_port:")
            })
            .collect::<Vec<_>>()
            .join(" ");
        println!("node {p}: {role}");
    }
    let Some(node) = live.first().map(u16::to_string) else {
        return;
    };
    let cli = |args: &[&str]| -> String {
        let out = Command::new("redis-cli")
            .args(["-c", "-h", "127.0.0.1", "-p", &node])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .replace('\n', " ; ")
    };
    for id in missing.iter().take(15) {
        let keys = kivihook_core::keys::Keys::new(prefix);
        let bucket = keys.dedup_bucket_at(id, chrono::Utc::now());
        println!(
            "event {id}: marker={:?} targets={:?}",
            cli(&["HGET", &bucket, id]),
            cli(&["HGETALL", &keys.targets(id)])
        );
    }
    for shard in 0..16 {
        let tag = format!("{{{prefix}:retry:{shard}}}");
        let schedule = cli(&["ZCARD", &format!("{tag}:schedule")]);
        let leases = cli(&["ZCARD", &format!("{tag}:leases")]);
        let jobs = cli(&["HLEN", &format!("{tag}:jobs")]);
        if schedule != "0" || leases != "0" || jobs != "0" {
            println!("retry shard {shard}: schedule={schedule} leases={leases} jobs={jobs}");
            println!(
                "  schedule: {}",
                cli(&["ZRANGE", &format!("{tag}:schedule"), "0", "5", "WITHSCORES"])
            );
            println!(
                "  leases: {}",
                cli(&["ZRANGE", &format!("{tag}:leases"), "0", "5", "WITHSCORES"])
            );
        }
    }
    let out = Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "name",
            "messages",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ])
        .output();
    if let Ok(out) = out {
        for l in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(prefix))
        {
            println!("queue: {l}");
        }
    }
    for (name, k) in procs {
        let logs = k.logs.lock().unwrap();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for l in logs.iter() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            let level = v["level"].as_str().unwrap_or_default();
            if level == "WARN" || level == "ERROR" {
                let key = format!(
                    "{level} {} {}",
                    v["message"].as_str().unwrap_or_default(),
                    v["what"].as_str().unwrap_or_default()
                );
                let n = counts.entry(key).or_default();
                if *n < 3 {
                    println!("{name}: {l}");
                }
                *n += 1;
            }
        }
        for (k, n) in counts {
            println!("{name}: {n} × {k}");
        }
        for id in missing.iter().take(15) {
            let needle = format!("\"{id}\"");
            for l in logs.iter().filter(|l| l.contains(&needle)) {
                println!("{name} about {id}: {l}");
            }
        }
    }
}
