//! The workload: N messages submitted by C client threads (HTTP API or SMTP), delivered to
//! the sink; throughput and submit-to-delivered latency.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::client::{Http, Res, Smtp};
use crate::sink::Sink;

#[derive(Clone, Debug)]
pub struct Shape {
    pub messages: usize,
    pub recipients: usize,
    pub body_bytes: usize,
    pub concurrency: usize,
}

/// Where messages are submitted.
#[derive(Clone, Debug)]
pub enum Intake {
    /// `POST /v1/messages` with a tenant key.
    Http { addr: String, key: String },
    /// SMTP transactions (Postfix's smtpd, or outpost's submission listener).
    Smtp { addr: String },
}

impl Intake {
    pub fn name(&self) -> &'static str {
        match self {
            Intake::Http { .. } => "HTTP API",
            Intake::Smtp { .. } => "SMTP",
        }
    }
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub submitted: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    /// First submission sent to last submission acknowledged.
    pub submit_time: Duration,
    /// First submission sent to last arrival at the sink (None: not all arrived).
    pub deliver_time: Option<Duration>,
    pub delivered_messages: u64,
    pub delivered_recipients: u64,
    /// Submit (request sent) to arrival at the sink, per message, sorted.
    pub latencies: Vec<Duration>,
}

impl Outcome {
    pub fn accepted_per_s(&self) -> f64 {
        self.submitted as f64 / self.submit_time.as_secs_f64().max(1e-9)
    }
    pub fn delivered_per_s(&self) -> Option<f64> {
        self.deliver_time
            .map(|d| self.delivered_messages as f64 / d.as_secs_f64().max(1e-9))
    }
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(i).copied()
    }
}

/// Text of about `n` bytes, in 76-character lines (no line starts with a dot).
pub fn body_text(n: usize) -> String {
    const LINE: &str = "The quick brown fox jumps over the lazy dog; pack my box with five dozen";
    let mut s = String::with_capacity(n + 80);
    let mut i = 0usize;
    while s.len() < n {
        s.push_str(&format!("{:04} {LINE}\n", i % 10_000));
        i += 1;
    }
    s.truncate(n.max(1));
    s
}

fn recipients(i: usize, n: usize) -> Vec<String> {
    (0..n)
        .map(|j| format!("rcpt{i}-{j}@dest.example"))
        .collect()
}

