//! The store's behaviour, one test body per backend (SQLite always, PostgreSQL where it runs).

use super::*;
use crate::records::{KeyMeta, NewKey, UsageFilter};
use crate::testing;

fn new_key(id: &str, name: &str, hash: u8) -> NewKey {
    NewKey {
        id: id.into(),
        name: name.into(),
        key_hash: vec![hash; 32],
        key_hint: "cr_…abcd".into(),
        policy: "{}".into(),
        meta: KeyMeta::default(),
        created_at_ms: 1,
    }
}

/// Inserts a usage row with literal values (which may be beyond what the relay writes today).
async fn insert_raw_usage(store: &Store, tokens: &str, cost: &str) {
    let statement = format!(
        "INSERT INTO usage_records (request_id, created_at_ms, key_id, platform, endpoint,
             model, stream, input_tokens, output_tokens, cache_creation_5m_tokens,
             cache_creation_1h_tokens, cache_read_tokens, cost_nano_usd, status, outcome,
             attempts, latency_ms)
         VALUES ('r', 10, 'k', 'anthropic', 'messages', 'm', false, {tokens}, {tokens},
             {tokens}, {tokens}, {tokens}, {cost}, 200, 'ok', 1, 1)"
    );
    on_db!(store, |pool, sql| sqlx::raw_sql(&statement)
        .execute(pool)
        .await
        .map(drop))
    .unwrap();
}

#[tokio::test]
async fn rows_with_impossible_numbers_cannot_break_the_sums_read_at_start() {
    for database in testing::each_backend().await {
        let store = &database.store;
        // What an upstream reporting u64::MAX tokens left behind before usage was bounded.
        let mut rows = vec![
            ("9223372036854775807", "9223372036854775807"),
            ("9223372036854775807", "-9223372036854775808"),
            ("12", "300"),
        ];
        if database.backend() == Backend::Sqlite {
            // SQLite had already turned such a value into a REAL.
            rows.push(("1.8e19", "1.8e19"));
        }
        for (tokens, cost) in &rows {
            insert_raw_usage(store, tokens, cost).await;
        }
        let spend = store.key_spend(None).await.unwrap();
        assert_eq!(spend.len(), 1);
        assert!(spend[0].total_cost_nano_usd > 0);
        assert!(spend[0].total_tokens > 10_000_000_000);
        let recent = store.recent_spend(0, None).await.unwrap();
        assert_eq!(recent.len(), rows.len());
        assert!(recent
            .iter()
            .all(|(_, _, tokens, cost, _)| *tokens >= 0 && *cost >= 0));
        store.account_costs_since(0).await.unwrap();
        let totals = store.usage_totals(&UsageFilter::default()).await.unwrap();
        assert_eq!(totals.requests, rows.len() as i64);
        assert!(totals.input_tokens > 0 && totals.cost_nano_usd > 0);
    }
}

#[tokio::test]
async fn mutations_bump_the_revision_and_names_are_unique() {
    for database in testing::each_backend().await {
        let store = &database.store;
        let before = store.revision().await.unwrap();
        store.insert_key(&new_key("k1", "alice", 1)).await.unwrap();
        let after_insert = store.revision().await.unwrap();
        assert!(after_insert > before);
        assert!(matches!(
            store.insert_key(&new_key("k2", "alice", 2)).await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(store.set_key_status("alice", "disabled", 2).await.unwrap());
        assert!(!store.set_key_status("nobody", "disabled", 2).await.unwrap());
        assert!(store.revision().await.unwrap() > after_insert);
        assert_eq!(store.list_keys().await.unwrap()[0].status, "disabled");
    }
}

#[tokio::test]
async fn trash_purge_removes_only_what_is_old_enough() {
    for database in testing::each_backend().await {
        let store = &database.store;
        for (n, name) in ["old", "new", "kept"].iter().enumerate() {
            store
                .insert_key(&new_key(name, name, n as u8))
                .await
                .unwrap();
        }
        assert!(store.set_key_deleted("old", Some(10), 10).await.unwrap());
        assert!(store.set_key_deleted("new", Some(50), 50).await.unwrap());
        assert_eq!(store.purge_keys(20).await.unwrap(), vec!["old".to_owned()]);
        let names: Vec<String> = store
            .list_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|key| key.name)
            .collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"new".to_owned()) && names.contains(&"kept".to_owned()));
    }
}

