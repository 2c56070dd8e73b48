//! Property tests for the SMTP submission server session: hostile byte streams never
//! panic and memory stays bounded; once shut down it asks nothing more; chunk boundaries do not change what the session does;
//! a dot-stuffed body comes back exactly.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use proptest::prelude::*;

use outpost_core::ids::{MessageId, TenantId};
use outpost_core::intake::dot_stuff;
use outpost_core::io::{Receipt, SubmitError, SubmitErrorKind};
use outpost_core::smtp::server::{MAX_BUFFERED_INPUT, MAX_COMMAND_LINE, MAX_PENDING_OUTPUT};
use outpost_core::smtp::{AuthedTenant, ServerAction, ServerConfig, ServerEvent, ServerSession};
use outpost_core::status::MessageStatus;
use outpost_core::time::Time;

const T0: Time = Time(1_000_000);

fn tenant() -> AuthedTenant {
    AuthedTenant {
        tenant: TenantId(1),
        domain: "example.com".into(),
    }
}

fn receipt(n: u128) -> Receipt {
    Receipt {
        id: MessageId(n),
        message_id: "m@example.com".into(),
        status: MessageStatus::Queued,
        recipients: vec![],
    }
}

// ---------- hostile streams ----------

#[derive(Clone, Debug)]
enum Step {
    Bytes(Vec<u8>),
    Connect,
    TlsUp,
    Auth(bool),
    Sender(bool),
    Message(u8),
    RateLimited,
    Timer(u64),
    Shutdown,
    Disconnect,
}

fn fragment() -> impl Strategy<Value = Vec<u8>> {
    let pieces: Vec<&'static [u8]> = vec![
        b"EHLO c\r\n",
        b"HELO c\r\n",
        b"STARTTLS\r\n",
        b"AUTH PLAIN AHUAcA==\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH LOGIN\r\n",
        b"dQ==\r\n",
        b"*\r\n",
        b"MAIL FROM:<a@example.com>\r\n",
        b"MAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME SMTPUTF8\r\n",
        b"MAIL FROM:<>\r\n",
        b"RCPT TO:<b@x.org>\r\n",
        b"RCPT TO:<\xc3\xbc@x.org>\r\n",
        b"DATA\r\n",
        b"body line\r\n",
        b"..stuffed\r\n",
        b".\r\n",
        b"\n.\n",
        b"\r\n.\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"QUIT\r\n",
        b"\x00\xff\r",
        b"\r\n",
        b"\n",
        b".",
    ];
    prop_oneof![
        6 => proptest::sample::select(pieces).prop_map(<[u8]>::to_vec),
        2 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => (any::<u8>(), 1usize..4000).prop_map(|(b, n)| vec![b; n]),
        1 => (0usize..3).prop_map(|i| vec![b'x'; [511, 998, 70_000][i]]),
    ]
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => fragment().prop_map(Step::Bytes),
        1 => Just(Step::Connect),
        1 => Just(Step::TlsUp),
        2 => any::<bool>().prop_map(Step::Auth),
        2 => any::<bool>().prop_map(Step::Sender),
        2 => (0u8..7).prop_map(Step::Message),
        1 => Just(Step::RateLimited),
        1 => (0u64..400_000).prop_map(Step::Timer),
        1 => Just(Step::Shutdown),
        1 => Just(Step::Disconnect),
    ]
}

fn config_strategy() -> impl Strategy<Value = ServerConfig> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(200u64), Just(5_000), Just(10 * 1024 * 1024)],
        1usize..5,
    )
        .prop_map(|(tls, auth, trusted, size, rcpts)| ServerConfig {
            tls_available: tls,
            auth_without_tls: auth,
            trusted_client: trusted,
            max_message_size: size,
            max_recipients: rcpts,
            ..ServerConfig::new("mx.test")
        })
}

fn message_result(k: u8) -> Result<Receipt, SubmitError> {
    let kind = match k {
        0 => return Ok(receipt(9)),
        1 => SubmitErrorKind::Invalid,
        2 => SubmitErrorKind::Forbidden,
        3 => SubmitErrorKind::TooLarge,
        4 => SubmitErrorKind::Conflict,
        _ => SubmitErrorKind::Unavailable,
    };
    Err(SubmitError::new(kind, "c", "m\r\n\x1b"))
}

