//! Composition: the message parses back to what was submitted, output is deterministic,
//! and the wire form keeps SMTP's line rules for any input.

use std::collections::BTreeMap;

use mail_parser::{HeaderForm, MessageParser, MimeHeaders};
use outpost_core::MessageId;
use outpost_core::ids::{RequestId, TenantId};
use outpost_core::intake::{
    IntakeLimits, PreparedMessage, dot_stuff, parse_address, prepare, request_hash, unstuff,
};
use outpost_core::io::{ComposeRequest, Submission, SubmissionContent};
use outpost_core::model::{RecipientKind, Source};
use outpost_core::time::Time;
use proptest::prelude::*;

const LIMITS: IntakeLimits = IntakeLimits {
    max_message_size: 10_000_000,
    max_recipients: 50,
};
const NOW: Time = Time(1_795_633_268_123);
const ID: MessageId = MessageId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);

fn sub(req: ComposeRequest) -> Submission {
    Submission {
        request: RequestId(1),
        tenant: TenantId(1),
        tenant_domain: "example.com".into(),
        source: Source::Api,
        // With a key, so that the request hash is computed (see below).
        idempotency_key: Some("key-1".into()),
        content: SubmissionContent::Compose(req),
    }
}

fn prep(req: ComposeRequest) -> PreparedMessage {
    match prepare(&sub(req), ID, NOW, &LIMITS) {
        Ok(p) => p,
        Err(e) => panic!("refused: {e:?}"),
    }
}

/// Line endings made comparable: what a reader sees of a text, ignoring trailing breaks.
fn norm(s: &str) -> String {
    s.replace("\r\n", "\n")
        .replace('\r', "\n")
        .trim_end_matches('\n')
        .to_string()
}

fn full() -> ComposeRequest {
    ComposeRequest {
        from: "Zoë Sender <sender@example.com>".into(),
        to: vec![
            "\"Doe, John\" <john@example.org>".into(),
            "plain@example.net".into(),
        ],
        cc: vec!["Carol <carol@example.org>".into()],
        bcc: vec!["secret@example.org".into(), "JOHN@Example.org".into()],
        reply_to: Some("Help Desk <help@example.com>".into()),
        subject: "Grüße aus Köln — your order #42".into(),
        text: Some("Hello,\nyour order shipped.\n.\n..leading dots\n".into()),
        html: Some("<p>Hello, <b>your</b> order shipped.</p>\n".into()),
        headers: BTreeMap::from([
            (
                "List-Unsubscribe".to_string(),
                "<https://example.com/unsubscribe/0123456789abcdef0123456789abcdef0123456789abcdef>"
                    .to_string(),
            ),
            ("X-Campaign".to_string(), "Été 2026".to_string()),
        ]),
        tags: vec!["welcome".into(), "order-42".into()],
    }
}

