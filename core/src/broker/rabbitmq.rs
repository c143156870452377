//! RabbitMQ backend (lapin): publisher confirms on a few shared channels, quorum queues,
//! manual acks, and reconnection with backoff.
//!
//! A handle may be given every node of a cluster. Each connection (the publisher's, each
//! consumer's) dials the first node that answers; when a connection to a node is lost, the
//! next one starts from the node after it, round the list. The queues are quorum queues, so
//! whichever node a connection reaches serves them, whichever node leads them.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use lapin::options::{
    BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::ack_group::AckGroup;
use super::{Acker, Broker, BrokerError, Delivery, DeliveryStream, OutboundMessage, Queue};
use crate::amqp::{declare_topology, Names, FIRST_PUBLISH_HEADER, REGISTRY_VERSION_HEADER};
use crate::metrics::Metrics;

/// Publishing channels per connection. Confirms are pipelined on each channel, so a few are
/// enough to keep the broker busy; more only add bookkeeping.
const PUBLISH_CHANNELS: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Declaring waits on the queues' leaders; a node that cannot reach them must not hold the
/// reconnect (and every publish queued behind it) for longer than this.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed connect, publishes fail fast for this long instead of each one dialling.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

/// The production broker.
pub struct RabbitBroker {
    nodes: Arc<Nodes>,
    names: Names,
    metrics: Metrics,
    role: &'static str,
    current: RwLock<Option<Arc<Publisher>>>,
    reconnect: tokio::sync::Mutex<Option<Instant>>,
    /// Consumer connections being closed (a consumer closes its connection when dropped);
    /// `close` waits for them, so that none is cut by the runtime's shutdown.
    closing: Closing,
}

type Closing = Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>;

/// How long shutting down waits for the broker to acknowledge closing a connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

struct Publisher {
    conn: Connection,
    /// Which of `Nodes::urls` it is connected to.
    node: usize,
    channels: Vec<Channel>,
    next: AtomicUsize,
    since: Instant,
    /// The broker nacked a message on it: it is replaced, from the next node.
    nacked: AtomicBool,
}

/// The nodes a handle may connect to, and which one it dials first.
struct Nodes {
    urls: Vec<String>,
    /// Where the next dial starts: the node the last connection reached, moved past a node
    /// once a connection to it is lost.
    first: AtomicUsize,
}

impl Nodes {
    /// Connect to the first node that answers, from `first` round the list; every node is
    /// tried once before giving up, so one dead node costs a connect attempt, not a backoff.
    async fn open(&self, names: &Names) -> Result<(Connection, usize), BrokerError> {
        let n = self.urls.len();
        if n == 0 {
            return Err(BrokerError::Unavailable(
                "no RabbitMQ node is configured".into(),
            ));
        }
        let start = self.first.load(Ordering::Relaxed) % n;
        let mut skipped = Vec::new();
        let mut last = None;
        for i in (0..n).map(|k| (start + k) % n) {
            match open(&self.urls[i], names).await {
                Ok(conn) => {
                    self.first.store(i, Ordering::Relaxed);
                    if !skipped.is_empty() {
                        tracing::warn!(
                            node = %self.label(i),
                            skipped = %skipped.join(", "),
                            "connected to RabbitMQ past nodes that did not answer"
                        );
                    }
                    return Ok((conn, i));
                }
                Err(e) => {
                    skipped.push(format!("{} ({e})", self.label(i)));
                    last = Some(e);
                }
            }
        }
        match last {
            // One node: its own error, as before there were lists.
            Some(e) if n == 1 => Err(e),
            _ => {
                // Which node failed how is for the logs; the error may reach API clients.
                tracing::warn!(nodes = %skipped.join(", "), "no RabbitMQ node answered");
                Err(BrokerError::Unavailable(format!(
                    "none of the {n} RabbitMQ nodes answered"
                )))
            }
        }
    }

