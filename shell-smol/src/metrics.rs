//! `GET /metrics`: the Prometheus text exposition (version 0.0.4).
//!
//! The engine loop owns the counters it sees in the outputs it carries out ([`Counters`]:
//! per-tenant outcomes, attempts per category, attempt latency, webhook posts), counting
//! a store batch only once it is durable. The store writer feeds the commit-latency
//! histogram ([`STORE_COMMIT`]). A [`Snapshot`] is taken in the loop and rendered on the
//! HTTP thread, where tenant ids are named by their domain.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outpost_core::engine::{BreakerView, QueueView, Stats};
use outpost_core::model::{EventKind, StoreOp};
use outpost_core::{BatchId, TenantId};

use crate::store::Store;

/// Buckets (seconds) for SMTP attempt durations.
const ATTEMPT_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
/// Buckets (seconds) for store commits (spool fsync + SQLite transaction).
const COMMIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Destinations shown by name in the queue-depth gauge; the rest are summed.
const TOP_DESTINATIONS: usize = 20;

/// A cumulative histogram, safe to feed from any thread.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in microseconds (integer, so it can be atomic).
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if secs <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            count: self.count.load(Ordering::Relaxed),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// Store commit latency, fed by the store writer thread.
pub static STORE_COMMIT: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(COMMIT_BUCKETS));

#[derive(Clone, Debug)]
pub struct HistogramSnapshot {
    bounds: &'static [f64],
    counts: Vec<u64>,
    count: u64,
    sum_us: u64,
}

/// What a store batch will count once it is durable.
#[derive(Clone, Debug)]
enum Seen {
    Accepted(TenantId),
    Event(TenantId, EventKind),
    Attempt { category: &'static str, ms: u64 },
}

/// Counters the engine loop keeps from the outputs it carries out.
pub struct Counters {
    accepted: BTreeMap<TenantId, u64>,
    events: BTreeMap<(TenantId, EventKind), u64>,
    attempts: BTreeMap<&'static str, u64>,
    attempt_latency: Histogram,
    webhook_ok: u64,
    webhook_failed: u64,
    pending: HashMap<BatchId, Vec<Seen>>,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            accepted: BTreeMap::new(),
            events: BTreeMap::new(),
            attempts: BTreeMap::new(),
            attempt_latency: Histogram::new(ATTEMPT_BUCKETS),
            webhook_ok: 0,
            webhook_failed: 0,
            pending: HashMap::new(),
        }
    }
}

impl Counters {
    /// Notes what a batch about to be written holds.
    pub fn on_persist(&mut self, batch: BatchId, ops: &[StoreOp]) {
        let seen: Vec<Seen> = ops
            .iter()
            .filter_map(|op| match op {
                StoreOp::InsertMessage { message, .. } => Some(Seen::Accepted(message.tenant)),
                StoreOp::InsertEvent(e) if e.kind != EventKind::Queued => {
                    Some(Seen::Event(e.tenant, e.kind))
                }
                StoreOp::InsertAttempt(a) => Some(Seen::Attempt {
                    category: a.category.as_str(),
                    ms: a.duration_ms,
                }),
                _ => None,
            })
            .collect();
        if !seen.is_empty() {
            self.pending.insert(batch, seen);
        }
    }

    /// The batch is durable: count it. (A failed batch is dropped: the engine writes its
    /// content again in a new batch.)
    pub fn on_batch_done(&mut self, batch: BatchId, committed: bool) {
        let Some(seen) = self.pending.remove(&batch) else {
            return;
        };
        if !committed {
            return;
        }
        for s in seen {
            match s {
                Seen::Accepted(t) => *self.accepted.entry(t).or_default() += 1,
                Seen::Event(t, k) => *self.events.entry((t, k)).or_default() += 1,
                Seen::Attempt { category, ms } => {
                    *self.attempts.entry(category).or_default() += 1;
                    self.attempt_latency.observe(Duration::from_millis(ms));
                }
            }
        }
    }

    pub fn on_webhook_result(&mut self, result: &Result<u16, String>) {
        match result {
            Ok(s) if (200..300).contains(s) => self.webhook_ok += 1,
            _ => self.webhook_failed += 1,
        }
    }

