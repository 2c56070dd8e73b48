//! A `ClientSession` driven through connect, then arbitrary server bytes (raw, or
//! well-formed answers to the commands the session actually sent) interleaved with
//! arbitrary engine calls: start_transaction, TLS results, timers, quit, disconnect.
//!
//! Checks: no panic; nothing (no action, no event) after `Close`; exactly one `Close`
//! once finished; `Failed`/`Closed` are last; `start_transaction` accepts exactly when the
//! session is idle and the envelope is usable; every `TransactionDone` answers a started
//! transaction with one rcpt slot per recipient; `SendBody` only inside a transaction
//! whose MAIL and some RCPT were accepted; commands written are well-formed CRLF lines of
//! known verbs, never carrying remote text; the buffer stays bounded.
#![no_main]

use std::collections::VecDeque;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use outpost_core::config::SmtpTimeouts;
use outpost_core::smtp::command::is_safe_address;
use outpost_core::smtp::reply::{MAX_LINE_BYTES, MAX_REPLY_BYTES};
use outpost_core::smtp::{
    ClientSession, Envelope, SessionAction, SessionConfig, SessionEvent, TlsMode,
};
use outpost_core::time::Time;

const T0: Time = Time(1_800_000_000_000);

#[derive(Arbitrary, Debug)]
enum Op {
    /// Raw bytes from the server.
    Bytes(Vec<u8>),
    /// A reply from the table, as bytes.
    Canned(u8),
    /// Answer the oldest command the session is waiting on, with a reply of this flavour.
    Answer(u8),
    /// Answer everything outstanding at once (one read).
    AnswerAll(u8),
    Start {
        rcpts: u8,
        size: u32,
        smtputf8: bool,
        eight_bit: bool,
        /// Replace one address with this (possibly unusable) string.
        odd: Option<(u8, String)>,
    },
    TlsUp(bool),
    TlsFailed(String),
    Timer(u16),
    Quit,
    Disconnect(Option<String>),
}

#[derive(Arbitrary, Debug)]
struct In {
    tls: u8,
    ehlo_name: String,
    /// EHLO capability bits for `Answer`.
    caps: u8,
    ops: Vec<Op>,
}

const CANNED: &[&[u8]] = &[
    b"220 mx.example ESMTP\r\n",
    b"250 2.1.0 ok\r\n",
    b"250-mx.example\r\n250-PIPELINING\r\n250-STARTTLS\r\n250-SIZE 1000\r\n250-SMTPUTF8\r\n250 8BITMIME\r\n",
    b"354 go ahead\r\n",
    b"421 4.3.2 shutting down\r\n",
    b"450 4.2.1 try later\r\n",
    b"550 5.1.1 user unknown\r\n",
    b"221 2.0.0 bye\r\n",
    b"220 2.0.0 ready to start TLS\r\n",
    b"554-5.7.1 multi\r\n554 5.7.1 line\r\n",
    b"250-a\r\n251 b\r\n",
    b"hello\r\n",
    b"250 ok\n",
    b"2",
    b"50 ok\r\n",
];

/// What the session sent and awaits, as the server sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Mail,
    Rcpt,
    Data,
    Body,
    Dot,
    Rset,
    Quit,
}

fn reply_for(cmd: Sent, flavour: u8, caps: u8) -> Vec<u8> {
    let kind = flavour % 8;
    let ok: Vec<u8> = match cmd {
        Sent::Greeting => b"220 mx.example ESMTP\r\n".to_vec(),
        Sent::Ehlo => {
            let mut v = b"250-mx.example greets you\r\n".to_vec();
            let names: [&[u8]; 6] = [
                b"PIPELINING",
                b"STARTTLS",
                b"SIZE 5000",
                b"SMTPUTF8",
                b"8BITMIME",
                b"SIZE",
            ];
            for (i, n) in names.iter().enumerate() {
                if caps & (1 << i) != 0 {
                    v.extend_from_slice(b"250-");
                    v.extend_from_slice(n);
                    v.extend_from_slice(b"\r\n");
                }
            }
            v.extend_from_slice(b"250 HELP\r\n");
            v
        }
        Sent::StartTls => b"220 2.0.0 go ahead\r\n".to_vec(),
        Sent::Data => b"354 end with .\r\n".to_vec(),
        Sent::Quit => b"221 bye\r\n".to_vec(),
        _ => b"250 2.0.0 ok\r\n".to_vec(),
    };
    match kind {
        0..=3 => ok,
        4 => b"450 4.2.0 later\r\n".to_vec(),
        5 => b"550 5.1.1 no such user\r\n".to_vec(),
        6 => b"421 4.4.2 bye\r\n".to_vec(),
        _ => b"354 unexpected\r\n".to_vec(),
    }
}

