//! The real `outpost serve` binary as a child process: start (on a given data directory,
//! so a test can restart it on the same store), log capture, SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Builds the daemon once per test binary and returns its path. `test_exe_dir` is the
/// directory of the running test executable (`target/<profile>/deps`).
pub fn outpost_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "outpost", "--bin", "outpost"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the daemon failed");
        // target/<profile>/deps/<test exe> -> target/<profile>/outpost
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe.parent().and_then(Path::parent).expect("target dir");
        let bin = dir.join("outpost");
        assert!(bin.is_file(), "no daemon binary at {}", bin.display());
        bin
    })
    .clone()
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A fresh, empty directory `base/name-<pid>` (tests pass `CARGO_TARGET_TMPDIR`, never
/// /tmp).
pub fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let dir = base
        .join("outpost-e2e")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

/// The running daemon; killed on drop if still running.
pub struct Daemon {
    child: Child,
    /// `127.0.0.1:PORT` of the HTTP API.
    pub http: String,
    pub data: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `outpost serve --data <data>` with `extra` flags and waits for "outpost
    /// started". The data directory is kept as is (a restart sees the same store).
    pub fn start(data: &Path, extra: &[&str], admin_key: &str) -> Daemon {
        std::fs::create_dir_all(data).expect("data dir");
        let http = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(outpost_bin())
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--http", &http, "--hostname", "outpost.test"])
            .args(extra)
            .env("OUTPOST_ADMIN_KEY", admin_key)
            .env("RUST_LOG", "info,outpost=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the daemon");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                eprintln!("[outpost] {line}");
                sink.lock().expect("lock").push_str(&(line + "\n"));
            }
        });
        let d = Daemon {
            child,
            http,
            data: data.to_path_buf(),
            log,
        };
        d.wait_for_log("outpost started", Duration::from_secs(60));
        d
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    pub fn wait_for_log(&self, needle: &str, within: Duration) {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.log.lock().expect("lock").contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no {needle:?} in the daemon's log:\n{}", self.log());
    }

    /// SIGTERM, then waits (40 s at most) for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
        let end = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "the daemon did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
