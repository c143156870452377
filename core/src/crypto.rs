//! Secrets at rest: webhook signing secrets are sealed with AES-256-GCM under
//! `KIVIHOOK_SECRET_KEY` before they reach Redis, so a copy of Redis (a backup, a replica,
//! a `MONITOR`) does not hand out the keys that sign requests.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;

const SEALED_PREFIX: &str = "enc:v1:";
/// Sealed with associated data naming where the value belongs (webhook id and field): a
/// value copied to another webhook or field no longer opens.
const BOUND_PREFIX: &str = "enc:v2:";

/// A parsed 256-bit key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(***)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("must be 32 bytes in base64 (openssl rand -base64 32)")]
    BadKey,
    #[error("a stored secret cannot be decrypted: KIVIHOOK_SECRET_KEY is not the key it was sealed with")]
    WrongKey,
    #[error("a stored secret is damaged")]
    Damaged,
}

impl SecretBox {
    /// From the base64 of 32 bytes.
    pub fn from_base64(key: &str) -> Result<Self, CryptoError> {
        let bytes = STANDARD
            .decode(key.trim())
            .map_err(|_| CryptoError::BadKey)?;
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey)?;
        Ok(Self { cipher })
    }

    /// `enc:v1:<base64 of nonce ‖ ciphertext>`.
    pub fn seal(&self, plain: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plain.as_bytes())
            .expect("AES-GCM encryption of a short string cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{SEALED_PREFIX}{}", STANDARD.encode(out))
    }

    /// Open a sealed value; a value stored before a key was configured passes through.
    pub fn open(&self, stored: &str) -> Result<String, CryptoError> {
        let Some(b64) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_owned());
        };
        self.unseal(b64, b"")
    }

    /// Decrypt `nonce ‖ ciphertext` (base64) with `aad` as associated data (empty for values
    /// sealed before binding: AES-GCM without associated data is the same as with none).
    fn unseal(&self, b64: &str, aad: &[u8]) -> Result<String, CryptoError> {
        use aes_gcm::aead::Payload;
        let bytes = STANDARD.decode(b64).map_err(|_| CryptoError::Damaged)?;
        if bytes.len() < 12 + 16 {
            return Err(CryptoError::Damaged);
        }
        let (nonce, sealed) = bytes.split_at(12);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
            .map_err(|_| CryptoError::WrongKey)?;
        String::from_utf8(plain).map_err(|_| CryptoError::Damaged)
    }
}

impl SecretBox {
    /// `enc:v2:<base64 of nonce ‖ ciphertext>`, bound to `context` (`wh_…:auth`).
    pub fn seal_bound(&self, plain: &str, context: &str) -> String {
        use aes_gcm::aead::Payload;
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of a short string cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{BOUND_PREFIX}{}", STANDARD.encode(out))
    }

    /// Open a value sealed for `context`; one sealed before values were bound (`enc:v1:`)
    /// still opens (it is bound when next written), and a plain one passes through.
    pub fn open_bound(&self, stored: &str, context: &str) -> Result<String, CryptoError> {
        let Some(b64) = stored.strip_prefix(BOUND_PREFIX) else {
            return self.open(stored);
        };
        self.unseal(b64, context.as_bytes())
    }
}

/// Whether a stored value is sealed.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX) || stored.starts_with(BOUND_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "Y2hhbmdlLW1lLWtpdmlob29rLXNlY3JldC1rZXktMzI=";

    #[test]
    fn sealed_secrets_open_with_the_key_and_hide_the_plaintext() {
        let b = SecretBox::from_base64(KEY).unwrap();
        let sealed = b.seal("whsec_abc");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("whsec_abc"));
        assert_ne!(sealed, b.seal("whsec_abc"), "a fresh nonce each time");
        assert_eq!(b.open(&sealed).unwrap(), "whsec_abc");
        assert_eq!(b.open("whsec_plain").unwrap(), "whsec_plain");
    }

    #[test]
    fn a_bound_value_opens_only_where_it_was_sealed() {
        let b = SecretBox::from_base64(KEY).unwrap();
        let sealed = b.seal_bound("token-a", "wh_1:auth");
        assert!(is_sealed(&sealed) && !sealed.contains("token-a"));
        assert_eq!(b.open_bound(&sealed, "wh_1:auth").unwrap(), "token-a");
        // Swapped into another webhook, or another field: it does not open.
        assert_eq!(
            b.open_bound(&sealed, "wh_2:auth").unwrap_err(),
            CryptoError::WrongKey
        );
        assert!(b.open_bound(&sealed, "wh_1:secret").is_err());
        // Values sealed before binding still open.
        let legacy = b.seal("whsec_old");
        assert_eq!(b.open_bound(&legacy, "wh_1:secret").unwrap(), "whsec_old");
        assert_eq!(b.open_bound("plain", "wh_1:secret").unwrap(), "plain");
    }

    #[test]
    fn a_wrong_key_or_damage_is_an_error() {
        let b = SecretBox::from_base64(KEY).unwrap();
        let other = SecretBox::from_base64(&STANDARD.encode([7u8; 32])).unwrap();
        let sealed = b.seal("whsec_abc");
        assert_eq!(other.open(&sealed).unwrap_err(), CryptoError::WrongKey);
        assert_eq!(b.open("enc:v1:AAAA").unwrap_err(), CryptoError::Damaged);
        assert_eq!(
            SecretBox::from_base64("short").unwrap_err(),
            CryptoError::BadKey
        );
        assert_eq!(
            SecretBox::from_base64(&STANDARD.encode([1u8; 16])).unwrap_err(),
            CryptoError::BadKey
        );
    }
}