#[test]
fn composed_message_parses_back() {
    let p = prep(full());
    let wire = unstuff(&p.spool);
    let m = MessageParser::default().parse(&wire).expect("parses");

    let from = m.from().and_then(|a| a.first()).expect("from");
    assert_eq!(from.name(), Some("Zoë Sender"));
    assert_eq!(from.address(), Some("sender@example.com"));
    let to: Vec<_> = m
        .to()
        .expect("to")
        .iter()
        .map(|a| (a.name(), a.address()))
        .collect();
    assert_eq!(
        to,
        vec![
            (Some("Doe, John"), Some("john@example.org")),
            (None, Some("plain@example.net"))
        ]
    );
    let cc = m.cc().and_then(|a| a.first()).expect("cc");
    assert_eq!(cc.address(), Some("carol@example.org"));
    assert!(m.bcc().is_none(), "never a Bcc header");
    assert!(
        !String::from_utf8_lossy(&wire)
            .to_lowercase()
            .contains("secret@")
    );
    let reply = m.reply_to().and_then(|a| a.first()).expect("reply-to");
    assert_eq!(reply.name(), Some("Help Desk"));
    assert_eq!(m.subject(), Some("Grüße aus Köln — your order #42"));
    assert_eq!(p.subject, "Grüße aus Köln — your order #42");
    assert_eq!(
        m.date().map(|d| d.to_timestamp()),
        Some((NOW.as_millis() / 1000) as i64)
    );
    let mid = format!("{}@example.com", &ID.to_string()[4..].to_lowercase());
    assert_eq!(m.message_id(), Some(mid.as_str()));
    assert_eq!(p.message_id_header, mid);
    assert_eq!(m.header_raw("MIME-Version").map(str::trim), Some("1.0"));
    assert_eq!(
        m.header_raw("List-Unsubscribe")
            .map(|v| v.trim().replace("\r\n", "")),
        Some(
            "<https://example.com/unsubscribe/0123456789abcdef0123456789abcdef0123456789abcdef>"
                .to_string()
        )
    );
    assert_eq!(
        m.header_as("X-Campaign", HeaderForm::Text)
            .first()
            .and_then(|v| v.as_text()),
        Some("Été 2026")
    );

    // multipart/alternative with the text and html parts, in that order.
    let ct = m.content_type().expect("content type");
    assert_eq!(
        (ct.ctype(), ct.subtype()),
        ("multipart", Some("alternative"))
    );
    assert_eq!(m.text_body_count(), 1);
    assert_eq!(m.html_body_count(), 1);
    assert_eq!(
        norm(&m.body_text(0).expect("text")),
        norm("Hello,\nyour order shipped.\n.\n..leading dots\n")
    );
    assert_eq!(
        norm(&m.body_html(0).expect("html")),
        norm("<p>Hello, <b>your</b> order shipped.</p>\n")
    );

    // Envelope: deduplicated case-insensitively, first kind wins, in order.
    let rcpts: Vec<_> = p
        .recipients
        .iter()
        .map(|r| (r.address.envelope(), r.kind))
        .collect();
    assert_eq!(
        rcpts,
        vec![
            ("john@example.org".to_string(), RecipientKind::To),
            ("plain@example.net".to_string(), RecipientKind::To),
            ("carol@example.org".to_string(), RecipientKind::Cc),
            ("secret@example.org".to_string(), RecipientKind::Bcc),
        ]
    );
    assert_eq!(p.mail_from, "sender@example.com");
    assert_eq!(p.tags, vec!["welcome", "order-42"]);
    assert!(!p.smtputf8 && !p.eight_bit);
    assert_eq!(p.request_hash.len(), 64);
}

#[test]
fn dot_lines_are_stuffed_in_the_spool() {
    let p = prep(ComposeRequest {
        text: Some(".\n..hidden\n".into()),
        html: None,
        ..full()
    });
    let s = String::from_utf8(p.spool.clone()).expect("ascii");
    assert!(s.contains("\r\n..\r\n...hidden\r\n"), "{s}");
    assert!(s.ends_with("\r\n") && !s.ends_with("\r\n.\r\n"));
}

#[test]
fn single_part_content_types() {
    let p = prep(ComposeRequest {
        html: None,
        ..full()
    });
    let wire = unstuff(&p.spool);
    let m = MessageParser::default().parse(&wire).expect("parses");
    let ct = m.content_type().expect("ct");
    assert_eq!((ct.ctype(), ct.subtype()), ("text", Some("plain")));
    assert_eq!(ct.attribute("charset"), Some("utf-8"));

    let p = prep(ComposeRequest {
        text: None,
        ..full()
    });
    let wire = unstuff(&p.spool);
    let m = MessageParser::default().parse(&wire).expect("parses");
    let ct = m.content_type().expect("ct");
    assert_eq!((ct.ctype(), ct.subtype()), ("text", Some("html")));
    assert_eq!(
        norm(&m.body_html(0).expect("html")),
        norm("<p>Hello, <b>your</b> order shipped.</p>")
    );
}

