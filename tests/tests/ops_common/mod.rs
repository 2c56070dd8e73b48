//! Shared by the `ops_*` end-to-end tests: the real `outpost` binary, an SMTP sink with
//! per-recipient answers, HTTP helpers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const ADMIN: &str = "ops-e2e-admin-key-0123456789";

/// Builds the daemon once and returns the path of its binary.
pub fn outpost_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "outpost", "--bin", "outpost"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the daemon failed");
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe.parent().and_then(Path::parent).expect("target dir");
        let bin = dir.join("outpost");
        assert!(bin.is_file(), "no daemon binary at {}", bin.display());
        bin
    })
    .clone()
}

/// A fresh directory under the target directory (never /tmp).
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("outpost-ops")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// One message as the sink got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub rcpt_to: Vec<String>,
    pub data: String,
}

/// An SMTP sink: 250 for everything except recipients whose local part starts with
/// `bounce` (550 5.1.1) or `defer` (451 4.3.0).
pub fn smtp_sink() -> (u16, Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = channel();
    let tx = Arc::new(Mutex::new(tx));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let sender = tx.lock().expect("lock").clone();
                let _ = sink_session(stream, &sender);
            });
        }
    });
    (port, rx)
}

fn sink_session(stream: TcpStream, got: &Sender<Received>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    w.write_all(b"220 sink.test ESMTP\r\n")?;
    let mut rcpt_to = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            w.write_all(
                b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 20000000\r\n",
            )?;
        } else if upper.starts_with("MAIL") {
            rcpt_to.clear();
            w.write_all(b"250 2.1.0 ok\r\n")?;
        } else if upper.starts_with("RCPT TO:<BOUNCE") {
            w.write_all(b"550 5.1.1 User unknown\r\n")?;
        } else if upper.starts_with("RCPT TO:<DEFER") {
            w.write_all(b"451 4.3.0 Try again later\r\n")?;
        } else if upper.starts_with("RCPT") {
            rcpt_to.push(line.trim_end()[8..].to_string());
            w.write_all(b"250 2.1.5 ok\r\n")?;
        } else if upper.starts_with("DATA") {
            if rcpt_to.is_empty() {
                w.write_all(b"554 5.5.1 no valid recipients\r\n")?;
                continue;
            }
            w.write_all(b"354 go ahead\r\n")?;
            let mut data = String::new();
            loop {
                let mut l = String::new();
                if r.read_line(&mut l)? == 0 {
                    return Ok(());
                }
                if l == ".\r\n" {
                    break;
                }
                data.push_str(&l);
            }
            let _ = got.send(Received {
                rcpt_to: std::mem::take(&mut rcpt_to),
                data,
            });
            w.write_all(b"250 2.0.0 queued as 1\r\n")?;
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 2.0.0 bye\r\n")?;
            return Ok(());
        } else {
            w.write_all(b"250 ok\r\n")?;
        }
    }
}

