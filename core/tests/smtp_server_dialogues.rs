//! Scripted client dialogues against the SMTP submission server session: byte-for-byte
//! replies, exact action and event order.
#![allow(clippy::unwrap_used)]

mod dialogue;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use outpost_core::ids::{MessageId, TenantId};
use outpost_core::io::{Receipt, SubmitError, SubmitErrorKind};
use outpost_core::smtp::server::{
    MAX_AUTH_FAILURES, MAX_BUFFERED_INPUT, MAX_ERRORS, MAX_PENDING_OUTPUT,
};
use outpost_core::smtp::{AuthedTenant, ServerAction, ServerConfig, ServerEvent, ServerSession};
use outpost_core::status::MessageStatus;
use outpost_core::time::Time;

use ServerAction::{Close, StartTls};
use dialogue::{T0, actions, events, send};

const HOST: &str = "mx.outpost.test";
const GREETING: &str = "220 mx.outpost.test ESMTP outpost\r\n";

fn config() -> ServerConfig {
    ServerConfig {
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(180),
        ..ServerConfig::new(HOST)
    }
}

fn tenant() -> AuthedTenant {
    AuthedTenant {
        tenant: TenantId(7),
        domain: "example.com".into(),
    }
}

/// A connected session with its greeting checked.
fn connected(config: ServerConfig) -> ServerSession {
    let mut s = ServerSession::new(config, T0);
    assert_eq!(s.deadline(), None);
    s.on_connected(T0);
    assert_eq!(actions(&mut s), vec![send(GREETING)]);
    s
}

/// Feeds `client`; checks the bytes sent back (all of them, in one `Send`, or nothing)
/// and that no event was emitted.
fn step(s: &mut ServerSession, client: &str, want: &str) {
    s.on_bytes(T0, client.as_bytes());
    let want_actions = if want.is_empty() {
        vec![]
    } else {
        vec![send(want)]
    };
    assert_eq!(actions(s), want_actions, "reply to {client:?}");
    assert_eq!(events(s), vec![], "events after {client:?}");
}

const EHLO_PLAIN: &str = "250-mx.outpost.test\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n\
250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n";
const EHLO_STARTTLS: &str = "250-mx.outpost.test\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n\
250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n";
const EHLO_AUTH: &str = "250-mx.outpost.test\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n\
250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n";
const EHLO_STARTTLS_AUTH: &str = "250-mx.outpost.test\r\n250-PIPELINING\r\n\
250-SIZE 10485760\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n\
250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n";

fn plain(user: &str, pass: &str) -> String {
    B64.encode(format!("\0{user}\0{pass}"))
}

fn auth_request(user: &str, pass: &str) -> ServerEvent {
    ServerEvent::AuthRequest {
        username: user.into(),
        password: pass.into(),
    }
}

/// AUTH PLAIN as u/p, which the shell accepts as `tenant()`.
fn auth_ok(s: &mut ServerSession) {
    s.on_bytes(T0, format!("AUTH PLAIN {}\r\n", plain("u", "p")).as_bytes());
    assert_eq!(actions(s), vec![]);
    assert_eq!(events(s), vec![auth_request("u", "p")]);
    s.on_auth_result(T0, Some(tenant()));
    assert_eq!(
        actions(s),
        vec![send("235 2.7.0 Authentication successful\r\n")]
    );
}

/// A session (`config`, AUTH allowed in plaintext as on loopback) that did EHLO, answered
/// with `ehlo`, and authenticated as `tenant()`.
fn authed_with(config: ServerConfig, ehlo: &str) -> ServerSession {
    let mut s = connected(ServerConfig {
        auth_without_tls: true,
        ..config
    });
    step(&mut s, "EHLO client.test\r\n", ehlo);
    auth_ok(&mut s);
    s
}

/// A session that did EHLO and authenticated as `tenant()` (loopback: AUTH in plaintext).
fn authed() -> ServerSession {
    authed_with(config(), EHLO_AUTH)
}

/// The transaction of most tests: MAIL, one RCPT, DATA, all accepted.
const MAIL_RCPT_DATA: &str = "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n";
const DATA_GO: &str = "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n";

fn receipt(id: u128) -> Receipt {
    Receipt {
        id: MessageId(id),
        message_id: "m@example.com".into(),
        status: MessageStatus::Queued,
        recipients: vec![],
    }
}

fn message(rcpt: &[&str], data: &[u8], eight_bit: bool) -> ServerEvent {
    ServerEvent::Message {
        tenant: tenant(),
        mail_from: "a@example.com".into(),
        rcpt_to: rcpt.iter().map(|r| r.to_string()).collect(),
        data: data.to_vec(),
        smtputf8: false,
        eight_bit,
    }
}

// ---------- greeting, EHLO, STARTTLS ----------

#[test]
fn greeting_and_ehlo_without_tls() {
    let mut s = connected(config());
    step(&mut s, "EHLO client.test\r\n", EHLO_PLAIN);
    step(&mut s, "HELO client.test\r\n", "250 mx.outpost.test\r\n");
    step(
        &mut s,
        "STARTTLS\r\n",
        "502 5.5.1 Error: command not implemented\r\n",
    );
    step(&mut s, "EHLO\r\n", "501 5.5.4 Syntax: EHLO hostname\r\n");
    assert!(!s.tls_active());
}

