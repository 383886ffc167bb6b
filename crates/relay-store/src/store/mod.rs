//! The store: one handle over either backend (`Db`), with every query written once.
//!
//! Queries use `$1`-style placeholders, which SQLite and PostgreSQL both read, and each method
//! body is compiled once per backend by [`on_db!`] (a `match` on the closed [`Db`] enum, no trait
//! object). What the two SQL dialects spell differently (clamping, overflow-proof sums) comes from
//! [`SqlDialect`], beside the backend it belongs to.

mod accounts;
mod admins;
mod changes;
pub use changes::{Change, ChangedEntity};
mod copy;
pub use copy::{CopyReport, COPIED_TABLES, OWN_TABLES};

mod keys;
mod secrets;
mod usage;

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::schema;
use crate::StoreError;

/// A handle to the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) db: Db,
    stats: std::sync::Arc<StoreStats>,
}

/// Counters of the round trips that tell how the database is doing — the revision poll and the
/// usage writes — for `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub round_trips: AtomicU64,
    pub errors: AtomicU64,
    pub latency_micros: AtomicU64,
}

/// The backends, closed: adding one makes the compiler list every query it must learn.
#[derive(Debug, Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Which backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs `$body` with `$pool` bound to the backend's pool and `$sql` to its [`SqlDialect`]; the
/// body is compiled once per backend.
macro_rules! on_db {
    ($store:expr, |$pool:ident, $sql:ident| $body:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $sql = &$crate::store::SQLITE;
                $body
            }
            $crate::store::Db::Postgres($pool) => {
                #[allow(unused_variables)]
                let $sql = &$crate::store::POSTGRES;
                $body
            }
        }
    };
}
pub(crate) use on_db;

/// What the two SQL dialects spell differently.
#[derive(Debug)]
pub(crate) struct SqlDialect {
    /// `MIN`/`MAX` of two values (SQLite) or `LEAST`/`GREATEST` (PostgreSQL).
    least: &'static str,
    greatest: &'static str,
    /// A sum that cannot fail on overflow, capped below `i64::MAX` and read as an integer.
    safe_sum: fn(&str) -> String,
    /// The rows of a JSON array of text bound as `$1`.
    json_texts: &'static str,
}

pub(crate) const SQLITE: SqlDialect = SqlDialect {
    least: "MIN",
    greatest: "MAX",
    // `SUM` errors on integer overflow; `TOTAL` is a float that does not.
    safe_sum: |expression| format!("CAST(MIN(TOTAL({expression}), 9.2e18) AS INTEGER)"),
    json_texts: "SELECT value FROM json_each($1)",
};

pub(crate) const POSTGRES: SqlDialect = SqlDialect {
    least: "LEAST",
    greatest: "GREATEST",
    // `SUM` of BIGINT is NUMERIC, which does not overflow; capped and cast back.
    safe_sum: |expression| {
        format!(
            "CAST(LEAST(COALESCE(SUM(CAST({expression} AS NUMERIC)), 0), 9200000000000000000) AS BIGINT)"
        )
    },
    json_texts: "SELECT jsonb_array_elements_text(CAST($1 AS JSONB))",
};

/// Which rows of a table a read wants.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    All,
    /// Those with these ids (bound as one JSON array, whatever their number).
    Ids(&'a [String]),
}

fn ids_json(ids: &[String]) -> String {
    serde_json::Value::from(ids).to_string()
}

/// Tokens one response can report per kind; a stored row is clamped to it when summed.
const MAX_ROW_TOKENS: i64 = 1_000_000_000;
/// A row's cost is clamped at $1B when summed.
const MAX_ROW_COST: i64 = 1_000_000_000_000_000_000;

impl SqlDialect {
    /// `expression` clamped to `[low, high]`.
    pub(crate) fn clamp(&self, expression: &str, low: i64, high: i64) -> String {
        format!(
            "{}({}({expression}, {low}), {high})",
            self.least, self.greatest
        )
    }

    /// The `WHERE` clause that selects `rows` (binding `$1` for ids).
    pub(crate) fn rows_filter(&self, rows: &Rows<'_>) -> String {
        match rows {
            Rows::All => String::new(),
            Rows::Ids(_) => format!("WHERE id IN ({})", self.json_texts),
        }
    }

    pub(crate) fn safe_sum(&self, expression: &str) -> String {
        (self.safe_sum)(expression)
    }

    /// A column that cannot be negative, clamped to what one response can hold.
    pub(crate) fn tokens(&self, column: &str) -> String {
        self.clamp(column, 0, MAX_ROW_TOKENS)
    }