#[test]
fn deterministic_output() {
    let a = prep(full());
    let b = prep(full());
    assert_eq!(a, b);
    assert_eq!(a.spool, b.spool);
}

#[test]
fn request_hash_covers_content_only() {
    let a = sub(full());
    let mut b = a.clone();
    b.request = RequestId(99);
    b.idempotency_key = Some("key".into());
    let pa = prepare(&a, ID, NOW, &LIMITS).expect("ok");
    let pb = prepare(&b, MessageId(5), Time(7), &LIMITS).expect("ok");
    assert_eq!(pa.request_hash, pb.request_hash);
    assert_eq!(pa.request_hash, request_hash(&a.content));
    let mut c = full();
    c.text = Some("Hello,\nyour order shipped!\n".into());
    assert_ne!(pa.request_hash, prep(c).request_hash);
    let mut d = full();
    d.headers.insert("X-Other".into(), "1".into());
    assert_ne!(pa.request_hash, prep(d).request_hash);
}

#[test]
fn request_hash_is_computed_only_for_an_idempotency_key() {
    let mut a = sub(full());
    a.idempotency_key = None;
    assert_eq!(prepare(&a, ID, NOW, &LIMITS).expect("ok").request_hash, "");
}

#[test]
fn idn_and_utf8_addresses() {
    let p = prep(ComposeRequest {
        to: vec![
            "Jörg <jörg@bücher.example>".into(),
            "user@XN--BCHER-KVA.example".into(),
        ],
        cc: vec![],
        bcc: vec![],
        ..full()
    });
    let rcpts: Vec<_> = p.recipients.iter().map(|r| r.address.envelope()).collect();
    assert_eq!(
        rcpts,
        vec!["jörg@xn--bcher-kva.example", "user@xn--bcher-kva.example"]
    );
    assert_eq!(p.recipients[1].address.domain, "bücher.example");
    assert!(p.smtputf8, "a UTF-8 local part needs SMTPUTF8");
    assert!(p.eight_bit, "its header carries raw UTF-8");
    let wire = unstuff(&p.spool);
    let m = MessageParser::default().parse(&wire).expect("parses");
    let to = m.to().and_then(|a| a.first()).expect("to");
    assert_eq!(to.address(), Some("jörg@xn--bcher-kva.example"));
    assert_eq!(to.name(), Some("Jörg"));

    let a = parse_address("dømi@Ñandú.example").expect("valid");
    assert_eq!(a.domain, "ñandú.example");
    assert!(a.ascii_domain.starts_with("xn--") && a.ascii_domain.is_ascii());
    assert!(a.needs_smtputf8());
    assert_eq!(a.suppression_key(), a.envelope().to_lowercase());

    let ascii = prep(ComposeRequest {
        to: vec!["user@bücher.example".into()],
        cc: vec![],
        bcc: vec![],
        ..full()
    });
    assert!(!ascii.smtputf8, "an IDN domain alone goes out as A-labels");
}

#[test]
fn bcc_only_gets_an_undisclosed_to() {
    let p = prep(ComposeRequest {
        to: vec![],
        cc: vec![],
        bcc: vec!["hidden@example.org".into()],
        ..full()
    });
    let s = String::from_utf8(unstuff(&p.spool)).expect("ascii");
    assert!(s.contains("\r\nTo: undisclosed-recipients:;\r\n"));
    assert!(!s.contains("hidden@"));
    assert_eq!(p.recipients[0].kind, RecipientKind::Bcc);
}

