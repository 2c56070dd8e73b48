//! The SMTP submission server session: a sans-IO state machine over raw bytes, one per
//! client connection (RFC 5321, 3207 STARTTLS, 2920 PIPELINING, 1870 SIZE, 6152
//! 8BITMIME, 6531 SMTPUTF8, 4954 AUTH PLAIN/LOGIN, 2034/3463 enhanced status codes).
//!
//! The shell feeds it facts (`on_connected`, `on_bytes`, `on_tls_established`,
//! `on_timer`, `on_shutdown`, `on_disconnected`) and answers its questions
//! (`on_auth_result`, `on_sender_check`, `on_message_result` / `on_rate_limited`), then
//! drains [`ServerAction`]s (what to do on the connection) with `poll_action` and
//! [`ServerEvent`]s (the questions) with `poll_event`, and arms a timer for `deadline()`.
//! Drain both queues after every call.
//!
//! # Sequence
//!
//! * `on_connected`: the greeting `220 <hostname> ESMTP outpost`. Bytes received before
//!   it are kept (bounded) and read after it.
//! * Commands are read one line at a time and answered in order. The replies produced by
//!   one call go out in one `Send` (RFC 2920 5: a pipelined group gets its replies
//!   together).
//! * Questions: `AUTH` (after the credentials are read) emits [`ServerEvent::AuthRequest`];
//!   `MAIL FROM` from an unauthenticated trusted client emits
//!   [`ServerEvent::SenderCheck`]; the end of DATA emits [`ServerEvent::Message`]. Until
//!   the matching answer arrives the session sends nothing and reads nothing further: bytes
//!   keep being buffered (at most [`MAX_BUFFERED_INPUT`]) and are read after the answer.
//!   There is no deadline while a question is outstanding (the shell owns that latency).
//!   An answer that does not match the outstanding question (or comes with none, or after
//!   the close) is ignored.
//! * `STARTTLS` (`220 2.0.0 Ready to start TLS`) is followed by the action `StartTls`;
//!   anything the client pipelined after it in plaintext is discarded (RFC 3207 5; the
//!   STARTTLS command-injection attack). `on_tls_established` resets the session to the
//!   state after the greeting (no new greeting): the client must EHLO again, and
//!   authentication and any transaction are forgotten.
//! * The end: `QUIT` (`221 2.0.0 Bye`), too many errors or failed authentications, a
//!   timeout, or too much buffered input send their reply and then the action `Close`;
//!   after it the session does nothing more, whatever arrives. `on_disconnected` ends it
//!   silently (no `Close`).
//! * Shutdown (RFC 5321 3.8, 4.2.3): after `on_shutdown` the greeting (if not sent yet),
//!   the next command and the end of a DATA block not yet handed over are answered
//!   `421 4.3.2 <hostname> Service shutting down, closing transmission channel`, then
//!   `Close` (`QUIT` still gets its `221`). A question already asked keeps its real
//!   answer: a message handed over in [`ServerEvent::Message`] is answered by its store
//!   result, not by the `421`.
//!
//! # Not an open relay
//!
//! `MAIL FROM` needs either a successful AUTH (and then the sender's domain must be the
//! authenticated tenant's domain) or a trusted client (`ServerConfig::trusted_client`,
//! the shell's `--trusted-networks`) whose sender domain belongs to a tenant the shell
//! names in `on_sender_check`. The null sender is refused: a submission is never a bounce.
//!
//! # Bounded memory
//!
//! Command lines are at most [`MAX_COMMAND_LINE`] octets with their CRLF
//! ([`MAX_AUTH_LINE`] for AUTH and its responses); a longer line is discarded as it
//! arrives and answered `500 5.5.2` at its end. Unread input is at most
//! [`MAX_BUFFERED_INPUT`] octets ([`ServerSession::buffered_len`]); the message body at
//! most `max_message_size` ([`ServerSession::message_len`]): past it the body is read
//! and dropped to its final dot, then refused with `552 5.3.4`. Replies queued but not yet
//! taken are kept near [`MAX_PENDING_OUTPUT`]: past it, reading pauses until
//! `poll_action` has handed everything out (a client that pipelines without reading its
//! replies then fills the input buffer and is cut off with `421`).
//!
//! # Errors
//!
//! Every 4xx/5xx answer to a command (unknown command `500 5.5.2`, syntax `501 5.5.4`,
//! sequence `503 5.5.1`, refusals such as `530`, `550`, `553`, `452`, `535`) counts
//! towards [`MAX_ERRORS`]; the one that reaches it is followed by
//! `421 4.7.0 <hostname> Error: too many errors` and `Close`. Answers to a finished
//! message (`on_message_result`, `on_rate_limited`) do not count. The session never
//! panics on input and survives any number of bad commands below the limit.

mod data;
mod parse;

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::ids::TenantId;
use crate::intake::parse_address;
use crate::io::{Receipt, SubmitError, SubmitErrorKind};
use crate::sanitize;
use crate::time::Time;

pub use data::MAX_DATA_LINE;
use data::{DataReader, Refusal};

