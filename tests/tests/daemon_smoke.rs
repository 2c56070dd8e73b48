//! End-to-end smoke tests of the real `outpost serve` binary: start-up, bad configuration,
//! graceful shutdown, and a message sent over the HTTP API delivered to an SMTP sink
//! through `--relay`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Builds the daemon once and returns the path of its binary.
fn outpost_bin() -> PathBuf {
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

/// A fresh data directory under the target directory (never /tmp).
fn data_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("outpost-e2e")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("data dir");
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// One message as the sink got it.
#[derive(Debug, Clone)]
struct Received {
    mail_from: String,
    rcpt_to: Vec<String>,
    data: String,
}

/// A minimal SMTP server accepting everything.
fn smtp_sink() -> (u16, Receiver<Received>) {
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
    let mut mail_from = String::new();
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
        } else if upper.starts_with("MAIL FROM:") {
            mail_from = line.trim_end()[10..].to_string();
            w.write_all(b"250 2.1.0 ok\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            rcpt_to.push(line.trim_end()[8..].to_string());
            w.write_all(b"250 2.1.5 ok\r\n")?;
        } else if upper.starts_with("DATA") {
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
                mail_from: std::mem::take(&mut mail_from),
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

/// The running daemon; killed on drop if still running.
struct Daemon {
    child: Child,
    http: String,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn start(name: &str, extra: &[&str], admin_key: &str) -> Daemon {
        let dir = data_dir(name);
        let http = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(outpost_bin())
            .arg("serve")
            .arg("--data")
            .arg(&dir)
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
        let d = Daemon { child, http, log };
        d.wait_for_log("outpost started", Duration::from_secs(60));
        d
    }

    fn wait_for_log(&self, needle: &str, within: Duration) {
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

    fn terminate(&mut self) -> std::process::ExitStatus {
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

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_bad_setting_exits_2_and_names_it() {
    let dir = data_dir("badconfig");
    let out = Command::new(outpost_bin())
        .arg("serve")
        .arg("--data")
        .arg(&dir)
        .args(["--relay", "no-port-here"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`relay`"), "{err}");

    let cfg = dir.join("outpost.toml");
    std::fs::write(&cfg, "[breaker]\nfailure_threshold = 0\n").expect("write");
    let out = Command::new(outpost_bin())
        .arg("serve")
        .arg("--data")
        .arg(&dir)
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("breaker.failure_threshold"), "{err}");
}

#[test]
fn sigterm_stops_the_daemon_cleanly() {
    let (port, _got) = smtp_sink();
    let relay = format!("127.0.0.1:{port}");
    let mut d = Daemon::start("sigterm", &["--relay", &relay], "");
    let status = d.terminate();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    d.wait_for_log("stopped", Duration::from_secs(1));
}

/// HTTP helper: (status, body).
fn http(method: &str, url: &str, bearer: Option<&str>, body: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let resp = match (method, body) {
        ("POST", Some(b)) => {
            let mut req = agent.post(url).header("content-type", "application/json");
            if let Some(k) = bearer {
                req = req.header("authorization", &format!("Bearer {k}"));
            }
            req.send(b)
        }
        _ => {
            let mut req = agent.get(url);
            if let Some(k) = bearer {
                req = req.header("authorization", &format!("Bearer {k}"));
            }
            req.call()
        }
    }
    .expect("HTTP request");
    let status = resp.status().as_u16();
    let mut text = String::new();
    resp.into_body()
        .into_reader()
        .read_to_string(&mut text)
        .expect("body");
    (status, text)
}

#[test]

fn a_message_sent_over_http_is_delivered_through_the_relay() {
    let admin = "e2e-admin-key-0123456789";
    let (port, got) = smtp_sink();
    let relay = format!("127.0.0.1:{port}");
    let mut d = Daemon::start("deliver", &["--relay", &relay], admin);

    let (status, body) = http(
        "POST",
        &d.url("/v1/keys"),
        Some(admin),
        Some(r#"{"domain":"example.com"}"#),
    );
    assert_eq!(status, 201, "{body}");
    let key: serde_json::Value = serde_json::from_str(&body).expect("json");
    let key = key["key"].as_str().expect("key").to_string();

    let (status, body) = http(
        "POST",
        &d.url("/v1/messages"),
        Some(&key),
        Some(
            r#"{"from":"app@example.com","to":["someone@dest.example"],
                "subject":"Hello from the smoke test","text":"line one\n.line two"}"#,
        ),
    );
    assert_eq!(status, 202, "{body}");
    let receipt: serde_json::Value = serde_json::from_str(&body).expect("json");
    let id = receipt["id"].as_str().expect("id").to_string();

    let m = got
        .recv_timeout(Duration::from_secs(30))
        .expect("the sink got the message");
    assert!(
        m.mail_from.starts_with("<app@example.com>"),
        "{}",
        m.mail_from
    );
    assert_eq!(m.rcpt_to, vec!["<someone@dest.example>".to_string()]);
    assert!(
        m.data.contains("Subject: Hello from the smoke test"),
        "{}",
        m.data
    );
    assert!(
        m.data.contains("\r\n..line two\r\n"),
        "dot-stuffed: {}",
        m.data
    );

    // The status shows delivered once the outcome is persisted.
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = http(
            "GET",
            &d.url(&format!("/v1/messages/{id}")),
            Some(&key),
            None,
        );
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        if v["status"] == "delivered" {
            break;
        }
        assert!(Instant::now() < end, "not delivered: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let (status, body) = http("GET", &d.url("/metrics"), None, None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("outpost_delivered_total 1"), "{body}");

    let status = d.terminate();
    assert_eq!(status.code(), Some(0));
    let log = d.log.lock().expect("lock").clone();
    assert!(
        !log.contains("someone@dest.example"),
        "an address leaked into the log"
    );
}

/// dnsmasq on a loopback port, answering for `dest.example` (MX) and its exchanger (A).
struct Dnsmasq {
    child: Child,
    port: u16,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dnsmasq() -> Option<Dnsmasq> {
    let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .find(|p| Path::new(p).is_file())?;
    let port = free_port();
    let child = Command::new(bin)
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-daemon",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file",
            "--user=root",
            &format!("--port={port}"),
            "--mx-host=dest.example,mx.dest.example,10",
            "--host-record=mx.dest.example,127.0.0.1",
            "--mx-host=nomail.example,.,0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // Wait until it answers on TCP (it listens on UDP and TCP alike).
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Dnsmasq { child, port })
}

#[test]
fn a_message_is_delivered_to_the_mx_found_in_dns() {
    let Some(dns) = dnsmasq() else {
        if std::env::var_os("CI").is_some() {
            panic!("dnsmasq is needed (apt-get install dnsmasq)");
        }
        eprintln!("skipped: dnsmasq not installed");
        return;
    };
    let admin = "e2e-admin-key-0123456789";
    let (port, got) = smtp_sink();
    let dns_addr = format!("127.0.0.1:{}", dns.port);
    let mx_port = port.to_string();
    let mut d = Daemon::start("mx", &["--dns", &dns_addr, "--mx-port", &mx_port], admin);
    let (status, body) = http(
        "POST",
        &d.url("/v1/keys"),
        Some(admin),
        Some(r#"{"domain":"example.com"}"#),
    );
    assert_eq!(status, 201, "{body}");
    let key: serde_json::Value = serde_json::from_str(&body).expect("json");
    let key = key["key"].as_str().expect("key").to_string();
    let (status, body) = http(
        "POST",
        &d.url("/v1/messages"),
        Some(&key),
        Some(
            r#"{"from":"app@example.com","to":["rcpt@dest.example"],"subject":"via MX","text":"hi"}"#,
        ),
    );
    assert_eq!(status, 202, "{body}");
    let m = got
        .recv_timeout(Duration::from_secs(30))
        .expect("the MX got the message");
    assert_eq!(m.rcpt_to, vec!["<rcpt@dest.example>".to_string()]);
    assert!(m.data.contains("Subject: via MX"), "{}", m.data);
    assert_eq!(d.terminate().code(), Some(0));
}