/// Every reply line the session writes is well-formed: three digits, a space or a dash,
/// printable text, CRLF, and not longer than a command line.
fn check_replies(bytes: &[u8]) {
    assert!(bytes.ends_with(b"\r\n"), "{bytes:?}");
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = line.strip_suffix(b"\r").unwrap();
        assert!(
            line.len() >= 4 && line.len() <= MAX_COMMAND_LINE,
            "{line:?}"
        );
        assert!(line[..3].iter().all(u8::is_ascii_digit), "{line:?}");
        assert!(line[3] == b' ' || line[3] == b'-', "{line:?}");
        assert!(!line.iter().any(|&b| b < 0x20 || b == 0x7f), "{line:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn hostile_streams_never_panic_and_stay_bounded(
        config in config_strategy(),
        connect_first in any::<bool>(),
        steps in proptest::collection::vec(step_strategy(), 0..60),
    ) {
        let max_size = config.max_message_size as usize;
        let mut s = ServerSession::new(config, T0);
        if connect_first {
            s.on_connected(T0);
        }
        let mut now = T0;
        let mut closed = false;
        let mut shut = false;
        for step in steps {
            match step {
                Step::Bytes(b) => s.on_bytes(now, &b),
                Step::Connect => s.on_connected(now),
                Step::TlsUp => s.on_tls_established(now),
                Step::Auth(ok) => s.on_auth_result(now, ok.then(tenant)),
                Step::Sender(ok) => s.on_sender_check(now, ok.then(tenant)),
                Step::Message(k) => s.on_message_result(now, message_result(k)),
                Step::RateLimited => s.on_rate_limited(now),
                Step::Timer(ms) => {
                    now = now.plus(Duration::from_millis(ms));
                    s.on_timer(now);
                }
                Step::Shutdown => {
                    s.on_shutdown(now);
                    shut = true;
                }
                Step::Disconnect => {
                    s.on_disconnected(now);
                    closed = true;
                }
            }
            prop_assert!(s.buffered_len() <= MAX_BUFFERED_INPUT);
            prop_assert!(s.message_len() <= max_size);
            while let Some(a) = s.poll_action() {
                prop_assert!(!closed, "action after the end: {a:?}");
                match a {
                    ServerAction::Send(bytes) => {
                        prop_assert!(bytes.len() <= MAX_PENDING_OUTPUT + 1024);
                        check_replies(&bytes);
                    }
                    ServerAction::Close => closed = true,
                    ServerAction::StartTls => {}
                }
            }
            while let Some(e) = s.poll_event() {
                // Shutting down, the session hands nothing more over (no message to store).
                prop_assert!(!shut, "event after the shutdown: {e:?}");
            }
            prop_assert_eq!(closed, s.is_closed());
            if closed {
                prop_assert_eq!(s.deadline(), None);
                prop_assert_eq!(s.buffered_len(), 0);
            }
        }
    }
}

// ---------- chunking does not matter ----------