struct Harness {
    s: ClientSession,
    now: Time,
    closed: bool,
    finished_event: bool,
    /// Commands awaiting a reply, as parsed from what was sent.
    awaiting: VecDeque<Sent>,
    in_txn: bool,
    txn_rcpts: usize,
    ready_seen: bool,
}

impl Harness {
    fn drain(&mut self) {
        while let Some(a) = self.s.poll_action() {
            assert!(!self.closed, "action after Close: {a:?}");
            match a {
                SessionAction::Send(bytes) => self.sent(&bytes),
                SessionAction::SendBody => {
                    assert!(self.in_txn, "SendBody outside a transaction");
                    self.awaiting.push_back(Sent::Body);
                }
                SessionAction::StartTls => {}
                SessionAction::Close => self.closed = true,
            }
        }
        while let Some(e) = self.s.poll_event() {
            assert!(!self.finished_event, "event after Failed/Closed: {e:?}");
            match e {
                SessionEvent::Ready => {
                    assert!(!self.in_txn, "Ready inside a transaction");
                    self.ready_seen = true;
                }
                SessionEvent::TransactionDone(report) => {
                    assert!(self.in_txn, "TransactionDone without a transaction");
                    assert_eq!(report.rcpt.len(), self.txn_rcpts);
                    self.in_txn = false;
                    for r in report
                        .rcpt
                        .iter()
                        .flatten()
                        .chain(report.mail.iter())
                        .chain(report.data.iter())
                        .chain(report.end.iter())
                    {
                        assert!(r.text.len() <= 1024 && !r.text.chars().any(char::is_control));
                    }
                }
                SessionEvent::Failed { partial, .. } => {
                    self.finished_event = true;
                    if let Some(p) = partial {
                        assert!(self.in_txn, "partial report without a transaction");
                        assert_eq!(p.rcpt.len(), self.txn_rcpts);
                    }
                    self.in_txn = false;
                }
                SessionEvent::Closed => {
                    self.finished_event = true;
                    self.in_txn = false;
                }
            }
        }
        assert_eq!(
            self.closed,
            self.s.is_finished(),
            "Close action iff finished"
        );
        assert_eq!(
            self.closed, self.finished_event,
            "Close comes with Failed/Closed"
        );
        assert!(self.s.buffered_len() <= MAX_REPLY_BYTES + MAX_LINE_BYTES);
        if self.closed {
            assert!(self.s.deadline().is_none());
        }
    }

    fn sent(&mut self, bytes: &[u8]) {
        assert!(bytes.ends_with(b"\r\n"), "command without CRLF: {bytes:?}");
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r\n").unwrap_or_else(|| {
                panic!(
                    "line without CRLF in a command: {:?}",
                    String::from_utf8_lossy(bytes)
                )
            });
            assert!(!line.contains(&b'\r'), "bare CR in a command");
            assert!(line.len() <= 1000, "command line too long");
            let s = String::from_utf8_lossy(line);
            let cmd = if s.starts_with("EHLO ") {
                Sent::Ehlo
            } else if s.starts_with("HELO ") {
                Sent::Helo
            } else if s == "STARTTLS" {
                Sent::StartTls
            } else if s.starts_with("MAIL FROM:<") {
                assert!(self.in_txn);
                Sent::Mail
            } else if s.starts_with("RCPT TO:<") {
                assert!(self.in_txn);
                Sent::Rcpt
            } else if s == "DATA" {
                Sent::Data
            } else if s == "." {
                Sent::Dot
            } else if s == "RSET" {
                Sent::Rset
            } else if s == "QUIT" {
                Sent::Quit
            } else {
                panic!("unknown command {s:?}");
            };
            if matches!(cmd, Sent::Ehlo | Sent::Helo) {
                let name = &s[5..];
                assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()));
            }
            self.awaiting.push_back(cmd);
        }
    }
}

