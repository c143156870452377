//! Retries, the scheduler, dead letters, attempt logs and endpoint health, against real
//! RabbitMQ, Redis and HTTP receivers.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
use serde_json::{json, Value};

use kivihook_core::delivery::{Job, JobKind};
use kivihook_core::store::{RedisStore, Store};

/// Fast schedules so that a test sees every attempt in seconds.
const FAST: &[(&str, &str)] = &[
    ("KIVIHOOK_RETRY_SCHEDULE", "0.2,0.2"),
    ("KIVIHOOK_SCHEDULER_INTERVAL", "0.05"),
];

fn env_with<'a>(
    base: &[(&'a str, &'a str)],
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    base.iter().chain(extra).copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_twice_gets_the_event_on_attempt_three_with_one_webhook_id() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, FAST);
    let api = Api::new(&k);
    let r = Receiver::start().await;
    r.script(vec![(500, vec![]), (502, vec![])]);
    let hook = api
        .create_webhook(json!({"name": "flaky", "url": r.url(), "events": ["*"]}))
        .await;
    let wh = hook["id"].as_str().unwrap();
    let secret = hook["secret"].as_str().unwrap();
    assert_eq!(
        api.post_event(&event("evt_flaky", "patient.created", None))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(20), "three attempts", || r.count() == 3).await;

    let got = r.received();
    assert!(got
        .iter()
        .all(|g| g.header("webhook-id") == got[0].header("webhook-id")));
    assert!(got.iter().all(|g| verify_signature(secret, g)));
    eventually(Duration::from_secs(10), "the attempt log", || async {
        get_json(&api, &format!("/v1/webhooks/{wh}/attempts")).await["total"] == 3
    })
    .await;
    let log = get_json(&api, &format!("/v1/webhooks/{wh}/attempts")).await;
    let attempts = log["attempts"].as_array().unwrap();
    // Newest first.
    let numbers: Vec<u64> = attempts
        .iter()
        .map(|a| a["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![3, 2, 1]);
    let statuses: Vec<u64> = attempts
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![200, 502, 500]);
    assert_eq!(attempts[0]["outcome"], "delivered");
    assert_eq!(attempts[1]["outcome"], "retry");
    assert_eq!(attempts[2]["error_kind"], "http_status");
    assert!(attempts
        .iter()
        .all(|a| a["message_id"] == got[0].header("webhook-id")));

    let status = get_json(&api, "/v1/events/evt_flaky").await;
    assert_eq!(status["webhooks"][0]["status"], "delivered");
    let stats = get_json(&api, "/v1/stats").await;
    let s = &stats["webhooks"][0];
    assert_eq!(
        (
            s["successes"].as_u64(),
            s["failures"].as_u64(),
            s["retries"].as_u64()
        ),
        (Some(1), Some(2), Some(2))
    );
    assert_eq!(s["consecutive_failures"], 0);
    assert_eq!(s["last_status"], 200);
    assert!((s["success_rate_24h"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_delivery_is_a_dead_letter_and_a_replay_delivers_it() {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, FAST);
    let api = Api::new(&k);
    let r = Receiver::start().await;
    r.respond_with(500);
    let hook = api
        .create_webhook(json!({"name": "down", "url": r.url(), "events": ["*"]}))
        .await;
    let wh = hook["id"].as_str().unwrap().to_owned();
    assert_eq!(
        api.post_event(&event("evt_dead", "bill.paid", Some("4")))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(20), "three attempts", || r.count() == 3).await;

    let path = format!("/v1/dead-letters?webhook_id={wh}");
    eventually(Duration::from_secs(10), "the dead letter", || async {
        get_json(&api, &path).await["total"] == 1
    })
    .await;
    let dls = get_json(&api, &path).await;
    let dl = &dls["dead_letters"][0];
    assert_eq!(dl["event_id"], "evt_dead");
    assert_eq!(dl["attempts"], 3);
    assert_eq!(dl["last_status"], 500);
    assert_eq!(
        get_json(&api, "/v1/events/evt_dead").await["webhooks"][0]["status"],
        "dead"
    );
    // No fourth attempt arrives on its own.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(r.count(), 3);

    r.respond_with(200);
    let replay = api
        .admin_post(&format!(
            "/v1/dead-letters/{}/replay",
            dl["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(replay.status(), 202);
    wait_until(Duration::from_secs(10), "the replayed delivery", || {
        r.count() == 4
    })
    .await;
    let last = r.received().pop().unwrap();
    assert_eq!(last.json()["id"], "evt_dead");
    assert_eq!(
        last.header("webhook-id"),
        r.received()[0].header("webhook-id")
    );
    eventually(
        Duration::from_secs(10),
        "the event to show delivered",
        || async {
            get_json(&api, "/v1/events/evt_dead").await["webhooks"][0]["status"] == "delivered"
        },
    )
    .await;
    assert_eq!(get_json(&api, &path).await["total"], 0);

    // Resend the delivered attempt: the same request once more.
    let log = get_json(&api, &format!("/v1/webhooks/{wh}/attempts?limit=1")).await;
    assert_eq!(log["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(log["next_offset"], 1);
    let attempt_id = log["attempts"][0]["id"].as_str().unwrap().to_owned();
    let resend = api
        .admin_post(&format!("/v1/attempts/{attempt_id}/resend"))
        .await;
    assert_eq!(resend.status(), 202);
    wait_until(Duration::from_secs(10), "the resent request", || {
        r.count() == 5
    })
    .await;
    assert_eq!(r.received()[4].body, r.received()[3].body);

    // A second replay of the same dead letter, and unknown ids, are 404s.
    for path in [
        format!("/v1/dead-letters/{}/replay", dl["id"].as_str().unwrap()),
        "/v1/attempts/att_nope_123/resend".to_owned(),
    ] {
        let r = api.admin_post(&path).await;
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = api.admin_get("/v1/dead-letters?limit=0").await;
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["field"], "limit");
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_webhook_and_retry_after_is_honoured() {
    let prefix = unique_prefix();
    let k = Kivihook::start(
        "all",
        &prefix,
        &env_with(FAST, &[("KIVIHOOK_RETRY_SCHEDULE", "0.1,0.1")]),
    );
    let api = Api::new(&k);

    let gone = Receiver::start().await;
    gone.respond_with(410);
    let hook = api
        .create_webhook(json!({"name": "gone", "url": gone.url(), "events": ["patient.*"]}))
        .await;
    let slow = Receiver::start().await;
    slow.script(vec![(429, vec![("retry-after", "2".into())])]);
    api.create_webhook(json!({"name": "busy", "url": slow.url(), "events": ["bill.*"]}))
        .await;

    assert_eq!(
        api.post_event(&event("evt_gone", "patient.created", None))
            .await
            .status(),
        202
    );
    assert_eq!(
        api.post_event(&event("evt_busy", "bill.created", None))
            .await
            .status(),
        202
    );

    let path = format!("/v1/webhooks/{}", hook["id"].as_str().unwrap());
    eventually(
        Duration::from_secs(10),
        "the webhook to be disabled",
        || async { get_json(&api, &path).await["enabled"] == false },
    )
    .await;
    let w = get_json(&api, &path).await;
    assert!(
        w["disabled_reason"].as_str().unwrap().contains("410"),
        "{w}"
    );
    assert_eq!(gone.count(), 1, "410 is not retried");
    // A disabled webhook receives nothing new.
    assert_eq!(
        api.post_event(&event("evt_gone_2", "patient.updated", None))
            .await
            .status(),
        202
    );

    wait_until(
        Duration::from_secs(10),
        "the attempt after Retry-After",
        || slow.count() == 2,
    )
    .await;
    let got = slow.received();
    let waited = got[1].at - got[0].at;
    assert!(
        waited >= Duration::from_secs(2),
        "the next attempt came after {waited:?}, before Retry-After"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gone.count(), 1);
    drop(k);
    cleanup(&prefix).await;
}

/// A job such as a dispatcher writes when an attempt fails.
fn job(i: usize, webhook_id: &str) -> Job {
    Job {
        id: format!("job_t{i}"),
        kind: JobKind::Retry,
        event_id: format!("evt_{i}"),
        event_type: "patient.created".into(),
        webhook_id: webhook_id.into(),
        message_id: format!("msg_{i}"),
        attempt: 2,
        body: json!({"id": format!("evt_{i}")}).to_string(),
        created_at: Utc::now(),
        replay_of: None,
        rate_reserved: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_publish_each_of_1000_due_jobs_exactly_once_one_webhooks_together() {
    let prefix = unique_prefix();
    let store = RedisStore::connect("redis://127.0.0.1:6379", &prefix)
        .await
        .unwrap();
    // The queues exist before the jobs are due.
    let schedulers: Vec<Kivihook> = (0..3)
        .map(|_| {
            Kivihook::start(
                "scheduler",
                &prefix,
                &[("KIVIHOOK_SCHEDULER_INTERVAL", "0.01")],
            )
        })
        .collect();
    let http = reqwest::Client::new();
    for s in &schedulers {
        assert_eq!(
            http.get(s.url("/readyz")).send().await.unwrap().status(),
            200
        );
    }
    // Due together, once all are written: a claim then takes many of one webhook at once.
    let due = Utc::now() + chrono::Duration::seconds(3);
    let webhooks = ["wh_x", "wh_y", "wh_z"];
    for i in 0..1000 {
        store
            .schedule_job(&job(i, webhooks[i % 3]), due)
            .await
            .unwrap();
    }
    let queue = format!("{prefix}.retries");
    let published = || async {
        let mut n = 0.0;
        for s in &schedulers {
            n += metric_sum(s, "kivihook_retry_jobs_published_total").await;
        }
        n
    };
    let started = Instant::now();
    while published().await < 1000.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "jobs published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give any duplicate publish time to land, then read everything back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = store.schedule_status().await.unwrap();
    assert_eq!(
        (status.depth, status.leased),
        (0, 0),
        "the schedule is empty"
    );
    let bodies = drain(&queue).await;
    let mut ids = Vec::new();
    for body in &bodies {
        let jobs = kivihook_core::broker::jobs::decode(body).unwrap();
        assert!(
            jobs.len() <= 50,
            "at most KIVIHOOK_JOBS_PER_MESSAGE (50) a message"
        );
        assert!(
            jobs.iter().all(|j| j.webhook_id == jobs[0].webhook_id),
            "one webhook's jobs to a message"
        );
        ids.extend(jobs.into_iter().map(|j| j.id));
    }
    assert_eq!(ids.len(), 1000, "every job published once");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        1000,
        "no job published twice"
    );
    // Several of one webhook's jobs share a message: 1000 jobs of 3 webhooks, due at once,
    // need at least 21 messages of 50; each scheduler's claim ends in a part-filled message
    // per webhook.
    assert!(
        (21..=60).contains(&bodies.len()),
        "{} messages for 1000 jobs",
        bodies.len()
    );
    drop(schedulers);
    cleanup(&prefix).await;
}

/// Take every message off a queue.
async fn drain(queue: &str) -> Vec<Vec<u8>> {
    let conn = lapin::Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue, lapin::options::BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(m.delivery.data);
    }
    let _ = conn.close(200, "done").await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_claimed_by_a_scheduler_that_died_is_delivered_after_its_lease_expires() {
    let prefix = unique_prefix();
    // Ingest and a dispatcher, but no scheduler yet: the failed attempt's job waits.
    let lease = [
        ("KIVIHOOK_RETRY_LEASE", "1"),
        ("KIVIHOOK_RETRY_SCHEDULE", "0.1"),
    ];
    let ingest = Kivihook::start("ingest", &prefix, &lease);
    let _dispatcher = Kivihook::start("dispatcher", &prefix, &lease);
    let api = Api::new(&ingest);
    let r = Receiver::start().await;
    r.script(vec![(503, vec![])]);
    api.create_webhook(json!({"name": "once", "url": r.url(), "events": ["*"]}))
        .await;
    assert_eq!(
        api.post_event(&event("evt_lease", "doctor.created", None))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(10), "the first attempt", || {
        r.count() == 1
    })
    .await;

    // A scheduler claims the job and dies before publishing: exactly the state its claim
    // leaves in Redis, made with the same claim script.
    let store = RedisStore::connect("redis://127.0.0.1:6379", &prefix)
        .await
        .unwrap();
    let mut claimed = Vec::new();
    for _ in 0..50 {
        claimed = store
            .claim_due_jobs(10, Duration::from_secs(1))
            .await
            .unwrap();
        if !claimed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(claimed.len(), 1, "the job was due and claimed");
    drop(store);
    assert_eq!(
        store_status(&prefix).await,
        (0, 1),
        "claimed: out of the schedule, leased"
    );

    // A live scheduler returns it when the lease runs out, and publishes it.
    let _scheduler = Kivihook::start("scheduler", &prefix, &lease);
    wait_until(Duration::from_secs(15), "the retried delivery", || {
        r.count() == 2
    })
    .await;
    assert_eq!(
        r.received()[1].header("webhook-id"),
        r.received()[0].header("webhook-id")
    );
    eventually(Duration::from_secs(5), "the schedule to empty", || async {
        store_status(&prefix).await == (0, 0)
    })
    .await;
    cleanup(&prefix).await;
}

async fn store_status(prefix: &str) -> (u64, u64) {
    let store = RedisStore::connect("redis://127.0.0.1:6379", prefix)
        .await
        .unwrap();
    let s = store.schedule_status().await.unwrap();
    (s.depth, s.leased)
}

/// Post `n` events and time until `receiver` has them all.
async fn time_to_deliver(api: &Api, receiver: &Receiver, tag: &str, n: usize) -> Duration {
    use futures::StreamExt;
    let started = Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let body = event(&format!("evt_{tag}_{i}"), "appointment.booked", Some("1"));
            async move { api.post_event(&body).await.status().as_u16() }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 202));
    wait_until(
        Duration::from_secs(120),
        "the healthy receiver's deliveries",
        || receiver.count() >= n,
    )
    .await;
    started.elapsed()
}

/// Two webhooks for every event: a healthy receiver, and one that never answers within any
/// timeout. The receivers, healthy first.
async fn healthy_beside_hung(api: &Api) -> (Receiver, Receiver) {
    let healthy = Receiver::start().await;
    let hung = Receiver::start().await;
    hung.delay(Duration::from_secs(60));
    api.create_webhook(json!({"name": "healthy", "url": healthy.url(), "events": ["*"]}))
        .await;
    api.create_webhook(json!({"name": "hung", "url": hung.url(), "events": ["*"]}))
        .await;
    (healthy, hung)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_endpoint_costs_only_its_own_budget() {
    let env = [("KIVIHOOK_DELIVERY_TIMEOUT", "3")];
    // Alone: the healthy endpoint's time for 1,000 events.
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &env);
    let api = Api::new(&k);
    let healthy = Receiver::start().await;
    api.create_webhook(json!({"name": "healthy", "url": healthy.url(), "events": ["*"]}))
        .await;
    let alone = time_to_deliver(&api, &healthy, "alone", 1000).await;
    drop(k);
    cleanup(&prefix).await;

    // Beside an endpoint that never answers within the timeout.
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &env);
    let api = Api::new(&k);
    let (healthy, _hung) = healthy_beside_hung(&api).await;
    let beside = time_to_deliver(&api, &healthy, "beside", 1000).await;
    println!("1,000 events to a healthy endpoint: {alone:?} alone, {beside:?} beside a hung one");
    assert!(
        beside <= alone * 2,
        "the healthy endpoint took {beside:?} beside a hung one, more than twice {alone:?}"
    );
    drop(k);
    cleanup(&prefix).await;
}

/// A hung endpoint whose requests time out frees its slots without an answer: the targets
/// behind them must not wait for those slots as if it were merely busy, or the events they
/// belong to hold the prefetch window and the healthy endpoint beside it starves. With a
/// window of 8, a cap of 2 and a 1 s timeout, waiting for each round of timeouts would let
/// through about 8 events a second (300 in over 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_of_a_hung_endpoint_do_not_hold_the_prefetch() {
    let env = [
        ("KIVIHOOK_DELIVERY_TIMEOUT", "1"),
        ("KIVIHOOK_PREFETCH", "8"),
        ("KIVIHOOK_WEBHOOK_CONCURRENCY", "2"),
        // No circuit breaker: it would put the hung endpoint's targets off by itself.
        ("KIVIHOOK_CIRCUIT_THRESHOLD", "0"),
    ];
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &env);
    let api = Api::new(&k);
    let (healthy, _hung) = healthy_beside_hung(&api).await;
    // Two rounds of timeouts first, so the window is tested after the hung endpoint's
    // slots have come free without an answer.
    let first: Vec<Value> = (0..4)
        .map(|i| event(&format!("evt_warm_{i}"), "appointment.booked", None))
        .collect();
    api.post_events(&first).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    const N: usize = 300;
    let events: Vec<Value> = (0..N)
        .map(|i| event(&format!("evt_beside_{i}"), "appointment.booked", None))
        .collect();
    let started = Instant::now();
    api.post_events(&events).await;
    wait_until(Duration::from_secs(60), "the healthy deliveries", || {
        healthy.count() >= N + first.len()
    })
    .await;
    let took = started.elapsed();
    println!("{N} events to a healthy endpoint beside a hung one: {took:?}");
    assert!(
        took < Duration::from_secs(15),
        "{took:?}: the hung endpoint's timed-out slots held the prefetch"
    );
    drop(k);
    cleanup(&prefix).await;
}

/// Once an endpoint is stalled (nothing came back for a second and its last request timed
/// out), a new event's message sends it nothing: its target is put off at once, so the
/// message is settled with its healthy targets instead of waiting out another timeout (and
/// holding every acknowledgement behind it). The retries that come back are what probe it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_endpoint_is_probed_by_retries_and_new_events_do_not_wait_on_it() {
    let env = [
        ("KIVIHOOK_DELIVERY_TIMEOUT", "1"),
        ("KIVIHOOK_WEBHOOK_CONCURRENCY", "2"),
        // The first events' own retries stay out of the way.
        ("KIVIHOOK_RETRY_SCHEDULE", "600"),
        // No circuit breaker: it would put the targets off by itself.
        ("KIVIHOOK_CIRCUIT_THRESHOLD", "0"),
    ];
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &env);
    let api = Api::new(&k);
    let (healthy, hung) = healthy_beside_hung(&api).await;
    // Two requests that time out after a second: the endpoint is then stalled.
    let first: Vec<Value> = (0..2)
        .map(|i| event(&format!("evt_onset_{i}"), "appointment.booked", None))
        .collect();
    api.post_events(&first).await;
    wait_until(Duration::from_secs(10), "the first requests", || {
        hung.arrivals().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ids: Vec<String> = (0..20).map(|i| format!("evt_after_{i}")).collect();
    let events: Vec<Value> = ids
        .iter()
        .map(|id| event(id, "appointment.booked", None))
        .collect();
    let sent = Instant::now();
    api.post_events(&events).await;
    wait_until(Duration::from_secs(10), "the healthy deliveries", || {
        healthy.count() >= first.len() + events.len()
    })
    .await;
    let healthy_took = sent.elapsed();
    let new_at_hung = |arrivals: &[axum::body::Bytes]| {
        arrivals
            .iter()
            .filter(|b| {
                let body = String::from_utf8_lossy(b);
                ids.iter().any(|id| body.contains(&format!("\"{id}\"")))
            })
            .count()
    };
    // A target put off now comes back no sooner than the stall has lasted (2.5 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let early = new_at_hung(&hung.arrivals());
    let stalled = metric_sum(&k, "kivihook_deferrals_total{reason=\"stalled\"}").await;
    println!(
        "{early} new events sent to the stalled endpoint in {:?}; {stalled} put off; healthy in {healthy_took:?}",
        sent.elapsed()
    );
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "too slow to tell a put-off target from a sent one: {:?}",
        sent.elapsed()
    );
    assert_eq!(early, 0, "new events were sent to the stalled endpoint");
    assert!(
        stalled >= 20.0,
        "each new event's target was put off: {stalled}"
    );
    // Their retries probe it.
    wait_until(
        Duration::from_secs(15),
        "a retry probing the stalled endpoint",
        || new_at_hung(&hung.arrivals()) >= 1,
    )
    .await;
    drop(k);
    cleanup(&prefix).await;
}

/// A backlog behind a hung endpoint is put off for as long as the endpoint has been stalled
/// (up to a minute), not a second at a time: over 12 s each of 19 waiting targets comes back
/// at most four times (deferred at about 1 s, 2–3 s, 4–7 s and 8–15 s of stall), where a
/// second at a time would be at least six (123 in all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_behind_a_hung_endpoint_comes_back_less_often_as_the_stall_goes_on() {
    let env = [
        ("KIVIHOOK_DELIVERY_TIMEOUT", "30"),
        ("KIVIHOOK_WEBHOOK_CONCURRENCY", "1"),
        // No circuit breaker: it would put the targets off by itself.
        ("KIVIHOOK_CIRCUIT_THRESHOLD", "0"),
    ];
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, &env);
    let api = Api::new(&k);
    let hung = Receiver::start().await;
    hung.delay(Duration::from_secs(60));
    api.create_webhook(json!({"name": "hung", "url": hung.url(), "events": ["*"]}))
        .await;
    let events: Vec<Value> = (0..20)
        .map(|i| event(&format!("evt_stalled_{i}"), "appointment.booked", None))
        .collect();
    api.post_events(&events).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let deferred = metric_sum(&k, "kivihook_deferrals_total{reason=\"concurrency\"}").await;
    println!("{deferred} deferrals of 19 targets in 12 s");
    assert!(
        deferred >= 19.0,
        "every waiting target was put off: {deferred}"
    );
    assert!(
        deferred <= 76.0,
        "{deferred} deferrals: the backlog came back more often than the stall allows"
    );
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_after_consecutive_failures_and_failing_too_long_disables() {
    let prefix = unique_prefix();
    let env = env_with(
        FAST,
        &[
            ("KIVIHOOK_RETRY_SCHEDULE", "0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1"),
            ("KIVIHOOK_CIRCUIT_THRESHOLD", "3"),
            ("KIVIHOOK_CIRCUIT_COOLDOWN", "2"),
            ("KIVIHOOK_CIRCUIT_MIN_FAILING", "0"),
            ("KIVIHOOK_AUTO_DISABLE_AFTER", "1.5"),
        ],
    );
    let k = Kivihook::start("all", &prefix, &env);
    let api = Api::new(&k);
    let r = Receiver::start().await;
    r.respond_with(500);
    let hook = api
        .create_webhook(json!({"name": "broken", "url": r.url(), "events": ["*"]}))
        .await;
    let path = format!("/v1/webhooks/{}", hook["id"].as_str().unwrap());
    let post = |i: usize| {
        let api = api.clone();
        async move {
            let e = event(&format!("evt_cb_{i}"), "encounter.created", None);
            assert_eq!(api.post_event(&e).await.status(), 202);
        }
    };
    // Three failures open the circuit...
    for i in 0..3 {
        post(i).await;
    }
    wait_until(Duration::from_secs(10), "the first failures", || {
        r.count() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... and for its cooldown nothing more is sent, only put off.
    let at_open = r.count();
    for i in 3..10 {
        post(i).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(r.count(), at_open, "no requests while the circuit is open");
    assert!(
        at_open < 10,
        "the circuit held back most of the 10 events ({at_open} sent)"
    );
    let metrics = api
        .http
        .get(k.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kivihook_deferrals_total{reason=\"circuit_open\"}"),
        "{metrics}"
    );

    // Failing for longer than 1.5 s without a success disables it, with the reason.
    eventually(
        Duration::from_secs(15),
        "the webhook to be disabled",
        || async { get_json(&api, &path).await["enabled"] == false },
    )
    .await;
    let w = get_json(&api, &path).await;
    assert!(
        w["disabled_reason"].as_str().unwrap().contains("failing"),
        "{w}"
    );
    let stats = get_json(&api, "/v1/stats").await;
    assert!(
        stats["webhooks"][0]["consecutive_failures"]
            .as_u64()
            .unwrap()
            >= 3
    );

    // Enabling it again resets its health.
    r.respond_with(200);
    let patched: Value = api
        .http
        .patch(k.url(&path))
        .bearer_auth(ADMIN)
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["enabled"], true);
    assert!(
        patched.get("disabled_reason").is_none_or(Value::is_null),
        "{patched}"
    );
    let stats = get_json(&api, "/v1/stats").await;
    assert_eq!(stats["webhooks"][0]["consecutive_failures"], 0);
    let before = r.count();
    assert_eq!(
        api.post_event(&event("evt_cb_after", "encounter.created", None))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(10), "a delivery after enabling", || {
        r.received()[before..]
            .iter()
            .any(|g| g.json()["id"] == "evt_cb_after")
    })
    .await;
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_shared_and_holds() {
    rate_limit_holds(5, 20, 2).await;
}

/// The case: 2 requests a second, 20 deliveries queued at once, one dispatcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_requests_a_second_with_twenty_queued() {
    rate_limit_holds(2, 20, 1).await;
}

/// `n` events to a webhook limited to `rate` requests a second, delivered by `dispatchers`
/// dispatchers: every one arrives, never faster than the limit (after a burst of `rate`),
/// and each attempt beyond the burst is put off once, to the slot the bucket reserved for
/// it, not again every second until a token is free.
async fn rate_limit_holds(rate: usize, n: usize, dispatchers: usize) {
    let prefix = unique_prefix();
    let k = Kivihook::start("all", &prefix, FAST);
    let others: Vec<Kivihook> = (1..dispatchers)
        .map(|_| Kivihook::start("dispatcher", &prefix, FAST))
        .collect();
    let api = Api::new(&k);
    let r = Receiver::start().await;
    api.create_webhook(
        json!({"name": "limited", "url": r.url(), "events": ["*"], "rate_limit": rate}),
    )
    .await;
    let events: Vec<Value> = (0..n)
        .map(|i| event(&format!("evt_rl_{i}"), "patient.updated", None))
        .collect();
    api.post_events(&events).await;
    let limit = Duration::from_secs((n / rate) as u64 + 20);
    wait_until(limit, "every limited delivery", || r.count() >= n).await;
    let got = r.received();
    let ids: HashSet<String> = got
        .iter()
        .map(|g| g.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), n);
    let rate_f = rate as f64;
    let first = got[0].at;
    for (i, g) in got.iter().enumerate() {
        let allowed = rate_f + rate_f * (g.at - first).as_secs_f64() + 1.0;
        assert!(
            (i + 1) as f64 <= allowed,
            "request {} came at {:?}",
            i + 1,
            g.at - first
        );
    }
    let least = Duration::from_secs_f64((n - rate) as f64 / rate_f - 1.0);
    assert!(got.last().unwrap().at - first >= least);
    let mut deferred = 0.0;
    for process in std::iter::once(&k).chain(&others) {
        let text = reqwest::get(process.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        deferred += text
            .lines()
            .find_map(|l| l.strip_prefix("kivihook_deferrals_total{reason=\"rate_limit\"} "))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap());
    }
    let beyond = (n - rate) as f64;
    assert!(
        deferred <= beyond,
        "{deferred} deferrals for {beyond} attempts beyond the burst: some were put off again"
    );
    assert!(deferred <= 2.0 * n as f64);
    drop(others);
    drop(k);
    cleanup(&prefix).await;
}