    /// A connection to node `i` was lost: the next dial starts at the node after it. The
    /// publisher and every consumer notice the same loss; only the first moves the start,
    /// so they all meet again on one node instead of scattering over the list.
    fn lost(&self, i: usize) {
        let n = self.urls.len();
        if n > 1 {
            let _ =
                self.first
                    .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// `host:port` of node `i`, for logs: never the user or password.
    fn label(&self, i: usize) -> String {
        let url = &self.urls[i];
        match url::Url::parse(url) {
            Ok(u) => {
                let port = u
                    .port()
                    .unwrap_or(if u.scheme() == "amqps" { 5671 } else { 5672 });
                format!("{}:{port}", u.host_str().unwrap_or("?"))
            }
            Err(_) => format!("node {}", i + 1),
        }
    }
}

impl Publisher {
    fn healthy(&self) -> bool {
        !self.nacked.load(Ordering::Relaxed)
            && self.conn.status().connected()
            && self.channels.iter().all(|c| c.status().connected())
    }

    /// A nack means the node did not take the message, and a channel may stay that way:
    /// after a quorum queue's leader was lost, a channel whose first publish fell into the
    /// election can nack every message from then on while its connection looks healthy;
    /// only a new channel recovers. So a nacked publisher is retired, but only once it is
    /// older than the reconnect backoff, so that a cluster that nacks everything costs a
    /// reconnect every backoff, not one per message.
    fn nacked(&self) {
        if self.since.elapsed() >= RECONNECT_BACKOFF {
            self.nacked.store(true, Ordering::Relaxed);
        }
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
    let declared = tokio::time::timeout(DECLARE_TIMEOUT, async {
        let ch = conn.create_channel().await.map_err(unavailable)?;
        declare_topology(&ch, names).await.map_err(unavailable)?;
        let _ = ch.close(200, "topology declared").await;
        Ok::<_, BrokerError>(())
    })
    .await;
    match declared {
        Ok(Ok(())) => Ok(conn),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let _ = conn.close(200, "topology not declared in time").await;
            Err(BrokerError::Timeout(DECLARE_TIMEOUT))
        }
    }
}

impl RabbitBroker {
    /// A broker handle on the nodes of one cluster (or one node); it connects on first use
    /// and reconnects after failures, so a role starts (and answers 503) even while RabbitMQ
    /// is down.
    pub fn new(urls: &[String], prefix: &str, metrics: Metrics, role: &'static str) -> Self {
        Self {
            nodes: Arc::new(Nodes {
                urls: urls.to_vec(),
                first: AtomicUsize::new(0),
            }),
            names: Names::new(prefix),
            metrics,
            role,
            current: RwLock::new(None),
            reconnect: tokio::sync::Mutex::new(None),
            closing: Closing::default(),
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

    /// The publisher that is no longer healthy, if there is one.
    fn broken_publisher(&self) -> Option<Arc<Publisher>> {
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().filter(|p| !p.healthy()).cloned()
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
        if let Some(old) = self.broken_publisher() {
            if old.nacked.load(Ordering::Relaxed) && old.conn.status().connected() {
                tracing::warn!(role = self.role, node = %self.nodes.label(old.node), "RabbitMQ nacked a publish; reconnecting, from the next node");
            }
            // Publishes still in flight on it keep it open until they settle; then dropping
            // it closes the connection.
            self.nodes.lost(old.node);
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
                    tracing::info!(role = self.role, node = %self.nodes.label(p.node), "reconnected to RabbitMQ");
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
        let (conn, node) = self.nodes.open(&self.names).await?;
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
            node,
            channels,
            next: AtomicUsize::new(0),
            since: Instant::now(),
            nacked: AtomicBool::new(false),
        }))
    }

    async fn publish_on(
        &self,
        p: &Publisher,
        channel: &Channel,
        msg: &OutboundMessage,
    ) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(REGISTRY_VERSION_HEADER),
            AMQPValue::LongLongInt(i64::try_from(msg.registry_version).unwrap_or(i64::MAX)),
        );
        if msg.first_publish {
            headers.insert(
                ShortString::from(FIRST_PUBLISH_HEADER),
                AMQPValue::Boolean(true),
            );
        }
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
        let confirm = channel
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
            Confirmation::Nack(_) => {
                p.nacked();
                Err(BrokerError::Refused("the broker nacked it".into()))
            }
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
        match tokio::time::timeout(PUBLISH_TIMEOUT, self.publish_on(&p, p.channel(), msg)).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Timeout(PUBLISH_TIMEOUT)),
        }
    }

    /// One request's messages on one channel (requests still spread over the channels), so
    /// that one channel process takes them in one go instead of four waking for one each.
    async fn publish_all(&self, msgs: &[OutboundMessage]) -> Vec<Result<(), BrokerError>> {
        let p = match self.publisher().await {
            Ok(p) => p,
            Err(e) => {
                let e = e.to_string();
                return msgs
                    .iter()
                    .map(|_| Err(BrokerError::Unavailable(e.clone())))
                    .collect();
            }
        };
        let channel = p.channel();
        let all = futures::future::join_all(msgs.iter().map(|m| {
            let sent = self.publish_on(&p, channel, m);
            async move {
                match tokio::time::timeout(PUBLISH_TIMEOUT, sent).await {
                    Ok(result) => result,
                    Err(_) => Err(BrokerError::Timeout(PUBLISH_TIMEOUT)),
                }
            }
        }));
        all.await
    }

    async fn consume(
        &self,
        queue: Queue,
        consumer_tag: &str,
        prefetch: u16,
    ) -> Result<DeliveryStream, BrokerError> {
        // Consumers get their own connection: RabbitMQ throttles publishing connections under
        // memory pressure, and that must never stall acks.
        let (conn, node) = self.nodes.open(&self.names).await?;
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
            conn: Some(conn),
            _channel: channel,
            acks: AckGroup::start(),
            closing: self.closing.clone(),
            inner: consumer,
            nodes: self.nodes.clone(),
            node,
            ended: false,
        }
        .boxed())
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        self.publisher().await.map(|_| ())
    }

    async fn close(&self) {
        let publisher = self
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(p) = publisher {
            if p.conn.status().connected() {
                let _ =
                    tokio::time::timeout(CLOSE_TIMEOUT, p.conn.close(200, "shutting down")).await;
            }
        }
        let closing: Vec<_> =
            std::mem::take(&mut *self.closing.lock().unwrap_or_else(|e| e.into_inner()));
        for task in closing {
            let _ = task.await;
        }
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
    conn: Option<Connection>,
    _channel: Channel,
    /// Finished messages, acknowledged in groups.
    acks: Arc<AckGroup>,
    closing: Closing,
    inner: lapin::Consumer,
    nodes: Arc<Nodes>,
    /// Which node the connection reached, to move past it once the stream ends.
    node: usize,
    ended: bool,
}