/// The running daemon; killed on drop.
pub struct Daemon {
    child: Child,
    pub http: String,
    pub smtp: u16,
    pub dir: PathBuf,
    pub log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts `outpost serve` relaying to `relay_port`, SMTP on a free port, with an
    /// optional config file text.
    pub fn start(name: &str, relay_port: u16, config: Option<&str>, extra: &[&str]) -> Daemon {
        let dir = scratch(name);
        let http = format!("127.0.0.1:{}", free_port());
        // `--smtp ADDR` in `extra` replaces the default loopback listener.
        let given = extra
            .iter()
            .position(|a| *a == "--smtp")
            .and_then(|i| extra.get(i + 1))
            .copied();
        let smtp = given
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or_else(free_port);
        let mut cmd = Command::new(outpost_bin());
        cmd.arg("serve")
            .arg("--data")
            .arg(dir.join("data"))
            .args(["--http", &http, "--hostname", "outpost.test"])
            .args(["--relay", &format!("127.0.0.1:{relay_port}")]);
        if given.is_none() {
            cmd.args(["--smtp", &format!("127.0.0.1:{smtp}")]);
        }
        if let Some(text) = config {
            let path = dir.join("outpost.toml");
            std::fs::write(&path, text).expect("write config");
            cmd.arg("--config").arg(path);
        }
        let mut child = cmd
            .args(extra)
            .env("OUTPOST_ADMIN_KEY", ADMIN)
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
            smtp,
            dir,
            log,
        };
        d.wait_for_log("outpost started", Duration::from_secs(60));
        d
    }

    pub fn wait_for_log(&self, needle: &str, within: Duration) {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.log.lock().expect("lock").contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no {needle:?} in the daemon's log:\n{}",
            self.log.lock().expect("lock")
        );
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// A new API key for `domain`.
    pub fn key(&self, domain: &str) -> String {
        let (s, v) = http(
            "POST",
            &self.url("/v1/keys"),
            Some(ADMIN),
            Some(&format!(r#"{{"domain":"{domain}"}}"#)),
        );
        assert_eq!(s, 201, "{v}");
        v["key"].as_str().expect("key").to_string()
    }

    /// Sends a message over the API; its id.
    pub fn send(&self, key: &str, from: &str, to: &str) -> String {
        let body =
            format!(r#"{{"from":"{from}","to":["{to}"],"subject":"ops test","text":"hello"}}"#);
        let (s, v) = http("POST", &self.url("/v1/messages"), Some(key), Some(&body));
        assert_eq!(s, 202, "{v}");
        v["id"].as_str().expect("id").to_string()
    }

    /// Waits until the message's status is `want`; its JSON.
    pub fn wait_status(&self, key: &str, id: &str, want: &str) -> serde_json::Value {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let (s, v) = http(
                "GET",
                &self.url(&format!("/v1/messages/{id}")),
                Some(key),
                None,
            );
            assert_eq!(s, 200, "{v}");
            if v["status"] == want {
                return v;
            }
            assert!(Instant::now() < end, "not {want}: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `outpost ARGS` against this daemon (admin key set).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(outpost_bin())
            .args(args)
            .env("OUTPOST_ADMIN_KEY", ADMIN)
            .env("OUTPOST_URL", format!("http://{}", self.http))
            .output()
            .expect("run the CLI")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// (status, JSON body or `null`).
pub fn http(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let (s, _, text) = http_full(method, url, bearer, body);
    (
        s,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// (status, Retry-After header, body text).
pub fn http_full(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, Option<String>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let auth = bearer.map(|k| format!("Bearer {k}"));
    let resp = match method {
        "POST" => {
            let mut req = agent.post(url).header("content-type", "application/json");
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            req.send(body.unwrap_or(""))
        }
        "DELETE" => {
            let mut req = agent.delete(url);
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            req.call()
        }
        _ => {
            let mut req = agent.get(url);
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            req.call()
        }
    }
    .expect("HTTP request");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut text = String::new();
    resp.into_body()
        .into_reader()
        .read_to_string(&mut text)
        .expect("body");
    (status, retry_after, text)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether a command is on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Skips (or, under CI, fails) when a test peer is missing.
pub fn require(what: &str, ok: bool) -> bool {
    if ok {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} is needed (scripts/install-test-deps.sh)");
    }
    eprintln!("skipped: {what} not installed (scripts/install-test-deps.sh)");
    false
}

/// Runs swaks against the daemon's SMTP port on `host`; its whole transcript.
pub fn swaks(host: &str, port: u16, args: &[&str]) -> String {
    let out = Command::new("swaks")
        .args(["--server", &format!("{host}:{port}"), "--timeout", "30"])
        .args(args)
        .output()
        .expect("run swaks");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The message id from a `250 2.0.0 Ok: queued as <id>` reply.
pub fn queued_id(transcript: &str) -> Option<String> {
    let at = transcript.find("queued as ")? + "queued as ".len();
    let id: String = transcript[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!id.is_empty()).then_some(id)
}

/// A self-signed certificate and key (PEM) made with the openssl command.
pub fn self_signed(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=outpost.test"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some((cert, key))
}

/// This machine's first non-loopback IPv4 address, if any.
pub fn non_loopback_ip() -> Option<String> {
    let out = Command::new("hostname").arg("-I").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .map(str::to_string)
}
