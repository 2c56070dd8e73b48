//! `outpost demo`: the whole path in one command, nothing to install. It starts the
//! daemon in this process on a temporary data directory under the working directory
//! (removed at the end), a built-in SMTP sink standing in for the recipients' mail server
//! (250 for most, `451` once for `later@`, `550 5.1.1` for `nobody@`), and a built-in
//! webhook receiver on loopback; then sends four messages and prints the events as they
//! arrive and each message's timeline: one delivered, one deferred then delivered, one
//! hard bounce, and a second send to the bounced address, suppressed without any SMTP.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use outpost_core::{Config, Engine};
use serde_json::{Value, json};

use crate::api;
use crate::dns::Dns;
use crate::gateway::Gateway;
use crate::runtime::{Deps, Msg, Runtime};
use crate::store::Store;
use crate::tls::TlsClient;
use outpost_core::config::Relay;

const TENANT: &str = "demo.example";
const DEST: &str = "dest.example";
/// The demo gives up after this long (it normally needs a few seconds).
const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Args)]
pub struct DemoArgs {
    /// Keep the data directory afterwards (to look at it).
    #[arg(long)]
    pub keep: bool,
}

/// Removes the data directory when the demo ends, however it ends.
struct TempDir(PathBuf, bool);

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn run(args: &DemoArgs) -> ExitCode {
    if std::env::var_os("RUST_LOG").is_none() {
        // The demo prints its own story; the daemon's log only for problems.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
            .with_writer(std::io::stderr)
            .try_init();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    match demo(args) {
        Ok(true) => {
            println!("\ndemo finished: all outcomes as expected");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("\ndemo finished: some outcomes were not as expected");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("outpost demo: {e}");
            ExitCode::from(1)
        }
    }
}

fn demo(args: &DemoArgs) -> Result<bool, String> {
    let started = Instant::now();
    let dir = std::env::current_dir()
        .map_err(|e| format!("working directory: {e}"))?
        .join(format!("outpost-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _cleanup = TempDir(dir.clone(), args.keep);

    let sink = sink()?;
    let events: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
    let hook = receiver(events.clone(), started)?;

    // The daemon, in-process: relay to the sink, retries after 2 s.
    let mut config = Config {
        relay: Some(Relay {
            host: "127.0.0.1".into(),
            port: sink,
        }),
        retry_schedule: vec![Duration::from_secs(2)],
        retry_jitter_permille: 0,
        allow_private_webhooks: true,
        ..Config::default()
    };
    config.hostname = "outpost.demo".into();
    config.validate().map_err(|e| e.to_string())?;
    let store = Store::open(&dir).map_err(|e| format!("store: {e}"))?;
    let deps = Deps {
        store: store.clone(),
        data_dir: dir.clone(),
        // Never asked: everything goes to the relay at 127.0.0.1.
        dns: Dns::new(Some(([127, 0, 0, 1], 53).into())).map_err(|e| e.to_string())?,
        tls: TlsClient::new(None)?,
        allow_private_webhooks: true,
        shutdown_deadline: Duration::from_secs(5),
    };
    let (rt, handle) = Runtime::start(Engine::new(config, seed()), deps)?;
    let running = std::thread::spawn(move || smol::block_on(rt.run()));
    let admin_key = format!("demo-admin-{}", hex_random()?);
    let gateway = Arc::new(Gateway::new(handle.clone()));
    let api = api::serve(
        "127.0.0.1:0",
        store,
        gateway,
        Some(api::hash_key(&admin_key)),
        api::ApiSettings {
            allow_private_webhooks: true,
            max_connections: 16,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let base = format!("http://{}", api.local_addr());
    println!("outpost demo: daemon on {base}, SMTP sink on 127.0.0.1:{sink}, webhooks to {hook}");
    println!("data directory {} (removed at the end)\n", dir.display());

    let result = scenario(&base, &admin_key, &hook, &events, started);

    let _ = handle.tx.send_blocking(Msg::Shutdown);
    let _ = running.join();
    api.stop();
    result
}

fn scenario(
    base: &str,
    admin_key: &str,
    hook: &str,
    events: &Arc<Mutex<Vec<Value>>>,
    started: Instant,
) -> Result<bool, String> {
    let c = Http::new(base);
    let key = c.call(
        "POST",
        "/v1/keys",
        admin_key,
        Some(json!({"domain": TENANT})),
    )?;
    let key = key["key"]
        .as_str()
        .ok_or("no key in the answer")?
        .to_string();
    println!("created tenant {TENANT} and its API key");
    c.call(
        "POST",
        "/v1/webhooks",
        &key,
        Some(json!({"url": hook, "events": []})),
    )?;
    println!("registered a webhook endpoint for every event type\n");

    let send = |to: &str, subject: &str| -> Result<String, String> {
        let r = c.call(
            "POST",
            "/v1/messages",
            &key,
            Some(json!({"from": format!("app@{TENANT}"), "to": [to], "subject": subject, "text": "Hello from the outpost demo."})),
        )?;
        let id = r["id"].as_str().ok_or("no id in the receipt")?.to_string();
        println!(
            "[{:>5.1}s] sent {id} to {to} ({subject})",
            started.elapsed().as_secs_f64()
        );
        Ok(id)
    };
    let ok = send(&format!("ok@{DEST}"), "delivered at once")?;
    let later = send(&format!("later@{DEST}"), "deferred, then delivered")?;
    let nobody = send(&format!("nobody@{DEST}"), "hard bounce")?;
    let mut expected: BTreeMap<String, &str> = BTreeMap::new();
    expected.insert(ok.clone(), "delivered");
    expected.insert(later.clone(), "delivered");
    expected.insert(nobody.clone(), "bounced");

    // The bounce suppresses the address; a second send to it is suppressed at once.
    let end = Instant::now() + DEADLINE;
    wait_status(&c, &key, &nobody, "bounced", end)?;
    let again = send(&format!("nobody@{DEST}"), "to a suppressed address")?;
    expected.insert(again.clone(), "suppressed");

    let mut all_ok = true;
    let mut finals = BTreeMap::new();
    for (id, want) in &expected {
        let got = wait_status(&c, &key, id, want, end)?;
        all_ok &= got == *want;
        finals.insert(id.clone(), got);
    }
    // Webhooks trail the status by a moment.
    let want_events = 4 + 2 + 1 + 1 + 1;
    while Instant::now() < end && lock(events).len() < want_events {
        std::thread::sleep(Duration::from_millis(100));
    }
    let kinds: Vec<String> = lock(events)
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_string))
        .collect();
    for k in [
        "message.queued",
        "message.delivered",
        "message.deferred",
        "message.bounced",
        "message.suppressed",
    ] {
        if !kinds.iter().any(|x| x == k) {
            println!("missing webhook event {k}");
            all_ok = false;
        }
    }

    println!("\n==== timelines ====");
    for id in [&ok, &later, &nobody, &again] {
        let v = c.call("GET", &format!("/v1/messages/{id}"), &key, None)?;
        println!();
        crate::cli::message::print_timeline(&v);
    }
    println!("\n==== outcomes ====");
    for (id, want) in &expected {
        let got = finals.get(id).map(String::as_str).unwrap_or("?");
        let mark = if got == *want { "ok  " } else { "FAIL" };
        println!("{mark} {id}: {got} (expected {want})");
    }
    println!("{} webhook events received", kinds.len());
    Ok(all_ok)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Polls a message until its status is `want` (or any terminal one) or the deadline.
fn wait_status(c: &Http, key: &str, id: &str, want: &str, end: Instant) -> Result<String, String> {
    loop {
        let v = c.call("GET", &format!("/v1/messages/{id}"), key, None)?;
        let status = v["status"].as_str().unwrap_or("?").to_string();
        let terminal = matches!(
            status.as_str(),
            "delivered" | "bounced" | "failed" | "suppressed" | "partially_delivered"
        );
        if status == want || terminal || Instant::now() >= end {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Http {
    base: String,
    agent: ureq::Agent,
}

impl Http {
    fn new(base: &str) -> Http {
        Http {
            base: base.to_string(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into(),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {key}");
        let resp = match method {
            "GET" => self.agent.get(&url).header("authorization", &auth).call(),
            _ => self
                .agent
                .post(&url)
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .send(body.unwrap_or(Value::Null).to_string().as_bytes()),
        }
        .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status().as_u16();
        let mut text = String::new();
        resp.into_body()
            .into_reader()
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(format!("{method} {path}: HTTP {status}: {text}"));
        }
        Ok(v)
    }
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

fn hex_random() -> Result<String, String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| e.to_string())?;
    Ok(api::hex(&b))
}

/// The built-in SMTP sink: its port.
fn sink() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("SMTP sink: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let deferred_once = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let once = deferred_once.clone();
            std::thread::spawn(move || {
                let _ = sink_session(stream, &once);
            });
        }
    });
    Ok(port)
}

fn sink_session(stream: TcpStream, deferred_once: &AtomicBool) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    w.write_all(b"220 sink.demo ESMTP\r\n")?;
    let mut accepted = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink.demo\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10000000\r\n"
        } else if upper.starts_with("MAIL") {
            accepted = 0;
            b"250 2.1.0 ok\r\n"
        } else if upper.starts_with("RCPT") {
            if upper.contains("<NOBODY@") {
                b"550 5.1.1 <nobody>: Recipient address rejected: User unknown\r\n"
            } else if upper.contains("<LATER@") && !deferred_once.swap(true, Ordering::SeqCst) {
                b"451 4.3.0 Temporary failure, please try again later\r\n"
            } else {
                accepted += 1;
                b"250 2.1.5 ok\r\n"
            }
        } else if upper.starts_with("DATA") {
            if accepted == 0 {
                b"554 5.5.1 no valid recipients\r\n"
            } else {
                w.write_all(b"354 go ahead\r\n")?;
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l)? == 0 {
                        return Ok(());
                    }
                    if l == ".\r\n" {
                        break;
                    }
                }
                b"250 2.0.0 queued\r\n"
            }
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 2.0.0 bye\r\n")?;
            return Ok(());
        } else {
            b"250 ok\r\n"
        };
        w.write_all(reply)?;
    }
}

