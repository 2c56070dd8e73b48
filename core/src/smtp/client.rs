//! PLACEHOLDER: the SMTP client session state machine. The interface below is the
//! contract with the engine; the implementation is being written.
#![allow(dead_code, unused_variables)]

use std::collections::VecDeque;

use crate::config::SmtpTimeouts;
use crate::time::Time;

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
    /// Needs SMTPUTF8; the transaction fails with `NotSupported` if the server lacks it.
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
    NotSupported(String),
}

pub struct ClientSession {
    actions: VecDeque<SessionAction>,
    events: VecDeque<SessionEvent>,
}

impl ClientSession {
    pub fn new(config: SessionConfig) -> ClientSession {
        ClientSession {
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }
    /// The TCP connection is up: wait for the greeting.
    pub fn on_connected(&mut self, now: Time) {}
    pub fn on_bytes(&mut self, now: Time, bytes: &[u8]) {}
    pub fn on_tls_established(&mut self, now: Time, verified: bool) {}
    pub fn on_tls_failed(&mut self, now: Time, error: &str) {}
    /// The peer closed or the connection broke.
    pub fn on_disconnected(&mut self, now: Time, error: Option<&str>) {}
    /// Time passed; fails the session if its stage deadline is reached.
    pub fn on_timer(&mut self, now: Time) {}
    /// Start a transaction; only valid after `Ready`. Returns false if not idle.
    pub fn start_transaction(&mut self, now: Time, envelope: Envelope) -> bool {
        false
    }
    /// Send QUIT (when idle) and close.
    pub fn quit(&mut self, now: Time) {}
    pub fn deadline(&self) -> Option<Time> {
        None
    }
    pub fn poll_action(&mut self) -> Option<SessionAction> {
        self.actions.pop_front()
    }
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }
    pub fn is_idle(&self) -> bool {
        false
    }
    /// TLS is up on this session; `Some(verified)`.
    pub fn tls(&self) -> Option<bool> {
        None
    }
}
