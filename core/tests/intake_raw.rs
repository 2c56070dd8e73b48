//! Raw messages (API `raw`, SMTP DATA): kept as sent, normalized for the wire.

use mail_parser::MessageParser;
use outpost_core::MessageId;
use outpost_core::ids::{RequestId, TenantId};
use outpost_core::intake::{IntakeLimits, PreparedMessage, prepare, unstuff};
use outpost_core::io::{Submission, SubmissionContent, SubmitError, SubmitErrorKind};
use outpost_core::model::{RecipientKind, Source};
use outpost_core::time::Time;
use proptest::prelude::*;

const LIMITS: IntakeLimits = IntakeLimits {
    max_message_size: 100_000,
    max_recipients: 10,
};
const NOW: Time = Time(1_795_633_268_123);
const ID: MessageId = MessageId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);

fn submit(
    mail_from: &str,
    rcpt: &[&str],
    data: &[u8],
    smtputf8: bool,
) -> Result<PreparedMessage, SubmitError> {
    let s = Submission {
        request: RequestId(1),
        tenant: TenantId(1),
        tenant_domain: "example.com".into(),
        source: Source::Smtp,
        idempotency_key: None,
        content: SubmissionContent::Raw {
            mail_from: mail_from.into(),
            rcpt_to: rcpt.iter().map(|s| s.to_string()).collect(),
            data: data.to_vec(),
            smtputf8,
        },
    };
    prepare(&s, ID, NOW, &LIMITS)
}

fn ok(data: &[u8], rcpt: &[&str]) -> PreparedMessage {
    match submit("<bounce@example.com>", rcpt, data, false) {
        Ok(p) => p,
        Err(e) => panic!("refused: {e:?}"),
    }
}

#[test]
fn normalizes_and_completes_headers() {
    let data = b"From: App <app@Example.COM>\nTo: a@example.org, B@Example.org\nCc: c@example.org\nBcc: hidden@example.org,\n  other@example.org\nSubject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\n\n.leading dot\rbare cr\nend";
    let p = ok(
        data,
        &[
            "a@example.org",
            "b@example.org",
            "c@example.org",
            "hidden@example.org",
        ],
    );
    let wire = unstuff(&p.spool);
    let s = String::from_utf8(wire.clone()).expect("ascii");
    let mid = format!("{}@example.com", &ID.to_string()[4..].to_lowercase());
    assert!(
        s.starts_with(&format!(
            "Message-ID: <{mid}>\r\nDate: Wed, 25 Nov 2026 19:01:08 +0000\r\nFrom: App <app@Example.COM>\r\n"
        )),
        "{s}"
    );
    assert!(
        !s.to_lowercase().contains("hidden@"),
        "Bcc header removed: {s}"
    );
    assert!(!s.contains("other@"), "folded Bcc lines removed too: {s}");
    assert!(s.ends_with("\r\n.leading dot\r\nbare cr\r\nend\r\n"), "{s}");
    assert!(p.spool.windows(16).any(|w| w == b"\r\n..leading dot\r"));
    assert_eq!(p.message_id_header, mid);
    assert_eq!(p.subject, "Grüße");
    assert_eq!(p.mail_from, "bounce@example.com");
    let kinds: Vec<_> = p.recipients.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        vec![
            RecipientKind::To,
            RecipientKind::To,
            RecipientKind::Cc,
            RecipientKind::Bcc
        ]
    );
    assert!(!p.eight_bit && !p.smtputf8);
    assert!(p.tags.is_empty());
    let m = MessageParser::default().parse(&wire).expect("parses");
    assert_eq!(m.subject(), Some("Grüße"));
    assert!(m.bcc().is_none());
    assert_eq!(
        p,
        ok(
            data,
            &[
                "a@example.org",
                "b@example.org",
                "c@example.org",
                "hidden@example.org"
            ]
        )
    );
}

#[test]
fn keeps_an_existing_message_id_and_date() {
    let data = b"Message-ID: <Orig.1@Example.COM>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom: app@example.com\r\n\r\nbody\r\n";
    let p = ok(data, &["r@example.org"]);
    assert_eq!(p.message_id_header, "Orig.1@Example.COM");
    assert_eq!(unstuff(&p.spool), data.to_vec(), "unchanged");
    assert_eq!(p.recipients[0].kind, RecipientKind::Bcc);
    assert_eq!(p.subject, "");
}

