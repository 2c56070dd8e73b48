//! The operator CLI: subcommands of the `outpost` binary that talk to a running daemon's
//! HTTP API with the admin key (`OUTPOST_ADMIN_KEY`), plus `classify`, which works offline.
//! Human-readable tables by default; `--json` prints the API's JSON for scripts.

pub mod breakers;
pub mod classify;
pub mod keys;
pub mod message;
pub mod queue;
pub mod suppress;

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use outpost_core::Time;
use serde_json::Value;

/// Options shared by the commands that talk to the daemon.
#[derive(Clone, Debug, Args)]
pub struct ClientArgs {
    /// The daemon's HTTP API.
    #[arg(long, env = "OUTPOST_URL", default_value = "http://127.0.0.1:8025")]
    pub url: String,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A command failure: printed as `outpost: <message>`, exit 1.
#[derive(Debug)]
pub struct CliError(pub String);

impl<T: std::fmt::Display> From<T> for CliError {
    fn from(e: T) -> CliError {
        CliError(e.to_string())
    }
}

pub type CliResult = Result<(), CliError>;

/// Runs a command and turns its result into the exit code.
pub fn run(f: impl FnOnce() -> CliResult) -> ExitCode {
    match f() {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError(m)) => {
            eprintln!("outpost: {m}");
            ExitCode::from(1)
        }
    }
}

/// An HTTP client for the daemon's API, authenticated with the admin key.
pub struct Client {
    base: String,
    key: String,
    agent: ureq::Agent,
    pub json: bool,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Client, CliError> {
        let key = std::env::var("OUTPOST_ADMIN_KEY")
            .ok()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                CliError("OUTPOST_ADMIN_KEY is not set (the daemon's admin key)".into())
            })?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Ok(Client {
            base: args.url.trim_end_matches('/').to_string(),
            key,
            agent,
            json: args.json,
        })
    }

    /// Calls the API; a 2xx answer's JSON body (`null` when empty), else the API's error.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let url = format!("{}{}", self.base, path);
        let auth = format!("Bearer {}", self.key);
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("authorization", &auth)
                .call(),
            (_, b) => {
                let bytes = b.map(|b| b.to_string()).unwrap_or_default();
                self.agent
                    .post(&url)
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .send(bytes.as_bytes())
            }
        };
        let resp = result.map_err(|e| {
            CliError(format!(
                "cannot reach outpost at {}: is the daemon running? ({e})",
                self.base
            ))
        })?;
        let status = resp.status().as_u16();
        let mut text = String::new();
        resp.into_body()
            .into_reader()
            .read_to_string(&mut text)
            .map_err(|e| CliError(format!("reading the answer from {}: {e}", self.base)))?;
        let v: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .map_err(|_| CliError(format!("HTTP {status}: not JSON: {}", text.trim())))?
        };
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let msg = v["error"]["message"].as_str().unwrap_or("request failed");
        let code = v["error"]["code"].as_str().unwrap_or("error");
        let hint = match status {
            401 => " (check OUTPOST_ADMIN_KEY)",
            _ => "",
        };
        Err(CliError(format!("HTTP {status} {code}: {msg}{hint}")))
    }

    /// Prints `v` as JSON when `--json` was given; returns whether it did.
    pub fn print_json(&self, v: &Value) -> bool {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
            );
        }
        self.json
    }
}

/// Percent-encodes a path segment (addresses and domains go into paths).
pub fn encode(seg: &str) -> String {
    let mut out = String::new();
    for b in seg.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A time as the API gives it (milliseconds, or an RFC 3339 string), for a table.
pub fn time(v: &Value) -> String {
    match v {
        Value::Number(n) => n.as_u64().map(|ms| Time(ms).rfc3339()).unwrap_or_default(),
        Value::String(s) => s.clone(),
        _ => "-".to_string(),
    }
}

/// A JSON scalar for a table cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints rows as aligned columns under `header`.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
