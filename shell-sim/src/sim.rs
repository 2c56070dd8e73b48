//! One simulated run: the engine, the world around it, fault and crash injection, and the
//! invariant checks after every step.

use core::net::IpAddr;
use core::time::Duration;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use outpost_core::config::DomainPolicy;
use outpost_core::engine::BreakerView;
use outpost_core::io::{
    AdminCommand, AdminReply, ComposeRequest, DnsAnswer, DnsError, ForcedBreakerState, QueryKind,
    SpoolFile, Submission, SubmissionContent, SubmitErrorKind,
};
use outpost_core::model::{EndpointRecord, EventKind, Source, StoreOp, SuppressionSource};
use outpost_core::status::RecipientStatus;
use outpost_core::{
    BatchId, Config, ConnId, EndpointId, Engine, EventId, Input, MessageId, Output, PostId,
    RequestId, TenantId, Time,
};

use crate::smtp_server::{Act, ServerSession};
use crate::store::{OutboxIssue, Store, check_history};
use crate::trace::{Digest, Lines, fmt_input, fmt_output};
use crate::world::{self, DomainKind, HookBehaviour, Mailbox, TlsBehaviour, Topology, WorldFates};
use crate::{Options, Summary};

/// 2026-01-01T00:00:00Z.
pub const START: Time = Time(1_767_225_600_000);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
/// Longer than any stage timeout: a tarpitted reply arrives after the client gave up.
const TARPIT: Duration = Duration::from_secs(15 * 60);

/// An invariant violation: which one and what happened.
#[derive(Debug)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

type R = Result<(), Violation>;

fn v(invariant: &'static str, detail: String) -> R {
    Err(Violation { invariant, detail })
}

#[derive(Clone, Debug)]
enum SubKind {
    Valid,
    /// Must be refused (with this kind, when the reason is unambiguous).
    Invalid(&'static str),
}

enum Ev {
    Submit,
    Admin,
    Crash,
    Jump(Duration),
    ForceClose(String),
    Check,
    Dns {
        epoch: u32,
        query: outpost_core::QueryId,
        result: Result<DnsAnswer, DnsError>,
    },
    ConnUp {
        epoch: u32,
        conn: ConnId,
    },
    ConnFail {
        epoch: u32,
        conn: ConnId,
        error: String,
    },
    Bytes {
        epoch: u32,
        conn: ConnId,
        bytes: Vec<u8>,
        replies: u32,
        accept: Option<u64>,
    },
    PeerClose {
        epoch: u32,
        conn: ConnId,
    },
    Tls {
        epoch: u32,
        conn: ConnId,
        result: Result<bool, String>,
    },
    PersistDone {
        epoch: u32,
        batch: BatchId,
    },
    Webhook {
        epoch: u32,
        post: PostId,
        endpoint: EndpointId,
        event: EventId,
        result: Result<u16, String>,
        duration_ms: u64,
    },
    Scan {
        epoch: u32,
    },
}

struct Conn {
    domain: usize,
    connected: bool,
    tls_pending: bool,
    server: ServerSession,
    next_at: Time,
    probe: bool,
    tenant: Option<TenantId>,
    mail_at: Time,
    txn_base: Time,
    body: Option<MessageId>,
    connect_at: Time,
    last_rx: Time,
    txns: u32,
    /// When the engine last chose what to send: the Connect for the first transaction,
    /// the last reply read before MAIL for later ones.
    decided_at: Time,
}

struct Inflight {
    batch: BatchId,
    ops: Vec<StoreOp>,
    fail: bool,
    expect_deliveries: Vec<(EndpointId, EventId)>,
}

struct Accept {
    epoch: u32,
    seen: bool,
}

struct Pending {
    kind: SubKind,
    idem: Option<(String, u64)>,
    tenant: TenantId,
}

struct IdemRec {
    content: u64,
    id: Option<MessageId>,
    at: Time,
}

pub struct Sim {
    seed: u64,
    opts: Options,
    cfg: Config,
    rng: ChaCha8Rng,
    now: Time,
    q: crate::queue::EventQueue<Ev>,
    epoch: u32,
    engine: Engine,
    store: Store,
    topo: Topology,
    salt: u64,
    greylist: HashMap<String, u32>,
    tenants: Vec<String>,
    // Connections.
    conns: HashMap<ConnId, Conn>,
    dead_conns: HashSet<ConnId>,
    open_per_domain: Vec<usize>,
    probes_per_domain: Vec<usize>,
    last_success: Vec<Time>,
    // Store writer.
    inflight: VecDeque<Inflight>,
    store_free_at: Time,
    // What the engine knows is durable.
    durable_events: HashSet<EventId>,
    known_endpoints: BTreeMap<EndpointId, EndpointRecord>,
    supp_known: HashMap<(TenantId, String), Time>,
    sending_emitted: HashMap<(TenantId, String), Time>,
    insert_acked: HashSet<MessageId>,
    // Submissions and admin.
    next_request: u64,
    pending: HashMap<RequestId, Pending>,
    admin_pending: HashMap<RequestId, AdminCommand>,
    acked: BTreeMap<MessageId, usize>,
    idem: BTreeMap<(TenantId, String), IdemRec>,
    past: Vec<(TenantId, ComposeRequest)>,
    submitted: usize,
    // Deliveries at the simulated servers.
    accepts: HashMap<(MessageId, String), Vec<Accept>>,
    accept_tokens: HashMap<u64, Vec<(MessageId, String)>>,
    next_token: u64,
    // Webhooks.
    hooks: BTreeMap<EndpointId, HookBehaviour>,
    hook_inflight: HashMap<EndpointId, usize>,
    posted_ok: HashSet<(EndpointId, EventId)>,
    deleted_endpoints: HashSet<EndpointId>,
    removed_suppressions: HashSet<(TenantId, String)>,
    /// Recipient updates whose batch failed and that no later commit superseded.
    failed_updates: HashSet<(MessageId, u32)>,
    // Spool scans.
    last_scan_ok: Option<bool>,
    // Clock.
    last_gap_end: Time,
    same_time_ticks: u64,
    crashes_left: u32,
    // Output.
    pub digest: Digest,
    outs: Vec<Output>,
    pub lines: Lines,
    pub sum: Summary,
    steps: u64,
}

fn pick<T: Clone>(rng: &mut ChaCha8Rng, xs: &[T]) -> Option<T> {
    if xs.is_empty() {
        None
    } else {
        Some(xs[rng.random_range(0..xs.len())].clone())
    }
}

fn config_for(rng: &mut ChaCha8Rng, opts: &Options, topo: &Topology) -> Config {
    let mut c = Config {
        hostname: "outpost.sim.example".into(),
        ..Config::default()
    };
    if opts.faults > 0 {
        c.max_age = *pick(rng, &[2 * HOUR, 24 * HOUR, 3 * 24 * HOUR, 7 * 24 * HOUR])
            .get_or_insert(7 * 24 * HOUR);
        c.breaker.failure_threshold = rng.random_range(2..=5);
        c.destination.max_connections = pick(rng, &[1usize, 2, 3, 10]).unwrap_or(10);
        c.destination.max_messages_per_connection = pick(rng, &[1u32, 5, 100]).unwrap_or(100);
        c.destination.max_recipients_per_transaction = pick(rng, &[2usize, 100]).unwrap_or(100);
        c.webhooks.give_up_after = pick(rng, &[6 * HOUR, 3 * 24 * HOUR]).unwrap_or(6 * HOUR);
        for d in &topo.domains {
            if rng.random_bool(0.1) {
                c.domains.insert(
                    d.name.clone(),
                    DomainPolicy {
                        require_tls: d.b.caps.starttls && rng.random_bool(0.3),
                        max_connections: Some(1),
                        messages_per_minute: None,
                    },
                );
            }
        }
    }
    c
}

impl Sim {
    pub fn new(seed: u64, opts: &Options) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let active = Duration::from_secs(opts.active_secs.max(1));
        let topo = world::build(&mut rng, opts.domains.max(1), opts.faults, START, active);
        let cfg = config_for(&mut rng, opts, &topo);
        let engine_seed = rng.random::<u64>();
        let salt = rng.random::<u64>();
        let nd = topo.domains.len();
        let tenants = (1..=opts.tenants.max(1))
            .map(|t| format!("tenant{t}.com"))
            .collect();
        Sim {
            seed,
            opts: opts.clone(),
            engine: Engine::new(cfg.clone(), engine_seed),
            cfg,
            rng,
            now: START,
            q: Default::default(),
            epoch: 0,
            store: Store::default(),
            topo,
            salt,
            greylist: HashMap::new(),
            tenants,
            conns: HashMap::new(),
            dead_conns: HashSet::new(),
            open_per_domain: vec![0; nd],
            probes_per_domain: vec![0; nd],
            last_success: vec![Time::ZERO; nd],
            inflight: VecDeque::new(),
            store_free_at: START,
            durable_events: HashSet::new(),
            known_endpoints: BTreeMap::new(),
            supp_known: HashMap::new(),
            sending_emitted: HashMap::new(),
            insert_acked: HashSet::new(),
            next_request: 1,
            pending: HashMap::new(),
            admin_pending: HashMap::new(),
            acked: BTreeMap::new(),
            idem: BTreeMap::new(),
            past: Vec::new(),
            submitted: 0,
            accepts: HashMap::new(),
            accept_tokens: HashMap::new(),
            next_token: 1,
            hooks: BTreeMap::new(),
            hook_inflight: HashMap::new(),
            posted_ok: HashSet::new(),
            deleted_endpoints: HashSet::new(),
            removed_suppressions: HashSet::new(),
            failed_updates: HashSet::new(),
            last_scan_ok: None,
            last_gap_end: START,
            same_time_ticks: 0,
            crashes_left: opts.crashes,
            digest: Digest::default(),
            outs: Vec::new(),
            lines: Lines {
                all: opts.trace,
                tail: opts.tail,
                lines: VecDeque::new(),
            },
            sum: Summary {
                seeds: 1,
                ..Summary::default()
            },
            steps: 0,
        }
    }

