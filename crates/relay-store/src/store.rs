//! The SQLite store: open (creating the file and schema), CRUD of keys/accounts/admins, usage.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use crate::records::{
    AccountEvent, AccountRow, AdminRow, KeyMeta, KeyRow, KeySpend, NewAccount, NewKey, SealedField,
    SealedValue, UsageFilter, UsageRecord, UsageTotals,
};
use crate::schema::MIGRATIONS;
use crate::StoreError;

/// A handle to the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

/// Rows per multi-row usage insert (22 parameters each, well under SQLite's limit).
const USAGE_ROWS_PER_STATEMENT: usize = 32;

impl Store {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let url = format!("sqlite://{}", path.display());
        let open_error = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(open_error)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            // The CLI and the server write the same file; writers wait for each other briefly.
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .execute(&mut *tx)
            .await?;
        let current: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
                .fetch_one(&mut *tx)
                .await?;
        for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_version (version) VALUES (?)")
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The change counter of keys and accounts; bumped by triggers on every mutation.
    pub async fn revision(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM revision WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    // --- sealed secrets ---

    /// A secret of the installation itself (sealed), by name.
    pub async fn installation_secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT sealed FROM installation_secrets WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Stores a secret of the installation unless one of that name exists.
    pub async fn insert_installation_secret_if_absent(
        &self,
        name: &str,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO installation_secrets (name, sealed) VALUES (?, ?)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(sealed)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Replaces every sealed value in the database with `reseal(value)`, in one transaction;
    /// returns how many there were. If `reseal` returns `None` for any value, nothing changes.
    pub async fn reseal_all(
        &self,
        mut reseal: impl FnMut(&SealedValue) -> Option<Vec<u8>>,
    ) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Write first, so the transaction holds the write lock before it reads: no other writer
        // can add a value sealed under the old key between the reads and the commit.
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
        for (field, sql) in [
            (
                SealedField::OAuthVerifier,
                "SELECT name, verifier_sealed AS sealed FROM oauth_pending",
            ),
            (
                SealedField::Installation,
                "SELECT name, sealed FROM installation_secrets",
            ),
        ] {
            for row in sqlx::query(sql).fetch_all(&mut *tx).await? {
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
            let sql = match value.field {
                SealedField::AccountCredential => {
                    "UPDATE accounts SET secret_sealed = ? WHERE id = ?"
                }
                SealedField::AccountProxy => "UPDATE accounts SET proxy_sealed = ? WHERE id = ?",
                SealedField::OAuthVerifier => {
                    "UPDATE oauth_pending SET verifier_sealed = ? WHERE name = ?"
                }
                SealedField::Installation => {
                    "UPDATE installation_secrets SET sealed = ? WHERE name = ?"
                }
            };
            sqlx::query(sql)
                .bind(resealed)
                .bind(&value.row)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(values.len())
    }

    // --- admins ---

    pub async fn count_admins(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM admins")
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn admin_by_name(&self, username: &str) -> Result<Option<AdminRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id, username, password_hash, created_at_ms FROM admins WHERE username = ?",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(AdminRow {
                id: row.try_get("id")?,
                username: row.try_get("username")?,
                password_hash: row.try_get("password_hash")?,
                created_at_ms: row.try_get("created_at_ms")?,
            })
        })
        .transpose()
    }

    pub async fn insert_admin_session(
        &self,
        token_hash: &[u8],
        admin_id: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        // Expired sessions are cleared whenever a new one starts.
        sqlx::query("DELETE FROM admin_sessions WHERE expires_at_ms <= ?")
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO admin_sessions (token_hash, admin_id, created_at_ms, expires_at_ms)
             VALUES (?, ?, ?, ?)",
        )
        .bind(token_hash)
        .bind(admin_id)
        .bind(now_ms)
        .bind(expires_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The admin name of a live session.
    pub async fn admin_for_session(
        &self,
        token_hash: &[u8],
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT admins.username FROM admin_sessions JOIN admins ON admins.id = admin_sessions.admin_id
             WHERE admin_sessions.token_hash = ? AND admin_sessions.expires_at_ms > ?",
        )
        .bind(token_hash)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn delete_admin_session(&self, token_hash: &[u8]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM admin_sessions WHERE token_hash = ?")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Inserts an admin unless one with that name exists; returns whether it was inserted.
    pub async fn insert_admin_if_absent(&self, admin: &AdminRow) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "INSERT INTO admins (id, username, password_hash, created_at_ms) VALUES (?, ?, ?, ?)
             ON CONFLICT (username) DO NOTHING",
        )
        .bind(&admin.id)
        .bind(&admin.username)
        .bind(&admin.password_hash)
        .bind(admin.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Sets an admin's password and ends all of their sessions, in one transaction; returns
    /// false if no such admin exists.
    pub async fn set_admin_password(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query("UPDATE admins SET password_hash = ? WHERE username = ?")
            .bind(password_hash)
            .bind(username)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM admin_sessions WHERE admin_id IN (SELECT id FROM admins WHERE username = ?)",
        )
        .bind(username)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(result.rows_affected() == 1)
    }

    /// Ends every admin session; returns how many there were.
    pub async fn delete_all_admin_sessions(&self) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM admin_sessions")
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    // --- relay keys ---

    pub async fn insert_key(&self, key: &NewKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO relay_keys (id, name, key_hash, key_hint, status, policy, description,
                                     owner, tags, created_at_ms, updated_at_ms)
             VALUES (?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(&key.key_hash)
        .bind(&key.key_hint)
        .bind(&key.policy)
        .bind(&key.meta.description)
        .bind(&key.meta.owner)
        .bind(key.meta.tags.join(","))
        .bind(key.created_at_ms)
        .bind(key.created_at_ms)
        .execute(&self.pool)
        .await
        .map_err(|error| StoreError::from_insert(error, "key", &key.name))?;
        Ok(())
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, key_hash, key_hint, status, policy, description, owner, tags,
                    created_at_ms, updated_at_ms, deleted_at_ms
             FROM relay_keys ORDER BY created_at_ms, name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(KeyRow {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    key_hash: row.try_get("key_hash")?,
                    key_hint: row.try_get("key_hint")?,
                    status: row.try_get("status")?,
                    policy: row.try_get("policy")?,
                    meta: KeyMeta {
                        description: row.try_get("description")?,
                        owner: row.try_get("owner")?,
                        tags: row
                            .try_get::<String, _>("tags")?
                            .split(',')
                            .filter(|tag| !tag.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    },
                    created_at_ms: row.try_get("created_at_ms")?,
                    updated_at_ms: row.try_get("updated_at_ms")?,
                    deleted_at_ms: row.try_get("deleted_at_ms")?,
                })
            })
            .collect()
    }

    /// Replaces a key's policy by name; returns false if no such key exists.
    pub async fn set_key_policy(
        &self,
        name: &str,
        policy: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let result =
            sqlx::query("UPDATE relay_keys SET policy = ?, updated_at_ms = ? WHERE name = ?")
                .bind(policy)
                .bind(now_ms)
                .bind(name)
                .execute(&self.pool)
                .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Replaces a key's notes by name; returns false if no such key exists.
    pub async fn set_key_meta(
        &self,
        name: &str,
        meta: &KeyMeta,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE relay_keys SET description = ?, owner = ?, tags = ?, updated_at_ms = ? WHERE name = ?",
        )
        .bind(&meta.description)
        .bind(&meta.owner)
        .bind(meta.tags.join(","))
        .bind(now_ms)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Moves a key to the trash (`Some(now)`) or back out of it (`None`); returns false if no
    /// such key exists.
    pub async fn set_key_deleted(
        &self,
        name: &str,
        deleted_at_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE relay_keys SET deleted_at_ms = ?, updated_at_ms = ? WHERE name = ?",
        )
        .bind(deleted_at_ms)
        .bind(now_ms)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Removes for good the keys that went to the trash before `deleted_before_ms`; returns
    /// their names. Their usage records stay.
    pub async fn purge_keys(&self, deleted_before_ms: i64) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM relay_keys WHERE deleted_at_ms IS NOT NULL AND deleted_at_ms < ?",
        )
        .bind(deleted_before_ms)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM relay_keys WHERE deleted_at_ms IS NOT NULL AND deleted_at_ms < ?")
            .bind(deleted_before_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(names)
    }

    pub async fn insert_account_event(&self, event: &AccountEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO account_events (account_id, at_ms, kind, until_ms, evidence) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&event.account_id)
        .bind(event.at_ms)
        .bind(&event.kind)
        .bind(event.until_ms)
        .bind(&event.evidence)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An account's most recent health events, newest first.
    pub async fn account_events(
        &self,
        account_id: &str,
        limit: i64,
    ) -> Result<Vec<AccountEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT account_id, at_ms, kind, until_ms, evidence FROM account_events
             WHERE account_id = ? ORDER BY id DESC LIMIT ?",
        )
        .bind(account_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AccountEvent {
                    account_id: row.try_get("account_id")?,
                    at_ms: row.try_get("at_ms")?,
                    kind: row.try_get("kind")?,
                    until_ms: row.try_get("until_ms")?,
                    evidence: row.try_get("evidence")?,
                })
            })
            .collect()
    }

    /// Each account's cost since `since_ms`.
    pub async fn account_costs_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT account_id, {} AS cost FROM usage_records
             WHERE created_at_ms >= ? AND account_id IS NOT NULL GROUP BY account_id",
            safe_sum(ROW_COST)
        ))
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("account_id")?, row.try_get("cost")?)))
            .collect()
    }

    /// Every key's lifetime spend and first use.
    pub async fn key_spend(&self) -> Result<Vec<KeySpend>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT key_id, {} AS total_cost, {} AS total_tokens, MIN(created_at_ms) AS first_used
             FROM usage_records GROUP BY key_id",
            safe_sum(ROW_CHARGED),
            safe_sum(ROW_TOKENS)
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(KeySpend {
                    key_id: row.try_get("key_id")?,
                    total_cost_nano_usd: row.try_get("total_cost")?,
                    total_tokens: row.try_get("total_tokens")?,
                    first_used_ms: row.try_get("first_used")?,
                })
            })
            .collect()
    }

    /// `(key_id, at_ms, tokens, cost, model)` of every request since `since_ms`, oldest first:
    /// the history the calendar limits and sliding windows need after a restart.
    pub async fn recent_spend(
        &self,
        since_ms: i64,
    ) -> Result<Vec<(String, i64, i64, i64, String)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT key_id, created_at_ms, {ROW_TOKENS} AS tokens, {ROW_CHARGED} AS cost,
                    COALESCE(upstream_model, model) AS model
             FROM usage_records WHERE created_at_ms >= ? ORDER BY created_at_ms"
        ))
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("key_id")?,
                    row.try_get("created_at_ms")?,
                    row.try_get("tokens")?,
                    row.try_get("cost")?,
                    row.try_get("model")?,
                ))
            })
            .collect()
    }

    /// Sets a key's status by name; returns false if no such key exists.
    pub async fn set_key_status(
        &self,
        name: &str,
        status: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.set_status("relay_keys", name, status, now_ms).await
    }

    // --- accounts ---

    pub async fn insert_account(&self, account: &NewAccount) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO accounts (id, name, platform, base_url, priority, status, secret_sealed,
                                   secret_hint, settings, proxy_sealed, created_at_ms,
                                   updated_at_ms)
             VALUES (?, ?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?)",
        )
        .bind(&account.id)
        .bind(&account.name)
        .bind(&account.platform)
        .bind(&account.base_url)
        .bind(account.priority)
        .bind(&account.secret_sealed)
        .bind(&account.secret_hint)
        .bind(&account.settings)
        .bind(&account.proxy_sealed)
        .bind(account.created_at_ms)
        .bind(account.created_at_ms)
        .execute(&self.pool)
        .await
        .map_err(|error| StoreError::from_insert(error, "account", &account.name))?;
        Ok(())
    }

    pub async fn list_accounts(&self) -> Result<Vec<AccountRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, platform, base_url, priority, status, secret_sealed, secret_hint,
                    created_at_ms, updated_at_ms, health_reset_at_ms, settings, proxy_sealed
             FROM accounts ORDER BY priority, created_at_ms, name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AccountRow {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    platform: row.try_get("platform")?,
                    base_url: row.try_get("base_url")?,
                    priority: row.try_get("priority")?,
                    status: row.try_get("status")?,
                    secret_sealed: row.try_get("secret_sealed")?,
                    secret_hint: row.try_get("secret_hint")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    updated_at_ms: row.try_get("updated_at_ms")?,
                    health_reset_at_ms: row.try_get("health_reset_at_ms")?,
                    settings: row.try_get("settings")?,
                    proxy_sealed: row.try_get("proxy_sealed")?,
                })
            })
            .collect()
    }

    /// Replaces an account's scheduling settings by name; returns false if no such account.
    pub async fn set_account_settings(
        &self,
        name: &str,
        settings: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let result =
            sqlx::query("UPDATE accounts SET settings = ?, updated_at_ms = ? WHERE name = ?")
                .bind(settings)
                .bind(now_ms)
                .bind(name)
                .execute(&self.pool)
                .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Sets or clears an account's sealed proxy URL by name; returns false if no such account.
    pub async fn set_account_proxy(
        &self,
        name: &str,
        sealed: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let result =
            sqlx::query("UPDATE accounts SET proxy_sealed = ?, updated_at_ms = ? WHERE name = ?")
                .bind(sealed)
                .bind(now_ms)
                .bind(name)
                .execute(&self.pool)
                .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Replaces an account's sealed credential (refreshed tokens).
    pub async fn update_account_secret(
        &self,
        account_id: &str,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE accounts SET secret_sealed = ? WHERE id = ?")
            .bind(sealed)
            .bind(account_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Remembers a started OAuth authorization until its code comes back.
    pub async fn save_oauth_pending(
        &self,
        name: &str,
        state: &str,
        verifier_sealed: &[u8],
        settings_json: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oauth_pending (name, state, verifier_sealed, settings, created_at_ms)
             VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (name) DO UPDATE SET state = excluded.state,
                 verifier_sealed = excluded.verifier_sealed, settings = excluded.settings,
                 created_at_ms = excluded.created_at_ms",
        )
        .bind(name)
        .bind(state)
        .bind(verifier_sealed)
        .bind(settings_json)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes (and forgets) a started authorization: `(state, verifier_sealed, settings)`.
    pub async fn take_oauth_pending(
        &self,
        name: &str,
    ) -> Result<Option<(String, Vec<u8>, String)>, StoreError> {
        let row = sqlx::query(
            "DELETE FROM oauth_pending WHERE name = ? RETURNING state, verifier_sealed, settings",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok((
                row.try_get("state")?,
                row.try_get("verifier_sealed")?,
                row.try_get("settings")?,
            ))
        })
        .transpose()
    }

    /// Stamps an operator's reset of an account's health marks; running servers clear them.
    pub async fn reset_account_health(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE accounts SET health_reset_at_ms = ?, updated_at_ms = ? WHERE name = ?",
        )
        .bind(now_ms)
        .bind(now_ms)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Sets an account's status by name; returns false if no such account exists.
    pub async fn set_account_status(
        &self,
        name: &str,
        status: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.set_status("accounts", name, status, now_ms).await
    }

    async fn set_status(
        &self,
        table: &'static str,
        name: &str,
        status: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let sql = format!("UPDATE {table} SET status = ?, updated_at_ms = ? WHERE name = ?");
        let result = sqlx::query(&sql)
            .bind(status)
            .bind(now_ms)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    // --- usage ---

    /// Inserts usage records in one transaction.
    ///
    /// Rows go in through exactly two statement shapes, a [`USAGE_ROWS_PER_STATEMENT`]-row insert
    /// and a one-row insert, so both stay prepared in the connection's statement cache. (A
    /// statement per batch size would be parsed anew for every batch, or, if cached, hold a large
    /// prepared program per size: that grew the process by ~100 MiB under load.)
    pub async fn insert_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut chunks = records.chunks_exact(USAGE_ROWS_PER_STATEMENT);
        for chunk in chunks.by_ref() {
            usage_insert(chunk).build().execute(&mut *tx).await?;
        }
        for record in chunks.remainder() {
            usage_insert(std::slice::from_ref(record))
                .build()
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Totals over the usage records the filter selects.
    pub async fn usage_totals(&self, filter: &UsageFilter) -> Result<UsageTotals, StoreError> {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "SELECT COUNT(*) AS requests,
                    {} AS input_tokens,
                    {} AS output_tokens,
                    {} AS cache_5m,
                    {} AS cache_1h,
                    {} AS cache_read,
                    {} AS cost,
                    COALESCE(SUM(cost_nano_usd IS NULL), 0) AS unpriced,
                    COALESCE(SUM(outcome = 'partial'), 0) AS partial,
                    COALESCE(SUM(outcome NOT IN ('ok', 'partial')), 0) AS failed
             FROM usage_records WHERE 1 = 1",
            safe_sum("MAX(input_tokens, 0)"),
            safe_sum("MAX(output_tokens, 0)"),
            safe_sum("MAX(cache_creation_5m_tokens, 0)"),
            safe_sum("MAX(cache_creation_1h_tokens, 0)"),
            safe_sum("MAX(cache_read_tokens, 0)"),
            safe_sum(ROW_COST),
        ));
        if let Some(key_id) = &filter.key_id {
            builder.push(" AND key_id = ").push_bind(key_id);
        }
        if let Some(since_ms) = filter.since_ms {
            builder.push(" AND created_at_ms >= ").push_bind(since_ms);
        }
        let row = builder.build().fetch_one(&self.pool).await?;
        let cache_5m: i64 = row.try_get("cache_5m")?;
        let cache_1h: i64 = row.try_get("cache_1h")?;
        Ok(UsageTotals {
            requests: row.try_get("requests")?,
            input_tokens: row.try_get("input_tokens")?,
            output_tokens: row.try_get("output_tokens")?,
            cache_creation_input_tokens: cache_5m.saturating_add(cache_1h),
            cache_creation_5m_input_tokens: cache_5m,
            cache_creation_1h_input_tokens: cache_1h,
            cache_read_input_tokens: row.try_get("cache_read")?,
            cost_nano_usd: row.try_get("cost")?,
            unpriced_requests: row.try_get("unpriced")?,
            partial_requests: row.try_get("partial")?,
            failed_requests: row.try_get("failed")?,
        })
    }

    /// The most recent usage records, newest first (for tests and the CLI's detail view).
    pub async fn recent_usage(
        &self,
        filter: &UsageFilter,
        limit: i64,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT request_id, created_at_ms, key_id, account_id, platform, endpoint, model,
                    upstream_model, stream, input_tokens, output_tokens, cache_creation_5m_tokens,
                    cache_creation_1h_tokens, cache_read_tokens, reasoning_tokens, cost_nano_usd,
                    charged_nano_usd, status, outcome, error_kind, attempts, latency_ms, ttfb_ms,
                    user_agent
             FROM usage_records WHERE 1 = 1",
        );
        if let Some(key_id) = &filter.key_id {
            builder.push(" AND key_id = ").push_bind(key_id);
        }
        if let Some(since_ms) = filter.since_ms {
            builder.push(" AND created_at_ms >= ").push_bind(since_ms);
        }
        builder.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
        let rows = builder.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(UsageRecord {
                    request_id: row.try_get("request_id")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    key_id: row.try_get("key_id")?,
                    account_id: row.try_get("account_id")?,
                    platform: row.try_get("platform")?,
                    endpoint: row.try_get("endpoint")?,
                    model: row.try_get("model")?,
                    upstream_model: row.try_get("upstream_model")?,
                    stream: row.try_get("stream")?,
                    usage: relay_protocol::Usage {
                        input_tokens: to_u64(row.try_get("input_tokens")?),
                        output_tokens: to_u64(row.try_get("output_tokens")?),
                        cache_creation_5m_tokens: to_u64(row.try_get("cache_creation_5m_tokens")?),
                        cache_creation_1h_tokens: to_u64(row.try_get("cache_creation_1h_tokens")?),
                        cache_read_tokens: to_u64(row.try_get("cache_read_tokens")?),
                        reasoning_tokens: to_u64(row.try_get("reasoning_tokens")?),
                    },
                    cost_nano_usd: row.try_get("cost_nano_usd")?,
                    charged_nano_usd: row.try_get("charged_nano_usd")?,
                    status: u16::try_from(row.try_get::<i64, _>("status")?).unwrap_or(0),
                    outcome: row.try_get("outcome")?,
                    error_kind: row.try_get("error_kind")?,
                    attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
                    latency_ms: row.try_get("latency_ms")?,
                    ttfb_ms: row.try_get("ttfb_ms")?,
                    user_agent: row.try_get("user_agent")?,
                })
            })
            .collect()
    }
}

