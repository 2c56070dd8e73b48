//! `Snapshot` at start-up, read in one read transaction (a consistent view).

use std::collections::BTreeMap;
use std::time::Duration;

use outpost_core::classify::Category;
use outpost_core::io::Receipt;
use outpost_core::model::{
    AttemptRecord, EndpointRecord, EventKind, EventRecord, Idempotency, IdempotencyEntry,
    MessageRecord, PendingDelivery, RecipientRecord, Snapshot, WebhookDeliveryRecord,
    WebhookSecret,
};
use outpost_core::smtp::Stage;
use outpost_core::status::RecipientStatus;
use outpost_core::{EndpointId, EventId, MessageId, TenantId, Time};
use rusqlite::{Connection, Row};

use super::StoreError;
use super::codec::*;
use super::schema::LIVE_MESSAGE_STATUSES;

pub fn load(
    conn: &mut Connection,
    now: Time,
    warmup_window: Duration,
    idempotency_window: Duration,
) -> Result<Snapshot, StoreError> {
    let tx = conn.transaction()?;
    let mut snap = Snapshot {
        messages: live_messages(&tx)?,
        ..Snapshot::default()
    };

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

const MESSAGE_COLUMNS: &str = "id, tenant_id, source, message_id_header, mail_from, subject, \
     tags, size, smtputf8, eight_bit, created_at, expires_at, idem_key, idem_hash";

const RECIPIENT_COLUMNS: &str =
    "message_id, idx, address, domain, kind, status, attempts, next_attempt_at, updated_at, reason";

pub(super) const ATTEMPT_COLUMNS: &str = "message_id, idx, tenant_id, domain, attempt, \
     started_at, duration_ms, status, stage, smtp_code, enhanced_code, response, category, rule, \
     mx, ip, tls, breaker_failure";

const EVENT_COLUMNS_E: &str =
    "e.seq, e.id, e.tenant_id, e.kind, e.at, e.message_id, e.idx, e.payload";

/// Every live message (≥1 non-terminal recipient) with all its recipients: two queries.
fn live_messages(conn: &Connection) -> Result<Vec<MessageRecord>, StoreError> {
    let mut messages: BTreeMap<MessageId, MessageRecord> = conn
        .prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE status IN {LIVE_MESSAGE_STATUSES}"
        ))?
        .query_map([], message_from_row)?
        .map(|m| m.map(|m| (m.id, m)))
        .collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id IN
            (SELECT id FROM messages WHERE status IN {LIVE_MESSAGE_STATUSES})
         ORDER BY message_id, idx"
    ))?;
    let rows = stmt.query_map([], |r| {
        Ok((
            get_parsed(r, 0, "message id", |s| s.parse::<MessageId>().ok())?,
            recipient_from_row(r, 1)?,
        ))
    })?;
    for row in rows {
        let (id, rcpt) = row?;
        if let Some(m) = messages.get_mut(&id) {
            m.recipients.push(rcpt);
        }
    }
    Ok(messages.into_values().collect())
}

fn message_from_row(r: &Row<'_>) -> rusqlite::Result<MessageRecord> {
    let idem_key: Option<String> = r.get(12)?;
    let idem_hash: Option<String> = r.get(13)?;
    Ok(MessageRecord {
        id: get_parsed(r, 0, "message id", |s| s.parse().ok())?,
        tenant: TenantId(u64_from_sql(r.get(1)?)),
        source: get_parsed(r, 2, "source", source_parse)?,
        message_id_header: r.get(3)?,
        mail_from: r.get(4)?,
        subject: r.get(5)?,
        tags: get_json(r, 6)?,
        size: u64_from_sql(r.get(7)?),
        smtputf8: r.get(8)?,
        eight_bit: r.get(9)?,
        created_at: time_from_sql(r.get(10)?),
        expires_at: time_from_sql(r.get(11)?),
        idempotency: idem_key.map(|key| Idempotency {
            key,
            request_hash: idem_hash.unwrap_or_default(),
        }),
        recipients: Vec::new(),
    })
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
