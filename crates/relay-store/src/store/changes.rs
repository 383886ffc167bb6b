//! The change feed: the triggers on `relay_keys` and `accounts` write one row per changed row,
//! numbered by the revision the change produced, so a server holding revision R reads exactly
//! what changed after R and the rows it names — not the whole table.

use sqlx::Row;

use super::{on_db, Store};
use crate::StoreError;

/// What a change row names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangedEntity {
    Key,
    Account,
}

/// One inserted, updated or deleted key or account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The revision this change produced: changes are numbered without gaps.
    pub revision: i64,
    pub entity: ChangedEntity,
    pub id: String,
    /// A key's hash before the change (after it, for an insert), so that a deleted key can be
    /// found in a snapshot indexed by hash.
    pub key_hash: Option<Vec<u8>>,
}

impl Store {
    /// The changes after `revision`, oldest first, at most `limit` of them. The feed keeps the
    /// last 10,000; a reader that finds the revision it expects missing has fallen behind (or
    /// met a revision bumped without a change, such as a master-key rotation) and must read
    /// everything.
    pub async fn changes_after(
        &self,
        revision: i64,
        limit: i64,
    ) -> Result<Vec<Change>, StoreError> {
        on_db!(self, |pool, sql| {
            let rows = sqlx::query(
                "SELECT revision, entity, entity_id, key_hash FROM changes
                 WHERE revision > $1 ORDER BY revision LIMIT $2",
            )
            .bind(revision)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            let mut changes = Vec::with_capacity(rows.len());
            for row in rows {
                let entity = match row.try_get::<String, _>("entity")?.as_str() {
                    "key" => ChangedEntity::Key,
                    "account" => ChangedEntity::Account,
                    // Written by a newer version: stop here, the reader reloads everything.
                    _ => break,
                };
                changes.push(Change {
                    revision: row.try_get("revision")?,
                    entity,
                    id: row.try_get("entity_id")?,
                    key_hash: row.try_get("key_hash")?,
                });
            }
            Ok(changes)
        })
    }
}

/// The channel PostgreSQL's revision trigger notifies, with the writer's schema as payload.
const CHANGES_CHANNEL: &str = "claude_relay_changes";

impl Store {
    /// Wakes `notify` whenever another connection commits a change to keys or accounts in this
    /// store's schema, until the returned future is dropped; reconnects by itself. Returns at
    /// once on SQLite, which has no notifications (readers poll the revision).
    pub async fn forward_change_notices(&self, notify: std::sync::Arc<tokio::sync::Notify>) {
        let super::Db::Postgres(pool) = &self.db else {
            return;
        };
        loop {
            match listen(pool, &notify).await {
                Ok(()) => {}
                Err(error) => tracing::warn!(
                    %error,
                    "cannot listen for change notices; polling until the database answers again"
                ),
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    }
}

async fn listen(pool: &sqlx::PgPool, notify: &tokio::sync::Notify) -> Result<(), sqlx::Error> {
    let schema: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(pool)
        .await?;
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(CHANGES_CHANNEL).await?;
    // `None` is a lost connection: notices sent while it was down are lost (the caller's poll
    // covers them) and the caller listens again.
    while let Some(notice) = listener.try_recv().await? {
        if notice.payload() == schema {
            notify.notify_one();
        }
    }
    Ok(())
}