#[test]
fn starttls_then_ehlo_again_offers_auth_not_starttls() {
    let mut s = connected(ServerConfig {
        tls_available: true,
        ..config()
    });
    step(
        &mut s,
        "STARTTLS\r\n",
        "503 5.5.1 Error: send EHLO first\r\n",
    );
    step(&mut s, "EHLO client.test\r\n", EHLO_STARTTLS);
    step(
        &mut s,
        "AUTH PLAIN\r\n",
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n",
    );
    s.on_bytes(T0, b"STARTTLS\r\n");
    assert_eq!(
        actions(&mut s),
        vec![send("220 2.0.0 Ready to start TLS\r\n"), StartTls]
    );
    assert!(!s.wants_input());
    s.on_tls_established(T0);
    assert!(s.tls_active());
    assert_eq!(actions(&mut s), vec![]);
    // RFC 3207 4.2: the EHLO before TLS is forgotten.
    step(
        &mut s,
        "MAIL FROM:<a@example.com>\r\n",
        "503 5.5.1 Error: send HELO/EHLO first\r\n",
    );
    step(&mut s, "EHLO client.test\r\n", EHLO_AUTH);
    step(
        &mut s,
        "STARTTLS\r\n",
        "503 5.5.1 Error: TLS already active\r\n",
    );
}

#[test]
fn starttls_discards_pipelined_plaintext() {
    let mut s = connected(ServerConfig {
        tls_available: true,
        trusted_client: true,
        ..config()
    });
    step(&mut s, "EHLO client.test\r\n", EHLO_STARTTLS);
    s.on_bytes(T0, b"STARTTLS\r\nMAIL FROM:<a@example.com>\r\nRSET\r\n");
    assert_eq!(
        actions(&mut s),
        vec![send("220 2.0.0 Ready to start TLS\r\n"), StartTls]
    );
    // Plaintext during the handshake is dropped as well.
    s.on_bytes(T0, b"NOOP\r\n");
    s.on_tls_established(T0);
    assert_eq!(actions(&mut s), vec![]);
    assert_eq!(events(&mut s), vec![]);
    assert_eq!(s.buffered_len(), 0);
    step(&mut s, "NOOP\r\n", "250 2.0.0 Ok\r\n");
}

#[test]
fn starttls_forgets_authentication() {
    let mut s = connected(ServerConfig {
        tls_available: true,
        auth_without_tls: true,
        ..config()
    });
    step(&mut s, "EHLO client.test\r\n", EHLO_STARTTLS_AUTH);
    auth_ok(&mut s);
    s.on_bytes(T0, b"STARTTLS\r\n");
    assert_eq!(
        actions(&mut s),
        vec![send("220 2.0.0 Ready to start TLS\r\n"), StartTls]
    );
    s.on_tls_established(T0);
    assert_eq!(s.authenticated(), None);
    step(&mut s, "EHLO client.test\r\n", EHLO_AUTH);
    step(
        &mut s,
        "MAIL FROM:<a@example.com>\r\n",
        "530 5.7.0 Authentication required\r\n",
    );
}

#[test]
fn input_before_the_greeting_is_read_after_it() {
    let mut s = ServerSession::new(config(), T0);
    s.on_bytes(T0, b"EHLO client.test\r\nNOOP\r\n");
    assert_eq!(actions(&mut s), vec![]);
    s.on_connected(T0);
    assert_eq!(
        actions(&mut s),
        vec![send(&format!("{GREETING}{EHLO_PLAIN}250 2.0.0 Ok\r\n"))]
    );
}

// ---------- AUTH ----------

#[test]
fn auth_plain_inline() {
    let s = authed();
    assert_eq!(s.authenticated(), Some(&tenant()));
}

#[test]
fn auth_plain_with_continuation_and_authzid() {
    let mut s = connected(ServerConfig {
        auth_without_tls: true,
        ..config()
    });
    step(&mut s, "EHLO client.test\r\n", EHLO_AUTH);
    step(&mut s, "auth plain\r\n", "334 \r\n");
    s.on_bytes(
        T0,
        format!("{}\r\n", B64.encode("user\0user\0secret")).as_bytes(),
    );
    assert_eq!(actions(&mut s), vec![]);
    assert_eq!(events(&mut s), vec![auth_request("user", "secret")]);
    s.on_auth_result(T0, Some(tenant()));
    assert_eq!(
        actions(&mut s),
        vec![send("235 2.7.0 Authentication successful\r\n")]
    );
    step(
        &mut s,
        "AUTH PLAIN\r\n",
        "503 5.5.1 Error: already authenticated\r\n",
    );
}

#[test]
fn auth_plain_for_another_identity_fails_without_asking() {
    let mut s = connected(ServerConfig {
        auth_without_tls: true,
        ..config()
    });
    step(&mut s, "EHLO client.test\r\n", EHLO_AUTH);
    step(
        &mut s,
        &format!("AUTH PLAIN {}\r\n", B64.encode("admin\0user\0secret")),
        "535 5.7.8 Authentication credentials invalid\r\n",
    );
}

#[test]
fn auth_login_with_prompts_and_with_initial_response() {
    let mut s = connected(ServerConfig {
        auth_without_tls: true,
        ..config()
    });
    step(&mut s, "EHLO client.test\r\n", EHLO_AUTH);
    step(&mut s, "AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n");
    step(
        &mut s,
        &format!("{}\r\n", B64.encode("user")),
        "334 UGFzc3dvcmQ6\r\n",
    );
    s.on_bytes(T0, format!("{}\r\n", B64.encode("pw")).as_bytes());
    assert_eq!(events(&mut s), vec![auth_request("user", "pw")]);
    s.on_auth_result(T0, None);
    assert_eq!(
        actions(&mut s),
        vec![send("535 5.7.8 Authentication credentials invalid\r\n")]
    );
    step(
        &mut s,
        &format!("AUTH LOGIN {}\r\n", B64.encode("user")),
        "334 UGFzc3dvcmQ6\r\n",
    );
    s.on_bytes(T0, format!("{}\r\n", B64.encode("pw2")).as_bytes());
    assert_eq!(events(&mut s), vec![auth_request("user", "pw2")]);
    s.on_auth_result(T0, Some(tenant()));
    assert_eq!(
        actions(&mut s),
        vec![send("235 2.7.0 Authentication successful\r\n")]
    );
}

