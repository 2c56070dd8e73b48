//! The SMTP submission `ServerSession` fed arbitrary client bytes (raw, or useful command
//! fragments) interleaved with arbitrary shell answers: TLS up, AUTH and sender-check
//! results, message results, rate limits, timers, disconnects. The harness answers the
//! session's questions like a shell would (only the question asked, once), and drains
//! actions at arbitrary points so that the output back-pressure path runs too.
//!
//! Checks: no panic; at most one question outstanding; AUTH is asked only over TLS or
//! when allowed without; sender checks only for trusted clients; a `Message` carries a
//! sender in the tenant's domain, 1..=max recipients without controls, content within the
//! size limit with CRLF line endings; `250 ... queued as` is written only after the shell
//! said the message was stored (never more often than it said so); every reply line is
//! well-formed; `StartTls` only when offered and not yet active; nothing after `Close`;
//! buffers stay bounded.
#![no_main]

use std::collections::VecDeque;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use outpost_core::ids::{MessageId, TenantId};
use outpost_core::io::{Receipt, SubmitError, SubmitErrorKind};
use outpost_core::smtp::server::{MAX_BUFFERED_INPUT, MAX_COMMAND_LINE, MAX_PENDING_OUTPUT};
use outpost_core::smtp::{AuthedTenant, ServerAction, ServerConfig, ServerEvent, ServerSession};
use outpost_core::status::MessageStatus;
use outpost_core::time::Time;

const T0: Time = Time(1_800_000_000_000);
const DOMAIN: &str = "example.com";

/// Command fragments a client would send, so that inputs reach deep states quickly.
const FRAGMENTS: &[&[u8]] = &[
    b"EHLO client.test\r\n",
    b"HELO client.test\r\n",
    b"STARTTLS\r\n",
    // PLAIN "\0u\0p"
    b"AUTH PLAIN AHUAcA==\r\n",
    b"AUTH PLAIN\r\n",
    b"AHUAcA==\r\n",
    b"AUTH LOGIN\r\n",
    b"dQ==\r\n",
    b"cA==\r\n",
    b"*\r\n",
    b"MAIL FROM:<a@example.com>\r\n",
    b"MAIL FROM:<a@EXAMPLE.com> BODY=8BITMIME SMTPUTF8\r\n",
    b"MAIL FROM:<a@other.test>\r\n",
    b"MAIL FROM:<> SIZE=100\r\n",
    b"RCPT TO:<b@dest.test>\r\n",
    b"RCPT TO:<\"q b\"@dest.test>\r\n",
    b"RCPT TO:<c@d\xc3\xa9st.test>\r\n",
    b"DATA\r\n",
    b"Subject: x\r\n\r\nbody\r\n.\r\n",
    b"..leading dot\r\n",
    b"bare lf\n",
    b".\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY b\r\n",
    b"QUIT\r\n",
];

