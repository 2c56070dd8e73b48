//! `Snapshot` at start-up, read in one read transaction (a consistent view).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use outpost_core::classify::Category;
use outpost_core::io::Receipt;
use outpost_core::model::{
    AttemptRecord, EndpointRecord, EventKind, EventRecord, IdempotencyEntry, PendingDelivery,
    PendingMessage, PendingRecipient, RecipientRecord, Snapshot, WebhookDeliveryRecord,
    WebhookSecret,
};
use outpost_core::smtp::Stage;
use outpost_core::status::RecipientStatus;
use outpost_core::{EndpointId, EventId, MessageId, TenantId, Time};
use rusqlite::fallible_streaming_iterator::FallibleStreamingIterator;
use rusqlite::{Connection, Row};

use super::StoreError;
use super::codec::*;
use super::schema::{LIVE_MESSAGE_STATUS_LIST, LIVE_MESSAGE_STATUSES};

pub fn load(
    conn: &mut Connection,
    now: Time,
    warmup_window: Duration,
    idempotency_window: Duration,
) -> Result<Snapshot, StoreError> {
    let tx = conn.transaction()?;
    let mut snap = Snapshot::default();
    live_messages(&tx, &mut snap)?;

    snap.suppressions = tx
        .prepare("SELECT tenant_id, address FROM suppressions ORDER BY tenant_id, address")?
        .query_map([], |r| {
            Ok((TenantId(u64_from_sql(r.get(0)?)), r.get::<_, String>(1)?))
        })?
        .collect::<Result<_, _>>()?;

    snap.recent_attempts = tx
        .prepare(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM delivery_attempts WHERE started_at >= ?1
             ORDER BY started_at, message_id, idx, attempt"
        ))?
        .query_map([time_to_sql(now.minus(warmup_window))], attempt_from_row)?
        .collect::<Result<_, _>>()?;

    snap.last_event_seq =
        u64_from_sql(tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?);

    snap.endpoints = endpoints(&tx, None)?;

    snap.pending_deliveries = tx
        .prepare(&format!(
            "SELECT d.endpoint_id, d.event_id, d.event_seq, d.tenant_id, d.state, d.attempts,
                d.next_attempt_at, d.updated_at, {EVENT_COLUMNS_E}
             FROM webhook_deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.state = 'pending' ORDER BY d.event_seq, d.endpoint_id"
        ))?
        .query_map([], |r| {
            Ok(PendingDelivery {
                delivery: delivery_from_row(r, 0)?,
                event: event_from_row(r, 8)?,
            })
        })?
        .collect::<Result<_, _>>()?;

    snap.idempotency = tx
        .prepare(
            "SELECT tenant_id, idem_key, idem_hash, receipt, created_at FROM messages
             WHERE idem_key IS NOT NULL AND created_at >= ?1 AND receipt IS NOT NULL
             ORDER BY created_at, id",
        )?
        .query_map([time_to_sql(now.minus(idempotency_window))], |r| {
            Ok(IdempotencyEntry {
                tenant: TenantId(u64_from_sql(r.get(0)?)),
                key: r.get(1)?,
                request_hash: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                receipt: get_json::<Receipt>(r, 3)?,
                created_at: time_from_sql(r.get(4)?),
            })
        })?
        .collect::<Result<_, _>>()?;

    tx.finish()?;
    Ok(snap)
}

pub(super) const ATTEMPT_COLUMNS: &str = "message_id, idx, tenant_id, domain, attempt, \
     started_at, duration_ms, status, stage, smtp_code, enhanced_code, response, category, rule, \
     mx, ip, tls, breaker_failure";

const EVENT_COLUMNS_E: &str =
    "e.seq, e.id, e.tenant_id, e.kind, e.at, e.message_id, e.idx, e.payload";