fuzz_target!(|input: In| {
    let tls =
        [TlsMode::Opportunistic, TlsMode::Required, TlsMode::Disabled][usize::from(input.tls) % 3];
    let mut h = Harness {
        s: ClientSession::new(SessionConfig {
            ehlo_name: input.ehlo_name.clone(),
            tls,
            timeouts: SmtpTimeouts::default(),
        }),
        now: T0,
        closed: false,
        finished_event: false,
        awaiting: VecDeque::from([Sent::Greeting]),
        in_txn: false,
        txn_rcpts: 0,
        ready_seen: false,
    };
    h.s.on_connected(h.now);
    h.drain();
    assert!(h.s.deadline().is_some(), "greeting deadline armed");
    for op in input.ops.iter().take(256) {
        match op {
            Op::Bytes(b) => h.s.on_bytes(h.now, b),
            Op::Canned(i) => h.s.on_bytes(h.now, CANNED[usize::from(*i) % CANNED.len()]),
            Op::Answer(f) => {
                if let Some(cmd) = h.awaiting.pop_front() {
                    let r = reply_for(cmd, *f, input.caps);
                    h.s.on_bytes(h.now, &r);
                }
            }
            Op::AnswerAll(f) => {
                let mut all = Vec::new();
                for (i, cmd) in std::mem::take(&mut h.awaiting).into_iter().enumerate() {
                    all.extend(reply_for(cmd, f.wrapping_add(i as u8 * 3), input.caps));
                }
                h.s.on_bytes(h.now, &all);
            }
            Op::Start {
                rcpts,
                size,
                smtputf8,
                eight_bit,
                odd,
            } => {
                let mut env = Envelope {
                    mail_from: "bounce@outpost.example".into(),
                    rcpt_to: (0..usize::from(*rcpts % 6))
                        .map(|i| format!("r{i}@x.example"))
                        .collect(),
                    size: u64::from(*size),
                    smtputf8: *smtputf8,
                    eight_bit: *eight_bit,
                };
                if let Some((at, s)) = odd {
                    let n = env.rcpt_to.len() + 1;
                    match usize::from(*at) % n {
                        0 => env.mail_from = s.clone(),
                        i => env.rcpt_to[i - 1] = s.clone(),
                    }
                }
                let usable = !env.rcpt_to.is_empty()
                    && is_safe_address(&env.mail_from)
                    && env.rcpt_to.iter().all(|r| is_safe_address(r));
                let idle = h.s.is_idle();
                let n = env.rcpt_to.len();
                let started = h.s.start_transaction(h.now, env);
                assert_eq!(started, idle && usable, "idle {idle} usable {usable}");
                if started {
                    assert!(!h.in_txn);
                    h.in_txn = true;
                    h.txn_rcpts = n;
                }
            }
            Op::TlsUp(v) => h.s.on_tls_established(h.now, *v),
            Op::TlsFailed(e) => h.s.on_tls_failed(h.now, e),
            Op::Timer(secs) => {
                h.now = h.now.plus(Duration::from_secs(u64::from(*secs)));
                h.s.on_timer(h.now);
            }
            Op::Quit => h.s.quit(h.now),
            Op::Disconnect(e) => h.s.on_disconnected(h.now, e.as_deref()),
        }
        h.drain();
        if !h.s.is_idle() && !h.closed {
            assert!(h.s.deadline().is_some(), "waiting without a deadline");
        }
    }
    // A timer far in the future ends any session that is waiting on the server.
    if !h.closed && !h.s.is_idle() {
        h.now = h.now.plus(Duration::from_secs(3600));
        h.s.on_timer(h.now);
        h.drain();
        assert!(h.closed, "a waiting session must time out");
    }
});