#[test]
fn auth_errors_cancel_unknown_mechanism_bad_base64() {
    let mut s = connected(ServerConfig {
        auth_without_tls: true,
        ..config()
    });
    step(
        &mut s,
        "AUTH PLAIN\r\n",
        "503 5.5.1 Error: send EHLO first\r\n",
    );
    step(&mut s, "EHLO client.test\r\n", EHLO_AUTH);
    step(
        &mut s,
        "AUTH CRAM-MD5\r\n",
        "504 5.5.4 Unrecognized authentication type\r\n",
    );
    step(
        &mut s,
        "AUTH\r\n",
        "501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n",
    );
    step(&mut s, "AUTH PLAIN\r\n", "334 \r\n");
    step(&mut s, "*\r\n", "501 5.7.0 Authentication cancelled\r\n");
    step(&mut s, "AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n");
    step(
        &mut s,
        "not base64!\r\n",
        "501 5.5.2 Cannot decode response\r\n",
    );
    step(
        &mut s,
        &format!("AUTH PLAIN {}\r\n", B64.encode("only-one-part")),
        "501 5.5.2 Invalid authentication data\r\n",
    );
    step(
        &mut s,
        "AUTH PLAIN =\r\n",
        "501 5.5.2 Invalid authentication data\r\n",
    );
    // The session still works.
    step(&mut s, "NOOP\r\n", "250 2.0.0 Ok\r\n");
}

#[test]
fn too_many_failed_authentications_close() {
    let mut s = connected(ServerConfig {
        auth_without_tls: true,
        ..config()
    });
    step(&mut s, "EHLO client.test\r\n", EHLO_AUTH);
    for i in 1..=MAX_AUTH_FAILURES {
        s.on_bytes(
            T0,
            format!("AUTH PLAIN {}\r\n", plain("u", "bad")).as_bytes(),
        );
        assert_eq!(events(&mut s), vec![auth_request("u", "bad")]);
        s.on_auth_result(T0, None);
        if i < MAX_AUTH_FAILURES {
            assert_eq!(
                actions(&mut s),
                vec![send("535 5.7.8 Authentication credentials invalid\r\n")]
            );
        } else {
            assert_eq!(
                actions(&mut s),
                vec![
                    send(
                        "535 5.7.8 Authentication credentials invalid\r\n421 4.7.0 \
                         mx.outpost.test Error: too many failed authentication attempts\r\n"
                    ),
                    Close
                ]
            );
        }
    }
    assert!(s.is_closed());
}

#[test]
fn auth_without_tls_refused_when_not_allowed() {
    let mut s = connected(config());
    step(&mut s, "EHLO client.test\r\n", EHLO_PLAIN);
    step(
        &mut s,
        &format!("AUTH PLAIN {}\r\n", plain("u", "p")),
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n",
    );
}

#[test]
fn debug_output_hides_the_password() {
    let shown = format!("{:?}", auth_request("user", "hunter2"));
    assert!(shown.contains("user"));
    assert!(!shown.contains("hunter2"));
}

// ---------- not an open relay ----------

#[test]
fn unauthenticated_mail_from_is_refused() {
    let mut s = connected(config());
    step(&mut s, "EHLO client.test\r\n", EHLO_PLAIN);
    step(
        &mut s,
        "MAIL FROM:<a@example.com>\r\n",
        "530 5.7.0 Authentication required\r\n",
    );
    step(
        &mut s,
        "RCPT TO:<victim@else.org>\r\n",
        "503 5.5.1 Error: need MAIL command\r\n",
    );
}

#[test]
fn authenticated_sender_must_be_in_the_tenant_domain() {
    let mut s = authed();
    step(
        &mut s,
        "MAIL FROM:<a@other.org>\r\n",
        "553 5.7.1 Sender address not owned by the authenticated user\r\n",
    );
    step(
        &mut s,
        "MAIL FROM:<a@sub.example.com>\r\n",
        "553 5.7.1 Sender address not owned by the authenticated user\r\n",
    );
    step(
        &mut s,
        "MAIL FROM:<>\r\n",
        "553 5.7.1 Null sender not allowed for submission\r\n",
    );
    step(&mut s, "MAIL FROM:<a@EXAMPLE.Com>\r\n", "250 2.1.0 Ok\r\n");
}

#[test]
fn trusted_client_sender_domain_checked_by_the_shell() {
    let mut s = connected(ServerConfig {
        trusted_client: true,
        ..config()
    });
    step(&mut s, "EHLO client.test\r\n", EHLO_PLAIN);
    // Pipelined: nothing is answered until the shell names the tenant.
    s.on_bytes(
        T0,
        b"MAIL FROM:<a@unknown.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n",
    );
    assert_eq!(actions(&mut s), vec![]);
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::SenderCheck {
            domain: "unknown.org".into()
        }]
    );
    assert_eq!(s.deadline(), None);
    s.on_sender_check(T0, None);
    assert_eq!(
        actions(&mut s),
        vec![send(
            "550 5.7.1 Sender domain not allowed\r\n503 5.5.1 Error: need MAIL command\r\n\
             503 5.5.1 Error: need MAIL command\r\n"
        )]
    );
    // A known domain: the transaction sends for the tenant the shell names.
    s.on_bytes(
        T0,
        b"MAIL FROM:<a@Example.com>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n",
    );
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::SenderCheck {
            domain: "example.com".into()
        }]
    );
    s.on_sender_check(T0, Some(tenant()));
    assert_eq!(actions(&mut s), vec![send(DATA_GO)]);
    s.on_bytes(T0, b"Subject: x\r\n\r\nhi\r\n.\r\n");
    assert_eq!(
        events(&mut s),
        vec![message(&["b@x.org"], b"Subject: x\r\n\r\nhi\r\n", false)]
    );
}

