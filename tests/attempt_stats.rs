//! A webhook's statistics and attempt log after `record`s that mix successes and failures:
//! the successes of one webhook in a row are written in one call, and every attempt still
//! counts in order (a failure after successes leaves a streak of one; a success after it
//! ends the streak, even between two successes of one record), the log stays newest first, and each result gets its webhook's health.
//! Real Redis.

mod common;

use chrono::{Duration as Span, Utc};
use common::*;
use kivihook_core::delivery::{AttemptRecord, Health, Outcome, TargetResult};
use kivihook_core::store::{RedisStore, Store};

fn result(webhook: &str, n: u32, attempt: u32, ok: bool) -> TargetResult {
    let at = Utc::now() + Span::milliseconds(i64::from(n));
    TargetResult {
        event_id: format!("evt_stats_{n}"),
        webhook_id: webhook.to_owned(),
        // A failure that is neither retried nor dead-lettered here: only its attempt counts.
        outcome: if ok {
            Outcome::Delivered
        } else {
            Outcome::Untouched
        },
        attempt: Some(AttemptRecord {
            id: format!("att_{webhook}_{n}"),
            webhook_id: webhook.to_owned(),
            event_id: format!("evt_stats_{n}"),
            event_type: "bill.paid".into(),
            message_id: format!("msg_{n}"),
            attempt,
            at,
            method: "POST".into(),
            url: "https://example.test/hook".into(),
            request_body: format!("{{\"id\":\"evt_stats_{n}\"}}"),
            rendered_body: None,
            status: Some(if ok { 200 } else { 500 }),
            response_headers: Default::default(),
            response_body: String::new(),
            duration_ms: 3,
            error_kind: (!ok).then(|| "http_status".into()),
            error: (!ok).then(|| "500".into()),
            outcome: if ok { "delivered" } else { "retry" }.into(),
            warnings: Vec::new(),
            test: false,
        }),
        received_at: None,
    }
}

fn streaks(healths: &[Option<Health>]) -> Vec<Option<u64>> {
    healths
        .iter()
        .map(|h| h.map(|h| h.consecutive_failures))
        .collect()
}

async fn log_ids(store: &RedisStore, webhook: &str) -> Vec<String> {
    store
        .list_attempts(webhook, 0, 100)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|a| a.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successes_in_a_row_are_one_call_and_every_attempt_still_counts_in_order() {
    let prefix = unique_prefix();
    let store = RedisStore::connect("redis://127.0.0.1:6379", &prefix)
        .await
        .unwrap();

    // Two successes (the second a retry), a failure, all of `wh_a`, and a success of `wh_b`.
    let healths = store
        .record(&[
            result("wh_a", 1, 1, true),
            result("wh_a", 2, 2, true),
            result("wh_a", 3, 1, false),
            result("wh_b", 4, 1, true),
        ])
        .await
        .unwrap();
    assert_eq!(streaks(&healths), [Some(0), Some(0), Some(1), Some(0)]);
    assert!(healths[2].unwrap().failing_since.is_some());
    let a = &store.webhook_stats(&["wh_a"]).await.unwrap()[0];
    assert_eq!((a.successes, a.failures, a.retries), (2, 1, 1));
    assert_eq!(a.consecutive_failures, 1, "the failure came last");
    assert!(a.failing_since.is_some());
    assert_eq!(a.last_status, Some(500));
    assert_eq!(
        log_ids(&store, "wh_a").await,
        ["att_wh_a_3", "att_wh_a_2", "att_wh_a_1"]
    );
    assert_eq!(log_ids(&store, "wh_b").await, ["att_wh_b_4"]);

    // A failure, then two successes: the streak ends with the first of them.
    let healths = store
        .record(&[
            result("wh_a", 5, 2, false),
            result("wh_a", 6, 3, true),
            result("wh_a", 7, 1, true),
        ])
        .await
        .unwrap();
    assert_eq!(streaks(&healths), [Some(2), Some(0), Some(0)]);
    let a = &store.webhook_stats(&["wh_a"]).await.unwrap()[0];
    assert_eq!((a.successes, a.failures, a.retries), (4, 2, 3));
    assert_eq!(a.consecutive_failures, 0);
    assert_eq!(a.failing_since, None);
    assert_eq!(a.last_status, Some(200));
    assert_eq!(a.attempts_24h, 6);
    assert_eq!(a.success_rate_24h, Some(4.0 / 6.0));
    assert_eq!(
        log_ids(&store, "wh_a").await,
        [
            "att_wh_a_7",
            "att_wh_a_6",
            "att_wh_a_5",
            "att_wh_a_3",
            "att_wh_a_2",
            "att_wh_a_1"
        ]
    );

    // A success, a failure, a success: the second success is not folded into the first's
    // call (that would count it before the failure and leave a streak of one).
    let healths = store
        .record(&[
            result("wh_a", 8, 1, true),
            result("wh_a", 9, 1, false),
            result("wh_a", 10, 1, true),
        ])
        .await
        .unwrap();
    assert_eq!(streaks(&healths), [Some(0), Some(1), Some(0)]);
    let a = &store.webhook_stats(&["wh_a"]).await.unwrap()[0];
    assert_eq!((a.successes, a.failures), (6, 3));
    assert_eq!(a.consecutive_failures, 0, "the success came last");
    assert_eq!(a.failing_since, None);
    assert_eq!(
        &log_ids(&store, "wh_a").await[..3],
        ["att_wh_a_10", "att_wh_a_9", "att_wh_a_8"]
    );
    cleanup(&prefix).await;
}
