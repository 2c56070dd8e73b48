//! Per-destination circuit breaker (DESIGN.md defaults: opens after 5 consecutive
//! connection- or transaction-level failures; open 5 min doubling to 1 h; half-open lets
//! one probe through; a success closes it), and its warm-up from attempt history.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::BreakerConfig;
use crate::ids::MessageId;
use crate::model::AttemptRecord;
use crate::time::Time;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// May a new connection be opened now?
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Half-open: this connection is the one probe.
    Probe,
    /// Wait until then (or, if forced open, `Time::MAX`).
    Wait(Time),
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Breaker {
    consecutive_failures: u32,
    /// Times it opened since it last closed (for doubling).
    open_streak: u32,
    opened_at: Option<Time>,
    open_until: Option<Time>,
    probe_in_flight: bool,
    forced_open: bool,
    last_failure: Option<String>,
}

impl Breaker {
    pub fn state(&self, now: Time) -> BreakerState {
        if self.forced_open {
            return BreakerState::Open;
        }
        match self.open_until {
            None => BreakerState::Closed,
            Some(t) if now < t => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    pub fn is_closed(&self) -> bool {
        !self.forced_open && self.open_until.is_none()
    }

    /// Closed with nothing counted: every decision it makes from here on is the one a new
    /// `Breaker::default()` would make. Only `opened_at` and `last_failure` may differ,
    /// and they explain the past without deciding anything, so the engine may drop such
    /// a breaker and start a fresh one when the destination comes back.
    pub fn is_idle(&self) -> bool {
        self.is_closed()
            && self.consecutive_failures == 0
            && self.open_streak == 0
            && !self.probe_in_flight
    }

    /// Whether a new connection may be opened now. A `Probe` admission must be followed by
    /// `start_probe`.
    pub fn admission(&self, now: Time) -> Admission {
        match self.state(now) {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::Open => Admission::Wait(if self.forced_open {
                Time::MAX
            } else {
                self.open_until.unwrap_or(Time::MAX)
            }),
            BreakerState::HalfOpen if self.probe_in_flight => Admission::Wait(Time::MAX),
            BreakerState::HalfOpen => Admission::Probe,
        }
    }

    pub fn start_probe(&mut self) {
        self.probe_in_flight = true;
    }

    /// The probe ended without an outcome (e.g. nothing left to send): let another through.
    pub fn cancel_probe(&mut self) {
        self.probe_in_flight = false;
    }

    pub fn next_probe_at(&self) -> Option<Time> {
        if self.forced_open {
            None
        } else {
            self.open_until
        }
    }

    /// A transaction completed without a destination-level failure.
    pub fn on_success(&mut self) {
        if self.forced_open {
            return;
        }
        self.consecutive_failures = 0;
        self.open_streak = 0;
        self.opened_at = None;
        self.open_until = None;
        self.probe_in_flight = false;
    }

    /// A connection- or transaction-level failure. Returns true if this opened the breaker.
    pub fn on_failure(&mut self, now: Time, reason: &str, cfg: &BreakerConfig) -> bool {
        self.last_failure = Some(crate::sanitize::cut(reason, 256));
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let was_probe = self.probe_in_flight;
        self.probe_in_flight = false;
        if self.forced_open {
            return false;
        }
        let half_open_failed = was_probe || self.state(now) == BreakerState::HalfOpen;
        if half_open_failed
            || (self.is_closed() && self.consecutive_failures >= cfg.failure_threshold)
        {
            self.open(now, cfg);
            return true;
        }
        false
    }

    fn open(&mut self, now: Time, cfg: &BreakerConfig) {
        let factor = 1u32
            .checked_shl(self.open_streak.min(20))
            .unwrap_or(u32::MAX);
        let dur = cfg.open_initial.saturating_mul(factor).min(cfg.open_max);
        self.open_streak = self.open_streak.saturating_add(1);
        self.opened_at = Some(now);
        self.open_until = Some(now.plus(dur));
    }

    pub fn force(&mut self, open: bool, now: Time) {
        if open {
            self.forced_open = true;
            self.opened_at = Some(now);
            self.probe_in_flight = false;
        } else {
            self.forced_open = false;
            self.on_success();
        }
    }

    pub fn forced(&self) -> bool {
        self.forced_open
    }
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }
    pub fn opened_at(&self) -> Option<Time> {
        self.opened_at
    }
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// "opened at T after N failures: last reply ...; next probe at T2".
    pub fn explain(&self, now: Time) -> String {
        let last = self.last_failure.as_deref().unwrap_or("none");
        match self.state(now) {
            BreakerState::Closed => format!(
                "closed: {} consecutive failure(s); last failure: {last}",
                self.consecutive_failures
            ),
            BreakerState::Open if self.forced_open => format!(
                "forced open by an operator at {}; stays open until forced closed",
                self.opened_at.unwrap_or(now).rfc3339()
            ),
            BreakerState::Open => format!(
                "opened at {} after {} consecutive failure(s): last failure: {last}; next probe at {}",
                self.opened_at.unwrap_or(now).rfc3339(),
                self.consecutive_failures,
                self.open_until.unwrap_or(now).rfc3339()
            ),
            BreakerState::HalfOpen => format!(
                "half-open since {}: {}; last failure: {last}",
                self.open_until.unwrap_or(now).rfc3339(),
                if self.probe_in_flight {
                    "one probe in flight"
                } else {
                    "the next connection is the probe"
                }
            ),
        }
    }
}

/// Warm-up: breaker states from attempt history (DESIGN.md): per domain, the last
/// `warmup_attempts` distinct (message, attempt) within `warmup_window` before `now`, in
/// time order; a destination-level failure counts one, a success resets the count. A
/// domain whose count reaches the threshold starts open, from `now`, so that a restart
/// never hammers a destination that was failing.
pub fn warm_up(
    now: Time,
    history: &[AttemptRecord],
    cfg: &BreakerConfig,
) -> BTreeMap<String, Breaker> {
    let since = now.minus(cfg.warmup_window);
    // Distinct (message, attempt) per domain: rows of one transaction share them.
    // domain -> (message, attempt) -> (first start, any destination failure, reply)
    type Attempts<'a> = BTreeMap<(MessageId, u32), (Time, bool, &'a str)>;
    let mut per_domain: BTreeMap<&str, Attempts<'_>> = BTreeMap::new();
    for a in history
        .iter()
        .filter(|a| a.started_at >= since && a.started_at <= now)
    {
        let e = per_domain
            .entry(a.domain.as_str())
            .or_default()
            .entry((a.message, a.attempt))
            .or_insert((a.started_at, a.breaker_failure, a.response.as_str()));
        e.1 |= a.breaker_failure;
        e.0 = e.0.min(a.started_at);
    }
    let mut out = BTreeMap::new();
    for (domain, attempts) in per_domain {
        let mut ordered: Vec<_> = attempts.into_iter().collect();
        // Time order; ties by key for determinism.
        ordered.sort_by_key(|(k, v)| (v.0, *k));
        let recent: Vec<_> = ordered
            .iter()
            .skip(ordered.len().saturating_sub(cfg.warmup_attempts))
            .collect();
        let mut b = Breaker::default();
        let mut last_reason = None;
        for (_, (_, failed, reason)) in &recent {
            if *failed {
                b.consecutive_failures += 1;
                last_reason = Some(*reason);
            } else {
                b.consecutive_failures = 0;
            }
        }
        if b.consecutive_failures == 0 {
            continue;
        }
        b.last_failure = last_reason.map(|r| crate::sanitize::cut(r, 256));
        if b.consecutive_failures >= cfg.failure_threshold {
            b.open(now, cfg);
        }
        out.insert(domain.to_string(), b);
    }
    out
}

