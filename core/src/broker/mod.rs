//! Broker access behind a trait, so roles never depend on a particular broker.
//!
//! RabbitMQ (`rabbitmq.rs`) is the production backend; the embedded dev mode supplies an
//! in-memory one behind the same trait.

use async_trait::async_trait;
use futures::stream::BoxStream;

pub mod ack_group;
pub mod events;
pub mod jobs;
pub mod memory;
pub mod rabbitmq;

pub use memory::MemoryBroker;
pub use rabbitmq::RabbitBroker;

/// What went wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Not connected, or the connection broke: the caller may retry later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused this message (nack, unroutable).
    #[error("broker refused the message: {0}")]
    Refused(String),
    #[error("broker did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// New events (first attempts), routed by event type.
    Deliveries,
    /// Retry and replay jobs, moved here by the scheduler.
    Retries,
}

/// A message ready to publish: an event envelope (routing key: its type) or a job.
#[derive(Debug, Clone)]
pub struct OutboundMessage {
    pub queue: Queue,
    pub routing_key: String,
    pub body: Vec<u8>,
    /// The webhook-registry version ingest saw; a dispatcher with an older cache refreshes
    /// before matching, so a webhook created before an event was accepted always sees it.
    pub registry_version: u64,
    /// The only message of its event that was ever published: its id was claimed clean (no
    /// earlier claim released or taken over). Handed out for the first time, none of its
    /// targets can be settled yet, so the dispatcher does not read their states.
    pub first_publish: bool,
}

/// Settles one delivery. Implemented by each backend.
#[async_trait]
pub trait Acker: Send + Sync {
    async fn ack(&self) -> Result<(), BrokerError>;
    /// Hand the message back to the queue for another consumer.
    async fn requeue(&self) -> Result<(), BrokerError>;
    /// Send the message to the dead-letter queue (it can never be processed).
    async fn dead_letter(&self) -> Result<(), BrokerError>;
}

/// One message handed to a consumer.
pub struct Delivery {
    pub body: Vec<u8>,
    /// Set when the broker handed this message out before (a consumer died holding it).
    pub redelivered: bool,
    pub registry_version: u64,
    /// See `OutboundMessage::first_publish`.
    pub first_publish: bool,
    pub acker: Box<dyn Acker>,
}

/// A stream of deliveries; it ends (or yields an error) when the connection is lost.
pub type DeliveryStream = BoxStream<'static, Result<Delivery, BrokerError>>;

/// The broker, as the roles see it.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publish one persistent message; resolves only once the broker confirmed it.
    /// Many publishes may be in flight at once.
    async fn publish(&self, msg: &OutboundMessage) -> Result<(), BrokerError>;

    /// Publish several messages (one request's), each persistent and confirmed on its own;
    /// one result per message, in order. A broker may hand them over together so that it
    /// takes them in one go (RabbitMQ: on one channel).
    async fn publish_all(&self, msgs: &[OutboundMessage]) -> Vec<Result<(), BrokerError>> {
        futures::future::join_all(msgs.iter().map(|m| self.publish(m))).await
    }

    /// Start consuming a queue with at most `prefetch` unacknowledged.
    async fn consume(
        &self,
        queue: Queue,
        consumer_tag: &str,
        prefetch: u16,
    ) -> Result<DeliveryStream, BrokerError>;

    /// Messages waiting in a queue and consumers attached, for metrics.
    async fn queue_status(&self, queue: Queue) -> Result<(u32, u32), BrokerError>;

    /// Readiness: can we publish right now?
    async fn ready(&self) -> Result<(), BrokerError>;

    /// Close every connection cleanly, at shutdown.
    async fn close(&self) {}
}
