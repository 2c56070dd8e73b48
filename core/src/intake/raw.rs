//! A complete RFC 5322 message with its envelope (the API's base64 `raw`, or SMTP DATA).
//!
//! Error codes (all `Invalid`/422 unless noted), with the field they name (envelope
//! fields are `from`/`to[i]` for the API and `mail_from`/`rcpt_to[i]` for SMTP):
//! - no field: `message_too_large` (TooLarge/413), checked on the input first
//! - `raw`: `nul_byte`, `line_too_long`, `unparseable_message`, `missing_from`,
//!   `invalid_from`, `invalid_message_id`
//! - `raw`: `sender_domain_not_allowed` (Forbidden/403) for a From header outside the
//!   tenant's domain; the envelope sender field for MAIL FROM outside it
//! - envelope fields: the address codes of `address.rs`; `no_recipients`,
//!   `too_many_recipients`
//!
//! The message is kept as sent except for: line endings normalized to CRLF, `Bcc` header
//! fields removed (they would show blind recipients to everyone), and `Message-ID` and
//! `Date` prepended when missing.

use std::collections::BTreeSet;

use mail_parser::{HeaderName, MessageParser};

use super::address::{AddrProblem, parse_addr_spec};
use super::encode::{self, HARD_LIMIT};
use super::{
    IntakeLimits, PreparedMessage, Recipients, check_tenant_domain, envelope_fields, finish_wire,
    invalid, mint_message_id, too_large, wire,
};
use crate::ids::MessageId;
use crate::io::{Submission, SubmitError};
use crate::model::RecipientKind;
use crate::sanitize;
use crate::time::Time;

pub(super) struct RawInput<'a> {
    pub mail_from: &'a str,
    pub rcpt_to: &'a [String],
    pub data: &'a [u8],
    pub smtputf8: bool,
}

/// Envelope addresses may arrive with their SMTP angle brackets (`<a@b>`); a display name
/// never belongs in the envelope.
fn parse_envelope(s: &str) -> Result<super::Address, AddrProblem> {
    let inner = match s.strip_prefix('<').and_then(|r| r.strip_suffix('>')) {
        Some(inner) if !inner.is_empty() => inner,
        _ => s,
    };
    parse_addr_spec(inner)
}

pub(super) fn raw(
    sub: &Submission,
    input: RawInput<'_>,
    id: MessageId,
    now: Time,
    limits: &IntakeLimits,
) -> Result<PreparedMessage, SubmitError> {
    // Cheap refusal before anything is parsed or copied.
    let input_size = input.data.len() as u64;
    if input_size > limits.max_message_size {
        return Err(too_large(input_size, limits));
    }
    if input.data.contains(&0) {
        return Err(SubmitError::invalid(
            "raw",
            "nul_byte",
            "the message contains a NUL byte",
        ));
    }

    let (from_field, to_field) = envelope_fields(sub.source);
    let mail_from = parse_envelope(input.mail_from).map_err(|p| invalid(from_field, p))?;
    check_tenant_domain(&mail_from, &sub.tenant_domain, from_field)?;
    let mut rcpts = Vec::with_capacity(input.rcpt_to.len());
    for (i, r) in input.rcpt_to.iter().enumerate() {
        rcpts.push(parse_envelope(r).map_err(|p| invalid(&format!("{to_field}[{i}]"), p))?);
    }

    let mut normalized = encode::crlf(input.data);
    if !normalized.ends_with(b"\r\n") {
        normalized.extend_from_slice(b"\r\n");
    }
    if wire::longest_line(&normalized) > HARD_LIMIT {
        return Err(SubmitError::invalid(
            "raw",
            "line_too_long",
            format!("a line is longer than {HARD_LIMIT} octets (RFC 5322)"),
        ));
    }

    check_header_section(&normalized)?;

    // Only the header section is parsed: every field used below is a top-level header,
    // and parsing the body would decode every part for nothing. (No header section at
    // all: the whole message, as it always was.)
    let head = match memchr::memmem::find(&normalized, b"\r\n\r\n") {
        Some(p) if !normalized.starts_with(b"\r\n") => &normalized[..p + 4],
        _ => &normalized[..],
    };
    let parsed = MessageParser::default().parse(head).ok_or_else(|| {
        SubmitError::invalid(
            "raw",
            "unparseable_message",
            "the message could not be parsed",
        )
    })?;

    let has = |name: HeaderName<'_>| parsed.headers().iter().any(|h| h.name == name);
    if !has(HeaderName::From) {
        return Err(SubmitError::invalid(
            "raw",
            "missing_from",
            "the message has no From header",
        ));
    }
    let mut from_count = 0;
    for a in parsed.from().into_iter().flat_map(|f| f.iter()) {
        let addr = parse_addr_spec(a.address().unwrap_or_default()).map_err(|p| {
            SubmitError::invalid(
                "raw",
                "invalid_from",
                format!("the From header's address is invalid: {}", p.message),
            )
        })?;
        check_tenant_domain(&addr, &sub.tenant_domain, "raw")?;
        from_count += 1;
    }
    if from_count == 0 {
        return Err(SubmitError::invalid(
            "raw",
            "invalid_from",
            "the From header has no address",
        ));
    }

    // Recipient kinds from the visible headers: To, then Cc; anyone else is blind.
    let keys = |list: Option<&mail_parser::Address<'_>>| -> BTreeSet<String> {
        list.into_iter()
            .flat_map(|l| l.iter())
            .filter_map(|a| parse_addr_spec(a.address()?).ok())
            .map(|a| a.suppression_key())
            .collect()
    };
    let to_keys = keys(parsed.to());
    let cc_keys = keys(parsed.cc());
    let mut recipients = Recipients::default();
    for addr in rcpts {
        let key = addr.suppression_key();
        let kind = if to_keys.contains(&key) {
            RecipientKind::To
        } else if cc_keys.contains(&key) {
            RecipientKind::Cc
        } else {
            RecipientKind::Bcc
        };
        recipients.add(addr, kind);
    }
    recipients.check_count(limits, to_field)?;

    let message_id = if has(HeaderName::MessageId) {
        // A Message-ID is a msg-id (RFC 5322 3.6.4): no controls, no white space. One
        // made of controls would otherwise sanitize to nothing.
        let Some(mid) = parsed
            .message_id()
            .filter(|m| !m.is_empty() && !m.chars().any(|c| c.is_control() || c.is_whitespace()))
        else {
            return Err(SubmitError::invalid(
                "raw",
                "invalid_message_id",
                "the Message-ID header could not be parsed",
            ));
        };
        (sanitize::cut(mid, HARD_LIMIT), false)
    } else {
        (mint_message_id(id, &sub.tenant_domain), true)
    };
    let add_date = !has(HeaderName::Date);
    let subject = sanitize::cut(
        parsed.subject().unwrap_or_default(),
        sanitize::MAX_REMOTE_TEXT,
    );
    drop(parsed);

    let mut message = Vec::with_capacity(normalized.len() + 128);
    if message_id.1 {
        message.extend_from_slice(format!("Message-ID: <{}>\r\n", message_id.0).as_bytes());
    }
    if add_date {
        message.extend_from_slice(format!("Date: {}\r\n", now.rfc5322()).as_bytes());
    }
    // Bcc fields are removed by our own scan of the (already validated) header lines, not
    // by the lenient parser's offsets, which odd input can put anywhere.
    message.extend_from_slice(&without_bcc(&normalized));

    let header_end = memchr::memmem::find(&message, b"\r\n\r\n").unwrap_or(message.len());
    let smtputf8 = input.smtputf8
        || !message[..header_end].is_ascii()
        || mail_from.needs_smtputf8()
        || recipients.list.iter().any(|r| r.address.needs_smtputf8());
    let eight_bit = !message.is_ascii();
    let spool = finish_wire(&message, limits, "raw")?;
    Ok(PreparedMessage {
        mail_from: mail_from.envelope(),
        recipients: recipients.list,
        message_id_header: message_id.0,
        subject,
        tags: Vec::new(),
        spool,
        smtputf8,
        eight_bit,
        request_hash: String::new(),
    })
}