    /// A check with a finding key: fails the run unless the key is allowed, then counts.
    fn soft(&mut self, key: &'static str, invariant: &'static str, detail: String) -> R {
        if self.opts.allow.iter().any(|a| a == key) {
            *self.sum.allowed.entry(key.to_string()).or_default() += 1;
            return Ok(());
        }
        Err(Violation {
            invariant,
            detail: format!("{detail} [finding key: {key}]"),
        })
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random_bool(p.min(1.0))
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(lo..=hi.max(lo)))
    }

    fn note(&mut self, s: String) {
        if self.lines.on() {
            self.lines.push(self.now, START, s);
        }
    }

    fn fault_p(&self, base: f64) -> f64 {
        base * f64::from(self.opts.faults.min(3)) / 3.0
    }

    /// The plan: submissions, admin calls, crashes, clock jumps, periodic checks.
    fn plan(&mut self) {
        let active = self.opts.active_secs.max(1) * 1000;
        for _ in 0..self.opts.messages {
            // Bursts: a third of the submissions arrive in a handful of instants.
            let t = if self.chance(0.3) {
                (self.rng.random_range(0..8u64) * active) / 8
            } else {
                self.rng.random_range(0..active)
            };
            self.q.push(Time(START.0 + t), Ev::Submit);
        }
        if self.opts.admin {
            let n = (self.opts.messages / 10).max(3);
            for _ in 0..n {
                let t = self.rng.random_range(0..active);
                self.q.push(Time(START.0 + t), Ev::Admin);
            }
        }
        // Half the crashes at random times; the rest are triggered at interesting points.
        let timed = self.opts.crashes.div_ceil(2);
        for _ in 0..timed {
            let t = self.rng.random_range(0..active + 3_600_000);
            self.q.push(Time(START.0 + t), Ev::Crash);
        }
        self.crashes_left = self.opts.crashes - timed;
        if self.opts.jumps && self.opts.faults > 0 {
            for _ in 0..self.rng.random_range(0..=2u32) {
                let t = self.rng.random_range(0..active);
                let d = Duration::from_secs(self.rng.random_range(60..2 * 24 * 3600));
                self.q.push(Time(START.0 + t), Ev::Jump(d));
            }
        }
        self.q.push(START.plus(30 * MIN), Ev::Check);
    }

    /// Endpoint creation at the start, like an operator setting up before traffic.
    fn initial_endpoints(&mut self) -> R {
        for t in 0..self.tenants.len() {
            if self.opts.faults > 0 && !self.chance(0.8) {
                continue;
            }
            let events = if self.chance(0.5) {
                vec![]
            } else {
                vec![EventKind::Delivered, EventKind::Bounced, EventKind::Failed]
            };
            self.admin(Some(AdminCommand::CreateEndpoint {
                tenant: TenantId(t as u64 + 1),
                url: format!("https://hooks.{}/outpost", self.tenants[t]),
                events,
                secret: (0..32).map(|i| (i * 7 + t) as u8).collect(),
            }))?;
        }
        Ok(())
    }

    pub fn run(&mut self) -> Result<(), Violation> {
        self.plan();
        let snap = self.store.snapshot(self.now, &self.cfg);
        self.feed(Input::Recovered(Box::new(snap)))?;
        self.initial_endpoints()?;
        let active = Duration::from_secs(self.opts.active_secs.max(1));
        let retry_max = self
            .cfg
            .retry_schedule
            .iter()
            .max()
            .copied()
            .unwrap_or(HOUR);
        let tail = self
            .cfg
            .max_age
            .saturating_add(self.cfg.webhooks.give_up_after)
            .saturating_add(retry_max)
            .saturating_add(6 * HOUR);
        let planned_end = START.plus(active).plus(tail);
        let mut last_tick = Time::ZERO;
        loop {
            if self.steps > self.opts.max_steps {
                return v(
                    "progress",
                    format!(
                        "step budget of {} exceeded at {:?}",
                        self.opts.max_steps, self.now
                    ),
                );
            }
            // Clock jumps push the whole workload later: so does the end of the drain.
            let end = planned_end.max(self.last_gap_end.plus(active).plus(tail));
            let te = self.engine.poll_timeout();
            let tq = self.q.peek_time();
            let timer_first = match (te, tq) {
                (None, None) => break,
                (Some(a), Some(b)) => a <= b,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if timer_first {
                let t = te.unwrap_or(self.now).max(self.now);
                if t > end {
                    break;
                }
                if t == last_tick {
                    self.same_time_ticks += 1;
                    if self.same_time_ticks > 10_000 {
                        return v(
                            "progress",
                            format!("poll_timeout stays at {t:?} after 10000 ticks (busy loop)"),
                        );
                    }
                } else {
                    self.same_time_ticks = 0;
                }
                last_tick = t;
                self.now = t;
                self.feed(Input::Tick)?;
            } else if let Some((t, ev)) = self.q.pop() {
                if t > end {
                    break;
                }
                self.now = self.now.max(t);
                self.event(ev)?;
            }
        }
        self.final_checks()
    }

    /// One input to the engine, then every output it has.
    fn feed(&mut self, input: Input) -> R {
        self.steps += 1;
        self.sum.steps += 1;
        self.digest.input(self.now, &input);
        if self.lines.on() {
            let s = format!("> {}", fmt_input(&input));
            self.note(s);
        }
        let now = self.now;
        let engine = &mut self.engine;
        // Reuse one buffer for the outputs of every step.
        let mut outs = std::mem::take(&mut self.outs);
        let r = catch_unwind(AssertUnwindSafe(|| {
            engine.handle(now, input);
            while let Some(o) = engine.poll_output() {
                outs.push(o);
            }
        }));
        if let Err(p) = r {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return v("engine panic", msg);
        }
        let mut r = Ok(());
        for o in outs.drain(..) {
            if r.is_err() {
                continue;
            }
            self.digest.output(&o);
            if self.lines.on() {
                let s = format!("  < {}", fmt_output(&o));
                self.note(s);
            }
            r = self.output(o);
        }
        self.outs = outs;
        r
    }

    fn live_epoch(&self, epoch: u32) -> bool {
        epoch == self.epoch
    }

    fn event(&mut self, ev: Ev) -> R {
        match ev {
            Ev::Submit => self.submit(),
            Ev::Admin => self.admin(None),
            Ev::Crash => self.crash(),
            Ev::Jump(d) => {
                self.note(format!("-- clock jumps forward {}s", d.as_secs()));
                self.now = self.now.plus(d);
                self.last_gap_end = self.now;
                self.sum.faults += 1;
                self.feed(Input::Tick)
            }
            Ev::ForceClose(domain) => self.admin(Some(AdminCommand::ForceBreaker {
                domain,
                state: ForcedBreakerState::Closed,
            })),
            Ev::Check => {
                self.q.push(self.now.plus(30 * MIN), Ev::Check);
                self.check_ages()
            }
            Ev::Dns {
                epoch,
                query,
                result,
            } => {
                if !self.live_epoch(epoch) {
                    return Ok(());
                }
                self.feed(Input::Resolved { query, result })
            }
            Ev::ConnUp { epoch, conn } => {
                if !self.live_epoch(epoch) || !self.conns.contains_key(&conn) {
                    return Ok(());
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.connected = true;
                }
                self.feed(Input::Connected { conn })?;
                if !self.conns.contains_key(&conn) {
                    return Ok(());
                }
                let acts = self.with_fates(conn, |s, f| s.greet(f));
                self.server_acts(conn, acts)
            }
            Ev::ConnFail { epoch, conn, error } => {
                if !self.live_epoch(epoch) || !self.conns.contains_key(&conn) {
                    return Ok(());
                }
                self.drop_conn(conn);
                self.feed(Input::ConnectFailed { conn, error })
            }
            Ev::Bytes {
                epoch,
                conn,
                bytes,
                replies,
                accept,
            } => {
                if !self.live_epoch(epoch) {
                    return Ok(());
                }
                let Some(c) = self.conns.get_mut(&conn) else {
                    return Ok(());
                };
                c.server.outstanding = c.server.outstanding.saturating_sub(replies);
                c.last_rx = self.now;
                if let Some(tok) = accept {
                    let epoch = self.epoch;
                    for key in self.accept_tokens.remove(&tok).unwrap_or_default() {
                        if let Some(last) = self.accepts.get_mut(&key).and_then(|v| v.last_mut())
                            && last.epoch == epoch
                        {
                            last.seen = true;
                        }
                    }
                    let d = c.domain;
                    self.last_success[d] = self.now;
                    // A crash right after the 250, before its status is persisted.
                    if self.crashes_left > 0 && self.chance(0.05) {
                        self.crashes_left -= 1;
                        let d = self.ms(0, 3);
                        self.q.push(self.now.plus(d), Ev::Crash);
                    }
                }
                self.feed(Input::Received { conn, bytes })
            }
            Ev::PeerClose { epoch, conn } => {
                if !self.live_epoch(epoch) || !self.conns.contains_key(&conn) {
                    return Ok(());
                }
                self.drop_conn(conn);
                self.feed(Input::Disconnected {
                    conn,
                    error: Some("connection closed by peer".into()),
                })
            }
            Ev::Tls {
                epoch,
                conn,
                result,
            } => {
                if !self.live_epoch(epoch) || !self.conns.contains_key(&conn) {
                    return Ok(());
                }
                match result {
                    Ok(verified) => {
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.tls_pending = false;
                            c.server.tls_established();
                        }
                        self.feed(Input::TlsEstablished { conn, verified })
                    }
                    Err(error) => {
                        self.drop_conn(conn);
                        self.feed(Input::TlsFailed { conn, error })
                    }
                }
            }
            Ev::PersistDone { epoch, batch } => {
                if !self.live_epoch(epoch) {
                    return Ok(());
                }
                self.persist_done(batch)
            }
            Ev::Webhook {
                epoch,
                post,
                endpoint,
                event,
                result,
                duration_ms,
            } => {
                if !self.live_epoch(epoch) {
                    return Ok(());
                }
                if let Some(n) = self.hook_inflight.get_mut(&endpoint) {
                    *n = n.saturating_sub(1);
                }
                if matches!(result, Ok(c) if (200..300).contains(&c)) {
                    self.posted_ok.insert((endpoint, event));
                }
                self.feed(Input::WebhookResult {
                    post,
                    result,
                    duration_ms,
                })
            }
            Ev::Scan { epoch } => {
                if !self.live_epoch(epoch) {
                    return Ok(());
                }
                let files_fail = self.chance(self.fault_p(0.05));
                let live_fail = self.chance(self.fault_p(0.2));
                if files_fail || live_fail {
                    self.sum.faults += 1;
                    self.sum.scans_failed += 1;
                }
                let files = if files_fail {
                    Err("EIO listing spool directory".to_string())
                } else {
                    Ok(self
                        .store
                        .spool
                        .iter()
                        .map(|(m, e)| SpoolFile {
                            message: *m,
                            modified: e.modified,
                        })
                        .collect())
                };
                let live = if live_fail {
                    Err("database is locked".to_string())
                } else {
                    Ok(self.store.live.iter().copied().collect())
                };
                self.last_scan_ok = Some(!files_fail && !live_fail);
                self.feed(Input::SpoolScanned { files, live })
            }
        }
    }

    fn with_fates<T>(
        &mut self,
        conn: ConnId,
        f: impl FnOnce(&mut ServerSession, &mut WorldFates<'_>) -> T,
    ) -> T {
        let Sim {
            conns,
            topo,
            rng,
            now,
            salt,
            opts,
            greylist,
            sum,
            ..
        } = self;
        // `conn` is known to exist: callers check first.
        let c = conns.get_mut(&conn).expect("connection exists");
        let mut fates = WorldFates {
            rng,
            b: &topo.domains[c.domain].b,
            now: *now,
            salt: *salt,
            faults_level: opts.faults,
            greylist,
            injected: 0,
        };
        let out = f(&mut c.server, &mut fates);
        sum.faults += fates.injected;
        out
    }

    fn drop_conn(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn) {
            self.open_per_domain[c.domain] = self.open_per_domain[c.domain].saturating_sub(1);
            if c.probe {
                self.probes_per_domain[c.domain] =
                    self.probes_per_domain[c.domain].saturating_sub(1);
            }
        }
        self.dead_conns.insert(conn);
    }

    fn tenant_of_sender(&self, from: &str) -> Option<TenantId> {
        let dom = from.rsplit_once('@')?.1.to_ascii_lowercase();
        self.tenants
            .iter()
            .position(|t| *t == dom)
            .map(|i| TenantId(i as u64 + 1))
    }

    fn server_acts(&mut self, conn: ConnId, acts: Vec<Act>) -> R {
        let mut token: Option<u64> = None;
        for a in acts {
            let Some(c) = self.conns.get(&conn) else {
                return Ok(());
            };
            let (domain, body, next_at) = (c.domain, c.body, c.next_at);
            match a {
                Act::Violation(s) => {
                    return v(
                        "smtp protocol",
                        format!(
                            "conn c{} to {}: {s}",
                            conn.0, self.topo.domains[domain].name
                        ),
                    );
                }
                Act::MailSeen(from) => {
                    let t = self.tenant_of_sender(&from);
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.tenant = t;
                        c.mail_at = self.now;
                        c.decided_at = if c.txns == 0 { c.connect_at } else { c.last_rx };
                        c.txns += 1;
                    }
                }
                Act::RcptSeen(to) => self.check_rcpt(conn, &to)?,
                Act::Accepted(rcpts) => {
                    let Some(msg) = body else {
                        return v("sim", "accepted without a body".into());
                    };
                    let tok = self.next_token;
                    self.next_token += 1;
                    let mut keys = Vec::new();
                    for r in rcpts {
                        let key = (msg, r.to_ascii_lowercase());
                        self.accepted(&key)?;
                        keys.push(key);
                    }
                    self.accept_tokens.insert(tok, keys);
                    token = Some(tok);
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.txn_base = self.now;
                    }
                }
                Act::Send {
                    bytes,
                    replies,
                    slow,
                } => {
                    let (lo, hi) = self.topo.domains[domain].b.latency_ms;
                    let lat = self.ms(lo, hi);
                    let mut t = self.now.plus(lat).max(next_at);
                    if slow {
                        t = self.now.plus(TARPIT).max(next_at);
                    }
                    // Sometimes a reply arrives in two reads.
                    if bytes.len() > 6 && self.chance(0.1) {
                        let cut = self.rng.random_range(1..bytes.len());
                        self.q.push(
                            t,
                            Ev::Bytes {
                                epoch: self.epoch,
                                conn,
                                bytes: bytes[..cut].to_vec(),
                                replies: 0,
                                accept: None,
                            },
                        );
                        t = t.plus(Duration::from_millis(1));
                        self.q.push(
                            t,
                            Ev::Bytes {
                                epoch: self.epoch,
                                conn,
                                bytes: bytes[cut..].to_vec(),
                                replies,
                                accept: token.take(),
                            },
                        );
                    } else {
                        self.q.push(
                            t,
                            Ev::Bytes {
                                epoch: self.epoch,
                                conn,
                                bytes,
                                replies,
                                accept: token.take(),
                            },
                        );
                    }
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.next_at = t;
                    }
                }
                Act::Close => {
                    let t = next_at.max(self.now).plus(Duration::from_millis(1));
                    self.q.push(
                        t,
                        Ev::PeerClose {
                            epoch: self.epoch,
                            conn,
                        },
                    );
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.next_at = t;
                    }
                }
            }
        }
        Ok(())
    }

    /// Invariant 5: no suppressed address is contacted.
    fn check_rcpt(&mut self, conn: ConnId, to: &str) -> R {
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let Some(tenant) = c.tenant else {
            return Ok(());
        };
        let key = (tenant, to.to_ascii_lowercase());
        if let Some(&known) = self.supp_known.get(&key) {
            let (decided, mail_at) = (c.decided_at, c.mail_at);
            if known < decided {
                return self.soft(
                    "suppression-not-rechecked",
                    "5 suppression",
                    format!(
                        "RCPT TO:<{to}> for tenant {} on c{}: suppressed (durable, acknowledged) at {}, before the engine chose this transaction ({}: {}); MAIL FROM at {}",
                        tenant.0,
                        conn.0,
                        known.rfc3339(),
                        if c.txns <= 1 { "Connect" } else { "last reply before MAIL" },
                        decided.rfc3339(),
                        mail_at.rfc3339()
                    ),
                );
            }
            if known < mail_at {
                return self.soft(
                    "suppression-race",
                    "5 suppression",
                    format!(
                        "RCPT TO:<{to}> for tenant {} on c{}: suppressed (durable, acknowledged) at {}, after the engine chose the transaction ({}) but before MAIL FROM ({}): not re-checked at transaction start",
                        tenant.0,
                        conn.0,
                        known.rfc3339(),
                        decided.rfc3339(),
                        mail_at.rfc3339()
                    ),
                );
            }
        }
        Ok(())
    }

    /// Invariant 2: a recipient accepted by a server twice.
    fn accepted(&mut self, key: &(MessageId, String)) -> R {
        let epoch = self.epoch;
        let store_terminal = self.store.messages.get(&key.0).and_then(|m| {
            m.recipients
                .iter()
                .find(|r| r.address.eq_ignore_ascii_case(&key.1))
                .map(|r| r.status)
        });
        let prev = self.accepts.entry(key.clone()).or_default();
        if let Some(p) = prev.iter().find(|p| p.seen && p.epoch == epoch) {
            let _ = p;
            return v(
                "2 duplicate delivery",
                format!(
                    "{}:{} accepted (end-of-data 250) again after the engine had read an earlier 250 in the same process lifetime",
                    key.0, key.1
                ),
            );
        }
        if !prev.is_empty() {
            if prev.iter().any(|p| p.epoch != epoch) {
                self.sum.dup_crash += 1;
            } else {
                self.sum.dup_timeout += 1;
            }
        }
        prev.push(Accept { epoch, seen: false });
        if let Some(s) = store_terminal
            && s.is_terminal()
        {
            return v(
                "2 duplicate delivery",
                format!(
                    "{}:{} accepted by a server while the store already holds it as {}",
                    key.0,
                    key.1,
                    s.as_str()
                ),
            );
        }
        self.sum.delivered_at_servers += 1;
        Ok(())
    }

    fn output(&mut self, o: Output) -> R {
        match o {
            Output::Persist { batch, ops } => self.persist(batch, ops),
            Output::SubmitAccepted { request, receipt } => {
                let Some(p) = self.pending.remove(&request) else {
                    return v(
                        "submission answers",
                        format!(
                            "r{} accepted but not pending (answered twice, or unknown)",
                            request.0
                        ),
                    );
                };
                if !self.store.messages.contains_key(&receipt.id) {
                    return v(
                        "1 durability",
                        format!(
                            "r{} acknowledged (202) as {} before the message was durable in the store",
                            request.0, receipt.id
                        ),
                    );
                }
                if let SubKind::Invalid(why) = p.kind {
                    return v(
                        "intake",
                        format!("r{} accepted an invalid submission: {why}", request.0),
                    );
                }
                if receipt.recipients.is_empty() {
                    return v(
                        "intake",
                        format!("r{} accepted with no recipients", request.0),
                    );
                }
                if let Some((key, content)) = p.idem {
                    let window = self.cfg.idempotency_window;
                    let created = self
                        .store
                        .messages
                        .get(&receipt.id)
                        .map_or(self.now, |m| m.created_at);
                    let now = self.now;
                    let rec = self.idem.entry((p.tenant, key.clone())).or_insert(IdemRec {
                        content,
                        id: None,
                        at: now,
                    });
                    match rec.id {
                        Some(id0) if now < rec.at.plus(window).minus(MIN) => {
                            if rec.content != content {
                                return v(
                                    "idempotency",
                                    format!(
                                        "key {key:?} reused with other content was accepted as {} (first {id0})",
                                        receipt.id
                                    ),
                                );
                            }
                            if id0 != receipt.id {
                                return v(
                                    "idempotency",
                                    format!(
                                        "key {key:?} replayed: got {} but the first request got {id0}",
                                        receipt.id
                                    ),
                                );
                            }
                        }
                        _ => {
                            // The window runs from the message's creation (which an
                            // acknowledgement lost in a crash and replayed can trail).
                            rec.id = Some(receipt.id);
                            rec.content = content;
                            rec.at = created;
                        }
                    }
                }
                if !self.acked.contains_key(&receipt.id) {
                    self.sum.messages += 1;
                    self.sum.recipients += receipt.recipients.len() as u64;
                }
                self.acked.insert(receipt.id, receipt.recipients.len());
                Ok(())
            }
            Output::SubmitRejected { request, error } => {
                let Some(p) = self.pending.remove(&request) else {
                    return v(
                        "submission answers",
                        format!(
                            "r{} rejected but not pending (answered twice, or unknown)",
                            request.0
                        ),
                    );
                };
                self.sum.rejected += 1;
                if matches!(p.kind, SubKind::Valid)
                    && error.kind != SubmitErrorKind::Unavailable
                    && error.kind != SubmitErrorKind::Conflict
                {
                    self.sum.valid_refused += 1;
                    if self.sum.valid_refused_example.is_empty() {
                        self.sum.valid_refused_example =
                            format!("{}: {}", error.code, error.message);
                    }
                }
                Ok(())
            }
            Output::Resolve { query, name, kind } => {
                let lat = self.ms(1, 40);
                let (result, lat) = self.resolve(&name, kind, lat);
                self.q.push(
                    self.now.plus(lat),
                    Ev::Dns {
                        epoch: self.epoch,
                        query,
                        result,
                    },
                );
                Ok(())
            }
            Output::Connect { conn, ip, port, mx } => self.connect(conn, ip, port, &mx),
            Output::Send { conn, bytes } => {
                self.conn_usable(conn, "Send")?;
                let acts = self.with_fates(conn, |s, f| s.on_bytes(&bytes, f));
                self.server_acts(conn, acts)
            }
            Output::SendSpool { conn, message } => {
                self.conn_usable(conn, "SendSpool")?;
                if !self.store.spool.contains_key(&message) {
                    return v(
                        "6 spool",
                        format!(
                            "SendSpool c{} of {message}: no spool file (deleted or never written)",
                            conn.0
                        ),
                    );
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.body = Some(message);
                }
                let acts = self.with_fates(conn, |s, f| s.body(f));
                self.server_acts(conn, acts)
            }
            Output::StartTls {
                conn,
                require_verified,
                ..
            } => {
                self.conn_usable(conn, "StartTls")?;
                let (d, check) = match self.conns.get(&conn) {
                    Some(c) => (c.domain, c.server.start_tls_ok()),
                    None => return Ok(()),
                };
                if let Err(e) = check {
                    return v("smtp protocol", format!("c{}: {e}", conn.0));
                }
                let result = match self.topo.domains[d].b.tls {
                    TlsBehaviour::HandshakeFails => {
                        self.sum.faults += 1;
                        Err("handshake failure: no shared cipher".to_string())
                    }
                    TlsBehaviour::Unverified if require_verified => {
                        Err("certificate verify failed: self-signed certificate".to_string())
                    }
                    TlsBehaviour::Unverified => Ok(false),
                    TlsBehaviour::Verified => Ok(true),
                };
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.tls_pending = true;
                }
                let lat = self.ms(2, 60);
                self.q.push(
                    self.now.plus(lat),
                    Ev::Tls {
                        epoch: self.epoch,
                        conn,
                        result,
                    },
                );
                Ok(())
            }
            Output::Close { conn } => {
                if self.dead_conns.contains(&conn) {
                    return v(
                        "connections",
                        format!(
                            "Close c{} after the engine was told it was gone (or closed it already)",
                            conn.0
                        ),
                    );
                }
                if !self.conns.contains_key(&conn) {
                    return v(
                        "connections",
                        format!("Close of unknown connection c{}", conn.0),
                    );
                }
                self.drop_conn(conn);
                Ok(())
            }
            Output::PostWebhook {
                post,
                endpoint,
                event,
                headers,
                body,
                timeout,
                ..
            } => self.post_webhook(post, endpoint, event, &headers, &body, timeout),
            Output::DeleteSpool { message } => {
                if self.store.live.contains(&message) {
                    let st: Vec<_> = self
                        .store
                        .messages
                        .get(&message)
                        .map(|r| r.recipients.iter().map(|x| x.status.as_str()).collect())
                        .unwrap_or_default();
                    // Keep the file when allowed, to look past this finding.
                    return self.soft(
                        "delete-spool-undurable",
                        "6 spool",
                        format!("DeleteSpool of {message}, a live message in the store (recipients {st:?}): its final statuses are not all durable"),
                    );
                }
                self.check_deletable(message, "DeleteSpool", false)?;
                self.store.spool.remove(&message);
                Ok(())
            }
            Output::ScanSpool => {
                let lat = self.ms(1, 200);
                self.q
                    .push(self.now.plus(lat), Ev::Scan { epoch: self.epoch });
                Ok(())
            }
            Output::DeleteOrphans { messages } => {
                if !messages.is_empty() && self.last_scan_ok != Some(true) {
                    return v(
                        "6 spool",
                        format!(
                            "DeleteOrphans of {} files although the last spool scan in this process {}",
                            messages.len(),
                            if self.last_scan_ok.is_none() {
                                "never happened"
                            } else {
                                "failed to read the listing or the live set"
                            }
                        ),
                    );
                }
                for m in messages {
                    self.check_deletable(m, "DeleteOrphans", true)?;
                    if self.store.spool.remove(&m).is_some() {
                        self.sum.orphans_deleted += 1;
                    }
                }
                Ok(())
            }
            Output::AdminAnswer { request, result } => {
                let Some(cmd) = self.admin_pending.remove(&request) else {
                    return v(
                        "admin answers",
                        format!("r{} answered but not pending", request.0),
                    );
                };
                match (&cmd, &result) {
                    (AdminCommand::CreateEndpoint { .. }, Ok(AdminReply::Endpoint(rec))) => {
                        let b = world::hook_behaviour(&mut self.rng, self.opts.faults, self.now);
                        self.hooks.insert(rec.id, b);
                    }
                    (
                        AdminCommand::Cancel {
                            tenant: Some(t),
                            message,
                        },
                        Ok(AdminReply::Recipients(n)),
                    ) if *n > 0
                        && self
                            .store
                            .messages
                            .get(message)
                            .is_some_and(|m| m.tenant != *t) =>
                    {
                        return v(
                            "tenancy",
                            format!(
                                "tenant {} cancelled {n} recipients of {message}, which belongs to another tenant",
                                t.0
                            ),
                        );
                    }
                    (AdminCommand::DeleteEndpoint { endpoint, .. }, Ok(_)) => {
                        self.deleted_endpoints.insert(*endpoint);
                    }
                    _ => {}
                }
                Ok(())
            }
        }
    }

    fn conn_usable(&self, conn: ConnId, what: &str) -> R {
        if self.dead_conns.contains(&conn) && !self.conns.contains_key(&conn) {
            // The peer may have closed with the news still on its way: only a write after
            // the engine itself closed, or after it was told, is wrong. Those are in
            // `dead_conns` too, so tell them apart by whether the close was delivered.
            return v(
                "connections",
                format!("{what} on c{} after it was closed or reported gone", conn.0),
            );
        }
        let Some(c) = self.conns.get(&conn) else {
            return v(
                "connections",
                format!("{what} on unknown connection c{}", conn.0),
            );
        };
        if !c.connected {
            return v(
                "connections",
                format!("{what} on c{} before Connected", conn.0),
            );
        }
        if c.tls_pending {
            return v(
                "smtp protocol",
                format!("{what} on c{} during the TLS handshake", conn.0),
            );
        }
        Ok(())
    }

    /// Invariant 6: a spool file may go only if no live message needs it.
    fn check_deletable(&self, m: MessageId, what: &str, orphan: bool) -> R {
        if self.store.live.contains(&m) {
            let st: Vec<_> = self
                .store
                .messages
                .get(&m)
                .map(|r| r.recipients.iter().map(|x| x.status.as_str()).collect())
                .unwrap_or_default();
            return v(
                "6 spool",
                format!("{what} of {m}, a live message (recipients {st:?} in the store)"),
            );
        }
        if self.inflight.iter().any(|b| {
            b.ops
                .iter()
                .any(|o| matches!(o, StoreOp::InsertMessage { message, .. } if message.id == m))
        }) {
            return v(
                "6 spool",
                format!("{what} of {m}, whose insert is still being written"),
            );
        }
        if orphan {
            if let Some(e) = self.store.spool.get(&m)
                && e.modified > self.now.minus(self.cfg.max_age)
            {
                return v(
                    "6 spool",
                    format!(
                        "{what} of {m}, a spool file younger than max age (written {:?})",
                        e.modified
                    ),
                );
            }
        } else if !self.store.messages.contains_key(&m) {
            return v(
                "6 spool",
                format!("{what} of {m}, a message the store does not have"),
            );
        }
        Ok(())
    }

    fn resolve(
        &mut self,
        name: &str,
        kind: QueryKind,
        lat: Duration,
    ) -> (Result<DnsAnswer, DnsError>, Duration) {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let di = self
            .topo
            .by_name
            .get(&name)
            .copied()
            .or_else(|| self.topo.hosts.get(&name).map(|x| x.0));
        if let Some(d) = di {
            let p = self.topo.domains[d].b.dns_fail;
            if self.chance(p) {
                self.sum.faults += 1;
                return if self.chance(0.5) {
                    (Err(DnsError::ServFail), lat)
                } else {
                    (Err(DnsError::Timeout), Duration::from_secs(5))
                };
            }
        }
        match kind {
            QueryKind::Mx => match self
                .topo
                .by_name
                .get(&name)
                .map(|d| &self.topo.domains[*d].kind)
            {
                Some(DomainKind::Mx(list)) => (Ok(DnsAnswer::Mx(list.clone())), lat),
                Some(DomainKind::Implicit) => (Err(DnsError::NoRecords), lat),
                Some(DomainKind::NullMx) => (Ok(DnsAnswer::Mx(vec![(0, ".".into())])), lat),
                Some(DomainKind::NxDomain) | None => (Err(DnsError::NxDomain), lat),
            },
            QueryKind::Address => match self.topo.hosts.get(&name) {
                Some((d, h)) => {
                    let ips = self.topo.domains[*d].hosts[*h].ips.clone();
                    if ips.is_empty() {
                        (Err(DnsError::NxDomain), lat)
                    } else {
                        (Ok(DnsAnswer::Address(ips)), lat)
                    }
                }
                None => {
                    if self.topo.by_name.contains_key(&name) {
                        (Err(DnsError::NoRecords), lat)
                    } else {
                        (Err(DnsError::NxDomain), lat)
                    }
                }
            },
        }
    }

    fn max_conns(&self, domain: &str) -> usize {
        self.cfg
            .domains
            .get(domain)
            .and_then(|p| p.max_connections)
            .unwrap_or(self.cfg.destination.max_connections)
    }

    fn breaker_view(&self, domain: &str) -> Option<BreakerView> {
        self.engine
            .breakers(self.now)
            .into_iter()
            .find(|b| b.domain == domain)
    }

    /// Invariants 4 and 7 at every Connect.
    fn connect(&mut self, conn: ConnId, ip: IpAddr, port: u16, mx: &str) -> R {
        if self.conns.contains_key(&conn) || self.dead_conns.contains(&conn) {
            return v(
                "connections",
                format!("Connect reuses connection id c{}", conn.0),
            );
        }
        if port != self.cfg.mx_port {
            return v(
                "routing",
                format!(
                    "Connect c{} to port {port}, not the configured MX port {}",
                    conn.0, self.cfg.mx_port
                ),
            );
        }
        let Some(&(d, h)) = self.topo.ips.get(&ip) else {
            return v(
                "routing",
                format!(
                    "Connect c{} to {ip} ({mx}), an address DNS never gave",
                    conn.0
                ),
            );
        };
        let dname = self.topo.domains[d].name.clone();
        if !self.topo.domains[d].hosts[h].name.eq_ignore_ascii_case(mx) {
            return v(
                "routing",
                format!(
                    "Connect c{} to {ip} named {mx:?}, but that address is {}",
                    conn.0, self.topo.domains[d].hosts[h].name
                ),
            );
        }
        let mut probe = false;
        if let Some(b) = self.breaker_view(&dname) {
            match b.state.as_str() {
                "open" if b.forced || b.opened_at.is_some_and(|t| t < self.now) => {
                    self.soft(
                        "breaker-open-connect",
                        "4 breaker",
                        format!(
                            "Connect c{} to {dname} while its breaker is open: {}",
                            conn.0, b.explanation
                        ),
                    )?;
                }
                "half_open" => {
                    if self.probes_per_domain[d] >= 1 {
                        self.soft(
                            "breaker-half-open-extra",
                            "4 breaker",
                            format!(
                                "Connect c{} to {dname}: a second connection while half-open ({})",
                                conn.0, b.explanation
                            ),
                        )?;
                    }
                    probe = true;
                }
                _ => {}
            }
        }
        let limit = self.max_conns(&dname);
        if self.open_per_domain[d] + 1 > limit {
            return v(
                "7 concurrency",
                format!(
                    "Connect c{} to {dname}: {} connections open, limit {limit}",
                    conn.0, self.open_per_domain[d]
                ),
            );
        }
        self.open_per_domain[d] += 1;
        if probe {
            self.probes_per_domain[d] += 1;
            self.sum.probes += 1;
        }
        let caps = self.topo.domains[d].b.caps.clone();
        let host = self.topo.domains[d].hosts[h].name.clone();
        self.conns.insert(
            conn,
            Conn {
                domain: d,
                connected: false,
                tls_pending: false,
                server: ServerSession::new(&host, caps),
                next_at: self.now,
                probe,
                tenant: None,
                mail_at: self.now,
                txn_base: self.now,
                body: None,
                connect_at: self.now,
                last_rx: self.now,
                txns: 0,
                decided_at: self.now,
            },
        );
        let b = &self.topo.domains[d].b;
        let (refuse, blackhole, outage) = (b.refuse, b.blackhole, b.in_outage(self.now));
        let lat = self.ms(1, 50);
        let epoch = self.epoch;
        if outage && self.chance(0.5) || self.chance(refuse) {
            self.sum.faults += 1;
            self.q.push(
                self.now.plus(lat),
                Ev::ConnFail {
                    epoch,
                    conn,
                    error: "Connection refused (os error 111)".into(),
                },
            );
        } else if self.chance(blackhole) {
            self.sum.faults += 1;
            let t = self
                .now
                .plus(self.cfg.timeouts.connect)
                .plus(30 * Duration::from_secs(1));
            self.q.push(
                t,
                Ev::ConnFail {
                    epoch,
                    conn,
                    error: "connection timed out".into(),
                },
            );
        } else {
            self.q.push(self.now.plus(lat), Ev::ConnUp { epoch, conn });
        }
        Ok(())
    }

    fn persist(&mut self, batch: BatchId, ops: Vec<StoreOp>) -> R {
        // Deliveries the batch must create: one per subscribed endpoint the engine knows.
        let mut expect = Vec::new();
        for op in &ops {
            match op {
                StoreOp::InsertEvent(ev) => {
                    for ep in self.known_endpoints.values() {
                        if ep.tenant == ev.tenant
                            && (ep.events.is_empty() || ep.events.contains(&ev.kind))
                        {
                            expect.push((ep.id, ev.id));
                        }
                    }
                }
                StoreOp::UpdateRecipient {
                    message,
                    idx,
                    status: RecipientStatus::Sending,
                    ..
                } => {
                    if let Some(m) = self.store.messages.get(message)
                        && let Some(r) = m.recipients.iter().find(|r| r.idx == *idx)
                    {
                        self.sending_emitted
                            .insert((m.tenant, r.address.to_ascii_lowercase()), self.now);
                    }
                }
                _ => {}
            }
        }
        let fail = self.chance(self.fault_p(0.03));
        // A group-committing store: a few milliseconds per transaction, in order.
        let lat = self.ms(0, 6);
        self.store_free_at = self.store_free_at.max(self.now).plus(lat);
        self.q.push(
            self.store_free_at,
            Ev::PersistDone {
                epoch: self.epoch,
                batch,
            },
        );
        self.inflight.push_back(Inflight {
            batch,
            ops,
            fail,
            expect_deliveries: expect,
        });
        Ok(())
    }

    /// Commits (or fails) the oldest in-flight batch and tells the engine.
    fn persist_done(&mut self, batch: BatchId) -> R {
        let Some(b) = self.inflight.pop_front() else {
            return v(
                "sim",
                format!("PersistDone b{} with nothing in flight", batch.0),
            );
        };
        if b.batch != batch {
            return v(
                "sim",
                format!("store writer out of order: b{} vs b{}", b.batch.0, batch.0),
            );
        }
        if b.fail {
            self.sum.faults += 1;
            for op in &b.ops {
                if let StoreOp::UpdateRecipient { message, idx, .. } = op {
                    self.failed_updates.insert((*message, *idx));
                }
            }
            return self.feed(Input::PersistFailed {
                batch,
                error: "disk I/O error".into(),
            });
        }
        self.commit(&b)?;
        // The engine now knows these are durable.
        for op in &b.ops {
            match op {
                StoreOp::InsertEvent(e) => {
                    self.durable_events.insert(e.id);
                }
                StoreOp::InsertMessage { message, .. } => {
                    self.insert_acked.insert(message.id);
                }
                StoreOp::AddSuppression(s) => {
                    self.supp_known
                        .entry((s.tenant, s.address.to_ascii_lowercase()))
                        .or_insert(self.now);
                }
                StoreOp::RemoveSuppression { tenant, address } => {
                    self.supp_known
                        .remove(&(*tenant, address.to_ascii_lowercase()));
                }
                StoreOp::UpsertEndpoint(e) => {
                    self.known_endpoints.insert(e.id, e.clone());
                }
                StoreOp::DeleteEndpoint { endpoint, .. } => {
                    self.known_endpoints.remove(endpoint);
                }
                _ => {}
            }
        }
        self.feed(Input::Persisted { batch })
    }

    /// Applies a batch to the store and checks invariant 3's per-batch rules.
    fn commit(&mut self, b: &Inflight) -> R {
        let a = self.store.apply(self.now, &b.ops);
        for (m, i, _, _) in &a.changes {
            self.failed_updates.remove(&(*m, *i));
        }
        if let Some((m, i)) = a.unknown.first() {
            return v(
                "3 outbox",
                format!(
                    "b{}: UpdateRecipient of {m}#{i}, which the store does not have",
                    b.batch.0
                ),
            );
        }
        if let Some((seq, last)) = a.seq_regressions.first().copied() {
            self.soft(
                "seq-order",
                "3 outbox",
                format!(
                    "b{}: event seq {seq} committed after seq {last}: a pull consumer that read up to {last} never sees it",
                    b.batch.0
                ),
            )?;
        }
        if let Some((m, i, s)) = a.undue.first() {
            return v(
                "1 pending has a due time",
                format!(
                    "b{}: {m}#{i} written {} without next_attempt_at",
                    b.batch.0,
                    s.as_str()
                ),
            );
        }
        self.sum.guard_refusals += a.guarded.len() as u64;
        self.removed_suppressions
            .extend(a.suppressions_removed.iter().cloned());
        for issue in crate::store::outbox_issues(&a) {
            match issue {
                OutboxIssue::EventForRefusedUpdate { .. } => self.soft(
                    "event-for-refused-update",
                    "3 outbox",
                    format!("b{}: {issue}", b.batch.0),
                )?,
                other => return v("3 outbox", format!("b{}: {other}", b.batch.0)),
            }
        }
        self.sum.events += a.events.len() as u64;
        let made: HashSet<(EndpointId, EventId)> = a.deliveries.iter().copied().collect();
        if let Some((ep, ev)) = b.expect_deliveries.iter().find(|x| !made.contains(x)) {
            return v(
                "3 outbox",
                format!(
                    "b{}: event {ev} persisted without a delivery for subscribed endpoint {ep}",
                    b.batch.0
                ),
            );
        }
        Ok(())
    }

    fn post_webhook(
        &mut self,
        post: PostId,
        endpoint: EndpointId,
        event: EventId,
        headers: &[(String, String)],
        body: &Arc<str>,
        timeout: Duration,
    ) -> R {
        if !self.durable_events.contains(&event) {
            return v(
                "3 webhooks",
                format!(
                    "PostWebhook p{} of {event} before the engine learned it was persisted",
                    post.0
                ),
            );
        }
        let Some(stored) = self
            .store
            .event_index
            .get(&event)
            .and_then(|i| self.store.events.get(*i))
        else {
            return v(
                "3 webhooks",
                format!("PostWebhook p{} of {event}, not in the store", post.0),
            );
        };
        if *stored.payload != **body {
            return v(
                "3 webhooks",
                format!(
                    "PostWebhook p{} of {event}: body differs from the persisted payload",
                    post.0
                ),
            );
        }
        let id = event.to_string();
        if !headers
            .iter()
            .any(|(k, val)| k.eq_ignore_ascii_case("webhook-id") && *val == id)
        {
            return v(
                "3 webhooks",
                format!(
                    "PostWebhook p{} of {event}: no webhook-id header with the event id",
                    post.0
                ),
            );
        }
        let n = self.hook_inflight.entry(endpoint).or_default();
        *n += 1;
        if *n > self.cfg.webhooks.max_in_flight_per_endpoint {
            return v(
                "3 webhooks",
                format!(
                    "{} posts in flight to {endpoint}, limit {}",
                    n, self.cfg.webhooks.max_in_flight_per_endpoint
                ),
            );
        }
        let b = self.hooks.get(&endpoint).cloned().unwrap_or(HookBehaviour {
            ok: 1.0,
            timeout: 0.0,
            dead: false,
            outages: vec![],
        });
        let lat = self.ms(5, 300);
        let (result, d) = if b
            .outages
            .iter()
            .any(|(a, z)| *a <= self.now && self.now < *z)
        {
            self.sum.faults += 1;
            (Err("connection refused".to_string()), lat)
        } else if b.dead {
            self.sum.faults += 1;
            (Ok(503), lat)
        } else if self.chance(b.timeout) {
            self.sum.faults += 1;
            (Err("timed out".to_string()), timeout)
        } else if self.chance(b.ok) {
            (Ok(if self.chance(0.5) { 200 } else { 204 }), lat)
        } else {
            self.sum.faults += 1;
            (Ok(if self.chance(0.5) { 500 } else { 429 }), lat)
        };
        if self.crashes_left > 0 && self.chance(0.01) {
            // A crash while the POST is on the wire.
            self.crashes_left -= 1;
            let t = self.ms(0, d.as_millis() as u64);
            self.q.push(self.now.plus(t), Ev::Crash);
        }
        self.q.push(
            self.now.plus(d),
            Ev::Webhook {
                epoch: self.epoch,
                post,
                endpoint,
                event,
                result,
                duration_ms: d.as_millis() as u64,
            },
        );
        Ok(())
    }

    fn gen_compose(&mut self, tenant: usize) -> ComposeRequest {
        let n = if self.chance(0.1) {
            self.rng.random_range(5..=20usize)
        } else {
            self.rng.random_range(1..=4usize)
        };
        let nd = self.topo.domains.len();
        let mut to = Vec::new();
        let mut cc = Vec::new();
        let mut bcc = Vec::new();
        for _ in 0..n {
            let d = self.rng.random_range(0..nd);
            let u = self.rng.random_range(0..30u32);
            let a = format!("u{u}@{}", self.topo.domains[d].name);
            match self.rng.random_range(0..10) {
                0 => cc.push(a),
                1 => bcc.push(a),
                _ => to.push(a),
            }
        }
        if to.is_empty() {
            to.push(format!("u0@{}", self.topo.domains[0].name));
        }
        let k = self.submitted;
        ComposeRequest {
            from: format!("app@{}", self.tenants[tenant]),
            to,
            cc,
            bcc,
            subject: if self.chance(0.1) {
                format!("Grüße {k}")
            } else {
                format!("message {k}")
            },
            text: Some(format!("Hello {k}\n.a line with a leading dot\nbye\n")),
            html: if self.chance(0.2) {
                Some(format!("<p>Hello {k}</p>"))
            } else {
                None
            },
            tags: vec!["sim".into()],
            ..ComposeRequest::default()
        }
    }

    fn submit(&mut self) -> R {
        self.submitted += 1;
        let t = self.rng.random_range(0..self.tenants.len());
        let tenant = TenantId(t as u64 + 1);
        let mut c = self.gen_compose(t);
        let mut kind = SubKind::Valid;
        if self.opts.faults > 0 && self.chance(0.06) {
            match self.rng.random_range(0..4) {
                0 => {
                    c.from = "app@not-the-tenant.org".into();
                    kind = SubKind::Invalid("sender outside the tenant's domain");
                }
                1 => {
                    c.to.clear();
                    c.cc.clear();
                    c.bcc.clear();
                    kind = SubKind::Invalid("no recipients");
                }
                2 => {
                    c.to.push("not an address".into());
                    kind = SubKind::Invalid("a recipient without @");
                }
                _ => {
                    c.headers
                        .insert("X-Bad".into(), "a\r\nBcc: victim@d0.net".into());
                    kind = SubKind::Invalid("header value with CRLF (header injection)");
                }
            }
        }
        let mut idem = None;
        if self.chance(0.15) {
            let key = format!("key-{}", self.rng.random_range(0..20u32));
            // Replay the content seen with this key before, mostly.
            let prev = self
                .past
                .iter()
                .rev()
                .find(|(pt, p)| *pt == tenant && p.subject.ends_with(&key))
                .map(|x| x.1.clone());
            if let Some(prev) = prev {
                if self.chance(0.8) {
                    c = prev;
                    kind = SubKind::Valid;
                }
            } else {
                c.subject = format!("{} {key}", c.subject);
            }
            let content = world::fnv(0, &format!("{c:?}"));
            idem = Some((key, content));
            if matches!(kind, SubKind::Valid) {
                self.past.push((tenant, c.clone()));
            }
        }
        let request = RequestId(self.next_request);
        self.next_request += 1;
        self.pending.insert(
            request,
            Pending {
                kind,
                idem: idem.clone(),
                tenant,
            },
        );
        self.feed(Input::Submit(Submission {
            request,
            tenant,
            tenant_domain: self.tenants[t].clone(),
            source: Source::Api,
            idempotency_key: idem.map(|i| i.0),
            content: SubmissionContent::Compose(c),
        }))
    }

    fn admin(&mut self, cmd: Option<AdminCommand>) -> R {
        let cmd = match cmd {
            Some(c) => c,
            None => {
                let nt = self.tenants.len() as u64;
                let tenant = TenantId(self.rng.random_range(1..=nt));
                let msgs: Vec<MessageId> = self.acked.keys().copied().collect();
                let d = self.rng.random_range(0..self.topo.domains.len());
                let address = format!(
                    "u{}@{}",
                    self.rng.random_range(0..30u32),
                    self.topo.domains[d].name
                );
                match self.rng.random_range(0..10) {
                    0 => AdminCommand::ForceBreaker {
                        domain: self.topo.domains[d].name.clone(),
                        state: if self.chance(0.7) {
                            ForcedBreakerState::Open
                        } else {
                            ForcedBreakerState::Closed
                        },
                    },
                    1 | 2 => match pick(&mut self.rng, &msgs) {
                        Some(message) => AdminCommand::RetryNow {
                            tenant: if self.chance(0.5) { None } else { Some(tenant) },
                            message,
                        },
                        None => return Ok(()),
                    },
                    3 => match pick(&mut self.rng, &msgs) {
                        Some(message) => AdminCommand::Cancel {
                            tenant: Some(tenant),
                            message,
                        },
                        None => return Ok(()),
                    },
                    4..=6 => AdminCommand::AddSuppression {
                        tenant,
                        address,
                        reason: "manual".into(),
                    },
                    7 => AdminCommand::RemoveSuppression { tenant, address },
                    8 => {
                        let eps: Vec<(EndpointId, TenantId)> = self
                            .known_endpoints
                            .values()
                            .map(|e| (e.id, e.tenant))
                            .collect();
                        match pick(&mut self.rng, &eps) {
                            Some((endpoint, tenant)) => AdminCommand::RotateSecret {
                                tenant,
                                endpoint,
                                secret: vec![0x5a; 32],
                            },
                            None => return Ok(()),
                        }
                    }
                    _ => {
                        let evs: Vec<(EndpointId, EventId, TenantId)> = self
                            .store
                            .deliveries
                            .values()
                            .map(|d| (d.endpoint, d.event, d.tenant))
                            .collect();
                        match pick(&mut self.rng, &evs) {
                            Some((endpoint, event, tenant)) => AdminCommand::RetryWebhookDelivery {
                                tenant,
                                endpoint,
                                event,
                            },
                            None => return Ok(()),
                        }
                    }
                }
            }
        };
        // Any forced-open breaker is forced closed again before the run ends, so the
        // drain can deliver (an operator would): schedule it.
        if let AdminCommand::ForceBreaker {
            domain,
            state: ForcedBreakerState::Open,
        } = &cmd
        {
            let back = self.ms(60_000, 2 * 3_600_000);
            self.q
                .push(self.now.plus(back), Ev::ForceClose(domain.clone()));
        }
        let request = RequestId(self.next_request);
        self.next_request += 1;
        self.admin_pending.insert(request, cmd.clone());
        self.feed(Input::Admin {
            request,
            command: cmd,
        })
    }
}

