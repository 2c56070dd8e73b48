//! The real `outpost serve` binary as a child process: built once, started from a
//! [`DaemonBuilder`] (data directory, flags, config file, environment), its stderr
//! captured, its HTTP API called with a key, stopped with SIGTERM or SIGKILL and started
//! again on the same data.
//!
//! ```text
//! let mut d = Daemon::builder(scratch_dir("x").join("data")).relay(port).smtp().start();
//! let key = d.create_key("example.com");
//! let id = d.send(&key, "app@example.com", "rcpt@dest.example");
//! d.wait_status(&key, &id, "delivered", WAIT);
//! assert_eq!(d.terminate().code(), Some(0));
//! let d = d.restart(); // same data directory, flags and config
//! ```

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http::{self, AsBody, Reply};
use crate::{free_port, profile_dir};

/// The admin key a [`DaemonBuilder`] starts the daemon with unless told otherwise.
pub const ADMIN: &str = "e2e-admin-key-0123456789";

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

/// How to start the daemon: `outpost serve --data <data> --http <free port> --hostname
/// outpost.test [--relay] [--smtp] [--config] <args>` with `OUTPOST_ADMIN_KEY` and
/// `RUST_LOG` (`$OUTPOST_TEST_LOG`, else `info,outpost=debug`).
#[derive(Clone, Debug)]
pub struct DaemonBuilder {
    data: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    admin_key: String,
    rust_log: String,
    config: Option<String>,
    /// `--smtp` address and port.
    smtp: Option<(String, u16)>,
}

impl DaemonBuilder {
    pub fn new(data: impl Into<PathBuf>) -> DaemonBuilder {
        DaemonBuilder {
            data: data.into(),
            args: Vec::new(),
            env: Vec::new(),
            admin_key: ADMIN.to_string(),
            rust_log: std::env::var("OUTPOST_TEST_LOG")
                .unwrap_or_else(|_| "info,outpost=debug".into()),
            config: None,
            smtp: None,
        }
    }

    /// One more command-line argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// More command-line arguments.
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// `--relay 127.0.0.1:<port>`.
    pub fn relay(self, port: u16) -> Self {
        self.args(["--relay".to_string(), format!("127.0.0.1:{port}")])
    }

    /// SMTP submission on 127.0.0.1 at a free port ([`Daemon::smtp`]).
    pub fn smtp(self) -> Self {
        self.smtp_listen(&format!("127.0.0.1:{}", free_port()))
    }

