//! Every refusal intake documents: kind, stable code and the field it names.

use std::collections::BTreeMap;

use outpost_core::MessageId;
use outpost_core::ids::{RequestId, TenantId};
use outpost_core::intake::{IntakeLimits, prepare};
use outpost_core::io::{ComposeRequest, Submission, SubmissionContent, SubmitErrorKind};
use outpost_core::model::Source;
use outpost_core::time::Time;

const LIMITS: IntakeLimits = IntakeLimits {
    max_message_size: 10_000,
    max_recipients: 3,
};

fn sub(content: SubmissionContent) -> Submission {
    Submission {
        request: RequestId(1),
        tenant: TenantId(1),
        tenant_domain: "example.com".into(),
        source: Source::Api,
        idempotency_key: None,
        content,
    }
}

fn base() -> ComposeRequest {
    ComposeRequest {
        from: "Sender <sender@example.com>".into(),
        to: vec!["rcpt@example.org".into()],
        subject: "hello".into(),
        text: Some("hi".into()),
        ..Default::default()
    }
}

fn raw(mail_from: &str, rcpt: &[&str], data: &[u8]) -> SubmissionContent {
    SubmissionContent::Raw {
        mail_from: mail_from.into(),
        rcpt_to: rcpt.iter().map(|s| s.to_string()).collect(),
        data: data.to_vec(),
        smtputf8: false,
    }
}

fn with(f: impl FnOnce(&mut ComposeRequest)) -> SubmissionContent {
    let mut r = base();
    f(&mut r);
    SubmissionContent::Compose(r)
}

fn header(name: &str, value: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(name.to_string(), value.to_string())])
}

#[test]
fn the_base_request_is_valid() {
    let p = prepare(&sub(with(|_| {})), MessageId(7), Time(0), &LIMITS);
    assert!(p.is_ok(), "{p:?}");
}

