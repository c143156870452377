//! Webhooks declared in a file (`KIVIHOOK_WEBHOOKS_FILE`), applied at start for GitOps: the
//! Helm chart renders its `webhooks:` values into such a file.
//!
//! The format is `kivihook_core::definitions`' (YAML or JSON: definitions with the fields of
//! `POST /v1/webhooks` and optionally a `secret`), the same that `kivihook webhooks apply`
//! reads. Webhooks are matched by name: a declared one that exists is updated, a new one is
//! created; webhooks not in the file are left alone, since several replicas apply it at
//! start and only an operator's `apply` may decide to delete.

use std::path::Path;

use kivihook_core::definitions::{self, Definition, Reading};
use kivihook_core::signing::generate_secret;
use kivihook_core::webhook::{Webhook, WebhookSpec};
use kivihook_core::Store;

/// What applying a file did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
}

/// Parse a declared-webhooks file; errors name the entry and field.
fn parse(path: &Path) -> Result<Vec<Definition>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot be read ({e})"))?;
    definitions::parse(&text, Reading::Declaration).map_err(|e| e.to_string())
}

/// Check a file without applying it (at start, before anything connects).
pub fn check(path: &Path) -> Result<usize, String> {
    parse(path).map(|d| d.len())
}

/// Make the registry hold every declared webhook.
pub async fn apply(store: &dyn Store, path: &Path) -> Result<Applied, String> {
    let declared = parse(path)?;
    let (_, existing) = store.list_webhooks().await.map_err(|e| e.to_string())?;
    let mut applied = Applied::default();
    for Definition { spec, secret } in declared {
        let current = existing.iter().find(|w| w.name == spec.name);
        let webhook = match current {
            Some(w) => {
                let secret = secret.unwrap_or_else(|| w.secret.clone());
                if WebhookSpec::of(w) == spec && w.secret == secret {
                    applied.unchanged += 1;
                    continue;
                }
                applied.updated += 1;
                let mut updated = w.clone();
                updated.apply(spec);
                updated.secret = secret;
                updated
            }
            None => {
                applied.created += 1;
                // An id derived from the name: two replicas starting at once write the same
                // webhook instead of two.
                let id = declared_id(&spec.name);
                let mut w = Webhook::create(spec, secret.unwrap_or_else(generate_secret));
                w.id = id;
                w
            }
        };
        store
            .put_webhook(&webhook)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(applied)
}

fn declared_id(name: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x2d7c_99a1_51e4_4c0b_9f3e_7a61_0c5d_e8b2);
    format!(
        "wh_{}",
        uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).simple()
    )
}
