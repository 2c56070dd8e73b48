//! The retry schedule: when the next attempt of a deferred recipient is due.

use core::time::Duration;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use crate::time::Time;

/// Delay before attempt `attempts + 1`, given `attempts` already made (>= 1): the
/// schedule's entry, the last one repeating, with +-`jitter_permille` seeded jitter.
pub fn next_delay(
    schedule: &[Duration],
    attempts: u32,
    jitter_permille: u32,
    rng: &mut ChaCha8Rng,
) -> Duration {
    let idx = (attempts.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    let base = schedule
        .get(idx)
        .copied()
        .unwrap_or(Duration::from_secs(60));
    jitter(base, jitter_permille, rng)
}

/// `base` scaled by a factor in [1 - j, 1 + j].
pub fn jitter(base: Duration, jitter_permille: u32, rng: &mut ChaCha8Rng) -> Duration {
    if jitter_permille == 0 {
        return base;
    }
    let j = i64::from(jitter_permille.min(999));
    let factor = 1000 + rng.random_range(-j..=j);
    let ms = (base.as_millis() as u64).saturating_mul(factor as u64) / 1000;
    Duration::from_millis(ms.max(1))
}

/// When the next attempt is due, capped so that it never falls after `expires_at`: the
/// expiry timer then fails the recipient at its max age.
pub fn next_attempt_at(now: Time, delay: Duration, expires_at: Time) -> Time {
    now.plus(delay).min(expires_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn follows_schedule_with_bounded_jitter() {
        let sched = crate::Config::default().retry_schedule;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for attempts in 1..20u32 {
            let d = next_delay(&sched, attempts, 100, &mut rng);
            let base = sched[(attempts as usize - 1).min(sched.len() - 1)];
            assert!(
                d >= base.mul_f64(0.9) && d <= base.mul_f64(1.1),
                "{attempts}: {d:?}"
            );
        }
        // The last entry (8h) repeats.
        assert_eq!(
            next_delay(&sched, 50, 0, &mut rng),
            Duration::from_secs(8 * 3600)
        );
        assert_eq!(next_delay(&sched, 1, 0, &mut rng), Duration::from_secs(60));
    }

    #[test]
    fn same_seed_same_jitter() {
        let mut a = ChaCha8Rng::seed_from_u64(1);
        let mut b = ChaCha8Rng::seed_from_u64(1);
        let base = Duration::from_secs(600);
        for _ in 0..10 {
            assert_eq!(jitter(base, 100, &mut a), jitter(base, 100, &mut b));
        }
    }
}
