//! Opening an installation: the data directory, the master key and the database, created on
//! first use and kept private (directory 0700, files 0600); the keyring the installation's
//! secrets are sealed and hashed with; and the initial admin of a fresh installation.
//!
//! Every process that opens an installation holds a shared lock on `relay.lock`; a master-key
//! rotation (`rotation`) holds it exclusively, so nothing seals under a key being replaced.

pub mod rotation;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use base64::Engine;
use rand::RngCore;
use relay_store::{AdminRow, Store, StoreError};

use crate::clock::now_ms;
use crate::crypto::{CryptoError, KeyHasher, Keyring, MasterKey};
use crate::snapshot::account_secret_binding;

pub const DATABASE_FILE: &str = "relay.db";
pub const MASTER_KEY_FILE: &str = "master.key";
pub const LOCK_FILE: &str = "relay.lock";
pub const ADMIN_USERNAME: &str = "admin";
/// The installation secret relay keys are hashed under.
pub(crate) const KEY_HASH_KEY: &str = "key_hash_key";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make {path} private: {source}")]
    Permissions {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the master key does not open this installation's secrets; use the current key (after \
         `claude-relay admin rotate-master-key`, the new one)"
    )]
    WrongMasterKey,
    #[error(
        "the data directory {path} is in use by a running claude-relay (a server or another \
         command); stop it, then run this again"
    )]
    InUse { path: String },
    #[error(
        "{connections} database connections of running claude-relay servers use this database; \
         stop every instance, on every machine, then run this again"
    )]
    ServersRunning { connections: i64 },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot replace the master key file {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot hash the admin password: {0}")]
    PasswordHash(String),
}

/// An opened installation; the data directory stays locked (shared) while a clone lives.
#[derive(Debug, Clone)]
pub struct Installation {
    pub data_dir: PathBuf,
    pub store: Store,
    pub keyring: Keyring,
    /// True when this call created the master key (a brand-new installation).
    pub created: bool,
    _lock: Arc<DataDirLock>,
}

/// Opens the installation in `data_dir`, creating what is missing. `master_key_hex`, when given
/// (from the environment), takes the place of the key file; `database_url`, when given, is the
/// PostgreSQL database that takes the place of the SQLite file (several instances may share it,
/// and this directory).
pub async fn open_installation(
    data_dir: &Path,
    master_key_hex: Option<&str>,
    database_url: Option<&str>,
) -> Result<Installation, BootstrapError> {
    Ok(
        open_locked(data_dir, master_key_hex, database_url, Opening::Shared)
            .await?
            .0,
    )
}

/// [`open_installation`] for a server: on PostgreSQL its connections are known as a server's,
/// so that a master-key rotation on any machine refuses while it runs.
pub async fn open_installation_to_serve(
    data_dir: &Path,
    master_key_hex: Option<&str>,
    database_url: Option<&str>,
) -> Result<Installation, BootstrapError> {
    Ok(
        open_locked(data_dir, master_key_hex, database_url, Opening::Serve)
            .await?
            .0,
    )
}

/// How an installation is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opening {
    /// Beside servers and other commands.
    Shared,
    /// By a server.
    Serve,
    /// Alone (a rotation): refused while anything else has it open.
    Exclusive,
}

