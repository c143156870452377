//! RabbitMQ backend (lapin): publisher confirms on a few shared channels, quorum queues,
//! manual acks, and reconnection with backoff.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::{Acker, Broker, BrokerError, Delivery, DeliveryStream, OutboundMessage, Queue};
use crate::amqp::{declare_topology, Names, REGISTRY_VERSION_HEADER};
use crate::metrics::Metrics;

/// Publishing channels per connection. Confirms are pipelined on each channel, so a few are
/// enough to keep the broker busy; more only add bookkeeping.
const PUBLISH_CHANNELS: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed connect, publishes fail fast for this long instead of each one dialling.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

/// The production broker.
pub struct RabbitBroker {
    url: String,
    names: Names,
    metrics: Metrics,
    role: &'static str,
    current: RwLock<Option<Arc<Publisher>>>,
    reconnect: tokio::sync::Mutex<Option<Instant>>,
}

struct Publisher {
    conn: Connection,
    channels: Vec<Channel>,
    next: AtomicUsize,
}

impl Publisher {
    fn healthy(&self) -> bool {
        self.conn.status().connected() && self.channels.iter().all(|c| c.status().connected())
    }

    fn channel(&self) -> &Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        &self.channels[i]
    }
}

fn properties() -> ConnectionProperties {
    ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// Open a connection and declare the topology on it.
async fn open(url: &str, names: &Names) -> Result<Connection, BrokerError> {
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties()))
        .await
        .map_err(|_| BrokerError::Timeout(CONNECT_TIMEOUT))?
        .map_err(unavailable)?;
    let ch = conn.create_channel().await.map_err(unavailable)?;
    declare_topology(&ch, names).await.map_err(unavailable)?;
    let _ = ch.close(200, "topology declared").await;
    Ok(conn)
}

impl RabbitBroker {
    /// A broker handle; it connects on first use and reconnects after failures, so a role
    /// starts (and answers 503) even while RabbitMQ is down.
    pub fn new(url: &str, prefix: &str, metrics: Metrics, role: &'static str) -> Self {
        Self {
            url: url.to_owned(),
            names: Names::new(prefix),
            metrics,
            role,
            current: RwLock::new(None),
            reconnect: tokio::sync::Mutex::new(None),
        }
    }

    fn queue_name(&self, queue: Queue) -> &str {
        match queue {
            Queue::Deliveries => &self.names.deliveries_queue,
            Queue::Retries => &self.names.retries_queue,
        }
    }

    fn healthy_publisher(&self) -> Option<Arc<Publisher>> {
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().filter(|p| p.healthy()).cloned()
    }

    async fn publisher(&self) -> Result<Arc<Publisher>, BrokerError> {
        if let Some(p) = self.healthy_publisher() {
            return Ok(p);
        }
        // One task reconnects; the others wait here and then reuse its connection.
        let mut retry_at = self.reconnect.lock().await;
        if let Some(p) = self.healthy_publisher() {
            return Ok(p);
        }
        if retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(BrokerError::Unavailable(
                "not connected to RabbitMQ; reconnecting".into(),
            ));
        }
        match self.connect_publisher().await {
            Ok(p) => {
                *retry_at = None;
                let had_one = self
                    .current
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .replace(p.clone())
                    .is_some();
                if had_one {
                    self.metrics
                        .amqp_reconnects
                        .with_label_values(&[self.role])
                        .inc();
                    tracing::info!(role = self.role, "reconnected to RabbitMQ");
                }
                Ok(p)
            }
            Err(e) => {
                *retry_at = Some(Instant::now() + RECONNECT_BACKOFF);
                self.metrics
                    .amqp_errors
                    .with_label_values(&[self.role])
                    .inc();
                tracing::warn!(role = self.role, error = %e, "cannot connect to RabbitMQ");
                Err(e)
            }
        }
    }

    async fn connect_publisher(&self) -> Result<Arc<Publisher>, BrokerError> {
        let conn = open(&self.url, &self.names).await?;
        let mut channels = Vec::with_capacity(PUBLISH_CHANNELS);
        for _ in 0..PUBLISH_CHANNELS {
            let ch = conn.create_channel().await.map_err(unavailable)?;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(unavailable)?;
            channels.push(ch);
        }
        Ok(Arc::new(Publisher {
            conn,
            channels,
            next: AtomicUsize::new(0),
        }))
    }

    async fn publish_on(&self, p: &Publisher, msg: &OutboundMessage) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(REGISTRY_VERSION_HEADER),
            AMQPValue::LongLongInt(i64::try_from(msg.registry_version).unwrap_or(i64::MAX)),
        );
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers);
        let (exchange, routing_key) = match msg.queue {
            Queue::Deliveries => (
                self.names.events_exchange.as_str(),
                msg.routing_key.as_str(),
            ),
            Queue::Retries => ("", self.names.retries_queue.as_str()),
        };
        let confirm = p
            .channel()
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &msg.body,
                props,
            )
            .await
            .map_err(unavailable)?;
        match confirm.await.map_err(unavailable)? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError::Refused(
                "no queue is bound for this event".into(),
            )),
            Confirmation::Nack(_) => Err(BrokerError::Refused("the broker nacked it".into())),
            Confirmation::NotRequested => Err(BrokerError::Refused(
                "publisher confirms are not enabled".into(),
            )),
        }
    }
}

