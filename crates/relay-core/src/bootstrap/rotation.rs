//! Rotating the master key (`claude-relay admin rotate-master-key`): every sealed secret is
//! re-sealed under a new key in one transaction, and the key file is replaced so that a crash at
//! any moment leaves the secrets sealed under a key that is on disk.
//!
//! With the key in `master.key`, in this order:
//! 1. the new key is written to `master.key.new` (0600) and synced, with the directory;
//! 2. one transaction re-seals every secret — account credentials and OAuth tokens, proxy URLs,
//!    pending sign-ins, the key-hash key — from the old key to the new one, and commits;
//! 3. `master.key.new` is renamed over `master.key`, and the directory synced.
//!
//! A crash before the commit leaves the old key current and a stray `master.key.new`; a crash
//! after it leaves the current key in `master.key.new`. The next open tells the two apart by
//! which key opens the stored key-hash key, and finishes the rename or removes the stray file
//! ([`finish_interrupted_rotation`]).
//!
//! With the key in `CLAUDE_RELAY_MASTER_KEY` there is no file to replace: the new key is handed
//! to the caller (who prints it) before the transaction commits, so the operator holds both keys
//! whatever happens.
//!
//! Relay keys are not re-hashed (their plaintext is not kept): they are hashed under the
//! key-hash key, which is re-sealed like any other secret, so issued keys keep working.
//!
//! The rotation holds the data directory's lock exclusively, so it refuses to run while a server
//! or another command has the installation open (they hold the old key in memory): stop the
//! relay, rotate, start it again. On PostgreSQL it also refuses while a server on any machine
//! has a connection to the database and schema (servers name their connections).

use std::path::Path;

use relay_store::{SealedField, SealedValue, Store, StoreError};

use super::{
    installation_secret_binding, open_locked, BootstrapError, Opening, KEY_HASH_KEY,
    MASTER_KEY_FILE,
};
use crate::crypto::{CryptoError, MasterKey};
use crate::snapshot::{account_proxy_binding, account_secret_binding, oauth_pending_binding};

/// The new key of a rotation under way.
pub const NEW_MASTER_KEY_FILE: &str = "master.key.new";

/// Rotates the master key of the installation in `data_dir`; returns how many secrets were
/// re-sealed. `master_key_hex` is the current key when it comes from the environment: then the
/// new key goes to `hand_over` before anything changes, and no file is written.
pub async fn rotate_master_key(
    data_dir: &Path,
    master_key_hex: Option<&str>,
    database_url: Option<&str>,
    hand_over: impl FnOnce(&MasterKey),
) -> Result<usize, BootstrapError> {
    let (installation, old_key) =
        open_locked(data_dir, master_key_hex, database_url, Opening::Exclusive).await?;
    let store = installation.store.clone();
    let new_key = MasterKey::generate();
    let pending = data_dir.join(NEW_MASTER_KEY_FILE);
    let in_file = master_key_hex.is_none();
    if in_file {
        new_key
            .write_file(&pending, false)
            .and_then(|()| sync_dir(data_dir))
            .map_err(|source| key_file_error(&pending, source))?;
    } else {
        hand_over(&new_key);
    }
    let resealed = match reseal(&store, &old_key, &new_key).await {
        Ok(count) => count,
        Err(error) => {
            // Whether or not the transaction got through, the next open would settle it; settle
            // it now.
            if in_file {
                finish_interrupted_rotation(data_dir, &store, old_key).await?;
            }
            store.close().await;
            return Err(error.into());
        }
    };
    if in_file {
        install_new_key_file(data_dir)?;
    }
    store.close().await;
    Ok(resealed)
}

/// Re-seals every secret in the store from `old_key` to `new_key`, in one transaction.
async fn reseal(
    store: &Store,
    old_key: &MasterKey,
    new_key: &MasterKey,
) -> Result<usize, StoreError> {
    let old_box = old_key.secret_box();
    let new_box = new_key.secret_box();
    store
        .reseal_all(|value| {
            let binding = binding(value);
            let plaintext = old_box.open(&value.sealed, &binding).ok()?;
            Some(new_box.seal(plaintext.expose(), &binding))
        })
        .await
}

/// The associated data a sealed value was sealed with.
fn binding(value: &SealedValue) -> String {
    match value.field {
        SealedField::AccountCredential => account_secret_binding(&value.row),
        SealedField::AccountProxy => account_proxy_binding(&value.row),
        SealedField::OAuthVerifier => oauth_pending_binding(&value.row),
        SealedField::Installation => installation_secret_binding(&value.row),
    }
}

