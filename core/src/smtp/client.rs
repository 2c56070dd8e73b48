//! The SMTP client session: a sans-IO state machine over raw bytes (RFC 5321, 3207 STARTTLS,
//! 2920 PIPELINING, 1870 SIZE, 6152 8BITMIME, 6531 SMTPUTF8).
//!
//! The engine feeds it facts (`on_connected`, `on_bytes`, `on_tls_established`,
//! `on_tls_failed`, `on_disconnected`, `on_timer`) and requests (`start_transaction`,
//! `quit`), then drains [`SessionAction`]s (what to do on the connection) with
//! `poll_action` and [`SessionEvent`]s (what happened) with `poll_event`, and arms a timer
//! for `deadline()`.
//!
//! # Sequence
//!
//! * Connect: wait for the 220 greeting (4xx/5xx: `Failed{Greeting, Reply}`), `EHLO`
//!   (5xx: `HELO`; 4xx: `Failed{Ehlo, Reply}`), then STARTTLS when offered and the mode
//!   allows: on 220 the action `StartTls`; after `on_tls_established` the capabilities are
//!   forgotten and EHLO is sent again. Then the event `Ready`.
//! * Transaction (`start_transaction`): `MAIL FROM`, one `RCPT TO` per recipient, `DATA`.
//!   With PIPELINING all of them go out in one `Send` (DATA last, RFC 2920), otherwise one
//!   at a time (MAIL refused: no RCPT; no recipient accepted: no DATA). With 354 and at
//!   least one recipient accepted: the action `SendBody`; the final reply ends the
//!   transaction: `TransactionDone`, then `Ready`. A transaction that ends without the
//!   body (MAIL refused, no recipient accepted, DATA refused) emits `TransactionDone`, then
//!   sends `RSET` and emits `Ready` on its 250. When DATA was pipelined and got 354 with no
//!   recipient accepted, a lone `.\r\n` is sent first and its reply recorded in
//!   `TransactionReport::end`.
//! * Refusals decided before sending anything: a message needing SMTPUTF8 on a server
//!   without it, or larger than the server's advertised SIZE, does not fail the session
//!   (it is still fine for other messages). The transaction ends at once with
//!   `TransactionDone` whose `mail` is a synthesized reply, `555 5.6.7 SMTPUTF8 required
//!   but not offered by the server` or `552 5.3.4 message size exceeds ...`, every `rcpt`
//!   `None`, then `Ready`. Nothing is sent.
//! * Any 421, an unexpected close, a timeout, a protocol violation: the event `Failed`
//!   (with the partial report when a transaction was in progress), then the action
//!   `Close`, then nothing more, whatever arrives.
//! * `quit()` when idle: `QUIT`; on any reply, a close, or the quit timeout: the event
//!   `Closed`, then the action `Close`.
//!
//! # Defences against hostile servers
//!
//! Reply framing has hard limits (see [`super::reply`]); memory stays bounded whatever
//! arrives. A reply with no command outstanding, or one whose first byte arrived before
//! its command was handed to the engine (a server answering ahead, or plaintext injected
//! after the STARTTLS 220), is a protocol failure. Commands never carry remote text, and
//! addresses with controls, spaces or angle brackets are refused by `start_transaction`.
use std::collections::VecDeque;
use std::time::Duration;

use crate::config::SmtpTimeouts;
use crate::sanitize;
use crate::time::Time;

use super::capabilities::Capabilities;
use super::command::{self, MailParams};
use super::reply::{RawReply, ReplyReader};
use super::{Reply, Stage};

/// How STARTTLS is used on this connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// STARTTLS whenever offered (RFC 7435); go on in plaintext when not offered.
    Opportunistic,
    /// STARTTLS must be offered and succeed with a verified certificate, else fail with
    /// `SessionError::TlsRequired`.
    Required,
    /// Never STARTTLS (a retry in plaintext after a failed handshake).
    Disabled,
}

