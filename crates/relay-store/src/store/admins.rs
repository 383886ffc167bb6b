//! Admins and their sessions.

use sqlx::Row;

use super::{on_db, Store};
use crate::records::AdminRow;
use crate::StoreError;

impl Store {
    pub async fn count_admins(&self) -> Result<i64, StoreError> {
        on_db!(self, |pool, sql| Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM admins"
        )
        .fetch_one(pool)
        .await?))
    }

    pub async fn admin_by_name(&self, username: &str) -> Result<Option<AdminRow>, StoreError> {
        on_db!(self, |pool, sql| {
            let row = sqlx::query(
                "SELECT id, username, password_hash, created_at_ms FROM admins WHERE username = $1",
            )
            .bind(username)
            .fetch_optional(pool)
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
        })
    }

    pub async fn insert_admin_session(
        &self,
        token_hash: &[u8],
        admin_id: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        on_db!(self, |pool, sql| {
            // Expired sessions are cleared whenever a new one starts.
            sqlx::query("DELETE FROM admin_sessions WHERE expires_at_ms <= $1")
                .bind(now_ms)
                .execute(pool)
                .await?;
            sqlx::query(
                "INSERT INTO admin_sessions (token_hash, admin_id, created_at_ms, expires_at_ms)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(token_hash)
            .bind(admin_id)
            .bind(now_ms)
            .bind(expires_at_ms)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The admin name of a live session.
    pub async fn admin_for_session(
        &self,
        token_hash: &[u8],
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        on_db!(self, |pool, sql| Ok(sqlx::query_scalar(
            "SELECT admins.username FROM admin_sessions
             JOIN admins ON admins.id = admin_sessions.admin_id
             WHERE admin_sessions.token_hash = $1 AND admin_sessions.expires_at_ms > $2",
        )
        .bind(token_hash)
        .bind(now_ms)
        .fetch_optional(pool)
        .await?))
    }

    pub async fn delete_admin_session(&self, token_hash: &[u8]) -> Result<(), StoreError> {
        on_db!(self, |pool, sql| {
            sqlx::query("DELETE FROM admin_sessions WHERE token_hash = $1")
                .bind(token_hash)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// Inserts an admin unless one with that name exists; returns whether it was inserted.
    pub async fn insert_admin_if_absent(&self, admin: &AdminRow) -> Result<bool, StoreError> {
        on_db!(self, |pool, sql| {
            let result = sqlx::query(
                "INSERT INTO admins (id, username, password_hash, created_at_ms)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (username) DO NOTHING",
            )
            .bind(&admin.id)
            .bind(&admin.username)
            .bind(&admin.password_hash)
            .bind(admin.created_at_ms)
            .execute(pool)
            .await?;
            Ok(result.rows_affected() == 1)
        })
    }

    /// Sets an admin's password and ends all of their sessions, in one transaction; returns
    /// false if no such admin exists.
    pub async fn set_admin_password(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        on_db!(self, |pool, sql| {
            let mut tx = pool.begin().await?;
            let result = sqlx::query("UPDATE admins SET password_hash = $1 WHERE username = $2")
                .bind(password_hash)
                .bind(username)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "DELETE FROM admin_sessions
                 WHERE admin_id IN (SELECT id FROM admins WHERE username = $1)",
            )
            .bind(username)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(result.rows_affected() == 1)
        })
    }

    /// Ends every admin session; returns how many there were.
    pub async fn delete_all_admin_sessions(&self) -> Result<u64, StoreError> {
        on_db!(self, |pool, sql| {
            let result = sqlx::query("DELETE FROM admin_sessions")
                .execute(pool)
                .await?;
            Ok(result.rows_affected())
        })
    }
}
