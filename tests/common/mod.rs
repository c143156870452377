//! Test harness: the real `kivihook` binary as a child process, real HTTP receivers, and
//! cleanup of each test's own RabbitMQ names and Redis keys.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

pub const ADMIN: &str = "test-admin-token-0123456789";
pub const INGEST: &str = "test-ingest-token-0123456789";
/// 32 bytes in base64, for sealing secrets at rest in tests.
pub const SECRET_KEY: &str = "dGVzdC1rZXktZm9yLXNlYWxpbmctc2VjcmV0cy0zMmI=";

/// A prefix of its own for every test, so tests share RabbitMQ and Redis safely.
pub fn unique_prefix() -> String {
    format!("kt-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A running `kivihook` process; killed when dropped.
pub struct Kivihook {
    pub child: Child,
    pub addr: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Kivihook {
    /// Start `kivihook <role>` with this prefix and extra environment, and wait until it
    /// listens.
    pub fn start(role: &str, prefix: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kivihook"));
        cmd.arg(role)
            .env("KIVIHOOK_BIND", "127.0.0.1:0")
            .env("KIVIHOOK_PREFIX", prefix)
            .env("KIVIHOOK_ADMIN_TOKEN", ADMIN)
            .env("KIVIHOOK_INGEST_TOKEN", INGEST)
            .env("KIVIHOOK_LOG", "info")
            // The test receivers listen on loopback, which the outbound guard refuses
            // unless it is allowed.
            .env("KIVIHOOK_OUTBOUND_ALLOW", "127.0.0.0/8")
            .env("KIVIHOOK_SECRET_KEY", SECRET_KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn kivihook");
        let stdout = child.stdout.take().expect("stdout");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "listening" {
                        if let (Some(tx), Some(addr)) = (tx.take(), v["addr"].as_str()) {
                            let _ = tx.send(addr.parse::<SocketAddr>().expect("addr"));
                        }
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("kivihook {role} did not start listening"));
        Self { child, addr, logs }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGKILL: no graceful shutdown, no chance to ack anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Kivihook {
    /// Whether the process is still the one that was started (it never exited).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Kivihook {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An API client with the test tokens.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    pub fn new(k: &Kivihook) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("http://{}", k.addr),
        }
    }

    pub async fn create_webhook(&self, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/v1/webhooks", self.base))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .expect("create webhook");
        assert_eq!(r.status(), 201, "create webhook");
        r.json().await.expect("webhook json")
    }

    /// POST with the admin token and no body.
    pub async fn admin_post(&self, path: &str) -> reqwest::Response {
        self.http
            .post(format!("{}{}", self.base, path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("admin POST")
    }

    /// GET with the admin token, whatever the status.
    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{}", self.base, path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("admin GET")
    }

    /// Post `events` to `/v1/events/batch`, 500 a request; every answer must be a success.
    pub async fn post_events(&self, events: &[Value]) {
        for chunk in events.chunks(500) {
            let r = self.post_batch(&json!({ "events": chunk })).await;
            assert!(r.status().is_success(), "a batch answered {}", r.status());
        }
    }

    /// `POST /v1/events/batch` with `body` as it is, whatever it answers.
    pub async fn post_batch(&self, body: &Value) -> reqwest::Response {
        self.post_ingest("/v1/events/batch", body).await
    }

    pub async fn post_event(&self, body: &Value) -> reqwest::Response {
        self.post_ingest("/v1/events", body).await
    }

    /// `body` posted to `path` with the ingest token, whatever it answers.
    async fn post_ingest(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(INGEST)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    /// The receiver answered 2xx.
    pub accepted: bool,
    pub method: String,
    pub uri: String,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
}

impl Received {
    /// Whether the receiver accepted this request (answered 2xx).
    pub fn status_sent_ok(&self) -> bool {
        self.accepted
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// A scripted answer: status and extra headers.
pub type Reply = (u16, Vec<(&'static str, String)>);

#[derive(Clone)]
struct ReceiverState {
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    script: Arc<Mutex<std::collections::VecDeque<Reply>>>,
    /// Answer 500 to the first request of every `webhook-id`.
    fail_first: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<Mutex<std::collections::HashSet<String>>>,
    /// The body of every request as it arrived, answered or not (a delayed request whose
    /// client gave up is in here, and never in `got`).
    arrived: Arc<Mutex<Vec<Bytes>>>,
}

/// A real HTTP receiver on a port of its own that records every request.
pub struct Receiver {
    pub addr: SocketAddr,
    state: ReceiverState,
}

impl Receiver {
    pub async fn start() -> Self {
        let state = ReceiverState {
            got: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            script: Arc::default(),
            fail_first: Arc::default(),
            seen: Arc::default(),
            arrived: Arc::default(),
        };
        async fn record(
            State(s): State<ReceiverState>,
            method: axum::http::Method,
            uri: axum::http::Uri,
            headers: HeaderMap,
            body: Bytes,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            s.arrived.lock().unwrap().push(body.clone());
            let delay = s.delay_ms.load(Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let headers: HashMap<String, String> = headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            let mut reply = s.script.lock().unwrap().pop_front();
            if s.fail_first.load(Ordering::Relaxed) {
                let id = headers.get("webhook-id").cloned().unwrap_or_default();
                if s.seen.lock().unwrap().insert(id) {
                    reply = Some((500, Vec::new()));
                }
            }
            let (status, extra) =
                reply.unwrap_or_else(|| (s.status.load(Ordering::Relaxed), Vec::new()));
            s.got.lock().unwrap().push(Received {
                accepted: (200..300).contains(&status),
                at: Instant::now(),
                method: method.to_string(),
                uri: uri.to_string(),
                headers,
                body,
            });
            let mut response = StatusCode::from_u16(status).unwrap().into_response();
            for (k, v) in extra {
                response.headers_mut().insert(k, v.parse().unwrap());
            }
            response
        }
        let app = Router::new().fallback(record).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn respond_with(&self, status: u16) {
        self.state.status.store(status, Ordering::Relaxed);
    }

    /// Answer the next requests with these replies, then with the default status.
    pub fn script(&self, replies: Vec<Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Fail the first attempt of every message, then accept.
    pub fn fail_first_attempts(&self) {
        self.state.fail_first.store(true, Ordering::Relaxed);
    }

    pub fn delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.got.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.got.lock().unwrap().len()
    }

    /// Bodies of the requests that arrived, including those still waiting on `delay` and those
    /// whose client gave up.
    pub fn arrivals(&self) -> Vec<Bytes> {
        self.state.arrived.lock().unwrap().clone()
    }
}

/// GET a JSON document with the admin token.
pub async fn get_json(api: &Api, path: &str) -> Value {
    let r = api
        .http
        .get(format!("{}{}", api.base, path))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("get");
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().await.expect("json")
}

/// Poll an async condition until it holds, or fail after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `cond` holds, or fail after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Verify a Standard Webhooks signature independently of KiviHook's own signer.
pub fn verify_signature(secret: &str, r: &Received) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_"))
        .expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(r.header("webhook-id").as_bytes());
    mac.update(b".");
    mac.update(r.header("webhook-timestamp").as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    r.header("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

pub async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

/// An event's dedup entry (its claim or marker), from the bucket of the time slot it was
/// received in (this one, or the one either side when a test straddles a boundary).
pub async fn dedup_entry(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    event_id: &str,
) -> Option<String> {
    let keys = kivihook_core::keys::Keys::new(prefix);
    let slot = kivihook_core::keys::dedup_slot(chrono::Utc::now());
    for s in [slot, slot - 1, slot + 1] {
        let found: Option<String> = redis::cmd("HGET")
            .arg(keys.dedup_bucket(keys.dedup_tag(event_id), s))
            .arg(event_id)
            .query_async(redis)
            .await
            .unwrap();
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Messages waiting in a queue, from a passive declare.
pub async fn queue_depth(queue: &str) -> u32 {
    queue_depth_at("amqp://guest:guest@127.0.0.1:5672/%2f", queue).await
}

/// Messages waiting in a queue of the broker at `url`.
pub async fn queue_depth_at(url: &str, queue: &str) -> u32 {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            queue,
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("queue exists");
    let _ = conn.close(200, "done").await;
    q.message_count()
}

/// The sum of a process's samples of one metric: `series` is a name (every label set) or a
/// name with its labels as `/metrics` writes them; 0 when there is none.
pub async fn metric_sum(k: &Kivihook, series: &str) -> f64 {
    let text = reqwest::get(k.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Remove this test's queues, exchanges and keys.
pub async fn cleanup(prefix: &str) {
    let names = kivihook_core::amqp::Names::new(prefix);
    if let Ok(conn) = lapin::Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        lapin::ConnectionProperties::default(),
    )
    .await
    {
        if let Ok(ch) = conn.create_channel().await {
            for q in names.queues() {
                let _ = ch
                    .queue_delete(q, lapin::options::QueueDeleteOptions::default())
                    .await;
            }
            for x in names.exchanges() {
                let _ = ch
                    .exchange_delete(x, lapin::options::ExchangeDeleteOptions::default())
                    .await;
            }
        }
        let _ = conn.close(200, "cleanup").await;
    }
    let mut r = redis().await;
    for pattern in kivihook_core::keys::Keys::new(prefix).all_pattern() {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut r)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut r).await;
        }
    }
}

/// A sample event body.
pub fn event(id: &str, event_type: &str, clinic: Option<&str>) -> Value {
    let mut v = json!({
        "id": id,
        "type": event_type,
        "data": {"patient_name": "Ada", "appointment_id": id},
    });
    if let Some(c) = clinic {
        v["clinic_id"] = json!(c);
    }
    v
}
