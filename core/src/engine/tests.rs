//! Engine tests against a small scripted world: DNS answers, SMTP servers that parse the
//! engine's (pipelined) commands and answer per behaviour, and a store that acknowledges.

use core::net::{IpAddr, Ipv4Addr};
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::ids::RequestId;
use crate::io::{ComposeRequest, DnsAnswer, DnsError, Submission, SubmissionContent};
use crate::model::{EventKind, Snapshot, StoreOp};

const T0: Time = Time(1_800_000_000_000);
const MIN: Duration = Duration::from_secs(60);

/// How a simulated server answers.
#[derive(Clone, Debug)]
struct Server {
    greeting: String,
    mail: String,
    /// Per recipient address (lowercase) RCPT reply; default 250.
    rcpt: BTreeMap<String, String>,
    end: String,
    refuse_connect: bool,
    /// Never answer the connect (the engine's connect timeout fires).
    hang_connect: bool,
    pipelining: bool,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            greeting: "220 mx.test ESMTP".into(),
            mail: "250 2.1.0 ok".into(),
            rcpt: BTreeMap::new(),
            end: "250 2.0.0 queued".into(),
            refuse_connect: false,
            hang_connect: false,
            pipelining: true,
        }
    }
}

impl Server {
    /// Refuses every connection.
    fn refusing() -> Server {
        Server {
            refuse_connect: true,
            ..Server::default()
        }
    }

    /// Never answers the connect.
    fn hanging() -> Server {
        Server {
            hang_connect: true,
            ..Server::default()
        }
    }

    fn greeting(mut self, reply: &str) -> Server {
        self.greeting = reply.into();
        self
    }

    fn mail(mut self, reply: &str) -> Server {
        self.mail = reply.into();
        self
    }

    /// Answers RCPT TO `addr` (lowercase) with `reply`.
    fn rcpt(mut self, addr: &str, reply: &str) -> Server {
        self.rcpt.insert(addr.into(), reply.into());
        self
    }

    fn end(mut self, reply: &str) -> Server {
        self.end = reply.into();
        self
    }
}

struct ConnState {
    ip: IpAddr,
    buf: Vec<u8>,
    in_data: bool,
    rcpts: Vec<String>,
}

struct World {
    engine: Engine,
    now: Time,
    /// domain -> MX answer
    mx: BTreeMap<String, Result<Vec<(u16, String)>, DnsError>>,
    /// host -> addresses
    hosts: BTreeMap<String, Vec<IpAddr>>,
    servers: BTreeMap<IpAddr, Server>,
    conns: BTreeMap<ConnId, ConnState>,
    /// Whether store writes succeed.
    store_ok: bool,
    /// Fail the next batch that updates a recipient (once).
    fail_next_update: bool,
    /// Outputs `DeleteSpool` in order, with the store length at that moment.
    deleted_spools: Vec<(MessageId, usize)>,
    store: Vec<StoreOp>,
    accepted: BTreeMap<RequestId, crate::io::Receipt>,
    rejected: BTreeMap<RequestId, crate::io::SubmitError>,
    /// (ip, rcpt) delivered at end of data.
    delivered: Vec<(IpAddr, String)>,
    connects: Vec<(Time, IpAddr, String)>,
    /// Webhook POSTs: (event id header, signature header, body); answered with `hook_status`.
    posts: Vec<(Time, String, String, String)>,
    hook_status: u16,
    admin: BTreeMap<RequestId, Result<crate::io::AdminReply, crate::io::AdminError>>,
    log: Vec<String>,
    next_req: u64,
    /// After every input, forget each destination that may be forgotten at that moment,
    /// instead of at the engine's own sweeps (to show that when it happens is invisible).
    forget_eagerly: bool,
    /// Destination entries dropped that way.
    forgotten: usize,
}

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
}

impl World {
    fn new() -> World {
        Self::with_config(Config::default(), 42)
    }

    fn with_config(cfg: Config, seed: u64) -> World {
        let mut engine = Engine::new(cfg, seed);
        engine.handle(T0, Input::Recovered(Box::default()));
        let mut w = World {
            engine,
            now: T0,
            mx: BTreeMap::new(),
            hosts: BTreeMap::new(),
            servers: BTreeMap::new(),
            conns: BTreeMap::new(),
            store_ok: true,
            fail_next_update: false,
            deleted_spools: Vec::new(),
            store: Vec::new(),
            accepted: BTreeMap::new(),
            rejected: BTreeMap::new(),
            delivered: Vec::new(),
            connects: Vec::new(),
            posts: Vec::new(),
            hook_status: 200,
            admin: BTreeMap::new(),
            log: Vec::new(),
            next_req: 1,
            forget_eagerly: false,
            forgotten: 0,
        };
        w.add_domain(
            "example.org",
            &[(10, "mx1.example.org", ip(1))],
            Server::default(),
        );
        w
    }

    /// The world with `domain` served by `mxs` (preference, host, address), each run as
    /// `server`.
    fn with_domain(mut self, domain: &str, mxs: &[(u16, &str, IpAddr)], server: Server) -> World {
        self.add_domain(domain, mxs, server);
        self
    }

    /// The world with the server at `ip` answering as `server`.
    fn with_server(mut self, ip: IpAddr, server: Server) -> World {
        self.servers.insert(ip, server);
        self
    }

    fn add_domain(&mut self, domain: &str, mxs: &[(u16, &str, IpAddr)], server: Server) {
        self.mx.insert(
            domain.into(),
            Ok(mxs.iter().map(|(p, h, _)| (*p, h.to_string())).collect()),
        );
        for (_, h, a) in mxs {
            self.hosts.insert(h.to_string(), vec![*a]);
            self.servers.insert(*a, server.clone());
        }
    }

    fn submit_to(&mut self, to: &[&str]) -> RequestId {
        let req = RequestId(self.next_req);
        self.next_req += 1;
        let sub = Submission {
            request: req,
            tenant: TenantId(1),
            tenant_domain: "sender.test".into(),
            source: crate::model::Source::Api,
            idempotency_key: None,
            content: SubmissionContent::Compose(ComposeRequest {
                from: "news@sender.test".into(),
                to: to.iter().map(|s| s.to_string()).collect(),
                subject: "hello".into(),
                text: Some("hi there\r\n.leading dot\r\n".into()),
                ..ComposeRequest::default()
            }),
        };
        self.input(Input::Submit(sub));
        req
    }

    fn input(&mut self, input: Input) {
        self.log
            .push(format!("{:?} <- {:?}", self.now, input_summary(&input)));
        self.handle(input);
        self.drain();
    }

    fn handle(&mut self, input: Input) {
        self.engine.handle(self.now, input);
        if self.forget_eagerly {
            let (now, before) = (self.now, self.engine.dests.len());
            self.engine.dests.retain(|_, d| !d.is_forgettable(now));
            self.forgotten += before - self.engine.dests.len();
        }
    }

    /// Carries out outputs until the engine has nothing more to say right now.
    fn drain(&mut self) {
        let mut queue: Vec<Input> = Vec::new();
        loop {
            while let Some(out) = self.engine.poll_output() {
                self.log
                    .push(format!("{:?} -> {}", self.now, output_summary(&out)));
                self.carry_out(out, &mut queue);
            }
            if queue.is_empty() {
                break;
            }
            for i in std::mem::take(&mut queue) {
                self.log
                    .push(format!("{:?} <- {:?}", self.now, input_summary(&i)));
                self.handle(i);
            }
        }
    }

