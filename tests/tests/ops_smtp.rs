//! SMTP submission with swaks: AUTH over STARTTLS (tracked like API messages, delivered),
//! AUTH refused in plaintext from a non-loopback client, open-relay attempts refused,
//! trusted networks, pipelining, oversize messages, overlong command lines.

mod ops_common;

use ops_common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn auth_over_starttls_submits_and_the_message_is_tracked() {
    if !require("swaks", have("swaks")) || !require("openssl", have("openssl")) {
        return;
    }
    let (port, got) = smtp_sink();
    let tls_dir = scratch("smtp-tls-certs");
    let (cert, key_pem) = self_signed(&tls_dir).expect("certificate");
    let (cert, key_pem) = (
        cert.to_string_lossy().into_owned(),
        key_pem.to_string_lossy().into_owned(),
    );
    let smtp_port = free_port();
    let listen = format!("0.0.0.0:{smtp_port}");
    let d = Daemon::start(
        "smtp-tls",
        port,
        None,
        &[
            "--smtp",
            &listen,
            "--smtp-tls-cert",
            &cert,
            "--smtp-tls-key",
            &key_pem,
        ],
    );
    let key = d.key("example.com");

    let t = swaks(
        "127.0.0.1",
        d.smtp,
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "example.com",
            "--auth-password",
            &key,
            "--from",
            "app@example.com",
            "--to",
            "rcpt@dest.example",
            "--header",
            "Subject: via smtp",
        ],
    );
    assert!(t.contains("220 2.0.0 Ready to start TLS"), "{t}");
    let id = queued_id(&t).unwrap_or_else(|| panic!("not queued: {t}"));
    let m = got
        .recv_timeout(Duration::from_secs(30))
        .expect("delivered to the sink");
    assert_eq!(m.rcpt_to, vec!["<rcpt@dest.example>".to_string()]);
    assert!(m.data.contains("Subject: via smtp"), "{}", m.data);
    let v = d.wait_status(&key, &id, "delivered");
    assert_eq!(v["source"], "smtp", "{v}");

    // A wrong password: 535.
    let t = swaks(
        "127.0.0.1",
        d.smtp,
        &[
            "--tls",
            "--auth",
            "LOGIN",
            "--auth-user",
            "example.com",
            "--auth-password",
            "op_wrong",
            "--from",
            "app@example.com",
            "--to",
            "rcpt@dest.example",
        ],
    );
    assert!(t.contains("535 5.7.8"), "{t}");
    // The right key for another tenant's name: refused too.
    let t = swaks(
        "127.0.0.1",
        d.smtp,
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "other.example",
            "--auth-password",
            &key,
            "--from",
            "app@other.example",
            "--to",
            "rcpt@dest.example",
        ],
    );
    assert!(t.contains("535"), "{t}");

    // From a non-loopback address, AUTH is not offered before TLS, and works after it.
    if let Some(ip) = non_loopback_ip() {
        let t = swaks(
            &ip,
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
                "rcpt@dest.example",
            ],
        );
        assert!(queued_id(&t).is_none(), "plaintext AUTH accepted: {t}");
        assert!(
            t.contains("did not advertise authentication")
                || t.contains("538")
                || t.contains("530"),
            "{t}"
        );
        let t = swaks(
            &ip,
            d.smtp,
            &[
                "--tls",
                "--auth",
                "PLAIN",
                "--auth-user",
                "example.com",
                "--auth-password",
                &key,
                "--from",
                "app@example.com",
                "--to",
                "rcpt@dest.example",
            ],
        );
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
    if !require("swaks", have("swaks")) {
        return;
    }
    let (port, _got) = smtp_sink();
    let d = Daemon::start(
        "smtp-relay",
        port,
        None,
        &["--trusted-networks", "127.0.0.2/32"],
    );
    let key = d.key("example.com");

    // No AUTH from an untrusted client: 530, whatever the sender.
    let t = swaks(
        "127.0.0.1",
        d.smtp,
        &[
            "--from",
            "app@example.com",
            "--to",
            "victim@elsewhere.example",
        ],
    );
    assert!(t.contains("530 5.7.0"), "{t}");
    assert!(queued_id(&t).is_none());
    // Authenticated, but a sender outside the tenant's domain: 553.
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
            "ceo@bank.example",
            "--to",
            "victim@elsewhere.example",
        ],
    );
    assert!(t.contains("553 5.7.1"), "{t}");
    assert!(queued_id(&t).is_none());
    // A trusted client (connecting from 127.0.0.2) needs no AUTH for a known tenant's
    // sender...
    let t = swaks(
        "127.0.0.1",
        d.smtp,
        &[
            "--local-interface",
            "127.0.0.2",
            "--from",
            "app@example.com",
            "--to",
            "rcpt@dest.example",
        ],
    );
    assert!(queued_id(&t).is_some(), "{t}");
    // ...but an unknown sender domain is refused even there.
    let t = swaks(
        "127.0.0.1",
        d.smtp,
        &[
            "--local-interface",
            "127.0.0.2",
            "--from",
            "app@unknown.example",
            "--to",
            "rcpt@dest.example",
        ],
    );
    assert!(t.contains("550 5.7.1"), "{t}");
}

