//! The simulated store: applies `Output::Persist` batches atomically (the world decides
//! whether a batch commits at all), honours the terminal guard on `UpdateRecipient`, keeps
//! spool bytes, keeps a history of every recipient's statuses for the invariant checks,
//! and builds the start-up `Snapshot` the way a real store's queries would.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use outpost_core::io::{Receipt, ReceiptRecipient};
use outpost_core::model::{
    AttemptRecord, EndpointRecord, EventKind, EventRecord, IdempotencyEntry, MessageRecord,
    PendingDelivery, Snapshot, StoreOp, SuppressionRecord, WebhookDeliveryRecord,
    WebhookDeliveryState,
};
use outpost_core::status::RecipientStatus;
use outpost_core::{EndpointId, EventId, MessageId, TenantId, Time};

#[derive(Clone, Debug)]
pub struct SpoolEntry {
    pub bytes: Arc<[u8]>,
    pub modified: Time,
}

/// One recipient status as written to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusEntry {
    pub at: Time,
    pub status: RecipientStatus,
    pub attempts: u32,
}

/// What one applied batch did, for the invariant checks.
#[derive(Debug, Default)]
pub struct Applied {
    /// (message, idx, new status, whether an event is expected for it).
    pub changes: Vec<(MessageId, u32, RecipientStatus, bool)>,
    /// Updates refused by the terminal guard: (message, idx, stored, attempted).
    pub guarded: Vec<(MessageId, u32, RecipientStatus, RecipientStatus)>,
    /// Updates of recipients the store does not have.
    pub unknown: Vec<(MessageId, u32)>,
    pub events: Vec<(MessageId, u32, EventKind, u64, EventId, TenantId)>,
    pub deliveries: Vec<(EndpointId, EventId)>,
    pub inserted: Vec<MessageId>,
    pub suppressions_added: Vec<(TenantId, String)>,
    pub suppressions_removed: Vec<(TenantId, String)>,
    pub endpoints_upserted: Vec<EndpointId>,
    pub endpoints_deleted: Vec<EndpointId>,
    /// A queued/deferred recipient written without a due time.
    pub undue: Vec<(MessageId, u32, RecipientStatus)>,
    /// Event seqs not above the highest persisted before.
    pub seq_regressions: Vec<(u64, u64)>,
}

#[derive(Default)]
pub struct Store {
    pub messages: BTreeMap<MessageId, MessageRecord>,
    /// Every status each recipient had, in order (for "no terminal status is changed").
    pub history: HashMap<(MessageId, u32), Vec<StatusEntry>>,
    /// Messages with at least one non-terminal recipient.
    pub live: BTreeSet<MessageId>,
    pub spool: BTreeMap<MessageId, SpoolEntry>,
    pub attempts: Vec<AttemptRecord>,
    pub events: Vec<EventRecord>,
    pub event_index: HashMap<EventId, usize>,
    pub last_seq: u64,
    pub suppressions: BTreeMap<(TenantId, String), SuppressionRecord>,
    pub endpoints: BTreeMap<EndpointId, EndpointRecord>,
    pub deliveries: BTreeMap<(EndpointId, EventId), WebhookDeliveryRecord>,
    pub webhook_attempts: u64,
    pub idempotency: BTreeMap<(TenantId, String), IdempotencyEntry>,
    pub batches_applied: u64,
}

fn expects_event(
    prev: Option<&RecipientRecordLite>,
    status: RecipientStatus,
    attempts: u32,
) -> bool {
    if EventKind::for_status(status).is_none() {
        return false;
    }
    match prev {
        None => true,
        Some(p) => {
            p.status != status || (status == RecipientStatus::Deferred && attempts > p.attempts)
        }
    }
}

struct RecipientRecordLite {
    status: RecipientStatus,
    attempts: u32,
}

