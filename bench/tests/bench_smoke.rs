//! Keeps the benchmark from rotting: a small run of each scenario against the debug daemon
//! must report every submitted message delivered (the bench exits non-zero otherwise).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Builds the daemon (debug) once; returns its path.
fn outpost_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "outpost", "--bin", "outpost"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the daemon failed");
        // The bench binary sits next to the daemon's: target/<profile>/outpost-bench.
        let bench = PathBuf::from(env!("CARGO_BIN_EXE_outpost-bench"));
        let bin = bench
            .parent()
            .map(|d| d.join("outpost"))
            .expect("target dir");
        assert!(bin.is_file(), "no daemon binary at {}", bin.display());
        bin
    })
    .clone()
}

fn bench(args: &[&str]) -> String {
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-smoke");
    let out = Command::new(env!("CARGO_BIN_EXE_outpost-bench"))
        .arg("--outpost")
        .arg(outpost_bin())
        .arg("--work-dir")
        .arg(&work)
        // Figures are not checked here: no pause between runs.
        .args(["--settle", "0"])
        .args(args)
        .output()
        .expect("run outpost-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "outpost-bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

#[test]
fn a_small_throughput_run_delivers_everything() {
    let out = bench(&["--messages", "300", "--concurrency", "8"]);
    assert!(
        out.contains("RESULT outpost via HTTP API: submitted=300 delivered=300 recipients=300 ok"),
        "{out}"
    );
    assert!(out.contains("latency p50"), "{out}");
    assert!(out.contains("idle RSS"), "{out}");
}

#[test]
fn a_small_deferred_run_starts_with_them_and_delivers_new_mail() {
    let out = bench(&[
        "--scenario",
        "deferred",
        "--deferred",
        "2000",
        "--messages",
        "100",
        "--recipients",
        "5",
        "--concurrency",
        "4",
    ]);
    assert!(out.contains("queue depth 2000"), "{out}");
    assert!(
        out.contains("submitted=100 delivered=100 recipients=500 ok"),
        "{out}"
    );
}
