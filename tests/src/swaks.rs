//! SMTP submission to the daemon with swaks: a builder for the usual arguments, the whole
//! transcript back, the queued message id read from it.

use std::process::Command;

/// One swaks run against `host:port` (30 s timeout).
#[derive(Clone, Debug)]
pub struct Swaks {
    args: Vec<String>,
}

impl Swaks {
    pub fn new(host: &str, port: u16) -> Swaks {
        Swaks {
            args: vec![
                "--server".into(),
                format!("{host}:{port}"),
                "--timeout".into(),
                "30".into(),
            ],
        }
    }

    /// To the daemon's SMTP listener on 127.0.0.1.
    pub fn local(port: u16) -> Swaks {
        Swaks::new("127.0.0.1", port)
    }

    /// More raw arguments.
    pub fn args(mut self, args: &[&str]) -> Swaks {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// `--auth <mechanism> --auth-user <user> --auth-password <password>`.
    pub fn auth(self, mechanism: &str, user: &str, password: &str) -> Swaks {
        self.args(&[
            "--auth",
            mechanism,
            "--auth-user",
            user,
            "--auth-password",
            password,
        ])
    }

    /// `--from <from> --to <to>`.
    pub fn envelope(self, from: &str, to: &str) -> Swaks {
        self.args(&["--from", from, "--to", to])
    }

    /// STARTTLS first (`--tls`).
    pub fn tls(self) -> Swaks {
        self.args(&["--tls"])
    }

    /// Runs it; stdout and stderr, the whole transcript.
    pub fn run(&self) -> String {
        let out = Command::new("swaks")
            .args(&self.args)
            .output()
            .expect("run swaks");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
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
