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
use kivihook_core::{Store, StoreError};

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
    apply_definitions(store, declared, &existing).await
}

/// What one definition does to the webhook of its name (`None`: there is none yet).
enum Plan {
    Unchanged,
    Update(Webhook),
    Create(Webhook),
}

fn plan(current: Option<&Webhook>, spec: &WebhookSpec, secret: Option<&String>) -> Plan {
    match current {
        Some(w) => {
            let secret = secret.cloned().unwrap_or_else(|| w.secret.clone());
            if WebhookSpec::of(w) == *spec && w.secret == secret {
                return Plan::Unchanged;
            }
            let mut updated = w.clone();
            updated.apply(spec.clone());
            updated.secret = secret;
            Plan::Update(updated)
        }
        None => {
            // An id derived from the name: two replicas starting at once write the same
            // webhook instead of two.
            let mut w = Webhook::create(
                spec.clone(),
                secret.cloned().unwrap_or_else(generate_secret),
            );
            w.id = declared_id(&spec.name);
            Plan::Create(w)
        }
    }
}

/// Apply definitions to a registry read as `existing`. Names are unique: when a webhook of a
/// declared name appeared after `existing` was read (an operator's create, or another
/// replica's apply), the store refuses to create a second one, and that webhook is updated
/// instead.
async fn apply_definitions(
    store: &dyn Store,
    declared: Vec<Definition>,
    existing: &[Webhook],
) -> Result<Applied, String> {
    let mut applied = Applied::default();
    for (index, Definition { spec, secret }) in declared.into_iter().enumerate() {
        let entry =
            |e: &dyn std::fmt::Display| format!("webhooks[{index}] (webhook `{}`): {e}", spec.name);
        let mut current = existing.iter().find(|w| w.name == spec.name).cloned();
        let mut tries = 0;
        loop {
            let (webhook, created) = match plan(current.as_ref(), &spec, secret.as_ref()) {
                Plan::Unchanged => {
                    applied.unchanged += 1;
                    break;
                }
                Plan::Update(w) => (w, false),
                Plan::Create(w) => (w, true),
            };
            match store.put_webhook(&webhook).await {
                Ok(_) if created => applied.created += 1,
                Ok(_) => applied.updated += 1,
                Err(StoreError::NameTaken { id, .. }) if created && tries < 3 => {
                    // Created by someone else since the registry was read: update that one
                    // (or, if it is already gone or renamed again, create anew).
                    tries += 1;
                    current = store
                        .get_webhook(&id)
                        .await
                        .map_err(|e| entry(&e))?
                        .filter(|w| w.name == spec.name);
                    continue;
                }
                Err(e) => return Err(entry(&e)),
            }
            break;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use kivihook_core::store::MemoryStore;

    fn definition(name: &str, url: &str) -> Definition {
        let spec = WebhookSpec::from_json(&serde_json::json!({
            "name": name, "url": url, "events": ["*"]
        }))
        .expect("a valid definition");
        Definition { spec, secret: None }
    }

    #[tokio::test]
    async fn a_name_taken_after_the_registry_was_read_updates_that_webhook() {
        let store = MemoryStore::new();
        // Created by someone else after this replica read the (then empty) registry.
        let theirs = Webhook::create(
            definition("CRM", "https://crm.example/old").spec,
            generate_secret(),
        );
        store.put_webhook(&theirs).await.unwrap();
        let applied = apply_definitions(
            &store,
            vec![definition("CRM", "https://crm.example/new")],
            &[],
        )
        .await
        .unwrap();
        assert_eq!(
            applied,
            Applied {
                updated: 1,
                ..Applied::default()
            }
        );
        let (_, all) = store.list_webhooks().await.unwrap();
        assert_eq!(all.len(), 1, "one webhook of the name, not two");
        assert_eq!(all[0].id, theirs.id);
        assert_eq!(all[0].url, "https://crm.example/new");
        assert_eq!(all[0].secret, theirs.secret, "its secret kept");
    }
}