/// Submits the workload and waits (up to `drain_timeout` after the last submission) for
/// every message at the sink.
pub fn run(intake: &Intake, shape: &Shape, sink: &Sink, drain_timeout: Duration) -> Outcome {
    let text = body_text(shape.body_bytes);
    let json_text = serde_json::to_string(&text).unwrap_or_default();
    let smtp_body: Arc<String> = Arc::new(text.replace('\n', "\r\n"));
    let json_text = Arc::new(json_text);
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let run_tag = std::process::id();
    let base_messages = sink.messages();
    // Warm-up: open the client connections one at a time, each answered before the next
    // opens, as a long-running client's pool would be. (This also kept the bench clear of
    // tiny_http 0.12, the API's server until it had its own: connections opened in a
    // burst could be queued behind keep-alive connections that never ended. See README;
    // tests/tests/http_burst.rs covers bursts now.)
    let mut clients: Vec<(Option<Http>, Option<Smtp>)> = Vec::new();
    for _ in 0..shape.concurrency.max(1) {
        clients.push(match intake {
            Intake::Http { addr, .. } => {
                let mut h = Http::new(addr);
                let _ = h.request("GET", "/healthz", None, b"");
                (Some(h), None)
            }
            Intake::Smtp { addr } => (None, Smtp::connect(addr, "client.bench").ok()),
        });
    }
    let start = Instant::now();
    let mut threads = Vec::new();
    for (http, smtp) in clients {
        let (intake, shape) = (intake.clone(), shape.clone());
        let (next, failed) = (next.clone(), failed.clone());
        let (json_text, smtp_body) = (json_text.clone(), smtp_body.clone());
        threads.push(std::thread::spawn(move || {
            let mut sent: Vec<(String, Instant)> = Vec::new();
            let mut first_error: Option<String> = None;
            let (mut http, mut smtp) = (http, smtp);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= shape.messages {
                    break;
                }
                let to = recipients(i, shape.recipients);
                let t = Instant::now();
                let result: Res<String> = match (&intake, http.as_mut()) {
                    (Intake::Http { key, .. }, Some(h)) => submit_http(h, key, i, &to, &json_text),
                    (Intake::Smtp { addr }, _) => {
                        submit_smtp(&mut smtp, addr, run_tag, i, &to, &smtp_body)
                    }
                    _ => Err("no client".into()),
                };
                match result {
                    Ok(mid) => sent.push((mid, t)),
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(s) = smtp {
                s.quit();
            }
            (sent, first_error)
        }));
    }
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(shape.messages);
    let mut first_error = None;
    for t in threads {
        if let Ok((s, e)) = t.join() {
            sent.extend(s);
            if first_error.is_none() {
                first_error = e;
            }
        }
    }
    let submit_time = start.elapsed();
    let expected = base_messages + sent.len() as u64;
    let all = sink.wait_for(expected, drain_timeout);
    let arrivals = sink.take_arrivals();
    let mut latencies = Vec::with_capacity(sent.len());
    let mut delivered_recipients = 0u64;
    let mut delivered_messages = 0u64;
    let mut last = start;
    for a in &arrivals {
        if let Some(t) = sent.get(&a.message_id) {
            delivered_messages += 1;
            delivered_recipients += u64::from(a.rcpts);
            latencies.push(a.at.saturating_duration_since(*t));
            last = last.max(a.at);
        }
    }
    latencies.sort_unstable();
    Outcome {
        submitted: sent.len(),
        failed: failed.load(Ordering::Relaxed) as usize,
        first_error,
        submit_time,
        deliver_time: all.then(|| last.saturating_duration_since(start)),
        delivered_messages,
        delivered_recipients,
        latencies,
    }
}

fn submit_http(h: &mut Http, key: &str, i: usize, to: &[String], text: &str) -> Res<String> {
    let to_json = serde_json::to_string(to).map_err(|e| e.to_string())?;
    let body = format!(
        "{{\"from\":\"bench@{}\",\"to\":{to_json},\"subject\":\"bench {i}\",\"text\":{text}}}",
        crate::daemons::TENANT_DOMAIN
    );
    let (status, answer) = h.request("POST", "/v1/messages", Some(key), body.as_bytes())?;
    if status != 202 {
        return Err(format!(
            "POST /v1/messages answered {status}: {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&answer).map_err(|e| format!("bad answer: {e}"))?;
    v["message_id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "no message_id in the answer".into())
}

fn submit_smtp(
    conn: &mut Option<Smtp>,
    addr: &str,
    run_tag: u32,
    i: usize,
    to: &[String],
    body: &str,
) -> Res<String> {
    if conn.is_none() {
        *conn = Some(Smtp::connect(addr, "client.bench")?);
    }
    let Some(c) = conn.as_mut() else {
        return Err("no SMTP connection".into());
    };
    let from = format!("bench@{}", crate::daemons::TENANT_DOMAIN);
    let mid = format!("<bench-{run_tag}-{i}@{}>", crate::daemons::TENANT_DOMAIN);
    let data = format!(
        "From: <{from}>\r\nTo: <{}>\r\nSubject: bench {i}\r\nMessage-ID: {mid}\r\n\
         Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n{body}\r\n",
        to.first().map(String::as_str).unwrap_or("")
    );
    match c.send_mail(&from, to, data.as_bytes()) {
        Ok(()) => Ok(mid),
        Err(e) => {
            // The session is in an unknown state: start a new one next time.
            *conn = None;
            Err(e)
        }
    }
}
