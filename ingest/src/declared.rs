//! Webhooks declared in a file (`KIVIHOOK_WEBHOOKS_FILE`), applied at start for GitOps: the
//! Helm chart renders its `webhooks:` values into such a file.
//!
//! The file is a JSON array of webhook definitions, each with the fields of
//! `POST /v1/webhooks` and optionally a `secret` (`whsec_…`). Webhooks are matched by name:
//! a declared one that exists is updated, a new one is created; webhooks not in the file are
//! left alone.

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;

use kivihook_core::signing::{generate_secret, SigningKey};
use kivihook_core::webhook::{check_templates, Webhook, WebhookSpec};
use kivihook_core::Store;

/// One declared webhook, parsed.
struct Declared {
    spec: WebhookSpec,
    secret: Option<String>,
}

/// What applying a file did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
}

/// Parse a declared-webhooks file; errors name the entry and field.
fn parse(path: &Path) -> Result<Vec<Declared>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot be read ({e})"))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| format!("is not valid JSON ({e})"))?;
    let items = value
        .as_array()
        .ok_or("must be a JSON array of webhook definitions")?;
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let mut item = item.clone();
        let secret = match item.as_object_mut().and_then(|o| o.remove("secret")) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                SigningKey::parse(&s).map_err(|e| format!("webhooks[{i}].secret: {e}"))?;
                Some(s)
            }
            Some(_) => return Err(format!("webhooks[{i}].secret: must be a whsec_ string")),
        };
        let spec = WebhookSpec::from_json(&item)
            .and_then(|spec| check_templates(&spec).map(|()| spec))
            .map_err(|e| format!("webhooks[{i}].{}: {}", e.field, e.message))?;
        if !names.insert(spec.name.clone()) {
            return Err(format!(
                "webhooks[{i}].name: `{}` is declared twice",
                spec.name
            ));
        }
        out.push(Declared { spec, secret });
    }
    Ok(out)
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
    for Declared { spec, secret } in declared {
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
