//! Relay keys: generation, the in-memory entry the request path sees, and resolution.

use std::sync::Arc;

use base64::Engine;
use rand::RngCore;

use crate::policy::KeyPolicy;

/// The prefix every relay key starts with, so it is recognisable in a config file or a leak scan.
pub const KEY_PREFIX: &str = "cr_";
const KEY_RANDOM_BYTES: usize = 32;

/// A key's identity as the request path sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub id: String,
    pub name: String,
    pub active: bool,
    /// Shared by the keys whose stored policies are the same.
    pub policy: Arc<KeyPolicy>,
}

/// A freshly generated key: the full secret (shown once), and what is stored.
#[derive(Debug)]
pub struct GeneratedKey {
    pub secret: String,
    pub hint: String,
}

/// Generates a key from the OS CSPRNG: `cr_` followed by 32 random bytes in base64url.
pub fn generate_key() -> GeneratedKey {
    let mut bytes = [0u8; KEY_RANDOM_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hint = key_hint(&secret);
    GeneratedKey { secret, hint }
}

/// How a key is listed: prefix and last four characters.
pub fn key_hint(secret: &str) -> String {
    let tail_start = secret
        .char_indices()
        .rev()
        .nth(3)
        .map_or(0, |(index, _)| index);
    format!("{KEY_PREFIX}…{}", &secret[tail_start..])
}

/// Why a presented key was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRejection {
    Missing,
    Unknown,
    Disabled,
    /// Too many failed attempts from this address; try again after this long.
    Throttled {
        retry_after_ms: i64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_long_and_distinct() {
        let first = generate_key();
        let second = generate_key();
        assert!(first.secret.starts_with("cr_"));
        assert_eq!(first.secret.len(), 3 + 43);
        assert_ne!(first.secret, second.secret);
        assert_eq!(
            first.hint,
            format!("cr_…{}", &first.secret[first.secret.len() - 4..])
        );
    }
}
