//! Databases for tests: a SQLite file in a temporary directory, and a PostgreSQL schema of its
#![allow(clippy::panic, clippy::expect_used)] // test support: a broken test database ends the test
//! own in the developer's (or CI's) server, so one test body runs against both backends.
//!
//! PostgreSQL is found at `CLAUDE_RELAY_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Where it does not answer, PostgreSQL tests are
//! skipped with a message — unless `CLAUDE_RELAY_REQUIRE_SERVICES=1` (set by `.ci/run`), which
//! makes them fail instead.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Backend, Store};

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Schemas of test runs older than this are dropped when a new one is made.
const STALE_SCHEMA_SECS: u64 = 3_600;
const SCHEMA_PREFIX: &str = "cr_test_";

/// A database a test owns; the SQLite one lives as long as this value.
#[derive(Debug)]
pub struct TestDatabase {
    pub store: Store,
    /// The URL another process (a second instance, the CLI) opens the same database with;
    /// `None` for SQLite, which is opened by path.
    pub url: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub fn backend(&self) -> Backend {
        self.store.backend()
    }
}

pub async fn sqlite() -> TestDatabase {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(&dir.path().join("relay.db"))
        .await
        .expect("open SQLite");
    TestDatabase {
        store,
        url: None,
        _dir: Some(dir),
    }
}

/// Whether the environment insists that PostgreSQL and Redis tests run.
pub fn services_required() -> bool {
    std::env::var("CLAUDE_RELAY_REQUIRE_SERVICES").is_ok_and(|value| value == "1")
}

fn server_url() -> String {
    std::env::var("CLAUDE_RELAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

/// A fresh, empty schema on the test PostgreSQL server and the URL that selects it; `None`
/// (with a message) when the server does not answer and services are not required.
pub async fn postgres_url() -> Option<String> {
    use sqlx::Connection;
    let server = server_url();
    let mut connection = match sqlx::PgConnection::connect(&server).await {
        Ok(connection) => connection,
        Err(error) if !services_required() => {
            #[allow(clippy::print_stderr)] // the skip notice a developer needs to see
            {
                eprintln!(
                    "skipping the PostgreSQL part of this test: {server} does not answer ({error})"
                );
            }
            return None;
        }
        Err(error) => panic!("PostgreSQL is required here but {server} does not answer: {error}"),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default();
    drop_stale_schemas(&mut connection, now).await;
    let schema = format!("{SCHEMA_PREFIX}{now}_{:016x}", rand_suffix());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut connection)
        .await
        .expect("create a test schema");
    let separator = if server.contains('?') { '&' } else { '?' };
    Some(format!(
        "{server}{separator}options=-c%20search_path%3D{schema}"
    ))
}

/// A store on a fresh PostgreSQL schema, or `None` where PostgreSQL is not available.
pub async fn postgres() -> Option<TestDatabase> {
    let url = postgres_url().await?;
    let store = Store::connect(&url).await.expect("open PostgreSQL");
    Some(TestDatabase {
        store,
        url: Some(url),
        _dir: None,
    })
}

/// SQLite, and PostgreSQL where it is available: the databases one test body runs against.
pub async fn each_backend() -> Vec<TestDatabase> {
    let mut databases = vec![sqlite().await];
    databases.extend(postgres().await);
    databases
}

async fn drop_stale_schemas(connection: &mut sqlx::PgConnection, now: u64) {
    let schemas: Vec<String> =
        sqlx::query_scalar("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(SCHEMA_PREFIX)
            .fetch_all(&mut *connection)
            .await
            .unwrap_or_default();
    for schema in schemas {
        let created = schema
            .strip_prefix(SCHEMA_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|created| created + STALE_SCHEMA_SECS < now) {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&mut *connection)
                .await;
        }
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // A random 64-bit value without a dependency: the std hasher's per-process random keys.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

/// Inserts `count` keys (`filler-<n>`, with hashes no relay key has) in one transaction, for
/// tests with many keys; every tenth has a policy of its own.
pub async fn insert_filler_keys(store: &Store, count: usize) {
    const ROWS_PER_STATEMENT: usize = 500;
    let mut statements = Vec::new();
    for chunk_start in (0..count).step_by(ROWS_PER_STATEMENT) {
        let rows: Vec<String> = (chunk_start..count.min(chunk_start + ROWS_PER_STATEMENT))
            .map(|n| {
                let hash = format!("{:064x}", u128::MAX - n as u128);
                let policy = if n % 10 == 0 {
                    format!("{{\"concurrency\":{}}}", n % 1000 + 1)
                } else {
                    "{}".to_owned()
                };
                let hash_literal = match store.backend() {
                    Backend::Sqlite => format!("x'{hash}'"),
                    Backend::Postgres => format!("'\\x{hash}'::bytea"),
                };
                format!(
                    "('filler-{n}', 'filler-{n}', {hash_literal}, 'cr_…fill', 'active', '{policy}', \
                     '', NULL, '', 1, 1)"
                )
            })
            .collect();
        statements.push(format!(
            "INSERT INTO relay_keys (id, name, key_hash, key_hint, status, policy, description, \
             owner, tags, created_at_ms, updated_at_ms) VALUES {}",
            rows.join(", ")
        ));
    }
    if store.backend() == Backend::Postgres {
        // One revision bump for all: a transaction that updates one row 100,000 times walks an
        // ever longer chain of its versions. Servers that start later read everything anyway.
        statements.insert(0, "ALTER TABLE relay_keys DISABLE TRIGGER USER".to_owned());
        statements.push("ALTER TABLE relay_keys ENABLE TRIGGER USER".to_owned());
        statements.push("UPDATE revision SET value = value + 1 WHERE id = 1".to_owned());
    }
    crate::store::on_db!(store, |pool, sql| {
        let mut tx = pool.begin().await.expect("begin");
        for statement in &statements {
            sqlx::raw_sql(statement)
                .execute(&mut *tx)
                .await
                .expect("insert filler keys");
        }
        tx.commit().await.expect("commit");
    });
}
