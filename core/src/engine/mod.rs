//! The engine: one value owning all delivery state.
//!
//! `handle(now, input)` applies a fact; outputs are drained with `poll_output()`;
//! `poll_timeout()` says when to call `handle(now, Input::Tick)`. All state lives in
//! ordered maps and all randomness comes from the engine's seeded RNG, so the same seed
//! and inputs give the same outputs.
//!
//! Submodules, one concern each: `intake` (submissions and idempotency), `delivery`
//! (destinations, DNS, connections, SMTP sessions), `outcome` (applying attempt outcomes:
//! status, attempts, events, suppression), `recovery` (start-up from a snapshot), `admin`
//! (operator commands), `persist` (store batches and what waits on them).

mod admin;
mod delivery;
mod intake;
mod outcome;
mod persist;
mod recovery;
mod webhooks;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::breaker::Breaker;
use crate::config::Config;
use crate::ids::{BatchId, ConnId, MessageId, QueryId, TenantId};
use crate::io::{Input, Output};
use crate::status::RecipientStatus;
use crate::time::Time;

use delivery::{Conn, Dest, PendingQuery};
use intake::IdempotencyState;
use persist::PendingBatch;

/// A message the engine still has work for (at least one non-terminal recipient).
///
/// Kept compact: a queue of deferred mail holds one of these per message for hours or
/// days. Strings many messages share (the envelope sender, recipient domains) are
/// interned (`Engine::intern`); what only the API shows (subject, tags, reasons) is not
/// held at all. The `size_of` test in `tests.rs` guards the layout.
#[derive(Clone, Debug)]
pub(crate) struct Msg {
    pub tenant: TenantId,
    pub mail_from: Arc<str>,
    /// Without angle brackets.
    pub message_id_header: Box<str>,
    pub created_at: Time,
    pub expires_at: Time,
    pub size: u64,
    /// The key of the message's entry in `Engine::msg_timers`, if it has one: the earliest
    /// of its expiry (until handled) and its waiting recipients' next attempts. It may be
    /// earlier than needed (a recipient taken for an attempt since): it then fires and is
    /// recomputed.
    pub wake: Option<Time>,
    pub smtputf8: bool,
    pub eight_bit: bool,
    /// The store write of the message committed (it was acknowledged).
    pub committed: bool,
    /// The expiry was handled (waiting recipients failed); it happens once.
    pub expired: bool,
    pub rcpts: Rcpts,
}

#[derive(Clone, Debug)]
pub(crate) struct Rcpt {
    pub address: Box<str>,
    /// Routing domain, interned.
    pub domain: Arc<str>,
    /// Due time of the next attempt while queued/deferred and not yet in the ready queue.
    pub next_attempt_at: Option<Time>,
    pub attempts: u32,
    pub status: RecipientStatus,
}

impl Rcpt {
    pub fn is_waiting(&self) -> bool {
        matches!(
            self.status,
            RecipientStatus::Queued | RecipientStatus::Deferred
        )
    }
}

/// A message's recipients, indexed by `idx`: most messages have one, held inline.
#[derive(Clone, Debug)]
pub(crate) enum Rcpts {
    One(Rcpt),
    Many(Box<[Rcpt]>),
}

impl From<Vec<Rcpt>> for Rcpts {
    fn from(mut v: Vec<Rcpt>) -> Rcpts {
        match v.pop() {
            Some(r) if v.is_empty() => Rcpts::One(r),
            Some(r) => {
                v.push(r);
                Rcpts::Many(v.into_boxed_slice())
            }
            None => Rcpts::Many(Box::default()),
        }
    }
}

impl core::ops::Deref for Rcpts {
    type Target = [Rcpt];
    fn deref(&self) -> &[Rcpt] {
        match self {
            Rcpts::One(r) => core::slice::from_ref(r),
            Rcpts::Many(v) => v,
        }
    }
}

impl core::ops::DerefMut for Rcpts {
    fn deref_mut(&mut self) -> &mut [Rcpt] {
        match self {
            Rcpts::One(r) => core::slice::from_mut(r),
            Rcpts::Many(v) => v,
        }
    }
}

