//! What /proc says about a process: memory (VmRSS, VmHWM, Pss) and CPU time.

use std::time::Duration;

/// Clock ticks per second for /proc/PID/stat times. Linux reports USER_HZ, which is 100
/// on every architecture Linux supports for userspace ABI purposes.
const USER_HZ: u64 = 100;

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Resident set size now, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident set size (high-water mark), KiB.
pub fn hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Proportional set size, KiB (shared pages divided among their users: the honest sum
/// over several processes, e.g. Postfix's).
pub fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Fields of /proc/PID/stat after the command name (which may hold spaces).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = text.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_string).collect())
}

fn ticks(v: &str) -> Duration {
    Duration::from_millis(v.parse::<u64>().unwrap_or(0) * 1000 / USER_HZ)
}

/// utime + stime of the process itself.
pub fn cpu(pid: u32) -> Option<Duration> {
    // After ")": state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let f = stat_fields(pid)?;
    Some(ticks(f.get(11)?) + ticks(f.get(12)?))
}

/// utime + stime + cutime + cstime: itself and its children that exited and were reaped.
pub fn cpu_with_reaped(pid: u32) -> Option<Duration> {
    let f = stat_fields(pid)?;
    Some(ticks(f.get(11)?) + ticks(f.get(12)?) + ticks(f.get(13)?) + ticks(f.get(14)?))
}

/// Direct children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            stat_fields(p)
                .and_then(|f| f.get(1)?.parse::<u32>().ok())
                .is_some_and(|pp| pp == pid)
        })
        .collect()
}

/// The 1-minute load average.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