/// Trailing destination-level failures in the warm-up window, the way DESIGN.md defines
/// warm-up: the last N distinct (message, attempt) per domain, a success resets the count.
pub fn trailing_failures(
    attempts: &[outpost_core::model::AttemptRecord],
    domain: &str,
    now: Time,
    cfg: &Config,
) -> u32 {
    let since = now.minus(cfg.breaker.warmup_window);
    let mut per: BTreeMap<(MessageId, u32), (Time, bool)> = BTreeMap::new();
    for a in attempts
        .iter()
        .filter(|a| a.domain == domain && a.started_at >= since && a.started_at <= now)
    {
        let e = per
            .entry((a.message, a.attempt))
            .or_insert((a.started_at, false));
        e.0 = e.0.min(a.started_at);
        e.1 |= a.breaker_failure;
    }
    let mut v: Vec<_> = per.into_iter().collect();
    v.sort_by_key(|(k, x)| (x.0, *k));
    let skip = v.len().saturating_sub(cfg.breaker.warmup_attempts);
    let mut n = 0;
    for (_, (_, failed)) in v.into_iter().skip(skip) {
        n = if failed { n + 1 } else { 0 };
    }
    n
}

impl Sim {
    /// The process dies: in-flight I/O is lost, a prefix of the store writer's queue
    /// committed; a new engine starts from the store's snapshot.
    fn crash(&mut self) -> R {
        self.sum.crashes += 1;
        self.note("-- CRASH: the process dies; restarting from the store".into());
        let before = self.engine.breakers(self.now);
        let n = self.inflight.len();
        let k = self.rng.random_range(0..=n);
        let batches: Vec<Inflight> = self.inflight.drain(..).collect();
        for (i, b) in batches.into_iter().enumerate() {
            if i < k && !b.fail {
                self.note(format!(
                    "-- batch b{} committed just before the crash",
                    b.batch.0
                ));
                self.commit(&b)?;
            } else {
                // The spool file is written and fsynced before the row: it may be left.
                for op in &b.ops {
                    if let StoreOp::InsertMessage { message, spool } = op
                        && !self.store.messages.contains_key(&message.id)
                        && self.rng.random_bool(0.5)
                    {
                        self.store.spool.insert(
                            message.id,
                            crate::store::SpoolEntry {
                                bytes: spool.clone(),
                                modified: self.now,
                            },
                        );
                    }
                }
            }
        }
        self.conns.clear();
        self.dead_conns.clear();
        self.open_per_domain.iter_mut().for_each(|x| *x = 0);
        self.probes_per_domain.iter_mut().for_each(|x| *x = 0);
        self.hook_inflight.clear();
        self.sum.unanswered_at_crash += self.pending.len() as u64;
        self.pending.clear();
        self.admin_pending.clear();
        self.accept_tokens.clear();
        self.sending_emitted.clear();
        self.last_scan_ok = None;
        self.epoch += 1;
        self.store_free_at = self.now;
        // What the new process knows is what the store holds.
        for e in &self.store.events {
            self.durable_events.insert(e.id);
        }
        self.known_endpoints = self.store.endpoints.clone();
        let now = self.now;
        self.supp_known
            .retain(|k, _| self.store.suppressions.contains_key(k));
        for k in self.store.suppressions.keys() {
            self.supp_known.entry(k.clone()).or_insert(now);
        }
        for m in self.store.messages.keys() {
            self.insert_acked.insert(*m);
        }
        let restart = self.ms(0, 2000);
        self.now = self.now.plus(restart);
        let seed = self.rng.random::<u64>();
        self.sum.destinations_forgotten += self.engine.stats().destinations_forgotten;
        self.engine = Engine::new(self.cfg.clone(), seed);
        let snap = self.store.snapshot(self.now, &self.cfg);
        let threshold = self.cfg.breaker.failure_threshold;
        let expect_open: Vec<(String, String)> = before
            .iter()
            .filter(|b| b.state == "open" && !b.forced)
            .filter(|b| {
                trailing_failures(&snap.recent_attempts, &b.domain, self.now, &self.cfg)
                    >= threshold
            })
            .map(|b| (b.domain.clone(), b.explanation.clone()))
            .collect();
        self.sum.warmup_checks += expect_open.len() as u64;
        self.feed(Input::Recovered(Box::new(snap)))?;
        let after = self.engine.breakers(self.now);
        for (d, why) in expect_open {
            let state = after
                .iter()
                .find(|b| b.domain == d)
                .map(|b| b.state.clone());
            if state.as_deref().is_none_or(|s| s == "closed") {
                return v(
                    "4 breaker warm-up",
                    format!(
                        "{d} was open before the crash ({why}) with >= {threshold} trailing failures in the store's last hour, but is {} after recovery",
                        state.unwrap_or_else(|| "absent (closed)".into())
                    ),
                );
            }
        }
        Ok(())
    }

