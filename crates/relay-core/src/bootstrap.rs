//! Opening an installation: the data directory, the master key and the database, created on
//! first use and kept private (directory 0700, files 0600); and the initial admin of a fresh
//! installation.

use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use base64::Engine;
use rand::RngCore;
use relay_store::{AdminRow, Store, StoreError};

use crate::clock::now_ms;
use crate::crypto::{CryptoError, MasterKey};

pub const DATABASE_FILE: &str = "relay.db";
pub const MASTER_KEY_FILE: &str = "master.key";
pub const ADMIN_USERNAME: &str = "admin";

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
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot hash the admin password: {0}")]
    PasswordHash(String),
}

/// An opened installation.
#[derive(Debug, Clone)]
pub struct Installation {
    pub data_dir: PathBuf,
    pub store: Store,
    pub master_key: MasterKey,
    /// True when this call created the master key (a brand-new installation).
    pub created: bool,
}

/// Opens the installation in `data_dir`, creating what is missing. `master_key_hex`, when given
/// (from the environment), takes the place of the key file.
pub async fn open_installation(
    data_dir: &Path,
    master_key_hex: Option<&str>,
) -> Result<Installation, BootstrapError> {
    create_private_dir(data_dir).map_err(|source| BootstrapError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    restrict_to_owner(data_dir)?;
    prepare_database_files(data_dir)?;
    let (master_key, created) = match master_key_hex {
        Some(hex) => (MasterKey::from_hex(hex)?, false),
        None => MasterKey::load_or_create(&data_dir.join(MASTER_KEY_FILE))?,
    };
    let store = Store::open(&data_dir.join(DATABASE_FILE)).await?;
    Ok(Installation {
        data_dir: data_dir.to_owned(),
        store,
        master_key,
        created,
    })
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
        let installation = open_installation(&data_dir, None).await.unwrap();
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
        let again = open_installation(&data_dir, None).await.unwrap();
        assert!(!again.created);
        let hash = hash_password("pw").unwrap();
        assert!(Argon2::default()
            .verify_password(b"pw", &PasswordHash::new(&hash).unwrap())
            .is_ok());
    }
}