    /// Everything `render` needs, taken in the engine loop.
    #[allow(clippy::too_many_arguments)]
    pub fn snapshot(
        &self,
        stats: &Stats,
        queue: Vec<QueueView>,
        breakers: Vec<BreakerView>,
        webhook_backlog: usize,
        pending_recipients: usize,
        open_connections: usize,
        destinations: usize,
        draining: bool,
    ) -> Snapshot {
        Snapshot {
            stats: stats.clone(),
            accepted: self.accepted.clone(),
            events: self.events.clone(),
            attempts: self.attempts.clone(),
            attempt_latency: self.attempt_latency.snapshot(),
            webhook_ok: self.webhook_ok,
            webhook_failed: self.webhook_failed,
            queue,
            breakers,
            webhook_backlog,
            pending_recipients,
            open_connections,
            destinations,
            draining,
        }
    }
}

/// A point-in-time copy of everything `/metrics` shows.
#[derive(Clone, Debug)]
pub struct Snapshot {
    stats: Stats,
    accepted: BTreeMap<TenantId, u64>,
    events: BTreeMap<(TenantId, EventKind), u64>,
    attempts: BTreeMap<&'static str, u64>,
    attempt_latency: HistogramSnapshot,
    webhook_ok: u64,
    webhook_failed: u64,
    queue: Vec<QueueView>,
    breakers: Vec<BreakerView>,
    webhook_backlog: usize,
    pending_recipients: usize,
    open_connections: usize,
    destinations: usize,
    draining: bool,
}

/// Escapes a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP outpost_{name} {help}");
        let _ = writeln!(self.0, "# TYPE outpost_{name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "outpost_{name} {v}");
            return;
        }
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        let _ = writeln!(self.0, "outpost_{name}{{{}}} {v}", l.join(","));
    }
    fn single(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }
    fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.family(name, "histogram", help);
        for (b, c) in h.bounds.iter().zip(&h.counts) {
            let le = b.to_string();
            self.sample(&format!("{name}_bucket"), &[("le", &le)], c);
        }
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], h.count);
        self.sample(&format!("{name}_sum"), &[], h.sum_us as f64 / 1_000_000.0);
        self.sample(&format!("{name}_count"), &[], h.count);
    }
}

