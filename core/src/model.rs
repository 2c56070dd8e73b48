//! Records the core asks the store to keep (`StoreOp`), and the snapshot the store hands
//! back at start-up (`Snapshot`). These types are the contract between the core and every
//! store implementation (SQLite in the daemon, an in-memory store in the simulator).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::classify::Category;
use crate::ids::{EndpointId, EventId, MessageId, TenantId};
use crate::smtp::Stage;
use crate::status::{MessageStatus, RecipientStatus};
use crate::time::Time;

/// Where a message came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Api,
    Smtp,
}

/// How a recipient was addressed (Bcc recipients are envelope-only).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientKind {
    To,
    Cc,
    Bcc,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: MessageId,
    pub tenant: TenantId,
    pub source: Source,
    /// The RFC 5322 Message-ID header value, without angle brackets.
    pub message_id_header: String,
    /// Envelope sender (MAIL FROM), without angle brackets.
    pub mail_from: String,
    /// Decoded Subject for listings (sanitized, cut to 1024 bytes).
    pub subject: String,
    pub tags: Vec<String>,
    /// Size in bytes of the spooled message as sent on the wire.
    pub size: u64,
    /// The envelope or headers need SMTPUTF8 (non-ASCII local part or header).
    pub smtputf8: bool,
    /// The body has 8-bit bytes (needs 8BITMIME).
    pub eight_bit: bool,
    pub created_at: Time,
    /// When the message is `failed` with reason `expired` if not yet terminal.
    pub expires_at: Time,
    pub idempotency: Option<Idempotency>,
    pub recipients: Vec<RecipientRecord>,
}