/// The longest command line, CRLF included (RFC 5321 4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// The longest `AUTH` command line or AUTH response line, CRLF included. RFC 4954 4 lifts
/// the 512 limit for these; PLAIN and LOGIN credentials fit easily in this.
pub const MAX_AUTH_LINE: usize = 2048;
/// The most unread input kept: what a client pipelines while a question is outstanding (a
/// full group of MAIL, 100 RCPT and DATA fits), or sends before the greeting. More than
/// this ends the session with `421 4.7.0`.
pub const MAX_BUFFERED_INPUT: usize = 64 * 1024;
/// Error replies (4xx/5xx answers to commands) after which the session ends with
/// `421 4.7.0 <hostname> Error: too many errors`.
pub const MAX_ERRORS: u32 = 20;
/// Failed authentications after which the session ends with `421 4.7.0`.
pub const MAX_AUTH_FAILURES: u32 = 3;
/// Reply bytes handed out but not yet taken with `poll_action` above which the session
/// stops reading commands. Some replies are much longer than their command (EHLO), so
/// without this one large `on_bytes` could queue output many times its own size. Reading
/// resumes when `poll_action` has handed everything out.
pub const MAX_PENDING_OUTPUT: usize = 256 * 1024;

/// Accepts base64 with or without padding (some clients leave it out) but nothing else.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Per-connection settings; the shell decides them per client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Our name in the greeting, EHLO and 421 replies (reduced to printable ASCII).
    pub hostname: String,
    /// The largest message accepted (content octets after dot-unstuffing, CRLF line
    /// endings); advertised as `SIZE`.
    pub max_message_size: u64,
    /// RCPT TO accepted per transaction; more get `452 4.5.3`.
    pub max_recipients: usize,
    /// The shell can do TLS on this connection: STARTTLS is offered until it is active.
    pub tls_available: bool,
    /// AUTH is offered without TLS (the shell sets this for loopback clients).
    pub auth_without_tls: bool,
    /// The client is in a trusted network: MAIL FROM without AUTH is allowed when the
    /// shell names a tenant owning the sender's domain (`SenderCheck`).
    pub trusted_client: bool,
    /// How long to wait for the next command (RFC 5321 4.5.3.2.7: 5 minutes).
    pub command_timeout: Duration,
    /// How long to wait for the next chunk of DATA (RFC 5321 4.5.3.2.5: 3 minutes).
    pub data_timeout: Duration,
}

impl ServerConfig {
    /// The defaults: 10 MiB, 100 recipients, no TLS, AUTH only over TLS, not trusted,
    /// 5 min command and 3 min data timeouts.
    pub fn new(hostname: &str) -> ServerConfig {
        ServerConfig {
            hostname: hostname.to_string(),
            max_message_size: 10 * 1024 * 1024,
            max_recipients: 100,
            tls_available: false,
            auth_without_tls: false,
            trusted_client: false,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
        }
    }
}

/// Who may send: the tenant that authenticated (or owns a trusted client's sender domain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthedTenant {
    pub tenant: TenantId,
    /// The tenant's sending domain; MAIL FROM must be in exactly this domain.
    pub domain: String,
}

/// What the session asks the shell to do on the connection, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAction {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Start TLS as the server (after the `220` has been written); report
    /// `on_tls_established`, or on failure close the connection and report
    /// `on_disconnected`.
    StartTls,
    /// Close the connection (after writing everything before it). Nothing follows.
    Close,
}

/// The session's questions to the shell. Each gets exactly one answer.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// Check these credentials; answer `on_auth_result`. Both are the decoded UTF-8
    /// strings, non-empty. (Debug output hides the password.)
    AuthRequest { username: String, password: String },
    /// A trusted client's MAIL FROM: which tenant owns `domain` (lowercase, ASCII
    /// A-labels)? Answer `on_sender_check`.
    SenderCheck { domain: String },
    /// A complete message. Submit it; answer `on_message_result` (or `on_rate_limited`)
    /// once it is durable or refused. The client gets no reply until then.
    Message {
        tenant: AuthedTenant,
        /// The envelope sender, `local@domain` (domain in ASCII A-labels).
        mail_from: String,
        /// The accepted recipients in order, same form; duplicates kept (intake removes
        /// them).
        rcpt_to: Vec<String>,
        /// The content: dot-unstuffing undone, CRLF line endings, no final `.`.
        data: Vec<u8>,
        /// The client declared SMTPUTF8.
        smtputf8: bool,
        /// The client declared BODY=8BITMIME or the content has octets above 127.
        eight_bit: bool,
    },
}

