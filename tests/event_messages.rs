//! Several events per AMQP message: a batch request's events of one type travel in one
//! message (at most `KIVIHOOK_EVENTS_PER_MESSAGE`), and every event still reaches exactly
//! the webhooks subscribed to its type, once, as its own signed request. A dispatcher killed
//! in the middle of such a message repeats only the deliveries it had not recorded yet.
//! Real RabbitMQ, Redis, receivers and processes.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Deliveries the receiver accepted, by event id.
fn by_id(r: &Receiver) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for got in r.received().iter().filter(|g| g.accepted) {
        let id = got.json()["id"].as_str().unwrap_or_default().to_owned();
        *seen.entry(id).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_travels_as_one_message_per_type_and_each_event_arrives_once_as_itself() {
    let prefix = unique_prefix();
    let names = kivihook_core::amqp::Names::new(&prefix);
    let ingest = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&ingest);
    let all = Receiver::start().await;
    let patients = Receiver::start().await;
    let created = api
        .create_webhook(json!({"name": "all", "url": all.url(), "events": ["*"]}))
        .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    api.create_webhook(json!({"name": "patients", "url": patients.url(), "events": ["patient.*"]}))
        .await;

    // 70 appointments and 50 patients, interleaved, in one request: at the default of 50
    // events a message, 50 + 20 appointments and 50 patients make three messages.
    let events: Vec<Value> = (0..120)
        .map(|i| {
            let kind = if i % 12 < 7 {
                "appointment.booked"
            } else {
                "patient.created"
            };
            event(&format!("evt_msg_{i}"), kind, None)
        })
        .collect();
    let r = api.post_batch(&json!({ "events": events })).await;
    assert_eq!(r.status(), 202);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["accepted"], 120, "{answer}");
    assert_eq!(queue_depth(&names.deliveries_queue).await, 3);

    // The setting is the cap: 20 more patients at 7 a message are three more messages.
    let small = Kivihook::start("ingest", &prefix, &[("KIVIHOOK_EVENTS_PER_MESSAGE", "7")]);
    let more = numbered("msg", 120..140, "patient.created");
    Api::new(&small).post_events(&more).await;
    assert_eq!(queue_depth(&names.deliveries_queue).await, 6);

    let dispatcher = Kivihook::start("dispatcher", &prefix, &[]);
    wait_until(Duration::from_secs(30), "every delivery", || {
        all.count() >= 140 && patients.count() >= 70
    })
    .await;
    // Nothing more comes: no event was sent twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = by_id(&all);
    assert_eq!(seen.len(), 140);
    assert!(seen.values().all(|&n| n == 1), "an event arrived twice");
    assert_eq!(all.count(), 140);
    let message_ids: std::collections::HashSet<String> = all
        .received()
        .iter()
        .map(|g| g.header("webhook-id").to_owned())
        .collect();
    assert_eq!(message_ids.len(), 140, "each event has its own webhook-id");
    for got in all.received() {
        // Each request is one event's own envelope, signed as it is.
        let body = got.json();
        assert!(body.is_object(), "a request carried {body}");
        let i: usize = body["id"].as_str().unwrap()["evt_msg_".len()..]
            .parse()
            .unwrap();
        let kind = if i < 120 && i % 12 < 7 {
            "appointment.booked"
        } else {
            "patient.created"
        };
        assert_eq!(body["type"], kind);
        assert_eq!(body["data"]["appointment_id"], body["id"]);
        assert!(verify_signature(&secret, &got), "a bad signature on {i}");
    }
    let patient_ids = by_id(&patients);
    assert_eq!(patient_ids.len(), 70);
    assert_eq!(patients.count(), 70);
    assert!(patient_ids.keys().all(|id| {
        let i: usize = id["evt_msg_".len()..].parse().unwrap();
        i >= 120 || i % 12 >= 7
    }));
    eventually(Duration::from_secs(10), "the queue to empty", || async {
        queue_depth(&names.deliveries_queue).await == 0
    })
    .await;
    drop(dispatcher);
    drop(small);
    drop(ingest);
    cleanup(&prefix).await;
}