#[test]
fn pipelining_oversize_and_overlong_lines() {
    if !require("swaks", have("swaks")) {
        return;
    }
    let (port, got) = smtp_sink();
    let d = Daemon::start("smtp-limits", port, Some("max_message_size = 20000\n"), &[]);
    let key = d.key("example.com");
    let auth = [
        "--auth",
        "PLAIN",
        "--auth-user",
        "example.com",
        "--auth-password",
        key.as_str(),
    ];

    // PIPELINING: the whole envelope in one go.
    let mut args: Vec<&str> = auth.to_vec();
    args.extend([
        "--pipeline",
        "--from",
        "app@example.com",
        "--to",
        "a@dest.example,b@dest.example,c@dest.example",
    ]);
    let t = swaks("127.0.0.1", d.smtp, &args);
    assert!(t.contains("PIPELINING"), "{t}");
    let id = queued_id(&t).unwrap_or_else(|| panic!("{t}"));
    let m = got
        .recv_timeout(Duration::from_secs(30))
        .expect("delivered");
    assert_eq!(m.rcpt_to.len(), 3);
    d.wait_status(&key, &id, "delivered");

    // A message over max_message_size: 552, nothing queued.
    let body = "x".repeat(70);
    let big: String = std::iter::repeat_n(body.as_str(), 400)
        .collect::<Vec<_>>()
        .join("\n");
    let mut args: Vec<&str> = auth.to_vec();
    args.extend([
        "--from",
        "app@example.com",
        "--to",
        "a@dest.example",
        "--body",
        big.as_str(),
    ]);
    let t = swaks("127.0.0.1", d.smtp, &args);
    assert!(t.contains("552 5.3.4"), "{t}");
    assert!(queued_id(&t).is_none());

    // An overlong command line: 500 5.5.2, and the session goes on.
    let mut s = TcpStream::connect(("127.0.0.1", d.smtp)).expect("connect");
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
    if !require("swaks", have("swaks")) {
        return;
    }
    let (port, _got) = smtp_sink();
    let d = Daemon::start(
        "ratelimit",
        port,
        Some("[limits]\nmessages_per_minute = 2\n"),
        &[],
    );
    let key = d.key("example.com");
    let body = r#"{"from":"app@example.com","to":["a@dest.example"],"text":"hi"}"#;
    for _ in 0..2 {
        let (s, _, text) = http_full("POST", &d.url("/v1/messages"), Some(&key), Some(body));
        assert_eq!(s, 202, "{text}");
    }
    let (s, retry_after, text) = http_full("POST", &d.url("/v1/messages"), Some(&key), Some(body));
    assert_eq!(s, 429, "{text}");
    assert!(text.contains("rate_limited"), "{text}");
    let secs: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!((1..=60).contains(&secs), "{secs}");
    // Reads are not limited.
    let (s, _) = http("GET", &d.url("/v1/messages"), Some(&key), None);
    assert_eq!(s, 200);
    // The same tenant over SMTP shares the allowance: 451 4.7.1.
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
            "a@dest.example",
        ],
    );
    assert!(t.contains("451 4.7.1"), "{t}");
    assert!(queued_id(&t).is_none());
    // Another tenant is not affected.
    let other = d.key("other.example");
    let (s, _) = http(
        "POST",
        &d.url("/v1/messages"),
        Some(&other),
        Some(r#"{"from":"app@other.example","to":["a@dest.example"],"text":"hi"}"#),
    );
    assert_eq!(s, 202);
}