/// The header section (up to the first empty line) must be RFC 5322 fields: a line either
/// starts a field (`name:`, the name printable ASCII without ':'; white space before the
/// colon is obsolete syntax and tolerated) or continues the previous one (leading space or
/// tab). A lenient parser reads malformed lines in surprising ways (`:Message-ID: <x>` as a
/// Message-ID that no receiver will see), so such messages are refused.
fn check_header_section(message: &[u8]) -> Result<(), SubmitError> {
    let bad = |n: usize, what: &str| {
        SubmitError::invalid(
            "raw",
            "invalid_header",
            format!("header line {} {what}", n + 1),
        )
    };
    for (n, line) in message.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.first() {
            None => return Ok(()),
            Some(b' ' | b'\t') if n == 0 => return Err(bad(n, "continues no header field")),
            Some(b' ' | b'\t') => continue,
            Some(_) => {}
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(bad(n, "is not a header field (no ':')"));
        };
        let name = line[..colon].trim_ascii_end();
        if name.is_empty() || !name.iter().all(|b| (33..=126).contains(b)) {
            return Err(bad(n, "has an invalid field name"));
        }
    }
    Ok(())
}

/// The message without its Bcc header fields (continuation lines included): blind
/// recipients must not be shown to the others. Header lines are CRLF-terminated and were
/// validated by `check_header_section`.
fn without_bcc(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len());
    let mut skipping = false;
    let mut rest = message;
    while !rest.is_empty() {
        let len = memchr::memmem::find(rest, b"\r\n").map_or(rest.len(), |i| i + 2);
        let (line, tail) = rest.split_at(len);
        rest = tail;
        let content = line.strip_suffix(b"\r\n").unwrap_or(line);
        if content.is_empty() {
            // The end of the header section: the body goes as it is.
            out.extend_from_slice(line);
            out.extend_from_slice(rest);
            break;
        } else if content[0] == b' ' || content[0] == b'\t' {
            if skipping {
                continue;
            }
        } else {
            let name = content.split(|&b| b == b':').next().unwrap_or_default();
            skipping = name.trim_ascii_end().eq_ignore_ascii_case(b"bcc");
            if skipping {
                continue;
            }
        }
        out.extend_from_slice(line);
    }
    out
}