    /// SMTP submission on `addr` (`IP:PORT`), instead of any given before.
    pub fn smtp_listen(mut self, addr: &str) -> Self {
        let port = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("{addr} is not IP:PORT"));
        self.smtp = Some((addr.to_string(), port));
        self
    }

    /// A config file with this TOML text (written next to the data directory, as
    /// `<data>.toml`, at each start), passed with `--config`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    /// `OUTPOST_ADMIN_KEY` (default [`ADMIN`]).
    pub fn admin_key(mut self, key: &str) -> Self {
        self.admin_key = key.to_string();
        self
    }

    /// `RUST_LOG` for the daemon.
    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.to_string();
        self
    }

    /// One more environment variable.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// The config file `--config` points at, if any.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config
            .as_ref()
            .map(|_| self.data.with_extension("toml"))
    }

    /// Starts the daemon and waits (60 s at most) until it says it started; panics if it
    /// exits first.
    pub fn start(self) -> Daemon {
        std::fs::create_dir_all(&self.data).expect("data dir");
        let http = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(outpost_bin());
        cmd.arg("serve").arg("--data").arg(&self.data).args([
            "--http",
            &http,
            "--hostname",
            "outpost.test",
        ]);
        if let (Some(text), Some(path)) = (&self.config, self.config_path()) {
            std::fs::write(&path, text).expect("write config");
            cmd.arg("--config").arg(path);
        }
        if let Some((addr, _)) = &self.smtp {
            cmd.args(["--smtp", addr]);
        }
        let mut child = cmd
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("OUTPOST_ADMIN_KEY", &self.admin_key)
            .env("RUST_LOG", &self.rust_log)
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
        let mut d = Daemon {
            child,
            http,
            log,
            responses: Mutex::new(Vec::new()),
            spec: self,
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
}

/// The running daemon; SIGKILLed on drop if still running.
pub struct Daemon {
    child: Child,
    /// `127.0.0.1:<port>` of the HTTP API.
    pub http: String,
    log: Arc<Mutex<String>>,
    /// Every response body the daemon sent to this handle's requests.
    responses: Mutex<Vec<String>>,
    spec: DaemonBuilder,
}

impl Daemon {
    /// A daemon on the data directory `data` (created if missing, kept as is otherwise).
    pub fn builder(data: impl Into<PathBuf>) -> DaemonBuilder {
        DaemonBuilder::new(data)
    }

    /// The data directory it runs on.
    pub fn data(&self) -> &Path {
        &self.spec.data
    }

    /// The SMTP submission port given with [`DaemonBuilder::smtp`].
    pub fn smtp(&self) -> u16 {
        self.spec
            .smtp
            .as_ref()
            .expect("the daemon was started without .smtp()")
            .1
    }

    pub fn admin_key(&self) -> &str {
        &self.spec.admin_key
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    // ---- its log ----

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    /// Waits until the log contains `needle`; panics with the log after `within`.
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

    // ---- stopping and starting again ----

    /// SIGTERM, then waits (40 s at most) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.terminate_within(Duration::from_secs(40))
    }

    /// SIGTERM, then waits up to `within` for the exit.
    pub fn terminate_within(&mut self, within: Duration) -> ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -TERM failed");
        let end = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "the daemon did not exit within {within:?} of SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (no chance to flush anything), and reaps it.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL the daemon");
        let _ = self.child.wait();
    }

    /// Starts the daemon again as it was started (same data directory, flags, config and
    /// environment; a new HTTP port). Still running, it is SIGKILLed first.
    pub fn restart(self) -> Daemon {
        let spec = self.spec.clone();
        drop(self);
        spec.start()
    }

    /// Runs `outpost ARGS` against this daemon (`OUTPOST_URL`, admin key set).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(outpost_bin())
            .args(args)
            .env("OUTPOST_ADMIN_KEY", self.admin_key())
            .env("OUTPOST_URL", self.base())
            .output()
            .expect("run the CLI")
    }

    // ---- HTTP ----

    /// The HTTP API's `127.0.0.1:<port>` (for raw-socket tests).
    pub fn http_addr(&self) -> &str {
        &self.http
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// One request as `key`; transport errors are returned (the daemon may be dying).
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Reply, ureq::Error> {
        let reply = http::with_key(method, &self.url(path), key, body)?;
        self.responses
            .lock()
            .expect("lock")
            .push(reply.body.clone());
        Ok(reply)
    }

    /// One request as `key`; panics on a transport error.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&[u8]>,
    ) -> Reply {
        self.try_request(method, path, key, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n--- daemon log ---\n{}", self.log()))
    }

    /// A request whose answer is JSON: (status, body parsed, `Null` if empty or not JSON).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&dyn AsBody>,
    ) -> (u16, Value) {
        let body = body.map(AsBody::body_bytes);
        let r = self.request(method, path, key, body.as_deref());
        (r.status, r.json())
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        self.call("GET", path, key, None)
    }

    pub fn post(&self, path: &str, key: Option<&str>, body: impl AsBody) -> (u16, Value) {
        self.call("POST", path, key, Some(&body))
    }

    pub fn delete(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        self.call("DELETE", path, key, None)
    }

    /// Every response body this handle got, to search for what must never be sent.
    pub fn responses(&self) -> Vec<String> {
        self.responses.lock().expect("lock").clone()
    }

    // ---- the API's resources ----

    /// Creates a tenant for `domain` with the admin key; returns its API key.
    pub fn create_key(&self, domain: &str) -> String {
        let (status, v) = self.post(
            "/v1/keys",
            Some(self.admin_key()),
            json!({ "domain": domain }),
        );
        assert_eq!(status, 201, "creating a key: {v}");
        v["key"].as_str().expect("key").to_string()
    }

    /// `POST /v1/messages` with `body`; asserts 202 and returns the receipt.
    pub fn submit(&self, key: &str, body: &Value) -> Value {
        let (status, v) = self.post("/v1/messages", Some(key), body);
        assert_eq!(status, 202, "{v}");
        v
    }

    /// Sends a short text message from `from` to `to`; returns its id.
    pub fn send(&self, key: &str, from: &str, to: &str) -> String {
        let v = self.submit(
            key,
            &json!({"from": from, "to": [to], "subject": "e2e test", "text": "hello"}),
        );
        v["id"].as_str().expect("id").to_string()
    }

    /// `GET /v1/messages/{id}` as `key`; asserts 200.
    pub fn message(&self, key: &str, id: &str) -> Value {
        let (status, v) = self.get(&format!("/v1/messages/{id}"), Some(key));
        assert_eq!(status, 200, "GET message {id}: {v}");
        v
    }

    /// Polls `GET /v1/messages/{id}` (each answer must be 200) until its status is
    /// `status`; returns the message.
    pub fn wait_status(&self, key: &str, id: &str, status: &str, within: Duration) -> Value {
        let end = Instant::now() + within;
        loop {
            let m = self.message(key, id);
            if m["status"] == status {
                return m;
            }
            assert!(
                Instant::now() < end,
                "message {id} not {status} within {within:?}: {m:#}\n--- daemon log ---\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every event of the tenant (`type` = `kind` if given), following `next_after` two
    /// at a time.
    pub fn events(&self, key: &str, kind: Option<&str>) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0u64;
        loop {
            let mut path = format!("/v1/events?after={after}&limit=2");
            if let Some(k) = kind {
                path.push_str(&format!("&type={k}"));
            }
            let (s, v) = self.get(&path, Some(key));
            assert_eq!(s, 200, "{v}");
            let page = v["data"].as_array().cloned().unwrap_or_default();
            if page.is_empty() {
                return out;
            }
            after = v["next_after"].as_u64().expect("next_after");
            out.extend(page);
        }
    }

    /// `GET /metrics`; asserts 200 and returns the exposition text.
    pub fn metrics(&self) -> String {
        let r = self.request("GET", "/metrics", None, None);
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