#[test]
fn trusted_client_tenant_for_another_domain_is_refused() {
    let mut s = connected(ServerConfig {
        trusted_client: true,
        ..config()
    });
    step(&mut s, "EHLO client.test\r\n", EHLO_PLAIN);
    s.on_bytes(T0, b"MAIL FROM:<a@other.org>\r\n");
    assert_eq!(events(&mut s).len(), 1);
    s.on_sender_check(T0, Some(tenant()));
    assert_eq!(
        actions(&mut s),
        vec![send("550 5.7.1 Sender domain not allowed\r\n")]
    );
}

// ---------- transactions ----------

#[test]
fn pipelined_submission_with_dot_unstuffing() {
    let mut s = authed();
    step(
        &mut s,
        "MAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<b@x.org>\r\n\
         RCPT TO:<C@Y.ORG>\r\nDATA\r\n",
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
    );
    s.on_bytes(
        T0,
        b"Subject: dots\r\n\r\n..leading\r\n..\r\nbare\nend\r\n.\r\n",
    );
    assert_eq!(actions(&mut s), vec![]);
    assert_eq!(
        events(&mut s),
        vec![message(
            &["b@x.org", "C@y.org"],
            b"Subject: dots\r\n\r\n.leading\r\n.\r\nbare\r\nend\r\n",
            true
        )]
    );
    assert!(!s.wants_input());
    assert_eq!(s.deadline(), None);
    // The reply waits for durability; pipelined QUIT waits behind it.
    s.on_bytes(T0, b"QUIT\r\n");
    assert_eq!(actions(&mut s), vec![]);
    s.on_message_result(T0, Ok(receipt(42)));
    assert_eq!(
        actions(&mut s),
        vec![
            send(&format!(
                "250 2.0.0 Ok: queued as {}\r\n221 2.0.0 Bye\r\n",
                MessageId(42)
            )),
            Close
        ]
    );
    assert!(s.is_closed());
}

#[test]
fn session_continues_after_a_message() {
    let mut s = authed();
    step(&mut s, MAIL_RCPT_DATA, DATA_GO);
    s.on_bytes(T0, b"x\r\n.\r\nMAIL FROM:<a@example.com>\r\n");
    assert_eq!(events(&mut s), vec![message(&["b@x.org"], b"x\r\n", false)]);
    s.on_message_result(T0, Ok(receipt(1)));
    assert_eq!(
        actions(&mut s),
        vec![send(&format!(
            "250 2.0.0 Ok: queued as {}\r\n250 2.1.0 Ok\r\n",
            MessageId(1)
        ))]
    );
    step(&mut s, "RCPT TO:<c@x.org>\r\n", "250 2.1.5 Ok\r\n");
}

#[test]
fn rset_mid_transaction() {
    let mut s = authed();
    step(
        &mut s,
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.org>\r\nRSET\r\nDATA\r\n",
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n503 5.5.1 Error: need MAIL command\r\n",
    );
    step(
        &mut s,
        "MAIL FROM:<a@example.com>\r\nMAIL FROM:<a@example.com>\r\n",
        "250 2.1.0 Ok\r\n503 5.5.1 Error: nested MAIL command\r\n",
    );
    step(
        &mut s,
        "DATA\r\n",
        "554 5.5.1 Error: no valid recipients\r\n",
    );
}

#[test]
fn sequence_and_syntax_errors() {
    let mut s = connected(ServerConfig {
        trusted_client: true,
        ..config()
    });
    step(
        &mut s,
        "MAIL FROM:<a@example.com>\r\n",
        "503 5.5.1 Error: send HELO/EHLO first\r\n",
    );
    step(&mut s, "HELO client.test\r\n", "250 mx.outpost.test\r\n");
    step(
        &mut s,
        "MAIL FROM:<a@example.com> SIZE=10\r\n",
        "555 5.5.4 Parameters need EHLO\r\n",
    );
    step(&mut s, "EHLO client.test\r\n", EHLO_PLAIN);
    step(
        &mut s,
        "MAIL FROM:a@example.com\r\n",
        "501 5.5.4 Syntax: MAIL FROM:<address>\r\n",
    );
    step(
        &mut s,
        "MAIL FROM:<a@example.com> FOO=1\r\n",
        "555 5.5.4 Unsupported parameter\r\n",
    );
    step(
        &mut s,
        "MAIL FROM:<a@example.com> BODY=BINARYMIME\r\n",
        "555 5.5.4 Unsupported BODY type\r\n",
    );
    step(
        &mut s,
        "MAIL FROM:<a@example.com> SIZE=abc\r\n",
        "501 5.5.4 Bad SIZE parameter\r\n",
    );
    step(
        &mut s,
        "MAIL FROM:<a@example.com> SMTPUTF8 SMTPUTF8\r\n",
        "501 5.5.4 Bad or repeated parameter\r\n",
    );
    step(
        &mut s,
        "MAIL FROM:<no-at-sign>\r\n",
        "553 5.1.7 Bad sender address syntax\r\n",
    );
    step(
        &mut s,
        "MAIL FROM:<j\u{f6}rg@example.com>\r\n",
        "553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n",
    );
    step(&mut s, "DATA x\r\n", "501 5.5.4 Syntax: DATA\r\n");
    step(&mut s, "VRFY\r\n", "501 5.5.4 Syntax: VRFY address\r\n");
    step(
        &mut s,
        "VRFY someone\r\n",
        "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n",
    );
    step(
        &mut s,
        "EXPN list\r\n",
        "502 5.5.1 Error: command not implemented\r\n",
    );
    step(&mut s, "RSET now\r\n", "501 5.5.4 Syntax: RSET\r\n");
}