/// Domains that warm-up opens (used by checks).
pub fn open_domains(breakers: &BTreeMap<String, Breaker>, now: Time) -> BTreeSet<String> {
    breakers
        .iter()
        .filter(|(_, b)| b.state(now) == BreakerState::Open)
        .map(|(d, _)| d.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Category;
    use crate::ids::TenantId;
    use crate::model::TlsRecord;
    use crate::smtp::Stage;
    use crate::status::RecipientStatus;
    use core::time::Duration;
    use proptest::prelude::*;

    fn cfg() -> BreakerConfig {
        crate::Config::default().breaker
    }
    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn opens_after_threshold_and_doubles() {
        let c = cfg();
        let mut b = Breaker::default();
        let t0 = Time::from_secs(1_000_000);
        for i in 0..4 {
            assert!(!b.on_failure(t0, "421 busy", &c), "opened too early at {i}");
            assert_eq!(b.admission(t0), Admission::Allowed);
        }
        assert!(b.on_failure(t0, "421 busy", &c));
        assert_eq!(b.admission(t0), Admission::Wait(t0.plus(5 * MIN)));
        let t1 = t0.plus(5 * MIN);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.admission(t1), Admission::Probe);
        b.start_probe();
        assert!(
            matches!(b.admission(t1), Admission::Wait(_)),
            "exactly one probe"
        );
        assert!(b.on_failure(t1, "timeout", &c));
        assert_eq!(b.admission(t1), Admission::Wait(t1.plus(10 * MIN)));
        let t2 = t1.plus(10 * MIN);
        b.start_probe();
        b.on_success();
        assert_eq!(b.state(t2), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
        assert!(b.explain(t2).starts_with("closed"));
    }

    #[test]
    fn open_duration_caps_at_one_hour() {
        let c = cfg();
        let mut b = Breaker::default();
        let mut t = Time::from_secs(1_000_000);
        for _ in 0..5 {
            b.on_failure(t, "x", &c);
        }
        for _ in 0..10 {
            let until = b.next_probe_at().unwrap_or(t);
            assert!(until.since(t) <= Duration::from_secs(3600));
            t = until;
            b.start_probe();
            b.on_failure(t, "x", &c);
        }
        assert_eq!(b.next_probe_at(), Some(t.plus(Duration::from_secs(3600))));
        assert!(b.explain(t).contains("next probe at"));
    }

    #[test]
    fn forced_open_stays_until_closed() {
        let mut b = Breaker::default();
        let t = Time::from_secs(10);
        b.force(true, t);
        assert_eq!(
            b.admission(t.plus(Duration::from_secs(1_000_000))),
            Admission::Wait(Time::MAX)
        );
        b.on_success();
        assert_eq!(b.state(t), BreakerState::Open);
        b.force(false, t);
        assert_eq!(b.state(t), BreakerState::Closed);
    }

    fn attempt(domain: &str, msg: u128, n: u32, at: Time, failed: bool) -> AttemptRecord {
        AttemptRecord {
            message: MessageId(msg),
            idx: 0,
            tenant: TenantId(1),
            domain: domain.into(),
            attempt: n,
            started_at: at,
            duration_ms: 10,
            status: if failed {
                RecipientStatus::Deferred
            } else {
                RecipientStatus::Delivered
            },
            stage: Stage::Connect,
            smtp_code: None,
            enhanced_code: None,
            response: "connection refused".into(),
            category: if failed {
                Category::Connection
            } else {
                Category::Delivered
            },
            rule: "t".into(),
            mx: None,
            ip: None,
            tls: TlsRecord::None,
            breaker_failure: failed,
        }
    }

    #[test]
    fn warm_up_counts_distinct_attempts_and_resets_on_success() {
        let c = cfg();
        let now = Time::from_secs(10_000_000);
        let t = |mins: u64| now.minus(Duration::from_secs(mins * 60));
        let mut h = vec![];
        // five failures of distinct messages in the last hour: open
        for i in 0..5 {
            h.push(attempt("down.example", i, 1, t(50 - i as u64), true));
            // a second recipient row of the same transaction does not count twice
            h.push(attempt("down.example", i, 1, t(50 - i as u64), true));
        }
        // four failures: closed with count 4
        for i in 0..4 {
            h.push(attempt("flaky.example", 100 + i, 1, t(30), true));
        }
        // failures then a success: reset
        for i in 0..6 {
            h.push(attempt("ok.example", 200 + i, 1, t(40), true));
        }
        h.push(attempt("ok.example", 300, 1, t(10), false));
        // old failures (over an hour ago) do not count
        for i in 0..6 {
            h.push(attempt("old.example", 400 + i, 1, t(90), true));
        }
        let w = warm_up(now, &h, &c);
        assert_eq!(
            w.get("down.example").map(|b| b.state(now)),
            Some(BreakerState::Open)
        );
        assert_eq!(
            w.get("flaky.example").map(|b| b.consecutive_failures()),
            Some(4)
        );
        assert_eq!(
            w.get("flaky.example").map(|b| b.state(now)),
            Some(BreakerState::Closed)
        );
        assert!(!w.contains_key("ok.example"));
        assert!(!w.contains_key("old.example"));
        assert_eq!(open_domains(&w, now), ["down.example".to_string()].into());
    }

    #[test]
    fn idle_only_when_closed_with_nothing_counted() {
        let c = cfg();
        let t = Time::from_secs(1_000_000);
        let mut b = Breaker::default();
        assert!(b.is_idle());
        b.on_failure(t, "421 busy", &c);
        assert!(!b.is_idle(), "one failure counts towards the next decision");
        b.on_success();
        assert!(b.is_idle());
        assert_eq!(
            b.last_failure(),
            Some("421 busy"),
            "kept for the record only"
        );
        for _ in 0..c.failure_threshold {
            b.on_failure(t, "x", &c);
        }
        assert!(!b.is_idle(), "open");
        let half_open = t.plus(c.open_initial);
        assert_eq!(b.state(half_open), BreakerState::HalfOpen);
        assert!(!b.is_idle(), "half-open");
        b.force(true, t);
        assert!(!b.is_idle(), "forced open");
        b.force(false, t);
        assert!(b.is_idle());
    }

    proptest! {
        /// An idle breaker may be swapped for a new one at any point without changing a
        /// decision: the engine forgets idle destinations and recreates them on demand.
        #[test]
        fn an_idle_breaker_decides_like_a_new_one(
            steps in proptest::collection::vec((0u8..6, 0u64..1200, any::<bool>()), 1..300)
        ) {
            let c = cfg();
            let mut kept = Breaker::default();
            let mut renewed = Breaker::default();
            let mut now = Time::from_secs(1_000_000);
            for (op, dt, forget) in steps {
                now = now.plus(Duration::from_secs(dt));
                if forget && renewed.is_idle() {
                    renewed = Breaker::default();
                }
                match op {
                    0 => prop_assert_eq!(
                        kept.on_failure(now, "f", &c),
                        renewed.on_failure(now, "f", &c)
                    ),
                    1 => {
                        kept.on_success();
                        renewed.on_success();
                    }
                    2 => {
                        let a = kept.admission(now);
                        prop_assert_eq!(a, renewed.admission(now));
                        if a == Admission::Probe {
                            kept.start_probe();
                            renewed.start_probe();
                        }
                    }
                    3 => {
                        kept.cancel_probe();
                        renewed.cancel_probe();
                    }
                    4 => {
                        kept.force(dt % 2 == 0, now);
                        renewed.force(dt % 2 == 0, now);
                    }
                    _ => {}
                }
                prop_assert_eq!(kept.state(now), renewed.state(now));
                prop_assert_eq!(kept.admission(now), renewed.admission(now));
                prop_assert_eq!(kept.next_probe_at(), renewed.next_probe_at());
                prop_assert_eq!(kept.consecutive_failures(), renewed.consecutive_failures());
                prop_assert_eq!(kept.is_idle(), renewed.is_idle());
            }
        }

        /// Whatever the sequence, an open breaker never admits, and half-open admits one.
        #[test]
        fn never_admits_when_open(steps in proptest::collection::vec((0u8..4, 0u64..1200), 1..200)) {
            let c = cfg();
            let mut b = Breaker::default();
            let mut now = Time::from_secs(1_000_000);
            for (op, dt) in steps {
                now = now.plus(Duration::from_secs(dt));
                match op {
                    0 => { b.on_failure(now, "f", &c); }
                    1 => b.on_success(),
                    _ => match b.admission(now) {
                        Admission::Allowed => prop_assert_eq!(b.state(now), BreakerState::Closed),
                        Admission::Probe => {
                            prop_assert_eq!(b.state(now), BreakerState::HalfOpen);
                            b.start_probe();
                            prop_assert!(matches!(b.admission(now), Admission::Wait(_)));
                        }
                        Admission::Wait(t) => {
                            prop_assert!(b.state(now) != BreakerState::Closed);
                            prop_assert!(t > now);
                        }
                    },
                }
            }
        }
    }
}
