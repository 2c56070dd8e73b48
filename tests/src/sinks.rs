//! SMTP servers for the daemon to deliver to: Postfix's `smtp-sink` (fast, dumps each
//! message to a file; fault flags `-r`/`-f` soft/hard-reject commands, `-w` slows DATA) and
//! an aiosmtpd peer (`tests/peers/aiosmtpd_peer.py`: first-N RCPT failures with a chosen
//! reply, STARTTLS with a given certificate), both counted by Message-ID; and a small
//! in-process sink ([`smtp_sink`]) handing each message to the test over a channel.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
fn wait_listening(port: u16, child: &mut Child) -> bool {
    let end = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > end || matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Postfix's `smtp-sink` on 127.0.0.1:`port`, dumping every message it accepts into its own
/// file under `dump`. Killed on drop.
pub struct PostfixSink {
    child: Child,
    pub port: u16,
    pub dump: PathBuf,
}

impl PostfixSink {
    pub fn available() -> bool {
        Path::new(SMTP_SINK).is_file()
    }

    /// Starts `smtp-sink <flags> -d <dump>/ 127.0.0.1:<port>`; `None` if it is not installed
    /// or does not come up. Restarting on the same `dump` keeps the earlier messages.
    pub fn start(dump: &Path, port: u16, flags: &[&str]) -> Option<PostfixSink> {
        if !Self::available() {
            return None;
        }
        std::fs::create_dir_all(dump).ok()?;
        let mut cmd = Command::new(SMTP_SINK);
        if is_root() {
            // smtp-sink refuses to run as root without dropping privileges; the unprivileged
            // user must then be able to write the dump directory.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dump, std::fs::Permissions::from_mode(0o777)).ok()?;
            cmd.args(["-u", "nobody"]);
        }
        let mut child = cmd
            .args(flags)
            .arg("-d")
            .arg(format!("{}/", dump.display()))
            .arg(format!("127.0.0.1:{port}"))
            .arg("256")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        if !wait_listening(port, &mut child) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(PostfixSink {
            child,
            port,
            dump: dump.to_path_buf(),
        })
    }

    /// The Message-ID of every message received so far, one entry per delivery (a message
    /// delivered twice is listed twice).
    pub fn message_ids(&self) -> Vec<String> {
        dumped_message_ids(&self.dump)
    }
}

impl Drop for PostfixSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Message-IDs in an `smtp-sink -d` dump directory. A file still being written may not
/// show its Message-ID yet; it is picked up on a later call.
pub fn dumped_message_ids(dump: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dump) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .filter_map(|bytes| message_id(&bytes))
        .collect()
}

/// The Message-ID header of a message (ours are one line), if complete.
fn message_id(message: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(message);
    text.lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("message-id")
                .then(|| value.trim().to_string())
        })
        .filter(|v| v.starts_with('<') && v.ends_with('>'))
}

/// Counts of each Message-ID in `ids`.
pub fn counts(ids: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for id in ids {
        *m.entry(id.clone()).or_insert(0) += 1;
    }
    m
}

/// How the aiosmtpd peer behaves.
#[derive(Clone, Debug, Default)]
pub struct AioOptions {
    /// Answer the first N RCPT commands with `rcpt_reply` (e.g. `451 4.3.0 try later`).
    pub rcpt_fail: u32,
    pub rcpt_reply: Option<String>,
    /// Offer STARTTLS with this certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// The aiosmtpd peer on 127.0.0.1:`port`; appends a JSON line per accepted message
/// (`message_id`, `rcpts`, `tls`) to a log file. Killed on drop.
pub struct AioSink {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

pub const AIOSMTPD_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/aiosmtpd_peer.py");

impl AioSink {
    /// Python 3 with aiosmtpd importable.
    pub fn available() -> bool {
        crate::python_has("aiosmtpd")
    }

    /// Starts the peer, its log in `dir`; `None` if it cannot start.
    pub fn start(dir: &Path, port: u16, opts: &AioOptions) -> Option<AioSink> {
        std::fs::create_dir_all(dir).ok()?;
        let log = dir.join(format!("aiosmtpd-{port}.jsonl"));
        let mut cmd = Command::new("python3");
        cmd.arg(AIOSMTPD_PEER)
            .args(["--port", &port.to_string()])
            .arg("--log")
            .arg(&log)
            .args(["--rcpt-fail", &opts.rcpt_fail.to_string()]);
        if let Some(r) = &opts.rcpt_reply {
            cmd.args(["--rcpt-reply", r]);
        }
        if let Some((cert, key)) = &opts.tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .ok()?;
        // It prints "ready" once listening.
        let stdout = child.stdout.take()?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(20))
            .is_ok_and(|l| l.trim() == "ready");
        if !ready {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(AioSink { child, port, log })
    }

    /// One JSON value per accepted message, in arrival order.
    pub fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for AioSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message as [`smtp_sink`] got it (addresses with their angle brackets).
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: String,
}

/// An in-process SMTP server on a free loopback port: 250 for everything except
/// recipients whose local part starts with `bounce` (550 5.1.1) or `defer` (451 4.3.0).
/// Each accepted message comes out of the channel.
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
            rcpt_to.clear();
            w.write_all(b"250 2.1.0 ok\r\n")?;
        } else if upper.starts_with("RCPT TO:<BOUNCE") {
            w.write_all(b"550 5.1.1 User unknown\r\n")?;
        } else if upper.starts_with("RCPT TO:<DEFER") {
            w.write_all(b"451 4.3.0 Try again later\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
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