#[test]
fn smtputf8_submission() {
    let mut s = authed();
    s.on_bytes(
        T0,
        "MAIL FROM:<j\u{f6}rg@example.com> SMTPUTF8\r\nRCPT TO:<\u{fc}@b\u{fc}cher.example>\r\nDATA\r\n"
            .as_bytes(),
    );
    assert_eq!(actions(&mut s), vec![send(DATA_GO)]);
    s.on_bytes(T0, b"hi\r\n.\r\n");
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::Message {
            tenant: tenant(),
            mail_from: "j\u{f6}rg@example.com".into(),
            rcpt_to: vec!["\u{fc}@xn--bcher-kva.example".into()],
            data: b"hi\r\n".to_vec(),
            smtputf8: true,
            eight_bit: false,
        }]
    );
}

#[test]
fn bad_recipients() {
    let mut s = authed();
    step(
        &mut s,
        "RCPT TO:<b@x.org>\r\n",
        "503 5.5.1 Error: need MAIL command\r\n",
    );
    step(&mut s, "MAIL FROM:<a@example.com>\r\n", "250 2.1.0 Ok\r\n");
    step(
        &mut s,
        "RCPT TO:b@x.org\r\n",
        "501 5.5.4 Syntax: RCPT TO:<address>\r\n",
    );
    step(
        &mut s,
        "RCPT TO:<not-an-address>\r\n",
        "553 5.1.3 Bad recipient address syntax\r\n",
    );
    step(
        &mut s,
        "RCPT TO:<>\r\n",
        "553 5.1.3 Bad recipient address syntax\r\n",
    );
    step(
        &mut s,
        "RCPT TO:<b@x.org> NOTIFY=NEVER\r\n",
        "555 5.5.4 Unsupported parameter\r\n",
    );
    step(
        &mut s,
        "RCPT TO:<\u{fc}@x.org>\r\n",
        "553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n",
    );
    step(&mut s, "RCPT TO: <b@x.org>\r\n", "250 2.1.5 Ok\r\n");
}

#[test]
fn too_many_recipients() {
    let mut s = authed_with(
        ServerConfig {
            max_recipients: 2,
            ..config()
        },
        EHLO_AUTH,
    );
    step(
        &mut s,
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<r1@x.org>\r\nRCPT TO:<r2@x.org>\r\n\
         RCPT TO:<r3@x.org>\r\nDATA\r\n",
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Too many recipients\r\n\
         354 End data with <CR><LF>.<CR><LF>\r\n",
    );
    s.on_bytes(T0, b"x\r\n.\r\n");
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::Message {
            tenant: tenant(),
            mail_from: "a@example.com".into(),
            rcpt_to: vec!["r1@x.org".into(), "r2@x.org".into()],
            data: b"x\r\n".to_vec(),
            smtputf8: false,
            eight_bit: false,
        }]
    );
}

// ---------- limits ----------

/// An authenticated session with a small size limit and an open transaction (after 354).
fn in_data(max_message_size: u64) -> ServerSession {
    let ehlo = EHLO_AUTH.replace("SIZE 10485760", &format!("SIZE {max_message_size}"));
    let mut s = authed_with(
        ServerConfig {
            max_message_size,
            ..config()
        },
        &ehlo,
    );
    step(&mut s, MAIL_RCPT_DATA, DATA_GO);
    s
}

#[test]
fn oversize_declared_and_actual() {
    let mut s = in_data(100);
    for _ in 0..50 {
        s.on_bytes(T0, &[b'y'; 50]);
        s.on_bytes(T0, b"\r\n");
        assert!(s.message_len() <= 100);
        assert_eq!(actions(&mut s), vec![]);
    }
    step(
        &mut s,
        ".\r\n",
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n",
    );
    step(
        &mut s,
        "MAIL FROM:<a@example.com> SIZE=101\r\n",
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n",
    );
    step(
        &mut s,
        "MAIL FROM:<a@example.com> SIZE=99999999999999999999999\r\n",
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n",
    );
    step(
        &mut s,
        "MAIL FROM:<a@example.com> SIZE=100\r\n",
        "250 2.1.0 Ok\r\n",
    );
}

#[test]
fn overlong_command_lines() {
    let mut s = connected(config());
    // 512 octets with the CRLF: fine.
    let ok = format!("NOOP {}\r\n", "x".repeat(505));
    assert_eq!(ok.len(), 512);
    step(&mut s, &ok, "250 2.0.0 Ok\r\n");
    let long = format!("NOOP {}\r\nNOOP\r\n", "x".repeat(506));
    step(
        &mut s,
        &long,
        "500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n",
    );
    // A huge line in small pieces: memory stays bounded, one reply at its end.
    for _ in 0..1000 {
        s.on_bytes(T0, &[b'A'; 1000]);
        assert!(s.buffered_len() <= 512);
        assert_eq!(actions(&mut s), vec![]);
    }
    step(&mut s, "\r\n", "500 5.5.2 Error: line too long\r\n");
    step(&mut s, "NOOP\r\n", "250 2.0.0 Ok\r\n");
}

#[test]
fn overlong_data_line() {
    let mut s = in_data(1_000_000);
    s.on_bytes(T0, &[b'z'; 999]);
    step(&mut s, "\r\n.\r\n", "500 5.5.2 Line too long\r\n");
    // 998 is fine.
    step(&mut s, MAIL_RCPT_DATA, DATA_GO);
    s.on_bytes(T0, &[b'z'; 998]);
    s.on_bytes(T0, b"\r\n.\r\n");
    assert_eq!(events(&mut s).len(), 1);
}

#[test]
fn nul_in_data_refused() {
    let mut s = in_data(1000);
    step(
        &mut s,
        "a\0b\r\n.\r\n",
        "554 5.6.0 Message contains NUL characters\r\n",
    );
}

