//! PostgreSQL migrations. Version 11 is the whole schema that SQLite reached by its version 11
//! (PostgreSQL support began there); later versions mirror SQLite's, one for one.
//!
//! Several instances may start together: the store takes a transaction-scoped advisory lock
//! before it reads the version, so one of them migrates and the others then find nothing to do.

/// `(version, sql)`; append only, never edit a shipped entry.
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (
        11,
        r#"
CREATE TABLE revision (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO revision (id, value) VALUES (1, 1);

CREATE TABLE admins (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE relay_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    key_hash      BYTEA NOT NULL UNIQUE,
    key_hint      TEXT NOT NULL,
    status        TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    policy        TEXT NOT NULL DEFAULT '{}',
    description   TEXT NOT NULL DEFAULT '',
    owner         TEXT,
    tags          TEXT NOT NULL DEFAULT '',
    deleted_at_ms BIGINT
);

CREATE TABLE accounts (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    platform           TEXT NOT NULL,
    base_url           TEXT,
    priority           BIGINT NOT NULL,
    status             TEXT NOT NULL,
    secret_sealed      BYTEA NOT NULL,
    secret_hint        TEXT NOT NULL,
    created_at_ms      BIGINT NOT NULL,
    updated_at_ms      BIGINT NOT NULL,
    health_reset_at_ms BIGINT NOT NULL DEFAULT 0,
    settings           TEXT NOT NULL DEFAULT '{}',
    proxy_sealed       BYTEA
);

CREATE FUNCTION bump_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE revision SET value = value + 1 WHERE id = 1;
    PERFORM pg_notify('claude_relay_changes', current_schema());
    RETURN NULL;
END
$$;
CREATE TRIGGER relay_keys_change AFTER INSERT OR UPDATE OR DELETE ON relay_keys
    FOR EACH ROW EXECUTE FUNCTION bump_revision();
CREATE TRIGGER accounts_change AFTER INSERT OR UPDATE OR DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION bump_revision();

CREATE TABLE usage_records (
    id                       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id               TEXT NOT NULL,
    created_at_ms            BIGINT NOT NULL,
    key_id                   TEXT NOT NULL,
    account_id               TEXT,
    platform                 TEXT NOT NULL,
    endpoint                 TEXT NOT NULL,
    model                    TEXT NOT NULL,
    upstream_model           TEXT,
    stream                   BOOLEAN NOT NULL,
    input_tokens             BIGINT NOT NULL,
    output_tokens            BIGINT NOT NULL,
    cache_creation_5m_tokens BIGINT NOT NULL,
    cache_creation_1h_tokens BIGINT NOT NULL,
    cache_read_tokens        BIGINT NOT NULL,
    cost_nano_usd            BIGINT,
    status                   BIGINT NOT NULL,
    outcome                  TEXT NOT NULL,
    error_kind               TEXT,
    attempts                 BIGINT NOT NULL,
    latency_ms               BIGINT NOT NULL,
    ttfb_ms                  BIGINT,
    user_agent               TEXT,
    charged_nano_usd         BIGINT,
    reasoning_tokens         BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX usage_records_key_time ON usage_records (key_id, created_at_ms);
CREATE INDEX usage_records_time ON usage_records (created_at_ms);

CREATE TABLE admin_sessions (
    token_hash    BYTEA PRIMARY KEY,
    admin_id      TEXT NOT NULL REFERENCES admins (id) ON DELETE CASCADE,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);

CREATE TABLE oauth_pending (
    name            TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    verifier_sealed BYTEA NOT NULL,
    settings        TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL
);

CREATE TABLE account_events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id TEXT NOT NULL,
    at_ms      BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    until_ms   BIGINT,
    evidence   TEXT NOT NULL
);
CREATE INDEX account_events_account_time ON account_events (account_id, at_ms);

CREATE TABLE installation_secrets (
    name   TEXT PRIMARY KEY,
    sealed BYTEA NOT NULL
);
"#,
    ),
    (
        12,
        r#"
CREATE TABLE changes (
    revision  BIGINT PRIMARY KEY,
    entity    TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    key_hash  BYTEA
);

CREATE OR REPLACE FUNCTION bump_revision() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    next_revision BIGINT;
    changed_id    TEXT;
    old_hash      BYTEA;
BEGIN
    UPDATE revision SET value = value + 1 WHERE id = 1 RETURNING value INTO next_revision;
    IF TG_OP = 'DELETE' THEN
        changed_id := OLD.id;
    ELSE
        changed_id := NEW.id;
    END IF;
    IF TG_TABLE_NAME = 'relay_keys' THEN
        IF TG_OP = 'INSERT' THEN
            old_hash := NEW.key_hash;
        ELSE
            old_hash := OLD.key_hash;
        END IF;
    END IF;
    INSERT INTO changes (revision, entity, entity_id, key_hash)
        VALUES (next_revision,
                CASE TG_TABLE_NAME WHEN 'relay_keys' THEN 'key' ELSE 'account' END,
                changed_id, old_hash);
    DELETE FROM changes WHERE revision <= next_revision - 10000;
    PERFORM pg_notify('claude_relay_changes', current_schema());
    RETURN NULL;
END
$$;
"#,
    ),
];
