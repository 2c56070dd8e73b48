//! dnsmasq on a loopback port, authoritative for whatever records a test gives it
//! (`--mx-host`, `--host-record`, `--txt-record`...). Nothing upstream: unknown names fail.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// A running dnsmasq; killed on drop.
pub struct Dnsmasq {
    child: Child,
    pub port: u16,
}

/// `--mx-host=<domain>,<exchanger>,<preference>`
pub fn mx(domain: &str, exchanger: &str, preference: u16) -> String {
    format!("--mx-host={domain},{exchanger},{preference}")
}

/// `--host-record=<name>,<ip>` (A or AAAA by the address' family)
pub fn host(name: &str, ip: &str) -> String {
    format!("--host-record={name},{ip}")
}

/// `--txt-record=<name>,<value>`, the value split into character-strings of at most 200
/// octets (one is at most 255; every reader joins them again, RFC 6376 3.6.2.2).
pub fn txt(name: &str, value: &str) -> String {
    let parts: Vec<String> = value
        .as_bytes()
        .chunks(200)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!("--txt-record={name},{}", parts.join(","))
}

/// The installed binary, if any.
pub fn binary() -> Option<&'static str> {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
}

impl Dnsmasq {
    /// Starts dnsmasq on 127.0.0.1:<free port> with `records` (see [`mx`], [`host`]);
    /// `None` if it is not installed or does not come up.
    pub fn start(records: &[String]) -> Option<Dnsmasq> {
        Self::start_on(free_port(), records)
    }

    /// The same on a given port (to restart it with other records where the daemon
    /// already looks).
    pub fn start_on(port: u16, records: &[String]) -> Option<Dnsmasq> {
        let bin = binary()?;
        let child = Command::new(bin)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-daemon",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                // No pid file (it would be written to /run, shared by every test).
                "--pid-file",
                "--user=root",
                "--log-facility=-",
                &format!("--port={port}"),
            ])
            .args(records)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut d = Dnsmasq { child, port };
        // It listens on UDP and TCP alike; TCP tells us when it is up.
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > end || matches!(d.child.try_wait(), Ok(Some(_))) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(d)
    }

    /// `127.0.0.1:<port>`, for `outpost serve --dns`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
