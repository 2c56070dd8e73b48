//! Time as the core sees it: a value passed in by the shell, never read from a clock.

use core::fmt;
use core::time::Duration;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch. The shell passes the current `Time` into every
/// `Engine::handle` call; the core never reads a clock.
#[derive(Copy, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Time(pub u64);

impl Time {
    pub const ZERO: Time = Time(0);
    pub const MAX: Time = Time(u64::MAX);

    pub fn from_secs(secs: u64) -> Time {
        Time(secs.saturating_mul(1000))
    }
    pub fn as_millis(self) -> u64 {
        self.0
    }
    pub fn as_secs(self) -> u64 {
        self.0 / 1000
    }
    /// `self + d`, saturating at `Time::MAX`.
    pub fn plus(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(d.as_millis().min(u64::MAX as u128) as u64),
        )
    }
    /// `self - d`, saturating at zero.
    pub fn minus(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_sub(d.as_millis().min(u64::MAX as u128) as u64),
        )
    }
    /// Time elapsed from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// RFC 3339 UTC rendering with millisecond precision, e.g. `2026-11-24T19:01:08.123Z`.
    pub fn rfc3339(self) -> String {
        let (y, mo, d, h, mi, s) = civil(self.0 / 1000);
        format!(
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
            self.0 % 1000
        )
    }

    /// RFC 5322 date (always +0000), e.g. `Tue, 24 Nov 2026 19:01:08 +0000`.
    pub fn rfc5322(self) -> String {
        const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let secs = self.0 / 1000;
        let (y, mo, d, h, mi, s) = civil(secs);
        let wd = DAYS[((secs / 86_400) % 7) as usize];
        format!(
            "{wd}, {d} {} {y:04} {h:02}:{mi:02}:{s:02} +0000",
            MONTHS[(mo - 1) as usize]
        )
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "T{}", self.0)
    }
}

/// Unix seconds -> (year, month, day, hour, minute, second), proleptic Gregorian, UTC.
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_dates() {
        let t = Time(1_795_633_268_123); // 2026-11-25T19:01:08.123Z
        assert_eq!(t.rfc3339(), "2026-11-25T19:01:08.123Z");
        assert_eq!(t.rfc5322(), "Wed, 25 Nov 2026 19:01:08 +0000");
        assert_eq!(Time(0).rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Time::from_secs(951_782_400).rfc3339(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Time(5).minus(Duration::from_secs(1)), Time(0));
        assert_eq!(Time::MAX.plus(Duration::from_secs(1)), Time::MAX);
        assert_eq!(Time(3000).since(Time(1000)), Duration::from_secs(2));
        assert_eq!(Time(1000).since(Time(3000)), Duration::ZERO);
    }
}
