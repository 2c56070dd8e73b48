//! Helpers for the end-to-end tests: the real daemon ([`daemon`]), an HTTP/1.1 client
//! ([`http`]), the peers it talks to ([`dnsmasq`], [`sinks`], [`python`], [`swaks`],
//! [`pki`]), and what every suite needs around them (scratch directories, free ports,
//! polling, skipping when a peer is missing).

pub mod daemon;
pub mod dnsmasq;
pub mod http;
pub mod pki;
pub mod python;
pub mod sinks;
pub mod swaks;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use daemon::{ADMIN, Daemon, DaemonBuilder, outpost_bin};

/// How long a test waits for an outcome unless it says otherwise.
pub const WAIT: Duration = Duration::from_secs(30);

/// `target/<profile>`, found from the running test executable
/// (`target/<profile>/deps/<test exe>`).
pub(crate) fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// A fresh, empty scratch directory `target/tmp/outpost-e2e/<name>-<pid>` (what Cargo calls
/// `CARGO_TARGET_TMPDIR`; that variable only exists for the test crates themselves, not for
/// this library, so it is found from the test executable). Never /tmp.
pub fn scratch_dir(name: &str) -> PathBuf {
    let target = profile_dir().parent().expect("target dir").to_path_buf();
    let dir = target
        .join("tmp")
        .join("outpost-e2e")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A loopback TCP port free at the time of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// True when running on CI (`CI` set): a missing peer is then a failure, not a skip.
pub fn on_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Returns `available`; when false, fails on CI and otherwise prints why the test skips.
pub fn require(available: bool, what: &str) -> bool {
    if !available {
        assert!(
            !on_ci(),
            "{what} is needed (scripts/install-test-deps.sh installs it)"
        );
        eprintln!("skipped: {what} is not available (scripts/install-test-deps.sh)");
    }
    available
}

/// Whether a command is on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `python3 -c "import <modules>"` succeeds.
pub fn python_has(modules: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `within`.
pub fn poll<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child's stdout, lossily decoded.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A child's stderr, lossily decoded.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
