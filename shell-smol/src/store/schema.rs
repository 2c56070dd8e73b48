//! The SQLite schema, versioned. Migrations run at open, in one transaction each.
//!
//! Conventions: times are INTEGER milliseconds since the Unix epoch; ids are their printed
//! form (`msg_…`, `evt_…`, `whk_…`: fixed-width Crockford base32 ULIDs, so `ORDER BY id`
//! is creation order); enums are their snake_case names as the core prints them.

use rusqlite::{Connection, OptionalExtension};

use super::StoreError;

/// Non-terminal recipient statuses as an SQL list, and the matching message statuses
/// (a message is live while any recipient is non-terminal; its derived status is then one
/// of these).
pub const LIVE_MESSAGE_STATUSES: &str = "('queued','sending','deferred')";
/// The same, one by one.
pub const LIVE_MESSAGE_STATUS_LIST: [&str; 3] = ["queued", "sending", "deferred"];

const MIGRATIONS: &[&str] = &[
    // 1: everything.
    r#"
CREATE TABLE tenants (
    id          INTEGER PRIMARY KEY,
    domain      TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

-- API keys, SHA-256 of the key in hex; the key itself is never stored.
CREATE TABLE api_keys (
    id          INTEGER PRIMARY KEY,
    tenant_id   INTEGER NOT NULL REFERENCES tenants(id),
    key_hash    TEXT NOT NULL UNIQUE,
    -- The first characters of the key, to tell keys apart in listings.
    prefix      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX api_keys_tenant ON api_keys(tenant_id);

CREATE TABLE messages (
    id                 TEXT PRIMARY KEY,
    tenant_id          INTEGER NOT NULL,
    source             TEXT NOT NULL,
    message_id_header  TEXT NOT NULL,
    mail_from          TEXT NOT NULL,
    subject            TEXT NOT NULL,
    tags               TEXT NOT NULL,          -- JSON array of strings
    size               INTEGER NOT NULL,
    smtputf8           INTEGER NOT NULL,
    eight_bit          INTEGER NOT NULL,
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    -- Derived from the recipients; kept up to date by every recipient write.
    status             TEXT NOT NULL,
    updated_at         INTEGER NOT NULL,
    idem_key           TEXT,
    idem_hash          TEXT,
    receipt            TEXT                    -- JSON Receipt, when idem_key is set
) WITHOUT ROWID;
-- Send log: newest first per tenant, optionally by status.
CREATE INDEX messages_tenant ON messages(tenant_id, id);
CREATE INDEX messages_tenant_status ON messages(tenant_id, status, id);
-- Live set (recovery, spool scan): status IN ('queued','sending','deferred').
CREATE INDEX messages_status ON messages(status, id);
-- Idempotency keys (recovery by age; several rows may share a key across windows).
CREATE INDEX messages_idem ON messages(created_at) WHERE idem_key IS NOT NULL;
CREATE INDEX messages_idem_key ON messages(tenant_id, idem_key) WHERE idem_key IS NOT NULL;

CREATE TABLE recipients (
    message_id       TEXT NOT NULL REFERENCES messages(id),
    idx              INTEGER NOT NULL,
    address          TEXT NOT NULL,
    domain           TEXT NOT NULL,
    kind             TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    next_attempt_at  INTEGER,
    updated_at       INTEGER NOT NULL,
    reason           TEXT,
    PRIMARY KEY (message_id, idx)
) WITHOUT ROWID;

CREATE TABLE delivery_attempts (
    message_id     TEXT NOT NULL,
    idx            INTEGER NOT NULL,
    attempt        INTEGER NOT NULL,
    tenant_id      INTEGER NOT NULL,
    domain         TEXT NOT NULL,
    started_at     INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    status         TEXT NOT NULL,
    stage          TEXT NOT NULL,
    smtp_code      INTEGER,
    enhanced_code  TEXT,
    response       TEXT NOT NULL,
    category       TEXT NOT NULL,
    rule           TEXT NOT NULL,
    mx             TEXT,
    ip             TEXT,
    tls            TEXT NOT NULL,              -- JSON TlsRecord
    breaker_failure INTEGER NOT NULL,
    PRIMARY KEY (message_id, idx, attempt)
) WITHOUT ROWID;
-- Breaker warm-up: attempts of the last hour.
CREATE INDEX delivery_attempts_started ON delivery_attempts(started_at);

-- The outbox.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    tenant_id   INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    at          INTEGER NOT NULL,
    message_id  TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    payload     TEXT NOT NULL
);
CREATE INDEX events_tenant ON events(tenant_id, seq);
CREATE INDEX events_tenant_kind ON events(tenant_id, kind, seq);

CREATE TABLE webhook_endpoints (
    id          TEXT PRIMARY KEY,
    tenant_id   INTEGER NOT NULL,
    url         TEXT NOT NULL,
    events      TEXT NOT NULL,                 -- JSON array of event types; [] = all
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints(tenant_id, id);

-- Signing keys, raw bytes as they are used; pos 0 is the newest.
CREATE TABLE webhook_secrets (
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    pos         INTEGER NOT NULL,
    key         BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    PRIMARY KEY (endpoint_id, pos)
) WITHOUT ROWID;

CREATE TABLE webhook_deliveries (
    endpoint_id      TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    event_seq        INTEGER NOT NULL,
    tenant_id        INTEGER NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    next_attempt_at  INTEGER,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, event_id)
) WITHOUT ROWID;
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries(endpoint_id, event_seq);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries(event_seq) WHERE state = 'pending';

CREATE TABLE webhook_attempts (
    endpoint_id  TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    tenant_id    INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    duration_ms  INTEGER NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    PRIMARY KEY (endpoint_id, event_id, attempt)
) WITHOUT ROWID;

CREATE TABLE suppressions (
    tenant_id      INTEGER NOT NULL,
    address        TEXT NOT NULL,
    source         TEXT NOT NULL,
    reason         TEXT NOT NULL,
    category       TEXT,
    smtp_code      INTEGER,
    enhanced_code  TEXT,
    event_id       TEXT,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, address)
) WITHOUT ROWID;
"#,
];

/// The schema version this build writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to `CURRENT_VERSION`. Refuses a database written by a newer build.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        if version > CURRENT_VERSION {
            return Err(StoreError::Schema(format!(
                "database schema version {version} is newer than this build's {CURRENT_VERSION}"
            )));
        }
        if version == CURRENT_VERSION {
            return Ok(());
        }
        let sql = MIGRATIONS[version as usize];
        tx.execute_batch(sql)?;
        tx.execute("DELETE FROM schema_version", [])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [version + 1],
        )?;
        tx.commit()?;
        tracing::info!(version = version + 1, "store schema migrated");
    }
}