/// A multi-row insert of these records; its SQL text depends only on how many there are.
fn usage_insert(records: &[UsageRecord]) -> QueryBuilder<'_, Sqlite> {
    let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
        "INSERT INTO usage_records (request_id, created_at_ms, key_id, account_id, platform,
         endpoint, model, upstream_model, stream, input_tokens, output_tokens,
         cache_creation_5m_tokens, cache_creation_1h_tokens, cache_read_tokens, reasoning_tokens,
         cost_nano_usd, charged_nano_usd, status, outcome, error_kind, attempts, latency_ms,
         ttfb_ms, user_agent) ",
    );
    builder.push_values(records, |mut row, record| {
        row.push_bind(&record.request_id)
            .push_bind(record.created_at_ms)
            .push_bind(&record.key_id)
            .push_bind(&record.account_id)
            .push_bind(&record.platform)
            .push_bind(&record.endpoint)
            .push_bind(&record.model)
            .push_bind(&record.upstream_model)
            .push_bind(record.stream)
            .push_bind(to_i64(record.usage.input_tokens))
            .push_bind(to_i64(record.usage.output_tokens))
            .push_bind(to_i64(record.usage.cache_creation_5m_tokens))
            .push_bind(to_i64(record.usage.cache_creation_1h_tokens))
            .push_bind(to_i64(record.usage.cache_read_tokens))
            .push_bind(to_i64(record.usage.reasoning_tokens))
            .push_bind(record.cost_nano_usd)
            .push_bind(record.charged_nano_usd)
            .push_bind(i64::from(record.status))
            .push_bind(&record.outcome)
            .push_bind(&record.error_kind)
            .push_bind(i64::from(record.attempts))
            .push_bind(record.latency_ms)
            .push_bind(record.ttfb_ms)
            .push_bind(&record.user_agent);
    });
    builder
}

