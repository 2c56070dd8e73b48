//! Destinations: the ready queue per recipient domain, MX routing, the circuit breaker,
//! connections (with fail-over to the next address / MX host), and the SMTP sessions on
//! them. Recipients of one message and one domain go in one transaction.

use core::net::IpAddr;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::breaker::{Admission, Breaker, BreakerState};
use crate::classify::{Category, ReplyContext};
use crate::ids::{ConnId, MessageId, QueryId};
use crate::io::{DnsAnswer, DnsError, Output, QueryKind};
use crate::model::TlsRecord;
use crate::routing::{RouteDecision, order_mx};
use crate::sanitize;
use crate::smtp::{
    ClientSession, Envelope, Reply, SessionAction, SessionConfig, SessionError, SessionEvent,
    Stage, TlsMode, TransactionReport,
};
use crate::status::RecipientStatus;
use crate::time::Time;

use super::outcome::AttemptOutcome;
use super::{Engine, Timer};

/// The window of `DomainPolicy::messages_per_minute`.
const RATE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Default)]
pub(crate) struct Dest {
    /// Recipients due now as (message, idx), oldest message first (ids sort by time).
    /// One flat set, not a set per message: a backlog that comes due at once can be
    /// hundreds of thousands of messages.
    pub ready: BTreeSet<(MessageId, u32)>,
    pub conns: BTreeSet<ConnId>,
    pub route: Route,
    pub breaker: Breaker,
    pub timer_at: Option<Time>,
    /// Start times of the transactions of the last minute, kept only for a destination
    /// with `messages_per_minute`.
    pub sent: VecDeque<Time>,
}

