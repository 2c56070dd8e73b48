//! The Python peers of the end-to-end tests (`tests/py/`): a Standard Webhooks receiver
//! verifying with the `standardwebhooks` package, and an aiosmtpd sink answering per
//! recipient. Installed by `scripts/install-test-deps.sh`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether python3 with `standardwebhooks` and `aiosmtpd` is available (for
/// [`crate::require`]).
pub fn available() -> bool {
    crate::python_has("standardwebhooks, aiosmtpd")
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py").join(name)
}

/// A Python child process whose stdout lines are collected; killed on drop.
pub struct PyProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl PyProcess {
    fn spawn(name: &str, args: &[String]) -> PyProcess {
        let mut child = Command::new("python3")
            .arg("-u")
            .arg(script(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line.starts_with("listening") {
                    let _ = ready_tx.send(());
                }
                sink.lock().expect("lock").push(line);
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{name} did not start"));
        PyProcess { child, lines }
    }

    /// Stdout lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lock").clone()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PyProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `tests/py/webhook_receiver.py` on a port: verifies every request against the secrets
/// in `secrets` and appends a JSON line per request to `log`.
pub struct Receiver {
    pub port: u16,
    pub secrets: PathBuf,
    pub log: PathBuf,
    process: Option<PyProcess>,
}

impl Receiver {
    /// `dir` holds its secrets file and log. `fail_first`: answer 503 to that many
    /// verified requests first.
    pub fn start(dir: &Path, port: u16, fail_first: u32) -> Receiver {
        let mut r = Receiver {
            port,
            secrets: dir.join(format!("secrets-{port}.txt")),
            log: dir.join(format!("received-{port}.jsonl")),
            process: None,
        };
        let _ = std::fs::write(&r.secrets, "");
        r.up(fail_first);
        r
    }

    /// (Re)starts the process on the same port, log and secrets.
    pub fn up(&mut self, fail_first: u32) {
        let args = vec![
            "--port".to_string(),
            self.port.to_string(),
            "--secrets".to_string(),
            self.secrets.display().to_string(),
            "--log".to_string(),
            self.log.display().to_string(),
            "--fail-first".to_string(),
            fail_first.to_string(),
        ];
        self.process = Some(PyProcess::spawn("webhook_receiver.py", &args));
    }

    /// Kills the process: the port refuses connections until `up`.
    pub fn down(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    pub fn set_secrets(&self, secrets: &[&str]) {
        std::fs::write(&self.secrets, secrets.join("\n") + "\n").expect("write secrets");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// The requests logged so far, one JSON record each.
    pub fn received(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// `tests/py/smtp_sink.py`: aiosmtpd answering per recipient (see the script).
pub struct SmtpSink {
    pub port: u16,
    process: PyProcess,
}

impl SmtpSink {
    pub fn start(port: u16) -> SmtpSink {
        let process = PyProcess::spawn("smtp_sink.py", &["--port".into(), port.to_string()]);
        SmtpSink { port, process }
    }

    /// Every RCPT the sink saw for `address`, as the reply code.
    pub fn rcpts(&self, address: &str) -> Vec<String> {
        let prefix = format!("RCPT {address} ");
        self.process
            .lines()
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }

    /// Waits until the sink saw `n` RCPTs for `address`.
    pub fn wait_rcpts(&self, address: &str, n: usize, within: Duration) {
        let end = Instant::now() + within;
        while self.rcpts(address).len() < n {
            assert!(
                Instant::now() < end,
                "the sink saw {:?} for {address}, wanted {n}",
                self.rcpts(address)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