impl MessageRecord {
    pub fn status(&self) -> MessageStatus {
        crate::status::derive_message_status(self.recipients.iter().map(|r| r.status))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Idempotency {
    pub key: String,
    /// Hash of the request content: the same key with another body is a conflict.
    pub request_hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientRecord {
    pub idx: u32,
    /// The address as given (normalized: domain lowercased, IDN domain kept in U-labels if
    /// given so; see `domain` for the routing form).
    pub address: String,
    /// Routing domain: lowercase ASCII (IDNA A-labels).
    pub domain: String,
    pub kind: RecipientKind,
    pub status: RecipientStatus,
    /// Delivery attempts made so far (an attempt interrupted by a crash counts).
    pub attempts: u32,
    /// When the next attempt is due (for `queued`/`deferred`).
    pub next_attempt_at: Option<Time>,
    pub updated_at: Time,
    /// Why the recipient is in its status (sanitized), e.g. the last reply or `expired`.
    pub reason: Option<String>,
}

/// One store operation. A `Persist` output carries a list of these that the store applies
/// in one transaction (all or nothing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StoreOp {
    /// Write the spool file (`spool`, wire-ready: CRLF lines, dot-stuffed, without the
    /// final `.\r\n`) and fsync it and its directory, then insert the message and its
    /// recipients. Idempotent by message id.
    InsertMessage {
        message: MessageRecord,
        #[serde(skip)]
        spool: Arc<[u8]>,
    },
    /// Update one recipient. The store applies it only if the stored status is not
    /// terminal (the terminal guard, in SQL too).
    UpdateRecipient {
        message: MessageId,
        idx: u32,
        status: RecipientStatus,
        attempts: u32,
        next_attempt_at: Option<Time>,
        at: Time,
        reason: Option<String>,
    },
    InsertAttempt(AttemptRecord),
    /// Append an event to the outbox.
    InsertEvent(EventRecord),
    AddSuppression(SuppressionRecord),
    RemoveSuppression {
        tenant: TenantId,
        address: String,
    },
    UpsertEndpoint(EndpointRecord),
    DeleteEndpoint {
        tenant: TenantId,
        endpoint: EndpointId,
    },
    /// The delivery state of one event to one endpoint (created pending with the event).
    UpsertWebhookDelivery(WebhookDeliveryRecord),
    /// One POST attempt of an event to an endpoint, for the deliveries log.
    InsertWebhookAttempt(WebhookAttemptRecord),
}

/// TLS on one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum TlsRecord {
    /// Not offered, or not attempted.
    None,
    /// Encrypted with STARTTLS; whether the certificate verified (WebPKI + name).
    Starttls { verified: bool },
    /// The handshake failed; the attempt went on in plaintext (opportunistic policy).
    FailedPlaintext { error: String },
}

/// One delivery attempt of one recipient (the timeline).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub message: MessageId,
    pub idx: u32,
    pub tenant: TenantId,
    /// The recipient's routing domain (the breaker key).
    pub domain: String,
    /// 1-based attempt number of this recipient.
    pub attempt: u32,
    pub started_at: Time,
    pub duration_ms: u64,
    /// The recipient status this attempt produced.
    pub status: RecipientStatus,
    pub stage: Stage,
    pub smtp_code: Option<u16>,
    pub enhanced_code: Option<String>,
    /// Sanitized reply text, at most 1024 bytes.
    pub response: String,
    pub category: Category,
    /// The rule that named the category (for operators).
    pub rule: String,
    pub mx: Option<String>,
    pub ip: Option<String>,
    pub tls: TlsRecord,
    /// Counted against the destination's circuit breaker (a connection- or
    /// transaction-level failure), as opposed to a per-recipient outcome.
    pub breaker_failure: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "message.queued")]
    Queued,
    #[serde(rename = "message.delivered")]
    Delivered,
    #[serde(rename = "message.deferred")]
    Deferred,
    #[serde(rename = "message.bounced")]
    Bounced,
    #[serde(rename = "message.failed")]
    Failed,
    #[serde(rename = "message.suppressed")]
    Suppressed,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::Queued,
        EventKind::Delivered,
        EventKind::Deferred,
        EventKind::Bounced,
        EventKind::Failed,
        EventKind::Suppressed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Queued => "message.queued",
            EventKind::Delivered => "message.delivered",
            EventKind::Deferred => "message.deferred",
            EventKind::Bounced => "message.bounced",
            EventKind::Failed => "message.failed",
            EventKind::Suppressed => "message.suppressed",
        }
    }
    pub fn parse(s: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
    /// The event that announces a recipient entering `status` (`sending` has none).
    pub fn for_status(status: RecipientStatus) -> Option<EventKind> {
        Some(match status {
            RecipientStatus::Queued => EventKind::Queued,
            RecipientStatus::Sending => return None,
            RecipientStatus::Deferred => EventKind::Deferred,
            RecipientStatus::Delivered => EventKind::Delivered,
            RecipientStatus::Bounced => EventKind::Bounced,
            RecipientStatus::Failed => EventKind::Failed,
            RecipientStatus::Suppressed => EventKind::Suppressed,
        })
    }
}

/// An outbox entry. `payload` is the exact JSON body that webhooks POST and the pull API
/// returns: `{"id","seq","type","timestamp","data":{...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub id: EventId,
    pub tenant: TenantId,
    pub kind: EventKind,
    pub at: Time,
    pub message: MessageId,
    pub idx: u32,
    pub payload: Arc<str>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionSource {
    Bounce,
    Manual,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressionRecord {
    pub tenant: TenantId,
    /// Normalized (lowercased) address.
    pub address: String,
    pub source: SuppressionSource,
    pub reason: String,
    pub category: Option<Category>,
    pub smtp_code: Option<u16>,
    pub enhanced_code: Option<String>,
    /// The bounce event that caused it.
    pub event: Option<EventId>,
    pub created_at: Time,
}

/// A webhook signing secret: the raw key bytes (the API shows `whsec_` + base64 once).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSecret {
    pub key: Vec<u8>,
    pub created_at: Time,
    /// A rotated-out secret keeps signing until then.
    pub expires_at: Option<Time>,
}