    fn smtp_slack(&self) -> Duration {
        let t = &self.cfg.timeouts;
        let retry_max = self
            .cfg
            .retry_schedule
            .iter()
            .max()
            .copied()
            .unwrap_or(HOUR);
        retry_max
            + t.connect
            + t.greeting
            + t.ehlo
            + t.starttls
            + t.mail
            + t.rcpt
            + t.data_init
            + t.data_end
            + t.quit
            + 10 * MIN
    }

    /// Invariant 1, periodically: nothing stays non-terminal long past its max age.
    fn check_ages(&mut self) -> R {
        let slack = self.smtp_slack();
        let mut stuck = Vec::new();
        for id in &self.store.live {
            let Some(m) = self.store.messages.get(id) else {
                continue;
            };
            let bound = m.expires_at.max(self.last_gap_end).plus(slack);
            if self.now > bound
                && m.recipients
                    .iter()
                    .filter(|r| !r.status.is_terminal())
                    .all(|r| self.failed_updates.contains(&(*id, r.idx)))
            {
                stuck.push(format!(
                    "{id} (expires {:?}): non-terminal recipients {:?} past max age; their last write failed and was never retried (in memory they moved on)",
                    m.expires_at,
                    m.recipients.iter().filter(|r| !r.status.is_terminal()).map(|r| r.idx).collect::<Vec<_>>()
                ));
                continue;
            }
            if self.now > bound {
                let st: Vec<String> = m
                    .recipients
                    .iter()
                    .map(|r| {
                        format!(
                            "#{} {} {} attempts={} next={:?}",
                            r.idx,
                            r.address,
                            r.status.as_str(),
                            r.attempts,
                            r.next_attempt_at
                        )
                    })
                    .collect();
                return v(
                    "1 liveness",
                    format!(
                        "{id} (expires {:?}) still non-terminal at {:?}, past max age + retry interval + SMTP time: {st:?}",
                        m.expires_at, self.now
                    ),
                );
            }
        }
        for detail in stuck {
            self.soft("failed-write-not-retried", "1 liveness", detail)?;
        }
        Ok(())
    }