/// A valid client dialogue: EHLO, AUTH, some transactions (with pipelining, dot-stuffed
/// bodies, RSET and NOOP in between), QUIT.
fn dialogue() -> impl Strategy<Value = Vec<u8>> {
    let body_line = prop_oneof![
        3 => "[ -~]{0,80}",
        1 => "\\.[ -~]{0,10}",
        1 => Just(".".to_string()),
    ];
    let body = proptest::collection::vec(body_line, 0..8);
    let txn = (body, 1usize..4, any::<bool>(), any::<bool>());
    (any::<bool>(), proptest::collection::vec(txn, 0..4)).prop_map(|(login, txns)| {
        let mut out = b"EHLO client.test\r\n".to_vec();
        if login {
            out.extend_from_slice(b"AUTH LOGIN\r\n");
            out.extend_from_slice(
                format!("{}\r\n{}\r\n", B64.encode("u"), B64.encode("p")).as_bytes(),
            );
        } else {
            out.extend_from_slice(format!("AUTH PLAIN {}\r\n", B64.encode("\0u\0p")).as_bytes());
        }
        for (lines, rcpts, rset, noop) in txns {
            if noop {
                out.extend_from_slice(b"NOOP\r\n");
            }
            out.extend_from_slice(b"MAIL FROM:<a@example.com> BODY=8BITMIME\r\n");
            for i in 0..rcpts {
                out.extend_from_slice(format!("RCPT TO:<r{i}@x.org>\r\n").as_bytes());
            }
            if rset {
                out.extend_from_slice(b"RSET\r\n");
                continue;
            }
            out.extend_from_slice(b"DATA\r\n");
            let mut text = Vec::new();
            for l in lines {
                text.extend_from_slice(l.as_bytes());
                text.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(&dot_stuff(&text));
            out.extend_from_slice(b".\r\n");
        }
        out.extend_from_slice(b"QUIT\r\n");
        out
    })
}

/// Feeds `input` in the given chunks, answering every question at once (the same way
/// each time), and returns everything written, the actions' shape and the events.
fn run(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<&'static str>, Vec<ServerEvent>) {
    let mut s = ServerSession::new(
        ServerConfig {
            auth_without_tls: true,
            ..ServerConfig::new("mx.test")
        },
        T0,
    );
    s.on_connected(T0);
    let mut written = Vec::new();
    let mut kinds = Vec::new();
    let mut events = Vec::new();
    let mut n = 0u128;
    let mut drain = |s: &mut ServerSession,
                     written: &mut Vec<u8>,
                     kinds: &mut Vec<&'static str>,
                     events: &mut Vec<ServerEvent>| {
        loop {
            while let Some(a) = s.poll_action() {
                match a {
                    ServerAction::Send(b) => written.extend_from_slice(&b),
                    ServerAction::StartTls => kinds.push("starttls"),
                    ServerAction::Close => kinds.push("close"),
                }
            }
            let Some(e) = s.poll_event() else { break };
            match &e {
                ServerEvent::AuthRequest { .. } => s.on_auth_result(T0, Some(tenant())),
                ServerEvent::SenderCheck { .. } => s.on_sender_check(T0, Some(tenant())),
                ServerEvent::Message { .. } => {
                    n += 1;
                    s.on_message_result(T0, Ok(receipt(n)));
                }
            }
            events.push(e);
        }
    };
    drain(&mut s, &mut written, &mut kinds, &mut events);
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.clamp(start, input.len());
        s.on_bytes(T0, &input[start..cut]);
        drain(&mut s, &mut written, &mut kinds, &mut events);
        start = cut;
    }
    (written, kinds, events)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn chunking_does_not_change_the_dialogue(
        input in dialogue(),
        mut cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let whole = run(&input, &[]);
        prop_assert_eq!(whole.1.last().copied(), Some("close"));
        prop_assert!(whole.0.ends_with(b"221 2.0.0 Bye\r\n"));
        let bytewise: Vec<usize> = (1..input.len()).collect();
        prop_assert_eq!(&run(&input, &bytewise), &whole);
        let mut points: Vec<usize> = cuts.drain(..).map(|i| i.index(input.len() + 1)).collect();
        points.sort_unstable();
        prop_assert_eq!(&run(&input, &points), &whole);
    }

    #[test]
    fn dot_stuffed_bodies_come_back_exactly(
        lines in proptest::collection::vec(
            proptest::collection::vec(any::<u8>().prop_filter("no line ends or NUL", |b| *b != b'\r' && *b != b'\n' && *b != 0), 0..100),
            0..20,
        ),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let mut body = Vec::new();
        for l in &lines {
            body.extend_from_slice(l);
            body.extend_from_slice(b"\r\n");
        }
        let mut input = format!("EHLO c\r\nAUTH PLAIN {}\r\n", B64.encode("\0u\0p")).into_bytes();
        input.extend_from_slice(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n");
        input.extend_from_slice(&dot_stuff(&body));
        input.extend_from_slice(b".\r\nQUIT\r\n");
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        points.sort_unstable();
        let (_, _, events) = run(&input, &points);
        let data = events.iter().find_map(|e| match e {
            ServerEvent::Message { data, .. } => Some(data.clone()),
            _ => None,
        });
        prop_assert_eq!(data, Some(body));
    }
}
