//! `GET /metrics` parsed with Python's prometheus_client (the reference parser): every
//! line is valid exposition, and the counters match what was sent.

use std::process::Command;
use std::time::Duration;

use outpost_tests::sinks::smtp_sink;
use outpost_tests::swaks::{Swaks, queued_id};
use outpost_tests::{ADMIN, Daemon, WAIT, have, python_has, require, scratch_dir};

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
    if !require(python_has("prometheus_client"), "python3 prometheus_client")
        || !require(have("swaks"), "swaks")
    {
        return;
    }
    let (port, got) = smtp_sink();
    let d = Daemon::builder(scratch_dir("metrics").join("data"))
        .relay(port)
        .smtp()
        .config("retry_schedule = [\"1h\"]\n")
        .start();
    let key = d.create_key("example.com");
    let other = d.create_key("other.example");

    let ok = d.send(&key, "app@example.com", "ok@dest.example");
    let bounced = d.send(&key, "app@example.com", "bounce@dest.example");
    let deferred = d.send(&key, "app@example.com", "defer@dest.example");
    d.wait_status(&key, &ok, "delivered", WAIT);
    d.wait_status(&key, &bounced, "bounced", WAIT);
    d.wait_status(&key, &deferred, "deferred", WAIT);
    let suppressed = d.send(&key, "app@example.com", "bounce@dest.example");
    d.wait_status(&key, &suppressed, "suppressed", WAIT);
    // One over SMTP, one for another tenant.
    let t = Swaks::local(d.smtp())
        .auth("PLAIN", "example.com", &key)
        .envelope("app@example.com", "smtp@dest.example")
        .run();
    let smtp = queued_id(&t).unwrap_or_else(|| panic!("{t}"));
    d.wait_status(&key, &smtp, "delivered", WAIT);
    let o = d.send(&other, "app@other.example", "ok2@dest.example");
    d.wait_status(&other, &o, "delivered", WAIT);
    for _ in 0..3 {
        got.recv_timeout(Duration::from_secs(10)).expect("sink");
    }

    let text = d.metrics();
    let dir = scratch_dir("metrics-parse");
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
    // Every recipient was for dest.example, which still has the deferred one.
    assert_eq!(v("outpost_destinations", &[]), 1.0);
    assert_eq!(v("outpost_destinations_forgotten_total", &[]), 0.0);

    // A forced-open breaker shows.
    let (s2, _) = d.post(
        "/v1/admin/breakers/dest.example",
        Some(ADMIN),
        r#"{"state":"open"}"#,
    );
    assert_eq!(s2, 200);
    let text = d.metrics();
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