impl Drop for RabbitConsumer {
    /// Close the connection with the broker (what it had prefetched and not settled goes back
    /// to the queue), rather than leave it to be cut when the runtime stops.
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !conn.status().connected() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let acks = self.acks.clone();
            let task = runtime.spawn(async move {
                // What finished is acknowledged before the connection closes, so a clean
                // stop hands back only what was not done.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    acks.close().await;
                    conn.close(200, "consumer stopped").await
                })
                .await;
            });
            let mut closing = self.closing.lock().unwrap_or_else(|e| e.into_inner());
            closing.retain(|t| !t.is_finished());
            closing.push(task);
        }
    }
}

impl Stream for RabbitConsumer {
    type Item = Result<Delivery, BrokerError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        // The stream ends, or fails, only when the channel or connection is gone: the next
        // consumer dials the next node first.
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) && !self.ended {
            self.ended = true;
            self.nodes.lost(self.node);
        }
        polled.map(|item| {
            item.map(|res| {
                res.map_err(unavailable).map(|d| {
                    self.acks.hold(d.delivery_tag, d.acker.clone());
                    Delivery {
                        registry_version: registry_version(d.properties.headers()),
                        first_publish: first_publish(d.properties.headers()),
                        redelivered: d.redelivered,
                        body: d.data,
                        acker: Box::new(RabbitAcker {
                            tag: d.delivery_tag,
                            acker: d.acker,
                            group: self.acks.clone(),
                        }),
                    }
                })
            })
        })
    }
}

fn first_publish(headers: &Option<FieldTable>) -> bool {
    let value = headers
        .as_ref()
        .and_then(|h| h.inner().get(FIRST_PUBLISH_HEADER));
    matches!(value, Some(AMQPValue::Boolean(true)))
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

/// Settles one message: an ack joins its channel's next group (see `ack_group`); a requeue
/// or a dead letter is a frame of its own, in order with the groups.
struct RabbitAcker {
    tag: u64,
    acker: lapin::acker::Acker,
    group: Arc<AckGroup>,
}

impl RabbitAcker {
    async fn nack(&self, requeue: bool) -> Result<(), BrokerError> {
        let nack = self.acker.nack(BasicNackOptions {
            requeue,
            multiple: false,
        });
        self.group
            .settle_apart(self.tag, nack)
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.group.done(self.tag);
        Ok(())
    }

    async fn requeue(&self) -> Result<(), BrokerError> {
        self.nack(true).await
    }

    async fn dead_letter(&self) -> Result<(), BrokerError> {
        self.nack(false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(urls: &[&str]) -> Nodes {
        Nodes {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            first: AtomicUsize::new(0),
        }
    }

    #[test]
    fn a_lost_node_moves_the_start_once_round_the_list() {
        let n = nodes(&["amqp://a", "amqp://b", "amqp://c"]);
        // The publisher and two consumers all lose node 0: the start moves once.
        for _ in 0..3 {
            n.lost(0);
        }
        assert_eq!(n.first.load(Ordering::Relaxed), 1);
        n.lost(1);
        n.lost(2);
        assert_eq!(n.first.load(Ordering::Relaxed), 0, "round the list");
        let one = nodes(&["amqp://a"]);
        one.lost(0);
        assert_eq!(one.first.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn node_labels_never_show_credentials() {
        let n = nodes(&[
            "amqp://kivi:s3cret@rabbit-0.local/%2f",
            "amqps://kivi:s3cret@rabbit-1.local:5999",
        ]);
        assert_eq!(n.label(0), "rabbit-0.local:5672");
        assert_eq!(n.label(1), "rabbit-1.local:5999");
    }
}
