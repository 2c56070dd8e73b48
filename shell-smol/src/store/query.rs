//! Reads for the API (always scoped to one tenant), and the API's own writes: tenants and
//! API keys (not engine state). List endpoints read a page and its children in two
//! queries, never one per row.

use std::collections::BTreeMap;

use outpost_core::classify::Category;
use outpost_core::model::{
    AttemptRecord, EndpointRecord, EventKind, EventRecord, MessageRecord, SuppressionRecord,
    WebhookAttemptRecord, WebhookDeliveryRecord,
};
use outpost_core::status::MessageStatus;
use outpost_core::{EndpointId, EventId, MessageId, TenantId, Time};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::StoreError;
use super::codec::*;
use super::schema::LIVE_MESSAGE_STATUSES;
use super::snapshot::{
    ATTEMPT_COLUMNS, attempt_from_row, delivery_from_row, endpoints, event_from_row,
    recipient_from_row,
};

/// A tenant as the API knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub domain: String,
}

/// Ids of messages with any non-terminal recipient.
pub fn live_messages(conn: &mut Connection) -> Result<Vec<MessageId>, StoreError> {
    let ids = conn
        .prepare_cached(&format!(
            "SELECT id FROM messages WHERE status IN {LIVE_MESSAGE_STATUSES} ORDER BY id"
        ))?
        .query_map([], |r| get_parsed(r, 0, "message id", |s| s.parse().ok()))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

/// Creates the tenant for `domain` if needed and stores a new key's hash for it.
pub fn create_key(
    conn: &mut Connection,
    domain: &str,
    key_hash_hex: &str,
    prefix: &str,
    now: Time,
) -> Result<Tenant, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO tenants (domain, created_at) VALUES (?1, ?2) ON CONFLICT(domain) DO NOTHING",
        params![domain, time_to_sql(now)],
    )?;
    let id: i64 = tx.query_row("SELECT id FROM tenants WHERE domain = ?1", [domain], |r| {
        r.get(0)
    })?;
    tx.execute(
        "INSERT INTO api_keys (tenant_id, key_hash, prefix, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![id, key_hash_hex, prefix, time_to_sql(now)],
    )?;
    tx.commit()?;
    Ok(Tenant {
        id: TenantId(u64_from_sql(id)),
        domain: domain.to_string(),
    })
}

pub(super) const TENANT_BY_KEY_HASH_SQL: &str = "SELECT t.id, t.domain FROM api_keys k \
     JOIN tenants t ON t.id = k.tenant_id WHERE k.key_hash = ?1 AND k.revoked_at IS NULL";

/// The tenant owning the (unrevoked) key with this SHA-256 hash.
pub fn tenant_by_key_hash(
    conn: &mut Connection,
    key_hash_hex: &str,
) -> Result<Option<Tenant>, StoreError> {
    Ok(conn
        .prepare_cached(TENANT_BY_KEY_HASH_SQL)?
        .query_row([key_hash_hex], |r| {
            Ok(Tenant {
                id: TenantId(u64_from_sql(r.get(0)?)),
                domain: r.get(1)?,
            })
        })
        .optional()?)
}

/// A tenant by its domain (for SMTP submission: the envelope sender's tenant).
pub fn tenant_by_domain(conn: &mut Connection, domain: &str) -> Result<Option<Tenant>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id, domain FROM tenants WHERE domain = ?1")?
        .query_row([domain], |r| {
            Ok(Tenant {
                id: TenantId(u64_from_sql(r.get(0)?)),
                domain: r.get(1)?,
            })
        })
        .optional()?)
}

