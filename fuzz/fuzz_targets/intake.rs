//! `intake::prepare` on arbitrary compose requests (built with `arbitrary`, or parsed from
//! JSON as the API would) and arbitrary raw messages (`SubmissionContent::Raw`).
//!
//! Input layout: byte 0 picks the mode (0: arbitrary compose fields, 1: raw message, 2:
//! compose JSON), byte 1 picks limits and envelope variants; for raw and JSON the rest is
//! the message / the JSON body, so real messages and API bodies are meaningful seeds.
//!
//! Checks: never panics; deterministic; errors carry no control characters; on Ok the
//! spool has CRLF line endings only (no bare CR or LF), no line over 998 octets (not
//! counting the transparency dot, RFC 5321 4.5.3.1.6), is dot-stuffed (`dot_stuff` of
//! its unstuffed form is itself, and no line is a lone `.`), has a Message-ID header and
//! no Bcc header, fits the size limit, and has 1..=max deduplicated recipients whose
//! envelope forms can be written in SMTP commands.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use outpost_core::ids::{MessageId, RequestId, TenantId};
use outpost_core::intake::{IntakeLimits, PreparedMessage, dot_stuff, prepare, unstuff};
use outpost_core::io::{ComposeRequest, Submission, SubmissionContent, SubmitError};
use outpost_core::model::Source;
use outpost_core::smtp::command::is_safe_address;
use outpost_core::time::Time;

const NOW: Time = Time(1_795_633_268_123);
const ID: MessageId = MessageId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);

const ADDRS: &[&str] = &[
    "app@example.com",
    "App Team <app@example.com>",
    "\"Doe, John\" <john@example.com>",
    "alice@example.org",
    "Bob <bob@example.net>",
    "x.y+tag@sub.example.org",
    "üser@example.org",
    "user@bücher.example",
    "\"quoted local\"@example.org",
    "<angle@example.org>",
    "a@[127.0.0.1]",
    "@example.org",
    "",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "bücher.example",
    "EXAMPLE.com",
    "xn--bcher-kva.example",
];

#[derive(Arbitrary, Debug)]
enum Addr {
    Table(u8),
    Local(String, u8),
    Named(String, u8),
    Any(String),
}

