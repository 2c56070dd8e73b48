//! A timer that is re-armed only when it must be.
//!
//! Every `async_io::Timer` that is armed (a new one polled, or `set_at`) wakes the reactor
//! thread: per loop iteration or per read that is a context switch each. A `LazyTimer` is
//! one timer kept across waits: asked for a deadline later than the one it is armed for,
//! it keeps the earlier one and, when that fires, re-arms for the real deadline. Deadlines
//! that move later on every step (idle timeouts, the engine's next timer under load) so
//! cost one arming per period, not one per step.

use std::time::Instant;

use async_io::Timer;

pub struct LazyTimer {
    timer: Timer,
    /// The instant the timer is set for, until it is seen to fire.
    armed: Option<Instant>,
}

impl Default for LazyTimer {
    fn default() -> Self {
        LazyTimer {
            timer: Timer::never(),
            armed: None,
        }
    }
}

impl LazyTimer {
    /// Completes at `at` or later, never earlier. Cancel-safe (drop it in a `race`/`or`).
    pub async fn until(&mut self, at: Instant) {
        loop {
            if Instant::now() >= at {
                return;
            }
            if self.armed.is_none_or(|a| at < a) {
                self.timer.set_at(at);
                self.armed = Some(at);
            }
            (&mut self.timer).await;
            self.armed = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::FutureExt;
    use std::time::Duration;

    #[test]
    fn fires_at_the_asked_deadline_even_when_armed_earlier_or_later() {
        smol::block_on(async {
            let mut t = LazyTimer::default();
            let start = Instant::now();
            // Armed for 20 ms, then asked for 60 ms: fires (early) and re-arms.
            let early = async {
                t.until(start + Duration::from_millis(20)).await;
                true
            }
            .or(async { false })
            .await;
            assert!(!early);
            t.until(start + Duration::from_millis(60)).await;
            assert!(start.elapsed() >= Duration::from_millis(60));
            // Armed for later, asked for sooner: re-armed at once.
            let start = Instant::now();
            let _ = async {
                t.until(start + Duration::from_secs(60)).await;
            }
            .or(async {})
            .await;
            t.until(start + Duration::from_millis(10)).await;
            let took = start.elapsed();
            assert!(took >= Duration::from_millis(10) && took < Duration::from_secs(30));
        });
    }
}
