//! `kivihook-bench`: how fast KiviHook moves events on this machine, beside the ceiling
//! RabbitMQ itself sets here, measured in the same run.
//!
//! 1. The ceiling: persistent messages of the pipeline's size published with confirms and
//!    consumed with manual acks through a quorum queue, with the best of a few settings.
//! 2. The pipeline: ingest, dispatcher and scheduler as real processes of the `kivihook`
//!    binary, HTTP load into ingest, and an HTTP sink that only counts and timestamps.
//!    `registry10k` is `one` with 10,000 more webhooks registered that want none of the
//!    events sent; its throughput is reported beside `one`'s, as a ratio.
//!
//! Prints a table and writes JSON (`--json`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Benchmark KiviHook against this machine's RabbitMQ ceiling")]
struct Args {
    /// The `kivihook` binary to run (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/kivihook")]
    kivihook: PathBuf,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Scenarios to run, comma-separated: ceiling, one, registry10k, fanout10, hung10,
    /// flaky20, latency, memory (100,000 events to one webhook, for Redis bytes per event).
    #[arg(
        long,
        default_value = "ceiling,one,registry10k,fanout10,hung10,flaky20,latency,memory"
    )]
    scenarios: String,
    /// Webhooks registered in `registry10k` besides the one that receives (fewer for a
    /// quick try of the scenario).
    #[arg(long, default_value_t = 10_000)]
    registry_webhooks: usize,
    /// Events for the throughput scenarios (fan-out scenarios send a tenth).
    #[arg(long, default_value_t = 40_000)]
    events: usize,
    /// Events per HTTP request in the throughput scenarios (1 sends them one by one).
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Concurrent HTTP requests into ingest.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "bench-results.json")]
    json: PathBuf,
    /// Print each scenario's deliveries per 250 ms, from the first event sent: where a run
    /// slowed down, stalled or caught up.
    #[arg(long)]
    timeline: bool,
    /// Run the roles with `KIVIHOOK_PREFETCH=1024` and `KIVIHOOK_WEBHOOK_CONCURRENCY=256`
    /// instead of their defaults (every row is then marked tuned).
    #[arg(long)]
    tuned: bool,
}

const ADMIN: &str = "bench-admin-token-0123456789";
const INGEST: &str = "bench-ingest-token-0123456789";

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// A sample envelope of the size the pipeline moves.
fn sample_data(i: usize) -> Value {
    json!({
        "sent_us": now_us(),
        "appointment": {"id": i, "appointment_date": "2026-12-01", "appointment_start_time": "09:30",
                        "status": 1, "service_names": "Consultation"},
        "patient": {"patient_name": "Ada Lovelace", "patient_email": "ada@example.com",
                    "patient_contact_number": "+44 20 7946 0000"},
        "doctor": {"doctor_name": "Dr. Grace Hopper"},
        "clinic": {"clinic_name": "Central Clinic"}
    })
}

// ---------------------------------------------------------------------------------------
// The ceiling

async fn connect(url: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    Ok(Connection::connect(url, props).await?)
}