#[test]
fn refusals_table() {
    use SubmitErrorKind::{Forbidden, Invalid, TooLarge};
    let long_line = format!("From: a@example.com\r\n\r\n{}\r\n", "x".repeat(999));
    let cases: Vec<(&str, SubmissionContent, SubmitErrorKind, &str, Option<&str>)> = vec![
        // Header injection, wherever text reaches a header.
        (
            "CRLF in header value",
            with(|r| r.headers = header("X-Foo", "a\r\nBcc: victim@x.org")),
            Invalid,
            "header_injection",
            Some("headers.X-Foo"),
        ),
        (
            "LF in header value",
            with(|r| r.headers = header("X-Foo", "a\nb")),
            Invalid,
            "header_injection",
            Some("headers.X-Foo"),
        ),
        (
            "ESC in header value",
            with(|r| r.headers = header("X-Foo", "a\u{1b}[31m")),
            Invalid,
            "control_character",
            Some("headers.X-Foo"),
        ),
        (
            "CRLF in subject",
            with(|r| r.subject = "hi\r\nBcc: victim@x.org".into()),
            Invalid,
            "header_injection",
            Some("subject"),
        ),
        (
            "NUL in subject",
            with(|r| r.subject = "hi\0".into()),
            Invalid,
            "control_character",
            Some("subject"),
        ),
        (
            "CRLF in display name",
            with(|r| r.to = vec!["Eve\r\nBcc: x@y.org <eve@example.org>".into()]),
            Invalid,
            "header_injection",
            Some("to[0]"),
        ),
        (
            "CR in from display name",
            with(|r| r.from = "Eve\r <sender@example.com>".into()),
            Invalid,
            "header_injection",
            Some("from"),
        ),
        // Addresses.
        (
            "no @",
            with(|r| r.to = vec!["ok@example.org".into(), "nope".into()]),
            Invalid,
            "invalid_address",
            Some("to[1]"),
        ),
        (
            "space in local part",
            with(|r| r.cc = vec!["a b@example.org".into()]),
            Invalid,
            "invalid_local_part",
            Some("cc[0]"),
        ),
        (
            "consecutive dots",
            with(|r| r.bcc = vec!["a..b@example.org".into()]),
            Invalid,
            "invalid_local_part",
            Some("bcc[0]"),
        ),
        (
            "empty local part",
            with(|r| r.to = vec!["@example.org".into()]),
            Invalid,
            "invalid_local_part",
            Some("to[0]"),
        ),
        (
            "empty domain",
            with(|r| r.to = vec!["a@".into()]),
            Invalid,
            "invalid_domain",
            Some("to[0]"),
        ),
        (
            "address literal",
            with(|r| r.to = vec!["a@[192.0.2.1]".into()]),
            Invalid,
            "address_literal",
            Some("to[0]"),
        ),
        (
            "null address",
            with(|r| r.to = vec!["<>".into()]),
            Invalid,
            "null_address",
            Some("to[0]"),
        ),
        (
            "empty address",
            with(|r| r.to = vec!["".into()]),
            Invalid,
            "empty_address",
            Some("to[0]"),
        ),
        (
            "local part too long",
            with(|r| r.to = vec![format!("{}@example.org", "a".repeat(65))]),
            Invalid,
            "local_part_too_long",
            Some("to[0]"),
        ),
        (
            "label too long",
            with(|r| r.to = vec![format!("a@{}.org", "a".repeat(64))]),
            Invalid,
            "label_too_long",
            Some("to[0]"),
        ),
        (
            "invalid IDN",
            with(|r| r.to = vec!["a@xn--a.org".into()]),
            Invalid,
            "invalid_domain",
            Some("to[0]"),
        ),
        (
            "bad reply_to",
            with(|r| r.reply_to = Some("not an address".into())),
            Invalid,
            "invalid_address",
            Some("reply_to"),
        ),
        (
            "bad from",
            with(|r| r.from = "sender@".into()),
            Invalid,
            "invalid_domain",
            Some("from"),
        ),
        // Sender domain.
        (
            "wrong-domain From",
            with(|r| r.from = "sender@evil.example".into()),
            Forbidden,
            "sender_domain_not_allowed",
            Some("from"),
        ),
        (
            "subdomain From",
            with(|r| r.from = "sender@mail.example.com".into()),
            Forbidden,
            "sender_domain_not_allowed",
            Some("from"),
        ),
        // Recipients.
        (
            "no recipients",
            with(|r| r.to.clear()),
            Invalid,
            "no_recipients",
            Some("to"),
        ),
        (
            "too many recipients",
            with(|r| {
                r.to = (0..4).map(|i| format!("r{i}@example.org")).collect();
            }),
            Invalid,
            "too_many_recipients",
            Some("to"),
        ),
        // Bodies, headers, tags.
        (
            "no body",
            with(|r| r.text = None),
            Invalid,
            "missing_body",
            Some("text"),
        ),
        (
            "reserved header",
            with(|r| r.headers = header("message-id", "<x@y>")),
            Invalid,
            "reserved_header",
            Some("headers.message-id"),
        ),
        (
            "Bcc header",
            with(|r| r.headers = header("Bcc", "x@y.org")),
            Invalid,
            "reserved_header",
            Some("headers.Bcc"),
        ),
        (
            "Reply-To header with reply_to",
            with(|r| {
                r.reply_to = Some("help@example.com".into());
                r.headers = header("Reply-To", "other@example.com");
            }),
            Invalid,
            "reserved_header",
            Some("headers.Reply-To"),
        ),
        (
            "header name with colon",
            with(|r| r.headers = header("X:Foo", "v")),
            Invalid,
            "invalid_header_name",
            Some("headers.X:Foo"),
        ),
        (
            "header name with CRLF is escaped in the field",
            with(|r| r.headers = header("X\r\nFoo", "v")),
            Invalid,
            "invalid_header_name",
            Some("headers.X\\r\\nFoo"),
        ),
        (
            "header value with an unfoldable word",
            with(|r| r.headers = header("X-Long", &"y".repeat(1000))),
            Invalid,
            "header_too_long",
            Some("headers.X-Long"),
        ),
        (
            "tag with space",
            with(|r| r.tags = vec!["ok".into(), "not ok".into()]),
            Invalid,
            "invalid_tag",
            Some("tags[1]"),
        ),
        (
            "empty tag",
            with(|r| r.tags = vec![String::new()]),
            Invalid,
            "invalid_tag",
            Some("tags[0]"),
        ),
        (
            "tag too long",
            with(|r| r.tags = vec!["t".repeat(65)]),
            Invalid,
            "invalid_tag",
            Some("tags[0]"),
        ),
        (
            "too many tags",
            with(|r| r.tags = (0..11).map(|i| format!("t{i}")).collect()),
            Invalid,
            "too_many_tags",
            Some("tags"),
        ),
        (
            "oversize text",
            with(|r| r.text = Some("x".repeat(10_001))),
            TooLarge,
            "message_too_large",
            None,
        ),
        (
            "oversize after encoding",
            with(|r| r.text = Some("é".repeat(3000))),
            TooLarge,
            "message_too_large",
            None,
        ),
        // Raw.
        (
            "raw without From",
            raw(
                "sender@example.com",
                &["r@example.org"],
                b"Subject: x\r\n\r\nbody\r\n",
            ),
            Invalid,
            "missing_from",
            Some("raw"),
        ),
        (
            "raw with wrong-domain From",
            raw(
                "sender@example.com",
                &["r@example.org"],
                b"From: ceo@bank.example\r\n\r\nbody\r\n",
            ),
            Forbidden,
            "sender_domain_not_allowed",
            Some("raw"),
        ),
        (
            "raw with wrong-domain envelope sender",
            raw(
                "sender@bank.example",
                &["r@example.org"],
                b"From: a@example.com\r\n\r\nbody\r\n",
            ),
            Forbidden,
            "sender_domain_not_allowed",
            Some("from"),
        ),
        (
            "raw with an overlong line",
            raw(
                "sender@example.com",
                &["r@example.org"],
                long_line.as_bytes(),
            ),
            Invalid,
            "line_too_long",
            Some("raw"),
        ),
        (
            "raw with NUL",
            raw(
                "sender@example.com",
                &["r@example.org"],
                b"From: a@example.com\r\n\r\nbo\0dy\r\n",
            ),
            Invalid,
            "nul_byte",
            Some("raw"),
        ),
        (
            "raw with a bad recipient",
            raw(
                "sender@example.com",
                &["r@example.org", "r@@example.org"],
                b"From: a@example.com\r\n\r\nbody\r\n",
            ),
            Invalid,
            "invalid_local_part",
            Some("to[1]"),
        ),
        (
            "raw with no recipients",
            raw(
                "sender@example.com",
                &[],
                b"From: a@example.com\r\n\r\nbody\r\n",
            ),
            Invalid,
            "no_recipients",
            Some("to"),
        ),
        (
            "raw with a null envelope sender",
            raw(
                "<>",
                &["r@example.org"],
                b"From: a@example.com\r\n\r\nbody\r\n",
            ),
            Invalid,
            "null_address",
            Some("from"),
        ),
        (
            "raw oversize",
            raw(
                "sender@example.com",
                &["r@example.org"],
                &vec![b'a'; 10_001],
            ),
            TooLarge,
            "message_too_large",
            None,
        ),
    ];

    let mut failures = Vec::new();
    for (what, content, kind, code, field) in cases {
        match prepare(&sub(content), MessageId(7), Time(0), &LIMITS) {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(e) => {
                if e.kind != kind || e.code != code || e.field.as_deref() != field {
                    failures.push(format!("{what}: got {e:?}"));
                }
                if e.message.chars().any(char::is_control) {
                    failures.push(format!("{what}: control character in message {e:?}"));
                }
                if e.field.iter().any(|f| f.chars().any(char::is_control)) {
                    failures.push(format!("{what}: control character in field {e:?}"));
                }
                assert_eq!(
                    e.kind.http_status(),
                    match kind {
                        Invalid => 422,
                        Forbidden => 403,
                        _ => 413,
                    }
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn smtp_envelope_fields_are_named_for_smtp() {
    let mut s = sub(raw(
        "sender@example.com",
        &["bad"],
        b"From: a@example.com\r\n\r\nbody\r\n",
    ));
    s.source = Source::Smtp;
    let e = prepare(&s, MessageId(7), Time(0), &LIMITS).expect_err("refused");
    assert_eq!(e.field.as_deref(), Some("rcpt_to[0]"));
    s.content = raw(
        "sender@other.example",
        &["r@example.org"],
        b"From: a@example.com\r\n\r\nbody\r\n",
    );
    let e = prepare(&s, MessageId(7), Time(0), &LIMITS).expect_err("refused");
    assert_eq!(
        (e.kind, e.field.as_deref()),
        (SubmitErrorKind::Forbidden, Some("mail_from"))
    );
}

mod never_panics {
    use super::*;
    use outpost_core::intake::{parse_address, parse_mailbox};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any string either fails cleanly or gives an address whose envelope form parses
        /// back to the same address and carries no control character or line break.
        #[test]
        fn addresses(s in "(\\PC|[\"\\\\<>@. \r\n\0\\[\\]]|xn--){0,80}") {
            let _ = parse_mailbox(&s);
            if let Ok(a) = parse_address(&s) {
                let env = a.envelope();
                prop_assert!(!env.chars().any(char::is_control));
                prop_assert!(env.len() <= 254);
                prop_assert_eq!(parse_address(&env).ok(), Some(a));
            }
        }

        #[test]
        fn raw_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut with_from = b"From: a@example.com\r\n".to_vec();
            with_from.extend_from_slice(&data);
            for d in [data.clone(), with_from] {
                let r = prepare(&sub(raw("a@example.com", &["r@example.org"], &d)), MessageId(1), Time(0), &LIMITS);
                if let Err(e) = r {
                    prop_assert!(!e.message.chars().any(char::is_control));
                }
            }
        }
    }
}