/// All tenants, by id (for metrics labels).
pub fn tenants(conn: &mut Connection) -> Result<Vec<Tenant>, StoreError> {
    let rows = conn
        .prepare_cached("SELECT id, domain FROM tenants ORDER BY id")?
        .query_map([], |r| {
            Ok(Tenant {
                id: TenantId(u64_from_sql(r.get(0)?)),
                domain: r.get(1)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

const MESSAGE_COLUMNS: &str = "id, tenant_id, source, message_id_header, mail_from, subject, \
     tags, size, smtputf8, eight_bit, created_at, expires_at";

fn message_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRecord> {
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
        idempotency: None,
        recipients: Vec::new(),
    })
}

/// `?,?,...` for an `IN (...)` list of `n` values, rounded up to a power of two so that
/// the statement is one of a few cached ones, not one per page size; `pad_in_list` fills
/// the extra slots by repeating the last value (harmless in `IN`).
fn in_list_placeholders(n: usize) -> String {
    vec!["?"; n.max(1).next_power_of_two()].join(",")
}

fn pad_in_list(values: &mut Vec<String>) {
    let n = values.len().max(1).next_power_of_two();
    if let Some(last) = values.last().cloned() {
        values.resize(n, last);
    }
}

/// Recipients of these messages, attached in order (one query).
fn attach_recipients(conn: &Connection, messages: &mut [MessageRecord]) -> Result<(), StoreError> {
    if messages.is_empty() {
        return Ok(());
    }
    let placeholders = in_list_placeholders(messages.len());
    let mut ids: Vec<String> = messages.iter().map(|m| m.id.to_string()).collect();
    pad_in_list(&mut ids);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT message_id, idx, address, domain, kind, status, attempts, next_attempt_at,
            updated_at, reason
         FROM recipients WHERE message_id IN ({placeholders}) ORDER BY message_id, idx"
    ))?;
    let mut by_id: BTreeMap<MessageId, usize> = BTreeMap::new();
    for (i, m) in messages.iter().enumerate() {
        by_id.insert(m.id, i);
    }
    let rows = stmt.query_map(params_from_iter(ids.iter()), |r| {
        Ok((
            get_parsed(r, 0, "message id", |s| s.parse::<MessageId>().ok())?,
            recipient_from_row(r, 1)?,
        ))
    })?;
    for row in rows {
        let (id, rcpt) = row?;
        if let Some(&i) = by_id.get(&id) {
            messages[i].recipients.push(rcpt);
        }
    }
    Ok(())
}

pub(super) const LIST_MESSAGES_SQL: &str = "SELECT id, tenant_id, source, message_id_header, \
     mail_from, subject, tags, size, smtputf8, eight_bit, created_at, expires_at FROM messages \
     WHERE tenant_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3";
pub(super) const LIST_MESSAGES_BY_STATUS_SQL: &str = "SELECT id, tenant_id, source, \
     message_id_header, mail_from, subject, tags, size, smtputf8, eight_bit, created_at, \
     expires_at FROM messages \
     WHERE tenant_id = ?1 AND id < ?2 AND status = ?4 ORDER BY id DESC LIMIT ?3";

/// One page of the send log, newest first: messages older than `before` (the cursor),
/// optionally with this derived status. Two queries.
pub fn list_messages(
    conn: &mut Connection,
    tenant: TenantId,
    status: Option<MessageStatus>,
    before: Option<MessageId>,
    limit: usize,
) -> Result<Vec<MessageRecord>, StoreError> {
    // Ids are `msg_` + fixed-width base32: "msg_~" sorts after every one of them.
    let before = before.map_or_else(|| "msg_~".to_string(), |b| b.to_string());
    let mut messages: Vec<MessageRecord> = match status {
        None => conn
            .prepare_cached(LIST_MESSAGES_SQL)?
            .query_map(
                params![u64_to_sql(tenant.0), before, limit as i64],
                message_row,
            )?
            .collect::<Result<_, _>>()?,
        Some(status) => conn
            .prepare_cached(LIST_MESSAGES_BY_STATUS_SQL)?
            .query_map(
                params![u64_to_sql(tenant.0), before, limit as i64, status.as_str()],
                message_row,
            )?
            .collect::<Result<_, _>>()?,
    };
    attach_recipients(conn, &mut messages)?;
    Ok(messages)
}

/// One message of the tenant with its recipients and attempt timeline.
pub fn get_message(
    conn: &mut Connection,
    tenant: TenantId,
    id: MessageId,
) -> Result<Option<(MessageRecord, Vec<AttemptRecord>)>, StoreError> {
    get_message_scoped(conn, Some(tenant), id)
}

/// Like [`get_message`], for the admin: any tenant's message (`tenant: None`).
pub fn get_message_scoped(
    conn: &mut Connection,
    tenant: Option<TenantId>,
    id: MessageId,
) -> Result<Option<(MessageRecord, Vec<AttemptRecord>)>, StoreError> {
    let idstr = id.to_string();
    let msg = match tenant {
        Some(tenant) => conn
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1 AND tenant_id = ?2"
            ))?
            .query_row(params![idstr, u64_to_sql(tenant.0)], message_row)
            .optional()?,
        None => conn
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1"
            ))?
            .query_row(params![idstr], message_row)
            .optional()?,
    };
    let Some(msg) = msg else { return Ok(None) };
    let mut msgs = [msg];
    attach_recipients(conn, &mut msgs)?;
    let [msg] = msgs;
    let attempts = conn
        .prepare_cached(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM delivery_attempts WHERE message_id = ?1
             ORDER BY started_at, idx, attempt"
        ))?
        .query_map([&idstr], attempt_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(Some((msg, attempts)))
}