    fn carry_out(&mut self, out: Output, queue: &mut Vec<Input>) {
        match out {
            Output::Persist { batch, ops } => {
                let update = ops
                    .iter()
                    .any(|o| matches!(o, StoreOp::UpdateRecipient { .. }));
                if update && self.fail_next_update {
                    self.fail_next_update = false;
                    queue.push(Input::PersistFailed {
                        batch,
                        error: "database is locked".into(),
                    });
                } else if self.store_ok {
                    self.store.extend(ops);
                    queue.push(Input::Persisted { batch });
                } else {
                    queue.push(Input::PersistFailed {
                        batch,
                        error: "disk full".into(),
                    });
                }
            }
            Output::SubmitAccepted { request, receipt } => {
                self.accepted.insert(request, receipt);
            }
            Output::SubmitRejected { request, error } => {
                self.rejected.insert(request, error);
            }
            Output::Resolve { query, name, kind } => {
                let result = match kind {
                    QueryKindAlias::Mx => match self.mx.get(&name) {
                        Some(Ok(v)) => Ok(DnsAnswer::Mx(v.clone())),
                        Some(Err(e)) => Err(e.clone()),
                        None => Err(DnsError::NxDomain),
                    },
                    QueryKindAlias::Address => match self.hosts.get(&name) {
                        Some(v) => Ok(DnsAnswer::Address(v.clone())),
                        None => Err(DnsError::NxDomain),
                    },
                };
                queue.push(Input::Resolved { query, result });
            }
            Output::Connect { conn, ip, mx, .. } => {
                self.connects.push((self.now, ip, mx));
                let server = self.servers.get(&ip).cloned().unwrap_or(Server {
                    refuse_connect: true,
                    ..Server::default()
                });
                if server.hang_connect {
                    return;
                }
                if server.refuse_connect {
                    queue.push(Input::ConnectFailed {
                        conn,
                        error: "connection refused".into(),
                    });
                } else {
                    self.conns.insert(
                        conn,
                        ConnState {
                            ip,
                            buf: Vec::new(),
                            in_data: false,
                            rcpts: Vec::new(),
                        },
                    );
                    queue.push(Input::Connected { conn });
                    queue.push(Input::Received {
                        conn,
                        bytes: format!("{}\r\n", server.greeting).into_bytes(),
                    });
                }
            }
            Output::Send { conn, bytes } => {
                let reply = self.server_input(conn, &bytes);
                if !reply.is_empty() {
                    queue.push(Input::Received { conn, bytes: reply });
                }
            }
            Output::SendSpool { conn, .. } => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                c.in_data = false;
                let server = self.servers.get(&c.ip).cloned().unwrap_or_default();
                if server.end.starts_with('2') {
                    for r in c.rcpts.drain(..) {
                        self.delivered.push((c.ip, r));
                    }
                }
                c.rcpts.clear();
                queue.push(Input::Received {
                    conn,
                    bytes: format!("{}\r\n", server.end).into_bytes(),
                });
            }
            Output::StartTls { conn, .. } => queue.push(Input::TlsEstablished {
                conn,
                verified: false,
            }),
            Output::PostWebhook {
                post,
                headers,
                body,
                ..
            } => {
                let h = |n: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k == n)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                self.posts.push((
                    self.now,
                    h("webhook-id"),
                    h("webhook-signature"),
                    body.to_string(),
                ));
                queue.push(Input::WebhookResult {
                    post,
                    result: Ok(self.hook_status),
                    duration_ms: 3,
                });
            }
            Output::AdminAnswer { request, result } => {
                self.admin.insert(request, result);
            }
            Output::Close { conn } => {
                self.conns.remove(&conn);
            }
            Output::DeleteSpool { message } => {
                self.deleted_spools.push((message, self.store.len()))
            }
            _ => {}
        }
    }

    /// The server side: answers each complete command line.
    fn server_input(&mut self, conn: ConnId, bytes: &[u8]) -> Vec<u8> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        let server = self.servers.get(&c.ip).cloned().unwrap_or_default();
        c.buf.extend_from_slice(bytes);
        let mut out = String::new();
        while let Some(pos) = c.buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = c.buf.drain(..pos + 2).collect();
            let line = String::from_utf8_lossy(&line[..pos]).to_string();
            if c.in_data {
                continue;
            }
            let upper = line.to_ascii_uppercase();
            if upper.starts_with("EHLO") {
                if server.pipelining {
                    out.push_str(
                        "250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 50000000\r\n",
                    );
                } else {
                    out.push_str("250-mx.test\r\n250 SIZE 50000000\r\n");
                }
            } else if upper.starts_with("HELO") {
                out.push_str("250 mx.test\r\n");
            } else if upper.starts_with("MAIL FROM") {
                c.rcpts.clear();
                out.push_str(&server.mail);
                out.push_str("\r\n");
            } else if upper.starts_with("RCPT TO:<") {
                let addr = line[9..].split('>').next().unwrap_or("").to_lowercase();
                let reply = server
                    .rcpt
                    .get(&addr)
                    .cloned()
                    .unwrap_or_else(|| "250 2.1.5 ok".into());
                if reply.starts_with('2') {
                    c.rcpts.push(addr);
                }
                out.push_str(&reply);
                out.push_str("\r\n");
            } else if upper == "DATA" {
                if c.rcpts.is_empty() {
                    out.push_str("554 5.5.1 no valid recipients\r\n");
                } else {
                    c.in_data = true;
                    out.push_str("354 go ahead\r\n");
                }
            } else if upper == "RSET" {
                c.rcpts.clear();
                out.push_str("250 ok\r\n");
            } else if upper == "QUIT" {
                out.push_str("221 bye\r\n");
            } else if upper == "." {
                out.push_str("250 ok\r\n");
            } else {
                out.push_str("500 5.5.2 what?\r\n");
            }
        }
        out.into_bytes()
    }

    /// Advances virtual time through every timer up to `until`.
    fn run_until(&mut self, until: Time) {
        self.drain();
        let mut guard = 0;
        while let Some(t) = self.engine.poll_timeout() {
            if t > until {
                break;
            }
            guard += 1;
            assert!(guard < 100_000, "timer storm");
            self.now = self.now.max(t);
            self.input(Input::Tick);
        }
        self.now = self.now.max(until);
        self.input(Input::Tick);
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now.plus(d);
        self.run_until(until);
    }

    fn events(&self) -> Vec<(EventKind, String)> {
        self.store
            .iter()
            .filter_map(|op| match op {
                StoreOp::InsertEvent(e) => {
                    let v: serde_json::Value = serde_json::from_str(&e.payload).unwrap_or_default();
                    Some((
                        e.kind,
                        v["data"]["recipient"].as_str().unwrap_or("").to_string(),
                    ))
                }
                _ => None,
            })
            .collect()
    }

    fn final_status(&self, addr: &str) -> Option<RecipientStatus> {
        // The last UpdateRecipient for the address's recipient (one message per test
        // unless stated otherwise), or the status it was inserted with.
        let mut status = None;
        let mut key = None;
        for op in &self.store {
            match op {
                StoreOp::InsertMessage { message, .. } => {
                    for r in &message.recipients {
                        if r.address == addr {
                            key = Some((message.id, r.idx));
                            status = Some(r.status);
                        }
                    }
                }
                StoreOp::UpdateRecipient {
                    message,
                    idx,
                    status: s,
                    ..
                } if key == Some((*message, *idx)) => status = Some(*s),
                _ => {}
            }
        }
        status
    }

    fn admin_command(&mut self, request: RequestId, command: crate::io::AdminCommand) {
        self.input(Input::Admin { request, command });
    }

    fn force_breaker(
        &mut self,
        request: RequestId,
        domain: &str,
        state: crate::io::ForcedBreakerState,
    ) {
        let domain = domain.into();
        self.admin_command(
            request,
            crate::io::AdminCommand::ForceBreaker { domain, state },
        );
    }

    /// Asserts the last status stored for `addr` (see [`World::final_status`]).
    #[track_caller]
    fn assert_status(&self, addr: &str, want: RecipientStatus) {
        assert_eq!(
            self.final_status(addr),
            Some(want),
            "status of {addr}: {:#?}",
            self.log
        );
    }

    fn suppressed(&self) -> BTreeSet<String> {
        self.store
            .iter()
            .filter_map(|op| match op {
                StoreOp::AddSuppression(s) => Some(s.address.clone()),
                _ => None,
            })
            .collect()
    }

    fn attempts(&self) -> Vec<crate::model::AttemptRecord> {
        self.store
            .iter()
            .filter_map(|op| match op {
                StoreOp::InsertAttempt(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }
}

use crate::io::QueryKind as QueryKindAlias;

fn input_summary(i: &Input) -> String {
    match i {
        Input::Received { conn, bytes } => {
            format!("Received({conn:?}, {:?})", String::from_utf8_lossy(bytes))
        }
        Input::Submit(s) => format!("Submit({:?})", s.request),
        other => format!("{other:?}").chars().take(200).collect(),
    }
}

fn output_summary(o: &Output) -> String {
    match o {
        Output::Send { conn, bytes } => {
            format!("Send({conn:?}, {:?})", String::from_utf8_lossy(bytes))
        }
        Output::Persist { batch, ops } => format!("Persist({batch:?}, {} ops)", ops.len()),
        other => format!("{other:?}").chars().take(200).collect(),
    }
}

#[test]
fn delivers_and_acknowledges_only_after_persist() {
    let mut w = World::new();
    w.store_ok = true;
    let req = w.submit_to(&["alice@example.org", "bob@example.org"]);
    assert!(w.accepted.contains_key(&req), "{:#?}", w.log);
    w.run_for(MIN);
    assert_eq!(w.delivered.len(), 2, "{:#?}", w.log);
    w.assert_status("alice@example.org", RecipientStatus::Delivered);
    // One transaction for both recipients of the domain.
    assert_eq!(w.connects.len(), 1);
    let kinds: Vec<EventKind> = w.events().into_iter().map(|e| e.0).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Queued,
            EventKind::Queued,
            EventKind::Delivered,
            EventKind::Delivered
        ]
    );
    // Spool deleted after the final batch.
    assert_eq!(w.engine.pending_recipients(), 0);
}