#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Our name in EHLO/HELO.
    pub ehlo_name: String,
    pub tls: TlsMode,
    pub timeouts: SmtpTimeouts,
}

/// One transaction's envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// Wire size of the message (for SIZE=).
    pub size: u64,
    /// Needs SMTPUTF8 (sent as a MAIL parameter). If the server lacks it the transaction
    /// ends at once with a synthesized `555 5.6.7` MAIL reply (see the module docs).
    pub smtputf8: bool,
    /// Has 8-bit content (BODY=8BITMIME when offered).
    pub eight_bit: bool,
}

/// What the session asks the engine to do on the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionAction {
    Send(Vec<u8>),
    /// Send the message body (the spool file, dot-stuffed) and the final `.\r\n`.
    SendBody,
    /// Start TLS; report `on_tls_established` / `on_tls_failed`.
    StartTls,
    /// Close the connection.
    Close,
}

/// What happened in the session, for the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// Greeting, EHLO and (if any) STARTTLS are done, or the last transaction finished:
    /// the session is idle and takes a transaction.
    Ready,
    /// A transaction ended (whether or not anything was accepted).
    TransactionDone(TransactionReport),
    /// The session is dead (the engine closes the connection). `partial` holds what
    /// the interrupted transaction had learned, if one was in progress.
    Failed {
        stage: Stage,
        error: SessionError,
        partial: Option<TransactionReport>,
    },
    /// QUIT completed (or the peer closed after QUIT).
    Closed,
}

/// Everything the server said about one transaction. Missing entries were never received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransactionReport {
    pub mail: Option<Reply>,
    /// One entry per `Envelope::rcpt_to`, in order.
    pub rcpt: Vec<Option<Reply>>,
    /// The reply to DATA (354 expected).
    pub data: Option<Reply>,
    /// The reply after the body.
    pub end: Option<Reply>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// A negative reply that ends the session (greeting 4xx/5xx, 421 anywhere, EHLO and
    /// HELO refused).
    Reply(Reply),
    /// A stage timeout passed.
    Timeout,
    /// Garbage, an overlong line or reply, or a reply out of sequence. Sanitized text.
    Protocol(String),
    /// The peer closed the connection (or it broke).
    Closed(Option<String>),
    /// The TLS handshake failed.
    TlsFailed(String),
    /// `TlsMode::Required` and STARTTLS not offered, refused, or not verified.
    TlsRequired(String),
    /// The message needs an extension the server lacks (SMTPUTF8) or exceeds its SIZE.
    /// Not emitted by the session: such a transaction ends with a synthesized reply in
    /// `TransactionDone` and the session stays usable. Kept for the engine's own use.
    NotSupported(String),
}

/// A command whose reply is awaited (the greeting counts as one).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Cmd {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Mail,
    Rcpt(usize),
    Data,
    /// The body and its final `.`: the reply that ends the transaction.
    EndOfData,
    /// A lone `.` after a 354 with no recipient accepted.
    Dot,
    Rset,
    Quit,
}

impl Cmd {
    fn stage(self) -> Stage {
        match self {
            Cmd::Greeting => Stage::Greeting,
            Cmd::Ehlo | Cmd::Helo => Stage::Ehlo,
            Cmd::StartTls => Stage::Tls,
            Cmd::Mail | Cmd::Rset | Cmd::Quit => Stage::Mail,
            Cmd::Rcpt(_) => Stage::Rcpt,
            Cmd::Data => Stage::Data,
            Cmd::EndOfData | Cmd::Dot => Stage::EndOfData,
        }
    }

    fn timeout(self, t: &SmtpTimeouts) -> Duration {
        match self {
            Cmd::Greeting => t.greeting,
            Cmd::Ehlo | Cmd::Helo => t.ehlo,
            Cmd::StartTls => t.starttls,
            Cmd::Mail => t.mail,
            Cmd::Rcpt(_) => t.rcpt,
            Cmd::Data => t.data_init,
            Cmd::EndOfData | Cmd::Dot => t.data_end,
            Cmd::Rset => t.rset,
            Cmd::Quit => t.quit,
        }
    }
}