/// Every live message (≥1 non-terminal recipient) and all its recipients, read in one
/// pass into the form the engine keeps: one allocation per recipient address and per
/// Message-ID, senders and domains shared, nothing the engine does not use.
///
/// Two plans, chosen by how much of the id range the live messages fill (ids are
/// time-ordered, so the live set is the tail of the table plus stragglers):
/// - mostly live (a large backlog): one range scan of `messages` and one of
///   `recipients` from the oldest live id, merged here in id order (no per-message
///   B-tree descent: ~30% less CPU at a million messages);
/// - otherwise (a few live among much history): a join per live status through the
///   `messages_status` index, each in id order.
fn live_messages(conn: &Connection, snap: &mut Snapshot) -> Result<(), StoreError> {
    let (live, oldest): (i64, Option<String>) = conn.query_row(
        &format!("SELECT count(*), min(id) FROM messages WHERE status IN {LIVE_MESSAGE_STATUSES}"),
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let Some(oldest) = oldest else {
        return Ok(());
    };
    let live = usize::try_from(live).unwrap_or(0);
    snap.messages.reserve_exact(live);
    snap.recipients.reserve(live);
    // Rows from the oldest live id on, counted up to twice the live ones.
    let cap = live.saturating_mul(2).saturating_add(1);
    let in_range: i64 = conn.query_row(
        "SELECT count(*) FROM (SELECT 1 FROM messages WHERE id >= ?1 LIMIT ?2)",
        rusqlite::params![oldest, i64::try_from(cap).unwrap_or(i64::MAX)],
        |r| r.get(0),
    )?;
    let mut rd = Reader::default();
    if usize::try_from(in_range).unwrap_or(usize::MAX) < cap {
        rd.scan_from(conn, &oldest, snap)?;
    } else {
        rd.join_by_status(conn, snap)?;
    }
    // Both plans yield id order per run; the stable sort of sorted runs is linear.
    snap.messages.sort_by_key(|m| m.id);
    snap.recipients.sort_by_key(|r| (r.message, r.idx));
    Ok(())
}

/// Live messages and their recipients as one plan reads them.
#[cfg(test)]
pub(super) type LiveSet = (Vec<PendingMessage>, Vec<PendingRecipient>);

/// Both plans' results (scan, join), for the tests.
#[cfg(test)]
pub(super) fn live_messages_by_both_plans(conn: &Connection) -> Result<[LiveSet; 2], StoreError> {
    let mut out = [Snapshot::default(), Snapshot::default()];
    let oldest: Option<String> = conn.query_row(
        &format!("SELECT min(id) FROM messages WHERE status IN {LIVE_MESSAGE_STATUSES}"),
        [],
        |r| r.get(0),
    )?;
    if let Some(oldest) = oldest {
        Reader::default().scan_from(conn, &oldest, &mut out[0])?;
    }
    Reader::default().join_by_status(conn, &mut out[1])?;
    Ok(out.map(|mut s| {
        s.messages.sort_by_key(|m| m.id);
        s.recipients.sort_by_key(|r| (r.message, r.idx));
        (s.messages, s.recipients)
    }))
}

/// Reads live messages and recipients; shares repeated senders and domains.
#[derive(Default)]
struct Reader {
    shared: HashSet<Arc<str>>,
    last_from: Option<Arc<str>>,
    last_domain: Option<Arc<str>>,
}

const PENDING_MESSAGE_COLUMNS: &str = "id, tenant_id, message_id_header, mail_from, size, \
     smtputf8, eight_bit, created_at, expires_at";
const PENDING_RECIPIENT_COLUMNS: &str =
    "message_id, idx, address, domain, status, attempts, next_attempt_at";

impl Reader {
    /// One allocation per distinct string. Consecutive rows often repeat the same one (a
    /// bulk send), so the last is checked before hashing.
    fn share(shared: &mut HashSet<Arc<str>>, last: &mut Option<Arc<str>>, s: &str) -> Arc<str> {
        if let Some(a) = last.as_ref().filter(|a| ***a == *s) {
            return a.clone();
        }
        let a = match shared.get(s) {
            Some(a) => a.clone(),
            None => {
                let a: Arc<str> = Arc::from(s);
                shared.insert(a.clone());
                a
            }
        };
        *last = Some(a.clone());
        a
    }

    /// `PENDING_MESSAGE_COLUMNS` from `at` on.
    fn message(
        &mut self,
        r: &Row<'_>,
        at: usize,
        id: MessageId,
    ) -> rusqlite::Result<PendingMessage> {
        Ok(PendingMessage {
            id,
            tenant: TenantId(u64_from_sql(r.get(at + 1)?)),
            message_id_header: get_str(r, at + 2)?.into(),
            mail_from: Self::share(&mut self.shared, &mut self.last_from, get_str(r, at + 3)?),
            size: u64_from_sql(r.get(at + 4)?),
            smtputf8: r.get(at + 5)?,
            eight_bit: r.get(at + 6)?,
            created_at: time_from_sql(r.get(at + 7)?),
            expires_at: time_from_sql(r.get(at + 8)?),
        })
    }

    /// `PENDING_RECIPIENT_COLUMNS` from `at` on (its message id is `message`).
    fn recipient(
        &mut self,
        r: &Row<'_>,
        at: usize,
        message: MessageId,
    ) -> rusqlite::Result<PendingRecipient> {
        Ok(PendingRecipient {
            message,
            idx: r.get(at + 1)?,
            address: get_str(r, at + 2)?.into(),
            domain: Self::share(&mut self.shared, &mut self.last_domain, get_str(r, at + 3)?),
            status: parse_str(r, at + 4, "recipient status", RecipientStatus::parse)?,
            attempts: r.get(at + 5)?,
            next_attempt_at: r.get::<_, Option<i64>>(at + 6)?.map(time_from_sql),
        })
    }

    fn join_by_status(&mut self, conn: &Connection, snap: &mut Snapshot) -> Result<(), StoreError> {
        let mut stmt = conn.prepare(&format!(
            "SELECT m.{}, r.{} FROM messages m JOIN recipients r ON r.message_id = m.id
             WHERE m.status = ?1 ORDER BY m.id",
            PENDING_MESSAGE_COLUMNS.replace(", ", ", m."),
            PENDING_RECIPIENT_COLUMNS.replace(", ", ", r."),
        ))?;
        for status in LIVE_MESSAGE_STATUS_LIST {
            let mut rows = stmt.query([status])?;
            while let Some(r) = rows.next()? {
                let id = parse_str(r, 0, "message id", |s| s.parse::<MessageId>().ok())?;
                if snap.messages.last().is_none_or(|m| m.id != id) {
                    snap.messages.push(self.message(r, 0, id)?);
                }
                snap.recipients.push(self.recipient(r, 9, id)?);
            }
        }
        Ok(())
    }

    fn scan_from(
        &mut self,
        conn: &Connection,
        oldest: &str,
        snap: &mut Snapshot,
    ) -> Result<(), StoreError> {
        let mut ms = conn.prepare(&format!(
            "SELECT {PENDING_MESSAGE_COLUMNS}, status FROM messages WHERE id >= ?1 ORDER BY id"
        ))?;
        let mut rs = conn.prepare(&format!(
            "SELECT {PENDING_RECIPIENT_COLUMNS} FROM recipients WHERE message_id >= ?1
             ORDER BY message_id, idx"
        ))?;
        let mut messages = ms.query([oldest])?;
        let mut recipients = rs.query([oldest])?;
        let mut next_rcpt = recipients.next()?.is_some();
        while let Some(m) = messages.next()? {
            if !LIVE_MESSAGE_STATUS_LIST.contains(&get_str(m, 9)?) {
                continue;
            }
            let text_id = get_str(m, 0)?;
            let id = parse_str(m, 0, "message id", |s| s.parse::<MessageId>().ok())?;
            snap.messages.push(self.message(m, 0, id)?);
            // Recipients in (message id, idx) order: skip those of messages that are not
            // live, take this one's.
            while next_rcpt {
                let Some(r) = recipients.get() else { break };
                let of = get_str(r, 0)?;
                if of > text_id {
                    break;
                }
                if of == text_id {
                    snap.recipients.push(self.recipient(r, 0, id)?);
                }
                next_rcpt = recipients.next()?.is_some();
            }
        }
        Ok(())
    }
}

/// Recipient columns from `at` on (idx, address, domain, kind, status, attempts,
/// next_attempt_at, updated_at, reason).
pub(super) fn recipient_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<RecipientRecord> {
    Ok(RecipientRecord {
        idx: r.get(at)?,
        address: r.get(at + 1)?,
        domain: r.get(at + 2)?,
        kind: get_parsed(r, at + 3, "recipient kind", kind_parse)?,
        status: get_parsed(r, at + 4, "recipient status", RecipientStatus::parse)?,
        attempts: r.get(at + 5)?,
        next_attempt_at: r.get::<_, Option<i64>>(at + 6)?.map(time_from_sql),
        updated_at: time_from_sql(r.get(at + 7)?),
        reason: r.get(at + 8)?,
    })
}

pub(super) fn attempt_from_row(r: &Row<'_>) -> rusqlite::Result<AttemptRecord> {
    Ok(AttemptRecord {
        message: get_parsed(r, 0, "message id", |s| s.parse().ok())?,
        idx: r.get(1)?,
        tenant: TenantId(u64_from_sql(r.get(2)?)),
        domain: r.get(3)?,
        attempt: r.get(4)?,
        started_at: time_from_sql(r.get(5)?),
        duration_ms: u64_from_sql(r.get(6)?),
        status: get_parsed(r, 7, "attempt status", RecipientStatus::parse)?,
        stage: get_parsed(r, 8, "stage", Stage::parse)?,
        smtp_code: r.get(9)?,
        enhanced_code: r.get(10)?,
        response: r.get(11)?,
        category: get_parsed(r, 12, "category", Category::parse)?,
        rule: r.get(13)?,
        mx: r.get(14)?,
        ip: r.get(15)?,
        tls: get_json(r, 16)?,
        breaker_failure: r.get(17)?,
    })
}

/// Event columns from `at` on (seq, id, tenant_id, kind, at, message_id, idx, payload).
pub(super) fn event_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<EventRecord> {
    Ok(EventRecord {
        seq: u64_from_sql(r.get(at)?),
        id: get_parsed(r, at + 1, "event id", |s| s.parse::<EventId>().ok())?,
        tenant: TenantId(u64_from_sql(r.get(at + 2)?)),
        kind: get_parsed(r, at + 3, "event type", EventKind::parse)?,
        at: time_from_sql(r.get(at + 4)?),
        message: get_parsed(r, at + 5, "message id", |s| s.parse().ok())?,
        idx: r.get(at + 6)?,
        payload: r.get::<_, String>(at + 7)?.into(),
    })
}

/// Delivery columns from `at` on (endpoint_id, event_id, event_seq, tenant_id, state,
/// attempts, next_attempt_at, updated_at).
pub(super) fn delivery_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<WebhookDeliveryRecord> {
    Ok(WebhookDeliveryRecord {
        endpoint: get_parsed(r, at, "endpoint id", |s| s.parse::<EndpointId>().ok())?,
        event: get_parsed(r, at + 1, "event id", |s| s.parse::<EventId>().ok())?,
        event_seq: u64_from_sql(r.get(at + 2)?),
        tenant: TenantId(u64_from_sql(r.get(at + 3)?)),
        state: get_parsed(r, at + 4, "delivery state", delivery_state_parse)?,
        attempts: r.get(at + 5)?,
        next_attempt_at: r.get::<_, Option<i64>>(at + 6)?.map(time_from_sql),
        updated_at: time_from_sql(r.get(at + 7)?),
    })
}

/// Endpoints (all, or one tenant's) with their secrets: two queries.
pub(super) fn endpoints(
    conn: &Connection,
    tenant: Option<TenantId>,
) -> Result<Vec<EndpointRecord>, StoreError> {
    let tenant_sql = tenant.map(|t| u64_to_sql(t.0));
    let mut eps: BTreeMap<EndpointId, EndpointRecord> = conn
        .prepare_cached(
            "SELECT id, tenant_id, url, events, created_at FROM webhook_endpoints
             WHERE ?1 IS NULL OR tenant_id = ?1",
        )?
        .query_map([tenant_sql], |r| {
            let events: Vec<String> = get_json(r, 3)?;
            let events = events
                .iter()
                .map(|s| EventKind::parse(s).ok_or_else(|| bad_column(3, "event type", s)))
                .collect::<rusqlite::Result<_>>()?;
            Ok(EndpointRecord {
                id: get_parsed(r, 0, "endpoint id", |s| s.parse().ok())?,
                tenant: TenantId(u64_from_sql(r.get(1)?)),
                url: r.get(2)?,
                events,
                secrets: Vec::new(),
                created_at: time_from_sql(r.get(4)?),
            })
        })?
        .map(|e| e.map(|e| (e.id, e)))
        .collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT s.endpoint_id, s.key, s.created_at, s.expires_at
         FROM webhook_secrets s JOIN webhook_endpoints e ON e.id = s.endpoint_id
         WHERE ?1 IS NULL OR e.tenant_id = ?1
         ORDER BY s.endpoint_id, s.pos",
    )?;
    let rows = stmt.query_map([tenant_sql], |r| {
        Ok((
            get_parsed(r, 0, "endpoint id", |s| s.parse::<EndpointId>().ok())?,
            WebhookSecret {
                key: r.get(1)?,
                created_at: time_from_sql(r.get(2)?),
                expires_at: r.get::<_, Option<i64>>(3)?.map(time_from_sql),
            },
        ))
    })?;
    for row in rows {
        let (id, secret) = row?;
        if let Some(ep) = eps.get_mut(&id) {
            ep.secrets.push(secret);
        }
    }
    Ok(eps.into_values().collect())
}