impl Msg {
    pub fn all_terminal(&self) -> bool {
        self.rcpts.iter().all(|r| r.status.is_terminal())
    }

    /// When the message next needs attention (see `wake`); `None` before its store write
    /// committed.
    fn next_wake(&self) -> Option<Time> {
        if !self.committed {
            return None;
        }
        let expiry = (!self.expired).then_some(self.expires_at);
        self.rcpts
            .iter()
            .filter(|r| r.is_waiting())
            .filter_map(|r| r.next_attempt_at)
            .chain(expiry)
            .min()
    }
}

/// Timers other than the messages' own (`Engine::msg_timers`), ordered by time then kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    Conn(ConnId),
    Dest(String),
    PersistRetry(BatchId),
    SpoolScan,
}

pub struct Engine {
    pub(crate) cfg: Config,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) outputs: VecDeque<Output>,
    pub(crate) timers: BTreeSet<(Time, Timer)>,
    /// One entry per message that has a `wake` time (expiry, next attempts). At equal
    /// times a message's timer runs before the other timers.
    pub(crate) msg_timers: BTreeSet<(Time, MessageId)>,
    pub(crate) messages: BTreeMap<MessageId, Msg>,
    /// Shared strings (recipient domains, envelope senders), pruned of unused ones at each
    /// spool scan.
    pub(crate) names: BTreeSet<Arc<str>>,
    /// One entry per destination domain with something to remember (work, connections,
    /// a cached route, breaker or rate state); idle ones are forgotten at each spool scan
    /// (`forget_idle_destinations`), so the map follows the domains in use, not every
    /// domain ever mailed.
    pub(crate) dests: BTreeMap<String, Dest>,
    pub(crate) conns: BTreeMap<ConnId, Conn>,
    pub(crate) queries: BTreeMap<QueryId, PendingQuery>,
    pub(crate) batches: BTreeMap<BatchId, PendingBatch>,
    pub(crate) suppressions: BTreeSet<(TenantId, String)>,
    pub(crate) idempotency: BTreeMap<(TenantId, String), IdempotencyState>,
    /// The Idempotency-Key slot of each submission still in flight (being stored), so
    /// that finishing one does not scan every key of the window.
    pub(crate) idempotency_in_flight: BTreeMap<MessageId, (TenantId, String)>,
    pub(crate) webhooks: crate::webhook::WebhookDispatcher,
    /// Destinations whose queue changed since the last pump.
    pub(crate) dirty: BTreeSet<String>,
    pub(crate) next_batch: u64,
    pub(crate) next_conn: u64,
    pub(crate) next_query: u64,
    pub(crate) next_post: u64,
    pub(crate) next_seq: u64,
    pub(crate) draining: bool,
    pub(crate) recovered: bool,
    pub(crate) spool_scan_in_flight: bool,
    pub(crate) stats: Stats,
    /// Tests compare an engine that forgets idle destinations with one that never does.
    #[cfg(test)]
    pub(crate) never_forget_destinations: bool,
}

/// Counters for metrics and the simulator's report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub accepted_messages: u64,
    pub rejected_submissions: u64,
    pub attempts: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    pub failed: u64,
    pub suppressed: u64,
    pub persist_failures: u64,
    pub breaker_opened: u64,
    pub connections_opened: u64,
    /// Idle destination entries dropped (`forget_idle_destinations`).
    pub destinations_forgotten: u64,
}

/// A destination's circuit breaker, for `GET /v1/admin/breakers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerView {
    pub domain: String,
    /// `closed`, `open` or `half_open`.
    pub state: String,
    pub consecutive_failures: u32,
    pub opened_at: Option<Time>,
    pub next_probe_at: Option<Time>,
    pub last_failure: Option<String>,
    /// Forced open by an operator (stays until forced closed).
    pub forced: bool,
    /// e.g. "opened at ... after 5 consecutive failure(s): last failure: ...; next probe
    /// at ...".
    pub explanation: String,
}

/// Queue depth of one destination, for `GET /v1/admin/queue`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueView {
    pub domain: String,
    pub queued: u64,
    pub deferred: u64,
    pub sending: u64,
    pub oldest_created_at: Option<Time>,
    pub next_attempt_at: Option<Time>,
    pub connections: u64,
}