#[derive(Copy, Clone, Debug)]
struct Pending {
    cmd: Cmd,
    /// The `on_bytes` epoch in which the command was handed to the engine; a reply must
    /// start arriving in a later one.
    sent_epoch: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for replies to `pending` (greeting, negotiation, transaction, RSET).
    Active,
    /// `StartTls` handed out; waiting for `on_tls_established` / `on_tls_failed`.
    TlsHandshake,
    /// Takes a transaction.
    Idle,
    /// QUIT sent.
    Quitting,
    /// `Failed` or `Closed` emitted; everything is ignored.
    Done,
}

#[derive(Debug)]
struct Transaction {
    envelope: Envelope,
    report: TransactionReport,
    pipelined: bool,
}

impl Transaction {
    fn mail_accepted(&self) -> bool {
        self.report.mail.as_ref().is_some_and(|r| r.class() == 2)
    }
    fn any_rcpt_accepted(&self) -> bool {
        self.report
            .rcpt
            .iter()
            .any(|r| r.as_ref().is_some_and(|r| r.class() == 2))
    }
}

pub struct ClientSession {
    config: SessionConfig,
    reader: ReplyReader,
    phase: Phase,
    pending: VecDeque<Pending>,
    deadline: Option<Time>,
    /// Incremented on every `on_bytes` call.
    epoch: u64,
    /// The epoch in which the reply in progress in `reader` started.
    partial_epoch: u64,
    caps: Capabilities,
    greeting: Option<Reply>,
    tls: Option<bool>,
    txn: Option<Transaction>,
    actions: VecDeque<SessionAction>,
    events: VecDeque<SessionEvent>,
}

