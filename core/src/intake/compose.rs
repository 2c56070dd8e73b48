//! Composing an RFC 5322 message from the JSON API's fields.
//!
//! Error codes (all `Invalid`/422 unless noted), with the field they name:
//! - addresses (`from`, `reply_to`, `to[i]`, `cc[i]`, `bcc[i]`): see `address.rs`
//!   (`invalid_address`, `invalid_local_part`, `invalid_domain`, `address_literal`,
//!   `null_address`, `header_injection`, `control_character`, `invalid_display_name`, ...)
//! - `from`: `sender_domain_not_allowed` (Forbidden/403)
//! - `to`: `no_recipients`, `too_many_recipients`
//! - `subject`, `headers.<Name>`: `header_injection` (CR or LF), `control_character`
//! - `headers.<Name>`: `invalid_header_name`, `reserved_header`, `header_too_long`
//! - `text`: `missing_body` (neither text nor html)
//! - `tags`: `too_many_tags`; `tags[i]`: `invalid_tag`
//! - no field: `message_too_large` (TooLarge/413)

use super::address::{Mailbox, parse_mailbox_detailed};
use super::encode::{self, BodyEncoding, HeaderLine};
use super::{
    IntakeLimits, PreparedMessage, Recipients, check_tenant_domain, finish_wire, invalid,
    mint_message_id, too_large,
};
use crate::ids::MessageId;
use crate::io::{ComposeRequest, Submission, SubmitError};
use crate::model::RecipientKind;
use crate::sanitize;
use crate::time::Time;

pub const MAX_TAGS: usize = 10;
pub const MAX_TAG_LEN: usize = 64;
/// A field name plus ": " must leave room for a value on the first line.
pub const MAX_HEADER_NAME: usize = 76;

/// Headers outpost writes itself; a client may not set them through `headers`.
/// `Reply-To` is reserved only when `reply_to` is given.
const RESERVED: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
];