impl Store {
    /// Applies all operations of one committed batch.
    pub fn apply(&mut self, now: Time, ops: &[StoreOp]) -> Applied {
        let mut a = Applied::default();
        self.batches_applied += 1;
        for op in ops {
            match op {
                StoreOp::InsertMessage { message, spool } => {
                    // Idempotent by message id.
                    if self.messages.contains_key(&message.id) {
                        continue;
                    }
                    self.spool.insert(
                        message.id,
                        SpoolEntry {
                            bytes: spool.clone(),
                            modified: now,
                        },
                    );
                    let mut any_live = false;
                    for r in &message.recipients {
                        self.history.insert(
                            (message.id, r.idx),
                            vec![StatusEntry {
                                at: now,
                                status: r.status,
                                attempts: r.attempts,
                            }],
                        );
                        a.changes.push((
                            message.id,
                            r.idx,
                            r.status,
                            expects_event(None, r.status, r.attempts),
                        ));
                        if !r.status.is_terminal() {
                            any_live = true;
                            if matches!(
                                r.status,
                                RecipientStatus::Queued | RecipientStatus::Deferred
                            ) && r.next_attempt_at.is_none()
                            {
                                a.undue.push((message.id, r.idx, r.status));
                            }
                        }
                    }
                    if any_live {
                        self.live.insert(message.id);
                    }
                    if let Some(idem) = &message.idempotency {
                        self.idempotency.insert(
                            (message.tenant, idem.key.clone()),
                            IdempotencyEntry {
                                tenant: message.tenant,
                                key: idem.key.clone(),
                                request_hash: idem.request_hash.clone(),
                                receipt: receipt_of(message),
                                created_at: message.created_at,
                            },
                        );
                    }
                    a.inserted.push(message.id);
                    self.messages.insert(message.id, message.clone());
                }
                StoreOp::UpdateRecipient {
                    message,
                    idx,
                    status,
                    attempts,
                    next_attempt_at,
                    at,
                    reason,
                } => {
                    let Some(m) = self.messages.get_mut(message) else {
                        a.unknown.push((*message, *idx));
                        continue;
                    };
                    let Some(r) = m.recipients.iter_mut().find(|r| r.idx == *idx) else {
                        a.unknown.push((*message, *idx));
                        continue;
                    };
                    // The terminal guard (`WHERE status NOT IN (terminal)` in SQL).
                    if r.status.is_terminal() {
                        a.guarded.push((*message, *idx, r.status, *status));
                        continue;
                    }
                    let prev = RecipientRecordLite {
                        status: r.status,
                        attempts: r.attempts,
                    };
                    a.changes.push((
                        *message,
                        *idx,
                        *status,
                        expects_event(Some(&prev), *status, *attempts),
                    ));
                    r.status = *status;
                    r.attempts = *attempts;
                    r.next_attempt_at = *next_attempt_at;
                    r.updated_at = *at;
                    r.reason = reason.clone();
                    if matches!(status, RecipientStatus::Queued | RecipientStatus::Deferred)
                        && next_attempt_at.is_none()
                    {
                        a.undue.push((*message, *idx, *status));
                    }
                    self.history
                        .entry((*message, *idx))
                        .or_default()
                        .push(StatusEntry {
                            at: now,
                            status: *status,
                            attempts: *attempts,
                        });
                    if m.recipients.iter().all(|r| r.status.is_terminal()) {
                        self.live.remove(message);
                    }
                }
                StoreOp::InsertAttempt(rec) => self.attempts.push(rec.clone()),
                StoreOp::InsertEvent(ev) => {
                    if ev.seq <= self.last_seq {
                        a.seq_regressions.push((ev.seq, self.last_seq));
                    }
                    self.last_seq = self.last_seq.max(ev.seq);
                    a.events
                        .push((ev.message, ev.idx, ev.kind, ev.seq, ev.id, ev.tenant));
                    self.event_index.insert(ev.id, self.events.len());
                    self.events.push(ev.clone());
                }
                StoreOp::AddSuppression(s) => {
                    let key = (s.tenant, s.address.to_lowercase());
                    a.suppressions_added.push(key.clone());
                    self.suppressions.insert(key, s.clone());
                }
                StoreOp::RemoveSuppression { tenant, address } => {
                    let key = (*tenant, address.to_lowercase());
                    if self.suppressions.remove(&key).is_some() {
                        a.suppressions_removed.push(key);
                    }
                }
                StoreOp::UpsertEndpoint(e) => {
                    a.endpoints_upserted.push(e.id);
                    self.endpoints.insert(e.id, e.clone());
                }
                StoreOp::DeleteEndpoint { tenant, endpoint } => {
                    if self
                        .endpoints
                        .get(endpoint)
                        .is_some_and(|e| e.tenant == *tenant)
                    {
                        self.endpoints.remove(endpoint);
                        a.endpoints_deleted.push(*endpoint);
                    }
                }
                StoreOp::UpsertWebhookDelivery(d) => {
                    a.deliveries.push((d.endpoint, d.event));
                    self.deliveries.insert((d.endpoint, d.event), d.clone());
                }
                StoreOp::InsertWebhookAttempt(_) => self.webhook_attempts += 1,
            }
        }
        a
    }

    /// The recipient's current record.
    pub fn recipient(
        &self,
        m: MessageId,
        idx: u32,
    ) -> Option<&outpost_core::model::RecipientRecord> {
        self.messages
            .get(&m)?
            .recipients
            .iter()
            .find(|r| r.idx == idx)
    }