#[test]
fn store_failure_refuses_submission_and_keeps_nothing() {
    let mut w = World::new();
    w.store_ok = false;
    let req = w.submit_to(&["alice@example.org"]);
    let err = w.rejected.get(&req).cloned();
    assert_eq!(
        err.map(|e| e.kind),
        Some(crate::io::SubmitErrorKind::Unavailable)
    );
    assert!(w.accepted.is_empty());
    w.store_ok = true;
    w.run_for(10 * MIN);
    assert!(
        w.connects.is_empty(),
        "nothing may be sent for an unstored message"
    );
    assert_eq!(w.engine.pending_recipients(), 0);
}

#[test]
fn temporary_failure_defers_then_delivers() {
    let mut w = World::new().with_server(
        ip(1),
        Server::default().rcpt("alice@example.org", "450 4.2.1 try later"),
    );
    w.submit_to(&["alice@example.org"]);
    w.run_for(Duration::from_secs(10));
    w.assert_status("alice@example.org", RecipientStatus::Deferred);
    w.servers.insert(ip(1), Server::default());
    w.run_for(2 * MIN);
    w.assert_status("alice@example.org", RecipientStatus::Delivered);
    let attempts = w.attempts();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].smtp_code, Some(450));
    // Retried after about a minute (1m +-10%).
    let gap = attempts[1].started_at.since(attempts[0].started_at);
    assert!(
        gap >= Duration::from_secs(54) && gap <= Duration::from_secs(67),
        "{gap:?}"
    );
}

#[test]
fn hard_bounce_suppresses_and_next_send_is_suppressed_without_smtp() {
    let mut w = World::new().with_server(
        ip(1),
        Server::default()
            .rcpt("dead@example.org", "550 5.1.1 user unknown")
            .rcpt(
                "blocked@example.org",
                "550 5.7.1 blocked using a DNS block list",
            ),
    );
    w.submit_to(&["dead@example.org", "blocked@example.org", "ok@example.org"]);
    w.run_for(MIN);
    w.assert_status("dead@example.org", RecipientStatus::Bounced);
    w.assert_status("blocked@example.org", RecipientStatus::Bounced);
    w.assert_status("ok@example.org", RecipientStatus::Delivered);
    assert_eq!(w.suppressed(), ["dead@example.org".to_string()].into());
    let connects = w.connects.len();
    let req = w.submit_to(&["Dead@example.org"]);
    assert_eq!(
        w.accepted.get(&req).map(|r| r.recipients[0].status),
        Some(RecipientStatus::Suppressed)
    );
    w.run_for(MIN);
    assert_eq!(
        w.connects.len(),
        connects,
        "a suppressed address is never contacted"
    );
    assert!(w.events().iter().any(|(k, _)| *k == EventKind::Suppressed));
}

#[test]
fn end_of_data_rejection_of_several_recipients_does_not_suppress() {
    let mut w = World::new().with_server(ip(1), Server::default().end("550 5.1.1 user unknown"));
    w.submit_to(&["a@example.org", "b@example.org"]);
    w.run_for(MIN);
    w.assert_status("a@example.org", RecipientStatus::Bounced);
    assert!(
        w.suppressed().is_empty(),
        "a shared reply is not about one mailbox"
    );
    w.submit_to(&["c@example.org"]);
    w.run_for(MIN);
    assert_eq!(w.suppressed(), ["c@example.org".to_string()].into());
}

#[test]
fn first_mx_down_second_used() {
    let mut w = World::new()
        .with_domain(
            "two.test",
            &[(10, "mx1.two.test", ip(20)), (20, "mx2.two.test", ip(21))],
            Server::default(),
        )
        .with_server(ip(20), Server::refusing());
    w.submit_to(&["x@two.test"]);
    w.run_for(MIN);
    w.assert_status("x@two.test", RecipientStatus::Delivered);
    let ips: Vec<IpAddr> = w.connects.iter().map(|c| c.1).collect();
    assert_eq!(ips, vec![ip(20), ip(21)]);
    assert_eq!(w.attempts()[0].mx.as_deref(), Some("mx2.two.test"));
}

#[test]
fn greeting_4xx_moves_to_next_mx() {
    let mut w = World::new()
        .with_domain(
            "g.test",
            &[(10, "mx1.g.test", ip(30)), (20, "mx2.g.test", ip(31))],
            Server::default(),
        )
        .with_server(ip(30), Server::default().greeting("421 4.3.2 too busy"));
    w.submit_to(&["x@g.test"]);
    w.run_for(MIN);
    w.assert_status("x@g.test", RecipientStatus::Delivered);
}

#[test]
fn null_mx_and_nxdomain_bounce_and_suppress() {
    let mut w = World::new();
    w.mx.insert("null.test".into(), Ok(vec![(0, ".".into())]));
    w.mx.insert("gone.test".into(), Err(DnsError::NxDomain));
    w.submit_to(&["a@null.test", "b@gone.test"]);
    w.run_for(MIN);
    w.assert_status("a@null.test", RecipientStatus::Bounced);
    w.assert_status("b@gone.test", RecipientStatus::Bounced);
    assert!(w.connects.is_empty());
}

#[test]
fn servfail_defers() {
    let mut w = World::new();
    w.mx.insert("flaky.test".into(), Err(DnsError::ServFail));
    w.submit_to(&["a@flaky.test"]);
    w.run_for(Duration::from_secs(5));
    w.assert_status("a@flaky.test", RecipientStatus::Deferred);
    assert!(w.suppressed().is_empty());
}

#[test]
fn no_mx_falls_back_to_address_records() {
    let mut w = World::new();
    w.mx.insert("bare.test".into(), Err(DnsError::NoRecords));
    w.hosts.insert("bare.test".into(), vec![ip(40)]);
    w.servers.insert(ip(40), Server::default());
    w.submit_to(&["a@bare.test"]);
    w.run_for(MIN);
    w.assert_status("a@bare.test", RecipientStatus::Delivered);
}

