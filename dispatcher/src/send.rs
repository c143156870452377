//! One signed HTTP request to one receiver, through the outbound client of `core`
//! (`http_client.rs`: the guard, auth, templates, signing).

pub use kivihook_core::http_client::{message_id, Attempt, Clients, ErrorKind};

use crate::target::Target;

/// Send one target: the webhook's request for this event, signed.
pub async fn send(clients: &Clients, target: &Target) -> Attempt {
    kivihook_core::http_client::send(clients, &target.webhook, &target.message_id, &target.body)
        .await
}