#[derive(Arbitrary, Debug)]
struct Setup {
    tls_available: bool,
    auth_without_tls: bool,
    trusted_client: bool,
    /// 0: 64 bytes, 1: 4 KiB, else the default.
    size_class: u8,
    max_recipients: u8,
    connect_first: bool,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Bytes(Vec<u8>),
    Fragment(u8),
    /// A fragment, then arbitrary bytes in the same chunk.
    FragmentThen(u8, Vec<u8>),
    Connect,
    TlsUp,
    /// Answer the outstanding question (if any): `ok` picks success; `kind` the failure.
    Answer { ok: bool, kind: u8 },
    /// Answer a question that was not asked (the session must ignore it).
    StrayAnswer { which: u8, ok: bool },
    RateLimited,
    Timer(u16),
    Disconnect,
    /// Take every action and event queued so far.
    Drain,
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

fn tenant() -> AuthedTenant {
    AuthedTenant {
        tenant: TenantId(7),
        domain: DOMAIN.into(),
    }
}

fn receipt() -> Receipt {
    Receipt {
        id: MessageId(42),
        message_id: "m@example.com".into(),
        status: MessageStatus::Queued,
        recipients: vec![],
    }
}

fn failure(kind: u8) -> SubmitError {
    let kind = match kind % 5 {
        0 => SubmitErrorKind::Invalid,
        1 => SubmitErrorKind::Forbidden,
        2 => SubmitErrorKind::TooLarge,
        3 => SubmitErrorKind::Conflict,
        _ => SubmitErrorKind::Unavailable,
    };
    // Hostile text in the error: the reply must stay one clean line.
    SubmitError::new(kind, "code\r\n", "message\r\n250 fake\x1b")
}

struct Harness {
    session: ServerSession,
    config: ServerConfig,
    now: Time,
    /// Questions asked and not answered yet (at most one).
    asked: VecDeque<ServerEvent>,
    /// `Close` was taken, or `on_disconnected` called.
    ended: bool,
    /// Successful message results given, and `queued as` replies seen.
    stored: usize,
    queued_replies: usize,
    /// `StartTls` was taken and `on_tls_established` not yet called.
    handshake: bool,
    tls_active: bool,
    /// The tenant a message may be sent for: authenticated, or named by a sender check.
    allowed: Option<AuthedTenant>,
}

impl Harness {
    fn new(setup: &Setup) -> Harness {
        let config = ServerConfig {
            tls_available: setup.tls_available,
            auth_without_tls: setup.auth_without_tls,
            trusted_client: setup.trusted_client,
            max_message_size: match setup.size_class {
                0 => 64,
                1 => 4096,
                _ => 10 * 1024 * 1024,
            },
            max_recipients: usize::from(setup.max_recipients % 4) + 1,
            ..ServerConfig::new("mx.outpost.test")
        };
        Harness {
            session: ServerSession::new(config.clone(), T0),
            config,
            now: T0,
            asked: VecDeque::new(),
            ended: false,
            stored: 0,
            queued_replies: 0,
            handshake: false,
            tls_active: false,
            allowed: None,
        }
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Bytes(b) => self.session.on_bytes(self.now, &b),
            Op::Fragment(i) => self.session.on_bytes(self.now, fragment(i)),
            Op::FragmentThen(i, rest) => {
                let mut b = fragment(i).to_vec();
                b.extend_from_slice(&rest);
                self.session.on_bytes(self.now, &b);
            }
            Op::Connect => self.session.on_connected(self.now),
            Op::TlsUp => {
                // A shell does the handshake only after taking the `StartTls` action.
                self.drain();
                // A handshake cut short by a timeout or a disconnect never completes.
                let handshake = self.handshake && !self.ended;
                self.session.on_tls_established(self.now);
                if handshake {
                    self.handshake = false;
                    self.tls_active = true;
                    self.allowed = None;
                }
                assert_eq!(self.session.tls_active(), self.tls_active, "TLS state");
            }
            Op::Answer { ok, kind } => self.answer(ok, kind),
            Op::StrayAnswer { which, ok } => self.stray(which, ok),
            Op::RateLimited => {
                // A shell answers only questions it has taken.
                self.drain();
                if matches!(
                    self.asked.front(),
                    Some(ServerEvent::Message { .. } | ServerEvent::SenderCheck { .. })
                ) {
                    self.asked.pop_front();
                }
                self.session.on_rate_limited(self.now);
            }
            Op::Timer(secs) => {
                self.now = self.now.plus(Duration::from_secs(u64::from(secs)));
                self.session.on_timer(self.now);
            }
            Op::Disconnect => {
                self.session.on_disconnected(self.now);
                self.ended = true;
                self.asked.clear();
            }
            Op::Drain => self.drain(),
        }
        self.check_state();
    }

    fn answer(&mut self, ok: bool, kind: u8) {
        self.drain();
        let Some(question) = self.asked.pop_front() else {
            return;
        };
        match question {
            ServerEvent::AuthRequest { .. } => {
                let result = ok.then(tenant);
                if let Some(t) = &result {
                    self.allowed = Some(t.clone());
                }
                self.session.on_auth_result(self.now, result);
            }
            ServerEvent::SenderCheck { domain } => {
                // A tenant of another domain than the one asked must count as none.
                let result = match (ok, kind % 2) {
                    (true, 0) => Some(tenant()),
                    (true, _) => Some(AuthedTenant {
                        tenant: TenantId(8),
                        domain: "other.test".into(),
                    }),
                    (false, _) => None,
                };
                if let Some(t) = &result
                    && t.domain == domain
                {
                    self.allowed = Some(t.clone());
                }
                self.session.on_sender_check(self.now, result);
            }
            ServerEvent::Message { .. } => {
                let result = if ok { Ok(receipt()) } else { Err(failure(kind)) };
                if ok {
                    self.stored += 1;
                }
                self.session.on_message_result(self.now, result);
            }
        }
    }

    /// An answer to a question not asked: the session must ignore it (checked by the
    /// `queued as` count and the one-question rule).
    fn stray(&mut self, which: u8, ok: bool) {
        self.drain();
        let asked_kind = self.asked.front().map(|q| match q {
            ServerEvent::AuthRequest { .. } => 0,
            ServerEvent::SenderCheck { .. } => 1,
            ServerEvent::Message { .. } => 2,
        });
        let which = which % 3;
        if asked_kind == Some(which) {
            return;
        }
        match which {
            0 => self.session.on_auth_result(self.now, ok.then(tenant)),
            1 => self.session.on_sender_check(self.now, ok.then(tenant)),
            _ => self.session.on_message_result(
                self.now,
                if ok { Ok(receipt()) } else { Err(failure(0)) },
            ),
        }
    }

