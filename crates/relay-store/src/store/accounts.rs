//! Upstream accounts, their pending sign-ins and their health events.

use sqlx::Row;

use super::{ids_json, on_db, Rows, Store};
use crate::records::{AccountEvent, AccountRow, NewAccount};
use crate::StoreError;

impl Store {
    pub async fn insert_account(&self, account: &NewAccount) -> Result<(), StoreError> {
        on_db!(self, |pool, sql| {
            sqlx::query(
                "INSERT INTO accounts (id, name, platform, base_url, priority, status, secret_sealed,
                                       secret_hint, settings, proxy_sealed, created_at_ms,
                                       updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9, $10, $10)",
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
            .execute(pool)
            .await
            .map_err(|error| StoreError::from_insert(error, "account", &account.name))?;
            Ok(())
        })
    }

    pub async fn list_accounts(&self) -> Result<Vec<AccountRow>, StoreError> {
        self.accounts(Rows::All).await
    }

    /// The selected accounts, by priority.
    pub async fn accounts(&self, rows: Rows<'_>) -> Result<Vec<AccountRow>, StoreError> {
        on_db!(self, |pool, sql| {
            let statement = format!(
                "SELECT id, name, platform, base_url, priority, status, secret_sealed, secret_hint,
                        created_at_ms, updated_at_ms, health_reset_at_ms, settings, proxy_sealed
                 FROM accounts {} ORDER BY priority, created_at_ms, name",
                sql.rows_filter(&rows)
            );
            let mut query = sqlx::query(&statement);
            if let Rows::Ids(ids) = &rows {
                query = query.bind(ids_json(ids));
            }
            let rows = query.fetch_all(pool).await?;
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
        })
    }

    /// Replaces an account's scheduling settings by name; returns false if no such account.
    pub async fn set_account_settings(
        &self,
        name: &str,
        settings: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        on_db!(self, |pool, sql| {
            let result = sqlx::query(
                "UPDATE accounts SET settings = $1, updated_at_ms = $2 WHERE name = $3",
            )
            .bind(settings)
            .bind(now_ms)
            .bind(name)
            .execute(pool)
            .await?;
            Ok(result.rows_affected() == 1)
        })
    }

    /// Sets or clears an account's sealed proxy URL by name; returns false if no such account.
    pub async fn set_account_proxy(
        &self,
        name: &str,
        sealed: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        on_db!(self, |pool, sql| {
            let result = sqlx::query(
                "UPDATE accounts SET proxy_sealed = $1, updated_at_ms = $2 WHERE name = $3",
            )
            .bind(sealed)
            .bind(now_ms)
            .bind(name)
            .execute(pool)
            .await?;
            Ok(result.rows_affected() == 1)
        })
    }

    /// Replaces an account's sealed credential (refreshed tokens).
    pub async fn update_account_secret(
        &self,
        account_id: &str,
        sealed: &[u8],
    ) -> Result<(), StoreError> {
        on_db!(self, |pool, sql| {
            sqlx::query("UPDATE accounts SET secret_sealed = $1 WHERE id = $2")
                .bind(sealed)
                .bind(account_id)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// Stamps an operator's reset of an account's health marks; running servers clear them.
    pub async fn reset_account_health(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        on_db!(self, |pool, sql| {
            let result = sqlx::query(
                "UPDATE accounts SET health_reset_at_ms = $1, updated_at_ms = $1 WHERE name = $2",
            )
            .bind(now_ms)
            .bind(name)
            .execute(pool)
            .await?;
            Ok(result.rows_affected() == 1)
        })
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

    /// Remembers a started OAuth authorization until its code comes back.
    pub async fn save_oauth_pending(
        &self,
        name: &str,
        state: &str,
        verifier_sealed: &[u8],
        settings_json: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        on_db!(self, |pool, sql| {
            sqlx::query(
                "INSERT INTO oauth_pending (name, state, verifier_sealed, settings, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (name) DO UPDATE SET state = excluded.state,
                     verifier_sealed = excluded.verifier_sealed, settings = excluded.settings,
                     created_at_ms = excluded.created_at_ms",
            )
            .bind(name)
            .bind(state)
            .bind(verifier_sealed)
            .bind(settings_json)
            .bind(now_ms)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Takes (and forgets) a started authorization: `(state, verifier_sealed, settings)`.
    pub async fn take_oauth_pending(
        &self,
        name: &str,
    ) -> Result<Option<(String, Vec<u8>, String)>, StoreError> {
        on_db!(self, |pool, sql| {
            let row = sqlx::query(
                "DELETE FROM oauth_pending WHERE name = $1 RETURNING state, verifier_sealed, settings",
            )
            .bind(name)
            .fetch_optional(pool)
            .await?;
            row.map(|row| {
                Ok((
                    row.try_get("state")?,
                    row.try_get("verifier_sealed")?,
                    row.try_get("settings")?,
                ))
            })
            .transpose()
        })
    }

    pub async fn insert_account_event(&self, event: &AccountEvent) -> Result<(), StoreError> {
        on_db!(self, |pool, sql| {
            sqlx::query(
                "INSERT INTO account_events (account_id, at_ms, kind, until_ms, evidence)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&event.account_id)
            .bind(event.at_ms)
            .bind(&event.kind)
            .bind(event.until_ms)
            .bind(&event.evidence)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// An account's most recent health events, newest first.
    pub async fn account_events(
        &self,
        account_id: &str,
        limit: i64,
    ) -> Result<Vec<AccountEvent>, StoreError> {
        on_db!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT account_id, at_ms, kind, until_ms, evidence FROM account_events
                 WHERE account_id = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(account_id)
            .bind(limit)
            .fetch_all(pool)
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
        })
    }
}