/// [`open_installation`] under a shared lock, or an exclusive one that fails at once if the
/// installation is open elsewhere (on PostgreSQL: also if a server anywhere uses the database);
/// also returns the master key.
pub(crate) async fn open_locked(
    data_dir: &Path,
    master_key_hex: Option<&str>,
    database_url: Option<&str>,
    opening: Opening,
) -> Result<(Installation, MasterKey), BootstrapError> {
    create_private_dir(data_dir).map_err(|source| BootstrapError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    restrict_to_owner(data_dir)?;
    let lock = DataDirLock::acquire(data_dir, opening == Opening::Exclusive)?;
    let (master_key, created) = match master_key_hex {
        Some(hex) => (MasterKey::from_hex(hex)?, false),
        None => MasterKey::load_or_create(&data_dir.join(MASTER_KEY_FILE))?,
    };
    let store = match database_url {
        Some(url) if opening == Opening::Serve => Store::connect_serving(url).await?,
        Some(url) => Store::connect(url).await?,
        None => {
            prepare_database_files(data_dir)?;
            Store::open(&data_dir.join(DATABASE_FILE)).await?
        }
    };
    if opening == Opening::Exclusive {
        let connections = store.serving_connections().await?;
        if connections > 0 {
            return Err(BootstrapError::ServersRunning { connections });
        }
    }
    let master_key = match master_key_hex {
        Some(_) => master_key,
        None => rotation::finish_interrupted_rotation(data_dir, &store, master_key).await?,
    };
    let keyring = open_keyring(&store, &master_key).await?;
    let installation = Installation {
        data_dir: data_dir.to_owned(),
        store,
        keyring,
        created,
        _lock: Arc::new(lock),
    };
    Ok((installation, master_key))
}

/// Associated data binding a secret of the installation to its name.
pub(crate) fn installation_secret_binding(name: &str) -> String {
    format!("installation:{name}")
}

/// The keyring of an installation. Relay keys are hashed under a key of their own, stored sealed
/// under the master key: rotating the master key re-seals it, and every issued key keeps working.
async fn open_keyring(store: &Store, master_key: &MasterKey) -> Result<Keyring, BootstrapError> {
    let secret_box = master_key.secret_box();
    let binding = installation_secret_binding(KEY_HASH_KEY);
    let key_hash_key = match store.installation_secret(KEY_HASH_KEY).await? {
        Some(sealed) => {
            let text = secret_box
                .open(&sealed, &binding)
                .map_err(|_| BootstrapError::WrongMasterKey)?;
            hex::decode(text.expose())
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or(BootstrapError::WrongMasterKey)?
        }
        None => {
            // The first open of a new installation, or of one from before this key was stored:
            // keep the key relay keys have been hashed under so far, provided this master key is
            // the one the existing secrets were sealed with.
            let accounts = store.list_accounts().await?;
            let opens = accounts.is_empty()
                || accounts.iter().any(|account| {
                    secret_box
                        .open(&account.secret_sealed, &account_secret_binding(&account.id))
                        .is_ok()
                });
            if !opens {
                return Err(BootstrapError::WrongMasterKey);
            }
            let key = master_key.initial_key_hash_key();
            store
                .insert_installation_secret_if_absent(
                    KEY_HASH_KEY,
                    &secret_box.seal(&hex::encode(key), &binding),
                )
                .await?;
            key
        }
    };
    Ok(Keyring {
        secret_box,
        key_hasher: KeyHasher::new(&key_hash_key),
    })
}

/// An advisory lock (flock) on the data directory's `relay.lock`, released when dropped or when
/// the process ends, however it ends.
#[derive(Debug)]
struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    /// A shared lock waits for a rotation to finish; an exclusive one fails at once if the
    /// installation is open elsewhere.
    fn acquire(data_dir: &Path, exclusive: bool) -> Result<Self, BootstrapError> {
        let path = data_dir.join(LOCK_FILE);
        let error = |source| BootstrapError::Lock {
            path: path.display().to_string(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&path).map_err(error)?;
        #[cfg(unix)]
        {
            use rustix::fs::{flock, FlockOperation};
            let operation = if exclusive {
                FlockOperation::NonBlockingLockExclusive
            } else {
                FlockOperation::LockShared
            };
            flock(&file, operation).map_err(|errno| {
                if errno == rustix::io::Errno::WOULDBLOCK {
                    BootstrapError::InUse {
                        path: data_dir.display().to_string(),
                    }
                } else {
                    error(errno.into())
                }
            })?;
        }
        Ok(Self { _file: file })
    }
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// Makes every file and directory the process creates private to its user (umask 077), so the
/// database's `-wal` and `-shm` files are 0600 like the rest. Called once, first thing, by the
/// binary.
pub fn make_new_files_private() {
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Creates the database file 0600 if it is missing (SQLite gives its `-wal` and `-shm` files the
/// database file's mode), and tightens the ones an older version left readable by others.
fn prepare_database_files(data_dir: &Path) -> Result<(), BootstrapError> {
    let database = data_dir.join(DATABASE_FILE);
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(&database)
        .map_err(|source| BootstrapError::Permissions {
            path: database.display().to_string(),
            source,
        })?;
    for suffix in ["", "-wal", "-shm"] {
        let path = data_dir.join(format!("{DATABASE_FILE}{suffix}"));
        if path.exists() {
            restrict_to_owner(&path)?;
        }
    }
    Ok(())
}

/// Takes group and other permissions off `path`, saying so when there were any.
fn restrict_to_owner(path: &Path) -> Result<(), BootstrapError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let error = |source| BootstrapError::Permissions {
            path: path.display().to_string(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(error)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            let private = mode & 0o700;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(private))
                .map_err(error)?;
            tracing::info!(
                path = %path.display(),
                from = format!("{mode:o}"),
                to = format!("{private:o}"),
                "tightened the permissions of the data directory or a file in it"
            );
        }
    }
    Ok(())
}

/// What [`ensure_admin`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminBootstrap {
    AlreadyPresent,
    /// Created with the password from the environment.
    CreatedWithGivenPassword,
    /// Created with this random password, to be shown once.
    CreatedWithRandomPassword(String),
}

/// Creates the initial admin if the installation has none.
pub async fn ensure_admin(
    store: &Store,
    password: Option<&str>,
) -> Result<AdminBootstrap, BootstrapError> {
    if store.count_admins().await? > 0 {
        return Ok(AdminBootstrap::AlreadyPresent);
    }
    let (password, outcome) = match password.filter(|password| !password.is_empty()) {
        Some(given) => (given.to_owned(), AdminBootstrap::CreatedWithGivenPassword),
        None => {
            let random = random_password();
            (
                random.clone(),
                AdminBootstrap::CreatedWithRandomPassword(random),
            )
        }
    };
    let admin = AdminRow {
        id: uuid::Uuid::new_v4().to_string(),
        username: ADMIN_USERNAME.to_owned(),
        password_hash: hash_password(&password)?,
        created_at_ms: now_ms(),
    };
    if store.insert_admin_if_absent(&admin).await? {
        Ok(outcome)
    } else {
        Ok(AdminBootstrap::AlreadyPresent)
    }
}

/// Sets a new password for an admin and signs all of their sessions out; returns false if the
/// user does not exist.
pub async fn reset_admin_password(
    store: &Store,
    username: &str,
    password: &str,
) -> Result<bool, BootstrapError> {
    Ok(store
        .set_admin_password(username, &hash_password(password)?)
        .await?)
}

pub fn random_password() -> String {
    let mut bytes = [0u8; 18];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// argon2id with the crate's default (OWASP-recommended) parameters.
pub fn hash_password(password: &str) -> Result<String, BootstrapError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| BootstrapError::PasswordHash(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHash, PasswordVerifier};

    #[tokio::test]
    async fn first_open_creates_everything_and_one_admin() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("nested/data");
        let installation = open_installation(&data_dir, None, None).await.unwrap();
        assert!(installation.created);
        assert!(data_dir.join(MASTER_KEY_FILE).exists());
        assert!(data_dir.join(DATABASE_FILE).exists());
        // Private even without the binary's umask: SQLite gives its WAL files the database's mode.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                |path: PathBuf| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(data_dir.clone()), 0o700);
            for file in [
                DATABASE_FILE,
                "relay.db-wal",
                "relay.db-shm",
                MASTER_KEY_FILE,
            ] {
                assert_eq!(mode(data_dir.join(file)), 0o600, "{file}");
            }
        }
        let AdminBootstrap::CreatedWithRandomPassword(password) =
            ensure_admin(&installation.store, None).await.unwrap()
        else {
            panic!("expected a random password");
        };
        assert!(password.len() >= 20);
        assert_eq!(
            ensure_admin(&installation.store, Some("other"))
                .await
                .unwrap(),
            AdminBootstrap::AlreadyPresent
        );
        let again = open_installation(&data_dir, None, None).await.unwrap();
        assert!(!again.created);
        let hash = hash_password("pw").unwrap();
        assert!(Argon2::default()
            .verify_password(b"pw", &PasswordHash::new(&hash).unwrap())
            .is_ok());
    }
}
