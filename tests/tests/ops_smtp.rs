//! SMTP submission with swaks: AUTH over STARTTLS (tracked like API messages, delivered),
//! AUTH refused in plaintext from a non-loopback client, open-relay attempts refused,
//! trusted networks, pipelining, oversize messages, overlong command lines.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use outpost_tests::pki::self_signed;
use outpost_tests::sinks::{Received, smtp_sink};
use outpost_tests::swaks::{Swaks, non_loopback_ip, queued_id};
use outpost_tests::{Daemon, DaemonBuilder, WAIT, free_port, have, require, scratch_dir};

/// The daemon (SMTP submission on a free loopback port, as `build` may change it) relaying
/// to an in-process sink; a key for example.com; what the sink gets.
fn submission(
    name: &str,
    build: impl FnOnce(DaemonBuilder) -> DaemonBuilder,
) -> (Daemon, String, Receiver<Received>) {
    let (port, got) = smtp_sink();
    let builder = Daemon::builder(scratch_dir(name).join("data"))
        .relay(port)
        .smtp();
    let d = build(builder).start();
    let key = d.create_key("example.com");
    (d, key, got)
}

#[test]
fn auth_over_starttls_submits_and_the_message_is_tracked() {
    if !require(have("swaks"), "swaks") || !require(have("openssl"), "openssl") {
        return;
    }
    let (cert, key_pem) = self_signed(&scratch_dir("smtp-tls-certs")).expect("certificate");
    let (d, key, got) = submission("smtp-tls", |b| {
        b.smtp_listen(&format!("0.0.0.0:{}", free_port()))
            .arg("--smtp-tls-cert")
            .arg(cert.to_string_lossy())
            .arg("--smtp-tls-key")
            .arg(key_pem.to_string_lossy())
    });

    let t = Swaks::local(d.smtp())
        .tls()
        .auth("PLAIN", "example.com", &key)
        .envelope("app@example.com", "rcpt@dest.example")
        .args(&["--header", "Subject: via smtp"])
        .run();
    assert!(t.contains("220 2.0.0 Ready to start TLS"), "{t}");
    let id = queued_id(&t).unwrap_or_else(|| panic!("not queued: {t}"));
    let m = got
        .recv_timeout(Duration::from_secs(30))
        .expect("delivered to the sink");
    assert_eq!(m.rcpt_to, vec!["<rcpt@dest.example>".to_string()]);
    assert!(m.data.contains("Subject: via smtp"), "{}", m.data);
    let v = d.wait_status(&key, &id, "delivered", WAIT);
    assert_eq!(v["source"], "smtp", "{v}");

    // A wrong password: 535.
    let t = Swaks::local(d.smtp())
        .tls()
        .auth("LOGIN", "example.com", "op_wrong")
        .envelope("app@example.com", "rcpt@dest.example")
        .run();
    assert!(t.contains("535 5.7.8"), "{t}");
    // The right key for another tenant's name: refused too.
    let t = Swaks::local(d.smtp())
        .tls()
        .auth("PLAIN", "other.example", &key)
        .envelope("app@other.example", "rcpt@dest.example")
        .run();
    assert!(t.contains("535"), "{t}");

    // From a non-loopback address, AUTH is not offered before TLS, and works after it.
    if let Some(ip) = non_loopback_ip() {
        let t = Swaks::new(&ip, d.smtp())
            .auth("PLAIN", "example.com", &key)
            .envelope("app@example.com", "rcpt@dest.example")
            .run();
        assert!(queued_id(&t).is_none(), "plaintext AUTH accepted: {t}");
        assert!(
            t.contains("did not advertise authentication")
                || t.contains("538")
                || t.contains("530"),
            "{t}"
        );
        let t = Swaks::new(&ip, d.smtp())
            .tls()
            .auth("PLAIN", "example.com", &key)
            .envelope("app@example.com", "rcpt@dest.example")
            .run();
        assert!(queued_id(&t).is_some(), "{t}");
    } else {
        eprintln!("no non-loopback address: plaintext-AUTH refusal not checked");
    }
    // The password never reaches the log.
    assert!(!d.log().contains(&key));
    assert!(
        !d.log().contains("rcpt@dest.example"),
        "an address leaked into the log"
    );
}

