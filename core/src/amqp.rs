//! AMQP names and topology, built in one place.
//!
//! ```text
//! {p}.events (topic) ──#──▶ {p}.deliveries (quorum) ──reject/limit──▶ {p}.dlx ──#──▶ {p}.dead-letters
//! (default exchange) ─────▶ {p}.retries (quorum)    ──reject/limit──▶ {p}.dlx
//! ```
//! Events are published with their type as routing key. The first-attempt queue is a quorum
//! queue (replicated, survives a node loss) with a delivery limit, so a message that keeps
//! crashing consumers ends in the dead-letter queue instead of being redelivered forever.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

/// How many times a message may be handed out again before it is dead-lettered.
pub const DELIVERY_LIMIT: i64 = 50;

/// AMQP message header carrying the webhook-registry version ingest saw when accepting.
pub const REGISTRY_VERSION_HEADER: &str = "x-kivihook-registry-version";

/// AMQP message header set on an event whose id was claimed clean: the only message of it
/// ever published (`OutboundMessage::first_publish`).
pub const FIRST_PUBLISH_HEADER: &str = "x-kivihook-first-publish";

/// The AMQP names of one installation.
#[derive(Debug, Clone)]
pub struct Names {
    pub events_exchange: String,
    pub deliveries_queue: String,
    /// Retries travel apart from first attempts, so a retry storm cannot starve them.
    pub retries_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Self {
            events_exchange: format!("{prefix}.events"),
            deliveries_queue: format!("{prefix}.deliveries"),
            retries_queue: format!("{prefix}.retries"),
            dead_letter_exchange: format!("{prefix}.dlx"),
            dead_letter_queue: format!("{prefix}.dead-letters"),
        }
    }

    /// Every queue, for tooling that removes an installation.
    pub fn queues(&self) -> [&str; 3] {
        [
            &self.deliveries_queue,
            &self.retries_queue,
            &self.dead_letter_queue,
        ]
    }

    /// Every exchange, for tooling that removes an installation.
    pub fn exchanges(&self) -> [&str; 2] {
        [&self.events_exchange, &self.dead_letter_exchange]
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn quorum_args(dead_letter_exchange: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some(dlx) = dead_letter_exchange {
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(dlx.into()),
        );
        args.insert(
            ShortString::from("x-delivery-limit"),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
    }
    args
}

/// Declare every exchange, queue and binding. Idempotent; every role calls it on connect.
pub async fn declare_topology(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            &names.events_exchange,
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            &names.dead_letter_exchange,
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(&names.dead_letter_queue, durable_queue(), quorum_args(None))
        .await?;
    channel
        .queue_bind(
            &names.dead_letter_queue,
            &names.dead_letter_exchange,
            "#",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            &names.deliveries_queue,
            durable_queue(),
            quorum_args(Some(&names.dead_letter_exchange)),
        )
        .await?;
    // Published to through the default exchange, by name.
    channel
        .queue_declare(
            &names.retries_queue,
            durable_queue(),
            quorum_args(Some(&names.dead_letter_exchange)),
        )
        .await?;
    channel
        .queue_bind(
            &names.deliveries_queue,
            &names.events_exchange,
            "#",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}