#[tokio::test]
async fn usage_round_trips_with_every_field() {
    for database in testing::each_backend().await {
        let store = &database.store;
        let record = crate::UsageRecord {
            request_id: "req_1".into(),
            created_at_ms: 42,
            key_id: "k".into(),
            account_id: Some("a".into()),
            platform: "anthropic".into(),
            endpoint: "messages".into(),
            model: "claude-sonnet-4-5".into(),
            upstream_model: Some("claude-sonnet-4-5-20250929".into()),
            stream: true,
            usage: relay_protocol::Usage {
                input_tokens: 1,
                output_tokens: 2,
                cache_creation_5m_tokens: 3,
                cache_creation_1h_tokens: 4,
                cache_read_tokens: 5,
                reasoning_tokens: 6,
            },
            cost_nano_usd: None,
            charged_nano_usd: Some(77),
            status: 200,
            outcome: "partial".into(),
            error_kind: Some("client_gone".into()),
            attempts: 2,
            latency_ms: 9,
            ttfb_ms: Some(3),
            user_agent: Some("claude-cli/2".into()),
        };
        // More than one statement's worth on either backend (32 rows on SQLite, 1,024 on
        // PostgreSQL), so every insert shape runs.
        const ROWS: i64 = 1_100;
        let batch: Vec<_> = (0..ROWS).map(|_| record.clone()).collect();
        store.insert_usage(&batch).await.unwrap();
        let recent = store
            .recent_usage(&UsageFilter::default(), 1)
            .await
            .unwrap();
        assert_eq!(recent, vec![record.clone()]);
        let totals = store.usage_totals(&UsageFilter::default()).await.unwrap();
        assert_eq!(totals.requests, ROWS);
        assert_eq!(totals.cache_creation_input_tokens, ROWS * 7);
        assert_eq!(totals.unpriced_requests, ROWS);
        assert_eq!(totals.partial_requests, ROWS);
        assert_eq!(totals.failed_requests, 0);
        let spend = store.key_spend(None).await.unwrap();
        assert_eq!(
            spend[0].total_cost_nano_usd,
            ROWS * 77,
            "the stand-in charge"
        );
        assert_eq!(
            spend[0].total_tokens,
            ROWS * 15,
            "reasoning is part of output"
        );
        assert_eq!(spend[0].first_used_ms, Some(42));
        let key_id = spend[0].key_id.clone();
        assert_eq!(store.key_spend(Some(&key_id)).await.unwrap(), spend);
        assert!(store.key_spend(Some("nobody")).await.unwrap().is_empty());
        assert_eq!(
            store.recent_spend(0, Some(&key_id)).await.unwrap().len(),
            ROWS as usize
        );
        assert!(store
            .recent_spend(0, Some("nobody"))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store.account_costs_since(0).await.unwrap(),
            vec![("a".to_owned(), 0)]
        );
        let filtered = UsageFilter {
            key_id: Some("other".into()),
            since_ms: None,
        };
        assert_eq!(store.usage_totals(&filtered).await.unwrap().requests, 0);
        // Every optional field empty round-trips too.
        let bare = crate::UsageRecord {
            request_id: "req_2".into(),
            created_at_ms: 43,
            account_id: None,
            upstream_model: None,
            cost_nano_usd: None,
            charged_nano_usd: None,
            error_kind: None,
            ttfb_ms: None,
            user_agent: None,
            ..record
        };
        store
            .insert_usage(std::slice::from_ref(&bare))
            .await
            .unwrap();
        let recent = store
            .recent_usage(&UsageFilter::default(), 1)
            .await
            .unwrap();
        assert_eq!(recent, vec![bare]);
    }
}

