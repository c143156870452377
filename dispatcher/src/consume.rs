//! The consumer loop: take messages from RabbitMQ, many at once, and hand each to its own
//! task; reconnect with backoff when the connection is lost.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinSet;

use kivihook_core::broker::{Delivery, DeliveryStream};
use kivihook_core::{Event, Shutdown};

use crate::{fanout, record, send, Dispatcher};

/// Consume until shutdown, reconnecting whenever the broker connection is lost.
pub async fn run(d: Arc<Dispatcher>, mut shutdown: Shutdown) {
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    while !shutdown.is_triggered() {
        match d.broker.consume(&d.consumer_tag, d.prefetch).await {
            Ok(stream) => {
                if connected_before {
                    d.metrics
                        .amqp_reconnects
                        .with_label_values(&["dispatcher"])
                        .inc();
                }
                connected_before = true;
                backoff = Duration::from_millis(100);
                tracing::info!(prefetch = d.prefetch, "consuming events");
                consume(&d, stream, shutdown.clone()).await;
                if !shutdown.is_triggered() {
                    tracing::warn!("lost the RabbitMQ consumer; reconnecting");
                }
            }
            Err(e) => {
                d.metrics
                    .amqp_errors
                    .with_label_values(&["dispatcher"])
                    .inc();
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot consume from RabbitMQ");
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn consume(d: &Arc<Dispatcher>, mut stream: DeliveryStream, shutdown: Shutdown) {
    let mut tasks = JoinSet::new();
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            biased;
            _ = stop.wait() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            item = stream.next() => match item {
                Some(Ok(delivery)) => {
                    tasks.spawn(handle(d.clone(), delivery, shutdown.clone()));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                None => break,
            },
        }
    }
    // Let in-flight deliveries finish and ack on the still-open connection; whatever was
    // prefetched but not started goes back to the queue when the stream is dropped.
    let grace = d.delivery_timeout + Duration::from_secs(5);
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "in-flight deliveries did not finish in time; they will be redelivered"
        );
        tasks.abort_all();
    }
    drop(stream);
}

/// One message: parse, fan out, send to every target at once, record, ack.
async fn handle(d: Arc<Dispatcher>, delivery: Delivery, mut shutdown: Shutdown) {
    let Delivery {
        body,
        redelivered,
        registry_version,
        acker,
    } = delivery;
    let event: Event = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            d.metrics.poison_messages.inc();
            tracing::error!(error = %e, bytes = body.len(), "unparseable message: sending it to the dead-letter queue");
            if let Err(e) = acker.dead_letter().await {
                tracing::warn!(error = %e, "could not dead-letter the message; it will be redelivered");
            }
            return;
        }
    };
    let ready = record::persist(&d, &mut shutdown, "load the webhook registry", || {
        d.registry.ensure(registry_version)
    })
    .await;
    let targets = match ready {
        Some(()) => {
            record::persist(&d, &mut shutdown, "read delivered targets", || {
                fanout::targets(&d, &event)
            })
            .await
        }
        None => None,
    };
    let Some(targets) = targets else {
        let _ = acker.requeue().await;
        return;
    };
    if redelivered {
        tracing::debug!(event_id = %event.id, targets = targets.len(), "processing a redelivered event");
    }
    let body = bytes::Bytes::from(body);
    let attempts = targets.iter().map(|webhook| {
        let d = &d;
        let event = &event;
        let body = &body;
        async move {
            let msg_id = send::message_id(&event.id, &webhook.id);
            d.metrics.deliveries_in_flight.inc();
            let attempt = send::send(&d.client, webhook, &msg_id, body).await;
            d.metrics.deliveries_in_flight.dec();
            observe(d, event, webhook, &attempt);
            record::outcome(event, webhook, &msg_id, &attempt)
        }
    });
    let outcomes = futures::future::join_all(attempts).await;
    record::settle(&d, &mut shutdown, &event.id, outcomes, acker).await;
}

fn observe(
    d: &Dispatcher,
    event: &Event,
    webhook: &kivihook_core::Webhook,
    attempt: &send::Attempt,
) {
    let outcome = if attempt.succeeded() {
        "success"
    } else {
        "failed"
    };
    d.metrics.deliveries.with_label_values(&[outcome]).inc();
    d.metrics
        .delivery_duration
        .with_label_values(&[outcome])
        .observe(attempt.duration.as_secs_f64());
    if attempt.succeeded() {
        let latency = (chrono::Utc::now() - event.received_at)
            .to_std()
            .unwrap_or_default();
        d.metrics.event_to_delivery.observe(latency.as_secs_f64());
        tracing::debug!(event_id = %event.id, webhook_id = %webhook.id, attempt = 1, status = attempt.status, "delivered");
    } else {
        tracing::warn!(
            event_id = %event.id,
            webhook_id = %webhook.id,
            attempt = 1,
            status = attempt.status,
            error = %attempt.describe(),
            "delivery failed"
        );
    }
}