#[test]
fn breaker_opens_blocks_and_probes() {
    let mut w = World::new()
        .with_domain(
            "down.test",
            &[(10, "mx.down.test", ip(50))],
            Server::default(),
        )
        .with_server(ip(50), Server::refusing());
    for i in 0..8 {
        w.submit_to(&[&format!("u{i}@down.test")]);
    }
    w.run_for(Duration::from_secs(5));
    // Five connection failures open the breaker; the other messages wait.
    assert_eq!(w.connects.len(), 5, "{:#?}", w.log);
    let b = w.engine.breaker("down.test", w.now);
    assert_eq!(b.as_ref().map(|b| b.state.as_str()), Some("open"));
    assert!(b.is_some_and(|b| b.explanation.contains("next probe at")));
    w.run_for(4 * MIN);
    assert_eq!(w.connects.len(), 5, "no connection while open");
    // Recovery: the probe succeeds and the breaker closes; everything is delivered.
    w.servers.insert(ip(50), Server::default());
    w.run_for(30 * MIN);
    // Closed, with nothing counted: the idle destination may already be forgotten.
    assert_eq!(
        w.engine
            .breaker("down.test", w.now)
            .map_or("closed".into(), |b| b.state),
        "closed"
    );
    for i in 0..8 {
        w.assert_status(&format!("u{i}@down.test"), RecipientStatus::Delivered);
    }
}

#[test]
fn expires_after_max_age_in_every_state() {
    let cfg = Config {
        max_age: Duration::from_secs(3600),
        ..Config::default()
    };
    let mut w = World::with_config(cfg, 1)
        .with_server(ip(1), Server::default().mail("451 4.3.0 try later"));
    w.submit_to(&["a@example.org"]);
    w.run_for(Duration::from_secs(7200));
    w.assert_status("a@example.org", RecipientStatus::Failed);
    let failed = w.store.iter().any(|op| {
        matches!(op, StoreOp::UpdateRecipient { status: RecipientStatus::Failed, reason: Some(r), at, .. }
            if r.contains("expired") && *at <= T0.plus(Duration::from_secs(3600 + 600)))
    });
    assert!(
        failed,
        "failed with reason expired within max age + one attempt"
    );
    assert_eq!(w.engine.pending_recipients(), 0);
}

#[test]
fn recovery_resumes_pending_and_warms_up_breakers() {
    let mut w = World::new().with_server(ip(1), Server::refusing());
    for i in 0..6 {
        w.submit_to(&[&format!("r{i}@example.org")]);
    }
    w.run_for(Duration::from_secs(5));
    // Build the snapshot a store would hold.
    let mut snap = Snapshot::default();
    let mut messages: BTreeMap<MessageId, crate::model::MessageRecord> = BTreeMap::new();
    for op in &w.store {
        match op {
            StoreOp::InsertMessage { message, .. } => {
                messages.insert(message.id, message.clone());
            }
            StoreOp::UpdateRecipient {
                message,
                idx,
                status,
                attempts,
                next_attempt_at,
                ..
            } => {
                if let Some(r) = messages
                    .get_mut(message)
                    .and_then(|m| m.recipients.get_mut(*idx as usize))
                {
                    r.status = *status;
                    r.attempts = *attempts;
                    r.next_attempt_at = *next_attempt_at;
                }
            }
            StoreOp::InsertAttempt(a) => snap.recent_attempts.push(a.clone()),
            StoreOp::InsertEvent(e) => snap.last_event_seq = snap.last_event_seq.max(e.seq),
            _ => {}
        }
    }
    for m in messages.values() {
        snap.push_message(m);
    }
    let mut e2 = Engine::new(Config::default(), 7);
    e2.handle(w.now, Input::Recovered(Box::new(snap.clone())));
    assert_eq!(e2.pending_recipients(), 6);
    assert_eq!(
        e2.breaker("example.org", w.now).map(|b| b.state),
        Some("open".into())
    );
    // Event numbering continues.
    assert_eq!(e2.next_seq, snap.last_event_seq + 1);
}

#[test]
fn same_seed_same_outputs() {
    fn run(seed: u64) -> Vec<String> {
        let mut w = World::with_config(Config::default(), seed);
        w.add_domain(
            "many.test",
            &[
                (10, "a.many.test", ip(60)),
                (10, "b.many.test", ip(61)),
                (10, "c.many.test", ip(62)),
            ],
            Server::default(),
        );
        w.servers.insert(
            ip(60),
            Server {
                refuse_connect: true,
                ..Server::default()
            },
        );
        for i in 0..5 {
            w.submit_to(&[&format!("x{i}@many.test"), "a@example.org"]);
        }
        w.run_for(10 * MIN);
        w.log
    }
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4), "the seed should matter (ids, MX order)");
}

#[test]
fn drain_stops_new_work() {
    let mut w = World::new();
    w.input(Input::Drain);
    let req = w.submit_to(&["a@example.org"]);
    assert!(w.rejected.contains_key(&req));
    assert!(w.engine.is_drained());
}

#[test]
fn events_are_posted_signed_after_persistence_and_retried() {
    let mut w = World::new();
    let key = vec![7u8; 32];
    let req = RequestId(999);
    w.admin_command(
        req,
        crate::io::AdminCommand::CreateEndpoint {
            tenant: TenantId(1),
            url: "https://hooks.example.net/outpost".into(),
            events: vec![EventKind::Delivered, EventKind::Bounced],
            secret: key.clone(),
        },
    );
    assert!(
        matches!(w.admin.get(&req), Some(Ok(_))),
        "{:?} {:#?}",
        w.admin,
        w.log
    );
    w.hook_status = 500;
    w.submit_to(&["alice@example.org"]);
    w.run_for(Duration::from_secs(10));
    // Only the subscribed kind (delivered), signed, posted once so far (then failing).
    assert_eq!(w.posts.len(), 1, "{:#?}", w.posts);
    let (_, id, sig, body) = w.posts[0].clone();
    assert!(body.contains("message.delivered"));
    let ts = w.posts[0].0.as_secs();
    assert_eq!(sig, crate::webhook::sign(&key, &id, ts, &body));
    // Retried on the schedule with the same webhook-id until it succeeds.
    w.hook_status = 200;
    w.run_for(2 * MIN);
    assert_eq!(w.posts.len(), 2);
    assert_eq!(w.posts[1].1, id);
    w.run_for(60 * MIN);
    assert_eq!(w.posts.len(), 2, "delivered: no more posts");
    // Another tenant cannot delete the endpoint.
    let eid = match w.admin.get(&req) {
        Some(Ok(crate::io::AdminReply::Endpoint(e))) => e.id,
        other => panic!("{other:?}"),
    };
    w.admin_command(
        RequestId(1000),
        crate::io::AdminCommand::DeleteEndpoint {
            tenant: TenantId(2),
            endpoint: eid,
        },
    );
    assert_eq!(
        w.admin.get(&RequestId(1000)),
        Some(&Err(crate::io::AdminError::NotFound))
    );
}

fn committed_event_seqs(w: &World) -> Vec<u64> {
    w.store
        .iter()
        .filter_map(|op| match op {
            StoreOp::InsertEvent(e) => Some(e.seq),
            _ => None,
        })
        .collect()
}

/// Fuzzer finding: an envelope the SMTP client cannot write (here recovered from the
/// store) must be settled, not left `sending` for ever.
#[test]
fn unwritable_recovered_envelope_is_settled() {
    let mut w = World::new();
    w.submit_to(&["ok@example.org"]);
    let mut record = match w.store.iter().find_map(|op| match op {
        StoreOp::InsertMessage { message, .. } => Some(message.clone()),
        _ => None,
    }) {
        Some(r) => r,
        None => panic!("no message stored"),
    };
    record.id = MessageId(record.id.0 + 1);
    record.recipients[0].address = "\"john doe\"@example.org".into();
    record.recipients[0].status = RecipientStatus::Queued;
    let mut fresh = World::new();
    fresh.engine = Engine::new(Config::default(), 9);
    fresh.engine.handle(
        fresh.now,
        Input::Recovered(Box::new({
            let mut s = Snapshot::default();
            s.push_message(&record);
            s
        })),
    );
    fresh.run_for(MIN);
    assert_eq!(fresh.engine.pending_recipients(), 0, "{:#?}", fresh.log);
    let bounced = fresh.store.iter().any(|op| {
        matches!(op, StoreOp::UpdateRecipient { message, status: RecipientStatus::Bounced, .. } if *message == record.id)
    });
    assert!(bounced);
}

