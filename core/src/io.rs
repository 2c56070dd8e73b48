//! The engine's inputs (facts about the world) and outputs (requests to the world).

use core::net::IpAddr;
use core::time::Duration;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::{
    BatchId, ConnId, EndpointId, EventId, MessageId, PostId, QueryId, RequestId, TenantId,
};
use crate::model::{EventKind, Snapshot, Source, StoreOp};
use crate::status::{MessageStatus, RecipientStatus};
use crate::time::Time;

/// A fact the shell reports to the engine.
// Inputs are built, moved into `handle` once and dropped: never stored in bulk, so a
// large variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Input {
    /// Time passed (`poll_timeout` was reached, or any wake-up).
    Tick,
    /// The store's content at start-up. Handled once, before anything else.
    Recovered(Box<Snapshot>),
    /// A submission from the HTTP API or SMTP submission.
    Submit(Submission),
    /// The answer to `Output::Resolve`.
    Resolved {
        query: QueryId,
        result: Result<DnsAnswer, DnsError>,
    },
    /// `Output::Connect` succeeded.
    Connected { conn: ConnId },
    /// `Output::Connect` failed (refused, unreachable, ...). Sanitized by the core.
    ConnectFailed { conn: ConnId, error: String },
    /// Bytes read from a connection (after TLS decryption, if any).
    Received { conn: ConnId, bytes: Vec<u8> },
    /// `Output::StartTls` completed. `verified`: the certificate chain and name verified
    /// against WebPKI roots.
    TlsEstablished { conn: ConnId, verified: bool },
    /// `Output::StartTls` failed; the connection is unusable (the shell has closed it).
    TlsFailed { conn: ConnId, error: String },
    /// The connection closed or failed on read/write. After this the core sends nothing
    /// more on it and does not emit `Close` for it.
    Disconnected { conn: ConnId, error: Option<String> },
    /// The store committed `Output::Persist { batch }`.
    Persisted { batch: BatchId },
    /// The store could not commit the batch (nothing of it is applied).
    PersistFailed { batch: BatchId, error: String },
    /// The answer to `Output::PostWebhook`: the HTTP status, or a transport error.
    WebhookResult {
        post: PostId,
        result: Result<u16, String>,
        duration_ms: u64,
    },
    /// The answer to `Output::ScanSpool`: spool files with their age, and the ids of the
    /// messages the store still holds as live (non-terminal). Either can fail.
    SpoolScanned {
        files: Result<Vec<SpoolFile>, String>,
        live: Result<Vec<MessageId>, String>,
    },
    /// An operator or API call that changes state.
    Admin {
        request: RequestId,
        command: AdminCommand,
    },
    /// The shell is shutting down: stop starting new work (no new connections or
    /// transactions); in-flight transactions may finish.
    Drain,
}

