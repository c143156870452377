//! RabbitMQ as a 3-node cluster of this test's own (`tests/support/rabbitmq-cluster.sh`, on
//! ports of its own beside the shared broker). `kivihook all` is given every node in
//! `KIVIHOOK_AMQP_URL`; events stream in while the node that leads the deliveries quorum
//! queue, and holds the process's connections, is killed with SIGKILL. Counted: every event
//! answered 202 is delivered; the process fails over to another node by itself (publisher and
//! consumer both reconnect, no restart); a new leader takes the queue; the only duplicates are
//! deliveries that were in flight on the lost node; nothing is left in the queue.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Events posted in all, one every `PACE`: about 15 s of traffic, a quarter of it before
/// the kill.
const EVENTS: usize = 3000;
const PACE: Duration = Duration::from_millis(5);
const PREFETCH: usize = 32;
const RETRY_PREFETCH: usize = 16;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/rabbitmq-cluster.sh"
);

/// The cluster; stopped and its directory removed when dropped, also when the test fails.
struct Cluster {
    dir: PathBuf,
    base: u16,
    /// Node names and AMQP URLs, node 1 first.
    nodes: Vec<(String, String)>,
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A base port whose AMQP, distribution and CLI ports (see the script) are all free.
fn free_base() -> u16 {
    for _ in 0..50 {
        let base = 21_000 + (rand_u16() % 3000);
        let ports = (0..3).flat_map(|i| [base + i, base + 100 + i, base + 10_100 + i]);
        if ports.into_iter().all(port_free) {
            return base;
        }
    }
    panic!("no free base port for the cluster");
}

fn rand_u16() -> u16 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u16::from_le_bytes([b[0], b[1]])
}

impl Cluster {
    fn start() -> Self {
        let base = free_base();
        // Straight under the temp directory, where the server (which may run as another
        // user) can reach it; named by its base port, so `.ci/run` can stop a cluster that a
        // killed run left behind.
        let dir = std::env::temp_dir().join(format!("kivihook-cluster-{base}"));
        let mut cluster = Self {
            dir,
            base,
            nodes: Vec::new(),
        };
        let out = cluster.script("start", &[]);
        cluster.nodes = out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(name, url)| (name.to_owned(), url.to_owned()))
            .collect();
        assert_eq!(
            cluster.nodes.len(),
            3,
            "the script lists three nodes: {out}"
        );
        cluster
    }

    fn script(&self, what: &str, extra: &[&str]) -> String {
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg(what)
            .arg(&self.dir)
            .arg(self.base.to_string())
            .args(extra)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run the cluster script");
        assert!(out.status.success(), "rabbitmq-cluster.sh {what} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every node's URL, node 1 first: the value of `KIVIHOOK_AMQP_URL`.
    fn url_list(&self) -> String {
        let urls: Vec<&str> = self.nodes.iter().map(|(_, u)| u.as_str()).collect();
        urls.join(",")
    }

    /// `rabbitmqctl` against node `i` (0-based), its table without headers.
    fn ctl(&self, i: usize, args: &[&str]) -> String {
        let out = Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.nodes[i].0])
            .args(args)
            .arg("--no-table-headers")
            .output()
            .expect("run rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} on {}: {}",
            self.nodes[i].0,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The node (0-based) leading a quorum queue, asked of node `via`.
    fn leader(&self, via: usize, queue: &str) -> Option<usize> {
        let table = self.ctl(via, &["list_queues", "name", "leader"]);
        let leader = table.lines().find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(queue)).then(|| cols.next().unwrap_or("").to_owned())
        })?;
        self.nodes.iter().position(|(name, _)| *name == leader)
    }

    /// Client connections per node (0-based), asked of node `via`: a connection's server
    /// port is the AMQP port of the node it reached.
    fn connections(&self, via: usize) -> Vec<usize> {
        let table = self.ctl(via, &["list_connections", "port"]);
        let mut per_node = vec![0; self.nodes.len()];
        for line in table.lines() {
            if let Ok(port) = line.trim().parse::<u16>() {
                if let Some(i) = port.checked_sub(self.base).map(usize::from) {
                    if i < per_node.len() {
                        per_node[i] += 1;
                    }
                }
            }
        }
        per_node
    }

    fn kill(&self, i: usize) {
        self.script("kill", &[&(i + 1).to_string()]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Not `script`: a failed stop must not panic while a failed test unwinds.
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .arg(self.base.to_string())
            .status();
    }
}

/// One posted event's answer.
struct Posted {
    id: String,
    /// 0: no answer (the request failed or timed out).
    status: u16,
    after_kill: bool,
}