impl ClientSession {
    pub fn new(config: SessionConfig) -> ClientSession {
        ClientSession {
            config,
            reader: ReplyReader::new(),
            phase: Phase::Active,
            pending: VecDeque::from([Pending {
                cmd: Cmd::Greeting,
                sent_epoch: 0,
            }]),
            deadline: None,
            epoch: 0,
            partial_epoch: 0,
            caps: Capabilities::default(),
            greeting: None,
            tls: None,
            txn: None,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The TCP connection is up: wait for the greeting.
    pub fn on_connected(&mut self, now: Time) {
        if self.phase == Phase::Active
            && self.deadline.is_none()
            && self.front() == Some(Cmd::Greeting)
        {
            self.arm(now);
        }
    }

    pub fn on_bytes(&mut self, now: Time, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.epoch = self.epoch.wrapping_add(1);
        match self.phase {
            Phase::Done => return,
            Phase::TlsHandshake => {
                self.fail(
                    Stage::Tls,
                    SessionError::Protocol("plaintext data during the TLS handshake".into()),
                );
                return;
            }
            Phase::Active | Phase::Idle | Phase::Quitting => {}
        }
        let mut rest = bytes;
        while self.phase != Phase::Done && !rest.is_empty() {
            let reply_epoch = if self.reader.buffered() == 0 {
                self.epoch
            } else {
                self.partial_epoch
            };
            match self.reader.read(&mut rest) {
                Ok(None) => self.partial_epoch = reply_epoch,
                Ok(Some(raw)) => self.on_reply(now, raw, reply_epoch, !rest.is_empty()),
                Err(e) => {
                    if self.phase == Phase::Quitting {
                        self.closed();
                    } else {
                        self.fail(self.stage(), SessionError::Protocol(e.0));
                    }
                }
            }
        }
    }

    pub fn on_tls_established(&mut self, now: Time, verified: bool) {
        match self.phase {
            Phase::Done => {}
            Phase::TlsHandshake => {
                self.tls = Some(verified);
                if self.config.tls == TlsMode::Required && !verified {
                    self.fail(
                        Stage::Tls,
                        SessionError::TlsRequired(
                            "TLS is required but the server certificate did not verify".into(),
                        ),
                    );
                    return;
                }
                // RFC 3207 4.2: forget everything learned before TLS.
                self.caps = Capabilities::default();
                self.reader.clear();
                self.phase = Phase::Active;
                self.send(command::ehlo(&self.config.ehlo_name), &[Cmd::Ehlo]);
                self.arm(now);
            }
            _ => self.fail(
                self.stage(),
                SessionError::Protocol("TLS established without STARTTLS".into()),
            ),
        }
    }

    pub fn on_tls_failed(&mut self, _now: Time, error: &str) {
        if self.phase != Phase::Done {
            self.fail(
                Stage::Tls,
                SessionError::TlsFailed(sanitize::cut(error, sanitize::MAX_REMOTE_TEXT)),
            );
        }
    }

    /// The peer closed or the connection broke.
    pub fn on_disconnected(&mut self, _now: Time, error: Option<&str>) {
        match self.phase {
            Phase::Done => {}
            Phase::Quitting => self.closed(),
            _ => self.fail(
                self.stage(),
                SessionError::Closed(error.map(|e| sanitize::cut(e, sanitize::MAX_REMOTE_TEXT))),
            ),
        }
    }

    /// Time passed; fails the session if its stage deadline is reached.
    pub fn on_timer(&mut self, now: Time) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if now < deadline {
            return;
        }
        match self.phase {
            Phase::Done | Phase::Idle => {}
            Phase::Quitting => self.closed(),
            Phase::Active | Phase::TlsHandshake => self.fail(self.stage(), SessionError::Timeout),
        }
    }

    /// Start a transaction; only valid after `Ready`. Returns false (and does nothing) if
    /// not idle, if the envelope has no recipient, or if an address cannot be written in a
    /// command (controls, spaces, angle brackets).
    ///
    /// A message needing SMTPUTF8 the server lacks, or larger than its SIZE limit, returns
    /// true and ends at once: `TransactionDone` with a synthesized MAIL reply (`555 5.6.7`
    /// or `552 5.3.4`), then `Ready`; nothing is sent.
    pub fn start_transaction(&mut self, now: Time, envelope: Envelope) -> bool {
        if self.phase != Phase::Idle
            || envelope.rcpt_to.is_empty()
            || !command::is_safe_address(&envelope.mail_from)
            || !envelope.rcpt_to.iter().all(|r| command::is_safe_address(r))
        {
            return false;
        }
        let mut report = TransactionReport {
            rcpt: vec![None; envelope.rcpt_to.len()],
            ..TransactionReport::default()
        };
        let refusal = if envelope.smtputf8 && !self.caps.smtputf8 {
            Some(Reply::synthesized(
                555,
                Some("5.6.7"),
                "SMTPUTF8 required but not offered by the server",
            ))
        } else {
            match self.caps.size {
                Some(limit) if limit > 0 && envelope.size > limit => Some(Reply::synthesized(
                    552,
                    Some("5.3.4"),
                    &format!(
                        "message size {} exceeds the server's limit of {limit} bytes",
                        envelope.size
                    ),
                )),
                _ => None,
            }
        };
        if let Some(reply) = refusal {
            report.mail = Some(reply);
            self.events.push_back(SessionEvent::TransactionDone(report));
            self.events.push_back(SessionEvent::Ready);
            return true;
        }
        let params = MailParams {
            size: self.caps.size.map(|_| envelope.size),
            eight_bit_mime: envelope.eight_bit && self.caps.eight_bit_mime,
            smtputf8: envelope.smtputf8,
        };
        let mail = command::mail_from(&envelope.mail_from, params);
        let pipelined = self.caps.pipelining;
        if pipelined {
            let mut group = mail;
            let mut cmds = vec![Cmd::Mail];
            for (i, rcpt) in envelope.rcpt_to.iter().enumerate() {
                group.extend_from_slice(&command::rcpt_to(rcpt));
                cmds.push(Cmd::Rcpt(i));
            }
            group.extend_from_slice(command::DATA);
            cmds.push(Cmd::Data);
            self.send(group, &cmds);
        } else {
            self.send(mail, &[Cmd::Mail]);
        }
        self.txn = Some(Transaction {
            envelope,
            report,
            pipelined,
        });
        self.phase = Phase::Active;
        self.arm(now);
        true
    }

    /// Send QUIT (when idle) and close: `Closed` and `Close` follow the reply, a close or
    /// the quit timeout. Called in any other state, gives up at once: `Closed` and `Close`
    /// without QUIT (an interrupted transaction's replies are not reported). Nothing after
    /// `Failed` or `Closed`.
    pub fn quit(&mut self, now: Time) {
        match self.phase {
            Phase::Idle => {
                self.send(command::QUIT.to_vec(), &[Cmd::Quit]);
                self.phase = Phase::Quitting;
                self.deadline = Some(now.plus(self.config.timeouts.quit));
            }
            Phase::Quitting | Phase::Done => {}
            Phase::Active | Phase::TlsHandshake => self.closed(),
        }
    }

    /// When `on_timer` should be called: the current stage's deadline. `None` when idle
    /// (the engine keeps its own idle timer), before `on_connected`, and when finished.
    pub fn deadline(&self) -> Option<Time> {
        self.deadline
    }

    pub fn poll_action(&mut self) -> Option<SessionAction> {
        self.actions.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Idle
    }

    /// `Failed` or `Closed` was emitted; the session does nothing more.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Done
    }

