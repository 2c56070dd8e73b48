//! End-to-end smoke tests of the real `outpost serve` binary: start-up, bad configuration,
//! graceful shutdown, and a message sent over the HTTP API delivered to an SMTP sink
//! through `--relay`.

use std::process::Command;
use std::time::Duration;

use outpost_tests::dnsmasq::{self, Dnsmasq, host, mx};
use outpost_tests::sinks::smtp_sink;
use outpost_tests::{Daemon, outpost_bin, require, scratch_dir};
use serde_json::json;

#[test]
fn a_bad_setting_exits_2_and_names_it() {
    let dir = scratch_dir("badconfig");
    let out = Command::new(outpost_bin())
        .arg("serve")
        .arg("--data")
        .arg(&dir)
        .args(["--relay", "no-port-here"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`relay`"), "{err}");

    let cfg = dir.join("outpost.toml");
    std::fs::write(&cfg, "[breaker]\nfailure_threshold = 0\n").expect("write");
    let out = Command::new(outpost_bin())
        .arg("serve")
        .arg("--data")
        .arg(&dir)
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("breaker.failure_threshold"), "{err}");
}

#[test]
fn sigterm_stops_the_daemon_cleanly() {
    let (port, _got) = smtp_sink();
    let mut d = Daemon::builder(scratch_dir("sigterm"))
        .relay(port)
        .admin_key("")
        .start();
    let status = d.terminate();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    d.wait_for_log("stopped", Duration::from_secs(1));
}

#[test]
fn a_message_sent_over_http_is_delivered_through_the_relay() {
    let (port, got) = smtp_sink();
    let mut d = Daemon::builder(scratch_dir("deliver")).relay(port).start();
    let key = d.create_key("example.com");
    let receipt = d.submit(
        &key,
        &json!({"from": "app@example.com", "to": ["someone@dest.example"],
                "subject": "Hello from the smoke test", "text": "line one\n.line two"}),
    );
    let id = receipt["id"].as_str().expect("id").to_string();

    let m = got
        .recv_timeout(Duration::from_secs(30))
        .expect("the sink got the message");
    assert!(
        m.mail_from.starts_with("<app@example.com>"),
        "{}",
        m.mail_from
    );
    assert_eq!(m.rcpt_to, vec!["<someone@dest.example>".to_string()]);
    assert!(
        m.data.contains("Subject: Hello from the smoke test"),
        "{}",
        m.data
    );
    assert!(
        m.data.contains("\r\n..line two\r\n"),
        "dot-stuffed: {}",
        m.data
    );

    // The status shows delivered once the outcome is persisted.
    d.wait_status(&key, &id, "delivered", Duration::from_secs(15));

    let body = d.metrics();
    assert!(body.contains("outpost_delivered_total 1"), "{body}");

    let status = d.terminate();
    assert_eq!(status.code(), Some(0));
    let log = d.log();
    assert!(
        !log.contains("someone@dest.example"),
        "an address leaked into the log"
    );
}

#[test]
fn a_message_is_delivered_to_the_mx_found_in_dns() {
    if !require(dnsmasq::binary().is_some(), "dnsmasq") {
        return;
    }
    let (port, got) = smtp_sink();
    let dns = Dnsmasq::start(&[
        mx("dest.example", "mx.dest.example", 10),
        host("mx.dest.example", "127.0.0.1"),
        "--mx-host=nomail.example,.,0".into(),
    ])
    .expect("dnsmasq starts");
    let mut d = Daemon::builder(scratch_dir("mx"))
        .args(["--dns", &dns.addr(), "--mx-port", &port.to_string()])
        .start();
    let key = d.create_key("example.com");
    d.submit(
        &key,
        &json!({"from": "app@example.com", "to": ["rcpt@dest.example"], "subject": "via MX", "text": "hi"}),
    );
    let m = got
        .recv_timeout(Duration::from_secs(30))
        .expect("the MX got the message");
    assert_eq!(m.rcpt_to, vec!["<rcpt@dest.example>".to_string()]);
    assert!(m.data.contains("Subject: via MX"), "{}", m.data);
    assert_eq!(d.terminate().code(), Some(0));
}
