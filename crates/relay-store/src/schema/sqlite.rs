//! SQLite migrations, applied in order at open; each runs once, inside a transaction.

/// `(version, sql)`; append only, never edit a shipped entry.
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE revision (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO revision (id, value) VALUES (1, 1);

CREATE TABLE admins (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE relay_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    key_hash      BLOB NOT NULL UNIQUE,
    key_hint      TEXT NOT NULL,
    status        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE accounts (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    platform      TEXT NOT NULL,
    base_url      TEXT,
    priority      INTEGER NOT NULL,
    status        TEXT NOT NULL,
    secret_sealed BLOB NOT NULL,
    secret_hint   TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TRIGGER relay_keys_insert AFTER INSERT ON relay_keys
    BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER relay_keys_update AFTER UPDATE ON relay_keys
    BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER relay_keys_delete AFTER DELETE ON relay_keys
    BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER accounts_insert AFTER INSERT ON accounts
    BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER accounts_update AFTER UPDATE ON accounts
    BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER accounts_delete AFTER DELETE ON accounts
    BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;

CREATE TABLE usage_records (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id            TEXT NOT NULL,
    created_at_ms         INTEGER NOT NULL,
    key_id                TEXT NOT NULL,
    account_id            TEXT,
    platform              TEXT NOT NULL,
    endpoint              TEXT NOT NULL,
    model                 TEXT NOT NULL,
    upstream_model        TEXT,
    stream                INTEGER NOT NULL,
    input_tokens          INTEGER NOT NULL,
    output_tokens         INTEGER NOT NULL,
    cache_creation_5m_tokens INTEGER NOT NULL,
    cache_creation_1h_tokens INTEGER NOT NULL,
    cache_read_tokens     INTEGER NOT NULL,
    cost_nano_usd         INTEGER,
    status                INTEGER NOT NULL,
    outcome               TEXT NOT NULL,
    error_kind            TEXT,
    attempts              INTEGER NOT NULL,
    latency_ms            INTEGER NOT NULL,
    ttfb_ms               INTEGER,
    user_agent            TEXT
);
CREATE INDEX usage_records_key_time ON usage_records (key_id, created_at_ms);
CREATE INDEX usage_records_time ON usage_records (created_at_ms);
"#,
    ),
    (
        2,
        r#"
ALTER TABLE relay_keys ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';
"#,
    ),
    (
        3,
        r#"
ALTER TABLE relay_keys ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE relay_keys ADD COLUMN owner TEXT;
ALTER TABLE relay_keys ADD COLUMN tags TEXT NOT NULL DEFAULT '';
ALTER TABLE relay_keys ADD COLUMN deleted_at_ms INTEGER;
"#,
    ),
    (
        4,
        r#"
CREATE TABLE admin_sessions (
    token_hash    BLOB PRIMARY KEY,
    admin_id      TEXT NOT NULL REFERENCES admins (id) ON DELETE CASCADE,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
"#,
    ),
    (
        5,
        r#"
ALTER TABLE accounts ADD COLUMN health_reset_at_ms INTEGER NOT NULL DEFAULT 0;

CREATE TABLE oauth_pending (
    name            TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    verifier_sealed BLOB NOT NULL,
    settings        TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL
);
"#,
    ),
    (
        6,
        r#"
ALTER TABLE accounts ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
"#,
    ),
    (
        7,
        r#"
ALTER TABLE accounts ADD COLUMN proxy_sealed BLOB;
"#,
    ),
    (
        8,
        r#"
CREATE TABLE account_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id    TEXT NOT NULL,
    at_ms         INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    until_ms      INTEGER,
    evidence      TEXT NOT NULL
);
CREATE INDEX account_events_account_time ON account_events (account_id, at_ms);
"#,
    ),
    (
        9,
        r#"
CREATE TABLE installation_secrets (
    name   TEXT PRIMARY KEY,
    sealed BLOB NOT NULL
);
"#,
    ),
    (
        10,
        r#"
ALTER TABLE usage_records ADD COLUMN charged_nano_usd INTEGER;
"#,
    ),
    (
        11,
        // Accounts without a model list used to serve every model; a missing list now means
        // the platform's defaults, so existing accounts get the list that keeps their routing.
        // Reasoning tokens are recorded on their own (they are also part of output_tokens).
        r#"
UPDATE accounts SET settings = json_set(COALESCE(NULLIF(settings, ''), '{}'), '$.models', json('["*"]'))
 WHERE json_extract(COALESCE(NULLIF(settings, ''), '{}'), '$.models') IS NULL;
ALTER TABLE usage_records ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
"#,
    ),
    (
        12,
        // The change feed: one row per changed key or account, numbered by the revision its
        // change produced, so a server reads only what changed since the revision it holds.
        // The last 10,000 are kept; a server further behind reloads everything.
        r#"
CREATE TABLE changes (
    revision  INTEGER PRIMARY KEY,
    entity    TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    key_hash  BLOB
);
DROP TRIGGER relay_keys_insert;
CREATE TRIGGER relay_keys_insert AFTER INSERT ON relay_keys BEGIN
    UPDATE revision SET value = value + 1 WHERE id = 1;
    INSERT INTO changes (revision, entity, entity_id, key_hash)
        SELECT value, 'key', NEW.id, NEW.key_hash FROM revision WHERE id = 1;
    DELETE FROM changes WHERE revision <= (SELECT value FROM revision WHERE id = 1) - 10000;
END;
DROP TRIGGER relay_keys_update;
CREATE TRIGGER relay_keys_update AFTER UPDATE ON relay_keys BEGIN
    UPDATE revision SET value = value + 1 WHERE id = 1;
    INSERT INTO changes (revision, entity, entity_id, key_hash)
        SELECT value, 'key', NEW.id, OLD.key_hash FROM revision WHERE id = 1;
    DELETE FROM changes WHERE revision <= (SELECT value FROM revision WHERE id = 1) - 10000;
END;
DROP TRIGGER relay_keys_delete;
CREATE TRIGGER relay_keys_delete AFTER DELETE ON relay_keys BEGIN
    UPDATE revision SET value = value + 1 WHERE id = 1;
    INSERT INTO changes (revision, entity, entity_id, key_hash)
        SELECT value, 'key', OLD.id, OLD.key_hash FROM revision WHERE id = 1;
    DELETE FROM changes WHERE revision <= (SELECT value FROM revision WHERE id = 1) - 10000;
END;
DROP TRIGGER accounts_insert;
CREATE TRIGGER accounts_insert AFTER INSERT ON accounts BEGIN
    UPDATE revision SET value = value + 1 WHERE id = 1;
    INSERT INTO changes (revision, entity, entity_id, key_hash)
        SELECT value, 'account', NEW.id, NULL FROM revision WHERE id = 1;
    DELETE FROM changes WHERE revision <= (SELECT value FROM revision WHERE id = 1) - 10000;
END;
DROP TRIGGER accounts_update;
CREATE TRIGGER accounts_update AFTER UPDATE ON accounts BEGIN
    UPDATE revision SET value = value + 1 WHERE id = 1;
    INSERT INTO changes (revision, entity, entity_id, key_hash)
        SELECT value, 'account', NEW.id, NULL FROM revision WHERE id = 1;
    DELETE FROM changes WHERE revision <= (SELECT value FROM revision WHERE id = 1) - 10000;
END;
DROP TRIGGER accounts_delete;
CREATE TRIGGER accounts_delete AFTER DELETE ON accounts BEGIN
    UPDATE revision SET value = value + 1 WHERE id = 1;
    INSERT INTO changes (revision, entity, entity_id, key_hash)
        SELECT value, 'account', OLD.id, NULL FROM revision WHERE id = 1;
    DELETE FROM changes WHERE revision <= (SELECT value FROM revision WHERE id = 1) - 10000;
END;
"#,
    ),
];
