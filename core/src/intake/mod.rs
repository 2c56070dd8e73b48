//! PLACEHOLDER: submission validation and message composition. The interface below is the
//! contract with the engine; the implementation is being written.
#![allow(dead_code, unused_variables)]

use crate::ids::MessageId;
use crate::io::{Submission, SubmitError};
use crate::model::RecipientKind;
use crate::time::Time;

/// Limits intake enforces (from `Config`).
#[derive(Clone, Debug)]
pub struct IntakeLimits {
    pub max_message_size: u64,
    pub max_recipients: usize,
}

/// A parsed, validated email address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// Local part as given (may be UTF-8 when SMTPUTF8 is needed).
    pub local: String,
    /// Domain lowercased, in Unicode form as given/decoded (U-labels).
    pub domain: String,
    /// Domain in ASCII (IDNA A-labels), lowercase: the routing domain.
    pub ascii_domain: String,
}

impl Address {
    /// `local@domain` for the envelope: the ASCII domain when the local part is ASCII;
    /// otherwise the UTF-8 form (needs SMTPUTF8).
    pub fn envelope(&self) -> String {
        format!("{}@{}", self.local, self.ascii_domain)
    }
    pub fn needs_smtputf8(&self) -> bool {
        !self.local.is_ascii()
    }
    /// The key used in suppression lists: the envelope form, lowercased.
    pub fn suppression_key(&self) -> String {
        self.envelope().to_lowercase()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(pub String);

pub fn parse_address(s: &str) -> Result<Address, AddressError> {
    let (local, domain) = s
        .rsplit_once('@')
        .ok_or_else(|| AddressError("missing @".into()))?;
    Ok(Address {
        local: local.to_string(),
        domain: domain.to_lowercase(),
        ascii_domain: domain.to_lowercase(),
    })
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
    Err(SubmitError::invalid(
        "from",
        "not_implemented",
        "intake not implemented",
    ))
}