    /// TLS is up on this session; `Some(verified)`.
    pub fn tls(&self) -> Option<bool> {
        self.tls
    }

    /// What the server's last EHLO offered (all false after HELO, and after STARTTLS until
    /// the new EHLO reply).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// The server's 220 greeting.
    pub fn greeting(&self) -> Option<&Reply> {
        self.greeting.as_ref()
    }

    /// Bytes buffered from the server (an incomplete reply); bounded by
    /// `reply::MAX_REPLY_BYTES + reply::MAX_LINE_BYTES`.
    pub fn buffered_len(&self) -> usize {
        self.reader.buffered()
    }

    // ---- internals ----

    fn front(&self) -> Option<Cmd> {
        self.pending.front().map(|p| p.cmd)
    }

    /// The stage a failure now is reported in.
    fn stage(&self) -> Stage {
        match self.phase {
            Phase::TlsHandshake => Stage::Tls,
            _ => self.front().map_or(Stage::Mail, Cmd::stage),
        }
    }

    /// Sets the deadline for what is awaited now.
    fn arm(&mut self, now: Time) {
        self.deadline = match self.phase {
            Phase::Active => self
                .front()
                .map(|c| now.plus(c.timeout(&self.config.timeouts))),
            Phase::TlsHandshake => Some(now.plus(self.config.timeouts.starttls)),
            Phase::Quitting => self.deadline,
            Phase::Idle | Phase::Done => None,
        };
    }

    fn send(&mut self, bytes: Vec<u8>, cmds: &[Cmd]) {
        self.actions.push_back(SessionAction::Send(bytes));
        for &cmd in cmds {
            self.pending.push_back(Pending {
                cmd,
                sent_epoch: self.epoch,
            });
        }
    }

    fn fail(&mut self, stage: Stage, error: SessionError) {
        if self.phase == Phase::Done {
            return;
        }
        let partial = self.txn.take().map(|t| t.report);
        self.events.push_back(SessionEvent::Failed {
            stage,
            error,
            partial,
        });
        self.finish();
    }

    fn closed(&mut self) {
        if self.phase == Phase::Done {
            return;
        }
        self.txn = None;
        self.events.push_back(SessionEvent::Closed);
        self.finish();
    }