/// Settles a rotation that stopped between writing `master.key.new` and renaming it: if the
/// store's secrets are sealed under the new key, it becomes `master.key`; otherwise the stray
/// file goes. Returns the current key.
pub(crate) async fn finish_interrupted_rotation(
    data_dir: &Path,
    store: &Store,
    current: MasterKey,
) -> Result<MasterKey, BootstrapError> {
    let pending = data_dir.join(NEW_MASTER_KEY_FILE);
    let candidate = match MasterKey::load(&pending) {
        Ok(key) => Some(key),
        Err(CryptoError::MasterKeyFile { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(current)
        }
        // Cut off while being written: the transaction never started.
        Err(CryptoError::BadMasterKey) => None,
        Err(error) => return Err(error.into()),
    };
    let sealed = store.installation_secret(KEY_HASH_KEY).await?;
    let committed = candidate.filter(|key| {
        sealed.as_ref().is_some_and(|sealed| {
            key.secret_box()
                .open(sealed, &installation_secret_binding(KEY_HASH_KEY))
                .is_ok()
        })
    });
    match committed {
        Some(new_key) => {
            install_new_key_file(data_dir)?;
            tracing::warn!("finished an interrupted master key rotation");
            Ok(new_key)
        }
        None => {
            match std::fs::remove_file(&pending) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(key_file_error(&pending, error)),
            }
            tracing::warn!("removed the key of a master key rotation that did not complete");
            Ok(current)
        }
    }
}