impl Addr {
    fn render(&self) -> String {
        let pick = |i: &u8| ADDRS[usize::from(*i) % ADDRS.len()];
        match self {
            Addr::Table(i) => pick(i).to_string(),
            Addr::Local(l, i) => format!("{l}@{}", DOMAINS[usize::from(*i) % DOMAINS.len()]),
            Addr::Named(n, i) => format!("{n} <{}>", pick(i)),
            Addr::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Compose {
    from: Addr,
    to: Vec<Addr>,
    cc: Vec<Addr>,
    bcc: Vec<Addr>,
    reply_to: Option<Addr>,
    subject: String,
    text: Option<String>,
    html: Option<String>,
    headers: Vec<(String, String)>,
    tags: Vec<String>,
}

fn limits(b: u8) -> IntakeLimits {
    IntakeLimits {
        max_message_size: [100_000, 2_000, 10 * 1024 * 1024][usize::from(b) % 3],
        max_recipients: [10, 1, 100][usize::from(b / 3) % 3],
    }
}

fn no_controls(s: &str, what: &str, e: &SubmitError) {
    assert!(
        !s.chars().any(char::is_control),
        "control character in error {what}: {e:?}"
    );
}

fn lines(wire: &[u8]) -> Vec<&[u8]> {
    let mut v: Vec<&[u8]> = Vec::new();
    let mut rest = wire;
    while !rest.is_empty() {
        match rest.windows(2).position(|w| w == b"\r\n") {
            Some(p) => {
                v.push(&rest[..p]);
                rest = &rest[p + 2..];
            }
            None => {
                v.push(rest);
                rest = &[];
            }
        }
    }
    v
}

fn check_ok(p: &PreparedMessage, limits: &IntakeLimits) {
    let spool = &p.spool;
    // CRLF only.
    for (i, &b) in spool.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(spool.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
            b'\n' => assert!(i > 0 && spool[i - 1] == b'\r', "bare LF at {i}"),
            0 => panic!("NUL at {i}"),
            _ => {}
        }
    }
    assert!(
        spool.is_empty() || spool.ends_with(b"\r\n"),
        "the spool ends with CRLF"
    );
    // Dot-stuffed: a line starting with '.' has its dot doubled, and no line is the
    // terminator.
    let plain = unstuff(spool);
    assert_eq!(&dot_stuff(&plain), spool, "not dot-stuffed consistently");
    for line in lines(spool) {
        assert!(line != b".", "a lone '.' line would end DATA early");
        if line.first() == Some(&b'.') {
            assert!(line.starts_with(b".."), "unstuffed dot line");
        }
        let counted = if line.first() == Some(&b'.') {
            line.len() - 1
        } else {
            line.len()
        };
        assert!(counted <= 998, "line of {counted} octets");
    }
    assert!(
        plain.len() as u64 <= limits.max_message_size,
        "over the size limit"
    );
    // Headers: Message-ID present, no Bcc.
    let mut saw_mid = false;
    for line in lines(&plain) {
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        if name.trim_ascii_end().eq_ignore_ascii_case(b"message-id") {
            saw_mid = true;
        }
        assert!(
            !name.trim_ascii_end().eq_ignore_ascii_case(b"bcc"),
            "a Bcc header is sent: {:?}",
            String::from_utf8_lossy(line)
        );
    }
    assert!(saw_mid, "no Message-ID header");
    assert!(!p.message_id_header.is_empty());
    assert!(!p.message_id_header.contains(['\r', '\n']));
    // Envelope.
    assert!(!p.recipients.is_empty() && p.recipients.len() <= limits.max_recipients);
    assert!(
        is_safe_address(&p.mail_from),
        "unsafe MAIL FROM {:?}",
        p.mail_from
    );
    let mut keys = BTreeSet::new();
    for r in &p.recipients {
        let env = r.address.envelope();
        // KNOWN BUG (core/tests/fuzz_regressions.rs,
        // `quoted_local_part_with_space_is_never_stuck_in_sending`): intake accepts quoted
        // local parts holding a space or angle bracket that the SMTP client then refuses
        // to write. Skipped here so the fuzzer can go on; every other envelope must be
        // writable.
        let known_quoted = r.address.local.starts_with('"')
            && !r.address.local.bytes().any(|b| b < b' ' || b == 0x7f);
        assert!(
            is_safe_address(&env) || known_quoted,
            "unsafe RCPT TO {env:?}"
        );
        assert!(
            keys.insert(r.address.suppression_key()),
            "duplicate recipient {env:?}"
        );
        assert!(r.address.ascii_domain.is_ascii());
        assert_eq!(
            r.address.ascii_domain,
            r.address.ascii_domain.to_ascii_lowercase()
        );
        if !r.address.local.is_ascii() {
            assert!(p.smtputf8, "non-ASCII local part without SMTPUTF8");
        }
    }
    if !spool.is_ascii() {
        assert!(p.eight_bit || p.smtputf8, "8-bit content not flagged");
    }
    assert!(p.subject.len() <= 1024 && !p.subject.chars().any(char::is_control));
}

fn run(sub: &Submission, limits: &IntakeLimits) {
    let first = prepare(sub, ID, NOW, limits);
    match &first {
        Ok(p) => check_ok(p, limits),
        Err(e) => {
            no_controls(&e.code, "code", e);
            no_controls(&e.message, "message", e);
            if let Some(f) = &e.field {
                no_controls(f, "field", e);
            }
            assert!(!e.code.is_empty());
        }
    }
    assert_eq!(prepare(sub, ID, NOW, limits), first, "not deterministic");
}

fuzz_target!(|data: &[u8]| {
    let [mode, knobs, rest @ ..] = data else {
        return;
    };
    let limits = limits(*knobs);
    let tenant_domain = DOMAINS[usize::from(knobs >> 4) % DOMAINS.len()].to_lowercase();
    let source = if knobs & 0x08 != 0 {
        Source::Smtp
    } else {
        Source::Api
    };
    let content = match mode % 3 {
        0 => {
            let mut u = Unstructured::new(rest);
            let Ok(c) = Compose::arbitrary(&mut u) else {
                return;
            };
            SubmissionContent::Compose(ComposeRequest {
                from: c.from.render(),
                to: c.to.iter().map(Addr::render).collect(),
                cc: c.cc.iter().map(Addr::render).collect(),
                bcc: c.bcc.iter().map(Addr::render).collect(),
                reply_to: c.reply_to.as_ref().map(Addr::render),
                subject: c.subject,
                text: c.text,
                html: c.html,
                headers: c.headers.into_iter().collect::<BTreeMap<_, _>>(),
                tags: c.tags,
            })
        }
        1 => {
            let from = [
                "<bounce@example.com>",
                "app@example.com",
                "<>",
                "x@other.test",
                "b@bücher.example",
            ][usize::from(mode / 3) % 5];
            let rcpts: Vec<String> = [
                "a@example.org",
                "<B@Example.org>",
                "c@example.org",
                "hidden@example.org",
                "üser@example.org",
                "a@example.org",
            ]
            .iter()
            .take(usize::from(mode / 16) % 7)
            .map(|s| s.to_string())
            .collect();
            SubmissionContent::Raw {
                mail_from: from.to_string(),
                rcpt_to: rcpts,
                data: rest.to_vec(),
                smtputf8: mode & 0x80 != 0,
            }
        }
        _ => {
            let Ok(req) = serde_json::from_slice::<ComposeRequest>(rest) else {
                return;
            };
            SubmissionContent::Compose(req)
        }
    };
    let sub = Submission {
        request: RequestId(1),
        tenant: TenantId(1),
        tenant_domain,
        source,
        idempotency_key: None,
        content,
    };
    run(&sub, &limits);
});