    fn finish(&mut self) {
        self.actions.push_back(SessionAction::Close);
        self.phase = Phase::Done;
        self.pending.clear();
        self.reader.clear();
        self.deadline = None;
    }

    fn ready(&mut self) {
        self.phase = Phase::Idle;
        self.deadline = None;
        self.events.push_back(SessionEvent::Ready);
    }

    fn on_reply(&mut self, now: Time, raw: RawReply, reply_epoch: u64, trailing: bool) {
        let expected = self
            .pending
            .front()
            .filter(|p| reply_epoch > p.sent_epoch)
            .map(|p| p.cmd);
        let Some(cmd) = expected else {
            let stage = self.stage();
            if self.phase == Phase::Quitting {
                self.closed();
            } else if raw.code == 421 {
                self.fail(stage, SessionError::Reply(raw.reply()));
            } else {
                let why = if self.pending.is_empty() {
                    "with no command outstanding"
                } else {
                    "before its command was sent"
                };
                self.fail(
                    stage,
                    SessionError::Protocol(format!("reply {} received {why}", raw.code)),
                );
            }
            return;
        };
        self.pending.pop_front();
        let reply = raw.reply();
        let code = reply.code;
        let class = reply.class();
        match cmd {
            Cmd::Greeting => {
                if code == 220 {
                    self.greeting = Some(reply);
                    self.send(command::ehlo(&self.config.ehlo_name), &[Cmd::Ehlo]);
                } else if class == 4 || class == 5 {
                    self.fail(Stage::Greeting, SessionError::Reply(reply));
                } else {
                    self.fail(Stage::Greeting, unexpected("greeting", &reply));
                }
            }
            Cmd::Ehlo => match class {
                2 => {
                    self.caps = Capabilities::from_ehlo(&raw);
                    self.after_ehlo();
                }
                5 => self.send(command::helo(&self.config.ehlo_name), &[Cmd::Helo]),
                4 => self.fail(Stage::Ehlo, SessionError::Reply(reply)),
                _ => self.fail(Stage::Ehlo, unexpected("EHLO", &reply)),
            },
            Cmd::Helo => match class {
                2 => {
                    self.caps = Capabilities {
                        host: reply
                            .text
                            .split(' ')
                            .next()
                            .map(|h| sanitize::cut(h, 255))
                            .unwrap_or_default(),
                        ..Capabilities::default()
                    };
                    self.after_ehlo();
                }
                4 | 5 => self.fail(Stage::Ehlo, SessionError::Reply(reply)),
                _ => self.fail(Stage::Ehlo, unexpected("HELO", &reply)),
            },
            Cmd::StartTls => {
                if code == 220 {
                    if trailing {
                        // RFC 3207 5: nothing may follow the 220 in plaintext (an
                        // injection would be read as if it came over TLS).
                        self.fail(
                            Stage::Tls,
                            SessionError::Protocol("data after the STARTTLS reply".into()),
                        );
                    } else {
                        self.phase = Phase::TlsHandshake;
                        self.actions.push_back(SessionAction::StartTls);
                    }
                } else if code == 421 {
                    self.fail(Stage::Tls, SessionError::Reply(reply));
                } else if class == 4 || class == 5 {
                    if self.config.tls == TlsMode::Required {
                        self.fail(
                            Stage::Tls,
                            SessionError::TlsRequired(format!(
                                "STARTTLS refused: {}",
                                reply.display()
                            )),
                        );
                    } else {
                        // Opportunistic: go on in plaintext with what EHLO offered.
                        self.ready();
                    }
                } else {
                    self.fail(Stage::Tls, unexpected("STARTTLS", &reply));
                }
            }
            Cmd::Mail | Cmd::Rcpt(_) | Cmd::Data | Cmd::EndOfData | Cmd::Dot => {
                self.on_transaction_reply(cmd, reply);
            }
            Cmd::Rset => {
                if class == 2 {
                    self.ready();
                } else {
                    self.fail(Stage::Mail, SessionError::Reply(reply));
                }
            }
            Cmd::Quit => self.closed(),
        }
        self.arm(now);
    }

