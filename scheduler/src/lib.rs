//! kivihook-scheduler: moves due retries from Redis back into RabbitMQ.
//!
//! Retries are not scheduled yet (a failed delivery becomes a dead letter at once), so the
//! role only serves its operational endpoints and waits for shutdown.

use kivihook_core::Shutdown;

/// Run until shutdown.
pub async fn run(mut shutdown: Shutdown) {
    tracing::info!("scheduler running (no retry schedule to promote yet)");
    shutdown.wait().await;
    tracing::info!("scheduler stopped");
}
