//! The secret key check: a value sealed with `KIVIHOOK_SECRET_KEY`, kept beside the registry,
//! so that a role started with another key stops at start instead of looking healthy while
//! it can open no secret (the dispatcher would retry loading the registry forever, delivering
//! nothing, while ingest answered `202` and `/readyz` said ready).
//!
//! The first role to start with a key writes the check, but only after the key has opened a
//! secret already sealed in the registry (if there is one): an installation that was running
//! before the check existed is not "claimed" by whichever key starts first.

use redis::AsyncCommands;
use serde_json::Value;

use super::redis_conn::AnyConn;
use super::StoreError;
use crate::crypto::{is_sealed, CryptoError, SecretBox};
use crate::keys::Keys;

/// What the check value holds, sealed.
const CHECK: &str = "kivihook secret key check v1";

/// Registry entries read per `HSCAN` while looking for a sealed secret.
const SCAN_COUNT: usize = 100;

/// Why a role must not run with its key.
#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
    /// The key is not the one this installation's secrets are sealed with; a sentence
    /// that follows the setting's name.
    #[error("{0}")]
    Mismatch(String),
    /// Redis could not be asked; try again.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn unavailable(e: redis::RedisError) -> KeyCheckError {
    KeyCheckError::Store(StoreError::Unavailable(e.to_string()))
}

/// Check `key` against the installation under `keys`, writing the check if there is none.
pub(super) async fn check(
    conn: &mut AnyConn,
    keys: &Keys,
    key: &SecretBox,
) -> Result<(), KeyCheckError> {
    let at = keys.secret_key_check();
    // Twice at most: when another role writes the check between our read and our write,
    // its check is the one to verify.
    for _ in 0..2 {
        let stored: Option<String> = conn.get(&at).await.map_err(unavailable)?;
        if let Some(stored) = stored {
            return verify(keys, key, &stored);
        }
        if let Some((sealed, context)) = first_sealed_secret(conn, keys).await? {
            if let Err(CryptoError::WrongKey) = key.open_bound(&sealed, &context) {
                return Err(KeyCheckError::Mismatch(format!(
                    "is not the key that sealed the webhook secrets stored in Redis under the prefix `{}`: start every role with the key they were sealed with",
                    keys.prefix()
                )));
            }
        }
        let written: bool = redis::cmd("SET")
            .arg(&at)
            .arg(key.seal(CHECK))
            .arg("NX")
            .query_async::<Option<String>>(conn)
            .await
            .map_err(unavailable)?
            .is_some();
        if written {
            tracing::info!(key = %at, "wrote the secret key check: roles started with another KIVIHOOK_SECRET_KEY will stop at start");
            return Ok(());
        }
    }
    Err(KeyCheckError::Store(StoreError::Unavailable(format!(
        "the secret key check at {at} changed while it was being written"
    ))))
}

fn verify(keys: &Keys, key: &SecretBox, stored: &str) -> Result<(), KeyCheckError> {
    match key.open(stored) {
        Ok(plain) if plain == CHECK => Ok(()),
        Err(CryptoError::WrongKey) => Err(KeyCheckError::Mismatch(format!(
            "is not the key this installation was started with (the check sealed at {} does not open with it): start every role with the same key",
            keys.secret_key_check()
        ))),
        _ => Err(KeyCheckError::Mismatch(format!(
            "the check sealed at {} is damaged; if this key is the right one, delete that Redis key and start again",
            keys.secret_key_check()
        ))),
    }
}

/// A sealed value from the registry, if it holds one.
/// A sealed value of the registry and the context it is bound to (a signing secret is
/// bound to `{id}:secret`; a value sealed before binding opens under any context).
async fn first_sealed_secret(
    conn: &mut AnyConn,
    keys: &Keys,
) -> Result<Option<(String, String)>, KeyCheckError> {
    let mut cursor: u64 = 0;
    loop {
        let (next, entries): (u64, Vec<String>) = redis::cmd("HSCAN")
            .arg(keys.webhooks())
            .arg(cursor)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(conn)
            .await
            .map_err(unavailable)?;
        // Field, value, field, value: the values are the webhooks' JSON.
        for json in entries.iter().skip(1).step_by(2) {
            if let Ok(v) = serde_json::from_str::<Value>(json) {
                let id = v["id"].as_str().unwrap_or_default();
                if let Some(secret) = v["secret"].as_str().filter(|s| is_sealed(s)) {
                    return Ok(Some((secret.to_owned(), format!("{id}:secret"))));
                }
                // Only a value sealed before binding opens without knowing its field.
                if let Some(sealed) = find_sealed(&v).filter(|s| s.starts_with("enc:v1:")) {
                    return Ok(Some((sealed.to_owned(), String::new())));
                }
            }
        }
        if next == 0 {
            return Ok(None);
        }
        cursor = next;
    }
}

fn find_sealed(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) if is_sealed(s) => Some(s),
        Value::Array(items) => items.iter().find_map(find_sealed),
        Value::Object(fields) => fields.values().find_map(find_sealed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_is_found_wherever_the_webhook_keeps_it() {
        let v = serde_json::json!({
            "name": "crm", "secret": "whsec_plain",
            "auth": {"type": "bearer", "token": "enc:v1:AAAA"}
        });
        assert_eq!(find_sealed(&v), Some("enc:v1:AAAA"));
        assert_eq!(find_sealed(&serde_json::json!({"secret": "whsec_x"})), None);
    }

    #[test]
    fn the_check_opens_only_with_its_key() {
        let keys = Keys::new("kh");
        let a = SecretBox::from_base64("Y2hhbmdlLW1lLWtpdmlob29rLXNlY3JldC1rZXktMzI=").unwrap();
        let b = SecretBox::from_base64("b3RoZXIta2V5LWZvci1zZWFsaW5nLXNlY3JldHMtMzI=").unwrap();
        let sealed = a.seal(CHECK);
        assert!(verify(&keys, &a, &sealed).is_ok());
        let e = verify(&keys, &b, &sealed).unwrap_err().to_string();
        assert!(e.contains("is not the key"), "{e}");
        assert!(verify(&keys, &a, &a.seal("something else")).is_err());
    }
}