/// Publish `n` persistent messages with confirms (`window` in flight on each of `channels`)
/// while one consumer with `prefetch` acks them (one by one, or `ack_group` at a time with
/// `multiple`); messages per second through the broker.
async fn ceiling_trial(
    url: &str,
    n: usize,
    size: usize,
    channels: usize,
    window: usize,
    prefetch: u16,
    ack_group: u64,
) -> anyhow::Result<f64> {
    let queue = format!("bench-ceiling-{}", uuid::Uuid::new_v4().simple());
    let pub_conn = connect(url).await?;
    let sub_conn = connect(url).await?;
    let setup = pub_conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    setup
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    let sub = sub_conn.create_channel().await?;
    sub.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = sub
        .basic_consume(
            &queue,
            "ceiling",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumed = Arc::new(AtomicU64::new(0));
    let counter = consumed.clone();
    let consuming = tokio::spawn(async move {
        let total = (n / channels * channels) as u64;
        while let Some(Ok(d)) = consumer.next().await {
            let seen = counter.fetch_add(1, Ordering::Relaxed) + 1;
            let last = seen >= total;
            if ack_group <= 1 {
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            } else if seen % ack_group == 0 || last {
                let _ = d.acker.ack(BasicAckOptions { multiple: true }).await;
            }
            if last {
                break;
            }
        }
    });
    let payload = vec![b'x'; size];
    let started = Instant::now();
    let per_channel = n / channels;
    let mut publishers = Vec::new();
    for _ in 0..channels {
        let ch = pub_conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let payload = payload.clone();
        let queue = queue.clone();
        publishers.push(tokio::spawn(async move {
            futures::stream::iter(0..per_channel)
                .map(|_| {
                    let ch = ch.clone();
                    let payload = payload.clone();
                    let queue = queue.clone();
                    async move {
                        let confirm = ch
                            .basic_publish(
                                "",
                                &queue,
                                BasicPublishOptions::default(),
                                &payload,
                                BasicProperties::default().with_delivery_mode(2),
                            )
                            .await?;
                        confirm.await.map(|_| ())
                    }
                })
                .buffer_unordered(window)
                .try_collect::<Vec<()>>()
                .await
        }));
    }
    for p in publishers {
        p.await??;
    }
    let total = (per_channel * channels) as u64;
    while consumed.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    consuming.abort();
    let _ = setup
        .queue_delete(&queue, QueueDeleteOptions::default())
        .await;
    let _ = pub_conn.close(200, "done").await;
    let _ = sub_conn.close(200, "done").await;
    Ok(rate)
}

async fn ceiling(url: &str, size: usize) -> anyhow::Result<(f64, String)> {
    let mut best = (0.0, String::new());
    // Acks one by one and in groups (`multiple`): a quorum queue pays per ack frame, and
    // the dispatcher acknowledges in groups, so the ceiling may too.
    for (channels, window, prefetch, ack_group) in [
        (1, 256, 256, 1),
        (4, 256, 512, 1),
        (4, 1024, 1000, 1),
        (8, 512, 2000, 1),
        (4, 1024, 1000, 64),
        (8, 512, 2000, 64),
    ] {
        let rate = ceiling_trial(url, 40_000, size, channels, window, prefetch, ack_group).await?;
        let acks = if ack_group > 1 {
            format!("acks in groups of {ack_group}")
        } else {
            "acks one by one".to_owned()
        };
        let setting = format!(
            "{channels} channels × {window} confirms in flight, prefetch {prefetch}, {acks}"
        );
        println!("  ceiling trial: {rate:>8.0} msg/s  ({setting})");
        if rate > best.0 {
            best = (rate, setting);
        }
    }
    Ok(best)
}

// ---------------------------------------------------------------------------------------
// The sink

#[derive(Default)]
struct Sink {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Per route kind, delivered count.
    by_kind: Mutex<HashMap<String, u64>>,
    latencies_us: Mutex<Vec<u64>>,
    /// When each delivery arrived (µs since the epoch), kept only for `--timeline`.
    arrivals_us: Option<Mutex<Vec<u64>>>,
    first_attempts: Mutex<std::collections::HashSet<String>>,
    last_us: AtomicU64,
}

fn sent_us(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let at = text.find("\"sent_us\":")? + "\"sent_us\":".len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

async fn sink_handler(
    axum::extract::State(sink): axum::extract::State<Arc<Sink>>,
    axum::extract::Path(kind): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    match kind.as_str() {
        "hung" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return StatusCode::OK;
        }
        "flaky" => {
            // One event in five fails its first attempt.
            let id = headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let unlucky = id
                .bytes()
                .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32))
                % 5
                == 0;
            if unlucky && sink.first_attempts.lock().unwrap().insert(id) {
                sink.failed.fetch_add(1, Ordering::Relaxed);
                return StatusCode::SERVICE_UNAVAILABLE;
            }
        }
        _ => {}
    }
    let now = now_us();
    if let Some(sent) = sent_us(&body) {
        sink.latencies_us
            .lock()
            .unwrap()
            .push(now.saturating_sub(sent));
    }
    if let Some(arrivals) = &sink.arrivals_us {
        arrivals.lock().unwrap().push(now);
    }
    sink.ok.fetch_add(1, Ordering::Relaxed);
    sink.last_us.store(now, Ordering::Relaxed);
    *sink.by_kind.lock().unwrap().entry(kind).or_default() += 1;
    StatusCode::NO_CONTENT
}

