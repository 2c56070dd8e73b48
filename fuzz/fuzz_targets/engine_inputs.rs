//! The engine driven by arbitrary sequences of inputs against a small model world (like
//! the scripted world of `core/src/engine/tests.rs`): submissions (valid-ish compose
//! requests to a few domains, raw messages, garbage fields, idempotency keys), DNS answers
//! and errors for outstanding queries, connect results, server bytes (well-formed replies
//! to what the engine sent, canned replies, raw garbage), TLS results, disconnects,
//! persist acks and failures in any order (plus duplicates and unknown ids), webhook
//! results, admin commands, spool scans, and ticks with time jumps. `Auto` steps play a
//! well-behaved world so that deliveries make progress between the chaos.
//!
//! Invariants checked after every input (a panic names the one broken):
//! (a) a recipient's persisted status (the `InsertMessage` status, then `UpdateRecipient`
//!     of acknowledged batches) never changes once terminal, unless the update is a stale
//!     batch emitted *before* the terminal one (retried after a failure), which the
//!     store's terminal guard refuses by design (counted, not fatal);
//! (b) every `SubmitAccepted`/`SubmitRejected` answers a submitted request exactly once;
//!     `SubmitAccepted` only once the batch with the message's `InsertMessage` was
//!     acknowledged; no rejection after the message was stored; same for admin answers;
//! (c) event `seq` values are unique and increasing in emission order (a retried batch
//!     re-emits the same operations);
//! (d) no `Connect` for a destination whose breaker says `open` before and after the
//!     input, unless the input continues connections already admitted (an address
//!     answer, a connection-level input, or a connection closed in the same step);
//! (e) after a `Tick` at `now`, `poll_timeout()` is not before `now`;
//! (f) every `InsertEvent` has a matching status change in its batch and vice versa;
//! plus: nothing is sent on a connection after it closed or was never opened;
//! `SendSpool` only for a stored, not yet deleted message; `DeleteSpool` only when every
//! recipient is terminal in the store; orphan deletions never name live messages;
//! webhooks only post persisted events; and, at the end, after a well-behaved world ran
//! past max age, every request is answered and every stored recipient is terminal.
#![no_main]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use outpost_core::Engine;
use outpost_core::config::{Config, DomainPolicy};
use outpost_core::ids::{
    BatchId, ConnId, EndpointId, EventId, MessageId, PostId, QueryId, RequestId, TenantId,
};
use outpost_core::io::{
    AdminCommand, AdminReply, ComposeRequest, DnsAnswer, DnsError, ForcedBreakerState, Input,
    Output, QueryKind, SpoolFile, Submission, SubmissionContent,
};
use outpost_core::model::{EventKind, Snapshot, Source, StoreOp};
use outpost_core::status::RecipientStatus;
use outpost_core::time::Time;

const T0: Time = Time(1_800_000_000_000);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Recipient domains as submitted, and as the engine resolves them.
const DOMAINS: [&str; 4] = ["a.test", "b.test", "c.test", "bücher.test"];
const ASCII: [&str; 4] = ["a.test", "b.test", "c.test", "xn--bcher-kva.test"];
/// (No quoted local part with a space: that is the known bug of
/// `core/tests/fuzz_regressions.rs::quoted_local_part_with_space_is_never_stuck_in_sending`,
/// which would fail the liveness check of every run.)
const LOCALS: [&str; 7] = ["alice", "bob", "dead", "x.y+t", "üser", "Alice", "full"];

fn ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, (n % 4) as u8 + 1))
}

fn pick<T: Copy>(items: &[T], i: u8) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        Some(items[usize::from(i) % items.len()])
    }
}

// ---------------------------------------------------------------- fuzz input