/// The built-in webhook receiver: prints each event as it arrives. Its URL.
fn receiver(events: Arc<Mutex<Vec<Value>>>, started: Instant) -> Result<String, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("webhook receiver: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            if let Some(body) = read_post(stream)
                && let Ok(v) = serde_json::from_str::<Value>(&body)
            {
                let d = &v["data"];
                println!(
                    "[{:>5.1}s] webhook {:<19} {} {} {}",
                    started.elapsed().as_secs_f64(),
                    v["type"].as_str().unwrap_or("?"),
                    d["message_id"].as_str().or(d["id"].as_str()).unwrap_or(""),
                    d["recipient"].as_str().unwrap_or(""),
                    match (&d["smtp_code"], d["category"].as_str()) {
                        (Value::Number(n), Some(c)) => format!("({n} {c})"),
                        _ => String::new(),
                    }
                );
                lock(&events).push(v);
            }
        }
    });
    Ok(format!("http://127.0.0.1:{port}/hooks"))
}

/// Reads one HTTP request's body and answers 200.
fn read_post(stream: TcpStream) -> Option<String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut w = stream.try_clone().ok()?;
    let mut r = BufReader::new(stream);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; len.min(1 << 20)];
    r.read_exact(&mut body).ok()?;
    let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    String::from_utf8(body).ok()
}
