//! The circuit breaker gets out of the way of a receiver that works and holds back one that
//! does not: a receiver that fails every first attempt and accepts every retry never trips it
//! (4,000 events, default settings), and a half-open circuit lets probes through at a
//! measured pace and closes on their success. Real RabbitMQ, Redis, receivers and processes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn accepted_ids(r: &Receiver) -> std::collections::HashSet<String> {
    r.received()
        .iter()
        .filter(|x| x.accepted)
        .map(|x| x.json()["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The bound this test holds the pipeline to: 4,000 events, each failing once and accepted on
/// its first retry (5 s later by the default schedule), all delivered within two minutes
/// (measured: about half a minute on 2 cores, debug build).
const BOUND: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_fails_every_first_attempt_gets_all_4000_events_at_the_defaults() {
    const N: usize = 4000;
    let prefix = unique_prefix();
    // Every setting at its default: threshold 10, cooldown 60 s, retry schedule 5 s, …
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let r = Receiver::start().await;
    r.fail_first_attempts();
    api.create_webhook(json!({"name": "first-fails", "url": r.url(), "events": ["*"]}))
        .await;
    let events: Vec<Value> = (0..N)
        .map(|i| event(&format!("evt_ff_{i}"), "appointment.booked", None))
        .collect();
    let started = Instant::now();
    api.post_events(&events).await;
    let mut last_report = Instant::now();
    loop {
        let got = accepted_ids(&r).len();
        if got == N {
            break;
        }
        assert!(
            started.elapsed() < BOUND,
            "{got} of {N} delivered after {:?} ({} requests)",
            started.elapsed(),
            r.count()
        );
        if last_report.elapsed() > Duration::from_secs(10) {
            println!("{got} of {N} after {:?}", started.elapsed());
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "all {N} delivered in {:?}: {} requests (each event failed once)",
        started.elapsed(),
        r.count()
    );
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_circuit_probes_at_a_measured_pace_and_closes_on_success() {
    let prefix = unique_prefix();
    let schedule = "0.2,".repeat(40);
    let k = Kivihook::start(
        "all",
        &prefix,
        &[
            ("KIVIHOOK_CIRCUIT_THRESHOLD", "3"),
            ("KIVIHOOK_CIRCUIT_COOLDOWN", "1"),
            ("KIVIHOOK_CIRCUIT_MIN_FAILING", "0"),
            ("KIVIHOOK_RETRY_SCHEDULE", schedule.trim_end_matches(',')),
            ("KIVIHOOK_SCHEDULER_INTERVAL", "0.05"),
        ],
    );
    let api = Api::new(&k);
    let r = Receiver::start().await;
    r.respond_with(500);
    api.create_webhook(json!({"name": "down", "url": r.url(), "events": ["*"]}))
        .await;
    let events: Vec<Value> = (0..40)
        .map(|i| event(&format!("evt_ho_{i}"), "patient.created", None))
        .collect();
    api.post_events(&events).await;
    wait_until(Duration::from_secs(10), "the first failures", || {
        r.count() >= 3
    })
    .await;
    // Open, then half-open again and again while the receiver stays down: 40 targets
    // waiting, yet only a few probes a second reach it (without the pace, every waiting
    // target would go at each cooldown's end).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = r.count();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = r.count() - before;
    println!("half-open probes while down: {during} requests in 5 s, 40 targets waiting");
    assert!(
        during <= 5 * 2 + 2,
        "{during} requests in 5 s: more than the half-open pace (2 a second)"
    );
    assert!(during >= 2, "half-open sent no probe at all ({during})");

    // Back up: a probe succeeds, the circuit closes, everything waiting is delivered.
    r.respond_with(200);
    eventually(Duration::from_secs(30), "all 40 delivered", || async {
        accepted_ids(&r).len() == 40
    })
    .await;
    drop(k);
    cleanup(&prefix).await;
}
