//! Fault injection against a RabbitMQ node and a Redis server of this test's own, on other
//! ports, so that stopping them disturbs no other test. Each scenario streams events while
//! something breaks and then counts: every event answered 202 is delivered at least once,
//! duplicates stay within what was in flight, every process recovers by itself (none is
//! restarted unless the scenario kills it), and nothing is left in a queue or the schedule.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use serde_json::json;

const EVENTS: usize = 600;
const PREFETCH: usize = 32;
const RETRY_PREFETCH: usize = 16;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn wait_port(port: u16, up: bool, limit: Duration, what: &str) {
    let start = Instant::now();
    while port_open(port) != up {
        assert!(start.elapsed() < limit, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A RabbitMQ node and a Redis server (AOF on) that only this test uses.
struct Services {
    dir: PathBuf,
    node: String,
    amqp_port: u16,
    redis_port: u16,
}

impl Services {
    fn start() -> Self {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let dir = std::env::temp_dir().join(format!("kivihook-faults-{tag}"));
        std::fs::create_dir_all(dir.join("mnesia")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::create_dir_all(dir.join("redis")).unwrap();
        let amqp_port = free_port();
        let dist_port = free_port();
        let redis_port = free_port();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{amqp_port}\n"),
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        // The server scripts drop to the rabbitmq user when started as root.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        let node = format!("kivihook-faults-{tag}@localhost");
        let started = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_PORT", amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"))
            .status()
            .expect("rabbitmq-server");
        assert!(started.success(), "rabbitmq-server -detached");
        let s = Self {
            dir,
            node,
            amqp_port,
            redis_port,
        };
        s.start_redis();
        wait_port(
            amqp_port,
            true,
            Duration::from_secs(90),
            "the test's RabbitMQ node did not start",
        );
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &s.node, "-q", "await_startup"])
            .status();
        s
    }

    fn start_redis(&self) {
        let status = Command::new("redis-server")
            .args(["--daemonize", "yes", "--bind", "127.0.0.1", "--save", ""])
            .args(["--port", &self.redis_port.to_string()])
            .args(["--appendonly", "yes", "--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(self.dir.join("redis"))
            .status()
            .expect("redis-server");
        assert!(status.success());
        wait_port(
            self.redis_port,
            true,
            Duration::from_secs(20),
            "the test's Redis did not start",
        );
    }

    fn stop_redis(&self) {
        // SHUTDOWN flushes the append-only file: a restart, not a crash.
        let _ = Command::new("redis-cli")
            .args(["-p", &self.redis_port.to_string(), "shutdown"])
            .status();
        wait_port(
            self.redis_port,
            false,
            Duration::from_secs(20),
            "Redis did not stop",
        );
    }

    fn rabbitmqctl(&self, what: &str) {
        let status = Command::new("rabbitmqctl")
            .args(["-n", &self.node, what])
            .status()
            .expect("rabbitmqctl");
        assert!(status.success(), "rabbitmqctl {what}");
    }

    fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .status();
        let _ = Command::new("redis-cli")
            .args(["-p", &self.redis_port.to_string(), "shutdown", "nosave"])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One pipeline against the test's services.
struct Pipeline {
    prefix: String,
    env: Vec<(String, String)>,
    ingest: Kivihook,
    dispatcher: Kivihook,
    scheduler: Kivihook,
}

impl Pipeline {
    fn start(s: &Services, extra: &[(&str, &str)]) -> Self {
        let prefix = unique_prefix();
        let mut env: Vec<(String, String)> = vec![
            ("KIVIHOOK_AMQP_URL".into(), s.amqp_url()),
            ("KIVIHOOK_REDIS_URL".into(), s.redis_url()),
            ("KIVIHOOK_PREFETCH".into(), PREFETCH.to_string()),
            ("KIVIHOOK_RETRY_PREFETCH".into(), RETRY_PREFETCH.to_string()),
            (
                "KIVIHOOK_RETRY_SCHEDULE".into(),
                "0.2,0.5,1,1,1,1,1,1".into(),
            ),
            ("KIVIHOOK_SCHEDULER_INTERVAL".into(), "0.05".into()),
            ("KIVIHOOK_RETRY_LEASE".into(), "1".into()),
            ("KIVIHOOK_CIRCUIT_THRESHOLD".into(), "0".into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let ingest = Self::spawn("ingest", &prefix, &env);
        let dispatcher = Self::spawn("dispatcher", &prefix, &env);
        let scheduler = Self::spawn("scheduler", &prefix, &env);
        Self {
            prefix,
            env,
            ingest,
            dispatcher,
            scheduler,
        }
    }

    fn spawn(role: &str, prefix: &str, env: &[(String, String)]) -> Kivihook {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Kivihook::start(role, prefix, &pairs)
    }

    fn restart(&mut self, role: &str) {
        let k = Self::spawn(role, &self.prefix, &self.env);
        match role {
            "dispatcher" => self.dispatcher = k,
            "scheduler" => self.scheduler = k,
            _ => self.ingest = k,
        }
    }
}

/// Post `EVENTS` events in the background; a refused one (503 while something is down) is
/// posted again, as a client would. Returns the ids answered 202.
fn produce(api: Api, tag: &'static str) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        futures::stream::iter(0..EVENTS)
            .map(|i| {
                let api = api.clone();
                let accepted = accepted.clone();
                async move {
                    let id = format!("evt_{tag}_{i}");
                    let body = event(&id, "appointment.booked", Some("9"));
                    let deadline = Instant::now() + Duration::from_secs(90);
                    let mut answers = Vec::new();
                    loop {
                        let status = api
                            .http
                            .post(format!("{}/v1/events", api.base))
                            .bearer_auth(INGEST)
                            .json(&body)
                            .timeout(Duration::from_secs(15))
                            .send()
                            .await
                            .map(|r| r.status().as_u16())
                            .unwrap_or(0);
                        if answers.last() != Some(&status) {
                            answers.push(status);
                        }
                        match status {
                            202 => {
                                accepted.lock().unwrap().push(id);
                                return;
                            }
                            // Accepted by an earlier try whose answer was lost.
                            200 => {
                                accepted.lock().unwrap().push(id);
                                return;
                            }
                            _ if Instant::now() > deadline => {
                                panic!("{id} never accepted; answers in turn: {answers:?}")
                            }
                            _ => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                    }
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<()>>()
            .await;
        let ids = accepted.lock().unwrap().clone();
        ids
    })
}

/// Wait for every accepted event, then count duplicates and check nothing is left behind.
async fn settle(
    s: &Services,
    p: &Pipeline,
    receiver: &Receiver,
    accepted: &[String],
    what: &str,
) -> usize {
    assert_eq!(
        accepted.len(),
        EVENTS,
        "{what}: every event was eventually accepted"
    );
    wait_until(
        Duration::from_secs(120),
        "every accepted event delivered",
        || {
            let got: HashSet<String> = receiver
                .received()
                .iter()
                .filter(|r| r.status_sent_ok())
                .map(|r| r.json()["id"].as_str().unwrap().to_owned())
                .collect();
            accepted.iter().all(|id| got.contains(id))
        },
    )
    .await;
    let queues = [
        format!("{}.deliveries", p.prefix),
        format!("{}.retries", p.prefix),
    ];
    let keys = kivihook_core::keys::Keys::new(&p.prefix);
    let redis_client = redis::Client::open(s.redis_url()).unwrap();
    eventually(
        Duration::from_secs(30),
        "queues and schedule to empty",
        || {
            let queues = queues.clone();
            let keys = keys.clone();
            let redis_client = redis_client.clone();
            let url = s.amqp_url();
            async move {
                for q in &queues {
                    if queue_depth_at(&url, q).await != 0 {
                        return false;
                    }
                }
                let mut c = redis_client
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                let mut pipe = redis::pipe();
                for shard in 0..kivihook_core::keys::RETRY_SHARDS {
                    pipe.cmd("ZCARD")
                        .arg(keys.retry_schedule(shard))
                        .cmd("ZCARD")
                        .arg(keys.retry_leases(shard));
                }
                let counts: Vec<u64> = pipe.query_async(&mut c).await.unwrap();
                let (depth, leased) = (counts.iter().sum::<u64>(), 0);
                depth == 0 && leased == 0
            }
        },
    )
    .await;
    let mut per_message: HashMap<String, usize> = HashMap::new();
    for r in receiver.received().iter().filter(|r| r.status_sent_ok()) {
        *per_message
            .entry(r.header("webhook-id").to_owned())
            .or_default() += 1;
    }
    let duplicates = per_message.values().map(|n| n - 1).sum();
    println!(
        "{what}: {} events accepted and delivered, {duplicates} duplicate deliveries",
        accepted.len()
    );
    duplicates
}

/// A fresh pipeline with one webhook for every event, to a receiver of its own.
async fn pipeline_to_a_receiver(s: &Services) -> (Pipeline, Api, Receiver) {
    let p = Pipeline::start(s, &[]);
    let api = Api::new(&p.ingest);
    let receiver = Receiver::start().await;
    api.create_webhook(json!({"name": "r", "url": receiver.url(), "events": ["*"]}))
        .await;
    (p, api, receiver)
}

/// `KIVIHOOK_FAULTS=2,3` runs only those scenarios (when chasing one); all run by default.
fn scenario(n: u32) -> bool {
    std::env::var("KIVIHOOK_FAULTS")
        .map(|v| v.split(',').any(|s| s.trim() == n.to_string()))
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_accepted_is_lost_through_crashes_and_outages() {
    let s = Services::start();

    // 1. A dispatcher killed with SIGKILL three times mid-stream.
    if scenario(1) {
        let (mut p, api, receiver) = pipeline_to_a_receiver(&s).await;
        receiver.delay(Duration::from_millis(10));
        api.create_webhook(json!({"name": "r2", "url": receiver.url(), "events": ["*"]}))
            .await;
        let producer = produce(api.clone(), "kill");
        for kill in 1..=3 {
            wait_until(
                Duration::from_secs(60),
                "deliveries before the kill",
                || receiver.count() >= kill * EVENTS / 4,
            )
            .await;
            p.dispatcher.kill();
            p.restart("dispatcher");
        }
        let accepted = producer.await.unwrap();
        let dups = settle(&s, &p, &receiver, &accepted, "dispatcher killed 3 times").await;
        assert!(dups <= 3 * (PREFETCH + RETRY_PREFETCH), "{dups} duplicates");
        assert!(p.ingest.alive() && p.scheduler.alive());
    }

    // 2. RabbitMQ stopped and started mid-stream: every process reconnects by itself.
    if scenario(2) {
        let (mut p, api, receiver) = pipeline_to_a_receiver(&s).await;
        api.create_webhook(json!({"name": "r2", "url": receiver.url(), "events": ["*"]}))
            .await;
        let producer = produce(api.clone(), "amqp");
        wait_until(
            Duration::from_secs(60),
            "deliveries before the outage",
            || receiver.count() >= EVENTS / 4,
        )
        .await;
        s.rabbitmqctl("stop_app");
        tokio::time::sleep(Duration::from_secs(3)).await;
        s.rabbitmqctl("start_app");
        let accepted = producer.await.unwrap();
        let dups = settle(&s, &p, &receiver, &accepted, "RabbitMQ stopped and started").await;
        assert!(dups <= PREFETCH + RETRY_PREFETCH, "{dups} duplicates");
        assert!(
            p.ingest.alive() && p.dispatcher.alive() && p.scheduler.alive(),
            "no process restarted"
        );
        let ready = api.http.get(p.ingest.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
    }

    // 3. Redis restarted mid-stream, with retries in flight.
    if scenario(3) {
        let (mut p, api, receiver) = pipeline_to_a_receiver(&s).await;
        receiver.fail_first_attempts();
        api.create_webhook(json!({"name": "r2", "url": receiver.url(), "events": ["*"]}))
            .await;
        let producer = produce(api.clone(), "redis");
        wait_until(
            Duration::from_secs(60),
            "deliveries before the restart",
            || receiver.count() >= EVENTS / 3,
        )
        .await;
        s.stop_redis();
        tokio::time::sleep(Duration::from_secs(2)).await;
        s.start_redis();
        let accepted = producer.await.unwrap();
        let dups = settle(&s, &p, &receiver, &accepted, "Redis restarted").await;
        assert!(dups <= PREFETCH + RETRY_PREFETCH, "{dups} duplicates");
        assert!(
            p.ingest.alive() && p.dispatcher.alive() && p.scheduler.alive(),
            "no process restarted"
        );
    }

    // 4. A scheduler killed again and again while it claims and publishes retries.
    if scenario(4) {
        let (mut p, api, receiver) = pipeline_to_a_receiver(&s).await;
        receiver.fail_first_attempts();
        api.create_webhook(json!({"name": "r2", "url": receiver.url(), "events": ["*"]}))
            .await;
        let mut second = Pipeline::spawn("scheduler", &p.prefix, &p.env);
        let producer = produce(api.clone(), "sched");
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            p.scheduler.kill();
            p.restart("scheduler");
            second.kill();
            second = Pipeline::spawn("scheduler", &p.prefix, &p.env);
        }
        let accepted = producer.await.unwrap();
        let dups = settle(&s, &p, &receiver, &accepted, "schedulers killed mid-claim").await;
        // A scheduler killed after publishing but before forgetting its jobs republishes
        // them; the dispatcher's job check turns those into no-ops, not deliveries.
        assert!(dups <= PREFETCH + RETRY_PREFETCH, "{dups} duplicates");
        drop(second);
    }
}