    /// What a real store hands the engine at start-up.
    pub fn snapshot(&self, now: Time, cfg: &outpost_core::Config) -> Snapshot {
        let since = now.minus(cfg.breaker.warmup_window);
        let idem_since = now.minus(cfg.idempotency_window);
        let mut snapshot = Snapshot {
            suppressions: self.suppressions.keys().cloned().collect(),
            recent_attempts: self
                .attempts
                .iter()
                .filter(|a| a.started_at >= since)
                .cloned()
                .collect(),
            last_event_seq: self.last_seq,
            endpoints: self.endpoints.values().cloned().collect(),
            pending_deliveries: self
                .deliveries
                .values()
                .filter(|d| d.state == WebhookDeliveryState::Pending)
                .filter_map(|d| {
                    let ev = self.events.get(*self.event_index.get(&d.event)?)?;
                    Some(PendingDelivery {
                        delivery: d.clone(),
                        event: ev.clone(),
                    })
                })
                .collect(),
            idempotency: self
                .idempotency
                .values()
                .filter(|e| e.created_at >= idem_since)
                .cloned()
                .collect(),
            ..Snapshot::default()
        };
        for m in self.live.iter().filter_map(|id| self.messages.get(id)) {
            snapshot.push_message(m);
        }
        snapshot
    }
}

/// The receipt as the store remembers it for an idempotent replay: the message as inserted.
pub fn receipt_of(m: &MessageRecord) -> Receipt {
    Receipt {
        id: m.id,
        message_id: m.message_id_header.clone(),
        status: m.status(),
        recipients: m
            .recipients
            .iter()
            .map(|r| ReceiptRecipient {
                address: r.address.clone(),
                status: r.status,
            })
            .collect(),
    }
}

/// A batch that breaks the outbox rule: every status change with an event kind has
/// exactly one event of that kind in the same batch, and every event belongs to one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboxIssue {
    /// The event's recipient update was refused by the terminal guard.
    EventForRefusedUpdate {
        message: MessageId,
        idx: u32,
        kind: EventKind,
        seq: u64,
        stored: RecipientStatus,
        attempted: RecipientStatus,
    },
    EventWithoutChange {
        message: MessageId,
        idx: u32,
        kind: EventKind,
        seq: u64,
    },
    ChangeWithoutEvent {
        message: MessageId,
        idx: u32,
        kind: EventKind,
    },
}

impl core::fmt::Display for OutboxIssue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            OutboxIssue::EventForRefusedUpdate {
                message,
                idx,
                kind,
                seq,
                stored,
                attempted,
            } => write!(
                f,
                "event {} (seq {seq}) for {message}#{idx} persisted although its update to {} was refused by the terminal guard: it is already {}",
                kind.as_str(),
                attempted.as_str(),
                stored.as_str()
            ),
            OutboxIssue::EventWithoutChange {
                message,
                idx,
                kind,
                seq,
            } => write!(
                f,
                "event {} (seq {seq}) for {message}#{idx} without a matching status change in the batch",
                kind.as_str()
            ),
            OutboxIssue::ChangeWithoutEvent { message, idx, kind } => write!(
                f,
                "{message}#{idx} changed status without its {} event",
                kind.as_str()
            ),
        }
    }
}

/// The outbox rule over one applied batch. A recipient inserted already final (suppressed
/// at intake) may also announce `queued` (queued -> suppressed inside one transaction).
pub fn outbox_issues(a: &Applied) -> Vec<OutboxIssue> {
    let mut want: BTreeMap<(MessageId, u32, EventKind), i32> = BTreeMap::new();
    let mut optional_queued: BTreeSet<(MessageId, u32)> = BTreeSet::new();
    for (m, i, s, expects) in &a.changes {
        if *expects && let Some(k) = EventKind::for_status(*s) {
            *want.entry((*m, *i, k)).or_default() += 1;
        }
        if a.inserted.contains(m) && *s != RecipientStatus::Queued {
            optional_queued.insert((*m, *i));
        }
    }
    let mut out = Vec::new();
    for (m, i, k, seq, _, _) in &a.events {
        if *k == EventKind::Queued && optional_queued.remove(&(*m, *i)) {
            continue;
        }
        let e = want.entry((*m, *i, *k)).or_default();
        *e -= 1;
        if *e < 0 {
            out.push(match a.guarded.iter().find(|g| g.0 == *m && g.1 == *i) {
                Some(g) => OutboxIssue::EventForRefusedUpdate {
                    message: *m,
                    idx: *i,
                    kind: *k,
                    seq: *seq,
                    stored: g.2,
                    attempted: g.3,
                },
                None => OutboxIssue::EventWithoutChange {
                    message: *m,
                    idx: *i,
                    kind: *k,
                    seq: *seq,
                },
            });
        }
    }
    for ((m, i, k), n) in want {
        if n > 0 {
            out.push(OutboxIssue::ChangeWithoutEvent {
                message: m,
                idx: i,
                kind: k,
            });
        }
    }
    out
}