    fn drain(&mut self) {
        while let Some(action) = self.session.poll_action() {
            assert!(!self.ended, "action after the end: {action:?}");
            match action {
                ServerAction::Send(bytes) => {
                    assert!(bytes.len() <= MAX_PENDING_OUTPUT + 4096, "{}", bytes.len());
                    self.check_replies(&bytes);
                }
                ServerAction::StartTls => {
                    assert!(self.config.tls_available, "STARTTLS not offered");
                    assert!(!self.tls_active, "STARTTLS twice");
                    assert!(!self.handshake, "STARTTLS while one is outstanding");
                    self.handshake = true;
                }
                ServerAction::Close => self.ended = true,
            }
        }
        while let Some(event) = self.session.poll_event() {
            assert!(!self.ended, "question after the end: {event:?}");
            self.check_event(&event);
            self.asked.push_back(event);
            assert!(self.asked.len() <= 1, "two questions outstanding");
        }
    }

    fn check_event(&self, event: &ServerEvent) {
        match event {
            ServerEvent::AuthRequest { username, password } => {
                assert!(
                    self.tls_active || self.config.auth_without_tls,
                    "AUTH asked in plaintext"
                );
                assert!(!username.is_empty() && !password.is_empty());
            }
            ServerEvent::SenderCheck { domain } => {
                assert!(self.config.trusted_client, "sender check for an untrusted client");
                assert!(domain.is_ascii() && domain == &domain.to_ascii_lowercase());
            }
            ServerEvent::Message {
                tenant,
                mail_from,
                rcpt_to,
                data,
                ..
            } => {
                assert_eq!(Some(tenant), self.allowed.as_ref(), "sent for whom?");
                let (_, from_domain) = mail_from.rsplit_once('@').expect("sender has @");
                assert!(from_domain.eq_ignore_ascii_case(&tenant.domain), "{mail_from}");
                assert!(!rcpt_to.is_empty() && rcpt_to.len() <= self.config.max_recipients);
                for a in rcpt_to.iter().chain([mail_from]) {
                    assert!(a.contains('@'), "{a:?}");
                    assert!(!a.chars().any(char::is_control), "{a:?}");
                }
                assert!(data.len() as u64 <= self.config.max_message_size);
                for (i, &b) in data.iter().enumerate() {
                    if b == b'\n' {
                        assert!(i > 0 && data[i - 1] == b'\r', "bare LF in content");
                    }
                }
            }
        }
    }

    /// Every reply line: three digits, a space or a dash, printable text, CRLF, at most
    /// a command line long. `queued as` is counted.
    fn check_replies(&mut self, bytes: &[u8]) {
        assert!(bytes.ends_with(b"\r\n"), "{bytes:?}");
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let line = line.strip_suffix(b"\r").expect("CRLF");
            assert!(line.len() >= 4 && line.len() <= MAX_COMMAND_LINE, "{line:?}");
            assert!(line[..3].iter().all(u8::is_ascii_digit), "{line:?}");
            assert!(line[3] == b' ' || line[3] == b'-', "{line:?}");
            assert!(!line.iter().any(|&b| b < 0x20 || b == 0x7f), "{line:?}");
            if line.starts_with(b"250 2.0.0 Ok: queued as") {
                self.queued_replies += 1;
            }
        }
        assert!(
            self.queued_replies <= self.stored,
            "`queued as` written {} times, stored {}",
            self.queued_replies,
            self.stored
        );
    }

    fn check_state(&self) {
        let s = &self.session;
        assert!(s.buffered_len() <= MAX_BUFFERED_INPUT);
        assert!(s.message_len() as u64 <= self.config.max_message_size);
        if s.is_closed() {
            assert_eq!(s.deadline(), None, "a timer after the end");
            assert_eq!(s.buffered_len(), 0, "input held after the end");
            assert!(!s.wants_input());
        }
        if self.ended {
            assert!(s.is_closed());
        }
        if s.authenticated().is_some() {
            assert_eq!(s.authenticated(), self.allowed.as_ref());
        }
    }
}

fn fragment(i: u8) -> &'static [u8] {
    FRAGMENTS[usize::from(i) % FRAGMENTS.len()]
}

fuzz_target!(|input: Input| {
    let mut h = Harness::new(&input.setup);
    if input.setup.connect_first {
        h.session.on_connected(T0);
    }
    for op in input.ops.into_iter().take(400) {
        h.step(op);
    }
    h.drain();
    h.check_state();
});
