//! The real `outpost serve` binary under test (the delivery tests' helpers): build it once,
//! start it on a data directory under the target directory (never /tmp), talk to its HTTP API, stop it with SIGTERM or
//! SIGKILL, and start it again on the same data.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The daemon's binary: `$OUTPOST_BIN` if set (e.g. a release build), else the workspace's
/// debug build, built once per test process.
pub fn outpost_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("OUTPOST_BIN") {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "outpost", "--bin", "outpost"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the daemon failed");
        let bin = profile_dir().join("outpost");
        assert!(bin.is_file(), "no daemon binary at {}", bin.display());
        bin
    })
    .clone()
}

/// `target/<profile>`, found from the running test executable
/// (`target/<profile>/deps/<test exe>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// A fresh scratch directory `target/tmp/outpost-e2e/<name>-<pid>` (what Cargo calls
/// `CARGO_TARGET_TMPDIR`; that variable only exists for the test crates themselves, not for
/// this library, so it is found from the test executable).
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
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
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

/// The running daemon; SIGKILLed on drop if still running.
pub struct Daemon {
    child: Child,
    /// `127.0.0.1:<port>` of the HTTP API.
    pub http: String,
    /// The data directory it runs on (reuse it to restart on the same data).
    pub data: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `outpost serve --data <data> --http <free port> --hostname outpost.test <extra>`
    /// with `OUTPOST_ADMIN_KEY=admin_key` and waits until it says it started.
    pub fn start(data: &Path, extra: &[String], admin_key: &str) -> Daemon {
        let http = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(outpost_bin())
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--http", &http, "--hostname", "outpost.test"])
            .args(extra)
            .env("OUTPOST_ADMIN_KEY", admin_key)
            .env(
                "RUST_LOG",
                std::env::var("OUTPOST_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
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
                sink.lock().expect("lock").push_str(&(line + "\n"));
            }
        });
        let mut d = Daemon {
            child,
            http,
            data: data.to_path_buf(),
            log,
        };
        let end = Instant::now() + Duration::from_secs(60);
        while !d.log().contains("outpost started") {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("the daemon exited at start ({status}):\n{}", d.log());
            }
            assert!(
                Instant::now() < end,
                "the daemon did not start:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// SIGTERM, then waits up to `within` for the exit.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -TERM failed");
        self.wait(within)
    }

    /// SIGKILL (no chance to flush anything), and reaps it.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL the daemon");
        let _ = self.child.wait();
    }

    fn wait(&mut self, within: Duration) -> ExitStatus {
        let end = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "the daemon did not exit within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Creates a tenant for `domain` with the admin key; returns its API key.
    pub fn create_key(&self, admin_key: &str, domain: &str) -> String {
        let (status, v) = self.json(
            "POST",
            "/v1/keys",
            Some(admin_key),
            Some(&serde_json::json!({ "domain": domain })),
        );
        assert_eq!(status, 201, "creating a key: {v}");
        v["key"].as_str().expect("key").to_string()
    }

    /// A JSON request; returns the status and the parsed body (`Null` if empty or not JSON).
    pub fn json(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        let (status, text) = http(
            method,
            &self.url(path),
            key,
            body.as_deref().map(str::as_bytes),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `GET /v1/messages/{id}` as `key`.
    pub fn message(&self, key: &str, id: &str) -> Value {
        let (status, v) = self.json("GET", &format!("/v1/messages/{id}"), Some(key), None);
        assert_eq!(status, 200, "GET message {id}: {v}");
        v
    }

    /// Polls `GET /v1/messages/{id}` until its status is `status`; returns the message.
    pub fn wait_status(&self, key: &str, id: &str, status: &str, within: Duration) -> Value {
        let mut last = Value::Null;
        let end = Instant::now() + within;
        loop {
            last = match http(
                "GET",
                &self.url(&format!("/v1/messages/{id}")),
                Some(key),
                None,
            ) {
                Ok((200, text)) => serde_json::from_str(&text).unwrap_or(last),
                _ => last,
            };
            if last["status"] == status {
                return last;
            }
            assert!(
                Instant::now() < end,
                "message {id} not {status} within {within:?}: {last:#}\n--- daemon log ---\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `VmRSS` and `VmHWM` of the daemon in KiB, from /proc (Linux only).
    pub fn memory_kib(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into()
    })
}

/// One HTTP request with an optional bearer key and body (sent as JSON); `(status, body)`.
/// Transport errors (connection refused, reset) are returned, not panicked on, so that
/// callers can run requests against a daemon that is being killed.
pub fn http(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<&[u8]>,
) -> Result<(u16, String), ureq::Error> {
    let auth = bearer.map(|k| format!("Bearer {k}"));
    let resp = match method {
        "POST" | "PUT" | "PATCH" => {
            let mut req = match method {
                "POST" => agent().post(url),
                "PUT" => agent().put(url),
                _ => agent().patch(url),
            }
            .header("content-type", "application/json");
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            req.send(body.unwrap_or_default())?
        }
        _ => {
            let mut req = match method {
                "DELETE" => agent().delete(url),
                _ => agent().get(url),
            };
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            req.call()?
        }
    };
    let status = resp.status().as_u16();
    let mut text = String::new();
    resp.into_body().into_reader().read_to_string(&mut text)?;
    Ok((status, text))
}