#[test]
fn eight_bit_and_smtputf8() {
    let body8 = "From: app@example.com\r\nSubject: plain\r\n\r\nGrüße\r\n";
    let p = ok(body8.as_bytes(), &["r@example.org"]);
    assert!(p.eight_bit && !p.smtputf8);

    let header8 = "From: Jörg <app@example.com>\r\nSubject: Grüße\r\n\r\nbody\r\n";
    let p = ok(header8.as_bytes(), &["r@example.org"]);
    assert!(p.eight_bit && p.smtputf8);
    assert_eq!(p.subject, "Grüße");

    let p = ok(b"From: app@example.com\r\n\r\nx\r\n", &["jörg@example.org"]);
    assert!(p.smtputf8 && !p.eight_bit);

    let p = submit(
        "app@example.com",
        &["r@example.org"],
        b"From: app@example.com\r\n\r\nx\r\n",
        true,
    )
    .expect("ok");
    assert!(p.smtputf8);
}

#[test]
fn envelope_and_header_checks() {
    let e = submit(
        "app@example.com",
        &["r@example.org"],
        b"From: <>\r\n\r\nx\r\n",
        false,
    )
    .expect_err("refused");
    assert_eq!(
        (e.code.as_str(), e.field.as_deref()),
        ("invalid_from", Some("raw"))
    );
    let e = submit(
        "app@example.com",
        &["r@example.org"],
        b"From: Undisclosed:;\r\n\r\nx\r\n",
        false,
    )
    .expect_err("refused");
    assert_eq!(e.field.as_deref(), Some("raw"));
    let e = submit(
        "app@example.com",
        &["r@example.org"],
        b"From: a@example.com, b@evil.example\r\n\r\nx\r\n",
        false,
    )
    .expect_err("every From address must be the tenant's");
    assert_eq!(e.kind, SubmitErrorKind::Forbidden);
    let many: Vec<String> = (0..11).map(|i| format!("r{i}@example.org")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let e = submit(
        "app@example.com",
        &many,
        b"From: a@example.com\r\n\r\nx\r\n",
        false,
    )
    .expect_err("refused");
    assert_eq!(
        (e.code.as_str(), e.field.as_deref()),
        ("too_many_recipients", Some("rcpt_to"))
    );
    // Duplicates count once.
    let dup = ["r@example.org", "R@EXAMPLE.ORG", "<r@example.org>"];
    let p = submit(
        "app@example.com",
        &dup,
        b"From: a@example.com\r\n\r\nx\r\n",
        false,
    )
    .expect("ok");
    assert_eq!(p.recipients.len(), 1);
}

#[test]
fn size_is_checked_after_normalization() {
    // 60_000 bare LFs become 120_000 octets of CRLF: over the limit only once normalized.
    let mut data = b"From: a@example.com\n\n".to_vec();
    data.extend(std::iter::repeat_n(b'\n', 60_000));
    let e = submit("app@example.com", &["r@example.org"], &data, false).expect_err("too large");
    assert_eq!(e.kind, SubmitErrorKind::TooLarge);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn raw_wire_keeps_line_rules(body in proptest::collection::vec(
        prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), 1u8..=255], 0..3000)) {
        let mut data = b"From: a@example.com\r\nSubject: s\r\n\r\n".to_vec();
        data.extend_from_slice(&body);
        match submit("app@example.com", &["r@example.org"], &data, false) {
            Ok(p) => {
                prop_assert!(p.spool.ends_with(b"\r\n"));
                let mut rest = &p.spool[..];
                while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                    prop_assert!(nl >= 1 && rest[nl - 1] == b'\r');
                    prop_assert!(!rest[..nl - 1].contains(&b'\r'));
                    prop_assert!(nl - 1 <= 998);
                    rest = &rest[nl + 1..];
                }
                prop_assert!(rest.is_empty());
                prop_assert_eq!(p.eight_bit, body.iter().any(|&b| b >= 0x80));
            }
            Err(e) => prop_assert_eq!(e.code.as_str(), "line_too_long"),
        }
    }
}
