//! End-to-end delivery outcomes of the real daemon against real peers: dnsmasq answers the
//! MX lookups; Postfix's smtp-sink and an aiosmtpd server receive (or refuse) the mail.
//!
//! - delivered through the MX found in DNS, counted at the sink by Message-ID;
//! - a 4xx is deferred, then delivered on the (2 s) retry;
//! - a 5xx bounces, with code, enhanced code and category in the timeline;
//! - the first MX down: the second one is used;
//! - STARTTLS when offered: verified with `--tls-ca-file`, still encrypted without.

use std::path::PathBuf;
use std::time::Duration;

use outpost_tests::dnsmasq::{self, Dnsmasq, host, mx};
use outpost_tests::pki::TestPki;
use outpost_tests::sinks::{AioOptions, AioSink, PostfixSink, counts};
use outpost_tests::{Daemon, DaemonBuilder, free_port, have, poll, require, scratch_dir};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(30);

fn have_dnsmasq() -> bool {
    require(dnsmasq::binary().is_some(), "dnsmasq")
}

/// `POST /v1/messages` from app@example.com to `to`; returns (id, Message-ID header).
fn send(d: &Daemon, key: &str, to: &str, subject: &str) -> (String, String) {
    let v = d.submit(
        key,
        &json!({"from": "app@example.com", "to": [to], "subject": subject, "text": "hello"}),
    );
    (
        v["id"].as_str().expect("id").to_string(),
        v["message_id"].as_str().expect("message_id").to_string(),
    )
}

/// A daemon resolving MX hosts through `dns`, connecting to them on `mx_port`.
fn daemon_via(dns: &Dnsmasq, mx_port: u16, data: PathBuf) -> DaemonBuilder {
    Daemon::builder(data).args(["--dns", &dns.addr(), "--mx-port", &mx_port.to_string()])
}

/// The attempts of a message (the timeline), ordered by attempt number.
fn attempts(m: &Value) -> Vec<Value> {
    let mut a = m["attempts"].as_array().cloned().unwrap_or_default();
    a.sort_by_key(|x| x["attempt"].as_u64());
    a
}

#[test]
fn delivered_to_the_mx_found_in_dns_and_counted_at_the_sink() {
    if !(have_dnsmasq() && require(PostfixSink::available(), "smtp-sink")) {
        return;
    }
    let dir = scratch_dir("delivered");
    let port = free_port();
    let sink = PostfixSink::start(&dir.join("dump"), port, &[]).expect("smtp-sink starts");
    let dns = Dnsmasq::start(&[
        mx("dest.example", "mx.dest.example", 10),
        host("mx.dest.example", "127.0.0.1"),
    ])
    .expect("dnsmasq starts");
    let mut d = daemon_via(&dns, port, dir.join("data")).start();
    let key = d.create_key("example.com");

    let sent: Vec<(String, String)> = (1..=3)
        .map(|i| send(&d, &key, &format!("rcpt{i}@dest.example"), "delivered"))
        .collect();
    let got = poll(WITHIN, "all three messages at the sink", || {
        let c = counts(&sink.message_ids());
        sent.iter().all(|(_, mid)| c.contains_key(mid)).then_some(c)
    });
    for (id, mid) in &sent {
        assert_eq!(got[mid], 1, "{mid} delivered once");
        let m = d.wait_status(&key, id, "delivered", WITHIN);
        let a = attempts(&m);
        assert_eq!(a.len(), 1, "{m:#}");
        assert_eq!(a[0]["status"], "delivered", "{m:#}");
        assert_eq!(a[0]["smtp_code"], 250, "{m:#}");
        assert_eq!(a[0]["mx"], "mx.dest.example", "{m:#}");
    }
    assert_eq!(d.terminate_within(WITHIN).code(), Some(0));
    let log = d.log();
    assert!(
        !log.contains("rcpt1@dest.example") && !log.contains("app@example.com"),
        "an address leaked into the log:\n{log}"
    );
}

#[test]
fn a_4xx_is_deferred_then_delivered_on_retry() {
    if !(have_dnsmasq() && require(AioSink::available(), "python3 with aiosmtpd")) {
        return;
    }
    let dir = scratch_dir("deferred");
    let port = free_port();
    let sink = AioSink::start(
        &dir,
        port,
        &AioOptions {
            rcpt_fail: 1,
            rcpt_reply: Some("451 4.3.0 Temporary lookup failure, try again".into()),
            ..Default::default()
        },
    )
    .expect("aiosmtpd starts");
    let dns = Dnsmasq::start(&[
        mx("retry.example", "mx.retry.example", 10),
        host("mx.retry.example", "127.0.0.1"),
    ])
    .expect("dnsmasq starts");
    // One short retry delay, no jitter, so a deferral retries in 2 s.
    let d = daemon_via(&dns, port, dir.join("data"))
        .config("retry_schedule = [\"2s\"]\nretry_jitter_percent = 0\n")
        .start();
    let key = d.create_key("example.com");
    let (id, mid) = send(&d, &key, "later@retry.example", "deferred then delivered");

    // The first answer is a 451: the recipient is deferred, with a next attempt planned.
    let m = d.wait_status(&key, &id, "deferred", WITHIN);
    assert!(
        m["recipients"][0]["next_attempt_at"].is_string(),
        "a retry is planned: {m:#}"
    );
    let m = d.wait_status(&key, &id, "delivered", WITHIN);
    let a = attempts(&m);
    assert_eq!(a.len(), 2, "{m:#}");
    assert_eq!(
        (&a[0]["status"], &a[0]["smtp_code"], &a[0]["enhanced_code"]),
        (&json!("deferred"), &json!(451), &json!("4.3.0")),
        "{m:#}"
    );
    assert_eq!(
        (&a[1]["status"], &a[1]["smtp_code"]),
        (&json!("delivered"), &json!(250)),
        "{m:#}"
    );
    let got = sink.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["message_id"], mid);
    assert_eq!(got[0]["rcpts"], json!(["later@retry.example"]));
}