impl Engine {
    pub fn new(config: Config, seed: u64) -> Engine {
        let webhooks = webhooks::dispatcher(&config);
        Engine {
            cfg: config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            outputs: VecDeque::new(),
            timers: BTreeSet::new(),
            msg_timers: BTreeSet::new(),
            messages: BTreeMap::new(),
            names: BTreeSet::new(),
            dests: BTreeMap::new(),
            conns: BTreeMap::new(),
            queries: BTreeMap::new(),
            batches: BTreeMap::new(),
            suppressions: BTreeSet::new(),
            idempotency: BTreeMap::new(),
            idempotency_in_flight: BTreeMap::new(),
            webhooks,
            dirty: BTreeSet::new(),
            next_batch: 1,
            next_conn: 1,
            next_query: 1,
            next_post: 1,
            next_seq: 1,
            draining: false,
            recovered: false,
            spool_scan_in_flight: false,
            stats: Stats::default(),
            #[cfg(test)]
            never_forget_destinations: false,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Applies one fact about the world. Never panics on any input.
    pub fn handle(&mut self, now: Time, input: Input) {
        match input {
            Input::Tick => {}
            Input::Recovered(snapshot) => self.recover(now, *snapshot),
            Input::Submit(sub) => self.submit(now, sub),
            Input::Resolved { query, result } => self.on_resolved(now, query, result),
            Input::Connected { conn } => self.on_connected(now, conn),
            Input::ConnectFailed { conn, error } => self.on_connect_failed(now, conn, &error),
            Input::Received { conn, bytes } => self.on_received(now, conn, &bytes),
            Input::TlsEstablished { conn, verified } => {
                self.on_tls_established(now, conn, verified)
            }
            Input::TlsFailed { conn, error } => self.on_tls_failed(now, conn, &error),
            Input::Disconnected { conn, error } => {
                self.on_disconnected(now, conn, error.as_deref())
            }
            Input::Persisted { batch } => self.on_persisted(now, batch),
            Input::PersistFailed { batch, error } => self.on_persist_failed(now, batch, &error),
            Input::WebhookResult {
                post,
                result,
                duration_ms,
            } => self.on_webhook_result(now, post, result, duration_ms),
            Input::SpoolScanned { files, live } => self.on_spool_scanned(now, files, live),
            Input::Admin { request, command } => self.admin(now, request, command),
            Input::Drain => self.drain(now),
        }
        self.run_timers(now);
        self.pump_dirty(now);
        self.pump_webhooks(now);
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the engine next needs `Input::Tick`.
    pub fn poll_timeout(&self) -> Option<Time> {
        let t = match (self.timers.first(), self.msg_timers.first()) {
            (Some((a, _)), Some((b, _))) => Some(*a.min(b)),
            (a, b) => a.map(|(t, _)| *t).or(b.map(|(t, _)| *t)),
        };
        match (t, self.webhooks.next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Pending (non-terminal) recipients held.
    pub fn pending_recipients(&self) -> usize {
        self.messages
            .values()
            .map(|m| m.rcpts.iter().filter(|r| !r.status.is_terminal()).count())
            .sum()
    }

    /// Whether a graceful drain has finished: no connection left.
    pub fn is_drained(&self) -> bool {
        self.draining && self.conns.is_empty()
    }

    /// Webhook deliveries not yet done (pending, retrying or in flight), for metrics.
    pub fn webhook_backlog(&self) -> usize {
        self.webhooks.pending_len()
    }

    /// Store batches not yet acknowledged.
    pub fn unpersisted_batches(&self) -> usize {
        self.batches.len()
    }

    /// Destination entries held (metrics, tests): the domains with work, connections, a
    /// cached route, or breaker or rate state (see `Dest::is_forgettable`).
    pub fn destinations(&self) -> usize {
        self.dests.len()
    }

    /// Breakers that are not plainly closed: open, half-open, forced, or closed with
    /// failures counted. An idle breaker (closed, nothing counted) is left out even while
    /// its destination is still held, so that the list does not depend on when idle
    /// destinations were last forgotten.
    pub fn breakers(&self, now: Time) -> Vec<BreakerView> {
        self.dests
            .iter()
            .filter(|(_, d)| !d.breaker.is_idle())
            .map(|(domain, d)| breaker_view(domain, &d.breaker, now))
            .collect()
    }

    pub fn breaker(&self, domain: &str, now: Time) -> Option<BreakerView> {
        self.dests
            .get(domain)
            .map(|d| breaker_view(domain, &d.breaker, now))
    }

    pub fn queue(&self) -> Vec<QueueView> {
        let mut views: BTreeMap<&str, QueueView> = BTreeMap::new();
        for m in self.messages.values().filter(|m| m.committed) {
            for r in m.rcpts.iter() {
                if r.status.is_terminal() {
                    continue;
                }
                let v = views.entry(&r.domain).or_insert_with(|| QueueView {
                    domain: r.domain.to_string(),
                    ..QueueView::default()
                });
                match r.status {
                    RecipientStatus::Queued => v.queued += 1,
                    RecipientStatus::Deferred => v.deferred += 1,
                    _ => v.sending += 1,
                }
                v.oldest_created_at = Some(
                    v.oldest_created_at
                        .map_or(m.created_at, |o| o.min(m.created_at)),
                );
                if let Some(n) = r.next_attempt_at {
                    v.next_attempt_at = Some(v.next_attempt_at.map_or(n, |o| o.min(n)));
                }
            }
        }
        for (domain, d) in &self.dests {
            if let Some(v) = views.get_mut(domain.as_str()) {
                v.connections = d.conns.len() as u64;
            }
        }
        views.into_values().collect()
    }

    // ---- shared plumbing ----

    pub(crate) fn emit(&mut self, out: Output) {
        self.outputs.push_back(out);
    }

    pub(crate) fn set_timer(&mut self, at: Time, timer: Timer) {
        self.timers.insert((at, timer));
    }

    pub(crate) fn clear_timer(&mut self, at: Time, timer: &Timer) {
        self.timers.remove(&(at, timer.clone()));
    }

    pub(crate) fn mint_id(&mut self, now: Time) -> u128 {
        let hi: u64 = self.rng.random();
        let lo: u16 = self.rng.random();
        crate::ids::ulid(now, (u128::from(hi) << 16) | u128::from(lo))
    }

    pub(crate) fn next_conn_id(&mut self) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        id
    }

    pub(crate) fn next_query_id(&mut self) -> QueryId {
        let id = QueryId(self.next_query);
        self.next_query += 1;
        id
    }

    fn run_timers(&mut self, now: Time) {
        // Bounded by the number of timers due; each handler may add timers, but only
        // later ones or ones it has just handled away.
        loop {
            let msg_at = self.msg_timers.first().map(|(t, _)| *t);
            let other_at = self.timers.first().map(|(t, _)| *t);
            match (msg_at, other_at) {
                (Some(m), o) if m <= now && o.is_none_or(|o| m <= o) => {
                    let Some((_, id)) = self.msg_timers.pop_first() else {
                        break;
                    };
                    self.on_msg_timer(now, id);
                }
                (_, Some(o)) if o <= now => {
                    let Some((_, timer)) = self.timers.pop_first() else {
                        break;
                    };
                    match timer {
                        Timer::Conn(conn) => self.on_conn_timer(now, conn),
                        Timer::Dest(domain) => {
                            if let Some(d) = self.dests.get_mut(&domain) {
                                d.timer_at = None;
                            }
                            self.dirty.insert(domain);
                        }
                        Timer::PersistRetry(batch) => self.retry_batch(now, batch),
                        Timer::SpoolScan => self.start_spool_scan(now),
                    }
                }
                _ => break,
            }
        }
    }

    /// A message's timer: its expiry, then its recipients whose next attempt is due (in
    /// that order, so a recipient at its max age is failed rather than attempted again).
    fn on_msg_timer(&mut self, now: Time, id: MessageId) {
        let Some(m) = self.messages.get_mut(&id) else {
            return;
        };
        m.wake = None;
        if m.committed && !m.expired && m.expires_at <= now {
            m.expired = true;
            self.on_expire(now, id);
        }
        let n = self.messages.get(&id).map_or(0, |m| m.rcpts.len());
        for idx in 0..n {
            let due = self
                .messages
                .get(&id)
                .and_then(|m| m.rcpts.get(idx))
                .is_some_and(|r| r.is_waiting() && r.next_attempt_at.is_some_and(|t| t <= now));
            if due {
                self.on_due(now, id, idx as u32);
            }
        }
        self.refresh_wake(id);
    }

    /// Puts the message's timer at its `next_wake` (after its recipients' next attempts or
    /// its state changed).
    pub(crate) fn refresh_wake(&mut self, id: MessageId) {
        let Some(m) = self.messages.get_mut(&id) else {
            return;
        };
        let want = m.next_wake();
        if m.wake == want {
            return;
        }
        if let Some(old) = core::mem::replace(&mut m.wake, want) {
            self.msg_timers.remove(&(old, id));
        }
        if let Some(at) = want {
            self.msg_timers.insert((at, id));
        }
    }

    /// Drops a message from memory with its timer.
    pub(crate) fn forget_message(&mut self, id: MessageId) {
        if let Some(m) = self.messages.remove(&id)
            && let Some(at) = m.wake
        {
            self.msg_timers.remove(&(at, id));
        }
    }

    /// The shared copy of a string many messages hold (a domain, a sender).
    pub(crate) fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(a.clone());
        a
    }

    /// Like `intern`, keeping `s` itself when the string is new.
    pub(crate) fn intern_arc(&mut self, s: Arc<str>) -> Arc<str> {
        if let Some(a) = self.names.get(&*s) {
            return a.clone();
        }
        self.names.insert(s.clone());
        s
    }

    fn drain(&mut self, now: Time) {
        self.draining = true;
        let idle: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_idle())
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.quit_conn(now, id);
        }
    }

    fn start_spool_scan(&mut self, now: Time) {
        if !self.spool_scan_in_flight {
            self.spool_scan_in_flight = true;
            self.emit(Output::ScanSpool);
        }
        self.prune_idempotency(now);
        self.forget_idle_destinations(now);
        // Shared strings no message holds any more.
        self.names.retain(|a| Arc::strong_count(a) > 1);
        let next = now.plus(self.cfg.spool_cleanup_interval);
        self.set_timer(next, Timer::SpoolScan);
    }

    /// Drops the destinations that hold nothing (`Dest::is_forgettable`); one that comes
    /// back later starts from `Dest::default()` and behaves as if it had been kept.
    /// Periodic rather than when a destination's last recipient or connection leaves:
    /// at that moment its route is usually still cached, and what keeps an entry (route
    /// expiry, the rate window, breaker timers) runs out with time, not with an event.
    /// One pass over the map per spool scan, like the pruning of interned names.
    fn forget_idle_destinations(&mut self, now: Time) {
        #[cfg(test)]
        if self.never_forget_destinations {
            return;
        }
        let before = self.dests.len();
        self.dests.retain(|_, d| !d.is_forgettable(now));
        self.stats.destinations_forgotten += (before - self.dests.len()) as u64;
    }

    fn on_spool_scanned(
        &mut self,
        _now: Time,
        files: Result<Vec<crate::io::SpoolFile>, String>,
        live: Result<Vec<MessageId>, String>,
    ) {
        self.spool_scan_in_flight = false;
        let mut in_memory: BTreeSet<MessageId> = self.messages.keys().copied().collect();
        // Messages whose final batch is not yet acknowledged are still live too.
        for b in self.batches.values() {
            in_memory.extend(b.messages());
        }
        if let Ok(orphans) = crate::spool::orphans(_now, self.cfg.max_age, files, live, &in_memory)
            && !orphans.is_empty()
        {
            self.emit(Output::DeleteOrphans { messages: orphans });
        }
    }
}

fn breaker_view(domain: &str, b: &Breaker, now: Time) -> BreakerView {
    BreakerView {
        domain: domain.to_string(),
        state: b.state(now).as_str().to_string(),
        consecutive_failures: b.consecutive_failures(),
        opened_at: b.opened_at(),
        next_probe_at: b.next_probe_at(),
        last_failure: b.last_failure().map(str::to_string),
        forced: b.forced(),
        explanation: b.explain(now),
    }
}

#[cfg(test)]
mod tests;