/// Events after `after` (a sequence number), oldest first: (seq, payload JSON).
pub fn list_events(
    conn: &mut Connection,
    tenant: TenantId,
    after: u64,
    kind: Option<EventKind>,
    limit: usize,
) -> Result<Vec<(u64, String)>, StoreError> {
    let row = |r: &rusqlite::Row<'_>| Ok((u64_from_sql(r.get(0)?), r.get(1)?));
    let (tenant, after, limit) = (u64_to_sql(tenant.0), u64_to_sql(after), limit as i64);
    let rows = match kind {
        None => conn
            .prepare_cached(
                "SELECT seq, payload FROM events WHERE tenant_id = ?1 AND seq > ?2
                 ORDER BY seq LIMIT ?3",
            )?
            .query_map(params![tenant, after, limit], row)?
            .collect::<Result<_, _>>()?,
        Some(kind) => conn
            .prepare_cached(
                "SELECT seq, payload FROM events WHERE tenant_id = ?1 AND kind = ?4 AND seq > ?2
                 ORDER BY seq LIMIT ?3",
            )?
            .query_map(params![tenant, after, limit, kind.as_str()], row)?
            .collect::<Result<_, _>>()?,
    };
    Ok(rows)
}

/// The tenant's suppressions after `after` (an address), ordered by address.
pub fn list_suppressions(
    conn: &mut Connection,
    tenant: TenantId,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<SuppressionRecord>, StoreError> {
    let rows = conn
        .prepare_cached(
            "SELECT tenant_id, address, source, reason, category, smtp_code, enhanced_code,
                event_id, created_at
             FROM suppressions WHERE tenant_id = ?1 AND address > ?2
             ORDER BY address LIMIT ?3",
        )?
        .query_map(
            params![u64_to_sql(tenant.0), after.unwrap_or(""), limit as i64],
            |r| {
                Ok(SuppressionRecord {
                    tenant: TenantId(u64_from_sql(r.get(0)?)),
                    address: r.get(1)?,
                    source: get_parsed(r, 2, "suppression source", suppression_source_parse)?,
                    reason: r.get(3)?,
                    category: get_parsed_opt(r, 4, "category", Category::parse)?,
                    smtp_code: r.get(5)?,
                    enhanced_code: r.get(6)?,
                    event: get_parsed_opt(r, 7, "event id", |s| s.parse::<EventId>().ok())?,
                    created_at: time_from_sql(r.get(8)?),
                })
            },
        )?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub fn suppression_exists(
    conn: &mut Connection,
    tenant: TenantId,
    address: &str,
) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM suppressions WHERE tenant_id = ?1 AND address = ?2")?
        .query_row(params![u64_to_sql(tenant.0), address], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The tenant's webhook endpoints (with secrets: callers must not show them).
pub fn list_endpoints(
    conn: &mut Connection,
    tenant: TenantId,
) -> Result<Vec<EndpointRecord>, StoreError> {
    endpoints(conn, Some(tenant))
}

pub fn endpoint_exists(
    conn: &mut Connection,
    tenant: TenantId,
    id: EndpointId,
) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM webhook_endpoints WHERE id = ?1 AND tenant_id = ?2")?
        .query_row(params![id.to_string(), u64_to_sql(tenant.0)], |_| Ok(()))
        .optional()?
        .is_some())
}

/// One delivery of an event to an endpoint, with its event type and POST attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryLog {
    pub delivery: WebhookDeliveryRecord,
    pub kind: Option<EventKind>,
    pub attempts: Vec<WebhookAttemptRecord>,
}