/// A message of fifty events to a webhook taking five requests at a time, 100 ms each: the
/// dispatcher records results in groups as they come, not once the whole message is done,
/// so a `kill -9` halfway repeats only the few deliveries not yet recorded (before, all of
/// the message's finished ones came again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_inside_a_message_of_fifty_repeats_only_what_was_not_recorded() {
    let prefix = unique_prefix();
    let names = kivihook_core::amqp::Names::new(&prefix);
    let ingest = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&ingest);
    let r = Receiver::start().await;
    r.delay(Duration::from_millis(100));
    api.create_webhook(json!({
        "name": "paced", "url": r.url(), "events": ["*"], "max_concurrency": 5
    }))
    .await;
    let events = numbered("cut", 0..50, "encounter.closed");
    api.post_events(&events).await;
    assert_eq!(queue_depth(&names.deliveries_queue).await, 1);

    let mut dispatcher = Kivihook::start("dispatcher", &prefix, &[]);
    wait_until(Duration::from_secs(30), "half the deliveries", || {
        r.count() >= 25
    })
    .await;
    dispatcher.kill();
    let before_kill = r.count();
    let _dispatcher = Kivihook::start("dispatcher", &prefix, &[]);
    wait_until(Duration::from_secs(30), "every event", || {
        by_id(&r).len() == 50
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let repeated = r.count() - 50;
    println!("killed at {before_kill} deliveries; {repeated} repeated after the restart");
    // At most what was in flight (5) or finished within the last group's wait and its
    // recording: a handful, never the 25 finished before the kill.
    assert!(
        repeated <= 12,
        "{repeated} deliveries came twice after a kill at {before_kill}"
    );
    eventually(Duration::from_secs(10), "the queue to empty", || async {
        queue_depth(&names.deliveries_queue).await == 0
    })
    .await;
    drop(ingest);
    cleanup(&prefix).await;
}

/// Ingest; a dispatcher with a budget of `prefetch` events and a 10 s delivery timeout; a
/// receiver that answers at once (`fast`, every event) and one that never answers in time
/// (`hung`, for the webhook `hung_webhook` describes, named and pointed at it here).
struct FastAndHung {
    prefix: String,
    /// Kept running for as long as the set-up lives.
    _ingest: Kivihook,
    dispatcher: Kivihook,
    api: Api,
    fast: Receiver,
    hung: Receiver,
}

async fn fast_and_hung(mut hung_webhook: Value, prefetch: &str) -> FastAndHung {
    let prefix = unique_prefix();
    let ingest = Kivihook::start("ingest", &prefix, &[]);
    let api = Api::new(&ingest);
    let fast = Receiver::start().await;
    let hung = Receiver::start().await;
    hung.delay(Duration::from_secs(30));
    api.create_webhook(json!({"name": "fast", "url": fast.url(), "events": ["*"]}))
        .await;
    hung_webhook["name"] = json!("hung");
    hung_webhook["url"] = json!(hung.url());
    api.create_webhook(hung_webhook).await;
    let dispatcher = Kivihook::start(
        "dispatcher",
        &prefix,
        &[
            ("KIVIHOOK_PREFETCH", prefetch),
            ("KIVIHOOK_DELIVERY_TIMEOUT", "10"),
        ],
    );
    FastAndHung {
        prefix,
        _ingest: ingest,
        dispatcher,
        api,
        fast,
        hung,
    }
}

impl FastAndHung {
    /// Wait until the hung receiver holds `n` requests.
    async fn hung_requests(&self, n: usize) {
        wait_until(Duration::from_secs(10), "the hung requests", || {
            self.hung.arrivals().len() == n
        })
        .await;
    }
}

/// Events `evt_<tag>_<i>` for each `i` of `ids`, of one type.
fn numbered(tag: &str, ids: std::ops::Range<usize>, event_type: &str) -> Vec<Value> {
    ids.map(|i| event(&format!("evt_{tag}_{i}"), event_type, None))
        .collect()
}

/// A request that hangs holds its own event's turn in the dispatcher's budget, not the
/// turns of the other events of its message: with a budget of 8 events (the prefetch), a
/// message of 8 whose first event also goes to a hung endpoint leaves 7 turns free once the
/// others are delivered, so the next 7 events go at once instead of after the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_request_holds_its_own_events_turn_not_its_whole_messages() {
    let s = fast_and_hung(json!({"events": ["bill.paid"], "clinic_ids": ["c1"]}), "8").await;
    // One message of 8 bills; only the first is of clinic c1, and goes to the hung endpoint.
    let first: Vec<Value> = (0..8)
        .map(|i| {
            let clinic = if i == 0 { "c1" } else { "c2" };
            event(&format!("evt_turn_{i}"), "bill.paid", Some(clinic))
        })
        .collect();
    s.api.post_events(&first).await;
    wait_until(Duration::from_secs(10), "the 8 fast deliveries", || {
        s.fast.count() == 8
    })
    .await;
    s.hung_requests(1).await;
    // The hung request holds one turn for 10 s; the other 7 are free.
    let posted = std::time::Instant::now();
    s.api
        .post_events(&numbered("turn", 8..15, "patient.created"))
        .await;
    wait_until(Duration::from_secs(20), "the next 7 deliveries", || {
        s.fast.count() == 15
    })
    .await;
    let took = posted.elapsed();
    println!("the next 7 events took {took:?} beside the hung request");
    assert!(
        took < Duration::from_secs(3),
        "the next events waited {took:?}: the hung request held its whole message's turns"
    );
    assert_eq!(s.hung.count(), 0, "the hung request is still open");
    let prefix = s.prefix.clone();
    drop(s);
    cleanup(&prefix).await;
}

/// Targets waiting for a slot of a webhook at its cap give their events' turns back after a
/// short wait, so events behind them are not held until the webhook counts as stalled (a
/// second without an answer): with a budget of 9 events, one held by a hung request and 8
/// by bills waiting for the hung endpoint's only slot, the patients posted after them still
/// arrive before any target is put off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_waiting_on_a_full_webhook_do_not_hold_the_events_behind_them() {
    let s = fast_and_hung(json!({"events": ["bill.paid"], "max_concurrency": 1}), "9").await;
    // The first bill's request takes the hung endpoint's only slot (and one turn); the next
    // 8 bills (one message) wait for it, holding the rest of the budget at first.
    s.api
        .post_events(&numbered("wait", 0..1, "bill.paid"))
        .await;
    s.hung_requests(1).await;
    s.api
        .post_events(&numbered("wait", 1..9, "bill.paid"))
        .await;
    s.api
        .post_events(&numbered("wait", 9..16, "patient.created"))
        .await;
    wait_until(Duration::from_secs(20), "the patients", || {
        let seen = by_id(&s.fast);
        (9..16).all(|i| seen.contains_key(&format!("evt_wait_{i}")))
    })
    .await;
    let deferred = metric_sum(&s.dispatcher, "kivihook_deferrals_total").await;
    assert_eq!(
        deferred, 0.0,
        "the patients waited until the bills' targets were put off"
    );
    // And the bills' targets for the hung endpoint are put off once it counts as stalled.
    eventually(
        Duration::from_secs(10),
        "the waiting targets put off",
        || async { metric_sum(&s.dispatcher, "kivihook_deferrals_total").await >= 8.0 },
    )
    .await;
    let prefix = s.prefix.clone();
    drop(s);
    cleanup(&prefix).await;
}