    /// A row's tokens, each kind clamped, so that no stored row (even one written before usage
    /// was bounded) can overflow a sum and stop the seeding at start.
    pub(crate) fn row_tokens(&self) -> String {
        [
            "input_tokens",
            "output_tokens",
            "cache_creation_5m_tokens",
            "cache_creation_1h_tokens",
            "cache_read_tokens",
        ]
        .map(|column| self.tokens(column))
        .join(" + ")
    }

    /// A row's cost, clamped.
    pub(crate) fn row_cost(&self) -> String {
        self.clamp("COALESCE(cost_nano_usd, 0)", 0, MAX_ROW_COST)
    }

    /// What a row charged the key's cost limits: its cost, or its stand-in price if unpriced.
    pub(crate) fn row_charged(&self) -> String {
        self.clamp(
            "COALESCE(charged_nano_usd, cost_nano_usd, 0)",
            0,
            MAX_ROW_COST,
        )
    }
}

/// Names a server's connection after the schema it serves.
const SERVING_NAME: &str =
    "SELECT set_config('application_name', 'claude-relay serve:' || current_schema(), false)";

/// Taken (transaction-scoped) around migrations, so instances starting together migrate once.
const MIGRATION_LOCK: i64 = 0x636c_6175_6465_7265; // "claudere"

impl Store {
    /// Opens (creating if needed) the SQLite database file and applies pending migrations.
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
        let store = Self {
            db: Db::Sqlite(pool),
            stats: std::sync::Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to a PostgreSQL database (`postgres://…`) and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_as(url, false).await
    }

    /// [`Store::connect`] for a server: its connections say so (`application_name`, with the
    /// schema), and one stays open, so that [`Store::serving_connections`] sees it from any
    /// machine.
    pub async fn connect_serving(url: &str) -> Result<Self, StoreError> {
        Self::connect_as(url, true).await
    }

    async fn connect_as(url: &str, serving: bool) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            path: redact_url(url),
            source,
        };
        let options = PgConnectOptions::from_str(url).map_err(open_error)?;
        let mut pool = PgPoolOptions::new()
            .max_connections(8)
            // A request never waits on the database; an operator's command should not hang
            // either when it is down.
            .acquire_timeout(Duration::from_secs(5));
        if serving {
            pool = pool.min_connections(1).after_connect(|connection, _| {
                Box::pin(async move {
                    sqlx::query(SERVING_NAME)
                        .execute(&mut *connection)
                        .await
                        .map(drop)
                })
            });
        }
        let pool = pool.connect_with(options).await.map_err(open_error)?;
        let store = Self {
            db: Db::Postgres(pool),
            stats: std::sync::Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        on_db!(self, |pool, sql| {
            let migrations = match self.backend() {
                Backend::Sqlite => schema::sqlite::MIGRATIONS,
                Backend::Postgres => schema::postgres::MIGRATIONS,
            };
            let mut tx = pool.begin().await?;
            if self.backend() == Backend::Postgres {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(MIGRATION_LOCK)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
                .execute(&mut *tx)
                .await?;
            let current: i64 = sqlx::query_scalar(
                "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM schema_version",
            )
            .fetch_one(&mut *tx)
            .await?;
            // A plain loop: an iterator adapter's closure held across the awaits below makes the
            // future's lifetimes too general for `tokio::spawn`.
            for &(version, migration) in migrations {
                if version <= current {
                    continue;
                }
                sqlx::raw_sql(migration).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        on_db!(self, |pool, sql| pool.close().await)
    }

    /// The change counter of keys and accounts; bumped by triggers on every mutation.
    pub async fn revision(&self) -> Result<i64, StoreError> {
        self.timed(async {
            on_db!(self, |pool, sql| Ok(sqlx::query_scalar(
                "SELECT value FROM revision WHERE id = 1"
            )
            .fetch_one(pool)
            .await?))
        })
        .await
    }

    /// How many connections of running servers ([`Store::connect_serving`]) use this database
    /// and schema, from any machine; none on SQLite (its lock file says that).
    pub async fn serving_connections(&self) -> Result<i64, StoreError> {
        match &self.db {
            Db::Sqlite(_) => Ok(0),
            Db::Postgres(pool) => Ok(sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND application_name = 'claude-relay serve:' || current_schema()",
            )
            .fetch_one(pool)
            .await?),
        }
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Runs one exchange with the database, counting it in [`StoreStats`].
    pub(crate) async fn timed<T>(
        &self,
        exchange: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = exchange.await;
        let stats = &self.stats;
        stats.round_trips.fetch_add(1, Ordering::Relaxed);
        stats.latency_micros.fetch_add(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if result.is_err() {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests;
