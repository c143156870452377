//! Retries survive the upgrade: retry jobs, dead letters and their target states written in
//! the previous key layout (by hand here, as a dispatcher of the previous release wrote
//! them) are moved by a new scheduler, and a new dispatcher delivers every retry.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use serde_json::json;

use kivihook_core::delivery::{DeadLetter, Job, JobKind, TargetState};
use kivihook_core::keys::Keys;

/// A webhook for every event to `r`, written through the API by an ingest that is stopped
/// again (the registry's layout did not change between the releases); its id.
async fn webhook_in_registry(prefix: &str, name: &str, r: &Receiver) -> String {
    let k = Kivihook::start("ingest", prefix, &[]);
    let api = Api::new(&k);
    let h = api
        .create_webhook(json!({"name": name, "url": r.url(), "events": ["*"]}))
        .await;
    h["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_jobs_in_the_previous_layout_are_all_delivered_after_the_upgrade() {
    const N: usize = 50;
    let prefix = unique_prefix();
    let r = Receiver::start().await;
    // The webhook exists (written by this release's API; its layout did not change).
    let webhook_id = webhook_in_registry(&prefix, "upgraded", &r).await;

    // What the previous release left: jobs in one schedule, their bodies, and each target's
    // state (pointing at its job) under `<prefix>:targets:<event id>`; one dead letter too.
    let legacy = Keys::new(&prefix).legacy();
    let mut redis = redis().await;
    let due = Utc::now() - chrono::Duration::seconds(5);
    let mut pipe = redis::pipe();
    for i in 0..N {
        let event_id = format!("evt_up_{i}");
        let job = Job {
            id: format!("job_up_{i}"),
            kind: JobKind::Retry,
            event_id: event_id.clone(),
            event_type: "appointment.booked".into(),
            webhook_id: webhook_id.clone(),
            message_id: format!("msg_up_{i}"),
            attempt: 2,
            body: json!({"id": event_id, "type": "appointment.booked", "data": {}}).to_string(),
            created_at: due,
            replay_of: None,
            rate_reserved: false,
        };
        let state = TargetState::Retrying {
            attempt: 2,
            due,
            job_id: job.id.clone(),
        };
        pipe.cmd("ZADD")
            .arg(&legacy.retry_schedule)
            .arg(due.timestamp_millis())
            .arg(&job.id)
            .ignore()
            .cmd("HSET")
            .arg(&legacy.retry_jobs)
            .arg(&job.id)
            .arg(serde_json::to_string(&job).unwrap())
            .ignore()
            .cmd("HSET")
            .arg(format!("{prefix}:targets:{event_id}"))
            .arg(&webhook_id)
            .arg(state.encode())
            .ignore();
    }
    let dl = DeadLetter {
        id: "dl_up_1".into(),
        event_id: "evt_up_dead".into(),
        event_type: "appointment.booked".into(),
        webhook_id: webhook_id.clone(),
        message_id: "msg_up_dead".into(),
        failed_at: due,
        attempts: 8,
        last_status: Some(500),
        last_error: "500 Internal Server Error".into(),
        last_attempt_id: None,
        event: json!({"id": "evt_up_dead", "type": "appointment.booked", "data": {}}),
    };
    pipe.cmd("HSET")
        .arg(&legacy.dead_letters)
        .arg(&dl.id)
        .arg(serde_json::to_string(&dl).unwrap())
        .ignore()
        .cmd("HSET")
        .arg(format!("{prefix}:targets:evt_up_dead"))
        .arg(&webhook_id)
        .arg(
            TargetState::Dead {
                dead_letter_id: dl.id.clone(),
            }
            .encode(),
        )
        .ignore();
    let _: () = pipe.query_async(&mut redis).await.unwrap();

    // The new release: its scheduler moves them, its dispatcher runs every retry (a retry
    // whose target state did not move would be dropped as "moved on").
    let k = Kivihook::start("all", &prefix, &[("KIVIHOOK_SCHEDULER_INTERVAL", "0.05")]);
    let api = Api::new(&k);
    wait_until(Duration::from_secs(20), "every retry delivered", || {
        r.count() >= N
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got: Vec<String> = r
        .received()
        .iter()
        .map(|x| x.json()["id"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), N, "each retry once: {} requests", r.count());
    assert_eq!(r.count(), N);
    for i in [0, N - 1] {
        let status = get_json(&api, &format!("/v1/events/evt_up_{i}")).await;
        assert_eq!(status["webhooks"][0]["status"], "delivered", "{status}");
    }
    // The dead letter moved, its target state with it, and it can be replayed.
    let status = get_json(&api, "/v1/events/evt_up_dead").await;
    assert_eq!(status["webhooks"][0]["status"], "dead", "{status}");
    assert_eq!(
        status["webhooks"][0]["dead_letter_id"], "dl_up_1",
        "{status}"
    );
    let replay = api.admin_post("/v1/dead-letters/dl_up_1/replay").await;
    assert_eq!(replay.status(), 202);
    wait_until(Duration::from_secs(10), "the replayed dead letter", || {
        r.count() == N + 1
    })
    .await;
    drop(k);
    cleanup(&prefix).await;
}

/// Events accepted before the upgrade, whose markers are one key per event, stay
/// de-duplicated after it, and what they say still reads back; events accepted after it
/// go to the dedup buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_accepted_before_the_upgrade_stay_deduplicated() {
    use kivihook_core::store::{marker, EventInfo};
    let prefix = unique_prefix();
    let r = Receiver::start().await;
    let keys = Keys::new(&prefix);
    let webhook_id = webhook_in_registry(&prefix, "crm", &r).await;
    // That process found a new installation; the previous release wrote no layout key.
    let mut redis = redis().await;
    let new_install: String = redis::cmd("GET")
        .arg(keys.dedup_layout_since())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(new_install, "0");
    let _: () = redis::cmd("DEL")
        .arg(keys.dedup_layout_since())
        .query_async(&mut redis)
        .await
        .unwrap();

    // Markers the previous release left: one accepted and delivered, one still claimed by
    // a request in flight.
    let received = Utc::now() - chrono::Duration::minutes(10);
    let info = EventInfo {
        id: "evt_before_1".into(),
        event_type: "bill.paid".into(),
        clinic_id: Some("7".into()),
        received_at: received,
    };
    let delivered =
        marker::accepted(&info) + &marker::delivered_entry(&webhook_id, None, received).unwrap();
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(keys.legacy_dedup("evt_before_1"))
        .arg(&delivered)
        .arg("EX")
        .arg(3600)
        .ignore()
        .cmd("SET")
        .arg(keys.legacy_dedup("evt_before_2"))
        .arg("p!sometoken")
        .arg("EX")
        .arg(60)
        .ignore()
        .query_async(&mut redis)
        .await
        .unwrap();

    // The new release starts on an installation that has a registry: an upgrade.
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    let again = api
        .post_event(&event("evt_before_1", "bill.paid", Some("7")))
        .await;
    assert_eq!(again.status(), 200);
    assert_eq!(
        again.json::<serde_json::Value>().await.unwrap()["status"],
        "duplicate"
    );
    let in_flight = api
        .post_event(&event("evt_before_2", "bill.paid", Some("7")))
        .await;
    assert_eq!(
        in_flight.status(),
        409,
        "still being accepted by the old release"
    );
    // Neither left a claim in the new layout behind it.
    assert_eq!(dedup_entry(&mut redis, &prefix, "evt_before_1").await, None);
    assert_eq!(dedup_entry(&mut redis, &prefix, "evt_before_2").await, None);

    let status = get_json(&api, "/v1/events/evt_before_1").await;
    assert_eq!(status["type"], "bill.paid", "{status}");
    assert_eq!(status["clinic_id"], "7", "{status}");
    assert_eq!(status["webhooks"][0]["status"], "delivered", "{status}");

    // A new event: accepted once, delivered once, its marker in a bucket.
    let first = api
        .post_event(&event("evt_after_1", "bill.paid", Some("7")))
        .await;
    assert_eq!(first.status(), 202);
    wait_until(Duration::from_secs(10), "the new event", || r.count() == 1).await;
    let second = api
        .post_event(&event("evt_after_1", "bill.paid", Some("7")))
        .await;
    assert_eq!(second.status(), 200);
    eventually(Duration::from_secs(5), "the delivery folded", || {
        let prefix = prefix.clone();
        async move {
            let mut redis = common::redis().await;
            dedup_entry(&mut redis, &prefix, "evt_after_1")
                .await
                .is_some_and(|m| m.starts_with('a') && m.contains("|~"))
        }
    })
    .await;
    let status = get_json(&api, "/v1/events/evt_after_1").await;
    assert_eq!(status["webhooks"][0]["status"], "delivered", "{status}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.count(), 1, "the old events were not delivered again");
    drop(k);
    cleanup(&prefix).await;
}

/// Dead letters listed in the previous layout's single index (`{<prefix>:dlq}`, one slot
/// written by every dispatcher) are listed, replayable and counted after the upgrade, and
/// the new scheduler moves them into the index's shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_in_the_single_index_are_moved_into_its_shards() {
    const N: usize = 40;
    let prefix = unique_prefix();
    let r = Receiver::start().await;
    let webhook_id = webhook_in_registry(&prefix, "dlq", &r).await;
    let keys = Keys::new(&prefix);
    let legacy = keys.legacy();
    let failed = Utc::now() - chrono::Duration::minutes(5);
    let mut pipe = redis::pipe();
    for i in 0..N {
        let dl = DeadLetter {
            id: format!("dl_single_{i:02}"),
            event_id: format!("evt_single_{i}"),
            event_type: "bill.paid".into(),
            webhook_id: webhook_id.clone(),
            message_id: format!("msg_single_{i}"),
            failed_at: failed + chrono::Duration::seconds(i as i64),
            attempts: 8,
            last_status: Some(500),
            last_error: "500 Internal Server Error".into(),
            last_attempt_id: None,
            event: json!({"id": format!("evt_single_{i}"), "type": "bill.paid", "data": {}}),
        };
        let score = dl.failed_at.timestamp_millis();
        pipe.cmd("HSET")
            .arg(keys.dead_letters_of_entries(&webhook_id))
            .arg(&dl.id)
            .arg(serde_json::to_string(&dl).unwrap())
            .ignore()
            .cmd("ZADD")
            .arg(keys.dead_letters_of(&webhook_id))
            .arg(score)
            .arg(&dl.id)
            .ignore()
            .cmd("ZADD")
            .arg(&legacy.dead_letters_index)
            .arg(score)
            .arg(&dl.id)
            .ignore()
            .cmd("HSET")
            .arg(&legacy.dead_letter_owners)
            .arg(&dl.id)
            .arg(&webhook_id)
            .ignore();
    }
    let mut redis = redis().await;
    let _: () = pipe.query_async(&mut redis).await.unwrap();

    // Before any scheduler runs: an API of this release lists and finds them.
    {
        let k = Kivihook::start("ingest", &prefix, &[]);
        let api = Api::new(&k);
        let page = get_json(&api, "/v1/dead-letters?limit=5").await;
        assert_eq!(page["total"], N, "{page}");
        let ids: Vec<&str> = page["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            [
                "dl_single_39",
                "dl_single_38",
                "dl_single_37",
                "dl_single_36",
                "dl_single_35"
            ]
        );
        let replay = api.admin_post("/v1/dead-letters/dl_single_00/replay").await;
        assert_eq!(replay.status(), 202);
    }

    // The new scheduler moves the rest into the shards; nothing is left in the old keys.
    let k = Kivihook::start("all", &prefix, &[]);
    let api = Api::new(&k);
    eventually(Duration::from_secs(15), "the old index emptied", || {
        let legacy = legacy.clone();
        async move {
            let mut redis = common::redis().await;
            let (index, owners): (u64, u64) = redis::pipe()
                .cmd("EXISTS")
                .arg(&legacy.dead_letters_index)
                .cmd("EXISTS")
                .arg(&legacy.dead_letter_owners)
                .query_async(&mut redis)
                .await
                .unwrap();
            index + owners == 0
        }
    })
    .await;
    let mut in_shards = 0u64;
    let mut used = std::collections::HashSet::new();
    for shard in 0..kivihook_core::keys::DEAD_LETTER_SHARDS {
        let n: u64 = redis::cmd("ZCARD")
            .arg(keys.dead_letters_index(shard))
            .query_async(&mut redis)
            .await
            .unwrap();
        if n > 0 {
            used.insert(shard);
        }
        in_shards += n;
    }
    assert_eq!(in_shards, N as u64 - 1, "every one not replayed, once");
    assert!(used.len() > 4, "spread over {} shards", used.len());
    // Listing across the shards: newest first, pages that join up.
    let first = get_json(&api, "/v1/dead-letters?limit=20").await;
    let second = get_json(&api, "/v1/dead-letters?limit=20&offset=20").await;
    assert_eq!(first["total"], N - 1);
    let ids: Vec<String> = [&first, &second]
        .iter()
        .flat_map(|p| p["dead_letters"].as_array().unwrap().clone())
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (1..N).rev().map(|i| format!("dl_single_{i:02}")).collect();
    assert_eq!(ids, expected);
    let replay = api.admin_post("/v1/dead-letters/dl_single_17/replay").await;
    assert_eq!(replay.status(), 202);
    wait_until(Duration::from_secs(10), "both replays delivered", || {
        r.count() == 2
    })
    .await;
    drop(k);
    cleanup(&prefix).await;
}