impl Dest {
    /// Whether this entry holds nothing a new `Dest::default()` would not, so that the
    /// engine may forget it and recreate it when the domain next gets a recipient without
    /// any decision coming out differently:
    /// - no recipient ready and no connection (waiting for DNS, connecting or open);
    /// - no `Timer::Dest` pending (it would pump a destination that is no longer there:
    ///   harmless, but a forgotten entry should leave nothing behind);
    /// - the route is not being resolved (the answer must find the `Resolving` state) and
    ///   not cached: an unexpired route is reused by the next connection, where a new
    ///   entry would look the MX up again (another query, another draw of the RNG for the
    ///   order of equal-preference hosts). An expired route is never used again: the next
    ///   connection resolves anew either way. A host address still being looked up
    ///   keeps the entry too: nothing is forgotten while its DNS answer is outstanding;
    /// - the breaker is idle (`Breaker::is_idle`: closed, no failure counted, no probe);
    ///   an open or half-open one, or a failure count that the next failure adds to, is
    ///   kept until a success (or an operator) closes it;
    /// - the message-rate window holds no transaction of the last minute: older ones
    ///   are never counted again (`rate_wait` drops them first). This assumes `now` does
    ///   not go backwards, like every other timer of the engine.
    pub fn is_forgettable(&self, now: Time) -> bool {
        let route_done = match &self.route {
            Route::Unknown => true,
            Route::Resolving => false,
            Route::Ready { hosts, expires } => {
                *expires <= now && !hosts.iter().any(|h| matches!(h.addrs, Addrs::Resolving))
            }
        };
        self.ready.is_empty()
            && self.conns.is_empty()
            && self.timer_at.is_none()
            && route_done
            && self.breaker.is_idle()
            && self
                .sent
                .back()
                .is_none_or(|t| now.since(*t) >= RATE_WINDOW)
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) enum Route {
    #[default]
    Unknown,
    Resolving,
    Ready {
        hosts: Vec<Host>,
        expires: Time,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Host {
    pub name: String,
    pub addrs: Addrs,
}

#[derive(Clone, Debug)]
pub(crate) enum Addrs {
    Unknown,
    Resolving,
    Ready(Vec<IpAddr>),
    Failed,
}

#[derive(Clone, Debug)]
pub(crate) enum PendingQuery {
    Mx { domain: String },
    Addr { domain: String, host: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    WaitingAddr,
    Connecting { deadline: Time },
    Session,
}

/// One transaction's recipients.
#[derive(Clone, Debug)]
pub(crate) struct Txn {
    pub message: MessageId,
    pub idxs: Vec<u32>,
    pub started_at: Time,
    /// Handed to the session (`start_transaction` returned true).
    pub started: bool,
}

/// How to go on after a connection failed before its transaction started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failover {
    /// Opportunistic TLS failed: the same address again, in plaintext (once).
    SamePlaintext,
    NextAddress,
    NextHost,
    /// No fail-over: settle the transaction with the error.
    None,
}

pub(crate) struct Conn {
    pub domain: String,
    pub phase: Phase,
    pub host_idx: usize,
    pub ip_idx: usize,
    pub mx: String,
    pub ip: Option<IpAddr>,
    pub session: Option<ClientSession>,
    pub tls_mode: TlsMode,
    pub tls: TlsRecord,
    pub txn: Option<Txn>,
    /// Transactions completed on this connection.
    pub sent: u32,
    /// This connection is the half-open breaker's one probe.
    pub probe: bool,
    /// The shell reported the connection gone: emit no `Close` for it.
    pub peer_closed: bool,
    /// The session asked to close; the connection goes when its events are handled.
    pub closed: bool,
    pub idle_deadline: Option<Time>,
    pub timer: Option<Time>,
    /// The failure to report if every candidate fails.
    pub last_error: Option<AttemptOutcome>,
    pending_failover: Option<(Failover, AttemptOutcome)>,
}

impl Conn {
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Session
            && self.txn.is_none()
            && !self.closed
            && self.session.as_ref().is_some_and(|s| s.is_idle())
    }
}

impl Engine {
    pub(crate) fn dest_mut(&mut self, domain: &str) -> &mut Dest {
        self.dests.entry(domain.to_string()).or_default()
    }

    fn max_connections(&self, domain: &str) -> usize {
        self.cfg
            .domains
            .get(domain)
            .and_then(|p| p.max_connections)
            .unwrap_or(self.cfg.destination.max_connections)
    }

    fn tls_mode_for(&self, domain: &str) -> TlsMode {
        if self.cfg.domains.get(domain).is_some_and(|p| p.require_tls) {
            TlsMode::Required
        } else {
            TlsMode::Opportunistic
        }
    }

    pub(crate) fn pump_dirty(&mut self, now: Time) {
        while let Some(domain) = self.dirty.pop_first() {
            self.pump(now, &domain);
        }
    }

    /// Hands ready work to idle sessions and opens connections as limits, the route and
    /// the breaker allow.
    fn pump(&mut self, now: Time, domain: &str) {
        if self.draining {
            return;
        }
        loop {
            let Some(dest) = self.dests.get(domain) else {
                return;
            };
            if dest.ready.is_empty() {
                return;
            }
            if let Some(until) = self.rate_wait(now, domain) {
                self.arm_dest_timer(domain, until);
                return;
            }
            let Some(dest) = self.dests.get(domain) else {
                return;
            };
            let idle = dest
                .conns
                .iter()
                .copied()
                .find(|c| self.conns.get(c).is_some_and(|c| c.is_idle()));
            if let Some(conn) = idle {
                match self.take_sendable(now, domain) {
                    Some(txn) => {
                        self.assign(now, conn, txn);
                        continue;
                    }
                    None => return,
                }
            }
            if dest.conns.len() >= self.max_connections(domain) {
                return;
            }
            let stale = match &dest.route {
                Route::Unknown => true,
                Route::Resolving => return,
                Route::Ready { expires, .. } => *expires <= now,
            };
            if stale {
                if self.cfg.relay.is_some() {
                    // A smarthost replaces MX routing; its address is re-resolved like an
                    // MX host's, so a failed lookup is not remembered for ever.
                    self.set_relay_route(now, domain);
                } else {
                    return self.resolve_mx(domain);
                }
            }
            let probe = match self.dests.get(domain).map(|d| d.breaker.admission(now)) {
                Some(Admission::Allowed) => false,
                Some(Admission::Probe) => {
                    if self.dests.get(domain).is_some_and(|d| !d.conns.is_empty()) {
                        return;
                    }
                    true
                }
                Some(Admission::Wait(until)) => {
                    self.arm_dest_timer(domain, until);
                    return;
                }
                None => return,
            };
            let Some(txn) = self.take_sendable(now, domain) else {
                return;
            };
            if probe {
                self.dest_mut(domain).breaker.start_probe();
            }
            self.open_conn(now, domain, txn, probe);
        }
    }

    fn arm_dest_timer(&mut self, domain: &str, until: Time) {
        if until == Time::MAX {
            return;
        }
        let d = self.dest_mut(domain);
        if d.timer_at == Some(until) {
            return;
        }
        let old = d.timer_at.replace(until);
        if let Some(old) = old {
            self.clear_timer(old, &Timer::Dest(domain.to_string()));
        }
        self.set_timer(until, Timer::Dest(domain.to_string()));
    }

    /// When the destination has used its `messages_per_minute` (one message = one
    /// transaction): the time the oldest counted one leaves the sliding minute.
    fn rate_wait(&mut self, now: Time, domain: &str) -> Option<Time> {
        let limit = self.cfg.domains.get(domain)?.messages_per_minute?;
        let d = self.dests.get_mut(domain)?;
        while d.sent.front().is_some_and(|t| now.since(*t) >= RATE_WINDOW) {
            d.sent.pop_front();
        }
        if d.sent.len() >= limit as usize {
            d.sent.front().map(|t| t.plus(RATE_WINDOW))
        } else {
            None
        }
    }

    /// [`take_work`](Self::take_work) for a transaction that will be sent: `None` while
    /// the destination's message rate is used up; counts the transaction otherwise.
    fn take_sendable(&mut self, now: Time, domain: &str) -> Option<Txn> {
        if self.rate_wait(now, domain).is_some() {
            return None;
        }
        let txn = self.take_work(now, domain)?;
        let limited = self
            .cfg
            .domains
            .get(domain)
            .is_some_and(|p| p.messages_per_minute.is_some());
        if limited {
            self.dest_mut(domain).sent.push_back(now);
        }
        Some(txn)
    }

    /// Takes the oldest ready message's recipients (up to the per-transaction limit) and
    /// marks them `sending`.
    fn take_work(&mut self, now: Time, domain: &str) -> Option<Txn> {
        let max = self.cfg.destination.max_recipients_per_transaction;
        loop {
            let dest = self.dests.get_mut(domain)?;
            let &(message, _) = dest.ready.first()?;
            let mut idxs = Vec::new();
            while idxs.len() < max {
                match dest.ready.first() {
                    Some(&(m, idx)) if m == message => {
                        dest.ready.pop_first();
                        idxs.push(idx);
                    }
                    _ => break,
                }
            }
            let Some(m) = self.messages.get_mut(&message) else {
                continue;
            };
            idxs.retain(|&i| m.rcpts.get(i as usize).is_some_and(|r| r.is_waiting()));
            if idxs.is_empty() {
                continue;
            }
            for &i in &idxs {
                if let Some(r) = m.rcpts.get_mut(i as usize) {
                    r.status = RecipientStatus::Sending;
                    r.attempts += 1;
                    // A pending due time is moot now (the message's timer, if it was for
                    // it, fires early and is recomputed).
                    r.next_attempt_at = None;
                }
            }
            let mut txn = Txn {
                message,
                idxs,
                started_at: now,
                started: false,
            };
            self.drop_suppressed(now, &mut txn);
            if txn.idxs.is_empty() {
                continue;
            }
            return Some(txn);
        }
    }

    /// Takes recipients whose address is now on the tenant's suppression list out of a
    /// transaction that has not started: they end `suppressed` without being contacted.
    /// (An address can be suppressed while its recipient waits: another message's hard
    /// bounce, or an operator.)
    fn drop_suppressed(&mut self, now: Time, txn: &mut Txn) {
        let Some(m) = self.messages.get_mut(&txn.message) else {
            return;
        };
        let tenant = m.tenant;
        let suppressions = &self.suppressions;
        let (keep, dropped): (Vec<u32>, Vec<u32>) = txn.idxs.iter().partition(|&&i| {
            m.rcpts
                .get(i as usize)
                .is_none_or(|r| !suppressions.contains(&(tenant, r.address.to_lowercase())))
        });
        if dropped.is_empty() {
            return;
        }
        txn.idxs = keep;
        let mut ops = Vec::new();
        let mut events = Vec::new();
        for idx in dropped {
            let Some(r) = self
                .messages
                .get_mut(&txn.message)
                .and_then(|m| m.rcpts.get_mut(idx as usize))
            else {
                continue;
            };
            // `sending` was never persisted: undo it and the attempt it would have been.
            r.attempts = r.attempts.saturating_sub(1);
            r.status = if r.attempts == 0 {
                RecipientStatus::Queued
            } else {
                RecipientStatus::Deferred
            };
            let info = super::outcome::EventInfo {
                category: Some(Category::Suppressed),
                response: Some("address is on the suppression list".to_string()),
                attempt: r.attempts,
                ..Default::default()
            };
            self.stats.suppressed += 1;
            self.change_status(
                now,
                txn.message,
                idx,
                RecipientStatus::Suppressed,
                None,
                "address is on the suppression list",
                &info,
                &mut ops,
                &mut events,
            );
        }
        self.commit_changes(now, txn.message, ops, events);
    }

    fn envelope(&self, txn: &Txn) -> Option<Envelope> {
        let m = self.messages.get(&txn.message)?;
        Some(Envelope {
            mail_from: m.mail_from.to_string(),
            rcpt_to: txn
                .idxs
                .iter()
                .filter_map(|&i| m.rcpts.get(i as usize).map(|r| r.address.to_string()))
                .collect(),
            size: m.size,
            smtputf8: m.smtputf8,
            eight_bit: m.eight_bit,
        })
    }

    /// Gives a transaction to an idle session.
    fn assign(&mut self, now: Time, conn: ConnId, txn: Txn) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.idle_deadline = None;
        c.txn = Some(txn);
        self.start_assigned(now, conn);
        self.process_session(now, conn);
    }

    /// Hands the connection's assigned transaction to its session (when the session is
    /// ready; otherwise it starts on the session's `Ready`).
    fn start_assigned(&mut self, now: Time, id: ConnId) {
        let env = match self.conns.get(&id).and_then(|c| c.txn.as_ref()) {
            Some(txn) if !txn.started => self.envelope(txn),
            _ => None,
        };
        let Some(env) = env else { return };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let idle = c.session.as_ref().is_some_and(|s| s.is_idle());
        let started = c
            .session
            .as_mut()
            .is_some_and(|s| s.start_transaction(now, env));
        if let Some(t) = c.txn.as_mut() {
            t.started |= started;
        }
        if idle && !started {
            self.settle_refused_envelope(now, id);
        }
    }

    /// The session is ready but refuses the envelope (an address it cannot write as an
    /// SMTP command, e.g. stored by an older version): settle the transaction as a
    /// permanent failure rather than leave its recipients `sending` for ever.
    fn settle_refused_envelope(&mut self, now: Time, id: ConnId) {
        let Some((txn, mx, ip, domain)) = self.conns.get_mut(&id).and_then(|c| {
            c.txn
                .take()
                .map(|t| (t, c.mx.clone(), c.ip, c.domain.clone()))
        }) else {
            return;
        };
        let o = self.outcome_fixed(
            now,
            Stage::Mail,
            Category::NotSupported,
            "engine:envelope-refused",
            "the envelope cannot be written as SMTP commands".to_string(),
            Some(mx),
            ip,
        );
        let outcomes = txn.idxs.iter().map(|&i| (i, o.clone())).collect();
        self.settle(now, txn.message, outcomes);
        self.dirty.insert(domain);
        if let Some(c) = self.conns.get_mut(&id) {
            c.idle_deadline = Some(now.plus(self.cfg.destination.idle_timeout));
        }
    }

    // ---- routing and DNS ----

    fn resolve_mx(&mut self, domain: &str) {
        let query = self.next_query_id();
        self.queries.insert(
            query,
            PendingQuery::Mx {
                domain: domain.to_string(),
            },
        );
        self.dest_mut(domain).route = Route::Resolving;
        self.emit(Output::Resolve {
            query,
            name: domain.to_string(),
            kind: QueryKind::Mx,
        });
    }

    fn set_relay_route(&mut self, now: Time, domain: &str) {
        let Some(relay) = self.cfg.relay.clone() else {
            return;
        };
        let addrs = match relay.host.parse::<IpAddr>() {
            Ok(ip) => Addrs::Ready(vec![ip]),
            Err(_) => Addrs::Unknown,
        };
        self.dest_mut(domain).route = Route::Ready {
            hosts: vec![Host {
                name: relay.host,
                addrs,
            }],
            expires: now.plus(self.cfg.dns_cache_ttl),
        };
    }

    pub(crate) fn on_resolved(
        &mut self,
        now: Time,
        query: QueryId,
        result: Result<DnsAnswer, DnsError>,
    ) {
        let Some(q) = self.queries.remove(&query) else {
            return;
        };
        match q {
            PendingQuery::Mx { domain } => self.on_mx(now, &domain, result),
            PendingQuery::Addr { domain, host } => self.on_addr(now, &domain, &host, result),
        }
    }

    fn on_mx(&mut self, now: Time, domain: &str, result: Result<DnsAnswer, DnsError>) {
        let expires = now.plus(self.cfg.dns_cache_ttl);
        let implicit = || {
            // RFC 5321 5.1: no MX records: the domain itself is the host.
            vec![Host {
                name: domain.to_string(),
                addrs: Addrs::Unknown,
            }]
        };
        let hosts = match result {
            Ok(DnsAnswer::Mx(records)) => match order_mx(records, &mut self.rng) {
                RouteDecision::NullMx => {
                    return self.fail_destination(now, domain, "null MX (RFC 7505)");
                }
                RouteDecision::Hosts(h) if h.is_empty() => implicit(),
                RouteDecision::Hosts(h) => h
                    .into_iter()
                    .map(|name| {
                        let addrs = match name.parse::<IpAddr>() {
                            Ok(ip) => Addrs::Ready(vec![ip]),
                            Err(_) => Addrs::Unknown,
                        };
                        Host { name, addrs }
                    })
                    .collect(),
            },
            Ok(DnsAnswer::Address(_)) | Err(DnsError::NoRecords) => implicit(),
            Err(DnsError::NxDomain) => return self.fail_destination(now, domain, "NXDOMAIN"),
            Err(e) => return self.fail_destination(now, domain, &e.to_string()),
        };
        self.dest_mut(domain).route = Route::Ready { hosts, expires };
        self.dirty.insert(domain.to_string());
        // Connections waiting for an address of the old route start over on the new one.
        for c in self.waiting_conns(domain) {
            if let Some(conn) = self.conns.get_mut(&c) {
                conn.host_idx = 0;
                conn.ip_idx = 0;
            }
            self.advance_conn(now, c);
        }
    }

    fn waiting_conns(&self, domain: &str) -> Vec<ConnId> {
        self.dests
            .get(domain)
            .map(|d| {
                d.conns
                    .iter()
                    .copied()
                    .filter(|c| {
                        self.conns
                            .get(c)
                            .is_some_and(|c| c.phase == Phase::WaitingAddr)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The domain cannot be routed now: every ready recipient gets the DNS outcome
    /// (bounce for NXDOMAIN / null MX, deferral for a temporary failure).
    fn fail_destination(&mut self, now: Time, domain: &str, text: &str) {
        self.dest_mut(domain).route = Route::Unknown;
        let outcome = self.classified(now, Stage::Dns, None, text, None, None, TlsRecord::None);
        let mut any_failure = false;
        while let Some(txn) = self.take_work(now, domain) {
            any_failure |= outcome.is_destination_failure();
            let outcomes = txn.idxs.iter().map(|&i| (i, outcome.clone())).collect();
            self.settle(now, txn.message, outcomes);
        }
        if any_failure {
            self.breaker_failure(now, domain, &outcome.display());
        }
    }

    fn on_addr(
        &mut self,
        now: Time,
        domain: &str,
        host: &str,
        result: Result<DnsAnswer, DnsError>,
    ) {
        let addrs = match result {
            Ok(DnsAnswer::Address(v)) if !v.is_empty() => Addrs::Ready(v),
            _ => Addrs::Failed,
        };
        if let Some(Route::Ready { hosts, .. }) = self.dests.get_mut(domain).map(|d| &mut d.route) {
            for h in hosts.iter_mut().filter(|h| h.name == host) {
                h.addrs = addrs.clone();
            }
        }
        for c in self.waiting_conns(domain) {
            self.advance_conn(now, c);
        }
    }

    // ---- connections ----

    fn open_conn(&mut self, now: Time, domain: &str, txn: Txn, probe: bool) {
        let id = self.next_conn_id();
        let conn = Conn {
            domain: domain.to_string(),
            phase: Phase::WaitingAddr,
            host_idx: 0,
            ip_idx: 0,
            mx: String::new(),
            ip: None,
            session: None,
            tls_mode: self.tls_mode_for(domain),
            tls: TlsRecord::None,
            txn: Some(txn),
            sent: 0,
            probe,
            peer_closed: false,
            closed: false,
            idle_deadline: None,
            timer: None,
            last_error: None,
            pending_failover: None,
        };
        self.conns.insert(id, conn);
        self.dest_mut(domain).conns.insert(id);
        self.advance_conn(now, id);
    }

    /// Connects to the connection's current candidate (host, address), resolving the
    /// host first if needed; when every candidate is used up, settles its transaction
    /// with the last error.
    fn advance_conn(&mut self, now: Time, id: ConnId) {
        loop {
            let Some(c) = self.conns.get(&id) else { return };
            let domain = c.domain.clone();
            let (host_idx, ip_idx) = (c.host_idx, c.ip_idx);
            let host = match self.dests.get(&domain).map(|d| &d.route) {
                Some(Route::Ready { hosts, .. }) => hosts.get(host_idx).cloned(),
                _ => None,
            };
            let Some(host) = host else {
                return self.conn_exhausted(now, id);
            };
            match host.addrs {
                Addrs::Unknown => {
                    let query = self.next_query_id();
                    self.queries.insert(
                        query,
                        PendingQuery::Addr {
                            domain: domain.clone(),
                            host: host.name.clone(),
                        },
                    );
                    if let Some(Route::Ready { hosts, .. }) =
                        self.dests.get_mut(&domain).map(|d| &mut d.route)
                    {
                        for h in hosts.iter_mut().filter(|h| h.name == host.name) {
                            h.addrs = Addrs::Resolving;
                        }
                    }
                    self.emit(Output::Resolve {
                        query,
                        name: host.name.clone(),
                        kind: QueryKind::Address,
                    });
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.phase = Phase::WaitingAddr;
                    }
                    return;
                }
                Addrs::Resolving => {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.phase = Phase::WaitingAddr;
                    }
                    return;
                }
                Addrs::Failed => {
                    let o = self.outcome_fixed(
                        now,
                        Stage::Dns,
                        Category::Dns,
                        "engine:mx-host-unresolvable",
                        format!(
                            "MX host {} has no usable address records",
                            sanitize::cut(&host.name, 255)
                        ),
                        Some(host.name.clone()),
                        None,
                    );
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.last_error = Some(o);
                        c.host_idx += 1;
                        c.ip_idx = 0;
                    }
                }
                Addrs::Ready(ips) => {
                    let Some(&ip) = ips.get(ip_idx) else {
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.host_idx += 1;
                            c.ip_idx = 0;
                        }
                        continue;
                    };
                    // The breaker may have opened while this connection waited for DNS:
                    // ask it again at the moment of connecting.
                    if !self.breaker_admits(now, &domain, id) {
                        return self.requeue_conn(now, id);
                    }
                    let port = self.cfg.relay.as_ref().map_or(self.cfg.mx_port, |r| r.port);
                    let deadline = now.plus(self.cfg.timeouts.connect);
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.mx = host.name.clone();
                        c.ip = Some(ip);
                        c.phase = Phase::Connecting { deadline };
                    }
                    self.stats.connections_opened += 1;
                    self.emit(Output::Connect {
                        conn: id,
                        ip,
                        port,
                        mx: host.name.clone(),
                    });
                    self.update_conn_timer(id);
                    return;
                }
            }
        }
    }

    /// Whether the connection may connect now: the breaker is closed, or half-open and
    /// this connection is its probe.
    fn breaker_admits(&self, now: Time, domain: &str, id: ConnId) -> bool {
        let probe = self.conns.get(&id).is_some_and(|c| c.probe);
        match self.dests.get(domain).map(|d| d.breaker.state(now)) {
            Some(BreakerState::Closed) | None => true,
            Some(BreakerState::HalfOpen) => probe,
            Some(BreakerState::Open) => false,
        }
    }

    /// Drops a connection that never connected and puts its recipients back in the ready
    /// queue as they were: no attempt was made, so none is counted or recorded.
    fn requeue_conn(&mut self, _now: Time, id: ConnId) {
        let Some(c) = self.remove_conn(id) else {
            return;
        };
        if c.probe {
            self.dest_mut(&c.domain).breaker.cancel_probe();
        }
        if let Some(txn) = c.txn {
            if let Some(m) = self.messages.get_mut(&txn.message) {
                for &i in &txn.idxs {
                    if let Some(r) = m.rcpts.get_mut(i as usize)
                        && r.status == RecipientStatus::Sending
                    {
                        r.attempts = r.attempts.saturating_sub(1);
                        r.status = if r.attempts == 0 {
                            RecipientStatus::Queued
                        } else {
                            RecipientStatus::Deferred
                        };
                    }
                }
            }
            self.dest_mut(&c.domain)
                .ready
                .extend(txn.idxs.iter().map(|&i| (txn.message, i)));
        }
        self.dirty.insert(c.domain);
    }

    /// No candidate left: the transaction fails with the last error.
    fn conn_exhausted(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.remove_conn(id) else {
            return;
        };
        let outcome = c.last_error.clone().unwrap_or_else(|| {
            self.outcome_fixed(
                now,
                Stage::Connect,
                Category::Connection,
                "engine:no-route",
                "no reachable mail exchanger".to_string(),
                None,
                None,
            )
        });
        if let Some(txn) = c.txn {
            self.settle_txn_uniform(now, &c.domain, txn, &outcome, c.probe);
        } else if c.probe {
            self.dest_mut(&c.domain).breaker.cancel_probe();
        }
        self.dirty.insert(c.domain);
    }

    fn remove_conn(&mut self, id: ConnId) -> Option<Conn> {
        let c = self.conns.remove(&id)?;
        if let Some(t) = c.timer {
            self.timers.remove(&(t, Timer::Conn(id)));
        }
        if let Some(d) = self.dests.get_mut(&c.domain) {
            d.conns.remove(&id);
        }
        Some(c)
    }

    /// Continues a failed connection's transaction on another candidate.
    fn failover(&mut self, now: Time, id: ConnId, how: Failover, error: AttemptOutcome) {
        let Some(mut c) = self.remove_conn(id) else {
            return;
        };
        let domain = c.domain.clone();
        // Every new connection asks the breaker, fail-overs included: once the
        // destination's breaker is open (or half-open with its probe elsewhere), the
        // attempt stops here and is deferred.
        let breaker_allows = match self.dests.get(&domain).map(|d| d.breaker.state(now)) {
            Some(BreakerState::Closed) | None => true,
            Some(BreakerState::HalfOpen) => c.probe,
            Some(BreakerState::Open) => false,
        }; // (the connection is already removed here, so `breaker_admits` cannot see it)
        if how == Failover::None || !breaker_allows || c.txn.as_ref().is_none_or(|t| t.started) {
            // Nothing to carry over: settle whatever the connection held.
            if let Some(txn) = c.txn.take() {
                self.settle_txn_uniform(now, &domain, txn, &error, c.probe);
            } else if c.probe {
                self.dest_mut(&domain).breaker.cancel_probe();
            }
            self.dirty.insert(domain);
            return;
        }
        match how {
            Failover::SamePlaintext => {
                c.tls_mode = TlsMode::Disabled;
                c.tls = TlsRecord::FailedPlaintext {
                    error: sanitize::cut(&error.text, 256),
                };
            }
            Failover::NextAddress => {
                c.ip_idx += 1;
                c.tls = TlsRecord::None;
            }
            Failover::NextHost | Failover::None => {
                c.host_idx += 1;
                c.ip_idx = 0;
                c.tls = TlsRecord::None;
            }
        }
        if how != Failover::SamePlaintext {
            c.tls_mode = self.tls_mode_for(&domain);
        }
        c.last_error = Some(error);
        c.session = None;
        c.phase = Phase::WaitingAddr;
        c.peer_closed = false;
        c.closed = false;
        c.pending_failover = None;
        c.idle_deadline = None;
        c.timer = None;
        let new_id = self.next_conn_id();
        self.conns.insert(new_id, c);
        self.dest_mut(&domain).conns.insert(new_id);
        self.advance_conn(now, new_id);
    }

    pub(crate) fn on_connected(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if !matches!(c.phase, Phase::Connecting { .. }) {
            return;
        }
        c.phase = Phase::Session;
        let mut session = ClientSession::new(SessionConfig {
            ehlo_name: self.cfg.hostname.clone(),
            tls: c.tls_mode,
            timeouts: self.cfg.timeouts.clone(),
        });
        session.on_connected(now);
        c.session = Some(session);
        self.process_session(now, id);
    }

    pub(crate) fn on_connect_failed(&mut self, now: Time, id: ConnId, error: &str) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if !matches!(c.phase, Phase::Connecting { .. }) {
            return;
        }
        c.peer_closed = true;
        let (mx, ip) = (c.mx.clone(), c.ip);
        let o = self.outcome_fixed(
            now,
            Stage::Connect,
            Category::Connection,
            "engine:connect-failed",
            format!("connect failed: {}", sanitize::cut(error, 512)),
            Some(mx),
            ip,
        );
        self.failover(now, id, Failover::NextAddress, o);
    }