/// Renames `master.key.new` over `master.key` and syncs the directory. A file already gone was
/// renamed by another process opening the installation at the same moment.
fn install_new_key_file(data_dir: &Path) -> Result<(), BootstrapError> {
    let key_file = data_dir.join(MASTER_KEY_FILE);
    match std::fs::rename(data_dir.join(NEW_MASTER_KEY_FILE), &key_file) {
        Ok(()) => sync_dir(data_dir).map_err(|source| key_file_error(&key_file, source)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(key_file_error(&key_file, error)),
    }
}

fn key_file_error(path: &Path, source: std::io::Error) -> BootstrapError {
    BootstrapError::KeyFile {
        path: path.display().to_string(),
        source,
    }
}

/// Makes a rename or a new file in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{AdminService, NewAccountInput};
    use crate::bootstrap::{open_installation, Installation};
    use crate::oauth::OAuthProviders;
    use crate::policy::KeyPolicy;
    use crate::snapshot::SnapshotStore;

    fn key_file(data_dir: &Path) -> MasterKey {
        MasterKey::load(&data_dir.join(MASTER_KEY_FILE)).unwrap()
    }

    /// Opens (creating) the installation and adds an API-key account.
    async fn with_an_account(data_dir: &Path, master_key_hex: Option<&str>) -> Installation {
        let installation = open_installation(data_dir, master_key_hex, None)
            .await
            .unwrap();
        AdminService::new(installation.store.clone(), &installation.keyring)
            .add_account(NewAccountInput {
                platform: "anthropic".into(),
                name: "api".into(),
                api_key: "sk-api".into(),
                ..NewAccountInput::default()
            })
            .await
            .unwrap();
        installation
    }

    /// Every sealed value, checked to open with `key` (and with no other key given).
    async fn assert_sealed_under(store: &Store, key: &MasterKey, not: &MasterKey) -> usize {
        store
            .reseal_all(|value| {
                let binding = binding(value);
                assert!(not.secret_box().open(&value.sealed, &binding).is_err());
                key.secret_box()
                    .open(&value.sealed, &binding)
                    .ok()
                    .map(|_| value.sealed.clone())
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn rotation_reseals_every_secret_and_issued_keys_keep_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let installation = open_installation(&data_dir, None, None).await.unwrap();
        let admin = AdminService::new(installation.store.clone(), &installation.keyring);
        for (platform, name, proxy) in [
            (
                "anthropic",
                "api",
                Some("socks5://user:pass@proxy.example.com:1080".to_owned()),
            ),
            ("claude-oauth", "setup", None),
        ] {
            admin
                .add_account(NewAccountInput {
                    platform: platform.into(),
                    name: name.into(),
                    api_key: format!("sk-{name}"),
                    proxy,
                    ..NewAccountInput::default()
                })
                .await
                .unwrap();
        }
        admin
            .start_oauth("pending", "claude-oauth", &OAuthProviders::default())
            .await
            .unwrap();
        let issued = admin
            .create_key("alice", &KeyPolicy::default(), &Default::default())
            .await
            .unwrap();
        let digest = installation.keyring.key_hasher.digest(&issued.secret);
        installation.store.close().await;
        drop((admin, installation));
        let old_key = key_file(&data_dir);

        let resealed = rotate_master_key(&data_dir, None, None, |_| unreachable!("a key file"))
            .await
            .unwrap();
        // Two credentials, one proxy, one pending verifier, the key-hash key.
        assert_eq!(resealed, 5);
        let new_key = key_file(&data_dir);
        assert_ne!(new_key.to_hex(), old_key.to_hex());
        assert!(!data_dir.join(NEW_MASTER_KEY_FILE).exists());

        let reopened = open_installation(&data_dir, None, None).await.unwrap();
        assert_eq!(
            assert_sealed_under(&reopened.store, &new_key, &old_key).await,
            5
        );
        assert_eq!(reopened.keyring.key_hasher.digest(&issued.secret), digest);
        let snapshots =
            SnapshotStore::load(reopened.store.clone(), reopened.keyring.secret_box.clone())
                .await
                .unwrap();
        let snapshot = snapshots.current();
        assert_eq!(snapshot.accounts.len(), 2);
        assert!(snapshot.accounts[0].proxy.is_some() || snapshot.accounts[1].proxy.is_some());
        assert!(snapshot.keys.contains_key(&digest));
    }

    #[tokio::test]
    async fn the_next_open_finishes_a_committed_rotation_and_undoes_one_that_was_not() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let installation = with_an_account(&data_dir, None).await;
        let old_key = key_file(&data_dir);
        let pending = data_dir.join(NEW_MASTER_KEY_FILE);

        // Stopped before the commit (or while writing the new key): the old key stays.
        for stray in [
            MasterKey::generate().to_hex().expose().to_owned(),
            "0f1e".into(),
        ] {
            std::fs::write(&pending, stray).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let private = std::fs::Permissions::from_mode(0o600);
                std::fs::set_permissions(&pending, private).unwrap();
            }
            let reopened = open_installation(&data_dir, None, None).await.unwrap();
            assert!(!pending.exists());
            assert_eq!(key_file(&data_dir).to_hex(), old_key.to_hex());
            assert_sealed_under(&reopened.store, &old_key, &MasterKey::generate()).await;
        }

        // Stopped after the commit, before the rename: the new key takes its place.
        let new_key = MasterKey::generate();
        new_key.write_file(&pending, true).unwrap();
        reseal(&installation.store, &old_key, &new_key)
            .await
            .unwrap();
        installation.store.close().await;
        drop(installation);
        let reopened = open_installation(&data_dir, None, None).await.unwrap();
        assert!(!pending.exists());
        assert_eq!(key_file(&data_dir).to_hex(), new_key.to_hex());
        assert_sealed_under(&reopened.store, &new_key, &old_key).await;
    }

    #[tokio::test]
    async fn rotation_is_refused_while_the_installation_is_open_and_a_wrong_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let key = MasterKey::generate();
        let open = with_an_account(&data_dir, Some(key.to_hex().expose())).await;
        let refused = rotate_master_key(&data_dir, Some(key.to_hex().expose()), None, |_| {
            unreachable!("refused before a new key is made")
        })
        .await;
        assert!(
            matches!(refused, Err(BootstrapError::InUse { .. })),
            "{refused:?}"
        );
        drop(open);

        let other = MasterKey::generate();
        let wrong = open_installation(&data_dir, Some(other.to_hex().expose()), None).await;
        assert!(
            matches!(wrong, Err(BootstrapError::WrongMasterKey)),
            "{wrong:?}"
        );

        let mut handed_over = None;
        rotate_master_key(&data_dir, Some(key.to_hex().expose()), None, |new_key| {
            handed_over = Some(new_key.clone());
        })
        .await
        .unwrap();
        let new_key = handed_over.unwrap();
        let stale = open_installation(&data_dir, Some(key.to_hex().expose()), None).await;
        assert!(
            matches!(stale, Err(BootstrapError::WrongMasterKey)),
            "{stale:?}"
        );
        assert!(
            open_installation(&data_dir, Some(new_key.to_hex().expose()), None)
                .await
                .is_ok()
        );
        assert!(!data_dir.join(MASTER_KEY_FILE).exists());
    }
}