/// The sink; `timeline` keeps each delivery's arrival for `--timeline`.
async fn start_sink(timeline: bool) -> anyhow::Result<(Arc<Sink>, std::net::SocketAddr)> {
    let sink = Arc::new(Sink {
        arrivals_us: timeline.then(Mutex::default),
        ..Sink::default()
    });
    let app = axum::Router::new()
        .route("/{kind}", axum::routing::post(sink_handler))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((sink, addr))
}

/// Deliveries per 250 ms from `start_us`, ten slots a line.
fn print_timeline(name: &str, start_us: u64, arrivals_us: &[u64]) {
    const SLOT_US: u64 = 250_000;
    let mut slots: Vec<u64> = Vec::new();
    for at in arrivals_us {
        let i = (at.saturating_sub(start_us) / SLOT_US) as usize;
        if slots.len() <= i {
            slots.resize(i + 1, 0);
        }
        slots[i] += 1;
    }
    println!("  {name}: deliveries per 250 ms");
    for (line, chunk) in slots.chunks(10).enumerate() {
        let counts: Vec<String> = chunk.iter().map(|n| format!("{n:>6}")).collect();
        println!("    {:>5.1}s {}", line as f64 * 2.5, counts.join(""));
    }
}

// ---------------------------------------------------------------------------------------
// The pipeline

struct Role {
    name: &'static str,
    child: Child,
    addr: String,
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line; here 11 and 12 (0-based).
    (ticks(11) + ticks(12)) / 100.0
}

fn start_role(
    args: &Args,
    name: &'static str,
    prefix: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<Role> {
    use std::io::BufRead;
    let mut cmd = Command::new(&args.kivihook);
    cmd.arg(name)
        .env("KIVIHOOK_AMQP_URL", &args.amqp_url)
        .env("KIVIHOOK_REDIS_URL", &args.redis_url)
        .env("KIVIHOOK_BIND", "127.0.0.1:0")
        .env("KIVIHOOK_PREFIX", prefix)
        .env("KIVIHOOK_ADMIN_TOKEN", ADMIN)
        .env("KIVIHOOK_INGEST_TOKEN", INGEST)
        .env("KIVIHOOK_LOG", "warn,kivihook=info")
        .env("KIVIHOOK_OUTBOUND_ALLOW", "127.0.0.0/8")
        .env(
            "KIVIHOOK_SECRET_KEY",
            "YmVuY2gta2V5LWZvci1zZWFsaW5nLXNlY3JldHMtMzI=",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if args.tuned {
        cmd.env("KIVIHOOK_PREFETCH", "1024")
            .env("KIVIHOOK_WEBHOOK_CONCURRENCY", "256");
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", args.kivihook.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        // The first warnings and errors of each role, so a run that goes wrong says why.
        let mut shown = 0;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let level = v["level"].as_str().unwrap_or_default();
                // Failed deliveries are what the flaky and hung scenarios are made of.
                let expected = v["message"] == "delivery failed";
                if (level == "WARN" || level == "ERROR") && !expected && shown < 20 {
                    shown += 1;
                    eprintln!("  role: {line}");
                }
                if v["message"] == "listening" {
                    if let (Some(tx), Some(a)) = (tx.take(), v["addr"].as_str()) {
                        let _ = tx.send(a.to_owned());
                    }
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .context("role did not start")?;
    Ok(Role { name, child, addr })
}

async fn cleanup(args: &Args, prefix: &str) {
    let names = kivihook_core::amqp::Names::new(prefix);
    if let Ok(conn) = connect(&args.amqp_url).await {
        if let Ok(ch) = conn.create_channel().await {
            for q in names.queues() {
                let _ = ch.queue_delete(q, QueueDeleteOptions::default()).await;
            }
            for x in names.exchanges() {
                let _ = ch
                    .exchange_delete(x, ExchangeDeleteOptions::default())
                    .await;
            }
        }
        let _ = conn.close(200, "done").await;
    }
    if let Ok(client) = redis::Client::open(args.redis_url.as_str()) {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            for pattern in kivihook_core::keys::Keys::new(prefix).all_pattern() {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(&pattern)
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                for chunk in keys.chunks(1000) {
                    let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query_async(&mut c).await;
                }
            }
        }
    }
}

/// Redis's `used_memory` (`INFO memory`): what the server really holds, every per-key
/// overhead included. The growth across a scenario, with nothing else writing, is what its
/// events cost.
async fn used_memory(args: &Args) -> Option<u64> {
    redis_info_field(args, "memory", "used_memory:")
        .await
        .map(|v| v as u64)
}

/// One numeric field of a section of Redis's `INFO`.
async fn redis_info_field(args: &Args, section: &str, field: &str) -> Option<f64> {
    let client = redis::Client::open(args.redis_url.as_str()).ok()?;
    let mut c = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut c)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().parse().ok())
}

/// Redis's own CPU seconds so far (`INFO cpu`: user and system time of the server), so a
/// scenario's share is the difference around it; `None` when Redis does not say.
async fn redis_cpu_seconds(args: &Args) -> Option<f64> {
    Some(
        redis_info_field(args, "cpu", "used_cpu_user:").await?
            + redis_info_field(args, "cpu", "used_cpu_sys:").await?,
    )
}

/// The RabbitMQ node on this machine (`beam.smp` running `rabbit`), when there is exactly
/// one: its CPU is read from `/proc` like the roles'. A remote broker, or several nodes,
/// leave it out rather than count the wrong one.
fn local_rabbitmq_pid() -> Option<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let beam = args
            .first()
            .is_some_and(|a| a.ends_with(b"beam.smp") || a.ends_with(b"beam"));
        if beam && args.iter().any(|a| *a == b"rabbit") {
            found.push(pid);
        }
    }
    match found[..] {
        [pid] => Some(pid),
        _ => None,
    }
}