#[derive(Arbitrary, Debug)]
struct Scenario {
    seed: u64,
    knobs: Knobs,
    dns: [DnsProfile; 4],
    servers: [ServerProfile; 4],
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
struct Knobs {
    max_conns: u8,
    threshold: u8,
    rcpt_per_txn: u8,
    max_age: u8,
    msgs_per_conn: u8,
    require_tls_b: bool,
    max_in_flight: u8,
    last_event_seq: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct DnsProfile {
    /// 0-2: two MX hosts; 3: one; 4: null MX; 5: NXDOMAIN; 6: SERVFAIL; 7: no MX (the
    /// domain itself); 8: timeout; 9: an IP literal exchange.
    mx: u8,
    /// 0-3: one address; 4: two; 5: NXDOMAIN; 6: empty.
    addr: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct ServerProfile {
    refuse: u8,
    greeting: u8,
    ehlo: u8,
    caps: u8,
    starttls: u8,
    tls: u8,
    mail: u8,
    rcpt: [u8; 3],
    data: u8,
    end: u8,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Submit(Sub),
    Auto(u8),
    Dns {
        pick: u8,
        answer: DnsChoice,
    },
    Connect {
        pick: u8,
        ok: bool,
    },
    Deliver {
        pick: u8,
        split: u8,
    },
    Garbage {
        pick: u8,
        bytes: Vec<u8>,
    },
    Canned {
        pick: u8,
        idx: u8,
    },
    Tls {
        pick: u8,
        kind: u8,
    },
    Disconnect {
        pick: u8,
        err: bool,
    },
    Ack(u8),
    Fail(u8),
    AckAll,
    Bogus {
        id: u16,
        ack: bool,
    },
    Webhook {
        pick: u8,
        status: u8,
    },
    Admin(AdminOp),
    Tick(u8),
    Scan {
        files_ok: bool,
        live_ok: bool,
        stray: bool,
    },
    Reprofile {
        server: u8,
        profile: ServerProfile,
    },
    Drain(u8),
}

#[derive(Arbitrary, Debug)]
struct Sub {
    other_tenant: bool,
    from: u8,
    to: Vec<(u8, u8)>,
    cc: Option<(u8, u8)>,
    bcc: Option<(u8, u8)>,
    garbage: Option<(u8, String)>,
    idem: Option<u8>,
    raw: bool,
    body: u8,
}

#[derive(Arbitrary, Debug)]
enum DnsChoice {
    Mx(Vec<(u16, u8)>),
    Addr(Vec<u8>),
    Err(u8),
}

#[derive(Arbitrary, Debug)]
enum AdminOp {
    Force {
        dom: u8,
        open: bool,
    },
    RetryNow {
        pick: u8,
        admin: bool,
    },
    Cancel {
        pick: u8,
        admin: bool,
    },
    AddSupp {
        other_tenant: bool,
        rcpt: (u8, u8),
    },
    RemoveSupp {
        other_tenant: bool,
        rcpt: (u8, u8),
    },
    CreateEndpoint {
        other_tenant: bool,
        url: u8,
        events: u8,
    },
    DeleteEndpoint {
        pick: u8,
    },
    Rotate {
        pick: u8,
    },
    RetryDelivery {
        pick: u8,
        event: u8,
    },
}

// ---------------------------------------------------------------- replies

const GREETING: &[&str] = &[
    "220 mx ESMTP",
    "220 mx ESMTP",
    "220 mx ESMTP",
    "421 4.3.2 busy",
    "554 5.7.1 go away",
    "hello there",
    "220-mx\r\n220 ready",
];
const MAIL: &[&str] = &[
    "250 2.1.0 ok",
    "250 2.1.0 ok",
    "250 2.1.0 ok",
    "451 4.3.0 try later",
    "550 5.7.1 sender rejected",
    "421 4.7.0 closing",
    "552 5.3.4 too big",
];
const RCPT: &[&str] = &[
    "250 2.1.5 ok",
    "250 2.1.5 ok",
    "250 2.1.5 ok",
    "450 4.2.1 later",
    "550 5.1.1 user unknown",
    "551 5.1.6 moved",
    "552 5.2.2 mailbox full",
    "421 4.7.0 closing",
    "554 5.7.1 spam",
];
const DATA: &[&str] = &[
    "354 go ahead",
    "354 go ahead",
    "354 go ahead",
    "451 4.3.0 later",
    "554 5.5.1 no",
];
const END: &[&str] = &[
    "250 2.0.0 queued",
    "250 2.0.0 queued",
    "250 2.0.0 queued",
    "451 4.3.0 later",
    "552 5.2.2 full",
    "421 4.7.0 bye",
    "554 5.7.1 spam",
];
const CANNED: &[&[u8]] = &[
    b"220 mx ESMTP\r\n",
    b"250 ok\r\n",
    b"250-mx\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 SIZE 100\r\n",
    b"354 go\r\n",
    b"421 4.3.2 bye\r\n",
    b"450 4.2.1 later\r\n",
    b"550 5.1.1 unknown\r\n",
    b"221 bye\r\n",
    b"220 2.0.0 start TLS\r\n",
    b"250-a\r\n251 b\r\n",
    b"\x1b[31m\r\n",
    b"25",
];

fn table(t: &[&str], i: u8) -> String {
    t[usize::from(i) % t.len()].to_string()
}

// ---------------------------------------------------------------- the model world

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum ConnState {
    Connecting,
    Open,
    Dead,
}

#[derive(Debug)]
struct ConnModel {
    ip: IpAddr,
    #[allow(dead_code)]
    mx: String,
    state: ConnState,
    /// Replies the server owes, as bytes.
    owed: Vec<u8>,
    rcpt_n: usize,
    tls_pending: bool,
}

#[derive(Debug, Default)]
struct Req {
    message: Option<MessageId>,
    answered: bool,
}

struct World {
    engine: Engine,
    now: Time,
    max_age: Duration,
    dns: [DnsProfile; 4],
    servers: [ServerProfile; 4],
    // outstanding work
    queries: BTreeMap<QueryId, (String, QueryKind)>,
    conns: BTreeMap<ConnId, ConnModel>,
    batches: BTreeMap<BatchId, Vec<StoreOp>>,
    posts: BTreeMap<PostId, EventId>,
    scan_pending: bool,
    // history
    batch_first: BTreeMap<BatchId, (u64, Vec<StoreOp>)>,
    batch_order: u64,
    acked: BTreeSet<BatchId>,
    requests: BTreeMap<RequestId, Req>,
    admin: BTreeMap<RequestId, bool>,
    next_req: u64,
    last_seq: u64,
    /// Persisted store: (message, idx) -> (status, emission order of the batch that set it).
    store: BTreeMap<(MessageId, u32), (RecipientStatus, u64)>,
    stored_messages: BTreeSet<MessageId>,
    deleted_spools: BTreeSet<MessageId>,
    acked_events: Vec<EventId>,
    acked_event_set: BTreeSet<EventId>,
    accepted_messages: Vec<MessageId>,
    endpoints: Vec<(TenantId, EndpointId)>,
    /// MX host -> domains whose MX answer named it.
    host_domains: BTreeMap<String, BTreeSet<String>>,
    stale_updates: u64,
    last_submit: Time,
}

#[derive(Default)]
struct Step {
    exempt: bool,
    conn_input: Option<ConnId>,
    submit: Option<RequestId>,
}

impl World {
    fn new(s: &Scenario) -> World {
        let k = &s.knobs;
        let max_age = [HOUR, 6 * HOUR, 24 * HOUR][usize::from(k.max_age) % 3];
        let mut cfg = Config::default();
        cfg.max_age = max_age;
        cfg.destination.max_connections = usize::from(k.max_conns % 3) + 1;
        cfg.destination.max_recipients_per_transaction = usize::from(k.rcpt_per_txn % 3) + 1;
        cfg.destination.max_messages_per_connection = u32::from(k.msgs_per_conn % 3) + 1;
        cfg.breaker.failure_threshold = u32::from(k.threshold % 5) + 1;
        cfg.webhooks.max_in_flight_per_endpoint = usize::from(k.max_in_flight % 3) + 1;
        if k.require_tls_b {
            cfg.domains.insert(
                "b.test".into(),
                DomainPolicy {
                    require_tls: true,
                    ..DomainPolicy::default()
                },
            );
        }
        let mut engine = Engine::new(cfg, s.seed);
        let last_seq = u64::from(k.last_event_seq);
        engine.handle(
            T0,
            Input::Recovered(Box::new(Snapshot {
                last_event_seq: last_seq,
                ..Snapshot::default()
            })),
        );
        let mut w = World {
            engine,
            now: T0,
            max_age,
            dns: s.dns,
            servers: s.servers,
            queries: BTreeMap::new(),
            conns: BTreeMap::new(),
            batches: BTreeMap::new(),
            posts: BTreeMap::new(),
            scan_pending: false,
            batch_first: BTreeMap::new(),
            batch_order: 0,
            acked: BTreeSet::new(),
            requests: BTreeMap::new(),
            admin: BTreeMap::new(),
            next_req: 1,
            last_seq,
            store: BTreeMap::new(),
            stored_messages: BTreeSet::new(),
            deleted_spools: BTreeSet::new(),
            acked_events: Vec::new(),
            acked_event_set: BTreeSet::new(),
            accepted_messages: Vec::new(),
            endpoints: Vec::new(),
            host_domains: BTreeMap::new(),
            stale_updates: 0,
            last_submit: T0,
        };
        w.observe(&mut Step::default(), None);
        w
    }

    fn req_id(&mut self) -> RequestId {
        let r = RequestId(self.next_req);
        self.next_req += 1;
        r
    }

    // ---- feeding inputs and checking outputs

    fn input(&mut self, input: Input) {
        let mut step = Step::default();
        let is_tick = matches!(input, Input::Tick);
        match &input {
            Input::Resolved { query, .. } => {
                step.exempt = self
                    .queries
                    .get(query)
                    .is_some_and(|q| q.1 == QueryKind::Address);
                self.queries.remove(query);
            }
            Input::Connected { conn }
            | Input::ConnectFailed { conn, .. }
            | Input::Received { conn, .. }
            | Input::TlsEstablished { conn, .. }
            | Input::TlsFailed { conn, .. }
            | Input::Disconnected { conn, .. } => {
                step.exempt = true;
                step.conn_input = Some(*conn);
            }
            Input::Submit(s) => step.submit = Some(s.request),
            Input::Persisted { batch } => self.apply_batch(*batch),
            Input::PersistFailed { batch, .. } => {
                self.batches.remove(batch);
            }
            Input::WebhookResult { post, .. } => {
                self.posts.remove(post);
            }
            Input::SpoolScanned { .. } => self.scan_pending = false,
            _ => {}
        }
        let open_before: BTreeSet<String> = self.open_domains();
        self.engine.handle(self.now, input);
        self.observe(&mut step, Some(&open_before));
        if is_tick && let Some(t) = self.engine.poll_timeout() {
            assert!(
                t >= self.now,
                "(e) poll_timeout {t:?} is before now {:?} after a Tick",
                self.now
            );
        }
    }

    fn open_domains(&self) -> BTreeSet<String> {
        ASCII
            .iter()
            .filter(|d| {
                self.engine
                    .breaker(d, self.now)
                    .is_some_and(|b| b.state == "open")
            })
            .map(|d| d.to_string())
            .collect()
    }

    fn observe(&mut self, step: &mut Step, open_before: Option<&BTreeSet<String>>) {
        let mut connects: Vec<String> = Vec::new();
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Persist { batch, ops } => self.on_persist(batch, ops, step),
                Output::SubmitAccepted { request, receipt } => {
                    let r = self
                        .requests
                        .get_mut(&request)
                        .unwrap_or_else(|| panic!("(b) answer to unknown {request:?}"));
                    assert!(!r.answered, "(b) {request:?} answered twice");
                    r.answered = true;
                    assert!(
                        self.stored_messages.contains(&receipt.id),
                        "(b) SubmitAccepted for {:?} before its InsertMessage was acknowledged",
                        receipt.id
                    );
                    if !self.accepted_messages.contains(&receipt.id) {
                        self.accepted_messages.push(receipt.id);
                    }
                }
                Output::SubmitRejected { request, error } => {
                    let r = self
                        .requests
                        .get_mut(&request)
                        .unwrap_or_else(|| panic!("(b) answer to unknown {request:?}"));
                    assert!(!r.answered, "(b) {request:?} answered twice");
                    r.answered = true;
                    if let Some(m) = r.message {
                        assert!(
                            !self.stored_messages.contains(&m),
                            "(b) rejected after its message was stored: {error:?}"
                        );
                    }
                    assert!(!error.message.chars().any(char::is_control));
                }
                Output::Resolve { query, name, kind } => {
                    assert!(
                        self.queries.insert(query, (name, kind)).is_none(),
                        "query id reused"
                    );
                }
                Output::Connect { conn, ip, mx, .. } => {
                    assert!(
                        !self.conns.contains_key(&conn),
                        "connection id {conn:?} reused"
                    );
                    self.conns.insert(
                        conn,
                        ConnModel {
                            ip,
                            mx: mx.clone(),
                            state: ConnState::Connecting,
                            owed: Vec::new(),
                            rcpt_n: 0,
                            tls_pending: false,
                        },
                    );
                    connects.push(mx);
                }
                Output::Send { conn, bytes } => {
                    self.live_conn(conn, "Send");
                    self.server_reads(conn, &bytes);
                }
                Output::SendSpool { conn, message } => {
                    self.live_conn(conn, "SendSpool");
                    assert!(
                        self.stored_messages.contains(&message),
                        "SendSpool of a message not stored"
                    );
                    assert!(
                        !self.deleted_spools.contains(&message),
                        "SendSpool after DeleteSpool"
                    );
                    let end = self
                        .profile(conn)
                        .map(|p| table(END, p.end))
                        .unwrap_or_default();
                    self.owe(conn, &end);
                }
                Output::StartTls { conn, .. } => {
                    self.live_conn(conn, "StartTls");
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.tls_pending = true;
                    }
                }
                Output::Close { conn } => {
                    self.live_conn(conn, "Close");
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.state = ConnState::Dead;
                    }
                    step.exempt = true;
                }
                Output::PostWebhook { post, event, .. } => {
                    assert!(
                        self.acked_event_set.contains(&event),
                        "webhook posts an event that is not persisted"
                    );
                    assert!(self.posts.insert(post, event).is_none(), "post id reused");
                }
                Output::DeleteSpool { message } => {
                    assert!(
                        self.stored_messages.contains(&message),
                        "DeleteSpool of an unknown message"
                    );
                    assert!(
                        self.deleted_spools.insert(message),
                        "DeleteSpool twice for {message:?}"
                    );
                    for ((m, idx), (s, _)) in self.store.range((message, 0)..=(message, u32::MAX)) {
                        assert!(
                            s.is_terminal(),
                            "DeleteSpool while {m:?}/{idx} is {s:?} in the store"
                        );
                    }
                }
                Output::ScanSpool => self.scan_pending = true,
                Output::DeleteOrphans { messages } => {
                    for m in messages {
                        let live = self
                            .store
                            .range((m, 0)..=(m, u32::MAX))
                            .any(|(_, (s, _))| !s.is_terminal());
                        assert!(!live, "orphan deletion of live message {m:?}");
                        let pending = self
                            .batches
                            .values()
                            .any(|ops| ops.iter().any(|op| op_message(op) == Some(m)));
                        assert!(
                            !pending,
                            "orphan deletion of a message with an unacknowledged batch"
                        );
                    }
                }
                Output::AdminAnswer { request, result } => {
                    let a = self
                        .admin
                        .get_mut(&request)
                        .unwrap_or_else(|| panic!("admin answer to unknown {request:?}"));
                    assert!(!*a, "admin {request:?} answered twice");
                    *a = true;
                    if let Ok(AdminReply::Endpoint(e)) = result {
                        self.endpoints.push((e.tenant, e.id));
                    }
                }
            }
        }
        // (d) the breaker.
        if let Some(before) = open_before
            && !step.exempt
        {
            let after = self.open_domains();
            for mx in connects {
                let domains = self.host_domains.get(&mx).cloned().unwrap_or_default();
                for d in domains {
                    assert!(
                        !(before.contains(&d) && after.contains(&d)),
                        "(d) Connect to {mx} while the breaker of {d} is open: {:?}",
                        self.engine.breaker(&d, self.now)
                    );
                }
            }
        }
        // A submission's InsertMessage is in a batch emitted while handling it.
        let _ = step.submit;
    }

    fn live_conn(&self, conn: ConnId, what: &str) {
        match self.conns.get(&conn) {
            None => panic!("{what} on a connection never opened: {conn:?}"),
            Some(c) => assert!(
                c.state != ConnState::Dead,
                "{what} on {conn:?} after it closed"
            ),
        }
    }

    fn on_persist(&mut self, batch: BatchId, ops: Vec<StoreOp>, step: &mut Step) {
        assert!(
            !self.acked.contains(&batch),
            "batch {batch:?} re-emitted after it was acknowledged"
        );
        if let Some((_, first)) = self.batch_first.get(&batch) {
            // A retried batch is the same except for its events' sequence numbers: they
            // are renumbered so that the outbox stays in seq order (each new seq is still
            // above every seq emitted before).
            assert_eq!(
                without_seqs(first),
                without_seqs(&ops),
                "a retried batch changed beyond renumbering"
            );
            for op in &ops {
                if let StoreOp::InsertEvent(e) = op {
                    assert!(
                        e.seq > self.last_seq,
                        "(c) renumbered seq {} after {}",
                        e.seq,
                        self.last_seq
                    );
                    self.last_seq = e.seq;
                }
            }
            self.batches.insert(batch, ops);
            return;
        }
        // (c) seq order, on first emission.
        for op in &ops {
            if let StoreOp::InsertEvent(e) = op {
                assert!(
                    e.seq > self.last_seq,
                    "(c) event seq {} after {}",
                    e.seq,
                    self.last_seq
                );
                self.last_seq = e.seq;
            }
        }
        // (f) events match status changes.
        let mut changes: Vec<(MessageId, u32, EventKind)> = Vec::new();
        let mut events: Vec<(MessageId, u32, EventKind)> = Vec::new();
        for op in &ops {
            match op {
                StoreOp::InsertMessage { message, .. } => {
                    for r in &message.recipients {
                        changes.push((message.id, r.idx, EventKind::Queued));
                        if r.status != RecipientStatus::Queued {
                            assert_eq!(
                                r.status,
                                RecipientStatus::Suppressed,
                                "inserted as {:?}",
                                r.status
                            );
                            changes.push((message.id, r.idx, EventKind::Suppressed));
                        }
                    }
                    if let Some(req) = step.submit
                        && let Some(r) = self.requests.get_mut(&req)
                    {
                        r.message = Some(message.id);
                    }
                }
                StoreOp::UpdateRecipient {
                    message,
                    idx,
                    status,
                    ..
                } => {
                    let kind = EventKind::for_status(*status);
                    assert!(kind.is_some(), "an update to {status:?} is persisted");
                    changes.extend(kind.map(|k| (*message, *idx, k)));
                }
                StoreOp::InsertEvent(e) => events.push((e.message, e.idx, e.kind)),
                _ => {}
            }
        }
        changes.sort();
        events.sort();
        assert_eq!(
            changes, events,
            "(f) events and status changes differ in batch {batch:?}"
        );
        self.batch_order += 1;
        self.batch_first
            .insert(batch, (self.batch_order, ops.clone()));
        self.batches.insert(batch, ops);
    }

    /// The store commits a batch (before the engine hears of it).
    fn apply_batch(&mut self, batch: BatchId) {
        let Some(ops) = self.batches.remove(&batch) else {
            return; // a duplicate or unknown acknowledgement
        };
        let order = self.batch_first.get(&batch).map_or(0, |b| b.0);
        self.acked.insert(batch);
        for op in ops {
            match op {
                StoreOp::InsertMessage { message, .. } => {
                    assert!(
                        self.stored_messages.insert(message.id),
                        "message inserted twice"
                    );
                    for r in &message.recipients {
                        self.store.insert((message.id, r.idx), (r.status, order));
                    }
                }
                StoreOp::UpdateRecipient {
                    message,
                    idx,
                    status,
                    ..
                } => {
                    let Some(cur) = self.store.get_mut(&(message, idx)) else {
                        panic!("update of a recipient that is not stored: {message:?}/{idx}");
                    };
                    if cur.0.is_terminal() {
                        // (a) only a stale batch may try, and the store's guard refuses it.
                        assert!(
                            order < cur.1,
                            "(a) terminal {:?} of {message:?}/{idx} overwritten by {status:?}",
                            cur.0
                        );
                        self.stale_updates += 1;
                        continue;
                    }
                    *cur = (status, order);
                }
                StoreOp::InsertEvent(e) => {
                    self.acked_event_set.insert(e.id);
                    self.acked_events.push(e.id);
                }
                _ => {}
            }
        }
    }

    fn profile(&self, conn: ConnId) -> Option<ServerProfile> {
        let c = self.conns.get(&conn)?;
        let IpAddr::V4(v4) = c.ip else { return None };
        let n = usize::from(v4.octets()[3]);
        (1..=4).contains(&n).then(|| self.servers[n - 1])
    }

    fn owe(&mut self, conn: ConnId, reply: &str) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.owed.extend_from_slice(reply.as_bytes());
            c.owed.extend_from_slice(b"\r\n");
        }
    }

    /// The server reads commands and owes their replies.
    fn server_reads(&mut self, conn: ConnId, bytes: &[u8]) {
        let Some(p) = self.profile(conn) else { return };
        for line in bytes.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let upper = String::from_utf8_lossy(line).to_ascii_uppercase();
            let reply = if upper.starts_with("EHLO") {
                match p.ehlo % 6 {
                    4 => "550 5.5.1 no EHLO".to_string(),
                    5 => "421 4.3.2 bye".to_string(),
                    _ => {
                        let mut s = "250-mx".to_string();
                        let caps = [
                            "PIPELINING",
                            "STARTTLS",
                            "SIZE 100000",
                            "SMTPUTF8",
                            "8BITMIME",
                            "SIZE 10",
                        ];
                        for (i, c) in caps.iter().enumerate() {
                            if p.caps & (1 << i) != 0 {
                                s.push_str("\r\n250-");
                                s.push_str(c);
                            }
                        }
                        s.push_str("\r\n250 HELP");
                        s
                    }
                }
            } else if upper.starts_with("HELO") {
                "250 mx".to_string()
            } else if upper == "STARTTLS" {
                [
                    "220 2.0.0 go",
                    "220 2.0.0 go",
                    "454 4.7.0 no TLS",
                    "421 4.7.0 bye",
                ][usize::from(p.starttls % 4)]
                .to_string()
            } else if upper.starts_with("MAIL FROM") {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.rcpt_n = 0;
                }
                table(MAIL, p.mail)
            } else if upper.starts_with("RCPT TO") {
                let n = self.conns.get_mut(&conn).map_or(0, |c| {
                    c.rcpt_n += 1;
                    c.rcpt_n - 1
                });
                table(RCPT, p.rcpt[n % 3])
            } else if upper == "DATA" {
                table(DATA, p.data)
            } else if upper == "QUIT" {
                "221 bye".to_string()
            } else {
                "250 ok".to_string()
            };
            self.owe(conn, &reply);
        }
    }

    // ---- the well-behaved world

    fn dns_answer(&mut self, name: &str, kind: QueryKind) -> Result<DnsAnswer, DnsError> {
        let d = ASCII
            .iter()
            .position(|d| *d == name || name.ends_with(&format!(".{d}")));
        let Some(d) = d else {
            return Err(DnsError::NxDomain);
        };
        let p = self.dns[d];
        match kind {
            QueryKind::Mx => {
                let hosts: Vec<(u16, String)> = match p.mx % 10 {
                    0..=2 => vec![(10, format!("mx1.{name}")), (20, format!("mx2.{name}"))],
                    3 => vec![(10, format!("mx1.{name}"))],
                    4 => vec![(0, ".".to_string())],
                    5 => return Err(DnsError::NxDomain),
                    6 => return Err(DnsError::ServFail),
                    7 => return Err(DnsError::NoRecords),
                    8 => return Err(DnsError::Timeout),
                    _ => vec![(5, ip(d).to_string())],
                };
                self.note_hosts(name, &hosts);
                Ok(DnsAnswer::Mx(hosts))
            }
            QueryKind::Address => {
                let second = name.starts_with("mx2.");
                let base = d + usize::from(second);
                match p.addr % 7 {
                    0..=3 => Ok(DnsAnswer::Address(vec![ip(base)])),
                    4 => Ok(DnsAnswer::Address(vec![ip(base), ip(base + 1)])),
                    5 => Err(DnsError::NxDomain),
                    _ => Ok(DnsAnswer::Address(vec![])),
                }
            }
        }
    }

    fn note_hosts(&mut self, domain: &str, hosts: &[(u16, String)]) {
        for (_, h) in hosts {
            self.host_domains
                .entry(h.clone())
                .or_default()
                .insert(domain.to_string());
        }
        // The domain itself, for a domain without MX.
        self.host_domains
            .entry(domain.to_string())
            .or_default()
            .insert(domain.to_string());
    }

    /// One well-behaved action; false if there was nothing to do.
    fn auto_step(&mut self, turn: usize) -> bool {
        for k in 0..6 {
            if self.auto_action((turn + k) % 6) {
                return true;
            }
        }
        false
    }

    fn auto_action(&mut self, which: usize) -> bool {
        match which {
            0 => {
                let Some((&b, _)) = self.batches.iter().next() else {
                    return false;
                };
                self.input(Input::Persisted { batch: b });
            }
            1 => {
                let Some((&q, (name, kind))) = self.queries.iter().next() else {
                    return false;
                };
                let (name, kind) = (name.clone(), *kind);
                let result = self.dns_answer(&name, kind);
                self.input(Input::Resolved { query: q, result });
            }
            2 => {
                let Some((&c, m)) = self
                    .conns
                    .iter()
                    .find(|(_, c)| c.state == ConnState::Connecting)
                else {
                    return false;
                };
                let refuse = match m.ip {
                    IpAddr::V4(v4) if (1..=4).contains(&v4.octets()[3]) => {
                        self.servers[usize::from(v4.octets()[3]) - 1].refuse % 4 == 3
                    }
                    _ => true,
                };
                if refuse {
                    self.connect_failed(c);
                } else {
                    self.connected(c);
                }
            }
            3 => {
                let Some((&c, _)) = self
                    .conns
                    .iter()
                    .find(|(_, c)| c.state == ConnState::Open && c.tls_pending)
                else {
                    return false;
                };
                let kind = self.profile(c).map_or(0, |p| p.tls);
                self.tls(c, kind);
            }
            4 => {
                let Some((&c, _)) = self.conns.iter().find(|(_, c)| {
                    c.state == ConnState::Open && !c.owed.is_empty() && !c.tls_pending
                }) else {
                    return false;
                };
                self.deliver(c, 0);
            }
            _ => {
                let Some((&p, _)) = self.posts.iter().next() else {
                    return false;
                };
                self.input(Input::WebhookResult {
                    post: p,
                    result: Ok(200),
                    duration_ms: 5,
                });
            }
        }
        true
    }

    fn connected(&mut self, c: ConnId) {
        let greeting = self
            .profile(c)
            .map(|p| table(GREETING, p.greeting))
            .unwrap_or_default();
        if let Some(m) = self.conns.get_mut(&c) {
            m.state = ConnState::Open;
        }
        self.input(Input::Connected { conn: c });
        // The greeting arrives in a later read.
        self.owe(c, &greeting);
    }

    fn connect_failed(&mut self, c: ConnId) {
        if let Some(m) = self.conns.get_mut(&c) {
            m.state = ConnState::Dead;
        }
        self.input(Input::ConnectFailed {
            conn: c,
            error: "connection refused".into(),
        });
    }

    fn tls(&mut self, c: ConnId, kind: u8) {
        if let Some(m) = self.conns.get_mut(&c) {
            m.tls_pending = false;
            m.owed.clear();
        }
        match kind % 4 {
            0 | 1 => self.input(Input::TlsEstablished {
                conn: c,
                verified: kind % 4 == 0,
            }),
            2 => {
                if let Some(m) = self.conns.get_mut(&c) {
                    m.state = ConnState::Dead;
                }
                self.input(Input::TlsFailed {
                    conn: c,
                    error: "handshake failure\r\n\x1b".into(),
                });
            }
            _ => self.input(Input::TlsEstablished {
                conn: c,
                verified: false,
            }),
        }
    }

    fn deliver(&mut self, c: ConnId, split: u8) {
        let Some(m) = self.conns.get_mut(&c) else {
            return;
        };
        let owed = std::mem::take(&mut m.owed);
        if owed.is_empty() {
            return;
        }
        let cut = if split == 0 {
            owed.len()
        } else {
            (usize::from(split) % owed.len()).max(1)
        };
        let (a, b) = owed.split_at(cut);
        if let Some(m) = self.conns.get_mut(&c) {
            m.owed = b.to_vec();
        }
        self.input(Input::Received {
            conn: c,
            bytes: a.to_vec(),
        });
    }

    fn tick_to(&mut self, t: Time) {
        self.now = self.now.max(t);
        self.input(Input::Tick);
    }

    fn run_auto(&mut self, n: usize) {
        for turn in 0..n {
            if !self.auto_step(turn) {
                let next = self.engine.poll_timeout().unwrap_or(self.now.plus(MIN));
                self.tick_to(next.min(self.now.plus(24 * HOUR)));
            }
        }
    }

    // ---- chaos

    fn submit(&mut self, s: &Sub) {
        let request = self.req_id();
        self.requests.insert(request, Req::default());
        let addr = |(l, d): (u8, u8)| {
            format!(
                "{}@{}",
                LOCALS[usize::from(l) % LOCALS.len()],
                DOMAINS[usize::from(d) % DOMAINS.len()]
            )
        };
        let (tenant, tdom) = if s.other_tenant {
            (TenantId(2), "other.test")
        } else {
            (TenantId(1), "sender.test")
        };
        let from = [
            "news@sender.test",
            "News <news@sender.test>",
            "x@other.test",
            "bad@@",
        ][usize::from(s.from) % 4]
            .to_string();
        let mut to: Vec<String> = s.to.iter().take(6).map(|&a| addr(a)).collect();
        let mut subject = "hello".to_string();
        let mut text =
            ["hi\r\n.dot\r\n", "", "é 8-bit", "line\n.\nend"][usize::from(s.body) % 4].to_string();
        let mut headers = BTreeMap::new();
        let mut from = from;
        if let Some((field, g)) = &s.garbage {
            match field % 5 {
                0 => to.push(g.clone()),
                1 => subject = g.clone(),
                2 => {
                    headers.insert("X-Fuzz".to_string(), g.clone());
                }
                3 => from = g.clone(),
                _ => text = g.clone(),
            }
        }
        let content = if s.raw {
            let mut data = format!(
                "From: {from}\r\nTo: {}\r\nSubject: {subject}\r\n\r\n",
                to.join(", ")
            )
            .into_bytes();
            data.extend_from_slice(text.as_bytes());
            SubmissionContent::Raw {
                mail_from: from.clone(),
                rcpt_to: to,
                data,
                smtputf8: s.body % 2 == 1,
            }
        } else {
            SubmissionContent::Compose(ComposeRequest {
                from,
                to,
                cc: s.cc.map(addr).into_iter().collect(),
                bcc: s.bcc.map(addr).into_iter().collect(),
                subject,
                text: Some(text),
                headers,
                ..ComposeRequest::default()
            })
        };
        self.last_submit = self.now;
        self.input(Input::Submit(Submission {
            request,
            tenant,
            tenant_domain: tdom.into(),
            source: if s.raw { Source::Smtp } else { Source::Api },
            idempotency_key: s.idem.map(|k| format!("key-{}", k % 4)),
            content,
        }));
    }

    fn conn_pick(&self, p: u8, state: Option<ConnState>) -> Option<ConnId> {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| state.is_none_or(|s| c.state == s))
            .map(|(id, _)| *id)
            .collect();
        pick(&ids, p)
    }

    fn admin(&mut self, op: &AdminOp) {
        let request = self.req_id();
        self.admin.insert(request, false);
        let tenant = |other: bool| if other { TenantId(2) } else { TenantId(1) };
        let addr = |(l, d): (u8, u8)| {
            format!(
                "{}@{}",
                LOCALS[usize::from(l) % LOCALS.len()],
                DOMAINS[usize::from(d) % DOMAINS.len()]
            )
        };
        let msg =
            |w: &World, p: u8| pick(&w.accepted_messages, p).unwrap_or(MessageId(u128::from(p)));
        let command = match *op {
            AdminOp::Force { dom, open } => AdminCommand::ForceBreaker {
                domain: [ASCII[0], ASCII[1], ASCII[2], ASCII[3], "B.TEST.", " "]
                    [usize::from(dom) % 6]
                    .to_string(),
                state: if open {
                    ForcedBreakerState::Open
                } else {
                    ForcedBreakerState::Closed
                },
            },
            AdminOp::RetryNow { pick: p, admin } => AdminCommand::RetryNow {
                tenant: (!admin).then_some(TenantId(1)),
                message: msg(self, p),
            },
            AdminOp::Cancel { pick: p, admin } => AdminCommand::Cancel {
                tenant: (!admin).then_some(TenantId(1)),
                message: msg(self, p),
            },
            AdminOp::AddSupp { other_tenant, rcpt } => AdminCommand::AddSuppression {
                tenant: tenant(other_tenant),
                address: addr(rcpt),
                reason: "manual\r\n".into(),
            },
            AdminOp::RemoveSupp { other_tenant, rcpt } => AdminCommand::RemoveSuppression {
                tenant: tenant(other_tenant),
                address: addr(rcpt),
            },
            AdminOp::CreateEndpoint {
                other_tenant,
                url,
                events,
            } => AdminCommand::CreateEndpoint {
                tenant: tenant(other_tenant),
                url: [
                    "https://hooks.example.net/x",
                    "http://10.0.0.1/x",
                    "ftp://x",
                    "https://h.example.com:8443/p?q=1",
                ][usize::from(url) % 4]
                    .into(),
                events: EventKind::ALL
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| events & (1 << i) != 0)
                    .map(|(_, k)| *k)
                    .collect(),
                secret: vec![7; 32],
            },
            AdminOp::DeleteEndpoint { pick: p } => {
                let (t, e) = pick(&self.endpoints, p).unwrap_or((TenantId(1), EndpointId(1)));
                AdminCommand::DeleteEndpoint {
                    tenant: t,
                    endpoint: e,
                }
            }
            AdminOp::Rotate { pick: p } => {
                let (t, e) = pick(&self.endpoints, p).unwrap_or((TenantId(1), EndpointId(1)));
                AdminCommand::RotateSecret {
                    tenant: t,
                    endpoint: e,
                    secret: vec![9; 32],
                }
            }
            AdminOp::RetryDelivery { pick: p, event } => {
                let (t, e) = pick(&self.endpoints, p).unwrap_or((TenantId(1), EndpointId(1)));
                let ev = pick(&self.acked_events, event).unwrap_or(EventId(1));
                AdminCommand::RetryWebhookDelivery {
                    tenant: t,
                    endpoint: e,
                    event: ev,
                }
            }
        };
        self.input(Input::Admin { request, command });
    }

    fn op(&mut self, op: &Op, i: usize) {
        match op {
            Op::Submit(s) => self.submit(s),
            Op::Auto(n) => self.run_auto(usize::from(n % 32) + 1),
            Op::Dns { pick: p, answer } => {
                let qs: Vec<QueryId> = self.queries.keys().copied().collect();
                let Some(q) = pick(&qs, *p) else { return };
                let name = self
                    .queries
                    .get(&q)
                    .map(|q| q.0.clone())
                    .unwrap_or_default();
                let result = match answer {
                    DnsChoice::Mx(v) => {
                        let hosts: Vec<(u16, String)> = v
                            .iter()
                            .take(4)
                            .map(|(pref, h)| {
                                let host = match h % 6 {
                                    0 => format!("mx1.{name}"),
                                    1 => format!("mx2.{name}"),
                                    2 => format!("mx1.{}", ASCII[usize::from(*h) % 4]),
                                    3 => ip(usize::from(*h)).to_string(),
                                    4 => String::new(),
                                    _ => ".".to_string(),
                                };
                                (*pref, host)
                            })
                            .collect();
                        self.note_hosts(&name, &hosts);
                        Ok(DnsAnswer::Mx(hosts))
                    }
                    DnsChoice::Addr(v) => Ok(DnsAnswer::Address(
                        v.iter().take(4).map(|&n| ip(usize::from(n))).collect(),
                    )),
                    DnsChoice::Err(e) => Err(match e % 5 {
                        0 => DnsError::NxDomain,
                        1 => DnsError::NoRecords,
                        2 => DnsError::ServFail,
                        3 => DnsError::Timeout,
                        _ => DnsError::Other("weird\r\n\x07".into()),
                    }),
                };
                if matches!(result, Ok(DnsAnswer::Mx(_)) | Err(DnsError::NoRecords)) {
                    self.note_hosts(&name, &[]);
                }
                self.input(Input::Resolved { query: q, result });
            }
            Op::Connect { pick: p, ok } => {
                let Some(c) = self.conn_pick(*p, Some(ConnState::Connecting)) else {
                    return;
                };
                if *ok {
                    self.connected(c);
                } else {
                    self.connect_failed(c);
                }
            }
            Op::Deliver { pick: p, split } => {
                if let Some(c) = self.conn_pick(*p, Some(ConnState::Open)) {
                    self.deliver(c, *split);
                }
            }
            Op::Garbage { pick: p, bytes } => {
                if let Some(c) = self.conn_pick(*p, None) {
                    self.input(Input::Received {
                        conn: c,
                        bytes: bytes.clone(),
                    });
                }
            }
            Op::Canned { pick: p, idx } => {
                if let Some(c) = self.conn_pick(*p, None) {
                    let bytes = CANNED[usize::from(*idx) % CANNED.len()].to_vec();
                    self.input(Input::Received { conn: c, bytes });
                }
            }
            Op::Tls { pick: p, kind } => {
                if let Some(c) = self.conn_pick(*p, None) {
                    self.tls(c, *kind);
                }
            }
            Op::Disconnect { pick: p, err } => {
                if let Some(c) = self.conn_pick(*p, None) {
                    if let Some(m) = self.conns.get_mut(&c) {
                        m.state = ConnState::Dead;
                    }
                    let error = err.then(|| "reset\0by peer".to_string());
                    self.input(Input::Disconnected { conn: c, error });
                }
            }
            Op::Ack(p) => {
                let bs: Vec<BatchId> = self.batches.keys().copied().collect();
                if let Some(b) = pick(&bs, *p) {
                    self.input(Input::Persisted { batch: b });
                }
            }
            Op::Fail(p) => {
                let bs: Vec<BatchId> = self.batches.keys().copied().collect();
                if let Some(b) = pick(&bs, *p) {
                    self.input(Input::PersistFailed {
                        batch: b,
                        error: "disk full\n".into(),
                    });
                }
            }
            Op::AckAll => {
                let bs: Vec<BatchId> = self.batches.keys().copied().collect();
                for b in bs {
                    self.input(Input::Persisted { batch: b });
                }
            }
            Op::Bogus { id, ack } => {
                // Already acknowledged batches (duplicates) or ids never emitted.
                let acked: Vec<BatchId> = self.acked.iter().copied().collect();
                let batch = if id % 2 == 0 && !acked.is_empty() {
                    acked[usize::from(*id / 2) % acked.len()]
                } else {
                    BatchId(10_000 + u64::from(*id))
                };
                if *ack {
                    self.input(Input::Persisted { batch });
                } else {
                    self.input(Input::PersistFailed {
                        batch,
                        error: "late".into(),
                    });
                }
            }
            Op::Webhook { pick: p, status } => {
                let ps: Vec<PostId> = self.posts.keys().copied().collect();
                let post = pick(&ps, *p).unwrap_or(PostId(9_999));
                let result = match status % 5 {
                    0 => Ok(200),
                    1 => Ok(500),
                    2 => Ok(410),
                    3 => Ok(u16::from(*status)),
                    _ => Err("timeout".into()),
                };
                self.input(Input::WebhookResult {
                    post,
                    result,
                    duration_ms: u64::from(*status),
                });
            }
            Op::Admin(a) => self.admin(a),
            Op::Tick(t) => {
                let jump = match t % 12 {
                    0 => Duration::ZERO,
                    1 => Duration::from_millis(1),
                    2 => Duration::from_secs(1),
                    3 => Duration::from_secs(10),
                    4 => Duration::from_secs(31),
                    5 => Duration::from_secs(61),
                    6 => Duration::from_secs(301),
                    7 => HOUR,
                    8 => 24 * HOUR,
                    9 => 8 * 24 * HOUR,
                    _ => {
                        let t = self.engine.poll_timeout().unwrap_or(self.now);
                        return self.tick_to(t);
                    }
                };
                let t = self.now.plus(jump);
                self.tick_to(t);
            }
            Op::Scan {
                files_ok,
                live_ok,
                stray,
            } => {
                if !self.scan_pending && !stray {
                    return;
                }
                let old = self.now.minus(self.max_age + HOUR);
                let mut files: Vec<SpoolFile> = self
                    .stored_messages
                    .iter()
                    .map(|&m| SpoolFile {
                        message: m,
                        modified: old,
                    })
                    .collect();
                files.push(SpoolFile {
                    message: MessageId(i as u128 + 1),
                    modified: old,
                });
                let live: Vec<MessageId> = self
                    .stored_messages
                    .iter()
                    .copied()
                    .filter(|m| {
                        self.store
                            .range((*m, 0)..=(*m, u32::MAX))
                            .any(|(_, (s, _))| !s.is_terminal())
                    })
                    .collect();
                self.input(Input::SpoolScanned {
                    files: if *files_ok {
                        Ok(files)
                    } else {
                        Err("io".into())
                    },
                    live: if *live_ok { Ok(live) } else { Err("db".into()) },
                });
            }
            Op::Reprofile { server, profile } => self.servers[usize::from(*server) % 4] = *profile,
            Op::Drain(x) => {
                if *x == 255 {
                    self.input(Input::Drain);
                }
            }
        }
    }

    /// A well-behaved world runs past every message's max age: then everything is
    /// answered and every stored recipient is terminal.
    fn finish(&mut self) {
        let deadline = self.last_submit.plus(self.max_age + 2 * HOUR);
        let mut steps = 0;
        while steps < 2_000 {
            steps += 1;
            if self.auto_step(steps) {
                continue;
            }
            if self.now >= deadline {
                break;
            }
            let next = self
                .engine
                .poll_timeout()
                .unwrap_or(deadline)
                .max(self.now.plus(10 * MIN));
            self.tick_to(next.min(deadline));
        }
        if steps >= 2_000 || self.engine.unpersisted_batches() > 0 {
            return; // did not settle within the budget: nothing to conclude
        }
        for (r, req) in &self.requests {
            assert!(req.answered, "(b) request {r:?} never answered");
        }
        for (r, answered) in &self.admin {
            assert!(*answered, "admin request {r:?} never answered");
        }
        for ((m, idx), (s, _)) in &self.store {
            assert!(
                s.is_terminal(),
                "liveness: {m:?}/{idx} is still {s:?} in the store at max age + 2h (engine holds {} pending)",
                self.engine.pending_recipients()
            );
        }
    }
}

fn op_message(op: &StoreOp) -> Option<MessageId> {
    match op {
        StoreOp::InsertMessage { message, .. } => Some(message.id),
        StoreOp::UpdateRecipient { message, .. } => Some(*message),
        _ => None,
    }
}

fuzz_target!(|s: Scenario| {
    let mut w = World::new(&s);
    for (i, op) in s.ops.iter().take(120).enumerate() {
        w.op(op, i);
    }
    w.finish();
    let _ = VecDeque::<u8>::new();
});

/// A batch's ops with event sequence numbers blanked (in the record, its payload and the
/// webhook delivery rows): what must not change when a failed batch is retried.
fn without_seqs(ops: &[StoreOp]) -> Vec<StoreOp> {
    ops.iter()
        .cloned()
        .map(|op| match op {
            StoreOp::InsertEvent(mut e) => {
                e.payload = outpost_core::events::with_seq(&e.payload, 0).into();
                e.seq = 0;
                StoreOp::InsertEvent(e)
            }
            StoreOp::UpsertWebhookDelivery(mut d) => {
                d.event_seq = 0;
                StoreOp::UpsertWebhookDelivery(d)
            }
            other => other,
        })
        .collect()
}
