//! The systems under test: the outpost daemon as a child process, and a private Postfix
//! instance configured in a directory of its own.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{Http, Res};
use crate::procfs;

pub const ADMIN_KEY: &str = "bench-admin-key-0123456789";
pub const TENANT_DOMAIN: &str = "bench.example";

pub fn free_port() -> Res<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Sends `sig` with kill(1) (the workspace forbids `unsafe`, so no libc::kill).
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

pub struct Outpost {
    child: Child,
    pub pid: u32,
    pub http: String,
    /// Spawn to `/readyz` answering 200.
    pub startup: Duration,
}

impl Outpost {
    /// Starts `outpost serve` on `data` relaying to the sink; waits for `/readyz`.
    pub fn start(
        bin: &Path,
        data: &Path,
        relay_port: u16,
        log_level: &str,
        smtp: Option<u16>,
        ready_timeout: Duration,
    ) -> Res<Outpost> {
        let http = format!("127.0.0.1:{}", free_port()?);
        let log = std::fs::File::create(data.with_extension("log"))
            .map_err(|e| format!("cannot create the daemon's log file: {e}"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--http", &http])
            .args(["--relay", &format!("127.0.0.1:{relay_port}")])
            .args(["--hostname", "outpost.bench"]);
        if let Some(p) = smtp {
            cmd.args(["--smtp", &format!("127.0.0.1:{p}")])
                .args(["--trusted-networks", "127.0.0.0/8"]);
        }
        let started = Instant::now();
        let child = cmd
            .env("OUTPOST_ADMIN_KEY", ADMIN_KEY)
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id();
        let mut d = Outpost {
            child,
            pid,
            http,
            startup: Duration::ZERO,
        };
        let mut c = Http::new(&d.http);
        loop {
            if let Ok((200, _)) = c.request("GET", "/readyz", None, b"") {
                break;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                return Err(format!(
                    "the daemon exited at start-up ({status}); see {}",
                    data.with_extension("log").display()
                ));
            }
            if started.elapsed() > ready_timeout {
                return Err("the daemon did not become ready".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        d.startup = started.elapsed();
        Ok(d)
    }

    /// Creates the bench tenant's API key.
    pub fn create_key(&self) -> Res<String> {
        let body = format!("{{\"domain\":\"{TENANT_DOMAIN}\"}}");
        let (status, body) =
            Http::new(&self.http).request("POST", "/v1/keys", Some(ADMIN_KEY), body.as_bytes())?;
        if status != 201 {
            return Err(format!(
                "POST /v1/keys answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("keys answer: {e}"))?;
        v["key"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "no key in the answer".into())
    }

    /// Recipients still queued, deferred or sending, per `GET /v1/admin/queue`.
    pub fn queue_depth(&self) -> Res<u64> {
        let (status, body) =
            Http::new(&self.http).request("GET", "/v1/admin/queue", Some(ADMIN_KEY), b"")?;
        if status != 200 {
            return Err(format!("GET /v1/admin/queue answered {status}"));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("queue answer: {e}"))?;
        let rows = v["data"].as_array().cloned().unwrap_or_default();
        Ok(rows
            .iter()
            .map(|r| {
                ["queued", "deferred", "sending"]
                    .iter()
                    .map(|k| r[k].as_u64().unwrap_or(0))
                    .sum::<u64>()
            })
            .sum())
    }

    /// SIGTERM, then waits (SIGKILL after `deadline`). Returns how long the stop took.
    pub fn stop(mut self, deadline: Duration) -> Duration {
        let t = Instant::now();
        signal(self.pid, "-TERM");
        while t.elapsed() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        t.elapsed()
    }
}

impl Drop for Outpost {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether this outpost build has an SMTP submission listener (`serve --smtp`).
pub fn outpost_has_smtp(bin: &Path) -> bool {
    Command::new(bin)
        .args(["serve", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--smtp "))
        .unwrap_or(false)
}

/// A private Postfix instance: its own config directory, queue and log under `dir`,
/// listening on a loopback port, relaying everything to the sink.
pub struct Postfix {
    pub config_dir: PathBuf,
    pub smtpd_port: u16,
    pub master_pid: u32,
}

/// The services of Debian's master.cf that a relay-only instance uses; nothing chrooted
/// (a chroot would need copies of /etc files inside the queue directory).
const MASTER_CF: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

fn run(cmd: &mut Command) -> Res<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        // Postfix writes its reasons to syslog (or the maillog file) unless on a terminal.
        return Err(format!(
            "{cmd:?} failed ({}): {text} (for Postfix's reason, rerun it under `script -qc`)",
            out.status
        ));
    }
    Ok(text)
}

impl Postfix {
    pub fn start(dir: &Path, sink_port: u16, concurrency_limit: u32) -> Res<Postfix> {
        let _ = std::fs::remove_dir_all(dir);
        let config_dir = dir.join("etc");
        let queue_dir = dir.join("queue");
        let data_dir = dir.join("data");
        for d in [&config_dir, &queue_dir, &data_dir] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let smtpd_port = free_port()?;
        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench
mydomain = bench
myorigin = $myhostname
mydestination =
local_recipient_maps =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{sink_port}
default_destination_concurrency_limit = {concurrency_limit}
smtp_tls_security_level = none
smtpd_tls_security_level = none
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
alias_maps =
alias_database =
biff = no
",
            queue = queue_dir.display(),
            data = data_dir.display(),
            dir = dir.display(),
        );
        let master_cf = format!("127.0.0.1:{smtpd_port} inet n - n - - smtpd\n{MASTER_CF}");
        std::fs::write(config_dir.join("main.cf"), main_cf).map_err(|e| e.to_string())?;
        std::fs::write(config_dir.join("master.cf"), master_cf).map_err(|e| e.to_string())?;
        // The queue directory belongs to root, its subdirectories to postfix; the data
        // directory to postfix.
        run(Command::new("chown").arg("postfix").arg(&data_dir))?;
        let cfg = config_dir.to_string_lossy().to_string();
        run(Command::new("postfix").args(["-c", &cfg, "check"]))?;
        run(Command::new("postfix").args(["-c", &cfg, "start"]))?;
        let pid_file = queue_dir.join("pid/master.pid");
        let t = Instant::now();
        let master_pid = loop {
            if let Some(p) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                break p;
            }
            if t.elapsed() > Duration::from_secs(20) {
                return Err(format!("no {} after start", pid_file.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Ready when smtpd greets.
        while crate::client::Smtp::connect(&format!("127.0.0.1:{smtpd_port}"), "probe").is_err() {
            if t.elapsed() > Duration::from_secs(20) {
                return Err("Postfix's smtpd did not answer".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Postfix {
            config_dir,
            smtpd_port,
            master_pid,
        })
    }

    /// The master and its live children (smtpd, cleanup, qmgr, smtp, ...).
    pub fn pids(&self) -> Vec<u32> {
        let mut v = vec![self.master_pid];
        v.extend(procfs::children(self.master_pid));
        v
    }

    /// CPU of the whole instance so far: the master with the children it reaped, plus the
    /// live children.
    pub fn cpu(&self) -> Duration {
        let mut total = procfs::cpu_with_reaped(self.master_pid).unwrap_or_default();
        for p in procfs::children(self.master_pid) {
            total += procfs::cpu(p).unwrap_or_default();
        }
        total
    }

    /// Sum of the processes' proportional set sizes, KiB.
    pub fn pss_kib(&self) -> u64 {
        self.pids().iter().filter_map(|&p| procfs::pss_kib(p)).sum()
    }

    pub fn stop(&self) {
        let cfg = self.config_dir.to_string_lossy().to_string();
        if run(Command::new("postfix").args(["-c", &cfg, "stop"])).is_err() {
            signal(self.master_pid, "-TERM");
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if Path::new(&format!("/proc/{}", self.master_pid)).exists() {
            self.stop();
        }
    }
}