/// A counter's value per label set, from the Prometheus text.
fn counter(metrics: &str, name: &str, labels: &str) -> u64 {
    let key = format!("{name}{{{labels}}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_queue_leader_loses_no_accepted_event() {
    let started = Instant::now();
    let cluster = Cluster::start();
    println!(
        "cluster of 3 up in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        cluster.url_list()
    );
    let prefix = unique_prefix();
    let urls = cluster.url_list();
    let prefetch = PREFETCH.to_string();
    let retry_prefetch = RETRY_PREFETCH.to_string();
    let mut k = Kivihook::start(
        "all",
        &prefix,
        &[
            ("KIVIHOOK_AMQP_URL", urls.as_str()),
            ("KIVIHOOK_PREFETCH", prefetch.as_str()),
            ("KIVIHOOK_RETRY_PREFETCH", retry_prefetch.as_str()),
            ("KIVIHOOK_RETRY_SCHEDULE", "0.2,0.5,1,1,1,1,1,1"),
            ("KIVIHOOK_SCHEDULER_INTERVAL", "0.05"),
            ("KIVIHOOK_RETRY_LEASE", "1"),
            ("KIVIHOOK_CIRCUIT_THRESHOLD", "0"),
        ],
    );
    let api = Api::new(&k);
    let receiver = Receiver::start().await;
    // Slow enough that deliveries are in flight when the node dies.
    receiver.delay(Duration::from_millis(5));
    api.create_webhook(json!({"name": "r", "url": receiver.url(), "events": ["*"]}))
        .await;

    let deliveries = format!("{prefix}.deliveries");
    let leader = cluster
        .leader(0, &deliveries)
        .expect("the deliveries queue has a leader");
    let before = cluster.connections(0);
    println!(
        "leader of {deliveries}: node {}; connections per node: {before:?}",
        leader + 1
    );
    // Killing a node the process is not connected to would prove only the broker's failover.
    assert!(
        before[leader] > 0,
        "kivihook should be connected to the leader's node {} (connections per node: {before:?})",
        leader + 1
    );

    // Post at a steady pace in the background; a refused event is not posted again, so the
    // counts below are of what the cluster did, not of a client's retries.
    let killed = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let posted: Arc<Mutex<Vec<Posted>>> = Arc::default();
    let producer = {
        let api = api.clone();
        let killed = killed.clone();
        let answered = answered.clone();
        let posted = posted.clone();
        tokio::spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(64));
            let mut tick = tokio::time::interval(PACE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..EVENTS {
                tick.tick().await;
                let slot = slots.clone().acquire_owned().await.unwrap();
                let (api, killed, answered, posted) = (
                    api.clone(),
                    killed.clone(),
                    answered.clone(),
                    posted.clone(),
                );
                tasks.spawn(async move {
                    let id = format!("evt_cluster_{i}");
                    let after_kill = killed.load(Ordering::SeqCst);
                    let status = api
                        .http
                        .post(format!("{}/v1/events", api.base))
                        .bearer_auth(INGEST)
                        .json(&event(&id, "appointment.booked", Some("3")))
                        .timeout(Duration::from_secs(20))
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    answered.fetch_add(1, Ordering::SeqCst);
                    posted.lock().unwrap().push(Posted {
                        id,
                        status,
                        after_kill,
                    });
                    drop(slot);
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    };

    wait_until(
        Duration::from_secs(60),
        "deliveries before the kill",
        || receiver.count() >= EVENTS / 4,
    )
    .await;
    let kill_at = Instant::now();
    killed.store(true, Ordering::SeqCst);
    cluster.kill(leader);
    let survivor = (leader + 1) % 3;
    println!(
        "killed node {} after {} answers",
        leader + 1,
        answered.load(Ordering::SeqCst)
    );

    producer.await.unwrap();
    let posted = std::mem::take(&mut *posted.lock().unwrap());
    assert_eq!(posted.len(), EVENTS);
    let accepted: Vec<&str> = posted
        .iter()
        .filter(|p| p.status == 202)
        .map(|p| p.id.as_str())
        .collect();
    let refused = posted.iter().filter(|p| p.status == 503).count();
    let unanswered = posted.iter().filter(|p| p.status == 0).count();
    let other: Vec<u16> = posted
        .iter()
        .map(|p| p.status)
        .filter(|s| ![0, 202, 503].contains(s))
        .collect();
    assert!(
        other.is_empty(),
        "answers other than 202 and 503: {other:?}"
    );
    let accepted_after = posted
        .iter()
        .filter(|p| p.after_kill && p.status == 202)
        .count();
    // The pipeline came back: most of what was posted after the kill was accepted.
    let posted_after = posted.iter().filter(|p| p.after_kill).count();
    assert!(
        accepted_after * 2 > posted_after,
        "only {accepted_after} of {posted_after} events posted after the kill were accepted; \
         the process warned:\n{}",
        warnings(&k)
    );

    let ids_of = |r: &Received| r.json()["id"].as_str().unwrap_or("").to_owned();
    let delivered_all = wait_for_all(&receiver, &accepted, Duration::from_secs(90)).await;
    let got: HashSet<String> = receiver.received().iter().map(ids_of).collect();
    let missing: Vec<&&str> = accepted.iter().filter(|id| !got.contains(**id)).collect();
    assert!(
        delivered_all,
        "{} of {} accepted events never delivered, e.g. {:?}; the process warned:\n{}",
        missing.len(),
        accepted.len(),
        &missing[..missing.len().min(5)],
        warnings(&k)
    );

    // The queue drained on the surviving nodes, under a new leader.
    let survivor_url = cluster.nodes[survivor].1.clone();
    eventually(
        Duration::from_secs(30),
        "the deliveries queue to empty",
        || {
            let (url, q) = (survivor_url.clone(), deliveries.clone());
            async move { queue_depth_at(&url, &q).await == 0 }
        },
    )
    .await;
    let new_leader = cluster.leader(survivor, &deliveries);
    assert!(
        new_leader.is_some_and(|l| l != leader),
        "a surviving node leads {deliveries} (leader: {new_leader:?})"
    );
    let after = cluster.connections(survivor);
    assert!(
        after.iter().sum::<usize>() > 0 && after[leader] == 0,
        "kivihook reconnected to the surviving nodes (connections per node: {after:?})"
    );
    assert!(k.alive(), "the process failed over without a restart");
    let metrics = api
        .http
        .get(k.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let name = "kivihook_amqp_reconnects_total";
    let consumer_reconnects = counter(&metrics, name, r#"role="dispatcher""#);
    let publisher_reconnects = counter(&metrics, name, r#"role="all""#);
    assert!(
        consumer_reconnects >= 1 && publisher_reconnects >= 1,
        "consumers and publisher both reconnected ({consumer_reconnects}, {publisher_reconnects})"
    );

    let mut per_event: HashMap<String, usize> = HashMap::new();
    for r in receiver.received().iter().filter(|r| r.status_sent_ok()) {
        *per_event.entry(ids_of(r)).or_default() += 1;
    }
    let duplicates: usize = per_event.values().map(|n| n - 1).sum();
    // The outage as the receiver saw it: the longest pause between two deliveries.
    let mut times: Vec<Instant> = receiver.received().iter().map(|r| r.at).collect();
    times.sort();
    let gap = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let last = times.last().copied().unwrap_or(kill_at);
    let accepted_set: HashSet<&str> = accepted.iter().copied().collect();
    let unconfirmed_delivered = per_event
        .keys()
        .filter(|id| !accepted_set.contains(id.as_str()))
        .count();
    println!(
        "{EVENTS} posted: {} accepted ({accepted_after} after the kill), {refused} answered 503, \
         {unanswered} unanswered; {} delivered, {duplicates} duplicates, {unconfirmed_delivered} \
         delivered though not accepted; reconnects: consumers {consumer_reconnects}, publisher \
         {publisher_reconnects}; new leader node {}; longest pause in deliveries {:.2} s; \
         {:.1} s from the kill to the last delivery, {:.1} s in all",
        accepted.len(),
        per_event.len(),
        new_leader.map_or(0, |l| l + 1),
        gap.as_secs_f64(),
        last.saturating_duration_since(kill_at).as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    // Only deliveries in flight on the lost node can be made twice: the rest were marked
    // delivered before their ack was lost.
    assert!(
        duplicates <= PREFETCH + RETRY_PREFETCH,
        "{duplicates} duplicates: more than the {} deliveries that can be in flight",
        PREFETCH + RETRY_PREFETCH
    );

    k.kill();
    cleanup(&prefix).await;
    drop(cluster);
}

/// The process's warnings and errors, each message once, for a failure's explanation.
fn warnings(k: &Kivihook) -> String {
    let logs = k.logs.lock().unwrap();
    let mut seen = HashSet::new();
    let mut out = String::new();
    for line in logs.iter() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if !matches!(v["level"].as_str(), Some("WARN" | "ERROR")) {
            continue;
        }
        if seen.insert(v["message"].to_string()) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Whether every accepted event reached the receiver within `limit`.
async fn wait_for_all(receiver: &Receiver, accepted: &[&str], limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        let got: HashSet<String> = receiver
            .received()
            .iter()
            .filter(|r| r.status_sent_ok())
            .map(|r| r.json()["id"].as_str().unwrap_or("").to_owned())
            .collect();
        if accepted.iter().all(|id| got.contains(*id)) {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