/// Bytes of Redis the run holds (the sum of `MEMORY USAGE` over every key of its prefix)
/// and how many keys: after every event was delivered, this is what stays for the dedup
/// window. `MEMORY USAGE` counts a key, its value and its entry in the keyspace; Redis also
/// keeps an entry of about 24 bytes per key with a time to live, which it does not count.
async fn redis_bytes(args: &Args, prefix: &str) -> Option<(u64, usize)> {
    let client = redis::Client::open(args.redis_url.as_str()).ok()?;
    let mut c = client.get_multiplexed_async_connection().await.ok()?;
    let mut keys: Vec<String> = Vec::new();
    for pattern in kivihook_core::keys::Keys::new(prefix).all_pattern() {
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .ok()?;
            keys.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    let mut total = 0u64;
    for chunk in keys.chunks(1000) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("MEMORY").arg("USAGE").arg(k).arg("SAMPLES").arg(0);
        }
        let sizes: Vec<Option<u64>> = pipe.query_async(&mut c).await.ok()?;
        total += sizes.into_iter().flatten().sum::<u64>();
    }
    Some((total, keys.len()))
}

/// What one scenario measured.
#[derive(serde::Serialize, Default)]
struct Outcome {
    scenario: String,
    events: usize,
    deliveries: u64,
    seconds: f64,
    events_per_s: f64,
    deliveries_per_s: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    cpu_seconds: HashMap<String, f64>,
    ratio_to_ceiling: Option<f64>,
    /// `registry10k` only: its events/s over `one`'s in the same run.
    ratio_to_one: Option<f64>,
    /// `MEMORY USAGE` of every key of the run, over its events, once all were delivered.
    redis_bytes_per_event: Option<f64>,
    /// Growth of Redis's `used_memory` from before the first event to after the last
    /// delivery (and the next minute-counter flush), over the events: what Redis pays.
    redis_used_memory_per_event: Option<f64>,
    /// The roles ran with `--tuned` settings, not their defaults.
    tuned: bool,
    notes: String,
}