impl core::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WebhookSecret")
            .field("key", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub id: EndpointId,
    pub tenant: TenantId,
    pub url: String,
    /// Event types sent to this endpoint; empty means all.
    pub events: BTreeSet<EventKind>,
    /// Newest first; older ones carry an expiry.
    pub secrets: Vec<WebhookSecret>,
    pub created_at: Time,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookDeliveryState {
    Pending,
    Delivered,
    /// Retries exhausted; kept for replay.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDeliveryRecord {
    pub endpoint: EndpointId,
    pub event: EventId,
    pub event_seq: u64,
    pub tenant: TenantId,
    pub state: WebhookDeliveryState,
    pub attempts: u32,
    pub next_attempt_at: Option<Time>,
    pub updated_at: Time,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookAttemptRecord {
    pub endpoint: EndpointId,
    pub event: EventId,
    pub tenant: TenantId,
    pub attempt: u32,
    pub at: Time,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

/// An idempotency key remembered for a while after its message was accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyEntry {
    pub tenant: TenantId,
    pub key: String,
    pub request_hash: String,
    pub receipt: crate::io::Receipt,
    pub created_at: Time,
}

/// A pending webhook delivery with the event it carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDelivery {
    pub delivery: WebhookDeliveryRecord,
    pub event: EventRecord,
}

/// A live message as the engine resumes it at start-up: what delivery needs, not what
/// only the API shows (subject, tags, reasons). Its recipients are in
/// `Snapshot::recipients`. Strings are in the form the engine keeps, so that it can take
/// them over as they are rather than copy them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingMessage {
    pub id: MessageId,
    pub tenant: TenantId,
    /// Without angle brackets.
    pub message_id_header: Box<str>,
    /// Envelope sender; a store may share one allocation between messages.
    pub mail_from: Arc<str>,
    pub size: u64,
    pub smtputf8: bool,
    pub eight_bit: bool,
    pub created_at: Time,
    pub expires_at: Time,
}

/// One recipient of a `PendingMessage` (terminal ones too: `idx` is their position).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecipient {
    pub message: MessageId,
    pub idx: u32,
    pub address: Box<str>,
    /// Routing domain; a store may share one allocation between recipients.
    pub domain: Arc<str>,
    pub status: RecipientStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<Time>,
}

impl PendingMessage {
    /// The message of a full record.
    pub fn of(m: &MessageRecord) -> PendingMessage {
        PendingMessage {
            id: m.id,
            tenant: m.tenant,
            message_id_header: m.message_id_header.as_str().into(),
            mail_from: m.mail_from.as_str().into(),
            size: m.size,
            smtputf8: m.smtputf8,
            eight_bit: m.eight_bit,
            created_at: m.created_at,
            expires_at: m.expires_at,
        }
    }
}

impl PendingRecipient {
    pub fn of(message: MessageId, r: &RecipientRecord) -> PendingRecipient {
        PendingRecipient {
            message,
            idx: r.idx,
            address: r.address.as_str().into(),
            domain: r.domain.as_str().into(),
            status: r.status,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
        }
    }
}

/// What the store hands the engine at start-up (`Input::Recovered`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Messages with at least one non-terminal recipient, in id order.
    pub messages: Vec<PendingMessage>,
    /// All the recipients of `messages`, in (message, idx) order. Kept apart from their
    /// messages so that a large queue is read into two allocations, not one per message.
    pub recipients: Vec<PendingRecipient>,
    /// Every suppressed (tenant, normalized address).
    pub suppressions: Vec<(TenantId, String)>,
    /// Delivery attempts started in the last hour (breaker warm-up).
    pub recent_attempts: Vec<AttemptRecord>,
    /// The highest event sequence number ever persisted (0 if none).
    pub last_event_seq: u64,
    pub endpoints: Vec<EndpointRecord>,
    /// Webhook deliveries still `pending`.
    pub pending_deliveries: Vec<PendingDelivery>,
    /// Idempotency keys younger than the configured window.
    pub idempotency: Vec<IdempotencyEntry>,
}

impl Snapshot {
    /// Adds a live message and its recipients (for stores that keep full records).
    pub fn push_message(&mut self, m: &MessageRecord) {
        self.messages.push(PendingMessage::of(m));
        self.recipients
            .extend(m.recipients.iter().map(|r| PendingRecipient::of(m.id, r)));
    }
}
