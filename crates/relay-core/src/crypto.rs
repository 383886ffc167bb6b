//! The master key and what it protects: sealing upstream secrets at rest (AES-256-GCM, bound to
//! their row by associated data), and the keyed hash under which relay keys are stored. The
//! hash's key is itself a sealed secret of the installation (see `bootstrap`), so rotating the
//! master key re-seals it and issued relay keys keep working.

use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("master key must be 32 bytes written as 64 hex characters")]
    BadMasterKey,
    #[error("cannot read or create the master key file {path}: {source}")]
    MasterKeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the master key file {path} can be read or written by other users (mode {mode:o}), so it \
         may have been exposed; restrict it with `chmod 600 {path}`, and consider \
         `claude-relay admin rotate-master-key`"
    )]
    ExposedMasterKey { path: String, mode: u32 },
    #[error("a sealed secret could not be opened (wrong master key or tampered row)")]
    Unseal,
}

/// A string that must never be printed: `Debug` shows a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A hint safe to show an operator: the last four characters.
    pub fn hint(&self) -> String {
        let tail: String = self
            .0
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

/// The 32-byte root secret of an installation.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(text.trim()).map_err(|_| CryptoError::BadMasterKey)?;
        let array: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadMasterKey)?;
        Ok(Self(array))
    }

    /// Reads the key file, or creates it with a fresh random key and mode 0600.
    /// Returns the key and whether it was created now. A key file that other users can read or
    /// write is refused: it may have been exposed, and using it silently would hide that.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), CryptoError> {
        let file_error = |source| CryptoError::MasterKeyFile {
            path: path.display().to_string(),
            source,
        };
        match Self::load(path) {
            Ok(key) => return Ok((key, false)),
            Err(CryptoError::MasterKeyFile { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let key = Self::generate();
        match key.write_file(path, true) {
            Ok(()) => Ok((key, true)),
            // Another process (the CLI, a second start) created it first: use theirs.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((Self::load(path)?, false))
            }
            Err(error) => Err(file_error(error)),
        }
    }

    /// A fresh random key from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The key as 64 hex characters, the form of the key file and `CLAUDE_RELAY_MASTER_KEY`.
    pub fn to_hex(&self) -> SecretString {
        SecretString::new(hex::encode(self.0))
    }

    /// Writes the key to `path` (mode 0600) and syncs it to disk. `create_new` refuses an
    /// existing file; otherwise one is replaced.
    pub fn write_file(&self, path: &Path, create_new: bool) -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true);
        if create_new {
            options.create_new(true);
        } else {
            options.create(true).truncate(true);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path)?;
        file.write_all(self.to_hex().expose().as_bytes())?;
        file.sync_all()
    }

    /// Reads an existing key file, refusing one that other users can read or write.
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let file_error = |source| CryptoError::MasterKeyFile {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(file_error)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = file.metadata().map_err(file_error)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(CryptoError::ExposedMasterKey {
                    path: path.display().to_string(),
                    mode,
                });
            }
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(file_error)?;
        Self::from_hex(&text)
    }

    fn derive(&self, label: &[u8]) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable_hmac());
        mac.update(label);
        mac.finalize().into_bytes().into()
    }

    pub fn secret_box(&self) -> SecretBox {
        SecretBox {
            cipher: Aes256Gcm::new(&self.derive(b"claude-relay/secret-box/v1").into()),
        }
    }

    /// The key relay keys were hashed under before it was stored on its own: derived from the
    /// master key. An installation's stored key-hash key starts as this value, so the hashes
    /// of keys issued before stay valid.
    pub fn initial_key_hash_key(&self) -> [u8; 32] {
        self.derive(b"claude-relay/key-hash/v1")
    }
}

// HMAC accepts keys of any length, so construction cannot fail.
fn unreachable_hmac() -> Hmac<Sha256> {
    unreachable!("hmac accepts any key length")
}

/// Seals secrets at rest. The associated data names the row and field, so a sealed value copied
/// into another row does not open.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox")
    }
}

impl SecretBox {
    /// Returns `nonce || ciphertext`.
    pub fn seal(&self, plaintext: &str, associated_data: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: associated_data.as_bytes(),
        };
        // AES-GCM encryption only fails for messages beyond 64 GiB.
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    pub fn open(&self, sealed: &[u8], associated_data: &str) -> Result<SecretString, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Unseal);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: associated_data.as_bytes(),
        };
        let plaintext = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| CryptoError::Unseal)?;
        String::from_utf8(plaintext)
            .map(SecretString::new)
            .map_err(|_| CryptoError::Unseal)
    }
}

/// Hashes relay keys with a secret key (HMAC-SHA256), so a leaked database cannot be used to
/// test guesses offline. Lookup is by digest equality in a hash map: the attacker controls the
/// key but not the digest, so the lookup's timing reveals nothing useful.
#[derive(Clone)]
pub struct KeyHasher {
    /// Keyed once; each digest clones this state instead of re-hashing the key pads.
    keyed: Hmac<Sha256>,
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHasher")
    }
}

impl KeyHasher {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            keyed: <Hmac<Sha256> as Mac>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable_hmac()),
        }
    }

    pub fn digest(&self, relay_key: &str) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        mac.update(relay_key.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// What an open installation seals and hashes with: the secret box of its master key, and the
/// hasher of its key-hash key (kept sealed in the database).
#[derive(Debug, Clone)]
pub struct Keyring {
    pub secret_box: SecretBox,
    pub key_hasher: KeyHasher,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secret_opens_only_with_its_row_binding() {
        let master = MasterKey([7; 32]);
        let secret_box = master.secret_box();
        let sealed = secret_box.seal("sk-ant-secret", "account:a1:api_key");
        assert!(!sealed.windows(6).any(|window| window == b"sk-ant"));
        assert_eq!(
            secret_box
                .open(&sealed, "account:a1:api_key")
                .unwrap()
                .expose(),
            "sk-ant-secret"
        );
        assert!(secret_box.open(&sealed, "account:a2:api_key").is_err());
        let other = MasterKey([8; 32]).secret_box();
        assert!(other.open(&sealed, "account:a1:api_key").is_err());
    }

    #[test]
    fn master_key_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let (first, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(created);
        let (second, created_again) = MasterKey::load_or_create(&path).unwrap();
        assert!(!created_again);
        assert_eq!(first.0, second.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_master_key_file_others_can_read_or_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        MasterKey::load_or_create(&path).unwrap();
        for loose in [0o640, 0o604, 0o620, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).unwrap();
            let error = MasterKey::load_or_create(&path).unwrap_err().to_string();
            assert!(
                error.contains(&format!("chmod 600 {}", path.display())),
                "{loose:o}: {error}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(MasterKey::load_or_create(&path).is_ok());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let secret = SecretString::new("sk-ant-very-secret".into());
        assert!(!format!("{secret:?}").contains("very"));
        assert_eq!(secret.hint(), "…cret");
        assert!(!format!("{:?}", MasterKey([1; 32])).contains("01"));
    }
}