/// Send `events` events into ingest: `batch` per request, `concurrency` requests at once,
/// or paced at `rate` events/s one by one when given.
async fn load(
    http: &reqwest::Client,
    base: &str,
    events: usize,
    batch: usize,
    concurrency: usize,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    let types = [
        "appointment.booked",
        "kc_appointment_update",
        "patient.created",
        "bill.paid",
    ];
    let make = move |i: usize| json!({"id": format!("evt_{i}"), "type": types[i % types.len()], "clinic_id": (i % 50).to_string(), "data": sample_data(i)});
    if let Some(rate) = rate {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let start = tokio::time::Instant::now();
        let mut sends = futures::stream::FuturesUnordered::new();
        for i in 0..events {
            tokio::time::sleep_until(start + interval * i as u32).await;
            let req = http
                .post(format!("{base}/v1/events"))
                .bearer_auth(INGEST)
                .json(&make(i))
                .send();
            sends.push(req);
            while let Some(Some(r)) = futures::FutureExt::now_or_never(sends.next()) {
                check(r?).await?;
            }
        }
        while let Some(r) = sends.next().await {
            check(r?).await?;
        }
        return Ok(());
    }
    let requests: Vec<Vec<usize>> = (0..events)
        .collect::<Vec<_>>()
        .chunks(batch.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    futures::stream::iter(requests)
        .map(|ids| {
            let http = http.clone();
            let base = base.to_owned();
            async move {
                let r = if ids.len() == 1 {
                    http.post(format!("{base}/v1/events"))
                        .bearer_auth(INGEST)
                        .json(&make(ids[0]))
                        .send()
                        .await?
                } else {
                    let body: Vec<Value> = ids.iter().map(|i| make(*i)).collect();
                    http.post(format!("{base}/v1/events/batch"))
                        .bearer_auth(INGEST)
                        .json(&json!({"events": body}))
                        .send()
                        .await?
                };
                check(r).await
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn check(r: reqwest::Response) -> anyhow::Result<()> {
    let status = r.status();
    if !status.is_success() {
        bail!(
            "ingest answered {status}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

struct Spec {
    name: &'static str,
    events: usize,
    /// Sink routes of the webhooks (each "*"): `ok`, `hung`, `flaky`.
    hooks: Vec<&'static str>,
    rate: Option<f64>,
    /// Deliveries expected at the healthy routes.
    expect: usize,
    env: Vec<(&'static str, &'static str)>,
    /// Webhooks registered besides `hooks` that want none of the events sent (route `other`).
    bystanders: usize,
}

/// A webhook that wants none of the events the load sends: other types, or the types sent
/// but for clinics that send none (the load's clinics are 0 to 49).
fn bystander(i: usize, sink: std::net::SocketAddr) -> Value {
    let url = format!("http://{sink}/other");
    if i % 2 == 0 {
        let events = [
            json!(["doctor.created", "encounter.*"]),
            json!(["clinic.updated"]),
            json!(["receptionist.*", "custom.lab.ready"]),
        ];
        json!({"name": format!("bystander-{i}"), "url": url, "events": events[i / 2 % events.len()]})
    } else {
        json!({"name": format!("bystander-{i}"), "url": url,
               "events": ["appointment.booked", "patient.*", "bill.paid"],
               "clinic_ids": [format!("elsewhere-{i}")]})
    }
}

/// Register webhooks through the API, many requests in flight.
async fn register(
    http: &reqwest::Client,
    base: &str,
    definitions: Vec<Value>,
) -> anyhow::Result<()> {
    futures::stream::iter(definitions)
        .map(|d| {
            let http = http.clone();
            let base = base.to_owned();
            async move {
                let r = http
                    .post(format!("{base}/v1/webhooks"))
                    .bearer_auth(ADMIN)
                    .json(&d)
                    .send()
                    .await?;
                if r.status() != 201 {
                    bail!("creating a webhook: {}", r.status());
                }
                Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// One role's `/metrics` text (empty if it cannot be read).
async fn metrics_text(http: &reqwest::Client, role: &Role) -> String {
    match http
        .get(format!("http://{}/metrics", role.addr))
        .send()
        .await
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The sum of a counter's samples whose labels contain `label` (`""`: all of them).
fn counter_sum(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

async fn scenario(args: &Args, spec: Spec) -> anyhow::Result<Outcome> {
    let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (sink, sink_addr) = start_sink(args.timeline).await?;
    let roles = vec![
        start_role(args, "ingest", &prefix, &spec.env)?,
        start_role(args, "dispatcher", &prefix, &spec.env)?,
        start_role(args, "scheduler", &prefix, &spec.env)?,
    ];
    let base = format!("http://{}", roles[0].addr);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let setup = Instant::now();
    // Bystanders first, so that the receiving webhook is the newest: nothing in its favour.
    register(
        &http,
        &base,
        (0..spec.bystanders)
            .map(|i| bystander(i, sink_addr))
            .collect(),
    )
    .await?;
    let setup_bystanders = setup.elapsed();
    register(
        &http,
        &base,
        spec.hooks
            .iter()
            .enumerate()
            .map(|(i, route)| json!({"name": format!("{route}-{i}"), "url": format!("http://{sink_addr}/{route}"), "events": ["*"]}))
            .collect(),
    )
    .await?;
    // Let every role connect and the dispatcher start consuming (and, with bystanders,
    // follow the registry's change log past them).
    tokio::time::sleep(Duration::from_millis(if spec.bystanders > 0 {
        2000
    } else {
        500
    }))
    .await;
    let memory_before = used_memory(args).await;
    let cpu_before: Vec<f64> = roles.iter().map(|r| cpu_seconds(r.child.id())).collect();
    // What the services and this process (the load generator and the sink) spend too, so
    // every process's CPU per delivery is in the results.
    let rabbitmq = local_rabbitmq_pid();
    let rabbitmq_before = rabbitmq.map(cpu_seconds);
    let redis_before = redis_cpu_seconds(args).await;
    let bench_before = cpu_seconds(std::process::id());
    let started_us = now_us();
    let started = Instant::now();
    let batch = if spec.rate.is_some() { 1 } else { args.batch };
    load(
        &http,
        &base,
        spec.events,
        batch,
        args.concurrency,
        spec.rate,
    )
    .await?;
    let ingested = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    while (sink.ok.load(Ordering::Relaxed) as usize) < spec.expect {
        if Instant::now() > deadline {
            bail!(
                "{}: only {} of {} deliveries arrived",
                spec.name,
                sink.ok.load(Ordering::Relaxed),
                spec.expect
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = (sink
        .last_us
        .load(Ordering::Relaxed)
        .saturating_sub(started_us)) as f64
        / 1e6;
    let mut cpu: HashMap<String, f64> = roles
        .iter()
        .zip(cpu_before)
        .map(|(r, before)| (r.name.to_owned(), cpu_seconds(r.child.id()) - before))
        .collect();
    cpu.insert(
        "bench".to_owned(),
        cpu_seconds(std::process::id()) - bench_before,
    );
    if let (Some(pid), Some(before)) = (rabbitmq, rabbitmq_before) {
        cpu.insert("rabbitmq".to_owned(), cpu_seconds(pid) - before);
    }
    if let (Some(after), Some(before)) = (redis_cpu_seconds(args).await, redis_before) {
        cpu.insert("redis".to_owned(), after - before);
    }
    let dispatcher_metrics = metrics_text(&http, &roles[1]).await;
    let reloads = (
        counter_sum(
            &dispatcher_metrics,
            "kivihook_registry_reloads_total",
            "kind=\"full\"",
        ),
        counter_sum(
            &dispatcher_metrics,
            "kivihook_registry_reloads_total",
            "kind=\"incremental\"",
        ),
    );
    let deferrals = counter_sum(&dispatcher_metrics, "kivihook_deferrals_total", "");
    let stray = sink
        .by_kind
        .lock()
        .unwrap()
        .get("other")
        .copied()
        .unwrap_or(0);
    if let Some(arrivals) = &sink.arrivals_us {
        print_timeline(spec.name, started_us, &arrivals.lock().unwrap());
    }
    let mut lat = sink.latencies_us.lock().unwrap().clone();
    lat.sort_unstable();
    let deliveries = sink.ok.load(Ordering::Relaxed);
    let redis_bytes = redis_bytes(args, &prefix).await;
    // The minute counters are written once a second: let the last flush land.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let memory_after = used_memory(args).await;
    let out = Outcome {
        scenario: spec.name.to_owned(),
        events: spec.events,
        deliveries,
        seconds,
        events_per_s: spec.events as f64 / seconds,
        deliveries_per_s: deliveries as f64 / seconds,
        p50_ms: percentile(&lat, 0.50),
        p95_ms: percentile(&lat, 0.95),
        p99_ms: percentile(&lat, 0.99),
        cpu_seconds: cpu,
        ratio_to_ceiling: None,
        ratio_to_one: None,
        redis_bytes_per_event: redis_bytes.map(|(bytes, _)| bytes as f64 / spec.events as f64),
        redis_used_memory_per_event: memory_before
            .zip(memory_after)
            .map(|(b, a)| a.saturating_sub(b) as f64 / spec.events as f64),
        tuned: args.tuned,
        notes: format!(
            "ingest took {:.2}s; {} first attempts failed; {deferrals} targets put off by the dispatcher; {} Redis keys{}",
            ingested.as_secs_f64(),
            sink.failed.load(Ordering::Relaxed),
            redis_bytes.map_or(0, |(_, keys)| keys),
            if spec.bystanders > 0 {
                format!(
                    "; {} bystander webhooks registered in {:.1}s; {stray} deliveries reached a bystander; dispatcher registry reloads: {} full, {} incremental",
                    spec.bystanders,
                    setup_bystanders.as_secs_f64(),
                    reloads.0,
                    reloads.1
                )
            } else {
                String::new()
            }
        ),
    };
    if stray > 0 {
        bail!(
            "{}: {stray} deliveries reached webhooks that do not want the events",
            spec.name
        );
    }
    drop(roles);
    cleanup(args, &prefix).await;
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.kivihook.exists() {
        bail!(
            "{} not found: run `cargo build --release` first",
            args.kivihook.display()
        );
    }
    let wanted: Vec<&str> = args.scenarios.split(',').map(str::trim).collect();
    let size = serde_json::to_vec(&json!({"id": "evt_000000", "type": "appointment.booked", "clinic_id": "12",
        "occurred_at": "2026-11-27T09:00:00Z", "received_at": "2026-11-27T09:00:00.123456Z", "data": sample_data(0)}))?.len();
    let mut results: Vec<Outcome> = Vec::new();
    let mut ceiling_rate = None;
    if wanted.contains(&"ceiling") {
        println!("measuring the RabbitMQ ceiling ({size}-byte persistent messages, confirms, manual acks, quorum queue)");
        let (rate, setting) = ceiling(&args.amqp_url, size).await?;
        ceiling_rate = Some(rate);
        results.push(Outcome {
            scenario: "ceiling".into(),
            events: 40_000,
            events_per_s: rate,
            deliveries_per_s: rate,
            notes: format!("raw RabbitMQ, best setting: {setting}"),
            ..Default::default()
        });
    }
    let n = args.events;
    let specs = vec![
        Spec {
            name: "one",
            events: n,
            hooks: vec!["ok"],
            rate: None,
            expect: n,
            env: vec![],
            bystanders: 0,
        },
        Spec {
            name: "registry10k",
            events: n,
            hooks: vec!["ok"],
            rate: None,
            expect: n,
            env: vec![],
            bystanders: args.registry_webhooks,
        },
        Spec {
            name: "fanout10",
            events: n / 4,
            hooks: vec!["ok"; 10],
            rate: None,
            expect: n / 4 * 10,
            env: vec![],
            bystanders: 0,
        },
        Spec {
            name: "hung10",
            events: n / 4,
            hooks: [vec!["ok"; 9], vec!["hung"]].concat(),
            rate: None,
            expect: n / 4 * 9,
            env: vec![("KIVIHOOK_DELIVERY_TIMEOUT", "2")],
            bystanders: 0,
        },
        Spec {
            name: "flaky20",
            events: n / 2,
            hooks: vec!["flaky"],
            rate: None,
            expect: n / 2,
            env: vec![
                ("KIVIHOOK_RETRY_SCHEDULE", "0.5"),
                ("KIVIHOOK_SCHEDULER_INTERVAL", "0.05"),
            ],
            bystanders: 0,
        },
        Spec {
            name: "memory",
            events: 100_000,
            hooks: vec!["ok"],
            rate: None,
            expect: 100_000,
            env: vec![],
            bystanders: 0,
        },
        Spec {
            name: "latency",
            events: 10_000,
            hooks: vec!["ok"],
            rate: Some(1000.0),
            expect: 10_000,
            env: vec![],
            bystanders: 0,
        },
    ];
    for spec in specs {
        if !wanted.contains(&spec.name) {
            continue;
        }
        println!("running {} ...", spec.name);
        let mut out = scenario(&args, spec).await?;
        out.ratio_to_ceiling = ceiling_rate.map(|c| out.events_per_s / c);
        results.push(out);
    }
    let one_rate = results
        .iter()
        .find(|r| r.scenario == "one")
        .map(|r| r.events_per_s);
    if let (Some(one), Some(reg)) = (
        one_rate,
        results.iter_mut().find(|r| r.scenario == "registry10k"),
    ) {
        reg.ratio_to_one = Some(reg.events_per_s / one);
    }
    println!();
    println!("{:<12} {:>8} {:>10} {:>8} {:>10} {:>12} {:>8} {:>8} {:>8} {:>7}  cpu s (ingest/dispatcher/scheduler)",
        "scenario", "events", "deliveries", "seconds", "events/s", "deliveries/s", "p50 ms", "p95 ms", "p99 ms", "ratio");
    for r in &results {
        let cpu = |k: &str| r.cpu_seconds.get(k).copied().unwrap_or(0.0);
        println!("{:<12} {:>8} {:>10} {:>8.2} {:>10.0} {:>12.0} {:>8.1} {:>8.1} {:>8.1} {:>7}  {:.1}/{:.1}/{:.1}",
            r.scenario, r.events, r.deliveries, r.seconds, r.events_per_s, r.deliveries_per_s, r.p50_ms, r.p95_ms, r.p99_ms,
            r.ratio_to_ceiling.map(|x| format!("{x:.2}")).unwrap_or_default(), cpu("ingest"), cpu("dispatcher"), cpu("scheduler"));
    }
    println!();
    println!(
        "CPU µs per delivery, each process (from the start of the load to the last delivery):"
    );
    for r in results.iter().filter(|r| r.deliveries > 0) {
        let per = |k: &str| {
            r.cpu_seconds
                .get(k)
                .map(|s| format!("{:.1}", s * 1e6 / r.deliveries as f64))
                .unwrap_or_else(|| "—".to_owned())
        };
        println!(
            "  {:<12} ingest {}, dispatcher {}, scheduler {}, RabbitMQ {}, Redis {}, load generator and sink {}",
            r.scenario,
            per("ingest"),
            per("dispatcher"),
            per("scheduler"),
            per("rabbitmq"),
            per("redis"),
            per("bench")
        );
    }
    for r in &results {
        let bytes = r
            .redis_bytes_per_event
            .map(|b| format!("; {b:.0} bytes of MEMORY USAGE per event"))
            .unwrap_or_default();
        let used = r
            .redis_used_memory_per_event
            .map(|b| format!("; {b:.0} bytes of used_memory per event"))
            .unwrap_or_default();
        let bytes = format!("{bytes}{used}");
        println!("  {}: {}{bytes}", r.scenario, r.notes);
    }
    println!(
        "  roles: {}",
        if args.tuned {
            "tuned (KIVIHOOK_PREFETCH=1024, KIVIHOOK_WEBHOOK_CONCURRENCY=256)"
        } else {
            "at their defaults (no tuning variables)"
        }
    );
    if let Some(r) = results.iter().find(|r| r.scenario == "registry10k") {
        match r.ratio_to_one {
            Some(x) => {
                println!("  registry10k / one: {x:.2} of one webhook's events/s (target ≥ 0.90)")
            }
            None => println!("  registry10k / one: run `one` in the same run for the ratio"),
        }
    }
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&json!({"size_bytes": size, "results": results}))?,
    )?;
    println!("\nwrote {}", args.json.display());
    Ok(())
}