    pub(crate) fn on_received(&mut self, now: Time, id: ConnId, bytes: &[u8]) {
        if let Some(s) = self.conns.get_mut(&id).and_then(|c| c.session.as_mut()) {
            s.on_bytes(now, bytes);
            self.process_session(now, id);
        }
    }

    pub(crate) fn on_tls_established(&mut self, now: Time, id: ConnId, verified: bool) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.tls = TlsRecord::Starttls { verified };
            if let Some(s) = c.session.as_mut() {
                s.on_tls_established(now, verified);
            }
            self.process_session(now, id);
        }
    }

    pub(crate) fn on_tls_failed(&mut self, now: Time, id: ConnId, error: &str) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.peer_closed = true;
            if let Some(s) = c.session.as_mut() {
                s.on_tls_failed(now, error);
            }
            self.process_session(now, id);
        }
    }

    pub(crate) fn on_disconnected(&mut self, now: Time, id: ConnId, error: Option<&str>) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.peer_closed = true;
        match c.phase {
            Phase::Session => {
                if let Some(s) = c.session.as_mut() {
                    s.on_disconnected(now, error);
                }
                self.process_session(now, id);
            }
            Phase::Connecting { .. } => {
                self.on_connect_failed(now, id, error.unwrap_or("connection closed"))
            }
            Phase::WaitingAddr => {}
        }
    }

    pub(crate) fn on_conn_timer(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.timer = None;
        match c.phase {
            Phase::Connecting { deadline } if now >= deadline => {
                self.emit(Output::Close { conn: id });
                if let Some(c) = self.conns.get_mut(&id) {
                    c.peer_closed = true;
                }
                let (mx, ip) = (
                    c_mx(&self.conns, id),
                    self.conns.get(&id).and_then(|c| c.ip),
                );
                let o = self.outcome_fixed(
                    now,
                    Stage::Connect,
                    Category::Timeout,
                    "engine:connect-timeout",
                    "connect timed out".to_string(),
                    mx,
                    ip,
                );
                self.failover(now, id, Failover::NextAddress, o);
            }
            Phase::Session => {
                let idle_expired = c.idle_deadline.is_some_and(|t| t <= now) && c.is_idle();
                if let Some(s) = c.session.as_mut() {
                    s.on_timer(now);
                    if idle_expired {
                        c.idle_deadline = None;
                        s.quit(now);
                    }
                }
                self.process_session(now, id);
            }
            _ => self.update_conn_timer(id),
        }
    }

    pub(crate) fn quit_conn(&mut self, now: Time, id: ConnId) {
        if let Some(s) = self.conns.get_mut(&id).and_then(|c| c.session.as_mut()) {
            s.quit(now);
            self.process_session(now, id);
        }
    }

    fn update_conn_timer(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut t: Option<Time> = match c.phase {
            Phase::Connecting { deadline } => Some(deadline),
            _ => None,
        };
        let mut fold = |x: Option<Time>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |y| y.min(x)));
            }
        };
        fold(c.session.as_ref().and_then(|s| s.deadline()));
        fold(c.idle_deadline);
        if t != c.timer {
            let old = std::mem::replace(&mut c.timer, t);
            if let Some(old) = old {
                self.timers.remove(&(old, Timer::Conn(id)));
            }
            if let Some(t) = t {
                self.timers.insert((t, Timer::Conn(id)));
            }
        }
    }

    /// Drains the session's actions and events until it has nothing more to say.
    fn process_session(&mut self, now: Time, id: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            let Some(session) = c.session.as_mut() else {
                return;
            };
            if let Some(action) = session.poll_action() {
                match action {
                    SessionAction::Send(bytes) => self.emit(Output::Send { conn: id, bytes }),
                    SessionAction::SendBody => {
                        if let Some(message) = c.txn.as_ref().map(|t| t.message) {
                            self.emit(Output::SendSpool { conn: id, message });
                        }
                    }
                    SessionAction::StartTls => {
                        let out = Output::StartTls {
                            conn: id,
                            server_name: c.mx.clone(),
                            require_verified: c.tls_mode == TlsMode::Required,
                        };
                        self.emit(out);
                    }
                    SessionAction::Close => {
                        c.closed = true;
                        if !c.peer_closed {
                            c.peer_closed = true;
                            self.emit(Output::Close { conn: id });
                        }
                    }
                }
                continue;
            }
            if let Some(event) = session.poll_event() {
                self.on_session_event(now, id, event);
                continue;
            }
            break;
        }
        let finished = self.conns.get(&id).is_some_and(|c| c.closed);
        if finished {
            self.finish_conn(now, id);
        } else {
            self.update_conn_timer(id);
        }
    }

    fn on_session_event(&mut self, now: Time, id: ConnId, event: SessionEvent) {
        match event {
            SessionEvent::Ready => self.on_session_ready(now, id),
            SessionEvent::TransactionDone(report) => {
                let Some(c) = self.conns.get_mut(&id) else {
                    return;
                };
                c.sent += 1;
                let Some(txn) = c.txn.take() else { return };
                let (domain, probe) = (c.domain.clone(), c.probe);
                c.probe = false;
                let outcomes = self.report_outcomes(now, id, &txn, &report, None);
                self.settle_txn(now, &domain, txn, outcomes, probe);
            }
            SessionEvent::Failed {
                stage,
                error,
                partial,
            } => {
                let Some(c) = self.conns.get(&id) else { return };
                let started = c.txn.as_ref().is_some_and(|t| t.started);
                let how = if c.txn.is_some() && !started {
                    failover_for(stage, &error, c.tls_mode)
                } else {
                    Failover::None
                };
                let err = self.session_error_outcome(now, id, stage, &error);
                if how != Failover::None {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.pending_failover = Some((how, err));
                    }
                    return;
                }
                let Some(c) = self.conns.get_mut(&id) else {
                    return;
                };
                let (domain, probe) = (c.domain.clone(), c.probe);
                c.probe = false;
                let Some(txn) = c.txn.take() else {
                    if probe {
                        self.dest_mut(&domain).breaker.cancel_probe();
                    }
                    return;
                };
                let report = partial.unwrap_or_default();
                let outcomes = self.report_outcomes(now, id, &txn, &report, Some(err));
                self.settle_txn(now, &domain, txn, outcomes, probe);
            }
            SessionEvent::Closed => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.closed = true;
                }
            }
        }
    }

    fn on_session_ready(&mut self, now: Time, id: ConnId) {
        let Some(c) = self.conns.get(&id) else { return };
        let domain = c.domain.clone();
        if c.txn.as_ref().is_some_and(|t| !t.started) {
            // Assigned when the connection was requested: look at suppressions again now,
            // just before MAIL FROM.
            let mut txn = self.conns.get_mut(&id).and_then(|c| c.txn.take());
            if let Some(t) = txn.as_mut() {
                self.drop_suppressed(now, t);
            }
            if let Some(t) = txn.filter(|t| !t.idxs.is_empty()) {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.txn = Some(t);
                }
                return self.start_assigned(now, id);
            }
        }
        let Some(c) = self.conns.get(&id) else { return };
        let limit = self.cfg.destination.max_messages_per_connection;
        let can_take = !self.draining && c.sent < limit;
        let work = if can_take {
            self.take_sendable(now, &domain)
        } else {
            None
        };
        match work {
            Some(txn) => self.assign(now, id, txn),
            None if !can_take => self.quit_conn(now, id),
            None => {
                let idle = now.plus(self.cfg.destination.idle_timeout);
                if let Some(c) = self.conns.get_mut(&id) {
                    c.idle_deadline = Some(idle);
                }
                self.dirty.insert(domain);
            }
        }
    }

    fn finish_conn(&mut self, now: Time, id: ConnId) {
        let pending = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.pending_failover.take());
        if let Some((how, err)) = pending {
            return self.failover(now, id, how, err);
        }
        let Some(c) = self.remove_conn(id) else {
            return;
        };
        if let Some(txn) = c.txn {
            // The session ended without a report for this transaction.
            let err = c.last_error.clone().unwrap_or_else(|| {
                self.outcome_fixed(
                    now,
                    Stage::Connect,
                    Category::Connection,
                    "engine:closed",
                    "connection closed".to_string(),
                    Some(c.mx.clone()),
                    c.ip,
                )
            });
            self.settle_txn_uniform(now, &c.domain, txn, &err, c.probe);
        } else if c.probe {
            self.dest_mut(&c.domain).breaker.cancel_probe();
        }
        self.dirty.insert(c.domain);
    }

    // ---- outcomes ----

    fn settle_txn_uniform(
        &mut self,
        now: Time,
        domain: &str,
        txn: Txn,
        outcome: &AttemptOutcome,
        probe: bool,
    ) {
        let outcomes = txn.idxs.iter().map(|&i| (i, outcome.clone())).collect();
        self.settle_txn(now, domain, txn, outcomes, probe);
    }

    /// Settles a transaction and feeds the breaker: one destination-level failure among
    /// the outcomes counts one failure; otherwise the server worked, which closes it.
    fn settle_txn(
        &mut self,
        now: Time,
        domain: &str,
        txn: Txn,
        outcomes: Vec<(u32, AttemptOutcome)>,
        _probe: bool,
    ) {
        let failure = outcomes
            .iter()
            .find(|(_, o)| o.is_destination_failure())
            .map(|(_, o)| o.display());
        self.settle(now, txn.message, outcomes);
        match failure {
            Some(reason) => self.breaker_failure(now, domain, &reason),
            None => self.dest_mut(domain).breaker.on_success(),
        }
        self.dirty.insert(domain.to_string());
    }

    fn breaker_failure(&mut self, now: Time, domain: &str, reason: &str) {
        let cfg = self.cfg.breaker.clone();
        let d = self.dest_mut(domain);
        if d.breaker.on_failure(now, reason, &cfg) {
            let until = d.breaker.next_probe_at();
            self.stats.breaker_opened += 1;
            if let Some(until) = until {
                self.arm_dest_timer(domain, until);
            }
        }
    }

    /// Per-recipient outcomes from what the server said, filling gaps with `error`.
    fn report_outcomes(
        &mut self,
        now: Time,
        id: ConnId,
        txn: &Txn,
        report: &TransactionReport,
        error: Option<AttemptOutcome>,
    ) -> Vec<(u32, AttemptOutcome)> {
        let (mx, ip, tls) = match self.conns.get(&id) {
            Some(c) => (Some(c.mx.clone()), c.ip, c.tls.clone()),
            None => (None, None, TlsRecord::None),
        };
        let gap = |this: &mut Self, stage: Stage| {
            error.clone().unwrap_or_else(|| {
                this.outcome_fixed(
                    now,
                    stage,
                    Category::Protocol,
                    "engine:incomplete",
                    "the transaction ended without a reply".to_string(),
                    mx.clone(),
                    ip,
                )
            })
        };
        let mut out = Vec::with_capacity(txn.idxs.len());
        for (pos, &idx) in txn.idxs.iter().enumerate() {
            let (stage, reply) = match (&report.mail, report.rcpt.get(pos).and_then(|r| r.as_ref()))
            {
                (None, _) => (Stage::Mail, None),
                (Some(m), _) if !m.is_positive() => (Stage::Mail, Some(m)),
                (Some(_), None) => (Stage::Rcpt, None),
                (Some(_), Some(r)) if !r.is_positive() => (Stage::Rcpt, Some(r)),
                (Some(_), Some(_)) => match (&report.data, &report.end) {
                    (None, _) => (Stage::Data, None),
                    (Some(d), _) if d.code != 354 => (Stage::Data, Some(d)),
                    (Some(_), None) => (Stage::EndOfData, None),
                    (Some(_), Some(e)) => (Stage::EndOfData, Some(e)),
                },
            };
            let mut o = match reply {
                Some(r) => self.reply_outcome(now, stage, r, mx.clone(), ip, tls.clone()),
                None => gap(self, stage),
            };
            o.started_at = txn.started_at;
            o.about_recipient =
                !(txn.idxs.len() > 1 && matches!(stage, Stage::Data | Stage::EndOfData));
            out.push((idx, o));
        }
        out
    }

    fn reply_outcome(
        &self,
        now: Time,
        stage: Stage,
        r: &Reply,
        mx: Option<String>,
        ip: Option<IpAddr>,
        tls: TlsRecord,
    ) -> AttemptOutcome {
        self.classified(
            now,
            stage,
            Some(r.code),
            &r.text,
            r.enhanced.clone(),
            mx.map(|m| (m, ip)),
            tls,
        )
    }

    /// An outcome classified by the rules.
    #[allow(clippy::too_many_arguments)]
    fn classified(
        &self,
        now: Time,
        stage: Stage,
        code: Option<u16>,
        text: &str,
        enhanced: Option<String>,
        host: Option<(String, Option<IpAddr>)>,
        tls: TlsRecord,
    ) -> AttemptOutcome {
        let text = sanitize::cut(text, sanitize::MAX_REMOTE_TEXT);
        let c = self.cfg.classifier.classify(&ReplyContext {
            stage,
            code,
            enhanced: enhanced.as_deref(),
            text: &text,
        });
        let (mx, ip) = match host {
            Some((m, ip)) => (Some(m), ip),
            None => (None, None),
        };
        AttemptOutcome {
            stage,
            code,
            enhanced,
            text,
            category: c.category,
            rule: c.rule,
            mx: mx.filter(|m| !m.is_empty()),
            ip: ip.map(|i| i.to_string()),
            tls,
            started_at: now,
            about_recipient: true,
        }
    }

    /// An outcome whose category the engine knows without reading a reply.
    #[allow(clippy::too_many_arguments)]
    fn outcome_fixed(
        &self,
        now: Time,
        stage: Stage,
        category: Category,
        rule: &str,
        text: String,
        mx: Option<String>,
        ip: Option<IpAddr>,
    ) -> AttemptOutcome {
        AttemptOutcome {
            stage,
            code: None,
            enhanced: None,
            text: sanitize::cut(&text, sanitize::MAX_REMOTE_TEXT),
            category,
            rule: rule.to_string(),
            mx: mx.filter(|m| !m.is_empty()),
            ip: ip.map(|i| i.to_string()),
            tls: TlsRecord::None,
            started_at: now,
            about_recipient: true,
        }
    }

    fn session_error_outcome(
        &self,
        now: Time,
        id: ConnId,
        stage: Stage,
        error: &SessionError,
    ) -> AttemptOutcome {
        let (mx, ip, tls) = match self.conns.get(&id) {
            Some(c) => (Some(c.mx.clone()), c.ip, c.tls.clone()),
            None => (None, None, TlsRecord::None),
        };
        let fixed = |category: Category, rule: &str, text: String| {
            let mut o = self.outcome_fixed(now, stage, category, rule, text, mx.clone(), ip);
            o.tls = tls.clone();
            o
        };
        match error {
            SessionError::Reply(r) => {
                self.reply_outcome(now, stage, r, mx.clone(), ip, tls.clone())
            }
            SessionError::Timeout => fixed(
                Category::Timeout,
                "engine:timeout",
                format!("timeout at {}", stage.as_str()),
            ),
            SessionError::Protocol(t) => fixed(
                Category::Protocol,
                "engine:protocol",
                format!("protocol error: {t}"),
            ),
            SessionError::Closed(t) => fixed(
                Category::Connection,
                "engine:closed",
                format!(
                    "connection closed: {}",
                    t.as_deref().unwrap_or("by the server")
                ),
            ),
            SessionError::TlsFailed(t) => fixed(
                Category::Tls,
                "engine:tls-failed",
                format!("TLS handshake failed: {t}"),
            ),
            SessionError::TlsRequired(t) => fixed(
                Category::Tls,
                "engine:tls-required",
                format!("TLS required: {t}"),
            ),
            SessionError::NotSupported(t) => fixed(
                Category::NotSupported,
                "engine:not-supported",
                format!("not supported: {t}"),
            ),
        }
    }
}

fn c_mx(conns: &BTreeMap<ConnId, Conn>, id: ConnId) -> Option<String> {
    conns.get(&id).map(|c| c.mx.clone())
}

/// Which failures before a transaction starts move on to another candidate: connection
/// trouble and temporary refusals (RFC 5321 5.1: try the next MX); a failed opportunistic
/// TLS handshake is retried once in plaintext on the same host.
fn failover_for(stage: Stage, error: &SessionError, mode: TlsMode) -> Failover {
    match error {
        SessionError::TlsFailed(_) if mode == TlsMode::Opportunistic => Failover::SamePlaintext,
        SessionError::TlsFailed(_) | SessionError::TlsRequired(_) => Failover::NextHost,
        SessionError::Reply(r) if r.code / 100 == 4 => Failover::NextHost,
        SessionError::Reply(_) | SessionError::NotSupported(_) => Failover::None,
        SessionError::Timeout | SessionError::Closed(_) | SessionError::Protocol(_) => {
            if matches!(
                stage,
                Stage::Connect | Stage::Greeting | Stage::Ehlo | Stage::Tls
            ) {
                Failover::NextHost
            } else {
                Failover::None
            }
        }
    }
}