/// Refuses CR/LF (header injection) and control characters other than TAB (which is legal
/// folding whitespace) in a value bound for a header.
fn check_header_text(value: &str, field: &str, what: &str) -> Result<(), SubmitError> {
    if value.contains(['\r', '\n']) {
        return Err(SubmitError::invalid(
            field,
            "header_injection",
            format!("{what} contains a line break (CR or LF)"),
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(SubmitError::invalid(
            field,
            "control_character",
            format!("{what} contains a control character"),
        ));
    }
    Ok(())
}

/// A field name safe to put in an error: printable characters as they are, anything else
/// escaped (`\r`, `\u{1b}`), so an error never carries a raw control character.
fn printable(name: &str) -> String {
    name.chars()
        .flat_map(|c| {
            let keep = c.is_ascii_graphic();
            let escaped: Vec<char> = if keep {
                vec![c]
            } else {
                c.escape_default().collect()
            };
            escaped
        })
        .collect()
}

pub(super) fn compose(
    sub: &Submission,
    req: &ComposeRequest,
    id: MessageId,
    now: Time,
    limits: &IntakeLimits,
) -> Result<PreparedMessage, SubmitError> {
    // Cheap refusal before any work: the composed message is never smaller than its
    // bodies, subject and header values.
    let input_size = [
        req.text.as_ref().map_or(0, String::len),
        req.html.as_ref().map_or(0, String::len),
        req.subject.len(),
        req.headers.iter().map(|(k, v)| k.len() + v.len()).sum(),
    ]
    .iter()
    .fold(0u64, |acc, &n| acc.saturating_add(n as u64));
    if input_size > limits.max_message_size {
        return Err(too_large(input_size, limits));
    }

    let from = parse_mailbox_detailed(&req.from).map_err(|p| invalid("from", p))?;
    check_tenant_domain(&from.address, &sub.tenant_domain, "from")?;
    let reply_to = req
        .reply_to
        .as_deref()
        .map(|r| parse_mailbox_detailed(r).map_err(|p| invalid("reply_to", p)))
        .transpose()?;

    let mut recipients = Recipients::default();
    let mut to_header: Vec<Mailbox> = Vec::new();
    let mut cc_header: Vec<Mailbox> = Vec::new();
    for (list, kind, name) in [
        (&req.to, RecipientKind::To, "to"),
        (&req.cc, RecipientKind::Cc, "cc"),
        (&req.bcc, RecipientKind::Bcc, "bcc"),
    ] {
        for (i, s) in list.iter().enumerate() {
            let m = parse_mailbox_detailed(s).map_err(|p| invalid(&format!("{name}[{i}]"), p))?;
            // Only the first occurrence is a recipient and, for To/Cc, shown in headers.
            if recipients.add(m.address.clone(), kind) {
                match kind {
                    RecipientKind::To => to_header.push(m),
                    RecipientKind::Cc => cc_header.push(m),
                    RecipientKind::Bcc => {}
                }
            }
        }
    }
    recipients.check_count(limits, "to")?;

    check_header_text(&req.subject, "subject", "subject")?;

    if req.text.is_none() && req.html.is_none() {
        return Err(SubmitError::invalid(
            "text",
            "missing_body",
            "at least one of text or html is required",
        ));
    }

    for (name, value) in &req.headers {
        check_custom_header(name, value, reply_to.is_some())?;
    }

    if req.tags.len() > MAX_TAGS {
        return Err(SubmitError::invalid(
            "tags",
            "too_many_tags",
            format!("at most {MAX_TAGS} tags are allowed"),
        ));
    }
    for (i, tag) in req.tags.iter().enumerate() {
        let ok =
            (1..=MAX_TAG_LEN).contains(&tag.len()) && tag.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(SubmitError::invalid(
                &format!("tags[{i}]"),
                "invalid_tag",
                format!("a tag is 1 to {MAX_TAG_LEN} printable ASCII characters without spaces"),
            ));
        }
    }

    let message_id = mint_message_id(id, &sub.tenant_domain);
    let mut msg = String::new();
    msg.push_str(&format!("Date: {}\r\n", now.rfc5322()));
    msg.push_str(&address_header("From", std::slice::from_ref(&from)));
    if let Some(r) = &reply_to {
        msg.push_str(&address_header("Reply-To", std::slice::from_ref(r)));
    }
    if !to_header.is_empty() {
        msg.push_str(&address_header("To", &to_header));
    } else if cc_header.is_empty() {
        // Only Bcc recipients: an empty group keeps the To field without naming anyone.
        msg.push_str("To: undisclosed-recipients:;\r\n");
    }
    if !cc_header.is_empty() {
        msg.push_str(&address_header("Cc", &cc_header));
    }
    if !req.subject.is_empty() {
        msg.push_str(&encode::unstructured("Subject", &req.subject));
    }
    msg.push_str(&format!("Message-ID: <{message_id}>\r\n"));
    msg.push_str("MIME-Version: 1.0\r\n");
    for (name, value) in &req.headers {
        msg.push_str(&custom_header(name, value)?);
    }
    let header_ascii = msg.is_ascii();

    let mut message = msg.into_bytes();
    match (&req.text, &req.html) {
        (Some(text), Some(html)) => {
            let (text_enc, text_body) = encode::body(text);
            let (html_enc, html_body) = encode::body(html);
            let boundary = boundary(id, &[&text_body, &html_body]);
            message.extend_from_slice(
                format!("Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n")
                    .as_bytes(),
            );
            for (ctype, enc, body) in [
                ("text/plain", text_enc, text_body),
                ("text/html", html_enc, html_body),
            ] {
                message.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
                message.extend_from_slice(part_headers(ctype, enc).as_bytes());
                message.extend_from_slice(b"\r\n");
                message.extend_from_slice(&body);
            }
            message.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        }
        (Some(only), None) | (None, Some(only)) => {
            let ctype = if req.text.is_some() {
                "text/plain"
            } else {
                "text/html"
            };
            let (enc, body) = encode::body(only);
            message.extend_from_slice(part_headers(ctype, enc).as_bytes());
            message.extend_from_slice(b"\r\n");
            message.extend_from_slice(&body);
        }
        (None, None) => {
            return Err(SubmitError::invalid(
                "text",
                "missing_body",
                "at least one of text or html is required",
            ));
        }
    }

    let spool = finish_wire(&message, limits, "text")?;
    let smtputf8 = !header_ascii
        || from.address.needs_smtputf8()
        || recipients.list.iter().any(|r| r.address.needs_smtputf8());
    Ok(PreparedMessage {
        mail_from: from.address.envelope(),
        recipients: recipients.list,
        message_id_header: message_id,
        subject: sanitize::cut(&req.subject, sanitize::MAX_REMOTE_TEXT),
        tags: req.tags.clone(),
        spool,
        smtputf8,
        eight_bit: !message.is_ascii(),
        request_hash: String::new(),
    })
}

fn check_custom_header(name: &str, value: &str, reply_to_given: bool) -> Result<(), SubmitError> {
    let name_ok = (1..=MAX_HEADER_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    let field = format!("headers.{}", printable(name));
    if !name_ok {
        return Err(SubmitError::invalid(
            &field,
            "invalid_header_name",
            format!(
                "a header name is 1 to {MAX_HEADER_NAME} printable ASCII characters without ':' or spaces"
            ),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED.contains(&lower.as_str()) || (reply_to_given && lower == "reply-to") {
        return Err(SubmitError::invalid(
            &field,
            "reserved_header",
            format!("{name} is set by outpost; use the dedicated field instead"),
        ));
    }
    check_header_text(value, &field, "header value")
}

fn custom_header(name: &str, value: &str) -> Result<String, SubmitError> {
    if value.is_ascii() {
        // ASCII values go out as given (structured fields like List-Unsubscribe must not
        // be encoded), folded at their own whitespace.
        encode::fold_ascii(name, value).ok_or_else(|| {
            SubmitError::invalid(
                &format!("headers.{name}"),
                "header_too_long",
                format!(
                    "the header value has a word too long to fit a {}-octet line",
                    encode::HARD_LIMIT
                ),
            )
        })
    } else {
        Ok(encode::unstructured(name, value))
    }
}

fn address_header(name: &str, boxes: &[Mailbox]) -> String {
    let mut line = HeaderLine::new(name);
    for (i, m) in boxes.iter().enumerate() {
        if i > 0 {
            line.glue(",");
        }
        match &m.name {
            Some(display) => {
                encode::phrase(&mut line, display);
                line.token(&format!("<{}>", m.address.envelope()));
            }
            None => line.token(&m.address.envelope()),
        }
    }
    line.finish()
}

fn part_headers(ctype: &str, enc: BodyEncoding) -> String {
    format!(
        "Content-Type: {ctype}; charset=utf-8\r\nContent-Transfer-Encoding: {}\r\n",
        enc.header_value()
    )
}

/// A boundary derived from the message id (deterministic output). Quoted-printable never
/// produces `=_`, so only a 7bit body could contain it by chance; then a suffix is added
/// until no body contains it.
fn boundary(id: MessageId, bodies: &[&[u8]]) -> String {
    let id = id.to_string().to_ascii_lowercase();
    let base = format!("=_outpost_{}", id.strip_prefix("msg_").unwrap_or(&id));
    let contains = |b: &str| {
        bodies
            .iter()
            .any(|body| body.windows(b.len()).any(|w| w == b.as_bytes()))
    };
    if !contains(&base) {
        return base;
    }
    // Each candidate must occur in a body to be skipped, so this ends within
    // (total body length) steps.
    let mut n: u64 = 1;
    loop {
        let candidate = format!("{base}_{n}");
        if !contains(&candidate) {
            return candidate;
        }
        n += 1;
    }
}