#[test]
fn bare_lf_ends_data() {
    let mut s = in_data(1000);
    s.on_bytes(T0, b"a\nb\n.\n");
    assert_eq!(
        events(&mut s),
        vec![message(&["b@x.org"], b"a\r\nb\r\n", false)]
    );
}

// ---------- answers ----------

fn refused(kind: SubmitErrorKind, field: Option<&str>) -> SubmitError {
    SubmitError {
        kind,
        code: "code".into(),
        message: "why\r\nnot".into(),
        field: field.map(str::to_string),
    }
}

#[test]
fn message_result_error_mapping() {
    let cases: Vec<(Result<Receipt, SubmitError>, &str)> = vec![
        (
            Err(refused(SubmitErrorKind::Invalid, Some("raw"))),
            "550 5.6.0 why not\r\n",
        ),
        (
            Err(refused(SubmitErrorKind::Invalid, None)),
            "550 5.6.0 why not\r\n",
        ),
        (
            Err(refused(SubmitErrorKind::Invalid, Some("mail_from"))),
            "553 5.1.7 why not\r\n",
        ),
        (
            Err(refused(SubmitErrorKind::Invalid, Some("rcpt_to[0]"))),
            "553 5.1.3 why not\r\n",
        ),
        (
            Err(refused(SubmitErrorKind::Forbidden, Some("raw"))),
            "553 5.7.1 why not\r\n",
        ),
        (
            Err(refused(SubmitErrorKind::TooLarge, None)),
            "552 5.3.4 why not\r\n",
        ),
        (
            Err(refused(SubmitErrorKind::Conflict, None)),
            "554 5.0.0 why not\r\n",
        ),
        (
            Err(refused(SubmitErrorKind::Unavailable, None)),
            "451 4.3.0 Temporary failure storing the message, try again later\r\n",
        ),
    ];
    for (result, want) in cases {
        let mut s = in_data(1000);
        s.on_bytes(T0, b"x\r\n.\r\n");
        assert_eq!(events(&mut s).len(), 1);
        s.on_message_result(T0, result);
        assert_eq!(actions(&mut s), vec![send(want)]);
        // The transaction is over.
        step(
            &mut s,
            "RCPT TO:<b@x.org>\r\n",
            "503 5.5.1 Error: need MAIL command\r\n",
        );
    }
}

#[test]
fn rate_limited() {
    let mut s = in_data(1000);
    s.on_bytes(T0, b"x\r\n.\r\n");
    assert_eq!(events(&mut s).len(), 1);
    s.on_rate_limited(T0);
    assert_eq!(
        actions(&mut s),
        vec![send("451 4.7.1 Rate limit exceeded, try again later\r\n")]
    );
    // Also as the answer to a sender check.
    let mut s = connected(ServerConfig {
        trusted_client: true,
        ..config()
    });
    step(&mut s, "EHLO c\r\n", EHLO_PLAIN);
    s.on_bytes(T0, b"MAIL FROM:<a@example.com>\r\n");
    assert_eq!(events(&mut s).len(), 1);
    s.on_rate_limited(T0);
    assert_eq!(
        actions(&mut s),
        vec![send("451 4.7.1 Rate limit exceeded, try again later\r\n")]
    );
    step(
        &mut s,
        "RCPT TO:<b@x.org>\r\n",
        "503 5.5.1 Error: need MAIL command\r\n",
    );
}

#[test]
fn answers_out_of_turn_are_ignored() {
    let mut s = authed();
    s.on_auth_result(T0, Some(tenant()));
    s.on_sender_check(T0, Some(tenant()));
    s.on_message_result(T0, Ok(receipt(1)));
    s.on_rate_limited(T0);
    assert_eq!(actions(&mut s), vec![]);
    step(&mut s, "NOOP\r\n", "250 2.0.0 Ok\r\n");
}

// ---------- errors, timeouts, the end ----------

#[test]
fn bad_command_then_recovery() {
    let mut s = connected(config());
    step(
        &mut s,
        "FOO bar\r\n",
        "500 5.5.2 Error: command not recognized\r\n",
    );
    step(
        &mut s,
        "\r\n",
        "500 5.5.2 Error: command not recognized\r\n",
    );
    step(
        &mut s,
        "\u{1b}[31m\r\n",
        "500 5.5.2 Error: control characters in command\r\n",
    );
    s.on_bytes(T0, b"\xff\xfe\r\n");
    assert_eq!(
        actions(&mut s),
        vec![send("500 5.5.2 Error: bad UTF-8 syntax\r\n")]
    );
    step(&mut s, "noop\r\n", "250 2.0.0 Ok\r\n");
    step(&mut s, "EHLO c\n", EHLO_PLAIN);
}

#[test]
fn too_many_errors_close() {
    let mut s = connected(config());
    let mut input = String::new();
    for _ in 0..MAX_ERRORS + 5 {
        input.push_str("BOGUS\r\n");
    }
    let mut want = "500 5.5.2 Error: command not recognized\r\n".repeat(MAX_ERRORS as usize);
    want.push_str("421 4.7.0 mx.outpost.test Error: too many errors\r\n");
    s.on_bytes(T0, input.as_bytes());
    assert_eq!(actions(&mut s), vec![send(&want), Close]);
    assert!(s.is_closed());
    s.on_bytes(T0, b"NOOP\r\n");
    s.on_timer(Time::MAX);
    assert_eq!(actions(&mut s), vec![]);
}