/// Simulator finding E1: a retried batch must not commit its event seqs after later ones.
#[test]
fn retried_batch_keeps_the_outbox_in_seq_order() {
    let mut w = World::new().with_domain(
        "other.test",
        &[(10, "mx.other.test", ip(70))],
        Server::default(),
    );
    w.fail_next_update = true;
    w.submit_to(&["a@example.org"]);
    w.submit_to(&["b@other.test"]);
    w.run_for(MIN);
    w.assert_status("a@example.org", RecipientStatus::Delivered);
    w.assert_status("b@other.test", RecipientStatus::Delivered);
    let seqs = committed_event_seqs(&w);
    assert!(
        seqs.windows(2).all(|p| p[0] < p[1]),
        "commit order {seqs:?}"
    );
    // Each payload carries its (possibly renumbered) seq.
    for op in &w.store {
        if let StoreOp::InsertEvent(e) = op {
            let v: serde_json::Value = serde_json::from_str(&e.payload).unwrap_or_default();
            assert_eq!(v["seq"], e.seq);
        }
    }
}

/// Simulator finding E2: no DeleteSpool while another recipient's final status waits.
#[test]
fn spool_is_deleted_only_after_every_final_status_is_durable() {
    let mut w = World::new().with_domain(
        "other.test",
        &[(10, "mx.other.test", ip(70))],
        Server::default(),
    );
    w.fail_next_update = true;
    w.submit_to(&["a@example.org", "b@other.test"]);
    w.run_for(MIN);
    assert_eq!(w.deleted_spools.len(), 1, "{:#?}", w.log);
    let (_, at_len) = w.deleted_spools[0];
    let terminal_updates = w.store[..at_len]
        .iter()
        .filter(|op| matches!(op, StoreOp::UpdateRecipient { status, .. } if status.is_terminal()))
        .count();
    assert_eq!(
        terminal_updates, 2,
        "both final statuses durable before the spool goes"
    );
}

/// Simulator finding E3: a recipient waiting at its destination is checked against
/// suppressions added meanwhile.
#[test]
fn waiting_recipient_suppressed_meanwhile_is_never_contacted() {
    let mut w = World::new();
    w.force_breaker(
        RequestId(500),
        "example.org",
        crate::io::ForcedBreakerState::Open,
    );
    w.submit_to(&["u@example.org", "v@example.org"]);
    w.run_for(MIN);
    assert!(w.connects.is_empty());
    w.admin_command(
        RequestId(501),
        crate::io::AdminCommand::AddSuppression {
            tenant: TenantId(1),
            address: "U@example.org".into(),
            reason: "unsubscribed".into(),
        },
    );
    w.force_breaker(
        RequestId(502),
        "example.org",
        crate::io::ForcedBreakerState::Closed,
    );
    w.run_for(MIN);
    w.assert_status("u@example.org", RecipientStatus::Suppressed);
    w.assert_status("v@example.org", RecipientStatus::Delivered);
    assert!(
        w.delivered.iter().all(|(_, r)| r != "u@example.org"),
        "suppressed address contacted"
    );
}

/// Simulator finding E5: fail-over to the next MX asks the breaker too.
#[test]
fn failover_does_not_bypass_an_open_breaker() {
    let mut w = World::new()
        .with_domain(
            "slow.test",
            &[(10, "mx1.slow.test", ip(80)), (20, "mx2.slow.test", ip(81))],
            Server::default(),
        )
        .with_server(ip(80), Server::hanging());
    w.submit_to(&["a@slow.test"]);
    w.run_for(Duration::from_secs(5));
    assert_eq!(w.connects.len(), 1);
    w.force_breaker(
        RequestId(600),
        "slow.test",
        crate::io::ForcedBreakerState::Open,
    );
    w.run_for(MIN);
    assert_eq!(
        w.connects.len(),
        1,
        "no fail-over connection while open: {:#?}",
        w.log
    );
    w.assert_status("a@slow.test", RecipientStatus::Deferred);
}