#[test]
fn long_names_and_subjects_fold() {
    let p = prep(ComposeRequest {
        from: format!("{} <sender@example.com>", "Ünïcödé ".repeat(40)),
        subject: format!("{} {}", "word".repeat(300), "é".repeat(500)),
        to: (0..20)
            .map(|i| format!("\"Person, Number {i}\" <person{i}@example.org>"))
            .collect(),
        ..full()
    });
    let wire = unstuff(&p.spool);
    for line in wire.split(|&b| b == b'\n') {
        assert!(line.len() <= 999, "line of {} octets", line.len());
    }
    let m = MessageParser::default().parse(&wire).expect("parses");
    assert_eq!(m.to().map(|t| t.iter().count()), Some(20));
    assert_eq!(
        m.from().and_then(|a| a.first()).and_then(|a| a.name()),
        Some("Ünïcödé ".repeat(40).trim())
    );
    assert_eq!(
        m.subject(),
        Some(format!("{} {}", "word".repeat(300), "é".repeat(500)).as_str())
    );
    assert!(p.subject.len() <= 1024);
}

/// Every line ends with CRLF and holds at most 998 octets before it.
fn assert_wire_lines(spool: &[u8]) {
    assert!(spool.ends_with(b"\r\n"));
    let mut rest = spool;
    while !rest.is_empty() {
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .expect("terminated line");
        assert!(nl >= 1 && rest[nl - 1] == b'\r', "bare LF");
        assert!(!rest[..nl - 1].contains(&b'\r'), "bare CR");
        assert!(nl - 1 <= 998, "line of {} octets", nl - 1);
        rest = &rest[nl + 1..];
    }
}

fn text_strategy() -> impl Strategy<Value = String> {
    (
        "(\\PC|\n|\r|\t| |\\.){0,400}",
        0usize..2500,
        "(\\PC|\n){0,50}",
    )
        .prop_map(|(a, n, b)| format!("{a}{}{b}", "ü".repeat(n)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn dot_stuffing_round_trips(bytes in proptest::collection::vec(
        prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), any::<u8>()], 0..300)) {
        let stuffed = dot_stuff(&bytes);
        prop_assert_eq!(unstuff(&stuffed), bytes.clone());
        // No CRLF-started line of the stuffed form is a lone ".".
        let s = &stuffed;
        prop_assert!(!s.starts_with(b".\r\n") && !s.windows(5).any(|w| w == b"\r\n.\r\n"));
    }

    #[test]
    fn composed_wire_keeps_line_rules(
        text in proptest::option::of(text_strategy()),
        html in proptest::option::of(text_strategy()),
        subject in "(\\PC|\t){0,1200}",
        name in "[^\\p{Cc}<>\"]{0,120}",
        header in "[ -~]{0,300}",
    ) {
        let text = if text.is_none() && html.is_none() { Some(String::new()) } else { text };
        let req = ComposeRequest {
            from: format!("\"{}\" <sender@example.com>", name.replace('\\', "")),
            subject: subject.clone(),
            text: text.clone(),
            html: html.clone(),
            headers: BTreeMap::from([("X-Any".to_string(), header)]),
            ..full()
        };
        let p = match prepare(&sub(req.clone()), ID, NOW, &LIMITS) {
            Ok(p) => p,
            Err(e) => {
                // The only refusal possible here: a header word too long to fold.
                prop_assert_eq!(e.code.as_str(), "header_too_long");
                return Ok(());
            }
        };
        assert_wire_lines(&p.spool);
        let again = prepare(&sub(req), ID, NOW, &LIMITS).expect("same input");
        prop_assert_eq!(&again.spool, &p.spool);

        let wire = unstuff(&p.spool);
        prop_assert!(wire.iter().all(|&b| b < 0x80), "8-bit free");
        let m = MessageParser::default().parse(&wire).expect("parses");
        if subject.trim().is_empty() {
            prop_assert!(m.subject().is_none_or(|s| s.trim().is_empty()));
        } else {
            prop_assert_eq!(m.subject().map(str::trim), Some(subject.trim()));
        }
        if let Some(t) = &text {
            let got = m.text_part(0).and_then(|p| p.text_contents()).unwrap_or_default();
            prop_assert_eq!(norm(got), norm(t));
        }
        if let Some(h) = &html {
            let got = m.html_part(0).and_then(|p| p.text_contents()).unwrap_or_default();
            prop_assert_eq!(norm(got), norm(h));
        }
    }
}