    fn final_checks(&mut self) -> R {
        if let Some(r) = self.pending.keys().next() {
            return v("submission answers", format!("r{} never answered", r.0));
        }
        if let Some(r) = self.admin_pending.keys().next() {
            return v("admin answers", format!("admin r{} never answered", r.0));
        }
        let mut stuck = Vec::new();
        for id in self.acked.keys() {
            let Some(m) = self.store.messages.get(id) else {
                return v(
                    "1 durability",
                    format!("{id} was acknowledged but is not in the store"),
                );
            };
            if let Some(r) = m.recipients.iter().find(|r| !r.status.is_terminal()) {
                if self.failed_updates.contains(&(*id, r.idx)) {
                    stuck.push(format!(
                        "{id}#{} {} is {} after the drain: its last write failed and was never retried",
                        r.idx,
                        r.address,
                        r.status.as_str()
                    ));
                    continue;
                }
                return v(
                    "1 liveness",
                    format!(
                        "{id}#{} {} is {} after the drain (attempts {}, next {:?}, expires {:?})",
                        r.idx,
                        r.address,
                        r.status.as_str(),
                        r.attempts,
                        r.next_attempt_at,
                        m.expires_at
                    ),
                );
            }
        }
        if let Some(id) = self.store.live.iter().find(|id| {
            !self.acked.contains_key(id)
                && self.store.messages.get(id).is_some_and(|m| {
                    m.recipients.iter().any(|r| {
                        !r.status.is_terminal() && !self.failed_updates.contains(&(**id, r.idx))
                    })
                })
        }) {
            return v(
                "1 liveness",
                format!("{id} (never acknowledged) still non-terminal after the drain"),
            );
        }
        for detail in stuck {
            self.soft("failed-write-not-retried", "1 liveness", detail)?;
        }
        for (m, rec) in &self.store.messages {
            if !self.acked.contains_key(m) && self.insert_acked.contains(m) && self.sum.crashes == 0
            {
                return v(
                    "submission answers",
                    format!(
                        "{m} is in the store but its submission was never acknowledged (request rejected or unanswered)"
                    ),
                );
            }
            for r in &rec.recipients {
                match r.status {
                    RecipientStatus::Delivered => self.sum.delivered += 1,
                    RecipientStatus::Bounced => self.sum.bounced += 1,
                    RecipientStatus::Failed => self.sum.failed += 1,
                    RecipientStatus::Suppressed => self.sum.suppressed += 1,
                    _ => {}
                }
            }
        }
        for (k, h) in &self.store.history {
            if let Err(e) = check_history(h) {
                return v("2 terminal is forever", format!("{}#{}: {e}", k.0, k.1));
            }
        }
        let mut orphaned = Vec::new();
        let mut regressed = Vec::new();
        for d in self.store.deliveries.values() {
            if self.deleted_endpoints.contains(&d.endpoint) {
                continue;
            }
            match d.state {
                outpost_core::model::WebhookDeliveryState::Pending => {
                    let detail = format!(
                        "delivery of {} to {} still pending after the drain (attempts {}, next {:?})",
                        d.event, d.endpoint, d.attempts, d.next_attempt_at
                    );
                    if self.posted_ok.contains(&(d.endpoint, d.event)) {
                        // Posted with a 2xx, then a stale retried batch wrote it back to
                        // pending (E1 in FINDINGS.md).
                        regressed.push(format!("{detail}; it was posted with a 2xx before"));
                        continue;
                    }
                    if self.store.endpoints.contains_key(&d.endpoint) {
                        return v("3 webhooks", detail);
                    }
                    // Rows of an endpoint the store never had (E6 in FINDINGS.md).
                    orphaned.push(format!("{detail}; the endpoint is not in the store"));
                }
                outpost_core::model::WebhookDeliveryState::Delivered => {
                    if !self.posted_ok.contains(&(d.endpoint, d.event)) {
                        return v(
                            "3 webhooks",
                            format!(
                                "delivery of {} to {} recorded delivered without a 2xx",
                                d.event, d.endpoint
                            ),
                        );
                    }
                }
                outpost_core::model::WebhookDeliveryState::Failed => self.sum.webhooks_failed += 1,
            }
        }
        for detail in orphaned {
            self.soft("endpoint-after-failed-write", "3 webhooks", detail)?;
        }
        for detail in regressed {
            self.soft("delivery-state-regressed", "3 webhooks", detail)?;
        }
        // Invariant 5: 5.1.1 user unknown bounces and suppresses, for its tenant only.
        for a in &self.store.attempts {
            if a.smtp_code == Some(550) && a.enhanced_code.as_deref() == Some("5.1.1") {
                let Some(r) = self.store.recipient(a.message, a.idx) else {
                    continue;
                };
                self.sum.hard_bounces_checked += 1;
                if a.status != RecipientStatus::Bounced {
                    return v(
                        "5 suppression",
                        format!(
                            "{}#{} got 550 5.1.1 user unknown but the attempt is {}",
                            a.message,
                            a.idx,
                            a.status.as_str()
                        ),
                    );
                }
                let key = (a.tenant, r.address.to_ascii_lowercase());
                let mbox = world::mailbox(self.salt, &r.address, self.opts.faults);
                if mbox == Mailbox::Unknown
                    && !self.store.suppressions.contains_key(&key)
                    && !self.supp_removed(&key)
                {
                    return v(
                        "5 suppression",
                        format!(
                            "{} bounced 550 5.1.1 for tenant {} but is not suppressed",
                            r.address, a.tenant.0
                        ),
                    );
                }
            }
        }
        for ((t, addr), s) in &self.store.suppressions {
            if s.source != SuppressionSource::Bounce {
                continue;
            }
            let ok = self.store.messages.values().any(|m| {
                m.tenant == *t
                    && m.recipients.iter().any(|r| {
                        r.address.eq_ignore_ascii_case(addr) && r.status == RecipientStatus::Bounced
                    })
            });
            if !ok {
                return v(
                    "5 suppression",
                    format!(
                        "{addr} suppressed by a bounce for tenant {} that has no bounced recipient with that address",
                        t.0
                    ),
                );
            }
        }
        // Invariant 4: a success closes the breaker.
        for b in self.engine.breakers(self.now) {
            if b.state == "closed" || b.forced {
                continue;
            }
            if let Some(&d) = self.topo.by_name.get(&b.domain)
                && b.opened_at.is_some_and(|t| self.last_success[d] > t)
            {
                return v(
                    "4 breaker",
                    format!(
                        "{} is {} after a successful delivery at {:?}: {}",
                        b.domain, b.state, self.last_success[d], b.explanation
                    ),
                );
            }
        }
        // Invariant 8: idle destinations are forgotten. Hours after the last delivery, the engine
        // holds a destination only for a breaker that still has something to say (open,
        // half-open, forced, or counting failures), never for every domain it mailed.
        self.sum.destinations_forgotten += self.engine.stats().destinations_forgotten;
        let held = self.engine.destinations();
        let breakers = self.engine.breakers(self.now);
        if held != breakers.len() {
            let listed: Vec<String> = breakers
                .iter()
                .map(|b| format!("{} ({})", b.domain, b.state))
                .collect();
            return v(
                "8 destinations",
                format!(
                    "the engine holds {held} destinations after the drain, but only {} have breaker state to keep: {listed:?}",
                    breakers.len()
                ),
            );
        }
        Ok(())
    }

    fn supp_removed(&self, key: &(TenantId, String)) -> bool {
        // A manual removal (admin) clears a bounce suppression legitimately.
        self.removed_suppressions.contains(key)
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }
    pub fn now(&self) -> Time {
        self.now
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }
}