/// Simulator finding E6: an endpoint whose write failed is not used.
#[test]
fn endpoint_whose_write_failed_gets_no_events() {
    let mut w = World::new();
    w.store_ok = false;
    w.input(Input::Admin {
        request: RequestId(700),
        command: crate::io::AdminCommand::CreateEndpoint {
            tenant: TenantId(1),
            url: "https://hooks.example.net/x".into(),
            events: vec![],
            secret: vec![1; 32],
        },
    });
    assert!(matches!(w.admin.get(&RequestId(700)), Some(Err(_))));
    w.store_ok = true;
    w.submit_to(&["a@example.org"]);
    w.run_for(MIN);
    assert!(w.posts.is_empty());
    assert!(
        !w.store
            .iter()
            .any(|op| matches!(op, StoreOp::UpsertWebhookDelivery(_))),
        "no delivery rows for an endpoint the store does not have"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
    /// Whatever the servers answer, every accepted recipient ends terminal by max age
    /// (plus one attempt), statuses never leave a terminal state, and each status change
    /// has exactly one event.
    #[test]
    fn scheduler_never_leaves_a_recipient_past_max_age(
        seed in 0u64..1000,
        replies in proptest::collection::vec(0usize..6, 1..6),
    ) {
        let cfg = Config { max_age: Duration::from_secs(6 * 3600), ..Config::default() };
        let mut w = World::with_config(cfg, seed);
        let options = [
            "250 2.1.5 ok", "450 4.2.1 later", "550 5.1.1 unknown", "421 4.7.0 slow down",
            "552 5.2.2 full", "554 5.7.1 spam",
        ];
        let mut rcpt = BTreeMap::new();
        for (i, r) in replies.iter().enumerate() {
            rcpt.insert(format!("u{i}@example.org"), options[*r].to_string());
        }
        w.servers.insert(ip(1), Server { rcpt, ..Server::default() });
        let addrs: Vec<String> = (0..replies.len()).map(|i| format!("u{i}@example.org")).collect();
        let refs: Vec<&str> = addrs.iter().map(|s| s.as_str()).collect();
        w.submit_to(&refs);
        w.run_for(Duration::from_secs(7 * 3600));
        prop_assert_eq!(w.engine.pending_recipients(), 0);
        for a in &addrs {
            let s = w.final_status(a);
            prop_assert!(s.is_some_and(|s| s.is_terminal()), "{} ended {:?}", a, s);
        }
        // Terminal never overwritten: after a terminal update, no other update for it.
        let mut terminal: BTreeSet<(MessageId, u32)> = BTreeSet::new();
        let mut changes = 0usize;
        for op in &w.store {
            if let StoreOp::UpdateRecipient { message, idx, status, .. } = op {
                prop_assert!(!terminal.contains(&(*message, *idx)));
                if status.is_terminal() { terminal.insert((*message, *idx)); }
                changes += 1;
            }
        }
        let events = w.events().len();
        // One queued event per recipient plus one per status change.
        prop_assert_eq!(events, addrs.len() + changes);
    }
}

/// After a restart the dispatcher knows only pending deliveries; a delivery that failed
/// for good before it is replayed with the event the shell read from the store.
#[test]
fn a_failed_delivery_is_replayable_after_a_restart() {
    let key = vec![9u8; 32];
    let endpoint = crate::model::EndpointRecord {
        id: crate::ids::EndpointId(77),
        tenant: TenantId(1),
        url: "https://hooks.example.net/h".into(),
        events: BTreeSet::new(),
        secrets: vec![crate::model::WebhookSecret {
            key: key.clone(),
            created_at: T0,
            expires_at: None,
        }],
        created_at: T0,
    };
    let event = crate::model::EventRecord {
        seq: 5,
        id: crate::ids::EventId(555),
        tenant: TenantId(1),
        kind: EventKind::Delivered,
        at: T0,
        message: MessageId(1),
        idx: 0,
        payload: std::sync::Arc::from("{\"id\":\"x\"}"),
    };
    let mut engine = Engine::new(Config::default(), 1);
    let snapshot = Snapshot {
        endpoints: vec![endpoint.clone()],
        last_event_seq: 5,
        ..Snapshot::default()
    };
    engine.handle(T0, Input::Recovered(Box::new(snapshot)));
    engine.handle(
        T0,
        Input::Admin {
            request: RequestId(1),
            command: crate::io::AdminCommand::RetryWebhookDelivery {
                tenant: TenantId(1),
                endpoint: endpoint.id,
                event: event.id,
            },
        },
    );
    let mut outs = Vec::new();
    while let Some(o) = engine.poll_output() {
        outs.push(o);
    }
    assert!(
        outs.iter().any(|o| matches!(
            o,
            Output::AdminAnswer {
                result: Err(crate::io::AdminError::NotFound),
                ..
            }
        )),
        "{outs:?}"
    );
    // Another tenant cannot replay it.
    engine.handle(
        T0,
        Input::Admin {
            request: RequestId(2),
            command: crate::io::AdminCommand::ReplayWebhookDelivery {
                tenant: TenantId(2),
                endpoint: endpoint.id,
                event: Box::new(event.clone()),
                attempts: 41,
            },
        },
    );
    let mut outs = Vec::new();
    while let Some(o) = engine.poll_output() {
        outs.push(o);
    }
    assert!(
        outs.iter()
            .all(|o| !matches!(o, Output::PostWebhook { .. })),
        "{outs:?}"
    );
    engine.handle(
        T0,
        Input::Admin {
            request: RequestId(3),
            command: crate::io::AdminCommand::ReplayWebhookDelivery {
                tenant: TenantId(1),
                endpoint: endpoint.id,
                event: Box::new(event.clone()),
                attempts: 41,
            },
        },
    );
    // The pending row is persisted (attempt count kept) and the POST goes out with the
    // event's id as webhook-id.
    let mut persisted_attempts = None;
    let mut posted_id = None;
    while let Some(o) = engine.poll_output() {
        match o {
            Output::Persist { ops, .. } => {
                for op in ops {
                    if let StoreOp::UpsertWebhookDelivery(row) = op {
                        persisted_attempts = Some(row.attempts);
                    }
                }
            }
            Output::PostWebhook { headers, .. } => {
                posted_id = headers
                    .iter()
                    .find(|(k, _)| k == "webhook-id")
                    .map(|(_, v)| v.clone());
            }
            _ => {}
        }
    }
    assert_eq!(persisted_attempts, Some(41));
    assert_eq!(posted_id, Some(event.id.to_string()));
}

/// A signer that prepends a fixed header (and counts calls), or fails.
struct FakeSigner {
    fail: bool,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl crate::signing::MessageSigner for FakeSigner {
    fn sign(&self, domain: &str, message: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.fail {
            return Err("key unreadable".into());
        }
        // Sees the message as a recipient will: un-stuffed.
        assert!(
            contains(message, b"\r\n.leading dot"),
            "the signer must get the un-stuffed message"
        );
        Ok(Some(
            format!("DKIM-Signature: v=1; d={domain};\r\n\tb=fake\r\n").into_bytes(),
        ))
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn signing_world(fail: bool) -> (World, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cfg = Config {
        signer: Some(crate::signing::Signer::new(FakeSigner {
            fail,
            calls: calls.clone(),
        })),
        ..Config::default()
    };
    (World::with_config(cfg, 7), calls)
}

fn stored_spools(w: &World) -> Vec<(u64, Vec<u8>)> {
    w.store
        .iter()
        .filter_map(|op| match op {
            StoreOp::InsertMessage { message, spool } => Some((message.size, spool.to_vec())),
            _ => None,
        })
        .collect()
}

#[test]
fn messages_are_signed_once_at_intake_and_stored_signed() {
    let (mut w, calls) = signing_world(false);
    let req = w.submit_to(&["alice@example.org"]);
    assert!(w.accepted.contains_key(&req), "{:#?}", w.rejected);
    let spools = stored_spools(&w);
    assert_eq!(spools.len(), 1);
    let (size, spool) = &spools[0];
    assert!(
        spool.starts_with(b"DKIM-Signature: v=1; d=sender.test;\r\n\tb=fake\r\nDate: "),
        "{}",
        String::from_utf8_lossy(spool)
    );
    // Still the dot-stuffed wire form, and the recorded size is the signed size.
    assert!(contains(spool, b"\r\n..leading dot"));
    assert_eq!(*size, spool.len() as u64);
    w.run_for(MIN);
    w.assert_status("alice@example.org", RecipientStatus::Delivered);
    // Delivery does not sign again.
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_repeated_idempotency_key_is_not_signed_again() {
    let (mut w, calls) = signing_world(false);
    for n in 0..2 {
        let sub = Submission {
            request: RequestId(100 + n),
            tenant: TenantId(1),
            tenant_domain: "sender.test".into(),
            source: crate::model::Source::Api,
            idempotency_key: Some("k1".into()),
            content: SubmissionContent::Compose(ComposeRequest {
                from: "news@sender.test".into(),
                to: vec!["alice@example.org".into()],
                text: Some("hi\r\n.leading dot\r\n".into()),
                ..ComposeRequest::default()
            }),
        };
        w.input(Input::Submit(sub));
    }
    assert_eq!(w.accepted.len(), 2);
    assert_eq!(stored_spools(&w).len(), 1);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_signing_failure_refuses_the_submission_and_stores_nothing() {
    let (mut w, _) = signing_world(true);
    let req = w.submit_to(&["alice@example.org"]);
    let err = w.rejected.get(&req).cloned();
    assert_eq!(
        err.as_ref().map(|e| (e.kind, e.code.as_str())),
        Some((crate::io::SubmitErrorKind::Unavailable, "signing_failed"))
    );
    assert!(w.accepted.is_empty());
    assert!(w.store.is_empty(), "nothing may be stored: {:?}", w.store);
    w.run_for(10 * MIN);
    assert!(w.connects.is_empty(), "nothing may be sent unsigned");
    assert_eq!(w.engine.pending_recipients(), 0);
}

#[test]
fn messages_per_minute_shapes_a_destination() {
    let mut cfg = Config::default();
    cfg.domains.insert(
        "example.org".into(),
        crate::config::DomainPolicy {
            messages_per_minute: Some(2),
            ..Default::default()
        },
    );
    let mut w = World::with_config(cfg, 42);
    for i in 0..5 {
        w.submit_to(&[&format!("user{i}@example.org")]);
    }
    w.run_for(Duration::from_secs(30));
    assert_eq!(w.delivered.len(), 2, "{:#?}", w.log);
    w.run_for(Duration::from_secs(35));
    assert_eq!(w.delivered.len(), 4);
    w.run_for(MIN);
    assert_eq!(w.delivered.len(), 5);
    // No sliding minute ever held more than two transactions.
    let starts: Vec<Time> = w.attempts().iter().map(|a| a.started_at).collect();
    for (i, t) in starts.iter().enumerate() {
        let in_window = starts[i..]
            .iter()
            .filter(|u| u.since(*t) < Duration::from_secs(60))
            .count();
        assert!(in_window <= 2, "{starts:?}");
    }
    // Every recipient was delivered on its first attempt: shaping is not a failure.
    assert!(w.attempts().iter().all(|a| a.attempt == 1));
}

/// What a waiting message costs: a queue of deferred mail holds one `Msg` per message (in
/// the `messages` B-tree, beside its 16-byte id), one `msg_timers` entry, and the heap
/// strings of its Message-ID and recipient addresses; a due recipient one entry in its
/// destination's ready set. Guards the compact layout.
#[test]
fn per_message_memory_stays_compact() {
    use core::mem::size_of;
    assert!(
        size_of::<super::Rcpt>() <= 56,
        "Rcpt {}",
        size_of::<super::Rcpt>()
    );
    assert_eq!(size_of::<super::Rcpts>(), size_of::<super::Rcpt>());
    assert!(
        size_of::<super::Msg>() <= 144,
        "Msg {}",
        size_of::<super::Msg>()
    );
    assert_eq!(size_of::<(Time, MessageId)>(), 32);
    // A ready recipient, in its destination's queue.
    assert_eq!(size_of::<(MessageId, u32)>(), 32);
}

/// Recovery schedules each message once: its expiry (handled before an attempt due at the
/// same time) and its recipients' own next attempts, each at its time.
#[test]
fn recovered_messages_wake_for_expiry_and_each_recipients_attempt() {
    use crate::model::{PendingMessage, PendingRecipient};
    let msg = |n: u128, expires_at: Time| PendingMessage {
        id: MessageId(n),
        tenant: TenantId(1),
        message_id_header: format!("m{n}@example.com").into(),
        mail_from: "s@example.com".into(),
        size: 100,
        smtputf8: false,
        eight_bit: false,
        created_at: T0.minus(MIN),
        expires_at,
    };
    let rcpt = |n: u128, idx: u32, domain: &str, status, next: Option<Time>| PendingRecipient {
        message: MessageId(n),
        idx,
        address: format!("r{idx}@{domain}").into(),
        domain: domain.into(),
        status,
        attempts: 1,
        next_attempt_at: next,
    };
    use RecipientStatus::{Deferred, Delivered, Queued};
    let snapshot = Snapshot {
        messages: vec![
            msg(1, T0.plus(60 * MIN)),
            msg(2, T0.minus(MIN)),
            msg(3, T0.plus(30 * MIN)),
        ],
        recipients: vec![
            rcpt(1, 0, "a.test", Deferred, Some(T0.plus(10 * MIN))),
            rcpt(1, 1, "b.test", Deferred, Some(T0.plus(7 * MIN))),
            rcpt(1, 2, "c.test", Delivered, None),
            rcpt(2, 0, "d.test", Queued, None),
            // Due after its expiry: expires instead.
            rcpt(3, 0, "e.test", Deferred, Some(T0.plus(120 * MIN))),
        ],
        ..Snapshot::default()
    };
    let mut e = Engine::new(Config::default(), 3);
    let step = |e: &mut Engine, now: Time, input: Input| {
        e.handle(now, input);
        let mut resolved = Vec::new();
        let mut failed = Vec::new();
        while let Some(out) = e.poll_output() {
            match out {
                Output::Resolve { name, .. } => resolved.push(name),
                Output::Persist { ops, .. } => {
                    for op in ops {
                        if let StoreOp::UpdateRecipient {
                            message,
                            status: RecipientStatus::Failed,
                            reason: Some(r),
                            ..
                        } = op
                        {
                            assert!(r.contains("expired"), "{r}");
                            failed.push(message.0);
                        }
                    }
                }
                _ => {}
            }
        }
        (resolved, failed)
    };
    assert_eq!(
        step(&mut e, T0, Input::Recovered(Box::new(snapshot))),
        (vec![], vec![2])
    );
    assert_eq!(e.pending_recipients(), 3);
    assert_eq!(e.poll_timeout(), Some(T0.plus(5 * MIN))); // the spool scan
    step(&mut e, T0.plus(5 * MIN), Input::Tick);
    assert_eq!(e.poll_timeout(), Some(T0.plus(7 * MIN)));
    assert_eq!(
        step(&mut e, T0.plus(7 * MIN), Input::Tick),
        (vec!["b.test".to_string()], vec![])
    );
    assert_eq!(e.poll_timeout(), Some(T0.plus(10 * MIN)));
    assert_eq!(
        step(&mut e, T0.plus(10 * MIN), Input::Tick),
        (vec!["a.test".to_string()], vec![])
    );
    assert_eq!(
        step(&mut e, T0.plus(30 * MIN), Input::Tick),
        (vec![], vec![3])
    );
    // Message 1's recipients are with their destinations now: no timer of its own but
    // its expiry.
    assert_eq!(e.msg_timers.len(), 1);
}

/// Interned domains and senders go with the last message holding them (at the next spool
/// scan), so a long-running engine does not keep every domain it ever saw.
#[test]
fn shared_strings_are_released_with_their_messages() {
    let mut w = World::new();
    for i in 0..5 {
        w.submit_to(&[&format!("u{i}@d{i}.invalid"), &format!("v{i}@d{i}.invalid")]);
    }
    w.run_for(MIN);
    // NXDOMAIN: every recipient bounced, every message finished.
    assert!(w.engine.messages.is_empty(), "{:#?}", w.log);
    assert!(!w.engine.names.is_empty());
    w.run_for(6 * MIN); // past the first spool scan
    assert!(w.engine.names.is_empty(), "{:?}", w.engine.names);
}

fn ip_of(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1, (n / 250) as u8, (n % 250) as u8 + 1))
}

/// A daemon that mailed many domains holds no entry for them once they are idle: no
/// recipient, no connection, an expired route, a closed breaker with nothing counted.
#[test]
fn idle_destinations_are_forgotten() {
    let mut w = World::new();
    let n = 300;
    for i in 0..n {
        let (domain, mx) = (format!("d{i}.test"), format!("mx.d{i}.test"));
        w.add_domain(&domain, &[(10, &mx, ip_of(i))], Server::default());
        w.submit_to(&[&format!("u{i}@{domain}")]);
    }
    w.run_for(MIN);
    assert_eq!(w.delivered.len(), n, "{:#?}", w.log);
    assert_eq!(w.engine.pending_recipients(), 0);
    // Their routes are still cached (and reused by a recipient that comes now).
    assert_eq!(w.engine.destinations(), n);
    w.run_until(T0.plus(5 * MIN).minus(Duration::from_secs(1)));
    assert_eq!(w.engine.destinations(), n);
    // The first spool scan, as the routes expire (DNS TTL 5 min).
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.engine.destinations(), 0);
    assert!(
        w.engine
            .timers
            .iter()
            .all(|(_, t)| !matches!(t, Timer::Dest(_)))
    );
    // A domain mailed again starts afresh and is delivered as before.
    w.submit_to(&["again@d7.test"]);
    w.run_for(MIN);
    w.assert_status("again@d7.test", RecipientStatus::Delivered);
    assert_eq!(w.engine.destinations(), 1);
}

/// A breaker that is open or half-open, or closed with failures counted, holds state the
/// next decision needs: its destination is kept, with no recipient left, until a success
/// closes it.
#[test]
fn a_destination_with_breaker_state_is_kept_until_it_closes() {
    let cfg = Config {
        // The recipients give up (expire) while the breaker is still open.
        max_age: 2 * MIN,
        ..Config::default()
    };
    let mut w = World::with_config(cfg, 5)
        .with_domain(
            "down.test",
            &[(10, "mx.down.test", ip(50))],
            Server::default(),
        )
        .with_server(ip(50), Server::refusing())
        .with_domain(
            "flaky.test",
            &[(10, "mx.flaky.test", ip(51))],
            Server::default(),
        )
        .with_server(ip(51), Server::refusing());
    for i in 0..5 {
        w.submit_to(&[&format!("u{i}@down.test")]);
    }
    w.submit_to(&["a@flaky.test"]);
    w.run_for(Duration::from_secs(5));
    let state = |w: &World, d: &str| w.engine.breaker(d, w.now).map(|b| b.state);
    assert_eq!(state(&w, "down.test"), Some("open".into()), "{:#?}", w.log);
    assert_eq!(
        w.engine
            .breaker("flaky.test", w.now)
            .map(|b| (b.state, b.consecutive_failures)),
        Some(("closed".into(), 1))
    );
    w.run_for(3 * MIN);
    assert_eq!(w.engine.pending_recipients(), 0, "every recipient expired");
    // Hours later, with no mail for them: both still there, the open breaker now half-open
    // (its next connection is the one probe), the flaky one still counting one failure.
    w.run_for(180 * MIN);
    assert_eq!(w.engine.destinations(), 2);
    assert_eq!(state(&w, "down.test"), Some("half_open".into()));
    let listed: Vec<String> = w
        .engine
        .breakers(w.now)
        .into_iter()
        .map(|b| b.domain)
        .collect();
    assert_eq!(listed, ["down.test", "flaky.test"]);
    // The destinations recover: the probe and the next attempt succeed and close both
    // breakers; once idle, the destinations are forgotten.
    w.servers.insert(ip(50), Server::default());
    w.servers.insert(ip(51), Server::default());
    w.submit_to(&["back@down.test", "back@flaky.test"]);
    w.run_for(MIN);
    w.assert_status("back@down.test", RecipientStatus::Delivered);
    w.assert_status("back@flaky.test", RecipientStatus::Delivered);
    assert_eq!(state(&w, "down.test"), Some("closed".into()));
    assert!(
        w.engine.breakers(w.now).is_empty(),
        "nothing counted any more"
    );
    w.run_for(15 * MIN);
    assert_eq!(w.engine.destinations(), 0);
}

/// A world that revisits its domains over a few hours: deliveries, a rate-limited
/// domain, a domain whose breaker opens and later closes, NXDOMAIN and SERVFAIL, an
/// operator forcing a breaker. Returns the log, the destinations held at the end, and
/// how many entries were forgotten eagerly.
fn revisiting_world(seed: u64, forgetting: Forgetting) -> (Vec<String>, Vec<String>, usize) {
    let mut cfg = Config::default();
    cfg.domains.insert(
        "slow.test".into(),
        crate::config::DomainPolicy {
            messages_per_minute: Some(2),
            ..Default::default()
        },
    );
    let mut w = World::with_config(cfg, seed)
        .with_domain(
            "slow.test",
            &[(10, "mx.slow.test", ip(70))],
            Server::default(),
        )
        .with_domain(
            "down.test",
            &[(10, "mx1.down.test", ip(71)), (10, "mx2.down.test", ip(72))],
            Server::refusing(),
        )
        .with_domain(
            "busy.test",
            &[(10, "mx.busy.test", ip(73))],
            Server::default().greeting("421 4.3.2 too busy"),
        );
    w.mx.insert("gone.test".into(), Err(DnsError::NxDomain));
    w.mx.insert("flaky.test".into(), Err(DnsError::ServFail));
    w.forget_eagerly = forgetting == Forgetting::Eager;
    w.engine.never_forget_destinations = forgetting == Forgetting::Never;
    for round in 0..6u32 {
        if round == 3 {
            // The down domain comes back: its next probe closes the breaker.
            w.servers.insert(ip(71), Server::default());
            w.servers.insert(ip(72), Server::default());
            w.servers.insert(ip(73), Server::default());
        }
        if round == 4 {
            w.force_breaker(
                RequestId(500),
                "slow.test",
                crate::io::ForcedBreakerState::Open,
            );
        }
        if round == 5 {
            w.force_breaker(
                RequestId(501),
                "slow.test",
                crate::io::ForcedBreakerState::Closed,
            );
        }
        for i in 0..4 {
            w.submit_to(&[
                &format!("r{round}x{i}@slow.test"),
                &format!("r{round}x{i}@example.org"),
            ]);
        }
        w.submit_to(&[
            &format!("r{round}@down.test"),
            &format!("r{round}@busy.test"),
        ]);
        w.submit_to(&[
            &format!("r{round}@gone.test"),
            &format!("r{round}@flaky.test"),
        ]);
        // Long enough between rounds for routes to expire and entries to be forgotten;
        // a tick every minute (in both runs) gives eager forgetting moments between the
        // engine's sweeps, and rounds out of step with the sweeps.
        for _ in 0..23 {
            w.run_for(MIN);
        }
    }
    w.run_for(8 * 60 * MIN);
    let left = w.engine.dests.keys().cloned().collect();
    (w.log, left, w.forgotten)
}

/// The first line where two runs differ, if any.
#[track_caller]
fn assert_same_log(a: &[String], b: &[String]) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x, y, "runs diverge at line {i}");
    }
    assert_eq!(a.len(), b.len(), "one run is longer");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Forgetting {
    /// The engine as it is: idle destinations go at its periodic sweeps.
    Sweep,
    /// Also after every input, as soon as a destination may go.
    Eager,
    /// Never (the engine before destinations were forgotten).
    Never,
}

/// Forgetting a destination is invisible: an engine that forgets idle destinations at
/// its sweeps, one that forgets each at the first moment it may, and one that never
/// forgets give the same outputs for the same inputs. And the same seed gives the same run.
#[test]
fn forgetting_destinations_is_invisible_and_deterministic() {
    let (swept, left, _) = revisiting_world(11, Forgetting::Sweep);
    let (eager, eager_left, forgotten) = revisiting_world(11, Forgetting::Eager);
    let (kept, kept_left, _) = revisiting_world(11, Forgetting::Never);
    assert!(
        forgotten >= 15,
        "the scenario forgets and recreates: {forgotten}"
    );
    assert_same_log(&swept, &eager);
    assert_same_log(&swept, &kept);
    // SERVFAIL for ever: its breaker stays open; every other destination is idle.
    assert_eq!(left, ["flaky.test"]);
    assert_eq!(eager_left, left);
    assert_eq!(kept_left.len(), 6, "{kept_left:?}");
    assert_eq!(
        revisiting_world(11, Forgetting::Sweep).0,
        swept,
        "same seed, same run"
    );
}

/// The message-rate window outlives the route: a destination whose last connection
/// closed after its route expired, with transactions in the last minute, is kept until
/// the minute is over, so that the next message still waits its turn.
#[test]
fn a_destination_is_kept_while_its_rate_window_counts() {
    fn run(forgetting: Forgetting) -> (Vec<String>, Vec<Time>) {
        let mut cfg = Config::default();
        cfg.domains.insert(
            "slow.test".into(),
            crate::config::DomainPolicy {
                messages_per_minute: Some(2),
                ..Default::default()
            },
        );
        let mut w = World::with_config(cfg, 3).with_domain(
            "slow.test",
            &[(10, "mx.slow.test", ip(80))],
            Server::default(),
        );
        w.forget_eagerly = forgetting == Forgetting::Eager;
        w.engine.never_forget_destinations = forgetting == Forgetting::Never;
        let secs = Duration::from_secs;
        w.submit_to(&["a@slow.test"]); // resolves the route: cached until T0 + 5 min
        // Two messages just before the route expires, on a connection that closes (idle)
        // just after it expired.
        w.run_until(T0.plus(4 * MIN + secs(58)));
        w.submit_to(&["b@slow.test"]);
        w.submit_to(&["c@slow.test"]);
        w.run_until(T0.plus(5 * MIN + secs(10)));
        assert!(w.engine.conns.is_empty());
        w.submit_to(&["d@slow.test"]);
        w.run_for(2 * MIN);
        let starts = w.attempts().iter().map(|a| a.started_at).collect();
        (w.log, starts)
    }
    let (kept, starts) = run(Forgetting::Never);
    let secs = Duration::from_secs;
    assert_eq!(starts.len(), 4);
    assert_eq!(
        starts[3],
        T0.plus(5 * MIN + secs(58)),
        "d waits for the minute of b and c"
    );
    let (eager, _) = run(Forgetting::Eager);
    assert_same_log(&kept, &eager);
}
