//! Due retry jobs travel several of one webhook's to a message (`KIVIHOOK_JOBS_PER_MESSAGE`),
//! and every job in a message is still attempted once, recorded on its own, and never lost:
//! not when the dispatcher handling the message is killed in the middle of it, and not when
//! the scheduler publishing it is.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

use kivihook_core::store::{RedisStore, Store};

async fn schedule_empty(prefix: &str) -> bool {
    let store = RedisStore::connect("redis://127.0.0.1:6379", prefix)
        .await
        .unwrap();
    let s = store.schedule_status().await.unwrap();
    (s.depth, s.leased) == (0, 0)
}

/// Post `n` events named `evt_<tag>_<i>`, fifty to a batch request.
async fn post(api: &Api, tag: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("evt_{tag}_{i}")).collect();
    for chunk in ids.chunks(50) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|id| event(id, "appointment.booked", Some("3")))
            .collect();
        let r = api.post_batch(&json!({ "events": events })).await;
        assert_eq!(r.status(), 202, "batch accepted");
    }
    ids
}

/// Every request a receiver accepted (answered 2xx), by event id, as `webhook-id`s.
fn accepted(r: &Receiver) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for got in r.received().iter().filter(|g| g.status_sent_ok()) {
        out.entry(got.json()["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(got.header("webhook-id").to_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_webhooks_due_retries_share_messages_and_each_is_attempted_once() {
    let prefix = unique_prefix();
    let fast = [("KIVIHOOK_RETRY_SCHEDULE", "0.2")];
    let ingest = Kivihook::start("ingest", &prefix, &fast);
    let _dispatcher = Kivihook::start("dispatcher", &prefix, &fast);
    let api = Api::new(&ingest);
    let (a, b) = (Receiver::start().await, Receiver::start().await);
    for (name, r) in [("a", &a), ("b", &b)] {
        r.fail_first_attempts();
        api.create_webhook(json!({"name": name, "url": r.url(), "events": ["*"]}))
            .await;
    }
    const N: usize = 600;
    let ids = post(&api, "grp", N).await;
    // No scheduler yet: every first attempt fails, and its retry waits in the schedule.
    wait_until(Duration::from_secs(60), "every first attempt", || {
        a.count() == N && b.count() == N
    })
    .await;
    let scheduler = Kivihook::start("scheduler", &prefix, &fast);
    wait_until(Duration::from_secs(60), "every retry", || {
        a.count() == 2 * N && b.count() == 2 * N
    })
    .await;
    // Nothing more comes: no job ran twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in [&a, &b] {
        assert_eq!(
            r.count(),
            2 * N,
            "one first attempt and one retry per event"
        );
        let got = accepted(r);
        assert_eq!(got.len(), N, "every event accepted");
        let mut attempts: HashMap<String, Vec<String>> = HashMap::new();
        for g in r.received() {
            attempts
                .entry(g.json()["id"].as_str().unwrap().to_owned())
                .or_default()
                .push(g.header("webhook-id").to_owned());
        }
        for id in &ids {
            let ws = &attempts[id];
            assert_eq!(ws.len(), 2, "{id}: attempted twice");
            assert_eq!(ws[0], ws[1], "{id}: the retry keeps its webhook-id");
        }
    }
    let jobs = metric_sum(&scheduler, "kivihook_retry_jobs_published_total").await;
    let messages = metric_sum(&scheduler, "kivihook_retry_messages_published_total").await;
    println!("{jobs} retry jobs published in {messages} messages");
    assert_eq!(jobs, (2 * N) as f64);
    // Due together, one webhook's jobs go fifty to a message: at least 24 messages, and a
    // part-filled one per webhook for each claim that the scheduler's first rounds made.
    assert!(
        (24.0..=60.0).contains(&messages),
        "{messages} messages for {jobs} jobs"
    );
    eventually(Duration::from_secs(5), "the schedule to empty", || {
        schedule_empty(&prefix)
    })
    .await;
    assert_eq!(queue_depth(&format!("{prefix}.retries")).await, 0);
    cleanup(&prefix).await;
}

const EVENTS: usize = 1500;
const PREFETCH: usize = 40;
const RETRY_PREFETCH: usize = 10;
const JOBS_PER_MESSAGE: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_dispatchers_and_a_killed_scheduler_lose_no_retry_of_a_shared_message() {
    let prefix = unique_prefix();
    let (prefetch, retry_prefetch) = (PREFETCH.to_string(), RETRY_PREFETCH.to_string());
    let per_message = JOBS_PER_MESSAGE.to_string();
    let env = [
        ("KIVIHOOK_RETRY_SCHEDULE", "0.2"),
        ("KIVIHOOK_SCHEDULER_INTERVAL", "0.05"),
        ("KIVIHOOK_PREFETCH", prefetch.as_str()),
        ("KIVIHOOK_RETRY_PREFETCH", retry_prefetch.as_str()),
        ("KIVIHOOK_JOBS_PER_MESSAGE", per_message.as_str()),
    ];
    let ingest = Kivihook::start("ingest", &prefix, &env);
    let mut dispatcher = Kivihook::start("dispatcher", &prefix, &env);
    let mut scheduler = Kivihook::start("scheduler", &prefix, &env);
    let api = Api::new(&ingest);
    let receiver = Receiver::start().await;
    // Every event's first attempt fails, so every delivery that succeeds is a retry; slow
    // enough that many are in flight when a process dies.
    receiver.fail_first_attempts();
    receiver.delay(Duration::from_millis(20));
    let hook = api
        .create_webhook(json!({"name": "crm", "url": receiver.url(), "events": ["*"]}))
        .await;
    let secret = hook["secret"].as_str().unwrap().to_owned();
    let ids = post(&api, "kill", EVENTS).await;

    let delivered = |n: usize| {
        let r = &receiver;
        move || r.received().iter().filter(|g| g.status_sent_ok()).count() >= n
    };
    wait_until(Duration::from_secs(60), "retries delivered", delivered(300)).await;
    dispatcher.kill();
    dispatcher = Kivihook::start("dispatcher", &prefix, &env);
    wait_until(Duration::from_secs(60), "retries delivered", delivered(600)).await;
    scheduler.kill();
    scheduler = Kivihook::start("scheduler", &prefix, &env);
    wait_until(Duration::from_secs(60), "retries delivered", delivered(900)).await;
    dispatcher.kill();
    dispatcher = Kivihook::start("dispatcher", &prefix, &env);

    wait_until(
        Duration::from_secs(120),
        "every accepted event delivered",
        || accepted(&receiver).len() == EVENTS,
    )
    .await;
    eventually(Duration::from_secs(10), "the schedule to empty", || {
        schedule_empty(&prefix)
    })
    .await;
    eventually(Duration::from_secs(10), "the queues to empty", || async {
        queue_depth(&format!("{prefix}.retries")).await == 0
            && queue_depth(&format!("{prefix}.deliveries")).await == 0
    })
    .await;
    let got = accepted(&receiver);
    assert!(ids.iter().all(|id| got.contains_key(id)), "nothing lost");
    for r in receiver.received() {
        assert!(verify_signature(&secret, &r));
    }
    for (id, msg_ids) in &got {
        assert!(
            msg_ids.iter().all(|m| *m == msg_ids[0]),
            "{id}: webhook-id stable across redeliveries"
        );
    }
    let duplicates: usize = got.values().map(|v| v.len() - 1).sum();
    // Delivered but unrecorded when a dispatcher died: at most its unacknowledged messages,
    // first attempts (one event each here) and retry messages of JOBS_PER_MESSAGE jobs.
    let in_flight = PREFETCH + RETRY_PREFETCH * JOBS_PER_MESSAGE;
    println!(
        "{EVENTS} events, {} requests, {duplicates} duplicate deliveries after 2 dispatcher kills and 1 scheduler kill (at most {in_flight} in flight per kill)",
        receiver.count()
    );
    assert!(
        duplicates <= 2 * in_flight,
        "{duplicates} duplicates: more than 2 × {in_flight} that can be in flight"
    );
    drop((dispatcher, scheduler, ingest));
    cleanup(&prefix).await;
}

/// Messages of `queue` delivered to a consumer and not acked yet, from `rabbitmqctl`.
fn unacked(queue: &str) -> Option<u64> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "messages_unacknowledged"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut cols = l.split_whitespace();
        (cols.next() == Some(queue)).then(|| cols.next()?.parse().ok())?
    })
}

