//! Deferred recipients written straight into a stopped daemon's SQLite store (the daemon's
//! store module lives in its binary crate, so the rows follow
//! `shell-smol/src/store/schema.rs` by hand). Each message has one recipient, deferred
//! after one attempt, next attempt hours away: the daemon must load, index and schedule
//! them at start-up, and carry them while new mail flows.
//!
//! No spool files are written (a million 2 KB files would measure the disk, not the
//! daemon); nothing reads them before the next attempt, which lies beyond the run.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_core::{MessageId, Time, ulid};
use rusqlite::{Connection, params};

use crate::client::Res;

pub const DEFERRED_DOMAIN: &str = "deferred.example";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Inserts `n` deferred single-recipient messages for `tenant_domain`'s tenant.
pub fn deferred(db: &Path, tenant_domain: &str, n: usize) -> Res<Duration> {
    let started = std::time::Instant::now();
    let mut conn = Connection::open(db).map_err(|e| format!("{}: {e}", db.display()))?;
    let e = |e: rusqlite::Error| e.to_string();
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;")
        .map_err(e)?;
    let tenant: i64 = conn
        .query_row(
            "SELECT id FROM tenants WHERE domain = ?1",
            [tenant_domain],
            |r| r.get(0),
        )
        .map_err(|err| format!("tenant {tenant_domain}: {err}"))?;
    let now = now_ms();
    let next = now + 6 * 3_600_000;
    let expires = now + 7 * 86_400_000;
    let tx = conn.transaction().map_err(e)?;
    {
        let mut m = tx
            .prepare(
                "INSERT INTO messages (id, tenant_id, source, message_id_header, mail_from,
                    subject, tags, size, smtputf8, eight_bit, created_at, expires_at, status,
                    updated_at, idem_key, idem_hash, receipt)
                 VALUES (?1, ?2, 'api', ?3, ?4, 'deferred bench', '[]', 2048, 0, 0, ?5, ?6,
                    'deferred', ?5, NULL, NULL, NULL)",
            )
            .map_err(e)?;
        let mut r = tx
            .prepare(
                "INSERT INTO recipients (message_id, idx, address, domain, kind, status,
                    attempts, next_attempt_at, updated_at, reason)
                 VALUES (?1, 0, ?2, ?3, 'to', 'deferred', 1, ?4, ?5,
                    '451 4.3.0 try again later')",
            )
            .map_err(e)?;
        let from = format!("bench@{tenant_domain}");
        for i in 0..n {
            // Distinct millisecond stamps in the past keep the ids ordered and unique.
            let created = now - (n - i) as u64;
            let id = MessageId(ulid(Time(created), i as u128 + 1)).to_string();
            let header = format!("deferred-{i}@{tenant_domain}");
            let address = format!("user{i}@{DEFERRED_DOMAIN}");
            // Spread next attempts over an hour, as real retries would be.
            let at = (next + (i as u64 % 3_600_000)) as i64;
            m.execute(params![
                id,
                tenant,
                header,
                from,
                created as i64,
                expires as i64
            ])
            .map_err(e)?;
            r.execute(params![id, address, DEFERRED_DOMAIN, at, created as i64])
                .map_err(e)?;
        }
    }
    tx.commit().map_err(e)?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .map_err(e)?;
    Ok(started.elapsed())
}
