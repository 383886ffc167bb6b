//! The installation's own secrets, and re-sealing every sealed value (master-key rotation).

use sqlx::Row;

use super::{on_db, Store};
use crate::records::{SealedField, SealedValue};
use crate::StoreError;

impl Store {
    /// A secret of the installation itself (sealed), by name.
    pub async fn installation_secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        on_db!(self, |pool, sql| Ok(sqlx::query_scalar(
            "SELECT sealed FROM installation_secrets WHERE name = $1"
        )
        .bind(name)
        .fetch_optional(pool)
        .await?))
    }

    /// Stores a secret of the installation unless one of that name exists.
    pub async fn insert_installation_secret_if_absent(
        &self,
        name: &str,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        on_db!(self, |pool, sql| {
            sqlx::query(
                "INSERT INTO installation_secrets (name, sealed) VALUES ($1, $2)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(sealed)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Replaces every sealed value in the database with `reseal(value)`, in one transaction;
    /// returns how many there were. If `reseal` returns `None` for any value, nothing changes.
    pub async fn reseal_all(
        &self,
        mut reseal: impl FnMut(&SealedValue) -> Option<Vec<u8>>,
    ) -> Result<usize, StoreError> {
        on_db!(self, |pool, sql| {
            let mut tx = pool.begin().await?;
            // Write first, so the transaction holds the write lock (the revision row's lock on
            // PostgreSQL, the database's on SQLite) before it reads: no other writer can add a
            // value sealed under the old key between the reads and the commit.
            sqlx::query("UPDATE revision SET value = value + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            let mut values = Vec::new();
            for row in sqlx::query("SELECT id, secret_sealed, proxy_sealed FROM accounts")
                .fetch_all(&mut *tx)
                .await?
            {
                let id: String = row.try_get("id")?;
                values.push(SealedValue {
                    field: SealedField::AccountCredential,
                    row: id.clone(),
                    sealed: row.try_get("secret_sealed")?,
                });
                if let Some(sealed) = row.try_get::<Option<Vec<u8>>, _>("proxy_sealed")? {
                    values.push(SealedValue {
                        field: SealedField::AccountProxy,
                        row: id,
                        sealed,
                    });
                }
            }
            for (field, query) in [
                (
                    SealedField::OAuthVerifier,
                    "SELECT name, verifier_sealed AS sealed FROM oauth_pending",
                ),
                (
                    SealedField::Installation,
                    "SELECT name, sealed FROM installation_secrets",
                ),
            ] {
                for row in sqlx::query(query).fetch_all(&mut *tx).await? {
                    values.push(SealedValue {
                        field,
                        row: row.try_get("name")?,
                        sealed: row.try_get("sealed")?,
                    });
                }
            }
            for value in &values {
                let resealed = reseal(value).ok_or_else(|| StoreError::Unsealable {
                    what: match value.field {
                        SealedField::AccountCredential => "credential",
                        SealedField::AccountProxy => "proxy URL",
                        SealedField::OAuthVerifier => "pending sign-in",
                        SealedField::Installation => "installation secret",
                    },
                    row: value.row.clone(),
                })?;
                let update = match value.field {
                    SealedField::AccountCredential => {
                        "UPDATE accounts SET secret_sealed = $1 WHERE id = $2"
                    }
                    SealedField::AccountProxy => {
                        "UPDATE accounts SET proxy_sealed = $1 WHERE id = $2"
                    }
                    SealedField::OAuthVerifier => {
                        "UPDATE oauth_pending SET verifier_sealed = $1 WHERE name = $2"
                    }
                    SealedField::Installation => {
                        "UPDATE installation_secrets SET sealed = $1 WHERE name = $2"
                    }
                };
                sqlx::query(update)
                    .bind(resealed)
                    .bind(&value.row)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(values.len())
        })
    }
}