#[test]
fn command_timeout() {
    let mut s = connected(config());
    let t = T0.plus(Duration::from_secs(300));
    assert_eq!(s.deadline(), Some(t));
    s.on_timer(t.minus(Duration::from_millis(1)));
    assert_eq!(actions(&mut s), vec![]);
    // A complete command restarts the timer; a partial one does not.
    let t1 = T0.plus(Duration::from_secs(100));
    s.on_bytes(t1, b"NOOP\r\nNO");
    assert_eq!(actions(&mut s), vec![send("250 2.0.0 Ok\r\n")]);
    let t2 = t1.plus(Duration::from_secs(300));
    assert_eq!(s.deadline(), Some(t2));
    s.on_bytes(t2.minus(Duration::from_secs(1)), b"O");
    assert_eq!(s.deadline(), Some(t2));
    s.on_timer(t2);
    assert_eq!(
        actions(&mut s),
        vec![
            send("421 4.4.2 mx.outpost.test Error: timeout exceeded\r\n"),
            Close
        ]
    );
    assert_eq!(s.deadline(), None);
}

#[test]
fn data_timeout_and_no_deadline_while_waiting() {
    let mut s = in_data(1000);
    assert_eq!(s.deadline(), Some(T0.plus(Duration::from_secs(180))));
    let t1 = T0.plus(Duration::from_secs(170));
    s.on_bytes(t1, b"partial line");
    let t2 = t1.plus(Duration::from_secs(180));
    assert_eq!(s.deadline(), Some(t2));
    s.on_bytes(t1, b"\r\n.\r\n");
    assert_eq!(events(&mut s).len(), 1);
    assert_eq!(s.deadline(), None);
    s.on_timer(Time::MAX);
    assert_eq!(actions(&mut s), vec![]);
    s.on_message_result(t2, Ok(receipt(3)));
    actions(&mut s);
    assert_eq!(s.deadline(), Some(t2.plus(Duration::from_secs(300))));

    let mut s = in_data(1000);
    s.on_timer(T0.plus(Duration::from_secs(180)));
    assert_eq!(
        actions(&mut s),
        vec![
            send("421 4.4.2 mx.outpost.test Error: timeout exceeded\r\n"),
            Close
        ]
    );
}

#[test]
fn quit() {
    let mut s = connected(config());
    s.on_bytes(T0, b"QUIT\r\nNOOP\r\n");
    assert_eq!(actions(&mut s), vec![send("221 2.0.0 Bye\r\n"), Close]);
    s.on_bytes(T0, b"NOOP\r\n");
    assert_eq!(actions(&mut s), vec![]);
    assert!(s.is_closed());
}

#[test]
fn disconnect_ends_silently() {
    let mut s = in_data(1000);
    s.on_bytes(T0, b"x\r\n.\r\n");
    assert_eq!(events(&mut s).len(), 1);
    s.on_disconnected(T0);
    s.on_message_result(T0, Ok(receipt(1)));
    assert_eq!(actions(&mut s), vec![]);
    assert!(s.is_closed());
    assert_eq!(s.deadline(), None);
}

#[test]
fn flooding_while_a_question_is_outstanding_closes() {
    let mut s = in_data(1000);
    s.on_bytes(T0, b"x\r\n.\r\n");
    assert_eq!(events(&mut s).len(), 1);
    let flood = vec![b'N'; 100_000];
    s.on_bytes(T0, &flood);
    assert_eq!(
        actions(&mut s),
        vec![
            send("421 4.7.0 mx.outpost.test Error: too much pipelined input\r\n"),
            Close
        ]
    );
    assert_eq!(s.buffered_len(), 0);
}

#[test]
fn reply_amplification_is_bounded() {
    let ehlo = b"EHLO c\r\n";
    let chunk: Vec<u8> = ehlo.iter().copied().cycle().take(8 * 8192).collect();
    // Read in shell-sized pieces and drained in between: every EHLO is answered.
    let mut s = connected(config());
    let mut written = 0;
    for _ in 0..4 {
        s.on_bytes(T0, &chunk);
        while let Some(a) = s.poll_action() {
            let ServerAction::Send(b) = a else {
                panic!("unexpected {a:?}")
            };
            assert!(b.len() <= MAX_PENDING_OUTPUT + 1024);
            written += b.len();
        }
    }
    assert!(!s.is_closed());
    assert_eq!(written, 4 * 8192 * EHLO_PLAIN.len());
    // One huge read without draining: the output held stays bounded, and the client
    // that does not read its replies is cut off.
    let mut s = connected(config());
    let huge: Vec<u8> = ehlo
        .iter()
        .copied()
        .cycle()
        .take(16 * MAX_BUFFERED_INPUT)
        .collect();
    s.on_bytes(T0, &huge);
    let acts = actions(&mut s);
    assert_eq!(acts.last(), Some(&Close));
    let total: usize = acts
        .iter()
        .map(|a| match a {
            ServerAction::Send(b) => b.len(),
            _ => 0,
        })
        .sum();
    assert!(total <= MAX_PENDING_OUTPUT + 1024, "{total}");
}

// ---------- shutdown (RFC 5321 3.8, 4.2.3) ----------

const SHUTDOWN: &str =
    "421 4.3.2 mx.outpost.test Service shutting down, closing transmission channel\r\n";

#[test]
fn shutdown_before_the_greeting_answers_421_and_closes() {
    let mut s = ServerSession::new(config(), T0);
    s.on_bytes(T0, b"EHLO early.test\r\n");
    s.on_shutdown(T0);
    assert_eq!(actions(&mut s), vec![]);
    s.on_connected(T0);
    assert_eq!(actions(&mut s), vec![send(SHUTDOWN), Close]);
    assert_eq!(events(&mut s), vec![]);
    assert!(s.is_closed());
    assert_eq!(s.deadline(), None);
}