/// A request the engine makes of the shell.
#[derive(Clone, Debug)]
pub enum Output {
    /// Apply these operations in one transaction, then report `Persisted`/`PersistFailed`.
    Persist { batch: BatchId, ops: Vec<StoreOp> },
    /// Answer a submitter: accepted (after its store write committed).
    SubmitAccepted {
        request: RequestId,
        receipt: Receipt,
    },
    /// Answer a submitter: refused. Nothing was stored.
    SubmitRejected {
        request: RequestId,
        error: SubmitError,
    },
    Resolve {
        query: QueryId,
        name: String,
        kind: QueryKind,
    },
    /// Open a TCP connection; `mx` is the host name (for TLS SNI and the timeline).
    Connect {
        conn: ConnId,
        ip: IpAddr,
        port: u16,
        mx: String,
    },
    /// Write bytes to the connection.
    Send { conn: ConnId, bytes: Vec<u8> },
    /// Write the message's spool file (already wire-ready and dot-stuffed) followed by
    /// `.\r\n`.
    SendSpool { conn: ConnId, message: MessageId },
    /// Start TLS as a client on the connection. The shell always completes the handshake
    /// with verification *recorded*; when `require_verified` is set it fails the
    /// handshake on an unverifiable certificate instead.
    StartTls {
        conn: ConnId,
        server_name: String,
        require_verified: bool,
    },
    /// Close the connection. No `Disconnected` is expected afterwards.
    Close { conn: ConnId },
    /// POST a webhook. `headers` include the Standard Webhooks headers.
    PostWebhook {
        post: PostId,
        endpoint: EndpointId,
        event: EventId,
        url: String,
        headers: Vec<(String, String)>,
        body: Arc<str>,
        timeout: Duration,
    },
    /// The message is terminal for all recipients and that is persisted: its spool file
    /// may go.
    DeleteSpool { message: MessageId },
    /// List spool files and read the live set, then report `SpoolScanned`.
    ScanSpool,
    /// Delete these orphaned spool files (decided after `SpoolScanned`).
    DeleteOrphans { messages: Vec<MessageId> },
    AdminAnswer {
        request: RequestId,
        result: Result<AdminReply, AdminError>,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QueryKind {
    /// MX records of a domain.
    Mx,
    /// A and AAAA records of a host.
    Address,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsAnswer {
    /// MX records (preference, exchange host name without trailing dot). An exchange of
    /// `""` or `"."` with preference 0 alone is a null MX (RFC 7505).
    Mx(Vec<(u16, String)>),
    Address(Vec<IpAddr>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist.
    #[error("NXDOMAIN")]
    NxDomain,
    /// The name exists but has no records of the asked type.
    #[error("no records")]
    NoRecords,
    #[error("SERVFAIL")]
    ServFail,
    #[error("timeout")]
    Timeout,
    #[error("{0}")]
    Other(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolFile {
    pub message: MessageId,
    /// Last modification time of the file.
    pub modified: Time,
}

/// A submission: the authenticated tenant and what it sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    pub request: RequestId,
    pub tenant: TenantId,
    /// The tenant's sending domain (lowercase); `from` must belong to it.
    pub tenant_domain: String,
    pub source: Source,
    pub idempotency_key: Option<String>,
    pub content: SubmissionContent,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubmissionContent {
    /// Fields of the JSON send API; the core composes the RFC 5322 message.
    Compose(ComposeRequest),
    /// A complete RFC 5322 message with its envelope (API `raw`, or SMTP DATA).
    Raw {
        mail_from: String,
        rcpt_to: Vec<String>,
        data: Vec<u8>,
        /// For SMTP: the client declared SMTPUTF8 / BODY=8BITMIME.
        smtputf8: bool,
    },
}

/// The JSON send API's fields (`POST /v1/messages` without `raw`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeRequest {
    pub from: String,
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    #[serde(default)]
    pub bcc: Vec<String>,
    #[serde(default)]
    pub reply_to: Option<String>,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// What a submitter gets back on acceptance (the HTTP 202 body).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub id: MessageId,
    pub message_id: String,
    pub status: MessageStatus,
    pub recipients: Vec<ReceiptRecipient>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptRecipient {
    pub address: String,
    pub status: RecipientStatus,
}

/// Why a submission was refused. `code` is stable and machine-readable; `field` names the
/// offending field where there is one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SubmitError {
    pub kind: SubmitErrorKind,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubmitErrorKind {
    /// A field is invalid (HTTP 422, SMTP 501/553).
    Invalid,
    /// The sender does not belong to the tenant (HTTP 403, SMTP 553).
    Forbidden,
    /// The message is too large (HTTP 413, SMTP 552).
    TooLarge,
    /// The Idempotency-Key was used with another request (HTTP 409).
    Conflict,
    /// Storage failed; nothing was kept; try again (HTTP 503, SMTP 451).
    Unavailable,
}

impl SubmitErrorKind {
    pub fn http_status(self) -> u16 {
        match self {
            SubmitErrorKind::Invalid => 422,
            SubmitErrorKind::Forbidden => 403,
            SubmitErrorKind::TooLarge => 413,
            SubmitErrorKind::Conflict => 409,
            SubmitErrorKind::Unavailable => 503,
        }
    }
}

impl SubmitError {
    pub fn new(kind: SubmitErrorKind, code: &str, message: impl Into<String>) -> SubmitError {
        SubmitError {
            kind,
            code: code.to_string(),
            message: message.into(),
            field: None,
        }
    }
    pub fn invalid(field: &str, code: &str, message: impl Into<String>) -> SubmitError {
        SubmitError {
            kind: SubmitErrorKind::Invalid,
            code: code.to_string(),
            message: message.into(),
            field: Some(field.to_string()),
        }
    }
}

/// A state-changing operator or API command. Tenant-scoped commands carry the caller's
/// tenant; `None` is the admin acting across tenants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    ForceBreaker {
        domain: String,
        state: ForcedBreakerState,
    },
    /// Make every pending recipient of the message due now.
    RetryNow {
        tenant: Option<TenantId>,
        message: MessageId,
    },
    /// Cancel every pending recipient of the message: `failed` with reason `cancelled`.
    Cancel {
        tenant: Option<TenantId>,
        message: MessageId,
    },
    AddSuppression {
        tenant: TenantId,
        address: String,
        reason: String,
    },
    RemoveSuppression {
        tenant: TenantId,
        address: String,
    },
    /// `secret` is the raw signing key, from the shell's CSPRNG.
    CreateEndpoint {
        tenant: TenantId,
        url: String,
        events: Vec<EventKind>,
        secret: Vec<u8>,
    },
    DeleteEndpoint {
        tenant: TenantId,
        endpoint: EndpointId,
    },
    RotateSecret {
        tenant: TenantId,
        endpoint: EndpointId,
        secret: Vec<u8>,
    },
    /// Send the event to the endpoint again (also after it failed for good).
    RetryWebhookDelivery {
        tenant: TenantId,
        endpoint: EndpointId,
        event: EventId,
    },
    /// Like `RetryWebhookDelivery` for a delivery the dispatcher no longer remembers (it
    /// forgets finished deliveries at a restart and beyond a bounded cache): the shell
    /// read the event and the attempts made so far from the store, so attempt numbers
    /// continue and a failed delivery stays replayable.
    ReplayWebhookDelivery {
        tenant: TenantId,
        endpoint: EndpointId,
        event: Box<crate::model::EventRecord>,
        attempts: u32,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForcedBreakerState {
    Open,
    Closed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminReply {
    Done,
    /// How many recipients the command changed.
    Recipients(usize),
    Endpoint(crate::model::EndpointRecord),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AdminError {
    #[error("not found")]
    NotFound,
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}