/// The endpoint's deliveries, newest event first, before `before_seq`. Two queries.
pub fn list_deliveries(
    conn: &mut Connection,
    tenant: TenantId,
    endpoint: EndpointId,
    before_seq: Option<u64>,
    limit: usize,
) -> Result<Vec<DeliveryLog>, StoreError> {
    let ep = endpoint.to_string();
    let mut logs: Vec<DeliveryLog> = conn
        .prepare_cached(
            "SELECT d.endpoint_id, d.event_id, d.event_seq, d.tenant_id, d.state, d.attempts,
                d.next_attempt_at, d.updated_at, e.kind
             FROM webhook_deliveries d LEFT JOIN events e ON e.id = d.event_id
             WHERE d.endpoint_id = ?1 AND d.tenant_id = ?2 AND d.event_seq < ?3
             ORDER BY d.event_seq DESC LIMIT ?4",
        )?
        .query_map(
            params![
                ep,
                u64_to_sql(tenant.0),
                before_seq.map_or(i64::MAX, u64_to_sql),
                limit as i64
            ],
            |r| {
                Ok(DeliveryLog {
                    delivery: delivery_from_row(r, 0)?,
                    kind: get_parsed_opt(r, 8, "event type", EventKind::parse)?,
                    attempts: Vec::new(),
                })
            },
        )?
        .collect::<Result<_, _>>()?;
    if logs.is_empty() {
        return Ok(logs);
    }
    let index: BTreeMap<EventId, usize> = logs
        .iter()
        .enumerate()
        .map(|(i, l)| (l.delivery.event, i))
        .collect();
    let placeholders = in_list_placeholders(logs.len());
    let mut events: Vec<String> = logs.iter().map(|l| l.delivery.event.to_string()).collect();
    pad_in_list(&mut events);
    let mut args: Vec<String> = vec![ep.clone()];
    args.extend(events);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT endpoint_id, event_id, tenant_id, attempt, at, duration_ms, status_code, error
         FROM webhook_attempts WHERE endpoint_id = ? AND event_id IN ({placeholders})
         ORDER BY event_id, attempt"
    ))?;
    let rows = stmt.query_map(params_from_iter(args.iter()), |r| {
        Ok(WebhookAttemptRecord {
            endpoint: get_parsed(r, 0, "endpoint id", |s| s.parse().ok())?,
            event: get_parsed(r, 1, "event id", |s| s.parse().ok())?,
            tenant: TenantId(u64_from_sql(r.get(2)?)),
            attempt: r.get(3)?,
            at: time_from_sql(r.get(4)?),
            duration_ms: u64_from_sql(r.get(5)?),
            status_code: r.get(6)?,
            error: r.get(7)?,
        })
    })?;
    for row in rows {
        let a = row?;
        if let Some(&i) = index.get(&a.event) {
            logs[i].attempts.push(a);
        }
    }
    Ok(logs)
}

/// A delivery of `event` to the tenant's endpoint with its event and the attempts made so
/// far, to replay it when the engine no longer remembers it (finished before a restart).
pub fn delivery_for_replay(
    conn: &mut Connection,
    tenant: TenantId,
    endpoint: EndpointId,
    event: EventId,
) -> Result<Option<(EventRecord, u32)>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT d.attempts, e.seq, e.id, e.tenant_id, e.kind, e.at, e.message_id, e.idx,
                e.payload
             FROM webhook_deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.endpoint_id = ?1 AND d.tenant_id = ?2 AND d.event_id = ?3
               AND e.tenant_id = ?2",
        )?
        .query_row(
            params![
                endpoint.to_string(),
                u64_to_sql(tenant.0),
                event.to_string()
            ],
            |r| Ok((event_from_row(r, 1)?, r.get::<_, u32>(0)?)),
        )
        .optional()?)
}