#[test]
fn shutdown_answers_the_next_command_421_and_closes() {
    let mut s = authed();
    step(&mut s, "MAIL FROM:<a@example.com>\r\n", "250 2.1.0 Ok\r\n");
    s.on_shutdown(T0);
    // Nothing is said until the client speaks.
    assert_eq!(actions(&mut s), vec![]);
    assert!(!s.is_closed());
    s.on_bytes(T0, b"RCPT TO:<b@x.org>\r\nDATA\r\n");
    assert_eq!(actions(&mut s), vec![send(SHUTDOWN), Close]);
    assert_eq!(events(&mut s), vec![]);
    assert!(s.is_closed());
    // Half a command line waits for its end; then the 421.
    let mut s = connected(config());
    s.on_shutdown(T0);
    s.on_bytes(T0, b"EHLO cli");
    assert_eq!(actions(&mut s), vec![]);
    s.on_bytes(T0, b"ent.test\r\n");
    assert_eq!(actions(&mut s), vec![send(SHUTDOWN), Close]);
    // An overlong line is a command too.
    let mut s = connected(config());
    s.on_shutdown(T0);
    s.on_bytes(T0, format!("NOOP {}\r\n", "x".repeat(600)).as_bytes());
    assert_eq!(actions(&mut s), vec![send(SHUTDOWN), Close]);
}

#[test]
fn shutdown_still_says_bye_to_quit() {
    let mut s = connected(config());
    s.on_shutdown(T0);
    s.on_bytes(T0, b"quit \r\nNOOP\r\n");
    assert_eq!(actions(&mut s), vec![send("221 2.0.0 Bye\r\n"), Close]);
}

#[test]
fn shutdown_during_an_auth_exchange_answers_421() {
    let mut s = connected(ServerConfig {
        auth_without_tls: true,
        ..config()
    });
    step(&mut s, "EHLO client.test\r\n", EHLO_AUTH);
    step(&mut s, "AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n");
    s.on_shutdown(T0);
    // The response line (even one reading QUIT) is not a QUIT command.
    s.on_bytes(T0, b"QUIT\r\n");
    assert_eq!(actions(&mut s), vec![send(SHUTDOWN), Close]);
    assert_eq!(events(&mut s), vec![]);
}

#[test]
fn shutdown_mid_data_refuses_the_message_with_421() {
    let mut s = in_data(1000);
    s.on_bytes(T0, b"Subject: x\r\n\r\nbody\r\n");
    s.on_shutdown(T0);
    assert_eq!(actions(&mut s), vec![]);
    // The end of DATA: the message was not handed over, so it is not stored; the
    // client keeps it and tries again later.
    s.on_bytes(T0, b".\r\nQUIT\r\n");
    assert_eq!(events(&mut s), vec![]);
    assert_eq!(actions(&mut s), vec![send(SHUTDOWN), Close]);
    assert!(s.is_closed());
}

#[test]
fn shutdown_keeps_the_real_answer_of_a_message_handed_over() {
    let mut s = in_data(1000);
    s.on_bytes(T0, b"x\r\n.\r\nNOOP\r\n");
    assert_eq!(events(&mut s), vec![message(&["b@x.org"], b"x\r\n", false)]);
    s.on_shutdown(T0);
    assert_eq!(actions(&mut s), vec![]);
    // The store's answer, then the 421 for the command pipelined behind it.
    s.on_message_result(T0, Ok(receipt(9)));
    assert_eq!(
        actions(&mut s),
        vec![
            send(&format!(
                "250 2.0.0 Ok: queued as {}\r\n{SHUTDOWN}",
                MessageId(9)
            )),
            Close
        ]
    );
    // A refusal is answered as such too (here without anything pipelined: the session
    // waits for the next command).
    let mut s = in_data(1000);
    s.on_bytes(T0, b"x\r\n.\r\n");
    assert_eq!(events(&mut s).len(), 1);
    s.on_shutdown(T0);
    s.on_message_result(T0, Err(refused(SubmitErrorKind::Unavailable, None)));
    assert_eq!(
        actions(&mut s),
        vec![send(
            "451 4.3.0 Temporary failure storing the message, try again later\r\n"
        )]
    );
    assert!(!s.is_closed());
    step_closed(&mut s, "MAIL FROM:<a@example.com>\r\n");
}

/// Feeds `client` to a session that is shutting down: `421 4.3.2` and `Close`.
fn step_closed(s: &mut ServerSession, client: &str) {
    s.on_bytes(T0, client.as_bytes());
    assert_eq!(
        actions(s),
        vec![send(SHUTDOWN), Close],
        "reply to {client:?}"
    );
    assert!(s.is_closed());
}

#[test]
fn shutdown_lets_pending_auth_and_sender_answers_through() {
    let mut s = connected(ServerConfig {
        auth_without_tls: true,
        ..config()
    });
    step(&mut s, "EHLO client.test\r\n", EHLO_AUTH);
    s.on_bytes(T0, format!("AUTH PLAIN {}\r\n", plain("u", "p")).as_bytes());
    assert_eq!(events(&mut s), vec![auth_request("u", "p")]);
    s.on_shutdown(T0);
    s.on_auth_result(T0, Some(tenant()));
    assert_eq!(
        actions(&mut s),
        vec![send("235 2.7.0 Authentication successful\r\n")]
    );
    step_closed(&mut s, "MAIL FROM:<a@example.com>\r\n");

    let mut s = connected(ServerConfig {
        trusted_client: true,
        ..config()
    });
    step(&mut s, "EHLO client.test\r\n", EHLO_PLAIN);
    s.on_bytes(T0, b"MAIL FROM:<a@example.com>\r\n");
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::SenderCheck {
            domain: "example.com".into()
        }]
    );
    s.on_shutdown(T0);
    s.on_sender_check(T0, Some(tenant()));
    assert_eq!(actions(&mut s), vec![send("250 2.1.0 Ok\r\n")]);
    step_closed(&mut s, "RCPT TO:<b@x.org>\r\n");
}