#[tokio::test]
async fn reopening_keeps_data_and_does_not_rerun_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    {
        let store = Store::open(&path).await.unwrap();
        store.insert_key(&new_key("k1", "alice", 1)).await.unwrap();
        store.close().await;
    }
    let store = Store::open(&path).await.unwrap();
    assert_eq!(store.list_keys().await.unwrap().len(), 1);

    if let Some(url) = testing::postgres_url().await {
        let first = Store::connect(&url).await.unwrap();
        first.insert_key(&new_key("k1", "alice", 1)).await.unwrap();
        first.close().await;
        let again = Store::connect(&url).await.unwrap();
        assert_eq!(again.list_keys().await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn instances_starting_together_migrate_once() {
    let Some(url) = testing::postgres_url().await else {
        return;
    };
    // Four connects in flight at once, each on its own connection.
    let opened = tokio::join!(
        Store::connect(&url),
        Store::connect(&url),
        Store::connect(&url),
        Store::connect(&url)
    );
    for store in [opened.0, opened.1, opened.2, opened.3] {
        store.unwrap();
    }
    let store = Store::connect(&url).await.unwrap();
    let versions: Vec<i64> = on_db!(store, |pool, sql| sqlx::query_scalar(
        "SELECT version FROM schema_version ORDER BY version"
    )
    .fetch_all(pool)
    .await)
    .unwrap();
    let expected: Vec<i64> = schema::postgres::MIGRATIONS
        .iter()
        .map(|(version, _)| *version)
        .collect();
    assert_eq!(versions, expected, "each migration recorded exactly once");
}

/// `(table, column, type class, nullable)` of every table, comparable across backends.
async fn schema_shape(store: &Store) -> Vec<(String, String, &'static str, bool)> {
    let class = |declared: &str| -> &'static str {
        let declared = declared.to_ascii_lowercase();
        if declared.contains("int") {
            "integer"
        } else if declared.contains("bool") {
            "boolean"
        } else if declared.contains("blob") || declared.contains("bytea") {
            "bytes"
        } else {
            "text"
        }
    };
    let mut shape = Vec::new();
    match &store.db {
        Db::Sqlite(pool) => {
            for table in table_names(store).await {
                let columns: Vec<(String, String, bool, bool)> = sqlx::query_as(&format!(
                    "SELECT name, type, \"notnull\", pk FROM pragma_table_info('{table}')"
                ))
                .fetch_all(pool)
                .await
                .unwrap();
                for (column, declared, not_null, primary) in columns {
                    shape.push((
                        table.clone(),
                        column,
                        class(&declared),
                        !(not_null || primary),
                    ));
                }
            }
        }
        Db::Postgres(pool) => {
            let columns: Vec<(String, String, String, String)> = sqlx::query_as(
                "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text
                 FROM information_schema.columns WHERE table_schema = current_schema()",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            for (table, column, declared, nullable) in columns {
                shape.push((table, column, class(&declared), nullable == "YES"));
            }
        }
    }
    shape.sort();
    shape
}

#[tokio::test]
async fn both_backends_have_the_same_tables_and_columns() {
    let Some(postgres) = testing::postgres().await else {
        return;
    };
    let sqlite = testing::sqlite().await;
    let mut sqlite_shape = schema_shape(&sqlite.store).await;
    // SQLite stores booleans as integers; the column is declared as such there.
    for column in &mut sqlite_shape {
        if (column.0.as_str(), column.1.as_str()) == ("usage_records", "stream") {
            column.2 = "boolean";
        }
    }
    assert_eq!(sqlite_shape, schema_shape(&postgres.store).await);
    assert_eq!(
        schema::sqlite::MIGRATIONS
            .last()
            .map(|(version, _)| version),
        schema::postgres::MIGRATIONS
            .last()
            .map(|(version, _)| version),
        "both backends reach the same schema version"
    );
}

#[tokio::test]
async fn accounts_from_before_served_model_defaults_keep_serving_every_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    {
        // An installation at schema 10: migrations 11 and 12 not yet applied.
        let store = Store::open(&path).await.unwrap();
        let Db::Sqlite(pool) = &store.db else {
            unreachable!()
        };
        sqlx::raw_sql(
            "DELETE FROM schema_version WHERE version >= 11;
             ALTER TABLE usage_records DROP COLUMN reasoning_tokens;
             INSERT INTO accounts (id, name, platform, base_url, priority, status, secret_sealed,
                 secret_hint, created_at_ms, updated_at_ms, settings)
             VALUES ('a1', 'open', 'anthropic', NULL, 1, 'active', x'00', 'h', 1, 1, '{\"weight\":2}'),
                    ('a2', 'listed', 'anthropic', NULL, 1, 'active', x'00', 'h', 1, 1,
                     '{\"models\":[\"claude-sonnet-*\"]}');
             DROP TABLE changes;",
        )
        .execute(pool)
        .await
        .unwrap();
        // The triggers as they were before the change feed.
        let mut old_triggers = String::new();
        for table in ["relay_keys", "accounts"] {
            for operation in ["insert", "update", "delete"] {
                old_triggers.push_str(&format!(
                    "DROP TRIGGER {table}_{operation};
                     CREATE TRIGGER {table}_{operation} AFTER {operation} ON {table}
                     BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;"
                ));
            }
        }
        sqlx::raw_sql(&old_triggers).execute(pool).await.unwrap();
        store.close().await;
    }
    let store = Store::open(&path).await.unwrap();
    let Db::Sqlite(pool) = &store.db else {
        unreachable!()
    };
    let settings: Vec<(String, String, Option<i64>)> = sqlx::query_as(
        "SELECT name, json_extract(settings, '$.models'), json_extract(settings, '$.weight')
         FROM accounts ORDER BY name",
    )
    .fetch_all(pool)
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
        .fetch_all(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn every_change_of_a_key_is_in_the_feed_numbered_by_its_revision() {
    for database in testing::each_backend().await {
        let store = &database.store;
        let start = store.revision().await.unwrap();
        store.insert_key(&new_key("k1", "alice", 1)).await.unwrap();
        store.insert_key(&new_key("k2", "bob", 2)).await.unwrap();
        assert!(store.set_key_status("alice", "disabled", 2).await.unwrap());
        assert!(store.set_key_deleted("bob", Some(3), 3).await.unwrap());
        assert_eq!(store.purge_keys(4).await.unwrap(), vec!["bob".to_owned()]);
        let now = store.revision().await.unwrap();
        let changes = store.changes_after(start, 100).await.unwrap();
        assert_eq!(
            changes
                .iter()
                .map(|change| change.revision)
                .collect::<Vec<_>>(),
            ((start + 1)..=now).collect::<Vec<_>>(),
            "one change per revision, without gaps"
        );
        let named: Vec<(&str, u8)> = changes
            .iter()
            .map(|change| {
                assert_eq!(change.entity, ChangedEntity::Key);
                (change.id.as_str(), change.key_hash.as_ref().unwrap()[0])
            })
            .collect();
        assert_eq!(
            named,
            [("k1", 1), ("k2", 2), ("k1", 1), ("k2", 2), ("k2", 2)],
            "a purged key still names its hash"
        );
        assert_eq!(store.changes_after(start, 2).await.unwrap().len(), 2);
        assert!(store.changes_after(now, 100).await.unwrap().is_empty());

        let ids = ["k1".to_owned(), "gone".to_owned()];
        let mut read = Vec::new();
        store
            .for_each_key(Rows::Ids(&ids), |row| read.push(row.name))
            .await
            .unwrap();
        assert_eq!(read, ["alice"]);

        let account = crate::records::NewAccount {
            id: "a1".into(),
            name: "main".into(),
            platform: "anthropic".into(),
            base_url: None,
            priority: 1,
            secret_sealed: vec![0; 8],
            secret_hint: "…".into(),
            settings: "{}".into(),
            proxy_sealed: None,
            created_at_ms: 1,
        };
        store.insert_account(&account).await.unwrap();
        let change = store.changes_after(now, 100).await.unwrap();
        assert_eq!(change.len(), 1);
        assert_eq!(
            (change[0].entity, change[0].id.as_str(), &change[0].key_hash),
            (ChangedEntity::Account, "a1", &None)
        );
        let rows = store.accounts(Rows::Ids(&["a1".to_owned()])).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert!(store.accounts(Rows::Ids(&[])).await.unwrap().is_empty());
    }
}

/// Every table's name, on either backend.
async fn table_names(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = match &store.db {
        Db::Sqlite(pool) => sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
        Db::Postgres(pool) => sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema()",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
    };
    names.sort();
    names
}

#[tokio::test]
async fn a_copy_to_postgres_holds_every_row_of_every_table() {
    let Some(target) = testing::postgres().await else {
        return;
    };
    let source = testing::sqlite().await;
    let mut known: Vec<String> = crate::COPIED_TABLES
        .iter()
        .chain(crate::OWN_TABLES)
        .map(|name| (*name).to_owned())
        .collect();
    known.sort();
    for store in [&source.store, &target.store] {
        assert_eq!(
            table_names(store).await,
            known,
            "a new table must be copied or named as the database's own"
        );
    }
    // More keys and records than one insert statement takes.
    testing::insert_filler_keys(&source.store, 2_345).await;
    for n in 0..3 {
        source
            .store
            .insert_account(&crate::records::NewAccount {
                id: format!("a{n}"),
                name: format!("account-{n}"),
                platform: "anthropic".into(),
                base_url: (n == 1).then(|| "http://upstream".to_owned()),
                priority: n,
                secret_sealed: vec![n as u8; 40],
                secret_hint: "…".into(),
                settings: "{\"weight\":2}".into(),
                proxy_sealed: (n == 2).then(|| vec![9; 30]),
                created_at_ms: n,
            })
            .await
            .unwrap();
    }
    let records: Vec<crate::UsageRecord> = (0..1_500)
        .map(|n| crate::UsageRecord {
            request_id: format!("req_{n}"),
            created_at_ms: 1_000 + n,
            key_id: format!("filler-{}", n % 7),
            account_id: (n % 3 != 0).then(|| format!("a{}", n % 3)),
            platform: "anthropic".into(),
            endpoint: "messages".into(),
            model: "claude-sonnet-4-5".into(),
            upstream_model: None,
            stream: n % 2 == 0,
            usage: relay_protocol::Usage {
                input_tokens: n as u64,
                output_tokens: 2,
                cache_creation_5m_tokens: 3,
                cache_creation_1h_tokens: 4,
                cache_read_tokens: 5,
                reasoning_tokens: 1,
            },
            cost_nano_usd: (n % 5 != 0).then_some(n * 1_000),
            charged_nano_usd: (n % 5 == 0).then_some(77),
            status: 200,
            outcome: "ok".into(),
            error_kind: None,
            attempts: 1,
            latency_ms: 9,
            ttfb_ms: Some(3),
            user_agent: Some("claude-cli/2".into()),
        })
        .collect();
    source.store.insert_usage(&records).await.unwrap();
    let revision = target.store.revision().await.unwrap();

    let report = source.store.copy_into(&target.store).await.unwrap();
    let copied = |table: &str| {
        report
            .tables
            .iter()
            .find(|(name, _)| *name == table)
            .map(|(_, rows)| *rows)
    };
    assert_eq!(copied("relay_keys"), Some(2_345));
    assert_eq!(copied("accounts"), Some(3));
    assert_eq!(copied("usage_records"), Some(1_500));
    assert_eq!(
        target.store.revision().await.unwrap(),
        revision + 1,
        "one revision for the whole copy"
    );
    let rows = |store: &Store| {
        let store = store.clone();
        async move {
            let keys = format!("{:?}", store.list_keys().await.unwrap());
            let accounts = format!("{:?}", store.list_accounts().await.unwrap());
            let usage = store
                .recent_usage(&UsageFilter::default(), 2_000)
                .await
                .unwrap();
            let totals = store.usage_totals(&UsageFilter::default()).await.unwrap();
            let mut spend = store.key_spend(None).await.unwrap();
            spend.sort_by(|a, b| a.key_id.cmp(&b.key_id));
            (keys, accounts, usage, totals, spend)
        }
    };
    let (before, after) = (rows(&source.store).await, rows(&target.store).await);
    assert_eq!(before.0, after.0, "keys");
    assert_eq!(before.1, after.1, "accounts");
    assert_eq!(before.3, after.3, "totals");
    assert_eq!(before.4, after.4, "spend");
    assert!(before.2 == after.2, "usage records");
    let error = source.store.copy_into(&target.store).await.unwrap_err();
    assert!(error.to_string().contains("already holds data"), "{error}");
    assert!(source.store.copy_into(&source.store).await.is_err());
}
