//! Retries that would silently stop: a retry job whose body is in the schedule's job table
//! but that is neither scheduled nor leased is found and scheduled again, and the age of the
//! oldest due job is reported by dispatchers too, so that it shows (and alerts) when no
//! scheduler promotes. Real Redis, RabbitMQ, receivers and processes.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use serde_json::json;

use kivihook_core::delivery::Job;
use kivihook_core::keys::Keys;
use kivihook_core::store::{RedisStore, Store};

fn job(id: &str, event_id: &str, webhook_id: &str) -> Job {
    let mut job = Job::manual(
        event_id,
        "patient.created",
        webhook_id,
        &format!("msg_{event_id}"),
        2,
        json!({"id": event_id, "type": "patient.created", "data": {}}).to_string(),
    );
    job.id = id.to_owned();
    job
}

async fn metric(k: &Kivihook, name: &str) -> f64 {
    let text = reqwest::get(k.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not exposed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_neither_scheduled_nor_leased_is_found_and_delivered() {
    let prefix = unique_prefix();
    let k = Kivihook::start(
        "all",
        &prefix,
        &[
            ("KIVIHOOK_SCHEDULER_INTERVAL", "0.05"),
            ("KIVIHOOK_STRANDED_SCAN_INTERVAL", "0.5"),
        ],
    );
    let api = Api::new(&k);
    let r = Receiver::start().await;
    let hook = api
        .create_webhook(json!({"name": "stranded", "url": r.url(), "events": ["*"]}))
        .await;
    let wh = hook["id"].as_str().unwrap();
    // Its body is written, its place in the schedule is not (as a write cut short, or a
    // schedule that lost an entry, would leave it).
    let keys = Keys::new(&prefix);
    let j = job("job_stranded_1", "evt_stranded", wh);
    let mut redis = redis().await;
    let _: () = redis::cmd("HSET")
        .arg(keys.retry_jobs(keys.retry_shard(&j.id)))
        .arg(&j.id)
        .arg(serde_json::to_string(&j).unwrap())
        .query_async(&mut redis)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(15),
        "the stranded job's delivery",
        || r.count() == 1,
    )
    .await;
    assert_eq!(r.received()[0].json()["id"], "evt_stranded");
    assert!(metric(&k, "kivihook_retry_jobs_rescued_total").await >= 1.0);
    drop(k);
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_reports_due_jobs_that_no_scheduler_promotes() {
    let prefix = unique_prefix();
    let dispatcher = Kivihook::start("dispatcher", &prefix, &[]);
    let store = RedisStore::connect("redis://127.0.0.1:6379", &prefix)
        .await
        .unwrap();
    // One job due two minutes ago, and one whose scheduler lease ran out 90 s ago.
    let due = job("job_due_1", "evt_due_1", "wh_none");
    store
        .schedule_job(&due, Utc::now() - chrono::Duration::seconds(120))
        .await
        .unwrap();
    let keys = Keys::new(&prefix);
    let leased = job("job_due_2", "evt_due_2", "wh_none");
    let shard = keys.retry_shard(&leased.id);
    let mut redis = redis().await;
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(keys.retry_jobs(shard))
        .arg(&leased.id)
        .arg(serde_json::to_string(&leased).unwrap())
        .ignore()
        .cmd("ZADD")
        .arg(keys.retry_leases(shard))
        .arg((Utc::now() - chrono::Duration::seconds(90)).timestamp_millis())
        .arg(&leased.id)
        .ignore()
        .query_async(&mut redis)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(15),
        "the dispatcher to report the age",
        || async { metric(&dispatcher, "kivihook_retry_oldest_due_age_seconds").await >= 119.0 },
    )
    .await;
    // Once a scheduler runs, both are promoted (the expired lease swept back first), and
    // the age falls back.
    let scheduler = Kivihook::start(
        "scheduler",
        &prefix,
        &[("KIVIHOOK_SCHEDULER_INTERVAL", "0.05")],
    );
    eventually(Duration::from_secs(20), "the age to fall back", || async {
        metric(&dispatcher, "kivihook_retry_oldest_due_age_seconds").await < 5.0
            && metric(&scheduler, "kivihook_retry_oldest_due_age_seconds").await < 5.0
    })
    .await;
    drop(scheduler);
    drop(dispatcher);
    cleanup(&prefix).await;
}