#[test]
fn a_5xx_bounces_with_code_enhanced_code_and_category() {
    if !(have_dnsmasq() && require(AioSink::available(), "python3 with aiosmtpd")) {
        return;
    }
    let dir = scratch_dir("bounced");
    let port = free_port();
    let sink = AioSink::start(
        &dir,
        port,
        &AioOptions {
            rcpt_fail: 1000,
            rcpt_reply: Some(
                "550 5.1.1 <nobody@bounce.example>: Recipient address rejected: \
                 User unknown in local recipient table"
                    .into(),
            ),
            ..Default::default()
        },
    )
    .expect("aiosmtpd starts");
    let dns = Dnsmasq::start(&[
        mx("bounce.example", "mx.bounce.example", 10),
        host("mx.bounce.example", "127.0.0.1"),
    ])
    .expect("dnsmasq starts");
    let d = daemon_via(&dns, port, dir.join("data")).start();
    let key = d.create_key("example.com");
    let (id, _) = send(&d, &key, "nobody@bounce.example", "bounces");

    let m = d.wait_status(&key, &id, "bounced", WITHIN);
    let a = attempts(&m);
    assert_eq!(a.len(), 1, "{m:#}");
    assert_eq!(a[0]["status"], "bounced", "{m:#}");
    assert_eq!(a[0]["smtp_code"], 550, "{m:#}");
    assert_eq!(a[0]["enhanced_code"], "5.1.1", "{m:#}");
    assert_eq!(a[0]["category"], "invalid_recipient", "{m:#}");
    assert_eq!(a[0]["mx"], "mx.bounce.example", "{m:#}");
    assert!(
        a[0]["response"]
            .as_str()
            .is_some_and(|r| r.contains("User unknown")),
        "{m:#}"
    );
    assert_eq!(m["recipients"][0]["status"], "bounced", "{m:#}");
    assert!(sink.received().is_empty());
}

#[test]
fn the_first_mx_down_the_second_is_used() {
    if !(have_dnsmasq() && require(PostfixSink::available(), "smtp-sink")) {
        return;
    }
    let dir = scratch_dir("second-mx");
    let port = free_port();
    // The sink listens on 127.0.0.1 only: 127.0.0.2 (also loopback) refuses the connection.
    let sink = PostfixSink::start(&dir.join("dump"), port, &[]).expect("smtp-sink starts");
    let dns = Dnsmasq::start(&[
        mx("two.example", "mx1.two.example", 10),
        mx("two.example", "mx2.two.example", 20),
        host("mx1.two.example", "127.0.0.2"),
        host("mx2.two.example", "127.0.0.1"),
    ])
    .expect("dnsmasq starts");
    let d = daemon_via(&dns, port, dir.join("data")).start();
    let key = d.create_key("example.com");
    let (id, mid) = send(&d, &key, "someone@two.example", "second MX");

    let m = d.wait_status(&key, &id, "delivered", WITHIN);
    let delivered: Vec<Value> = attempts(&m)
        .into_iter()
        .filter(|a| a["status"] == "delivered")
        .collect();
    assert_eq!(delivered.len(), 1, "{m:#}");
    assert_eq!(delivered[0]["mx"], "mx2.two.example", "{m:#}");
    assert_eq!(counts(&sink.message_ids()).get(&mid), Some(&1));
}

#[test]
fn starttls_is_used_when_offered_verified_only_with_the_ca() {
    if !(have_dnsmasq()
        && require(AioSink::available(), "python3 with aiosmtpd")
        && require(have("openssl"), "openssl"))
    {
        return;
    }
    let dir = scratch_dir("starttls");
    let pki = TestPki::generate(&dir.join("pki"), "mx.tls.example").expect("test CA and leaf");
    let port = free_port();
    let sink = AioSink::start(
        &dir,
        port,
        &AioOptions {
            tls: Some((pki.cert.clone(), pki.key.clone())),
            ..Default::default()
        },
    )
    .expect("aiosmtpd starts");
    let dns = Dnsmasq::start(&[
        mx("tls.example", "mx.tls.example", 10),
        host("mx.tls.example", "127.0.0.1"),
    ])
    .expect("dnsmasq starts");

    // With the test CA trusted, the certificate verifies; without it, the session is still
    // encrypted (opportunistic TLS) and recorded as unverified.
    let with_ca = daemon_via(&dns, port, dir.join("data-ca"))
        .arg("--tls-ca-file")
        .arg(pki.ca_cert.display().to_string())
        .start();
    let without_ca = daemon_via(&dns, port, dir.join("data-noca")).start();
    let mut mids = Vec::new();
    for (d, verified) in [(&with_ca, true), (&without_ca, false)] {
        let key = d.create_key("example.com");
        let (id, mid) = send(d, &key, "secure@tls.example", "over TLS");
        let m = d.wait_status(&key, &id, "delivered", WITHIN);
        let a = attempts(&m);
        assert_eq!(a.len(), 1, "{m:#}");
        assert_eq!(
            a[0]["tls"],
            json!({"mode": "starttls", "verified": verified}),
            "{m:#}"
        );
        mids.push(mid);
    }
    let got = sink.received();
    assert_eq!(got.len(), 2, "{got:?}");
    for r in &got {
        assert_eq!(r["tls"], true, "the peer saw TLS: {r}");
        assert!(mids.contains(&r["message_id"].as_str().unwrap_or("").to_string()));
    }
}
