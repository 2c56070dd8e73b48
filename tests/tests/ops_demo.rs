//! `outpost demo` runs the whole path in one command and exits 0 with the expected
//! outcomes, leaving nothing behind.

use std::process::Command;
use std::time::{Duration, Instant};

use outpost_tests::{outpost_bin, scratch_dir, stderr, stdout};

#[test]
fn demo_exits_0_with_the_expected_outcomes() {
    let cwd = scratch_dir("demo-cwd");
    let started = Instant::now();
    let out = Command::new(outpost_bin())
        .arg("demo")
        .current_dir(&cwd)
        .output()
        .expect("run the demo");
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    for needle in [
        "webhook message.delivered",
        "webhook message.deferred",
        "webhook message.bounced",
        "webhook message.suppressed",
        "(451 ",
        "(550 invalid_recipient)",
        "deferred, then delivered",
        "delivered (expected delivered)",
        "bounced (expected bounced)",
        "suppressed (expected suppressed)",
        "demo finished: all outcomes as expected",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    assert!(!text.contains("FAIL"), "{text}");
    // The temporary data directory is gone.
    let left: Vec<_> = std::fs::read_dir(&cwd).expect("cwd").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&cwd);
}