/// Checks one recipient's status history: once terminal, never anything else. Returns a
/// description of the first overwrite.
pub fn check_history(history: &[StatusEntry]) -> Result<(), String> {
    let mut terminal: Option<&StatusEntry> = None;
    for e in history {
        if let Some(t) = terminal {
            return Err(format!(
                "terminal status {:?} (at {:?}) overwritten by {:?} at {:?}",
                t.status, t.at, e.status, e.at
            ));
        }
        if e.status.is_terminal() {
            terminal = Some(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_core::model::{RecipientKind, RecipientRecord, Source};

    fn msg(id: u128) -> MessageRecord {
        MessageRecord {
            id: MessageId(id),
            tenant: TenantId(1),
            source: Source::Api,
            message_id_header: "x@y".into(),
            mail_from: "a@t.com".into(),
            subject: String::new(),
            tags: vec![],
            size: 10,
            smtputf8: false,
            eight_bit: false,
            created_at: Time(0),
            expires_at: Time(1_000_000),
            idempotency: None,
            recipients: (0..2)
                .map(|i| RecipientRecord {
                    idx: i,
                    address: format!("u{i}@d.net"),
                    domain: "d.net".into(),
                    kind: RecipientKind::To,
                    status: RecipientStatus::Queued,
                    attempts: 0,
                    next_attempt_at: Some(Time(0)),
                    updated_at: Time(0),
                    reason: None,
                })
                .collect(),
        }
    }

    fn upd(id: u128, idx: u32, status: RecipientStatus) -> StoreOp {
        StoreOp::UpdateRecipient {
            message: MessageId(id),
            idx,
            status,
            attempts: 1,
            next_attempt_at: None,
            at: Time(5),
            reason: None,
        }
    }

    #[test]
    fn terminal_guard_and_live_set() {
        let mut s = Store::default();
        let spool: Arc<[u8]> = Arc::from(&b"hi\r\n"[..]);
        s.apply(
            Time(1),
            &[StoreOp::InsertMessage {
                message: msg(7),
                spool,
            }],
        );
        assert!(s.live.contains(&MessageId(7)));
        assert!(s.spool.contains_key(&MessageId(7)));
        let a = s.apply(Time(2), &[upd(7, 0, RecipientStatus::Delivered)]);
        assert_eq!(a.changes.len(), 1);
        let a = s.apply(Time(3), &[upd(7, 0, RecipientStatus::Bounced)]);
        assert_eq!(a.guarded.len(), 1);
        assert_eq!(
            s.recipient(MessageId(7), 0).map(|r| r.status),
            Some(RecipientStatus::Delivered)
        );
        assert!(s.live.contains(&MessageId(7)));
        s.apply(Time(4), &[upd(7, 1, RecipientStatus::Failed)]);
        assert!(!s.live.contains(&MessageId(7)));
        assert!(check_history(&s.history[&(MessageId(7), 0)]).is_ok());
        let a = s.apply(Time(5), &[upd(8, 0, RecipientStatus::Failed)]);
        assert_eq!(a.unknown, vec![(MessageId(8), 0)]);
    }

    #[test]
    fn snapshot_holds_only_live_messages_and_recent_attempts() {
        let mut s = Store::default();
        let spool: Arc<[u8]> = Arc::from(&b"hi\r\n"[..]);
        s.apply(
            Time(1),
            &[StoreOp::InsertMessage {
                message: msg(1),
                spool: spool.clone(),
            }],
        );
        s.apply(
            Time(1),
            &[StoreOp::InsertMessage {
                message: msg(2),
                spool,
            }],
        );
        s.apply(
            Time(2),
            &[
                upd(2, 0, RecipientStatus::Delivered),
                upd(2, 1, RecipientStatus::Bounced),
            ],
        );
        let cfg = outpost_core::Config::default();
        let snap = s.snapshot(Time(10), &cfg);
        assert_eq!(snap.messages.len(), 1);
        assert_eq!(snap.messages[0].id, MessageId(1));
        assert_eq!(snap.last_event_seq, 0);
    }

    #[test]
    fn history_check_catches_an_overwrite() {
        let e = |t, s| StatusEntry {
            at: Time(t),
            status: s,
            attempts: 1,
        };
        assert!(
            check_history(&[
                e(1, RecipientStatus::Queued),
                e(2, RecipientStatus::Delivered)
            ])
            .is_ok()
        );
        assert!(
            check_history(&[
                e(1, RecipientStatus::Queued),
                e(2, RecipientStatus::Delivered),
                e(3, RecipientStatus::Bounced)
            ])
            .is_err()
        );
    }
}