    /// Capabilities are known: STARTTLS, or `Ready`.
    fn after_ehlo(&mut self) {
        let mode = self.config.tls;
        if self.tls.is_none() && mode != TlsMode::Disabled && self.caps.starttls {
            self.send(command::STARTTLS.to_vec(), &[Cmd::StartTls]);
        } else if self.tls.is_none() && mode == TlsMode::Required {
            self.fail(
                Stage::Tls,
                SessionError::TlsRequired("TLS is required but STARTTLS is not offered".into()),
            );
        } else {
            self.ready();
        }
    }

    fn on_transaction_reply(&mut self, cmd: Cmd, reply: Reply) {
        let Some(txn) = self.txn.as_mut() else {
            // Unreachable: these commands are only sent with a transaction.
            self.fail(
                cmd.stage(),
                SessionError::Protocol("transaction reply without a transaction".into()),
            );
            return;
        };
        let is_421 = reply.code == 421;
        let class = reply.class();
        let failure = is_421.then(|| SessionError::Reply(reply.clone()));
        match cmd {
            Cmd::Mail => txn.report.mail = Some(reply),
            Cmd::Rcpt(i) => {
                if let Some(slot) = txn.report.rcpt.get_mut(i) {
                    *slot = Some(reply);
                }
            }
            Cmd::Data => txn.report.data = Some(reply),
            _ => txn.report.end = Some(reply),
        }
        if let Some(error) = failure {
            self.fail(cmd.stage(), error);
            return;
        }
        let pipelined = txn.pipelined;
        match cmd {
            Cmd::Mail if pipelined => {}
            Cmd::Mail => {
                if class == 2 {
                    let first = txn.envelope.rcpt_to.first().map(|r| command::rcpt_to(r));
                    match first {
                        Some(bytes) => self.send(bytes, &[Cmd::Rcpt(0)]),
                        None => self.end_with_rset(),
                    }
                } else {
                    self.end_with_rset();
                }
            }
            Cmd::Rcpt(_) if pipelined => {}
            Cmd::Rcpt(i) => {
                if let Some(next) = txn.envelope.rcpt_to.get(i + 1).map(|r| command::rcpt_to(r)) {
                    self.send(next, &[Cmd::Rcpt(i + 1)]);
                } else if txn.any_rcpt_accepted() {
                    self.send(command::DATA.to_vec(), &[Cmd::Data]);
                } else {
                    self.end_with_rset();
                }
            }
            Cmd::Data => {
                if class == 3 {
                    if txn.mail_accepted() && txn.any_rcpt_accepted() {
                        self.actions.push_back(SessionAction::SendBody);
                        self.pending.push_back(Pending {
                            cmd: Cmd::EndOfData,
                            sent_epoch: self.epoch,
                        });
                    } else {
                        // Pipelined DATA accepted with nothing to deliver: end the empty
                        // data block (RFC 2920 3.1).
                        self.send(command::DOT.to_vec(), &[Cmd::Dot]);
                    }
                } else {
                    self.end_with_rset();
                }
            }
            Cmd::EndOfData => {
                if let Some(txn) = self.txn.take() {
                    self.events
                        .push_back(SessionEvent::TransactionDone(txn.report));
                }
                self.ready();
            }
            _ => self.end_with_rset(),
        }
    }

    /// The transaction ended without a message accepted: report it, then RSET.
    fn end_with_rset(&mut self) {
        if let Some(txn) = self.txn.take() {
            self.events
                .push_back(SessionEvent::TransactionDone(txn.report));
        }
        self.send(command::RSET.to_vec(), &[Cmd::Rset]);
    }
}

fn unexpected(what: &str, reply: &Reply) -> SessionError {
    SessionError::Protocol(format!(
        "unexpected reply to {what}: {}",
        sanitize::cut(&reply.display(), 200)
    ))
}
