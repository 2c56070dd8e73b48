//! outpost-sim: a deterministic simulator for outpost's delivery engine, in the manner of
//! TigerBeetle's VOPR and FoundationDB's simulation testing.
//!
//! Everything the engine talks to is simulated (virtual clock, DNS, remote SMTP servers
//! speaking real SMTP bytes, the store, webhook endpoints, submitters, operators), every
//! choice comes from one seed, and invariants are checked after every step. A failing seed
//! replays exactly: `outpost-sim --seed S --trace`.

pub mod queue;
pub mod sim;
pub mod smtp_server;
pub mod store;
pub mod trace;
pub mod world;

use std::cell::RefCell;

/// What one run looks like.
#[derive(Clone, Debug)]
pub struct Options {
    /// Submissions during the active phase.
    pub messages: usize,
    pub domains: usize,
    pub tenants: usize,
    /// Process crashes injected (half at random times, half at chosen points).
    pub crashes: u32,
    /// 0: a perfect world; 3: the worst.
    pub faults: u32,
    /// Length of the submission phase, in simulated seconds.
    pub active_secs: u64,
    /// Operator commands during the run.
    pub admin: bool,
    /// Forward clock jumps.
    pub jumps: bool,
    /// Keep every trace line (for printing).
    pub trace: bool,
    /// Keep the last N trace lines (failure reports).
    pub tail: usize,
    /// Engine inputs before the run is declared stuck.
    pub max_steps: u64,
    /// Keys of known findings (see FINDINGS.md) to count instead of failing on, so that a
    /// run can look past them for other bugs.
    pub allow: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            messages: 200,
            domains: 12,
            tenants: 3,
            crashes: 3,
            faults: 2,
            active_secs: 4 * 3600,
            admin: true,
            jumps: true,
            trace: false,
            tail: 0,
            max_steps: 20_000_000,
            allow: Vec::new(),
        }
    }
}

/// Figures of one or more runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub seeds: u64,
    /// Acknowledged (202) messages and their recipients.
    pub messages: u64,
    pub recipients: u64,
    pub rejected: u64,
    /// Submissions in flight when the process died (the submitter sees a reset).
    pub unanswered_at_crash: u64,
    /// Submissions the simulator considers valid that intake refused (not a failure; a
    /// hint that intake is stricter than the generator).
    pub valid_refused: u64,
    pub valid_refused_example: String,
    pub crashes: u64,
    pub faults: u64,
    pub events: u64,
    /// A recipient accepted twice by a server, across a crash in the window between a
    /// 250 and its persisted status.
    pub dup_crash: u64,
    /// ... or after the engine timed out waiting for the 250 (RFC 1047).
    pub dup_timeout: u64,
    pub delivered_at_servers: u64,
    /// `UpdateRecipient`s the store's terminal guard refused.
    pub guard_refusals: u64,
    pub delivered: u64,
    pub bounced: u64,
    pub failed: u64,
    pub suppressed: u64,
    pub webhooks_failed: u64,
    /// Coverage of the checks: breakers compared across a restart (warm-up), probes
    /// while half-open, orphan spool files deleted, spool scans that failed to read,
    /// 550 5.1.1 bounces checked for their suppression.
    pub warmup_checks: u64,
    pub probes: u64,
    pub orphans_deleted: u64,
    pub scans_failed: u64,
    pub hard_bounces_checked: u64,
    /// Idle destination entries the engine forgot (and recreated when mail came again).
    pub destinations_forgotten: u64,
    pub steps: u64,
    /// Hash of every input and output of the run (XOR-combined over seeds).
    pub digest: u64,
    /// Allowed findings seen, by key.
    pub allowed: std::collections::BTreeMap<String, u64>,
}

impl Summary {
    pub fn merge(&mut self, o: &Summary) {
        self.seeds += o.seeds;
        self.messages += o.messages;
        self.recipients += o.recipients;
        self.rejected += o.rejected;
        self.unanswered_at_crash += o.unanswered_at_crash;
        self.valid_refused += o.valid_refused;
        if self.valid_refused_example.is_empty() {
            self.valid_refused_example = o.valid_refused_example.clone();
        }
        self.crashes += o.crashes;
        self.faults += o.faults;
        self.events += o.events;
        self.dup_crash += o.dup_crash;
        self.dup_timeout += o.dup_timeout;
        self.delivered_at_servers += o.delivered_at_servers;
        self.guard_refusals += o.guard_refusals;
        self.delivered += o.delivered;
        self.bounced += o.bounced;
        self.failed += o.failed;
        self.suppressed += o.suppressed;
        self.webhooks_failed += o.webhooks_failed;
        self.warmup_checks += o.warmup_checks;
        self.probes += o.probes;
        self.orphans_deleted += o.orphans_deleted;
        self.scans_failed += o.scans_failed;
        self.hard_bounces_checked += o.hard_bounces_checked;
        self.destinations_forgotten += o.destinations_forgotten;
        self.steps += o.steps;
        self.digest ^= o.digest;
        for (k, n) in &o.allowed {
            *self.allowed.entry(k.clone()).or_default() += n;
        }
    }
}

/// A violated invariant, with what is needed to reproduce it.
#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub invariant: String,
    pub detail: String,
    /// Simulated time of the violation.
    pub at: outpost_core::Time,
    pub step: u64,
    /// The last trace lines before the violation.
    pub trace: Vec<String>,
    pub digest: u64,
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "seed {} FAILED [{}] at {} (step {}): {}",
            self.seed,
            self.invariant,
            self.at.rfc3339(),
            self.step,
            self.detail
        )
    }
}

thread_local! {
    /// Where the engine panicked, recorded by the binary's panic hook.
    pub static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Every finding key of FINDINGS.md: a run that allows them all fails only on a new bug.
pub const KNOWN_FINDINGS: &[&str] = &[
    "seq-order",
    "delete-spool-undurable",
    "event-for-refused-update",
    "delivery-state-regressed",
    "suppression-not-rechecked",
    "suppression-race",
    "breaker-open-connect",
    "breaker-half-open-extra",
    "endpoint-after-failed-write",
    "failed-write-not-retried",
];

/// Runs one seed. On a violation, replays the seed to collect the last 50 trace lines.
pub fn run_seed(seed: u64, opts: &Options) -> Result<Summary, Failure> {
    let mut sim = sim::Sim::new(seed, opts);
    let r = sim.run();
    let digest = sim.digest.value();
    match r {
        Ok(()) => {
            let mut s = sim.sum.clone();
            s.digest = digest;
            Ok(s)
        }
        Err(viol) => {
            let mut trace: Vec<String> = sim.lines.lines.iter().cloned().collect();
            if !opts.trace && opts.tail == 0 {
                let o2 = Options {
                    tail: 50,
                    ..opts.clone()
                };
                let mut replay = sim::Sim::new(seed, &o2);
                let _ = replay.run();
                trace = replay.lines.lines.iter().cloned().collect();
            }
            let mut detail = viol.detail;
            if viol.invariant == "engine panic"
                && let Some(loc) = PANIC_LOCATION.with(|p| p.borrow_mut().take())
            {
                detail = format!("{detail} ({loc})");
            }
            Err(Failure {
                seed,
                invariant: viol.invariant.to_string(),
                detail,
                at: sim.now(),
                step: sim.steps(),
                trace,
                digest,
            })
        }
    }
}
