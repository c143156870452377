//! Manual attempts cannot lose or cancel work: a dead letter moves to the retry schedule in
//! one step (an ingest killed halfway through a bulk replay leaves each dead letter either
//! still a dead letter or delivered), and a resend that fails leaves the automatic retry in
//! place. Real RabbitMQ, Redis, receivers and processes.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn dead_letter_events(api: &Api, webhook: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut offset = 0;
    loop {
        let page = get_json(
            api,
            &format!("/v1/dead-letters?webhook_id={webhook}&limit=500&offset={offset}"),
        )
        .await;
        let items = page["dead_letters"].as_array().unwrap().clone();
        if items.is_empty() {
            break;
        }
        offset += items.len();
        ids.extend(
            items
                .iter()
                .map(|d| d["event_id"].as_str().unwrap().to_owned()),
        );
    }
    ids
}

fn delivered_events(r: &Receiver) -> HashSet<String> {
    r.received()
        .iter()
        .filter(|x| x.accepted)
        .map(|x| x.json()["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_during_a_bulk_replay_of_2000_dead_letters_loses_none() {
    const N: usize = 2000;
    let prefix = unique_prefix();
    let fast = [("KIVIHOOK_SCHEDULER_INTERVAL", "0.05")];
    let front = Kivihook::start("ingest", &prefix, &[]);
    // No circuit breaker: the 2,000 failures that make the dead letters must not hold the
    // webhook back.
    let _dispatcher = Kivihook::start(
        "dispatcher",
        &prefix,
        &[("KIVIHOOK_CIRCUIT_THRESHOLD", "0")],
    );
    let _scheduler = Kivihook::start("scheduler", &prefix, &fast);
    let api = Api::new(&front);
    let r = Receiver::start().await;
    r.respond_with(500);
    let hook = api
        .create_webhook(json!({
            "name": "replayed", "url": r.url(), "events": ["*"], "retry_schedule": []
        }))
        .await;
    let wh = hook["id"].as_str().unwrap().to_owned();

    // 2,000 dead letters: every first attempt fails, and there are no retries.
    let events: Vec<Value> = (0..N)
        .map(|i| event(&format!("evt_rp_{i}"), "patient.created", None))
        .collect();
    api.post_events(&events).await;
    eventually(Duration::from_secs(120), "2,000 dead letters", || async {
        get_json(&api, &format!("/v1/dead-letters?webhook_id={wh}&limit=1")).await["total"]
            == N as u64
    })
    .await;
    r.respond_with(200);
    let failures = r.count();

    // The bulk replay goes to an ingest of its own, killed with SIGKILL partway through.
    let mut victim = Kivihook::start("ingest", &prefix, &[]);
    let replay_url = victim.url(&format!("/v1/webhooks/{wh}/dead-letters/replay"));
    let http = api.http.clone();
    let call = tokio::spawn(async move { http.post(replay_url).bearer_auth(ADMIN).send().await });
    let mut redis = redis().await;
    let index = kivihook_core::keys::Keys::new(&prefix).dead_letters_of(&wh);
    let started = std::time::Instant::now();
    loop {
        let left: usize = redis::cmd("ZCARD")
            .arg(&index)
            .query_async(&mut redis)
            .await
            .unwrap();
        if left <= N - 300 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the replay never got going ({left} dead letters left)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    victim.kill();
    let _ = call.await;

    // Settled: every event is either still a dead letter or delivered, none both.
    let settle = std::time::Instant::now();
    let (delivered, dead) = loop {
        let delivered = delivered_events(&r);
        let dead = dead_letter_events(&api, &wh).await;
        if delivered.len() + dead.len() == N || settle.elapsed() > Duration::from_secs(60) {
            break (delivered, dead);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "replay cut short by SIGKILL: {} delivered, {} still dead letters, of {N}",
        delivered.len(),
        dead.len()
    );
    assert!(delivered.len() >= 300, "{} delivered", delivered.len());
    assert!(!dead.is_empty(), "the kill came after the replay had ended");
    assert!(
        delivered.is_disjoint(&dead),
        "an event both delivered and dead"
    );
    for i in 0..N {
        let id = format!("evt_rp_{i}");
        assert!(
            delivered.contains(&id) || dead.contains(&id),
            "{id} is neither a dead letter nor delivered: lost"
        );
    }

    // Replayed again to the end, every event arrives, and none twice.
    let answer = api
        .admin_post(&format!("/v1/webhooks/{wh}/dead-letters/replay"))
        .await;
    assert_eq!(answer.status(), 202);
    let answer: Value = answer.json().await.unwrap();
    assert!(
        answer["replay_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("rpl_")),
        "{answer}"
    );
    eventually(Duration::from_secs(60), "all 2,000 delivered", || async {
        delivered_events(&r).len() == N
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = r.received().iter().filter(|x| x.accepted).count();
    assert_eq!(
        accepted,
        N,
        "{} requests after {failures} failures",
        r.count()
    );
    assert_eq!(
        get_json(&api, &format!("/v1/dead-letters?webhook_id={wh}&limit=1")).await["total"],
        0
    );
    let run = get_json(
        &api,
        &format!("/v1/replays/{}", answer["replay_id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(run["webhook_id"], wh.as_str());
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_resend_leaves_the_scheduled_retry_in_place_and_it_is_delivered() {
    let prefix = unique_prefix();
    let k = Kivihook::start(
        "all",
        &prefix,
        &[
            // Long enough that the resend surely comes first, even on a busy machine.
            ("KIVIHOOK_RETRY_SCHEDULE", "8"),
            ("KIVIHOOK_SCHEDULER_INTERVAL", "0.05"),
        ],
    );
    let api = Api::new(&k);
    let r = Receiver::start().await;
    // The first attempt and the resend fail; the automatic retry succeeds.
    r.script(vec![(500, vec![]), (500, vec![])]);
    let hook = api
        .create_webhook(json!({"name": "resent", "url": r.url(), "events": ["*"]}))
        .await;
    let wh = hook["id"].as_str().unwrap().to_owned();
    assert_eq!(
        api.post_event(&event("evt_resend", "patient.created", None))
            .await
            .status(),
        202
    );
    wait_until(Duration::from_secs(10), "the first attempt", || {
        r.count() == 1
    })
    .await;
    // The request arrived; its outcome is recorded a moment later.
    eventually(
        Duration::from_secs(5),
        "the first attempt's retry scheduled",
        || async {
            get_json(&api, "/v1/events/evt_resend").await["webhooks"][0]["status"] == "retrying"
        },
    )
    .await;

    let log = get_json(&api, &format!("/v1/webhooks/{wh}/attempts?limit=1")).await;
    let attempt_id = log["attempts"][0]["id"].as_str().unwrap().to_owned();
    let resend = api
        .admin_post(&format!("/v1/attempts/{attempt_id}/resend"))
        .await;
    assert_eq!(resend.status(), 202);
    wait_until(Duration::from_secs(10), "the resend", || r.count() == 2).await;
    assert!(!r.received()[1].accepted);
    // The failed resend is a dead letter of its own; the event still waits for its retry.
    eventually(
        Duration::from_secs(5),
        "the resend's dead letter",
        || async {
            get_json(&api, &format!("/v1/dead-letters?webhook_id={wh}")).await["total"] == 1
        },
    )
    .await;
    let status = get_json(&api, "/v1/events/evt_resend").await;
    assert_eq!(status["webhooks"][0]["status"], "retrying", "{status}");

    // The automatic retry, eight seconds after the first attempt, still comes and succeeds.
    wait_until(Duration::from_secs(20), "the automatic retry", || {
        r.count() == 3
    })
    .await;
    assert!(r.received()[2].accepted);
    assert_eq!(r.received()[2].json()["id"], "evt_resend");
    eventually(Duration::from_secs(5), "the event delivered", || async {
        get_json(&api, "/v1/events/evt_resend").await["webhooks"][0]["status"] == "delivered"
    })
    .await;
    drop(k);
    cleanup(&prefix).await;
}