#[test]
fn open_relay_attempts_and_foreign_senders_are_refused_trusted_networks_are_not() {
    if !require(have("swaks"), "swaks") {
        return;
    }
    let (d, key, _got) = submission("smtp-relay", |b| {
        b.args(["--trusted-networks", "127.0.0.2/32"])
    });

    // No AUTH from an untrusted client: 530, whatever the sender.
    let t = Swaks::local(d.smtp())
        .envelope("app@example.com", "victim@elsewhere.example")
        .run();
    assert!(t.contains("530 5.7.0"), "{t}");
    assert!(queued_id(&t).is_none());
    // Authenticated, but a sender outside the tenant's domain: 553.
    let t = Swaks::local(d.smtp())
        .auth("PLAIN", "example.com", &key)
        .envelope("ceo@bank.example", "victim@elsewhere.example")
        .run();
    assert!(t.contains("553 5.7.1"), "{t}");
    assert!(queued_id(&t).is_none());
    // A trusted client (connecting from 127.0.0.2) needs no AUTH for a known tenant's
    // sender...
    let t = Swaks::local(d.smtp())
        .envelope("app@example.com", "rcpt@dest.example")
        .args(&["--local-interface", "127.0.0.2"])
        .run();
    assert!(queued_id(&t).is_some(), "{t}");
    // ...but an unknown sender domain is refused even there.
    let t = Swaks::local(d.smtp())
        .envelope("app@unknown.example", "rcpt@dest.example")
        .args(&["--local-interface", "127.0.0.2"])
        .run();
    assert!(t.contains("550 5.7.1"), "{t}");
}

#[test]
fn pipelining_oversize_and_overlong_lines() {
    if !require(have("swaks"), "swaks") {
        return;
    }
    let (d, key, got) = submission("smtp-limits", |b| b.config("max_message_size = 20000\n"));
    let swaks = Swaks::local(d.smtp()).auth("PLAIN", "example.com", &key);

    // PIPELINING: the whole envelope in one go.
    let t = swaks
        .clone()
        .args(&["--pipeline"])
        .envelope(
            "app@example.com",
            "a@dest.example,b@dest.example,c@dest.example",
        )
        .run();
    assert!(t.contains("PIPELINING"), "{t}");
    let id = queued_id(&t).unwrap_or_else(|| panic!("{t}"));
    let m = got
        .recv_timeout(Duration::from_secs(30))
        .expect("delivered");
    assert_eq!(m.rcpt_to.len(), 3);
    d.wait_status(&key, &id, "delivered", WAIT);

    // A message over max_message_size: 552, nothing queued.
    let body = "x".repeat(70);
    let big: String = std::iter::repeat_n(body.as_str(), 400)
        .collect::<Vec<_>>()
        .join("\n");
    let t = swaks
        .envelope("app@example.com", "a@dest.example")
        .args(&["--body", &big])
        .run();
    assert!(t.contains("552 5.3.4"), "{t}");
    assert!(queued_id(&t).is_none());

    // An overlong command line: 500 5.5.2, and the session goes on.
    let mut s = TcpStream::connect(("127.0.0.1", d.smtp())).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut line = String::new();
    r.read_line(&mut line).expect("greeting");
    assert!(line.starts_with("220 "), "{line}");
    let long = format!("NOOP {}\r\n", "a".repeat(2000));
    s.write_all(long.as_bytes()).expect("write");
    line.clear();
    r.read_line(&mut line).expect("reply");
    assert!(line.starts_with("500 5.5.2"), "{line}");
    s.write_all(b"NOOP\r\nQUIT\r\n").expect("write");
    line.clear();
    r.read_line(&mut line).expect("reply");
    assert!(line.starts_with("250"), "{line}");
    line.clear();
    r.read_line(&mut line).expect("reply");
    assert!(line.starts_with("221"), "{line}");
}

#[test]
fn rate_limits_answer_429_with_retry_after_and_451() {
    if !require(have("swaks"), "swaks") {
        return;
    }
    let (d, key, _got) = submission("ratelimit", |b| {
        b.config("[limits]\nmessages_per_minute = 2\n")
    });
    let body = r#"{"from":"app@example.com","to":["a@dest.example"],"text":"hi"}"#;
    for _ in 0..2 {
        let r = d.request("POST", "/v1/messages", Some(&key), Some(body.as_bytes()));
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let r = d.request("POST", "/v1/messages", Some(&key), Some(body.as_bytes()));
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("rate_limited"), "{}", r.body);
    let secs: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&secs), "{secs}");
    // Reads are not limited.
    let (s, _) = d.get("/v1/messages", Some(&key));
    assert_eq!(s, 200);
    // The same tenant over SMTP shares the allowance: 451 4.7.1.
    let t = Swaks::local(d.smtp())
        .auth("PLAIN", "example.com", &key)
        .envelope("app@example.com", "a@dest.example")
        .run();
    assert!(t.contains("451 4.7.1"), "{t}");
    assert!(queued_id(&t).is_none());
    // Another tenant is not affected.
    let other = d.create_key("other.example");
    let (s, _) = d.post(
        "/v1/messages",
        Some(&other),
        r#"{"from":"app@other.example","to":["a@dest.example"],"text":"hi"}"#,
    );
    assert_eq!(s, 202);
}