impl fmt::Debug for ServerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerEvent::AuthRequest { username, .. } => f
                .debug_struct("AuthRequest")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            ServerEvent::SenderCheck { domain } => f
                .debug_struct("SenderCheck")
                .field("domain", domain)
                .finish(),
            ServerEvent::Message {
                tenant,
                mail_from,
                rcpt_to,
                data,
                smtputf8,
                eight_bit,
            } => f
                .debug_struct("Message")
                .field("tenant", tenant)
                .field("mail_from", mail_from)
                .field("rcpt_to", rcpt_to)
                .field("data_len", &data.len())
                .field("smtputf8", smtputf8)
                .field("eight_bit", eight_bit)
                .finish(),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Question {
    Auth,
    Sender,
    Message,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Before `on_connected`: input is buffered.
    Init,
    /// Reading command lines.
    Command,
    /// Reading a DATA block.
    Data,
    /// A question to the shell is outstanding: input is buffered.
    Waiting(Question),
    /// `StartTls` handed out; waiting for `on_tls_established`.
    TlsHandshake,
    /// `Close` emitted or the connection gone; everything is ignored.
    Closed,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Greeted {
    Helo,
    Ehlo,
}

/// An AUTH exchange waiting for the client's next response line.
#[derive(Clone, Debug)]
enum AuthStep {
    /// `334 ` sent for PLAIN.
    Plain,
    /// `334 VXNlcm5hbWU6` (Username:) sent for LOGIN.
    LoginUser,
    /// `334 UGFzc3dvcmQ6` (Password:) sent for LOGIN.
    LoginPass { username: String },
}

/// The transaction begun by an accepted MAIL FROM.
#[derive(Clone, Debug)]
struct Txn {
    mail_from: String,
    /// The sender's ASCII domain (checked against the tenant).
    domain: String,
    smtputf8: bool,
    body_8bit: bool,
    rcpt_to: Vec<String>,
}

pub struct ServerSession {
    config: ServerConfig,
    /// `config.hostname` reduced to printable ASCII without spaces.
    host: String,
    phase: Phase,
    /// Unread input; `pos` is where reading resumes (compacted after each pass).
    inbuf: Vec<u8>,
    pos: usize,
    /// Dropping the rest of an overlong command line up to its LF.
    discarding: bool,
    data: Option<DataReader>,
    /// Replies not yet handed out as a `Send`.
    out: Vec<u8>,
    actions: VecDeque<ServerAction>,
    events: VecDeque<ServerEvent>,
    deadline: Option<Time>,
    greeted: Option<Greeted>,
    tls_active: bool,
    auth: Option<AuthedTenant>,
    auth_step: Option<AuthStep>,
    auth_failures: u32,
    errors: u32,
    /// Bytes in queued `Send` actions.
    unsent: usize,
    /// Reading stopped because of [`MAX_PENDING_OUTPUT`]; `poll_action` resumes it.
    stalled: bool,
    /// The latest `now` passed in (for reading resumed by `poll_action`).
    last_now: Time,
    /// The accepted MAIL FROM's transaction and the tenant it sends for.
    txn: Option<(Txn, AuthedTenant)>,
    /// A MAIL FROM waiting for `on_sender_check`.
    pending_mail: Option<Txn>,
    /// `on_shutdown` was called: what is read next is answered `421` and the session ends.
    shutting_down: bool,
}

impl ServerSession {
    pub fn new(config: ServerConfig, now: Time) -> ServerSession {
        let host: String = config
            .hostname
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .collect();
        let host = if host.is_empty() {
            "localhost".to_string()
        } else {
            host
        };
        ServerSession {
            config,
            host,
            phase: Phase::Init,
            inbuf: Vec::new(),
            pos: 0,
            discarding: false,
            data: None,
            out: Vec::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            deadline: None,
            greeted: None,
            tls_active: false,
            auth: None,
            auth_step: None,
            auth_failures: 0,
            errors: 0,
            unsent: 0,
            stalled: false,
            last_now: now,
            txn: None,
            pending_mail: None,
            shutting_down: false,
        }
    }

    /// The connection is up: sends the greeting, then reads whatever arrived before it.
    /// Only the first call counts.
    pub fn on_connected(&mut self, now: Time) {
        if self.phase != Phase::Init {
            return;
        }
        if self.shutting_down {
            self.shutdown_reply();
            return;
        }
        let greeting = format!("220 {} ESMTP outpost", self.host);
        self.reply(&greeting);
        self.phase = Phase::Command;
        self.arm_command(now);
        self.process(now);
        self.flush();
    }

    /// Bytes from the client (after TLS decryption, if any).
    pub fn on_bytes(&mut self, now: Time, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match self.phase {
            // Plaintext during the handshake cannot be client commands; the shell should
            // not deliver any. Dropped, never read as if it came over TLS.
            Phase::Closed | Phase::TlsHandshake => return,
            Phase::Data => self.deadline = Some(now.plus(self.config.data_timeout)),
            _ => {}
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            if !matches!(
                self.phase,
                Phase::Init | Phase::Command | Phase::Data | Phase::Waiting(_)
            ) {
                // STARTTLS or the end: what follows in this chunk is dropped.
                break;
            }
            let room = MAX_BUFFERED_INPUT.saturating_sub(self.inbuf.len());
            if room == 0 {
                let line = format!("421 4.7.0 {} Error: too much pipelined input", self.host);
                self.reply(&line);
                self.close();
                break;
            }
            let take = rest.len().min(room);
            self.inbuf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            self.process(now);
        }
        self.flush();
    }

    /// The TLS handshake that followed `StartTls` completed. The session starts over as
    /// after the greeting (RFC 3207 4.2): EHLO, AUTH and any transaction are forgotten.
    /// Ignored unless `StartTls` is outstanding.
    pub fn on_tls_established(&mut self, now: Time) {
        if self.phase != Phase::TlsHandshake {
            return;
        }
        self.tls_active = true;
        self.greeted = None;
        self.auth = None;
        self.auth_step = None;
        self.txn = None;
        self.pending_mail = None;
        self.inbuf.clear();
        self.pos = 0;
        self.discarding = false;
        self.phase = Phase::Command;
        self.arm_command(now);
        self.flush();
    }

    /// The answer to `AuthRequest`: the tenant the credentials belong to, or `None`.
    /// `235 2.7.0` or `535 5.7.8` (after [`MAX_AUTH_FAILURES`] failures, then `421` and
    /// `Close`).
    pub fn on_auth_result(&mut self, now: Time, result: Option<AuthedTenant>) {
        if self.phase != Phase::Waiting(Question::Auth) {
            return;
        }
        self.phase = Phase::Command;
        match result {
            Some(tenant) => {
                self.auth = Some(tenant);
                self.reply("235 2.7.0 Authentication successful");
            }
            None => self.auth_failed(),
        }
        self.resume(now);
    }

    /// The answer to `SenderCheck`: the tenant owning the domain, or `None`
    /// (`550 5.7.1 Sender domain not allowed`). A tenant whose domain is not the asked
    /// one is treated as `None`. Otherwise `250 2.1.0 Ok` and the transaction begins,
    /// sending for that tenant.
    pub fn on_sender_check(&mut self, now: Time, result: Option<AuthedTenant>) {
        if self.phase != Phase::Waiting(Question::Sender) {
            return;
        }
        self.phase = Phase::Command;
        let Some(txn) = self.pending_mail.take() else {
            return self.resume(now);
        };
        match result {
            Some(tenant) if ascii_domain(&tenant.domain) == txn.domain => {
                self.txn = Some((txn, tenant));
                self.reply("250 2.1.0 Ok");
            }
            _ => self.error("550 5.7.1 Sender domain not allowed"),
        }
        self.resume(now);
    }

    /// The answer to `Message`: `250 2.0.0 Ok: queued as <id>` once it is durable, or
    /// the refusal mapped by kind: Invalid `553 5.1.7` (envelope sender), `553 5.1.3`
    /// (a recipient) or `550 5.6.0` (the content), each with the error's message;
    /// Forbidden `553 5.7.1`; TooLarge `552 5.3.4`; Conflict `554 5.0.0`; Unavailable
    /// `451 4.3.0` (the internal message is not shown). The transaction is over either
    /// way; the client may start another.
    pub fn on_message_result(&mut self, now: Time, result: Result<Receipt, SubmitError>) {
        if self.phase != Phase::Waiting(Question::Message) {
            return;
        }
        self.phase = Phase::Command;
        let line = match result {
            Ok(receipt) => format!("250 2.0.0 Ok: queued as {}", receipt.id),
            Err(e) => submit_error_reply(&e),
        };
        self.reply(&line);
        self.resume(now);
    }

    /// Answers `Message` (the transaction ends) or `SenderCheck` (the MAIL FROM is
    /// refused) with `451 4.7.1 Rate limit exceeded, try again later`.
    pub fn on_rate_limited(&mut self, now: Time) {
        match self.phase {
            Phase::Waiting(Question::Message) => {}
            Phase::Waiting(Question::Sender) => self.pending_mail = None,
            _ => return,
        }
        self.phase = Phase::Command;
        self.reply("451 4.7.1 Rate limit exceeded, try again later");
        self.resume(now);
    }

    /// Time passed. At or after `deadline()`: `421 4.4.2 <hostname> Error: timeout
    /// exceeded` and `Close` (only `Close` during the TLS handshake).
    pub fn on_timer(&mut self, now: Time) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if now < deadline {
            return;
        }
        match self.phase {
            Phase::Command | Phase::Data => {
                let line = format!("421 4.4.2 {} Error: timeout exceeded", self.host);
                self.reply(&line);
                self.close();
            }
            Phase::TlsHandshake => self.close(),
            Phase::Init | Phase::Waiting(_) | Phase::Closed => self.deadline = None,
        }
        self.flush();
    }

    /// The daemon is shutting down. From now on the greeting (if `on_connected` has not
    /// come yet), the next command line, or the end of the DATA block being read is
    /// answered `421 4.3.2 <hostname> Service shutting down, closing transmission channel`
    /// and followed by `Close`; `QUIT` still gets `221 2.0.0 Bye`. An outstanding
    /// question is answered as usual (`on_message_result` tells the client the store's
    /// result for a message already handed over); the command after it gets the `421`.
    /// Nothing is sent by this call itself (the client hears it at its next command).
    pub fn on_shutdown(&mut self, _now: Time) {
        self.shutting_down = true;
    }

    /// The client closed or the connection broke: the session ends without `Close`;
    /// queued actions and events not yet taken are dropped, and an outstanding question's
    /// answer will be ignored (a message already handed over may still be submitted; the
    /// client was not told it was).
    pub fn on_disconnected(&mut self, _now: Time) {
        self.phase = Phase::Closed;
        self.release();
        // Nothing queued can be carried out any more, nor asked.
        self.out.clear();
        self.actions.clear();
        self.events.clear();
        self.unsent = 0;
    }

    /// When to call `on_timer`: `None` before `on_connected`, while a question is
    /// outstanding, and after the end.
    pub fn deadline(&self) -> Option<Time> {
        self.deadline
    }

    /// The next action. When the last one is taken and reading was held back by
    /// [`MAX_PENDING_OUTPUT`], buffered input is read on (with the latest `now`), which
    /// may queue more actions and events: drain both until `None`.
    pub fn poll_action(&mut self) -> Option<ServerAction> {
        let action = self.actions.pop_front();
        if let Some(ServerAction::Send(bytes)) = &action {
            self.unsent = self.unsent.saturating_sub(bytes.len());
        }
        if self.actions.is_empty() && self.stalled {
            self.stalled = false;
            let now = self.last_now;
            self.process(now);
            self.flush();
        }
        action
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Unread input held, at most [`MAX_BUFFERED_INPUT`].
    pub fn buffered_len(&self) -> usize {
        self.inbuf.len()
    }

    /// Message content held while reading DATA, at most `max_message_size`.
    pub fn message_len(&self) -> usize {
        self.data.as_ref().map_or(0, DataReader::stored)
    }

    /// Whether reading more input is useful now (false while a question or the TLS
    /// handshake is outstanding, and after the end). A shell may stop reading meanwhile;
    /// it does not have to.
    pub fn wants_input(&self) -> bool {
        matches!(self.phase, Phase::Command | Phase::Data)
    }

    /// `Close` was emitted or `on_disconnected` called; nothing more will happen.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// TLS is active on this session.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// The authenticated tenant, if AUTH succeeded.
    pub fn authenticated(&self) -> Option<&AuthedTenant> {
        self.auth.as_ref()
    }

    // ---- internals ----

    fn arm_command(&mut self, now: Time) {
        self.deadline = Some(now.plus(self.config.command_timeout));
    }

    /// After an answer: the command timer restarts and buffered input is read.
    fn resume(&mut self, now: Time) {
        if self.phase == Phase::Command {
            self.arm_command(now);
            self.process(now);
        }
        self.flush();
    }

    fn reply(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// An error reply; the session ends after [`MAX_ERRORS`] of them.
    fn error(&mut self, line: &str) {
        self.reply(line);
        self.errors = self.errors.saturating_add(1);
        if self.errors >= MAX_ERRORS {
            let line = format!("421 4.7.0 {} Error: too many errors", self.host);
            self.reply(&line);
            self.close();
        }
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            let bytes = std::mem::take(&mut self.out);
            self.unsent = self.unsent.saturating_add(bytes.len());
            self.actions.push_back(ServerAction::Send(bytes));
        }
    }

    /// `421 4.3.2` (shutting down) and `Close`.
    fn shutdown_reply(&mut self) {
        let line = format!(
            "421 4.3.2 {} Service shutting down, closing transmission channel",
            self.host
        );
        self.reply(&line);
        self.close();
    }

    fn close(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        self.flush();
        self.actions.push_back(ServerAction::Close);
        self.phase = Phase::Closed;
        self.release();
    }

    fn release(&mut self) {
        self.inbuf = Vec::new();
        self.pos = 0;
        self.data = None;
        self.deadline = None;
        self.txn = None;
        self.pending_mail = None;
        self.auth_step = None;
        self.stalled = false;
    }

    /// Reads buffered input while the phase allows, then compacts the buffer.
    fn process(&mut self, now: Time) {
        self.last_now = self.last_now.max(now);
        loop {
            if self.unsent.saturating_add(self.out.len()) > MAX_PENDING_OUTPUT {
                self.stalled = true;
                break;
            }
            let progressed = match self.phase {
                Phase::Command => self.next_line(now),
                Phase::Data => self.read_data(now),
                _ => false,
            };
            if !progressed {
                break;
            }
        }
        if self.phase == Phase::Closed {
            return;
        }
        if self.pos > 0 {
            self.inbuf.drain(..self.pos.min(self.inbuf.len()));
            self.pos = 0;
        }
    }

    /// The line limit for the line starting at `avail`.
    fn line_limit(&self, avail: &[u8]) -> usize {
        let is_auth = avail
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"AUTH "));
        if self.auth_step.is_some() || is_auth {
            MAX_AUTH_LINE
        } else {
            MAX_COMMAND_LINE
        }
    }

    /// Handles one complete command line if there is one; false when more input is
    /// needed.
    fn next_line(&mut self, now: Time) -> bool {
        let avail = self.inbuf.get(self.pos..).unwrap_or_default();
        if avail.is_empty() {
            return false;
        }
        if self.discarding {
            return match avail.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.pos += i + 1;
                    self.discarding = false;
                    self.arm_command(now);
                    if self.shutting_down {
                        self.shutdown_reply();
                    } else if self.auth_step.take().is_some() {
                        self.error("500 5.5.2 Error: line too long; authentication aborted");
                    } else {
                        self.error("500 5.5.2 Error: line too long");
                    }
                    true
                }
                None => {
                    self.pos = self.inbuf.len();
                    false
                }
            };
        }
        let limit = self.line_limit(avail);
        match avail.iter().take(limit).position(|&b| b == b'\n') {
            Some(i) => {
                let line = avail[..i].to_vec();
                self.pos += i + 1;
                self.arm_command(now);
                self.on_line(now, &line);
                true
            }
            None if avail.len() >= limit => {
                // Too long: drop what is here and the rest of the line as it arrives
                // (memory stays bounded); the line's end may already be buffered.
                self.discarding = true;
                self.pos += limit;
                true
            }
            None => false,
        }
    }

    fn read_data(&mut self, now: Time) -> bool {
        let avail = self.inbuf.get(self.pos..).unwrap_or_default();
        if avail.is_empty() {
            return false;
        }
        let Some(reader) = self.data.as_mut() else {
            // Unreachable: the Data phase always has a reader.
            self.phase = Phase::Command;
            return true;
        };
        match reader.feed(avail) {
            None => {
                self.pos = self.inbuf.len();
                false
            }
            Some(n) => {
                self.pos += n;
                self.end_of_data(now);
                true
            }
        }
    }

    fn end_of_data(&mut self, now: Time) {
        let reader = self.data.take();
        let txn = self.txn.take();
        self.phase = Phase::Command;
        self.arm_command(now);
        let (Some(reader), Some((txn, tenant))) = (reader, txn) else {
            // Unreachable: DATA is only accepted within a transaction.
            self.reply("451 4.3.0 Error: internal state, try again later");
            return;
        };
        if self.shutting_down {
            // Not handed over yet, so not stored: the client keeps it and retries.
            return self.shutdown_reply();
        }
        match reader.finish() {
            Ok((data, eight_bit)) => {
                self.events.push_back(ServerEvent::Message {
                    tenant,
                    mail_from: txn.mail_from,
                    rcpt_to: txn.rcpt_to,
                    data,
                    smtputf8: txn.smtputf8,
                    eight_bit: eight_bit || txn.body_8bit,
                });
                self.phase = Phase::Waiting(Question::Message);
                self.deadline = None;
            }
            Err(Refusal::TooLarge) => {
                self.error("552 5.3.4 Message size exceeds fixed maximum message size")
            }
            Err(Refusal::LineTooLong) => self.error("500 5.5.2 Line too long"),
            Err(Refusal::Nul) => self.error("554 5.6.0 Message contains NUL characters"),
        }
    }

    fn on_line(&mut self, now: Time, raw: &[u8]) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if self.shutting_down {
            let quit = self.auth_step.is_none()
                && std::str::from_utf8(raw)
                    .is_ok_and(|l| l.trim_end_matches([' ', '\t']).eq_ignore_ascii_case("QUIT"));
            if quit {
                self.reply("221 2.0.0 Bye");
                return self.close();
            }
            return self.shutdown_reply();
        }
        if let Some(step) = self.auth_step.take() {
            self.on_auth_response(step, raw);
            return;
        }
        let Ok(line) = std::str::from_utf8(raw) else {
            self.error("500 5.5.2 Error: bad UTF-8 syntax");
            return;
        };
        if line.chars().any(|c| c.is_control() && c != '\t') {
            self.error("500 5.5.2 Error: control characters in command");
            return;
        }
        let (verb, rest) = parse::split_verb(line.trim_end_matches([' ', '\t']));
        match verb.as_str() {
            "EHLO" => self.ehlo(rest),
            "HELO" => self.helo(rest),
            "STARTTLS" => self.starttls(rest),
            "AUTH" => self.auth(rest),
            "MAIL" => self.mail(rest),
            "RCPT" => self.rcpt(rest),
            "DATA" => self.data(now, rest),
            "RSET" => {
                if rest.is_empty() {
                    self.txn = None;
                    self.reply("250 2.0.0 Ok");
                } else {
                    self.error("501 5.5.4 Syntax: RSET");
                }
            }
            "NOOP" => self.reply("250 2.0.0 Ok"),
            "QUIT" => {
                self.reply("221 2.0.0 Bye");
                self.close();
            }
            "VRFY" => {
                if rest.is_empty() {
                    self.error("501 5.5.4 Syntax: VRFY address");
                } else {
                    self.reply(
                        "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery",
                    );
                }
            }
            "EXPN" | "ETRN" | "TURN" | "BDAT" => {
                self.error("502 5.5.1 Error: command not implemented")
            }
            "HELP" => self.reply("214 2.0.0 See RFC 5321"),
            _ => self.error("500 5.5.2 Error: command not recognized"),
        }
    }

    fn auth_offered(&self) -> bool {
        self.tls_active || self.config.auth_without_tls
    }

    fn ehlo(&mut self, rest: &str) {
        if rest.is_empty() {
            self.error("501 5.5.4 Syntax: EHLO hostname");
            return;
        }
        // RFC 5321 4.1.4: EHLO resets the transaction like RSET.
        self.txn = None;
        self.greeted = Some(Greeted::Ehlo);
        let mut lines = vec![
            self.host.clone(),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
        ];
        if self.config.tls_available && !self.tls_active {
            lines.push("STARTTLS".to_string());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        let last = lines.len() - 1;
        for (i, l) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.out
                .extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
        }
    }

    fn helo(&mut self, rest: &str) {
        if rest.is_empty() {
            self.error("501 5.5.4 Syntax: HELO hostname");
            return;
        }
        self.txn = None;
        self.greeted = Some(Greeted::Helo);
        let line = format!("250 {}", self.host);
        self.reply(&line);
    }

    fn starttls(&mut self, rest: &str) {
        if !rest.is_empty() {
            self.error("501 5.5.4 Syntax: STARTTLS");
        } else if self.tls_active {
            self.error("503 5.5.1 Error: TLS already active");
        } else if !self.config.tls_available {
            self.error("502 5.5.1 Error: command not implemented");
        } else if self.greeted != Some(Greeted::Ehlo) {
            self.error("503 5.5.1 Error: send EHLO first");
        } else {
            self.reply("220 2.0.0 Ready to start TLS");
            self.flush();
            self.actions.push_back(ServerAction::StartTls);
            self.phase = Phase::TlsHandshake;
            // RFC 3207 5: nothing the client sent after STARTTLS in plaintext may be read
            // as if it had come over TLS.
            self.inbuf.clear();
            self.pos = 0;
        }
    }

    fn auth(&mut self, rest: &str) {
        if self.auth.is_some() {
            return self.error("503 5.5.1 Error: already authenticated");
        }
        if self.greeted != Some(Greeted::Ehlo) {
            return self.error("503 5.5.1 Error: send EHLO first");
        }
        if self.txn.is_some() {
            return self.error("503 5.5.1 Error: MAIL transaction in progress");
        }
        if !self.auth_offered() {
            return self
                .error("538 5.7.11 Encryption required for requested authentication mechanism");
        }
        let mut words = rest.split(' ').filter(|w| !w.is_empty());
        let (Some(mechanism), initial, None) = (words.next(), words.next(), words.next()) else {
            return self.error("501 5.5.4 Syntax: AUTH mechanism [initial-response]");
        };
        match (mechanism.to_ascii_uppercase().as_str(), initial) {
            ("PLAIN", None) => {
                self.auth_step = Some(AuthStep::Plain);
                self.reply("334 ");
            }
            ("PLAIN", Some(initial)) => self.on_auth_response(AuthStep::Plain, initial.as_bytes()),
            ("LOGIN", None) => {
                self.auth_step = Some(AuthStep::LoginUser);
                self.reply("334 VXNlcm5hbWU6");
            }
            ("LOGIN", Some(initial)) => {
                self.on_auth_response(AuthStep::LoginUser, initial.as_bytes())
            }
            _ => self.error("504 5.5.4 Unrecognized authentication type"),
        }
    }

    /// A response line to a `334` challenge (or an initial response).
    fn on_auth_response(&mut self, step: AuthStep, line: &[u8]) {
        if line == b"*" {
            return self.error("501 5.7.0 Authentication cancelled");
        }
        // RFC 4954 4: `=` is an empty initial response.
        let decoded = if line == b"=" {
            Ok(Vec::new())
        } else {
            B64.decode(line)
        };
        let Ok(decoded) = decoded else {
            return self.error("501 5.5.2 Cannot decode response");
        };
        match step {
            AuthStep::Plain => {
                // authzid NUL authcid NUL passwd (RFC 4616).
                let mut parts = decoded.split(|&b| b == 0);
                let (Some(authzid), Some(user), Some(pass), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return self.error("501 5.5.2 Invalid authentication data");
                };
                let (Ok(authzid), Ok(user), Ok(pass)) = (
                    std::str::from_utf8(authzid),
                    std::str::from_utf8(user),
                    std::str::from_utf8(pass),
                ) else {
                    return self.error("501 5.5.2 Invalid authentication data");
                };
                // Acting as another identity is not supported: only an empty authzid or
                // one equal to the username.
                if !authzid.is_empty() && authzid != user {
                    return self.auth_failed();
                }
                self.ask_auth(user.to_string(), pass.to_string());
            }
            AuthStep::LoginUser => {
                let Ok(user) = String::from_utf8(decoded) else {
                    return self.error("501 5.5.2 Invalid authentication data");
                };
                self.auth_step = Some(AuthStep::LoginPass { username: user });
                self.reply("334 UGFzc3dvcmQ6");
            }
            AuthStep::LoginPass { username } => {
                let Ok(pass) = String::from_utf8(decoded) else {
                    return self.error("501 5.5.2 Invalid authentication data");
                };
                self.ask_auth(username, pass);
            }
        }
    }

    fn ask_auth(&mut self, username: String, password: String) {
        if username.is_empty() || password.is_empty() {
            return self.auth_failed();
        }
        self.events
            .push_back(ServerEvent::AuthRequest { username, password });
        self.phase = Phase::Waiting(Question::Auth);
        self.deadline = None;
    }

    /// A failed authentication (refused by the shell, or decided here without asking):
    /// `535`, and after [`MAX_AUTH_FAILURES`] of them `421` and `Close`.
    fn auth_failed(&mut self) {
        self.auth_failures = self.auth_failures.saturating_add(1);
        self.error("535 5.7.8 Authentication credentials invalid");
        if self.auth_failures >= MAX_AUTH_FAILURES && self.phase != Phase::Closed {
            let line = format!(
                "421 4.7.0 {} Error: too many failed authentication attempts",
                self.host
            );
            self.reply(&line);
            self.close();
        }
    }

    fn mail(&mut self, rest: &str) {
        if self.greeted.is_none() {
            return self.error("503 5.5.1 Error: send HELO/EHLO first");
        }
        if self.txn.is_some() {
            return self.error("503 5.5.1 Error: nested MAIL command");
        }
        if self.auth.is_none() && !self.config.trusted_client {
            return self.error("530 5.7.0 Authentication required");
        }
        let Some(args) = parse::path_args(rest, "FROM:") else {
            return self.error("501 5.5.4 Syntax: MAIL FROM:<address>");
        };
        let mut size = false;
        let mut body = None;
        let mut smtputf8 = false;
        let mut auth_param = false;
        for (key, value) in &args.params {
            if self.greeted != Some(Greeted::Ehlo) {
                return self.error("555 5.5.4 Parameters need EHLO");
            }
            match (key.as_str(), value) {
                ("SIZE", Some(v)) if !size => {
                    if !v.bytes().all(|b| b.is_ascii_digit()) {
                        return self.error("501 5.5.4 Bad SIZE parameter");
                    }
                    size = true;
                    // More digits than u64 holds is larger than any limit.
                    let n = v.parse::<u64>().unwrap_or(u64::MAX);
                    if n > self.config.max_message_size {
                        return self
                            .error("552 5.3.4 Message size exceeds fixed maximum message size");
                    }
                }
                ("BODY", Some(v)) if body.is_none() => {
                    if v.eq_ignore_ascii_case("7BIT") {
                        body = Some(false);
                    } else if v.eq_ignore_ascii_case("8BITMIME") {
                        body = Some(true);
                    } else {
                        return self.error("555 5.5.4 Unsupported BODY type");
                    }
                }
                ("SMTPUTF8", None) if !smtputf8 => smtputf8 = true,
                // RFC 4954 5: accepted and ignored (we do not relay for others).
                ("AUTH", Some(_)) if !auth_param => auth_param = true,
                ("SIZE" | "BODY" | "SMTPUTF8" | "AUTH", _) => {
                    return self.error("501 5.5.4 Bad or repeated parameter");
                }
                _ => return self.error("555 5.5.4 Unsupported parameter"),
            }
        }
        if args.address.is_empty() {
            return self.error("553 5.7.1 Null sender not allowed for submission");
        }
        if !args.address.is_ascii() && !smtputf8 {
            return self.error("553 5.6.7 Non-ASCII address requires SMTPUTF8");
        }
        let Ok(address) = parse_address(args.address) else {
            return self.error("553 5.1.7 Bad sender address syntax");
        };
        let txn = Txn {
            mail_from: address.envelope(),
            domain: address.ascii_domain.clone(),
            smtputf8,
            body_8bit: body == Some(true),
            rcpt_to: Vec::new(),
        };
        match self.auth.clone() {
            Some(tenant) => {
                if ascii_domain(&tenant.domain) != txn.domain {
                    return self
                        .error("553 5.7.1 Sender address not owned by the authenticated user");
                }
                self.txn = Some((txn, tenant));
                self.reply("250 2.1.0 Ok");
            }
            None => {
                self.events.push_back(ServerEvent::SenderCheck {
                    domain: txn.domain.clone(),
                });
                self.pending_mail = Some(txn);
                self.phase = Phase::Waiting(Question::Sender);
                self.deadline = None;
            }
        }
    }

    fn rcpt(&mut self, rest: &str) {
        let Some((txn, _)) = self.txn.as_ref() else {
            return self.error("503 5.5.1 Error: need MAIL command");
        };
        let smtputf8 = txn.smtputf8;
        if txn.rcpt_to.len() >= self.config.max_recipients {
            return self.error("452 4.5.3 Too many recipients");
        }
        let Some(args) = parse::path_args(rest, "TO:") else {
            return self.error("501 5.5.4 Syntax: RCPT TO:<address>");
        };
        if !args.params.is_empty() {
            return self.error("555 5.5.4 Unsupported parameter");
        }
        if !args.address.is_ascii() && !smtputf8 {
            return self.error("553 5.6.7 Non-ASCII address requires SMTPUTF8");
        }
        let Ok(address) = parse_address(args.address) else {
            return self.error("553 5.1.3 Bad recipient address syntax");
        };
        if let Some((txn, _)) = self.txn.as_mut() {
            txn.rcpt_to.push(address.envelope());
        }
        self.reply("250 2.1.5 Ok");
    }

    fn data(&mut self, now: Time, rest: &str) {
        if !rest.is_empty() {
            return self.error("501 5.5.4 Syntax: DATA");
        }
        match &self.txn {
            None => self.error("503 5.5.1 Error: need MAIL command"),
            Some((txn, _)) if txn.rcpt_to.is_empty() => {
                self.error("554 5.5.1 Error: no valid recipients")
            }
            Some(_) => {
                self.reply("354 End data with <CR><LF>.<CR><LF>");
                self.data = Some(DataReader::new(self.config.max_message_size));
                self.phase = Phase::Data;
                self.deadline = Some(now.plus(self.config.data_timeout));
            }
        }
    }
}