/// A row's tokens, each kind clamped to what one response can hold, so that no stored row (even
/// one written before usage was bounded) can overflow a sum and stop the seeding at start.
const ROW_TOKENS: &str = "(MIN(MAX(input_tokens, 0), 1000000000) + MIN(MAX(output_tokens, 0), 1000000000) \
     + MIN(MAX(cache_creation_5m_tokens, 0), 1000000000) + MIN(MAX(cache_creation_1h_tokens, 0), 1000000000) \
     + MIN(MAX(cache_read_tokens, 0), 1000000000))";
/// A row's cost, clamped at $1B.
const ROW_COST: &str = "MIN(MAX(COALESCE(cost_nano_usd, 0), 0), 1000000000000000000)";
/// What a row charged the key's cost limits: its cost, or its stand-in price if unpriced.
const ROW_CHARGED: &str =
    "MIN(MAX(COALESCE(charged_nano_usd, cost_nano_usd, 0), 0), 1000000000000000000)";

/// A sum that cannot fail: SQLite's `SUM` errors on integer overflow, `TOTAL` is a float that
/// does not, capped below `i64::MAX` and read back as an integer.
fn safe_sum(expression: &str) -> String {
    format!("CAST(MIN(TOTAL({expression}), 9.2e18) AS INTEGER)")
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rows_with_impossible_numbers_cannot_break_the_sums_read_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("relay.db")).await.unwrap();
        // What an upstream reporting u64::MAX tokens left behind before usage was bounded,
        // including a value SQLite had already turned into a REAL.
        for (tokens, cost) in [
            ("9223372036854775807", "9223372036854775807"),
            ("9223372036854775807", "-9223372036854775808"),
            ("1.8e19", "1.8e19"),
            ("12", "300"),
        ] {
            sqlx::query(&format!(
                "INSERT INTO usage_records (request_id, created_at_ms, key_id, platform, endpoint,
                     model, stream, input_tokens, output_tokens, cache_creation_5m_tokens,
                     cache_creation_1h_tokens, cache_read_tokens, cost_nano_usd, status, outcome,
                     attempts, latency_ms)
                 VALUES ('r', 10, 'k', 'anthropic', 'messages', 'm', 0, {tokens}, {tokens},
                     {tokens}, {tokens}, {tokens}, {cost}, 200, 'ok', 1, 1)"
            ))
            .execute(&store.pool)
            .await
            .unwrap();
        }
        let spend = store.key_spend().await.unwrap();
        assert_eq!(spend.len(), 1);
        assert!(spend[0].total_cost_nano_usd > 0);
        assert!(spend[0].total_tokens > 15_000_000_000);
        let recent = store.recent_spend(0).await.unwrap();
        assert_eq!(recent.len(), 4);
        assert!(recent
            .iter()
            .all(|(_, _, tokens, cost, _)| *tokens >= 0 && *cost >= 0));
        store.account_costs_since(0).await.unwrap();
        let totals = store.usage_totals(&UsageFilter::default()).await.unwrap();
        assert_eq!(totals.requests, 4);
        assert!(totals.input_tokens > 0 && totals.cost_nano_usd > 0);
    }

    #[tokio::test]
    async fn mutations_bump_the_revision_and_names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("relay.db")).await.unwrap();
        let before = store.revision().await.unwrap();
        let key = NewKey {
            id: "k1".into(),
            name: "alice".into(),
            key_hash: vec![1; 32],
            key_hint: "cr_…abcd".into(),
            policy: "{}".into(),
            meta: KeyMeta::default(),
            created_at_ms: 1,
        };
        store.insert_key(&key).await.unwrap();
        let after_insert = store.revision().await.unwrap();
        assert!(after_insert > before);
        let duplicate = NewKey {
            id: "k2".into(),
            key_hash: vec![2; 32],
            ..key.clone()
        };
        assert!(matches!(
            store.insert_key(&duplicate).await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(store.set_key_status("alice", "disabled", 2).await.unwrap());
        assert!(!store.set_key_status("nobody", "disabled", 2).await.unwrap());
        assert!(store.revision().await.unwrap() > after_insert);
        assert_eq!(store.list_keys().await.unwrap()[0].status, "disabled");
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_does_not_rerun_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        {
            let store = Store::open(&path).await.unwrap();
            store
                .insert_key(&NewKey {
                    id: "k1".into(),
                    name: "alice".into(),
                    key_hash: vec![1; 32],
                    key_hint: "x".into(),
                    policy: "{}".into(),
                    meta: KeyMeta::default(),
                    created_at_ms: 1,
                })
                .await
                .unwrap();
            store.close().await;
        }
        let store = Store::open(&path).await.unwrap();
        assert_eq!(store.list_keys().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn accounts_from_before_served_model_defaults_keep_serving_every_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        {
            // An installation at schema 10: migration 11 not yet applied.
            let store = Store::open(&path).await.unwrap();
            sqlx::raw_sql(
                "DELETE FROM schema_version WHERE version = 11;
                 ALTER TABLE usage_records DROP COLUMN reasoning_tokens;
                 INSERT INTO accounts (id, name, platform, base_url, priority, status, secret_sealed,
                     secret_hint, created_at_ms, updated_at_ms, settings)
                 VALUES ('a1', 'open', 'anthropic', NULL, 1, 'active', x'00', 'h', 1, 1, '{\"weight\":2}'),
                        ('a2', 'listed', 'anthropic', NULL, 1, 'active', x'00', 'h', 1, 1,
                         '{\"models\":[\"claude-sonnet-*\"]}');",
            )
            .execute(&store.pool)
            .await
            .unwrap();
            store.close().await;
        }
        let store = Store::open(&path).await.unwrap();
        let settings: Vec<(String, String, Option<i64>)> = sqlx::query_as(
            "SELECT name, json_extract(settings, '$.models'), json_extract(settings, '$.weight')
             FROM accounts ORDER BY name",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert_eq!(
            settings,
            vec![
                (
                    "listed".to_owned(),
                    r#"["claude-sonnet-*"]"#.to_owned(),
                    None
                ),
                ("open".to_owned(), r#"["*"]"#.to_owned(), Some(2)),
            ],
            "a list is kept; no list becomes every model; other settings stay"
        );
        // The new usage column exists again.
        sqlx::query("SELECT reasoning_tokens FROM usage_records")
            .fetch_all(&store.pool)
            .await
            .unwrap();
    }
}