#[async_trait]
impl Broker for RabbitBroker {
    async fn publish(&self, msg: &OutboundMessage) -> Result<(), BrokerError> {
        let p = self.publisher().await?;
        match tokio::time::timeout(PUBLISH_TIMEOUT, self.publish_on(&p, msg)).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Timeout(PUBLISH_TIMEOUT)),
        }
    }

    async fn consume(
        &self,
        queue: Queue,
        consumer_tag: &str,
        prefetch: u16,
    ) -> Result<DeliveryStream, BrokerError> {
        // Consumers get their own connection: RabbitMQ throttles publishing connections under
        // memory pressure, and that must never stall acks.
        let conn = open(&self.url, &self.names).await?;
        let channel = conn.create_channel().await.map_err(unavailable)?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let consumer = channel
            .basic_consume(
                self.queue_name(queue),
                consumer_tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        Ok(RabbitConsumer {
            _conn: conn,
            _channel: channel,
            inner: consumer,
        }
        .boxed())
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        self.publisher().await.map(|_| ())
    }

    async fn queue_status(&self, queue: Queue) -> Result<(u32, u32), BrokerError> {
        let p = self.publisher().await?;
        // A passive declare on a channel of its own: if it fails, only that channel closes.
        let ch = p.conn.create_channel().await.map_err(unavailable)?;
        let q = ch
            .queue_declare(
                self.queue_name(queue),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let _ = ch.close(200, "status read").await;
        Ok((q.message_count(), q.consumer_count()))
    }
}

/// Keeps the connection and channel alive as long as the stream is consumed.
struct RabbitConsumer {
    _conn: Connection,
    _channel: Channel,
    inner: lapin::Consumer,
}

impl Stream for RabbitConsumer {
    type Item = Result<Delivery, BrokerError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|res| {
                res.map_err(unavailable).map(|d| Delivery {
                    registry_version: registry_version(d.properties.headers()),
                    redelivered: d.redelivered,
                    body: d.data,
                    acker: Box::new(RabbitAcker(d.acker)),
                })
            })
        })
    }
}

fn registry_version(headers: &Option<FieldTable>) -> u64 {
    let value = headers
        .as_ref()
        .and_then(|h| h.inner().get(REGISTRY_VERSION_HEADER));
    match value {
        Some(AMQPValue::LongLongInt(v)) => u64::try_from(*v).unwrap_or(0),
        Some(AMQPValue::LongInt(v)) => u64::try_from(*v).unwrap_or(0),
        Some(AMQPValue::LongUInt(v)) => u64::from(*v),
        _ => 0,
    }
}

struct RabbitAcker(lapin::acker::Acker);

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.0
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn requeue(&self) -> Result<(), BrokerError> {
        self.0
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn dead_letter(&self) -> Result<(), BrokerError> {
        self.0
            .nack(BasicNackOptions {
                requeue: false,
                multiple: false,
            })
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