/// A domain in the form MAIL FROM domains are compared in: lowercase ASCII A-labels.
fn ascii_domain(domain: &str) -> String {
    let domain = domain.trim_end_matches('.');
    parse_address(&format!("postmaster@{domain}"))
        .map(|a| a.ascii_domain)
        .unwrap_or_else(|_| domain.to_ascii_lowercase())
}

/// The reply for a refused submission (see `on_message_result`).
fn submit_error_reply(e: &SubmitError) -> String {
    let mut text = sanitize::cut(&e.message, 400);
    if text.is_empty() {
        text = "Message refused".to_string();
    }
    let field = e.field.as_deref().unwrap_or("");
    match e.kind {
        SubmitErrorKind::Invalid if field.starts_with("mail_from") => format!("553 5.1.7 {text}"),
        SubmitErrorKind::Invalid if field.starts_with("rcpt_to") => format!("553 5.1.3 {text}"),
        SubmitErrorKind::Invalid => format!("550 5.6.0 {text}"),
        SubmitErrorKind::Forbidden => format!("553 5.7.1 {text}"),
        SubmitErrorKind::TooLarge => format!("552 5.3.4 {text}"),
        SubmitErrorKind::Conflict => format!("554 5.0.0 {text}"),
        SubmitErrorKind::Unavailable => {
            "451 4.3.0 Temporary failure storing the message, try again later".to_string()
        }
    }
}
