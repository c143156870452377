//! First attempts never depend on the scheduler: with ingest and a dispatcher at their
//! defaults and no scheduler at all, 20,000 events to one healthy webhook all arrive, none is
//! put off into the retry schedule (`kivihook_deferrals_total` stays 0), and two `kill -9` of
//! the dispatcher mid-stream lose nothing. Real RabbitMQ, Redis, receiver and processes.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const N: usize = 20_000;

/// Every `kivihook_deferrals_total` series of a process, with its value.
async fn deferrals(k: &Kivihook) -> Vec<(String, f64)> {
    let text = reqwest::get(k.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("kivihook_deferrals_total"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn delivered(r: &Receiver) -> HashSet<String> {
    r.received()
        .iter()
        .filter(|x| x.accepted)
        .map(|x| x.json()["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_events_arrive_without_a_scheduler_or_a_deferral_through_two_kills() {
    let prefix = unique_prefix();
    let ingest = Kivihook::start("ingest", &prefix, &[]);
    let mut dispatcher = Kivihook::start("dispatcher", &prefix, &[]);
    let api = Api::new(&ingest);
    let r = Receiver::start().await;
    api.create_webhook(json!({"name": "healthy", "url": r.url(), "events": ["*"]}))
        .await;

    let poster = {
        let api = api.clone();
        tokio::spawn(async move {
            let events: Vec<Value> = (0..N)
                .map(|i| event(&format!("evt_nd_{i}"), "appointment.booked", None))
                .collect();
            api.post_events(&events).await;
        })
    };

    let started = Instant::now();
    let mut deferred = Vec::new();
    for at in [N / 4, N * 3 / 5] {
        wait_until(
            Duration::from_secs(120),
            "deliveries to reach the kill point",
            || r.count() >= at,
        )
        .await;
        deferred.extend(deferrals(&dispatcher).await);
        dispatcher.kill();
        println!("dispatcher killed with SIGKILL at {} deliveries", r.count());
        dispatcher = Kivihook::start("dispatcher", &prefix, &[]);
    }
    poster.await.unwrap();
    let bound = Duration::from_secs(180);
    loop {
        let got = delivered(&r).len();
        if got == N {
            break;
        }
        assert!(
            started.elapsed() < bound,
            "{got} of {N} delivered after {:?}, and no scheduler runs: lost or put off",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    deferred.extend(deferrals(&dispatcher).await);
    println!(
        "all {N} delivered in {:?} ({} requests: redeliveries after the kills)",
        started.elapsed(),
        r.count()
    );
    assert!(
        deferred.iter().all(|(_, v)| *v == 0.0),
        "targets were put off into the retry schedule: {deferred:?}"
    );
    drop(dispatcher);
    drop(ingest);
    cleanup(&prefix).await;
}

/// After a quiet spell, a burst larger than a webhook's cap waits for turns (its requests
/// are coming back) instead of being put off as if the webhook were hung.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_after_a_quiet_spell_waits_for_turns_instead_of_being_put_off() {
    let prefix = unique_prefix();
    let ingest = Kivihook::start("ingest", &prefix, &[]);
    let dispatcher = Kivihook::start("dispatcher", &prefix, &[]);
    let api = Api::new(&ingest);
    let r = Receiver::start().await;
    r.delay(Duration::from_millis(300));
    api.create_webhook(json!({
        "name": "slowish", "url": r.url(), "events": ["*"], "max_concurrency": 2
    }))
    .await;
    assert_eq!(
        api.post_event(&event("evt_quiet_0", "patient.created", None))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(10), "the first delivery", || {
        r.count() == 1
    })
    .await;
    // Quiet for longer than a stalled webhook is given.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let burst: Vec<Value> = (1..=10)
        .map(|i| event(&format!("evt_quiet_{i}"), "patient.created", None))
        .collect();
    let res = api
        .http
        .post(format!("{}/v1/events/batch", api.base))
        .bearer_auth(INGEST)
        .json(&json!({ "events": burst }))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    // Two at a time, 300 ms each: about 1.5 s, with no scheduler to bring back a put-off one.
    wait_until(Duration::from_secs(15), "the burst delivered", || {
        delivered(&r).len() == 11
    })
    .await;
    let deferred = deferrals(&dispatcher).await;
    assert!(
        deferred.iter().all(|(_, v)| *v == 0.0),
        "the burst was put off: {deferred:?}"
    );
    drop(dispatcher);
    drop(ingest);
    cleanup(&prefix).await;
}
