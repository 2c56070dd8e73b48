//! Message rate limits per tenant (shared by its API keys and its SMTP logins): at most N
//! messages in any sliding minute and M in any sliding hour. Config `[limits]` sets the
//! default for every tenant; `[limits.tenants."domain"]` overrides one tenant.
//!
//! Each tenant keeps the times of its recent accepted-for-submission messages (at most
//! the larger limit), so the answer is exact: over a limit, the caller learns how many
//! seconds until the oldest counted message leaves the window (`Retry-After`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use outpost_core::TenantId;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Limits for one tenant; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limit {
    pub per_minute: Option<u32>,
    pub per_hour: Option<u32>,
}

impl Limit {
    fn is_unlimited(&self) -> bool {
        self.per_minute.is_none() && self.per_hour.is_none()
    }
}

/// The configured limits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub default: Limit,
    /// Per tenant domain (lowercase); unset fields fall back to `default`.
    pub tenants: BTreeMap<String, Limit>,
}

impl Limits {
    fn for_domain(&self, domain: &str) -> Limit {
        match self.tenants.get(&domain.to_ascii_lowercase()) {
            Some(l) => Limit {
                per_minute: l.per_minute.or(self.default.per_minute),
                per_hour: l.per_hour.or(self.default.per_hour),
            },
            None => self.default,
        }
    }
}

pub struct RateLimiter {
    limits: Limits,
    recent: Mutex<HashMap<TenantId, VecDeque<Instant>>>,
}

impl RateLimiter {
    pub fn new(limits: Limits) -> RateLimiter {
        RateLimiter {
            limits,
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one message for the tenant if it is within its limits; otherwise
    /// `Err(seconds)` until it would be (at least 1).
    pub fn check(&self, tenant: TenantId, domain: &str) -> Result<(), u64> {
        self.check_at(tenant, domain, Instant::now())
    }

    fn check_at(&self, tenant: TenantId, domain: &str, now: Instant) -> Result<(), u64> {
        let limit = self.limits.for_domain(domain);
        if limit.is_unlimited() {
            return Ok(());
        }
        // A poisoned lock only means another thread panicked mid-update; the counts are
        // still usable.
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let times = recent.entry(tenant).or_default();
        let keep = if limit.per_hour.is_some() {
            HOUR
        } else {
            MINUTE
        };
        while times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= keep)
        {
            times.pop_front();
        }
        let mut wait = Duration::ZERO;
        for (max, window) in [(limit.per_minute, MINUTE), (limit.per_hour, HOUR)] {
            let Some(max) = max else { continue };
            let max = max as usize;
            let in_window: Vec<&Instant> = times
                .iter()
                .filter(|t| now.saturating_duration_since(**t) < window)
                .collect();
            if in_window.len() >= max {
                // The message that must leave the window for one more to fit.
                let idx = in_window.len() - max;
                let leaves = *in_window[idx] + window;
                wait = wait.max(leaves.saturating_duration_since(now));
            }
        }
        if wait > Duration::ZERO {
            return Err(wait.as_secs_f64().ceil().max(1.0) as u64);
        }
        times.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_minute: Option<u32>, per_hour: Option<u32>) -> RateLimiter {
        RateLimiter::new(Limits {
            default: Limit {
                per_minute,
                per_hour,
            },
            tenants: BTreeMap::from([(
                "big.example".to_string(),
                Limit {
                    per_minute: Some(100),
                    per_hour: None,
                },
            )]),
        })
    }

    #[test]
    fn per_minute_limit_and_retry_after() {
        let l = limiter(Some(2), None);
        let t0 = Instant::now();
        let t = TenantId(1);
        assert_eq!(l.check_at(t, "a.example", t0), Ok(()));
        assert_eq!(
            l.check_at(t, "a.example", t0 + Duration::from_secs(10)),
            Ok(())
        );
        assert_eq!(
            l.check_at(t, "a.example", t0 + Duration::from_secs(20)),
            Err(40)
        );
        // Another tenant has its own allowance.
        assert_eq!(l.check_at(TenantId(2), "b.example", t0), Ok(()));
        // The first message left the window.
        assert_eq!(
            l.check_at(t, "a.example", t0 + Duration::from_secs(60)),
            Ok(())
        );
    }

    #[test]
    fn per_hour_limit_and_overrides() {
        let l = limiter(Some(10), Some(3));
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(
                l.check_at(TenantId(1), "a.example", t0 + Duration::from_secs(i * 100)),
                Ok(())
            );
        }
        assert_eq!(
            l.check_at(TenantId(1), "a.example", t0 + Duration::from_secs(400)),
            Err(3200)
        );
        // The override raises the minute limit; the default hour limit still applies.
        let big = TenantId(9);
        for _ in 0..3 {
            assert_eq!(l.check_at(big, "big.example", t0), Ok(()));
        }
        assert!(l.check_at(big, "big.example", t0).is_err());
    }

    #[test]
    fn unlimited_by_default() {
        let l = RateLimiter::new(Limits::default());
        for _ in 0..1000 {
            assert_eq!(l.check(TenantId(1), "a.example"), Ok(()));
        }
    }
}