/// Resident set size in bytes, from /proc/self/status (`None` off Linux).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Renders the exposition. `store` names tenants by domain (the id when it cannot).
pub fn render(s: &Snapshot, store: Option<&Store>) -> String {
    let names: BTreeMap<TenantId, String> = store
        .and_then(|st| st.read(crate::store::query::tenants).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.id, t.domain))
        .collect();
    let tenant = |t: &TenantId| names.get(t).cloned().unwrap_or_else(|| t.0.to_string());
    let mut o = Out(String::new());
    let st = &s.stats;
    for (name, help, v) in [
        (
            "accepted_messages_total",
            "Messages accepted.",
            st.accepted_messages,
        ),
        (
            "rejected_submissions_total",
            "Submissions refused.",
            st.rejected_submissions,
        ),
        (
            "delivery_attempts_total",
            "Recipient delivery attempts.",
            st.attempts,
        ),
        ("delivered_total", "Recipients delivered.", st.delivered),
        (
            "deferred_total",
            "Recipient attempts deferred.",
            st.deferred,
        ),
        ("bounced_total", "Recipients bounced.", st.bounced),
        ("failed_total", "Recipients failed.", st.failed),
        ("suppressed_total", "Recipients suppressed.", st.suppressed),
        (
            "persist_failures_total",
            "Store batches that failed.",
            st.persist_failures,
        ),
        (
            "breaker_opened_total",
            "Circuit breakers opened.",
            st.breaker_opened,
        ),
        (
            "connections_opened_total",
            "SMTP connections opened.",
            st.connections_opened,
        ),
        (
            "destinations_forgotten_total",
            "Idle destination domains whose state the engine dropped.",
            st.destinations_forgotten,
        ),
    ] {
        o.single(name, "counter", help, v);
    }

    o.family(
        "tenant_accepted_messages_total",
        "counter",
        "Messages accepted (durably stored), per tenant.",
    );
    for (t, v) in &s.accepted {
        o.sample(
            "tenant_accepted_messages_total",
            &[("tenant", &tenant(t))],
            v,
        );
    }
    o.family(
        "tenant_recipients_total",
        "counter",
        "Recipient outcomes per tenant (deferred counts attempts), from the persisted events.",
    );
    for ((t, k), v) in &s.events {
        let outcome = k.as_str().trim_start_matches("message.");
        o.sample(
            "tenant_recipients_total",
            &[("tenant", &tenant(t)), ("outcome", outcome)],
            v,
        );
    }
    o.family(
        "attempts_by_category_total",
        "counter",
        "Recorded delivery attempts per classification category.",
    );
    for (c, v) in &s.attempts {
        o.sample("attempts_by_category_total", &[("category", c)], v);
    }
    o.histogram(
        "attempt_duration_seconds",
        "Duration of recorded delivery attempts.",
        &s.attempt_latency,
    );
    o.histogram(
        "store_commit_duration_seconds",
        "Store group commits: spool fsync and the SQLite transaction.",
        &STORE_COMMIT.snapshot(),
    );

    // Queue depth: per state overall, and per state for the largest destinations.
    let mut totals = [0u64; 3];
    for q in &s.queue {
        totals[0] += q.queued;
        totals[1] += q.deferred;
        totals[2] += q.sending;
    }
    o.family("queue_depth", "gauge", "Pending recipients per state.");
    for (state, v) in ["queued", "deferred", "sending"].iter().zip(totals) {
        o.sample("queue_depth", &[("state", state)], v);
    }
    let mut by_size: Vec<&QueueView> = s.queue.iter().collect();
    by_size.sort_by_key(|q| std::cmp::Reverse(q.queued + q.deferred + q.sending));
    o.family(
        "destination_queue_depth",
        "gauge",
        "Pending recipients per state for the 20 largest destination domains (others summed as domain=\"_other\").",
    );
    let mut other = [0u64; 3];
    for (i, q) in by_size.iter().enumerate() {
        let vals = [q.queued, q.deferred, q.sending];
        if i < TOP_DESTINATIONS {
            for (state, v) in ["queued", "deferred", "sending"].iter().zip(vals) {
                o.sample(
                    "destination_queue_depth",
                    &[("domain", &q.domain), ("state", state)],
                    v,
                );
            }
        } else {
            for (acc, v) in other.iter_mut().zip(vals) {
                *acc += v;
            }
        }
    }
    if by_size.len() > TOP_DESTINATIONS {
        for (state, v) in ["queued", "deferred", "sending"].iter().zip(other) {
            o.sample(
                "destination_queue_depth",
                &[("domain", "_other"), ("state", state)],
                v,
            );
        }
    }

    o.family(
        "breaker_state",
        "gauge",
        "1 for the current state of each destination's circuit breaker that is not plainly closed.",
    );
    for b in &s.breakers {
        o.sample(
            "breaker_state",
            &[("domain", &b.domain), ("state", &b.state)],
            1,
        );
    }
    let open = s.breakers.iter().filter(|b| b.state != "closed").count();
    o.single(
        "breakers_open",
        "gauge",
        "Destinations whose breaker is open or half-open.",
        open,
    );

    o.single(
        "webhook_backlog",
        "gauge",
        "Webhook deliveries not yet delivered (pending or retrying).",
        s.webhook_backlog,
    );
    o.family("webhook_posts_total", "counter", "Webhook POSTs by result.");
    o.sample("webhook_posts_total", &[("result", "ok")], s.webhook_ok);
    o.sample(
        "webhook_posts_total",
        &[("result", "failed")],
        s.webhook_failed,
    );

    o.single(
        "pending_recipients",
        "gauge",
        "Recipients not yet terminal.",
        s.pending_recipients,
    );
    o.single(
        "open_connections",
        "gauge",
        "Outbound SMTP connections open.",
        s.open_connections,
    );
    // Should follow the domains in use, not grow with every domain ever mailed.
    o.single(
        "destinations",
        "gauge",
        "Destination domains the engine holds state for (work, connections, a cached route, breaker or rate state).",
        s.destinations,
    );
    o.single(
        "draining",
        "gauge",
        "1 while shutting down.",
        u8::from(s.draining),
    );
    if let Some(rss) = rss_bytes() {
        o.single(
            "process_resident_memory_bytes",
            "gauge",
            "Resident set size of the daemon.",
            rss,
        );
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let s = h.snapshot();
        assert_eq!(s.counts, vec![1, 2]);
        assert_eq!(s.count, 3);
        assert_eq!(s.sum_us, 5_550_000);
    }

    #[test]
    fn only_committed_batches_count() {
        let mut c = Counters::default();
        c.pending
            .insert(BatchId(1), vec![Seen::Accepted(TenantId(1))]);
        c.pending
            .insert(BatchId(2), vec![Seen::Accepted(TenantId(1))]);
        c.on_batch_done(BatchId(1), false);
        c.on_batch_done(BatchId(2), true);
        assert_eq!(c.accepted.get(&TenantId(1)), Some(&1));
        assert!(c.pending.is_empty());
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
