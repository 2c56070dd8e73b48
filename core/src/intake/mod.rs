//! Submission validation and message composition (pure).
//!
//! [`prepare`] turns a [`Submission`] (JSON API fields or a raw RFC 5322 message) into a
//! [`PreparedMessage`]: validated envelope, deduplicated recipients and the wire-ready,
//! dot-stuffed spool bytes. Same input => same bytes (the multipart boundary and the
//! Message-ID derive from the message id; time comes in as `now`).
//!
//! Error codes (`SubmitError::code`) are stable; see the module docs of `compose` and
//! `raw` and the table in `core/tests/intake_errors.rs`.

mod address;
mod compose;
mod encode;
mod hash;
mod raw;
mod wire;

pub use address::{Address, AddressError, Mailbox, parse_address, parse_mailbox};
pub use hash::request_hash;
pub use wire::{dot_stuff, unstuff};

use crate::ids::MessageId;
use crate::io::{Submission, SubmissionContent, SubmitError, SubmitErrorKind};
use crate::model::{RecipientKind, Source};
use crate::time::Time;
use address::AddrProblem;

/// Limits intake enforces (from `Config`).
#[derive(Clone, Debug)]
pub struct IntakeLimits {
    pub max_message_size: u64,
    pub max_recipients: usize,
}

/// One envelope recipient of a prepared message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedRecipient {
    pub address: Address,
    pub kind: RecipientKind,
}

/// A validated submission, ready to persist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedMessage {
    /// Envelope sender (MAIL FROM).
    pub mail_from: String,
    /// Deduplicated envelope recipients, in order.
    pub recipients: Vec<PreparedRecipient>,
    /// Message-ID header value without angle brackets.
    pub message_id_header: String,
    /// Decoded Subject (sanitized, at most 1024 bytes).
    pub subject: String,
    pub tags: Vec<String>,
    /// Wire-ready bytes: CRLF line endings, dot-stuffed, without the final `.\r\n`.
    pub spool: Vec<u8>,
    pub smtputf8: bool,
    pub eight_bit: bool,
    /// Stable hash of the submission content, for Idempotency-Key conflicts.
    pub request_hash: String,
}

/// Validates a submission and builds the message to spool. `id` is the id the message
/// gets (used to mint a Message-ID header when there is none).
pub fn prepare(
    submission: &Submission,
    id: MessageId,
    now: Time,
    limits: &IntakeLimits,
) -> Result<PreparedMessage, SubmitError> {
    let mut prepared = match &submission.content {
        SubmissionContent::Compose(req) => compose::compose(submission, req, id, now, limits)?,
        SubmissionContent::Raw {
            mail_from,
            rcpt_to,
            data,
            smtputf8,
        } => raw::raw(
            submission,
            raw::RawInput {
                mail_from,
                rcpt_to,
                data,
                smtputf8: *smtputf8,
            },
            id,
            now,
            limits,
        )?,
    };
    // Only an Idempotency-Key is bound to it (hashing a large message costs a pass).
    if submission.idempotency_key.is_some() {
        prepared.request_hash = request_hash(&submission.content);
    }
    Ok(prepared)
}

/// The Message-ID outpost mints: `{id without prefix, lowercase}@{tenant domain}`, without
/// angle brackets.
pub fn mint_message_id(id: MessageId, tenant_domain: &str) -> String {
    let id = id.to_string();
    let bare = id.strip_prefix(MessageId::PREFIX).unwrap_or(&id);
    format!(
        "{}@{}",
        bare.to_ascii_lowercase(),
        tenant_ascii_domain(tenant_domain)
    )
}

/// The tenant's domain in A-label form (it should already be, but a Unicode spelling must
/// not end up raw in a header or be compared against an A-label).
fn tenant_ascii_domain(tenant_domain: &str) -> String {
    address::parse_domain(tenant_domain)
        .map(|(_, ascii)| ascii)
        .unwrap_or_else(|_| tenant_domain.to_ascii_lowercase())
}

fn invalid(field: &str, p: AddrProblem) -> SubmitError {
    SubmitError::invalid(field, p.code, p.message)
}

/// 403 unless `addr` is exactly in the tenant's domain (no subdomains).
fn check_tenant_domain(
    addr: &Address,
    tenant_domain: &str,
    field: &str,
) -> Result<(), SubmitError> {
    if addr.ascii_domain == tenant_ascii_domain(tenant_domain) {
        return Ok(());
    }
    Err(SubmitError {
        kind: SubmitErrorKind::Forbidden,
        code: "sender_domain_not_allowed".into(),
        message: format!(
            "the sender's domain must be {} (this key's domain)",
            tenant_ascii_domain(tenant_domain)
        ),
        field: Some(field.to_string()),
    })
}

fn too_large(size: u64, limits: &IntakeLimits) -> SubmitError {
    SubmitError::new(
        SubmitErrorKind::TooLarge,
        "message_too_large",
        format!(
            "the message is {size} bytes; the limit is {} bytes",
            limits.max_message_size
        ),
    )
}

/// Names of the envelope fields as the submitter knows them: the API's `from`/`to`, or
/// SMTP's MAIL FROM / RCPT TO.
fn envelope_fields(source: Source) -> (&'static str, &'static str) {
    match source {
        Source::Api => ("from", "to"),
        Source::Smtp => ("mail_from", "rcpt_to"),
    }
}

/// Adds recipients in order, dropping later duplicates (case-insensitive on the envelope
/// form; the first occurrence's kind wins, so a Bcc never overrides a visible To/Cc).
#[derive(Default)]
struct Recipients {
    list: Vec<PreparedRecipient>,
    seen: std::collections::BTreeSet<String>,
}

impl Recipients {
    /// Returns whether the address was new.
    fn add(&mut self, address: Address, kind: RecipientKind) -> bool {
        if self.seen.insert(address.suppression_key()) {
            self.list.push(PreparedRecipient { address, kind });
            true
        } else {
            false
        }
    }

    fn check_count(&self, limits: &IntakeLimits, field: &str) -> Result<(), SubmitError> {
        if self.list.is_empty() {
            return Err(SubmitError::invalid(
                field,
                "no_recipients",
                "at least one recipient is required",
            ));
        }
        if self.list.len() > limits.max_recipients {
            return Err(SubmitError::invalid(
                field,
                "too_many_recipients",
                format!(
                    "{} distinct recipients; at most {} are allowed",
                    self.list.len(),
                    limits.max_recipients
                ),
            ));
        }
        Ok(())
    }
}

/// The last checks shared by both paths: every line within 998 octets, the size limit, and
/// the dot-stuffed wire form.
fn finish_wire(message: &[u8], limits: &IntakeLimits, field: &str) -> Result<Vec<u8>, SubmitError> {
    if wire::longest_line(message) > encode::HARD_LIMIT {
        return Err(SubmitError::invalid(
            field,
            "line_too_long",
            format!(
                "a line is longer than {} octets (RFC 5322)",
                encode::HARD_LIMIT
            ),
        ));
    }
    let size = message.len() as u64;
    if size > limits.max_message_size {
        return Err(too_large(size, limits));
    }
    Ok(dot_stuff(message))
}
