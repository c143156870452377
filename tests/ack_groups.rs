//! Acknowledgements in groups (`basic.ack` with `multiple`) against the real RabbitMQ: a
//! group never covers a message that was requeued or dead-lettered among the acked ones,
//! and a clean stop acknowledges what was done before the connection closes.
//! (A `kill -9` of the dispatcher mid-stream losing nothing is `no_detours.rs`.)

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;

use common::*;
use kivihook_core::broker::{
    Broker, Delivery, DeliveryStream, OutboundMessage, Queue, RabbitBroker,
};
use kivihook_core::metrics::Metrics;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn broker(prefix: &str) -> RabbitBroker {
    RabbitBroker::new(&[AMQP.to_owned()], prefix, Metrics::new(), "test")
}

async fn publish(b: &RabbitBroker, n: usize) {
    for i in 0..n {
        b.publish(&OutboundMessage {
            queue: Queue::Deliveries,
            routing_key: "appointment.booked".into(),
            body: i.to_string().into_bytes(),
            registry_version: 0,
            first_publish: false,
        })
        .await
        .expect("publish");
    }
}

fn index(body: &[u8]) -> usize {
    std::str::from_utf8(body).unwrap().parse().unwrap()
}

/// The next message, which must come within 20 s.
async fn next(stream: &mut DeliveryStream, what: &str) -> Delivery {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .unwrap_or_else(|_| panic!("{what}"))
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_and_dead_lettered_messages_are_never_acked_with_a_group() {
    let prefix = unique_prefix();
    let names = kivihook_core::amqp::Names::new(&prefix);
    let b = broker(&prefix);
    publish(&b, 300).await;

    // Settle all 300 at once, out of order: every tenth requeued, every tenth dead-lettered,
    // the rest acked, so groups form around messages that must not join them.
    let mut stream = b.consume(Queue::Deliveries, "t", 300).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let d = next(&mut stream, "a delivery").await;
        tasks.spawn(async move {
            let i = index(&d.body);
            // Scattered over 20 ms (from the index, so no two runs need the same luck).
            let wait = (i as u64 * 7919) % 20;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            match i % 10 {
                3 => d.acker.requeue().await.unwrap(),
                7 => d.acker.dead_letter().await.unwrap(),
                _ => d.acker.ack().await.unwrap(),
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }

    // The requeued ones come back, and only they.
    let mut back = BTreeSet::new();
    while back.len() < 30 {
        let d = next(&mut stream, "the requeued messages come back").await;
        assert!(d.redelivered);
        assert!(back.insert(index(&d.body)), "a message came back twice");
        d.acker.ack().await.unwrap();
    }
    let expected: BTreeSet<usize> = (0..300).filter(|i| i % 10 == 3).collect();
    assert_eq!(back, expected);
    let extra = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
    assert!(extra.is_err(), "an acked message came back");

    drop(stream);
    b.close().await;
    assert_eq!(
        queue_depth(&names.deliveries_queue).await,
        0,
        "nothing left unacked"
    );
    let started = std::time::Instant::now();
    while queue_depth(&names.dead_letter_queue).await != 30 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "30 dead letters in their queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_acknowledges_what_was_done() {
    let prefix = unique_prefix();
    let names = kivihook_core::amqp::Names::new(&prefix);
    let b = broker(&prefix);
    publish(&b, 100).await;
    let mut stream = b.consume(Queue::Deliveries, "t", 256).await.unwrap();
    for _ in 0..60 {
        let d = next(&mut stream, "a delivery").await;
        d.acker.ack().await.unwrap();
    }
    // Straight away: the last acks are still waiting for their group when the stream goes.
    drop(stream);
    b.close().await;
    assert_eq!(
        queue_depth(&names.deliveries_queue).await,
        40,
        "the 60 acked stay acked; the 40 held are handed back"
    );
    cleanup(&prefix).await;
}
