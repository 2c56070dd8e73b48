//! `GET /metrics` parsed with Python's prometheus_client (the reference parser): every
//! line is valid exposition, and the counters match what was sent.

mod ops_common;

use ops_common::*;
use std::process::Command;
use std::time::Duration;

/// Parses the exposition with prometheus_client; (name, labels, value) per sample.
fn parse(text: &str, dir: &std::path::Path) -> Vec<(String, serde_json::Value, f64)> {
    let path = dir.join("metrics.txt");
    std::fs::write(&path, text).expect("write");
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        out.append([s.name, s.labels, s.value, fam.type])
print(json.dumps(out))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<(String, serde_json::Value, f64, String)> =
        serde_json::from_slice(&out.stdout).expect("json");
    v.into_iter().map(|(n, l, x, _)| (n, l, x)).collect()
}

fn value(
    samples: &[(String, serde_json::Value, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|(_, _, x)| *x)
}

#[test]
fn metrics_parse_and_match_what_was_sent() {
    let have_parser = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    if !require("python3 prometheus_client", have_parser) || !require("swaks", have("swaks")) {
        return;
    }
    let (port, got) = smtp_sink();
    let d = Daemon::start("metrics", port, Some("retry_schedule = [\"1h\"]\n"), &[]);
    let key = d.key("example.com");
    let other = d.key("other.example");

    let ok = d.send(&key, "app@example.com", "ok@dest.example");
    let bounced = d.send(&key, "app@example.com", "bounce@dest.example");
    let deferred = d.send(&key, "app@example.com", "defer@dest.example");
    d.wait_status(&key, &ok, "delivered");
    d.wait_status(&key, &bounced, "bounced");
    d.wait_status(&key, &deferred, "deferred");
    let suppressed = d.send(&key, "app@example.com", "bounce@dest.example");
    d.wait_status(&key, &suppressed, "suppressed");
    // One over SMTP, one for another tenant.
    let t = swaks(
        "127.0.0.1",
        d.smtp,
        &[
            "--auth",
            "PLAIN",
            "--auth-user",
            "example.com",
            "--auth-password",
            &key,
            "--from",
            "app@example.com",
            "--to",
            "smtp@dest.example",
        ],
    );
    let smtp = queued_id(&t).unwrap_or_else(|| panic!("{t}"));
    d.wait_status(&key, &smtp, "delivered");
    let o = d.send(&other, "app@other.example", "ok2@dest.example");
    d.wait_status(&other, &o, "delivered");
    for _ in 0..3 {
        got.recv_timeout(Duration::from_secs(10)).expect("sink");
    }

    let (status, _, text) = http_full("GET", &d.url("/metrics"), None, None);
    assert_eq!(status, 200);
    let dir = scratch("metrics-parse");
    let s = parse(&text, &dir);
    let v = |name: &str, labels: &[(&str, &str)]| {
        value(&s, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };
    let ex = ("tenant", "example.com");
    let ot = ("tenant", "other.example");
    assert_eq!(v("outpost_tenant_accepted_messages_total", &[ex]), 5.0);
    assert_eq!(v("outpost_tenant_accepted_messages_total", &[ot]), 1.0);
    assert_eq!(
        v(
            "outpost_tenant_recipients_total",
            &[ex, ("outcome", "delivered")]
        ),
        2.0
    );
    assert_eq!(
        v(
            "outpost_tenant_recipients_total",
            &[ex, ("outcome", "bounced")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "outpost_tenant_recipients_total",
            &[ex, ("outcome", "deferred")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "outpost_tenant_recipients_total",
            &[ex, ("outcome", "suppressed")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "outpost_tenant_recipients_total",
            &[ot, ("outcome", "delivered")]
        ),
        1.0
    );
    assert_eq!(v("outpost_accepted_messages_total", &[]), 6.0);
    assert_eq!(v("outpost_delivered_total", &[]), 3.0);
    assert_eq!(v("outpost_bounced_total", &[]), 1.0);
    assert_eq!(
        v(
            "outpost_attempts_by_category_total",
            &[("category", "delivered")]
        ),
        3.0
    );
    assert_eq!(
        v(
            "outpost_attempts_by_category_total",
            &[("category", "invalid_recipient")]
        ),
        1.0
    );
    assert_eq!(v("outpost_attempt_duration_seconds_count", &[]), 5.0);
    assert_eq!(
        v("outpost_attempt_duration_seconds_bucket", &[("le", "+Inf")]),
        5.0
    );
    assert!(v("outpost_store_commit_duration_seconds_count", &[]) > 0.0);
    assert_eq!(v("outpost_queue_depth", &[("state", "deferred")]), 1.0);
    assert_eq!(
        v(
            "outpost_destination_queue_depth",
            &[("domain", "dest.example"), ("state", "deferred")]
        ),
        1.0
    );
    assert!(v("outpost_process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert_eq!(v("outpost_webhook_backlog", &[]), 0.0);
    assert_eq!(v("outpost_breakers_open", &[]), 0.0);

    // A forced-open breaker shows.
    let (s2, _) = http(
        "POST",
        &d.url("/v1/admin/breakers/dest.example"),
        Some(ADMIN),
        Some(r#"{"state":"open"}"#),
    );
    assert_eq!(s2, 200);
    let (_, _, text) = http_full("GET", &d.url("/metrics"), None, None);
    let s = parse(&text, &dir);
    assert_eq!(
        value(
            &s,
            "outpost_breaker_state",
            &[("domain", "dest.example"), ("state", "open")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&s, "outpost_breakers_open", &[]), Some(1.0));
    let _ = std::fs::remove_dir_all(&dir);
}