/// A job whose target's state does not point at it (yet) is read again for up to 30 s
/// before it counts as stale; the other jobs of its message go meanwhile, and the message
/// is acked once it is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_slow_to_find_its_target_holds_back_none_of_its_messages_others() {
    const N: usize = 20;
    let prefix = unique_prefix();
    let fast = [("KIVIHOOK_RETRY_SCHEDULE", "0.2")];
    let ingest = Kivihook::start("ingest", &prefix, &fast);
    let dispatcher = Kivihook::start("dispatcher", &prefix, &fast);
    let api = Api::new(&ingest);
    let receiver = Receiver::start().await;
    receiver.fail_first_attempts();
    let hook = api
        .create_webhook(json!({"name": "crm", "url": receiver.url(), "events": ["*"]}))
        .await;
    let webhook_id = hook["id"].as_str().unwrap().to_owned();
    post(&api, "slow", N).await;
    // No scheduler yet: every first attempt fails, and its retry waits in the schedule.
    wait_until(Duration::from_secs(60), "every first attempt", || {
        receiver.count() == N
    })
    .await;
    // Beside them, due as they are, a retry of an event this webhook has no state for: read
    // again and again, it is skipped only after 30 s.
    let store = RedisStore::connect("redis://127.0.0.1:6379", &prefix)
        .await
        .unwrap();
    let now = chrono::Utc::now();
    let orphan = kivihook_core::delivery::Job {
        id: format!("job_orphan_{}", uuid::Uuid::new_v4().simple()),
        kind: kivihook_core::delivery::JobKind::Retry,
        event_id: "evt_orphan".into(),
        event_type: "appointment.booked".into(),
        webhook_id,
        message_id: "msg_orphan".into(),
        attempt: 2,
        body: event("evt_orphan", "appointment.booked", Some("3")).to_string(),
        created_at: now,
        replay_of: None,
        rate_reserved: false,
    };
    store.schedule_job(&orphan, now).await.unwrap();

    let scheduler = Kivihook::start("scheduler", &prefix, &fast);
    let started = std::time::Instant::now();
    wait_until(Duration::from_secs(60), "every retry", || {
        receiver.count() == 2 * N
    })
    .await;
    let took = started.elapsed();
    let messages = metric_sum(&scheduler, "kivihook_retry_messages_published_total").await;
    let jobs = metric_sum(&scheduler, "kivihook_retry_jobs_published_total").await;
    println!("{jobs} jobs in {messages} messages; the {N} retries arrived in {took:?}");
    assert_eq!(
        jobs,
        (N + 1) as f64,
        "the retries and the orphan were published"
    );
    assert_eq!(messages, 1.0, "all in one message, the orphan with them");
    assert!(
        took < Duration::from_secs(20),
        "the retries waited {took:?} for the orphan beside them (it waits 30 s)"
    );
    // The orphan is skipped after its wait, then the message is acked; it is never sent.
    eventually(
        Duration::from_secs(60),
        "the orphan to be skipped",
        || async { metric_sum(&dispatcher, "kivihook_stale_jobs_total").await == 1.0 },
    )
    .await;
    // Then the message is acked: neither waiting in the queue nor held by the dispatcher.
    let retries = format!("{prefix}.retries");
    eventually(
        Duration::from_secs(20),
        "the message to be acked",
        || async { queue_depth(&retries).await == 0 && unacked(&retries) == Some(0) },
    )
    .await;
    assert_eq!(
        metric_sum(&dispatcher, "kivihook_stale_jobs_total").await,
        1.0
    );
    assert_eq!(receiver.count(), 2 * N);
    assert!(receiver
        .received()
        .iter()
        .all(|g| g.json()["id"] != "evt_orphan"));
    drop((dispatcher, scheduler, ingest));
    cleanup(&prefix).await;
}
