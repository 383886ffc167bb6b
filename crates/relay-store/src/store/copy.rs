//! Copying a whole installation into an empty PostgreSQL database (`claude-relay db copy`):
//! every row byte for byte, so relay keys keep their hashes and sealed secrets open under the
//! same master key.
//!
//! The columns come from the target's catalog, so a migration that adds one is copied without a
//! change here; the schema test keeps the two backends' columns equal. Identity columns are
//! left to the target (rows go in their source order, so their order is kept). The copy is one
//! transaction: it lands whole or not at all. The revision triggers are off meanwhile and the
//! revision is bumped once at the end (a trigger per row would rewrite one row per copied key).

use futures_util::TryStreamExt;
use sqlx::{Postgres, QueryBuilder, Row};

use super::{on_db, Db, Store};
use crate::StoreError;

/// The tables copied, parents before children.
pub const COPIED_TABLES: &[&str] = &[
    "admins",
    "admin_sessions",
    "installation_secrets",
    "relay_keys",
    "accounts",
    "oauth_pending",
    "account_events",
    "usage_records",
];

/// Tables that belong to the database itself, not to the installation.
pub const OWN_TABLES: &[&str] = &["schema_version", "revision", "changes"];

/// Rows inserted per statement (PostgreSQL takes at most 65,535 bound values).
const ROWS_PER_INSERT: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Integer,
    Bytes,
    Boolean,
}

#[derive(Debug)]
enum Value {
    Text(Option<String>),
    Integer(Option<i64>),
    Bytes(Option<Vec<u8>>),
    Boolean(Option<bool>),
}

/// How many rows of each table were copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub tables: Vec<(&'static str, u64)>,
}

impl Store {
    /// Copies every row of this store into `target`, a PostgreSQL store that holds no keys,
    /// accounts, admins or usage yet.
    pub async fn copy_into(&self, target: &Store) -> Result<CopyReport, StoreError> {
        let Db::Postgres(pool) = &target.db else {
            return Err(StoreError::Refused(
                "db copy writes to PostgreSQL only (a postgres:// URL)".into(),
            ));
        };
        for table in ["admins", "relay_keys", "accounts", "usage_records"] {
            let rows: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(pool)
                .await?;
            if rows > 0 {
                return Err(StoreError::Refused(format!(
                    "the target database already holds data ({rows} rows in {table}); db copy \
                     only fills an empty one"
                )));
            }
        }
        let mut tx = pool.begin().await?;
        for table in ["relay_keys", "accounts"] {
            sqlx::query(&format!("ALTER TABLE {table} DISABLE TRIGGER USER"))
                .execute(&mut *tx)
                .await?;
        }
        let mut report = CopyReport::default();
        for table in COPIED_TABLES {
            let columns: Vec<(String, String)> = sqlx::query_as(
                "SELECT column_name::text, data_type::text FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = $1
                   AND is_identity = 'NO'
                 ORDER BY ordinal_position",
            )
            .bind(table)
            .fetch_all(&mut *tx)
            .await?;
            let columns: Vec<(String, Kind)> = columns
                .into_iter()
                .map(|(name, declared)| (name, kind(&declared)))
                .collect();
            let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
            let select = format!(
                "SELECT {} FROM {table} ORDER BY {}",
                names.join(", "),
                self.source_order()
            );
            let mut copied = 0u64;
            let mut batch: Vec<Vec<Value>> = Vec::with_capacity(ROWS_PER_INSERT);
            on_db!(self, |source, sql| {
                let mut rows = sqlx::query(&select).fetch(source);
                while let Some(row) = rows.try_next().await? {
                    let mut values = Vec::with_capacity(columns.len());
                    for (index, (_, kind)) in columns.iter().enumerate() {
                        values.push(match kind {
                            Kind::Text => Value::Text(row.try_get(index)?),
                            Kind::Integer => Value::Integer(row.try_get(index)?),
                            Kind::Bytes => Value::Bytes(row.try_get(index)?),
                            Kind::Boolean => Value::Boolean(row.try_get(index)?),
                        });
                    }
                    batch.push(values);
                    if batch.len() == ROWS_PER_INSERT {
                        copied += insert(&mut tx, table, &names, &mut batch).await?;
                    }
                }
            });
            copied += insert(&mut tx, table, &names, &mut batch).await?;
            report.tables.push((table, copied));
        }
        for table in ["relay_keys", "accounts"] {
            sqlx::query(&format!("ALTER TABLE {table} ENABLE TRIGGER USER"))
                .execute(&mut *tx)
                .await?;
        }
        // Instances already running on the target read everything again.
        sqlx::query("UPDATE revision SET value = value + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_notify('claude_relay_changes', current_schema())")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(report)
    }

    /// The order rows are read in: the order they were written.
    fn source_order(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "rowid",
            Db::Postgres(_) => "ctid",
        }
    }
}

fn kind(declared: &str) -> Kind {
    let declared = declared.to_ascii_lowercase();
    if declared.contains("int") {
        Kind::Integer
    } else if declared.contains("bool") {
        Kind::Boolean
    } else if declared.contains("bytea") {
        Kind::Bytes
    } else {
        Kind::Text
    }
}

/// Inserts `batch` into `table` in one statement and empties it; the rows inserted.
async fn insert(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    table: &str,
    names: &[&str],
    batch: &mut Vec<Vec<Value>>,
) -> Result<u64, StoreError> {
    if batch.is_empty() {
        return Ok(0);
    }
    let mut builder: QueryBuilder<'_, Postgres> =
        QueryBuilder::new(format!("INSERT INTO {table} ({}) ", names.join(", ")));
    builder.push_values(batch.drain(..), |mut row, values| {
        for value in values {
            match value {
                Value::Text(value) => row.push_bind(value),
                Value::Integer(value) => row.push_bind(value),
                Value::Bytes(value) => row.push_bind(value),
                Value::Boolean(value) => row.push_bind(value),
            };
        }
    });
    Ok(builder.build().execute(&mut **tx).await?.rows_affected())
}
