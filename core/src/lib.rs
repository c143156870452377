//! kivihook-core: what every KiviHook role shares and nothing role-specific.
//!
//! The event and webhook model, configuration, the Standard Webhooks signer, the AMQP
//! topology and broker access, the Redis key space and store access, metrics, telemetry,
//! the operational HTTP endpoints and graceful shutdown. Roles meet only through this
//! crate, RabbitMQ and Redis.

pub mod amqp;
pub mod broker;
pub mod config;
pub mod crypto;
pub mod definitions;
pub mod delivery;
pub mod event;
pub mod http_client;
pub mod keys;
pub mod metrics;
pub mod ops;
pub mod outbound;
pub mod redact;
pub mod registry;
pub mod retry;
pub mod samples;
pub mod shutdown;
pub mod signing;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod webhook;

pub use broker::{Broker, BrokerError};
pub use config::Config;
pub use event::{Event, EventType};
pub use metrics::Metrics;
pub use shutdown::Shutdown;
pub use store::{Store, StoreError};
pub use webhook::Webhook;

/// The version of this build, as sent in `User-Agent: KiviHook/<version>`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `User-Agent` of every outbound delivery.
pub fn user_agent() -> String {
    format!("KiviHook/{VERSION}")
}
