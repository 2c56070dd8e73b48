//! Shared by the `events_*` tests: HTTP calls to the API, polling, and the receiver's log.

#![allow(dead_code)]

use std::io::Read;
use std::time::{Duration, Instant};

use outpost_tests::python::Receiver;
use serde_json::Value;

pub const ADMIN: &str = "e2e-admin-key-0123456789";

/// (status, parsed JSON body or `Null`).
pub fn call(method: &str, url: &str, bearer: Option<&str>, body: Option<&str>) -> (u16, Value) {
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
            req.send(body.unwrap_or("{}"))
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
    let mut text = String::new();
    resp.into_body()
        .into_reader()
        .read_to_string(&mut text)
        .expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, v)
}

/// POSTs raw bytes with the given headers; returns the status.
pub fn post_raw(url: &str, headers: &[(&str, &str)], body: &str) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = agent.post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send(body).expect("HTTP request").status().as_u16()
}

/// A tenant key for `domain` (admin `POST /v1/keys`).
pub fn tenant_key(base: &str, domain: &str) -> String {
    let (s, v) = call(
        "POST",
        &format!("{base}/v1/keys"),
        Some(ADMIN),
        Some(&format!(r#"{{"domain":"{domain}"}}"#)),
    );
    assert_eq!(s, 201, "{v}");
    v["key"].as_str().expect("key").to_string()
}

/// Sends one message; returns its id.
pub fn send(base: &str, key: &str, from: &str, to: &str) -> String {
    let body =
        format!(r#"{{"from":"{from}","to":["{to}"],"subject":"events test","text":"hello"}}"#);
    let (s, v) = call(
        "POST",
        &format!("{base}/v1/messages"),
        Some(key),
        Some(&body),
    );
    assert_eq!(s, 202, "{v}");
    v["id"].as_str().expect("id").to_string()
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `within`.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /v1/messages/{id}` once its status is `status`.
pub fn wait_message_status(
    base: &str,
    key: &str,
    id: &str,
    status: &str,
    within: Duration,
) -> Value {
    let end = Instant::now() + within;
    loop {
        let (s, v) = call("GET", &format!("{base}/v1/messages/{id}"), Some(key), None);
        assert_eq!(s, 200, "{v}");
        if v["status"] == status {
            return v;
        }
        assert!(Instant::now() < end, "message {id} not {status}: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every event of the tenant, following `next_after`.
pub fn all_events(base: &str, key: &str, kind: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let mut url = format!("{base}/v1/events?after={after}&limit=2");
        if let Some(k) = kind {
            url.push_str(&format!("&type={k}"));
        }
        let (s, v) = call("GET", &url, Some(key), None);
        assert_eq!(s, 200, "{v}");
        let page = v["data"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return out;
        }
        after = v["next_after"].as_u64().expect("next_after");
        out.extend(page);
    }
}

/// The receiver's log as JSON records.
pub fn received(r: &Receiver) -> Vec<Value> {
    r.log_lines()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Percent-encodes a query value (base64 has `+`, `/` and `=`).
pub fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Writes the daemon's TOML config into `dir` and returns its path as a string.
pub fn write_config(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("outpost.toml");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}
