//! Which webhooks an event goes to, minus those it already reached.

use std::sync::Arc;

use kivihook_core::webhook::Webhook;
use kivihook_core::{Event, StoreError};

use crate::Dispatcher;

/// The webhooks that subscribe to `event` and have no recorded outcome for it yet.
///
/// The "already settled" check costs one Redis round trip per event (one `HMGET` for all
/// targets); it is what makes a redelivery after a crash skip the targets already reached.
pub async fn targets(d: &Dispatcher, event: &Event) -> Result<Vec<Arc<Webhook>>, StoreError> {
    let hooks = d
        .registry
        .matching(&event.event_type, event.clinic_id.as_deref());
    if hooks.is_empty() {
        return Ok(hooks);
    }
    let ids: Vec<&str> = hooks.iter().map(|w| w.id.as_str()).collect();
    let settled = d.store.delivered_targets(&event.id, &ids).await?;
    let skipped = settled.iter().filter(|s| **s).count();
    if skipped > 0 {
        d.metrics.redelivery_skips.inc_by(skipped as u64);
        tracing::info!(event_id = %event.id, skipped, "redelivered event: skipping targets already settled");
    }
    Ok(hooks
        .into_iter()
        .zip(settled)
        .filter(|(_, s)| !s)
        .map(|(w, _)| w)
        .collect())
}
