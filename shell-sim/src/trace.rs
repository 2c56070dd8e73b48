//! The run's trace: a digest over every input and output (compact, always on, so that
//! determinism is checked on every run) and, when asked, readable lines (all of them, or
//! the last N for failure reports).

use std::collections::VecDeque;

use outpost_core::Time;
use outpost_core::io::{Input, Output};
use outpost_core::model::StoreOp;

/// A word-at-a-time multiplicative hash (FxHash's mixing step, plus the length): stable
/// across platforms and Rust versions (unlike `DefaultHasher`), and fast enough to hash
/// every byte the engine sends.
#[derive(Clone, Debug)]
pub struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Digest(0xcbf2_9ce4_8422_2325)
    }
}

const K: u64 = 0x517c_c1b7_2722_0a95;

impl Digest {
    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.word(b.len() as u64);
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(w));
        }
    }
    pub fn u64(&mut self, v: u64) {
        self.word(v);
    }
    pub fn u128(&mut self, v: u128) {
        self.word(v as u64);
        self.word((v >> 64) as u64);
    }
    pub fn value(&self) -> u64 {
        self.0
    }

    pub fn input(&mut self, now: Time, i: &Input) {
        self.u64(now.0);
        match i {
            Input::Tick => self.u64(1),
            Input::Recovered(s) => {
                self.u64(2);
                self.u64(s.messages.len() as u64);
                self.u64(s.last_event_seq);
            }
            Input::Submit(s) => {
                self.u64(3);
                self.u64(s.request.0);
            }
            Input::Resolved { query, result } => {
                self.u64(4);
                self.u64(query.0);
                self.u64(u64::from(result.is_ok()));
            }
            Input::Connected { conn } => {
                self.u64(5);
                self.u64(conn.0);
            }
            Input::ConnectFailed { conn, .. } => {
                self.u64(6);
                self.u64(conn.0);
            }
            Input::Received { conn, bytes } => {
                self.u64(7);
                self.u64(conn.0);
                self.bytes(bytes);
            }
            Input::TlsEstablished { conn, verified } => {
                self.u64(8);
                self.u64(conn.0);
                self.u64(u64::from(*verified));
            }
            Input::TlsFailed { conn, .. } => {
                self.u64(9);
                self.u64(conn.0);
            }
            Input::Disconnected { conn, .. } => {
                self.u64(10);
                self.u64(conn.0);
            }
            Input::Persisted { batch } => {
                self.u64(11);
                self.u64(batch.0);
            }
            Input::PersistFailed { batch, .. } => {
                self.u64(12);
                self.u64(batch.0);
            }
            Input::WebhookResult { post, result, .. } => {
                self.u64(13);
                self.u64(post.0);
                self.u64(result.as_ref().map_or(0, |c| u64::from(*c)));
            }
            Input::SpoolScanned { files, live } => {
                self.u64(14);
                self.u64(files.as_ref().map_or(u64::MAX, |f| f.len() as u64));
                self.u64(live.as_ref().map_or(u64::MAX, |f| f.len() as u64));
            }
            Input::Admin { request, .. } => {
                self.u64(15);
                self.u64(request.0);
            }
            Input::Drain => self.u64(16),
        }
    }

    pub fn output(&mut self, o: &Output) {
        match o {
            Output::Persist { batch, ops } => {
                self.u64(101);
                self.u64(batch.0);
                for op in ops {
                    self.op(op);
                }
            }
            Output::SubmitAccepted { request, receipt } => {
                self.u64(102);
                self.u64(request.0);
                self.u128(receipt.id.0);
            }
            Output::SubmitRejected { request, error } => {
                self.u64(103);
                self.u64(request.0);
                self.bytes(error.code.as_bytes());
            }
            Output::Resolve { query, name, .. } => {
                self.u64(104);
                self.u64(query.0);
                self.bytes(name.as_bytes());
            }
            Output::Connect { conn, ip, .. } => {
                self.u64(105);
                self.u64(conn.0);
                self.bytes(ip.to_string().as_bytes());
            }
            Output::Send { conn, bytes } => {
                self.u64(106);
                self.u64(conn.0);
                self.bytes(bytes);
            }
            Output::SendSpool { conn, message } => {
                self.u64(107);
                self.u64(conn.0);
                self.u128(message.0);
            }
            Output::StartTls { conn, .. } => {
                self.u64(108);
                self.u64(conn.0);
            }
            Output::Close { conn } => {
                self.u64(109);
                self.u64(conn.0);
            }
            Output::PostWebhook {
                post,
                event,
                body,
                headers,
                ..
            } => {
                self.u64(110);
                self.u64(post.0);
                self.u128(event.0);
                self.bytes(body.as_bytes());
                for (k, v) in headers {
                    self.bytes(k.as_bytes());
                    self.bytes(v.as_bytes());
                }
            }
            Output::DeleteSpool { message } => {
                self.u64(111);
                self.u128(message.0);
            }
            Output::ScanSpool => self.u64(112),
            Output::DeleteOrphans { messages } => {
                self.u64(113);
                for m in messages {
                    self.u128(m.0);
                }
            }
            Output::AdminAnswer { request, result } => {
                self.u64(114);
                self.u64(request.0);
                self.u64(u64::from(result.is_ok()));
            }
        }
    }

    fn op(&mut self, op: &StoreOp) {
        match op {
            StoreOp::InsertMessage { message, spool } => {
                self.u64(1);
                self.u128(message.id.0);
                self.bytes(spool);
            }
            StoreOp::UpdateRecipient {
                message,
                idx,
                status,
                attempts,
                next_attempt_at,
                ..
            } => {
                self.u64(2);
                self.u128(message.0);
                self.u64(u64::from(*idx));
                self.u64(*status as u64);
                self.u64(u64::from(*attempts));
                self.u64(next_attempt_at.map_or(0, |t| t.0));
            }
            StoreOp::InsertAttempt(a) => {
                self.u64(3);
                self.u128(a.message.0);
                self.u64(u64::from(a.attempt));
                self.u64(a.status as u64);
                self.bytes(a.response.as_bytes());
            }
            StoreOp::InsertEvent(e) => {
                self.u64(4);
                self.u64(e.seq);
                self.bytes(e.payload.as_bytes());
            }
            StoreOp::AddSuppression(s) => {
                self.u64(5);
                self.bytes(s.address.as_bytes());
            }
            StoreOp::RemoveSuppression { address, .. } => {
                self.u64(6);
                self.bytes(address.as_bytes());
            }
            StoreOp::UpsertEndpoint(e) => {
                self.u64(7);
                self.u128(e.id.0);
            }
            StoreOp::DeleteEndpoint { endpoint, .. } => {
                self.u64(8);
                self.u128(endpoint.0);
            }
            StoreOp::UpsertWebhookDelivery(d) => {
                self.u64(9);
                self.u128(d.event.0);
                self.u64(d.state as u64);
                self.u64(u64::from(d.attempts));
            }
            StoreOp::InsertWebhookAttempt(a) => {
                self.u64(10);
                self.u128(a.event.0);
                self.u64(u64::from(a.attempt));
            }
        }
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn printable(b: &[u8]) -> String {
    clip(
        &String::from_utf8_lossy(b)
            .replace('\r', "\\r")
            .replace('\n', "\\n"),
        200,
    )
}

pub fn fmt_op(op: &StoreOp) -> String {
    match op {
        StoreOp::InsertMessage { message, spool } => format!(
            "InsertMessage {} from {} rcpts [{}] spool {}B",
            message.id,
            message.mail_from,
            message
                .recipients
                .iter()
                .map(|r| format!("{}:{}={}", r.idx, r.address, r.status.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
            spool.len()
        ),
        StoreOp::UpdateRecipient {
            message,
            idx,
            status,
            attempts,
            next_attempt_at,
            reason,
            ..
        } => format!(
            "UpdateRecipient {message}#{idx} -> {} attempts={attempts} next={next_attempt_at:?} reason={:?}",
            status.as_str(),
            reason.as_deref().map(|r| clip(r, 60))
        ),
        StoreOp::InsertAttempt(a) => format!(
            "InsertAttempt {}#{} n={} {} stage={:?} code={:?} {:?} cat={:?} breaker_failure={} {:?}",
            a.message,
            a.idx,
            a.attempt,
            a.status.as_str(),
            a.stage,
            a.smtp_code,
            a.enhanced_code,
            a.category,
            a.breaker_failure,
            clip(&a.response, 60)
        ),
        StoreOp::InsertEvent(e) => format!(
            "InsertEvent seq={} {} {} {}#{}",
            e.seq,
            e.id,
            e.kind.as_str(),
            e.message,
            e.idx
        ),
        StoreOp::AddSuppression(s) => format!(
            "AddSuppression t{} {} {:?}",
            s.tenant.0, s.address, s.source
        ),
        StoreOp::RemoveSuppression { tenant, address } => {
            format!("RemoveSuppression t{} {address}", tenant.0)
        }
        StoreOp::UpsertEndpoint(e) => format!("UpsertEndpoint {} t{} {}", e.id, e.tenant.0, e.url),
        StoreOp::DeleteEndpoint { tenant, endpoint } => {
            format!("DeleteEndpoint {endpoint} t{}", tenant.0)
        }
        StoreOp::UpsertWebhookDelivery(d) => format!(
            "UpsertWebhookDelivery {} {} {:?} attempts={} next={:?}",
            d.endpoint, d.event, d.state, d.attempts, d.next_attempt_at
        ),
        StoreOp::InsertWebhookAttempt(a) => format!(
            "InsertWebhookAttempt {} {} n={} status={:?} err={:?}",
            a.endpoint, a.event, a.attempt, a.status_code, a.error
        ),
    }
}

pub fn fmt_input(i: &Input) -> String {
    match i {
        Input::Tick => "Tick".into(),
        Input::Recovered(s) => format!(
            "Recovered messages={} suppressions={} attempts={} last_seq={} endpoints={} pending_deliveries={} idempotency={}",
            s.messages.len(),
            s.suppressions.len(),
            s.recent_attempts.len(),
            s.last_event_seq,
            s.endpoints.len(),
            s.pending_deliveries.len(),
            s.idempotency.len()
        ),
        Input::Submit(s) => clip(&format!("Submit {:?}", s), 400),
        Input::Received { conn, bytes } => format!("Received c{} {:?}", conn.0, printable(bytes)),
        Input::Admin { request, command } => {
            format!("Admin r{} {:?}", request.0, command).replace(|c: char| c.is_control(), " ")
        }
        other => clip(&format!("{other:?}"), 300),
    }
}

pub fn fmt_output(o: &Output) -> String {
    match o {
        Output::Persist { batch, ops } => {
            let mut s = format!("Persist b{}:", batch.0);
            for op in ops {
                s.push_str("\n      ");
                s.push_str(&fmt_op(op));
            }
            s
        }
        Output::Send { conn, bytes } => format!("Send c{} {:?}", conn.0, printable(bytes)),
        Output::PostWebhook {
            post,
            endpoint,
            event,
            url,
            ..
        } => format!("PostWebhook p{} {endpoint} {event} {url}", post.0),
        other => clip(&format!("{other:?}"), 300),
    }
}

/// Readable trace lines.
pub struct Lines {
    /// Keep everything (print at the end) ...
    pub all: bool,
    /// ... or only this many of the latest.
    pub tail: usize,
    pub lines: VecDeque<String>,
}

impl Lines {
    pub fn on(&self) -> bool {
        self.all || self.tail > 0
    }
    pub fn push(&mut self, now: Time, start: Time, s: String) {
        let ms = now.0.saturating_sub(start.0);
        self.lines
            .push_back(format!("[{:>6}.{:03}s] {s}", ms / 1000, ms % 1000));
        if !self.all && self.lines.len() > self.tail {
            self.lines.pop_front();
        }
    }
}
