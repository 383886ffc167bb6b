//! Relay keys: insert, list, edit, trash and purge.

use futures_util::TryStreamExt;
use sqlx::Row;

use super::{ids_json, on_db, Rows, Store};
use crate::records::{KeyMeta, KeyRow, NewKey};
use crate::StoreError;

impl Store {
    pub async fn insert_key(&self, key: &NewKey) -> Result<(), StoreError> {
        on_db!(self, |pool, sql| {
            sqlx::query(
                "INSERT INTO relay_keys (id, name, key_hash, key_hint, status, policy, description,
                                         owner, tags, created_at_ms, updated_at_ms)
                 VALUES ($1, $2, $3, $4, 'active', $5, $6, $7, $8, $9, $9)",
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
            .execute(pool)
            .await
            .map_err(|error| StoreError::from_insert(error, "key", &key.name))?;
            Ok(())
        })
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        let mut keys = Vec::new();
        self.for_each_key(Rows::All, |row| keys.push(row)).await?;
        Ok(keys)
    }

    /// Hands each selected key to `visit` as it is read, so reading every key of a large
    /// installation never holds all the rows at once.
    pub async fn for_each_key(
        &self,
        rows: Rows<'_>,
        mut visit: impl FnMut(KeyRow) + Send,
    ) -> Result<(), StoreError> {
        on_db!(self, |pool, sql| {
            let statement = format!(
                "SELECT id, name, key_hash, key_hint, status, policy, description, owner, tags,
                        created_at_ms, updated_at_ms, deleted_at_ms
                 FROM relay_keys {} ORDER BY created_at_ms, name",
                sql.rows_filter(&rows)
            );
            let mut query = sqlx::query(&statement);
            if let Rows::Ids(ids) = &rows {
                query = query.bind(ids_json(ids));
            }
            let mut stream = query.fetch(pool);
            while let Some(row) = stream.try_next().await? {
                visit(KeyRow {
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
                });
            }
            Ok(())
        })
    }

    /// Replaces a key's policy by name; returns false if no such key exists.
    pub async fn set_key_policy(
        &self,
        name: &str,
        policy: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        on_db!(self, |pool, sql| {
            let result = sqlx::query(
                "UPDATE relay_keys SET policy = $1, updated_at_ms = $2 WHERE name = $3",
            )
            .bind(policy)
            .bind(now_ms)
            .bind(name)
            .execute(pool)
            .await?;
            Ok(result.rows_affected() == 1)
        })
    }

    /// Replaces a key's notes by name; returns false if no such key exists.
    pub async fn set_key_meta(
        &self,
        name: &str,
        meta: &KeyMeta,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        on_db!(self, |pool, sql| {
            let result = sqlx::query(
                "UPDATE relay_keys SET description = $1, owner = $2, tags = $3, updated_at_ms = $4
                 WHERE name = $5",
            )
            .bind(&meta.description)
            .bind(&meta.owner)
            .bind(meta.tags.join(","))
            .bind(now_ms)
            .bind(name)
            .execute(pool)
            .await?;
            Ok(result.rows_affected() == 1)
        })
    }

    /// Moves a key to the trash (`Some(now)`) or back out of it (`None`); returns false if no
    /// such key exists.
    pub async fn set_key_deleted(
        &self,
        name: &str,
        deleted_at_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        on_db!(self, |pool, sql| {
            let result = sqlx::query(
                "UPDATE relay_keys SET deleted_at_ms = $1, updated_at_ms = $2 WHERE name = $3",
            )
            .bind(deleted_at_ms)
            .bind(now_ms)
            .bind(name)
            .execute(pool)
            .await?;
            Ok(result.rows_affected() == 1)
        })
    }

    /// Removes for good the keys that went to the trash before `deleted_before_ms`; returns
    /// their names. Their usage records stay.
    pub async fn purge_keys(&self, deleted_before_ms: i64) -> Result<Vec<String>, StoreError> {
        on_db!(self, |pool, sql| {
            Ok(sqlx::query_scalar(
                "DELETE FROM relay_keys WHERE deleted_at_ms IS NOT NULL AND deleted_at_ms < $1
                 RETURNING name",
            )
            .bind(deleted_before_ms)
            .fetch_all(pool)
            .await?)
        })
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

    pub(super) async fn set_status(
        &self,
        table: &'static str,
        name: &str,
        status: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let statement =
            format!("UPDATE {table} SET status = $1, updated_at_ms = $2 WHERE name = $3");
        on_db!(self, |pool, sql| {
            let result = sqlx::query(&statement)
                .bind(status)
                .bind(now_ms)
                .bind(name)
                .execute(pool)
                .await?;
            Ok(result.rows_affected() == 1)
        })
    }
}
