//! Scripted server dialogues against the SMTP client session: byte-for-byte commands,
//! exact event and action order.
#![allow(clippy::unwrap_used)]

mod dialogue;

use std::time::Duration;

use outpost_core::config::SmtpTimeouts;
use outpost_core::smtp::{
    ClientSession, Envelope, Reply, SessionAction, SessionConfig, SessionError, SessionEvent,
    Stage, TlsMode, TransactionReport,
};
use outpost_core::time::Time;

use SessionAction::{Close, SendBody, StartTls};
use SessionEvent::{Closed, Ready, TransactionDone};
use dialogue::{T0, actions, events, send};

/// Distinct timeouts so each stage's deadline is recognisable.
fn timeouts() -> SmtpTimeouts {
    let s = Duration::from_secs;
    SmtpTimeouts {
        connect: s(10),
        greeting: s(11),
        ehlo: s(12),
        starttls: s(13),
        mail: s(14),
        rcpt: s(15),
        data_init: s(16),
        data_end: s(17),
        rset: s(18),
        quit: s(19),
    }
}

fn new_session(tls: TlsMode) -> ClientSession {
    ClientSession::new(SessionConfig {
        ehlo_name: "client.example".into(),
        tls,
        timeouts: timeouts(),
    })
}

/// Feeds `server` and checks what the client does and says in return.
fn step(
    s: &mut ClientSession,
    server: &str,
    want_actions: &[SessionAction],
    want_events: &[SessionEvent],
) {
    s.on_bytes(T0, server.as_bytes());
    assert_eq!(actions(s), want_actions, "actions after {server:?}");
    assert_eq!(events(s), want_events, "events after {server:?}");
}

fn r(code: u16, enhanced: Option<&str>, text: &str) -> Reply {
    Reply {
        code,
        enhanced: enhanced.map(str::to_string),
        text: text.into(),
    }
}

fn ok() -> Reply {
    r(250, Some("2.0.0"), "Ok")
}

fn env(rcpts: &[&str]) -> Envelope {
    Envelope {
        mail_from: "sender@outpost.example".into(),
        rcpt_to: rcpts.iter().map(|s| s.to_string()).collect(),
        size: 1234,
        smtputf8: false,
        eight_bit: false,
    }
}

/// Connects, greets and EHLOs with `ehlo` as the server's EHLO reply; expects `Ready`.
fn ready_with(tls: TlsMode, ehlo: &str) -> ClientSession {
    let mut s = new_session(tls);
    s.on_connected(T0);
    assert_eq!(s.deadline(), Some(T0.plus(timeouts().greeting)));
    step(
        &mut s,
        "220 mx.remote.example ESMTP\r\n",
        &[send("EHLO client.example\r\n")],
        &[],
    );
    assert_eq!(s.deadline(), Some(T0.plus(timeouts().ehlo)));
    step(&mut s, ehlo, &[], &[Ready]);
    assert!(s.is_idle());
    assert_eq!(s.deadline(), None);
    s
}

/// A connected session fed the `server` chunks at `T0`, one by one (nothing drained).
fn connected(tls: TlsMode, server: &[&str]) -> ClientSession {
    let mut s = new_session(tls);
    s.on_connected(T0);
    for bytes in server {
        s.on_bytes(T0, bytes.as_bytes());
    }
    s
}

/// A session ready with `ehlo` that started a transaction to `rcpts` (its commands drained).
fn sending(ehlo: &str, rcpts: &[&str]) -> ClientSession {
    let mut s = ready_with(TlsMode::Opportunistic, ehlo);
    assert!(s.start_transaction(T0, env(rcpts)));
    actions(&mut s);
    s
}

/// The session failed at `stage`, no transaction under way.
fn failed(stage: Stage, error: SessionError) -> SessionEvent {
    SessionEvent::Failed {
        stage,
        error,
        partial: None,
    }
}

/// The session failed at `stage` on the reply `reply`, no transaction under way.
fn refused(stage: Stage, reply: Reply) -> SessionEvent {
    failed(stage, SessionError::Reply(reply))
}

const EHLO_PLAIN: &str = "250-mx.remote.example\r\n250 ENHANCEDSTATUSCODES\r\n";
const EHLO_PIPE: &str = "250-mx.remote.example hello\r\n250-PIPELINING\r\n250-SIZE 10000000\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n";

#[test]
fn plain_lockstep_delivery() {
    let mut s = ready_with(TlsMode::Opportunistic, EHLO_PLAIN);
    assert_eq!(s.greeting().unwrap().text, "mx.remote.example ESMTP");
    assert_eq!(s.capabilities().host, "mx.remote.example");
    assert!(!s.capabilities().pipelining);
    assert_eq!(s.tls(), None);

    assert!(s.start_transaction(T0, env(&["a@remote.example"])));
    assert!(!s.is_idle());
    assert_eq!(
        actions(&mut s),
        [send("MAIL FROM:<sender@outpost.example>\r\n")]
    );
    step(
        &mut s,
        "250 2.1.0 Ok\r\n",
        &[send("RCPT TO:<a@remote.example>\r\n")],
        &[],
    );
    step(&mut s, "250 2.1.5 Ok\r\n", &[send("DATA\r\n")], &[]);
    step(
        &mut s,
        "354 End data with <CR><LF>.<CR><LF>\r\n",
        &[SendBody],
        &[],
    );
    let report = TransactionReport {
        mail: Some(r(250, Some("2.1.0"), "Ok")),
        rcpt: vec![Some(r(250, Some("2.1.5"), "Ok"))],
        data: Some(r(354, None, "End data with <CR><LF>.<CR><LF>")),
        end: Some(r(250, Some("2.0.0"), "Ok: queued as 4F2")),
    };
    step(
        &mut s,
        "250 2.0.0 Ok: queued as 4F2\r\n",
        &[],
        &[TransactionDone(report), Ready],
    );
    assert!(s.is_idle());
}

#[test]
fn pipelined_delivery_with_size_and_8bitmime() {
    let mut s = ready_with(TlsMode::Opportunistic, EHLO_PIPE);
    let caps = s.capabilities().clone();
    assert!(caps.pipelining && caps.eight_bit_mime && caps.smtputf8);
    assert_eq!(caps.size, Some(10_000_000));

    let mut e = env(&["a@remote.example", "b@remote.example"]);
    e.eight_bit = true;
    assert!(s.start_transaction(T0, e));
    assert_eq!(
        actions(&mut s),
        [send(
            "MAIL FROM:<sender@outpost.example> SIZE=1234 BODY=8BITMIME\r\nRCPT TO:<a@remote.example>\r\nRCPT TO:<b@remote.example>\r\nDATA\r\n"
        )]
    );
    step(
        &mut s,
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n",
        &[SendBody],
        &[],
    );
    assert_eq!(s.deadline(), Some(T0.plus(timeouts().data_end)));
    let report = TransactionReport {
        mail: Some(r(250, Some("2.1.0"), "Ok")),
        rcpt: vec![
            Some(r(250, Some("2.1.5"), "Ok")),
            Some(r(250, Some("2.1.5"), "Ok")),
        ],
        data: Some(r(354, None, "go")),
        end: Some(ok()),
    };
    step(
        &mut s,
        "250 2.0.0 Ok\r\n",
        &[],
        &[TransactionDone(report), Ready],
    );
}

#[test]
fn pipelined_replies_arriving_one_by_one() {
    let mut s = sending(EHLO_PIPE, &["a@x.example", "b@x.example"]);
    assert_eq!(s.deadline(), Some(T0.plus(timeouts().mail)));
    let t1 = T0.plus(Duration::from_secs(1));
    s.on_bytes(t1, b"250 Ok\r\n");
    assert_eq!(s.deadline(), Some(t1.plus(timeouts().rcpt)));
    s.on_bytes(t1, b"550 5.1.1 no\r\n");
    s.on_bytes(t1, b"250 Ok\r\n");
    assert_eq!(s.deadline(), Some(t1.plus(timeouts().data_init)));
    assert_eq!(actions(&mut s), []);
    s.on_bytes(t1, b"354 go\r\n");
    assert_eq!(actions(&mut s), [SendBody]);
    s.on_bytes(t1, b"250 Ok\r\n");
    let ev = events(&mut s);
    let TransactionDone(rep) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(rep.rcpt[0].as_ref().unwrap().code, 550);
    assert_eq!(rep.rcpt[1].as_ref().unwrap().code, 250);
    assert_eq!(ev[1], Ready);
}

#[test]
fn lockstep_mixed_recipients() {
    let mut s = ready_with(TlsMode::Opportunistic, EHLO_PLAIN);
    assert!(s.start_transaction(T0, env(&["a@x.example", "b@x.example", "c@x.example"])));
    assert_eq!(
        actions(&mut s),
        [send("MAIL FROM:<sender@outpost.example>\r\n")]
    );
    step(
        &mut s,
        "250 Ok\r\n",
        &[send("RCPT TO:<a@x.example>\r\n")],
        &[],
    );
    step(
        &mut s,
        "550-5.1.1 No such\r\n550 5.1.1 user\r\n",
        &[send("RCPT TO:<b@x.example>\r\n")],
        &[],
    );
    step(
        &mut s,
        "250 Ok\r\n",
        &[send("RCPT TO:<c@x.example>\r\n")],
        &[],
    );
    step(
        &mut s,
        "452 4.2.2 Mailbox full\r\n",
        &[send("DATA\r\n")],
        &[],
    );
    step(&mut s, "354 go\r\n", &[SendBody], &[]);
    let report = TransactionReport {
        mail: Some(r(250, None, "Ok")),
        rcpt: vec![
            Some(r(550, Some("5.1.1"), "No such user")),
            Some(r(250, None, "Ok")),
            Some(r(452, Some("4.2.2"), "Mailbox full")),
        ],
        data: Some(r(354, None, "go")),
        end: Some(r(250, None, "Ok")),
    };
    step(&mut s, "250 Ok\r\n", &[], &[TransactionDone(report), Ready]);
}

#[test]
fn multi_line_replies_everywhere() {
    let mut s = connected(TlsMode::Disabled, &[]);
    step(
        &mut s,
        "220-mx.remote.example ESMTP\r\n220-No UCE\r\n220 Welcome\r\n",
        &[send("EHLO client.example\r\n")],
        &[],
    );
    assert_eq!(
        s.greeting().unwrap().text,
        "mx.remote.example ESMTP No UCE Welcome"
    );
    step(
        &mut s,
        "250-mx.remote.example\r\n250-STARTTLS\r\n250 PIPELINING\r\n",
        &[],
        &[Ready],
    );
    assert!(s.capabilities().starttls, "offered, but TLS is disabled");
    assert!(s.start_transaction(T0, env(&["a@x.example"])));
    actions(&mut s);
    step(
        &mut s,
        "250-2.1.0 Sender\r\n250 2.1.0 ok\r\n250-2.1.5 Recipient\r\n250 2.1.5 ok\r\n354-Go\r\n354 ahead\r\n",
        &[SendBody],
        &[],
    );
    s.on_bytes(T0, b"250-2.0.0 Queued\r\n250-as\r\n250 ABC\r\n");
    let ev = events(&mut s);
    let TransactionDone(rep) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(rep.mail, Some(r(250, Some("2.1.0"), "Sender ok")));
    assert_eq!(rep.rcpt[0], Some(r(250, Some("2.1.5"), "Recipient ok")));
    assert_eq!(rep.data, Some(r(354, None, "Go ahead")));
    assert_eq!(rep.end, Some(r(250, Some("2.0.0"), "Queued as ABC")));
}

#[test]
fn pipelined_all_refused_with_354_sends_lone_dot_then_rset() {
    let mut s = sending(EHLO_PIPE, &["a@x.example", "b@x.example"]);
    step(
        &mut s,
        "250 Ok\r\n550 5.1.1 nope\r\n550 5.1.1 nope\r\n354 go\r\n",
        &[send(".\r\n")],
        &[],
    );
    assert_eq!(s.deadline(), Some(T0.plus(timeouts().data_end)));
    let report = TransactionReport {
        mail: Some(r(250, None, "Ok")),
        rcpt: vec![
            Some(r(550, Some("5.1.1"), "nope")),
            Some(r(550, Some("5.1.1"), "nope")),
        ],
        data: Some(r(354, None, "go")),
        end: Some(r(554, Some("5.5.1"), "No valid recipients")),
    };
    step(
        &mut s,
        "554 5.5.1 No valid recipients\r\n",
        &[send("RSET\r\n")],
        &[TransactionDone(report)],
    );
    assert!(!s.is_idle());
    assert_eq!(s.deadline(), Some(T0.plus(timeouts().rset)));
    step(&mut s, "250 2.0.0 Ok\r\n", &[], &[Ready]);
    assert!(s.is_idle());
}

#[test]
fn pipelined_all_refused_data_refused_then_rset() {
    let mut s = sending(EHLO_PIPE, &["a@x.example"]);
    let report = TransactionReport {
        mail: Some(r(250, None, "Ok")),
        rcpt: vec![Some(r(550, Some("5.1.1"), "nope"))],
        data: Some(r(554, Some("5.5.1"), "No valid recipients")),
        end: None,
    };
    step(
        &mut s,
        "250 Ok\r\n550 5.1.1 nope\r\n554 5.5.1 No valid recipients\r\n",
        &[send("RSET\r\n")],
        &[TransactionDone(report)],
    );
    step(&mut s, "250 Ok\r\n", &[], &[Ready]);
}

#[test]
fn lockstep_all_refused_no_data_then_rset() {
    let mut s = sending(EHLO_PLAIN, &["a@x.example"]);
    step(
        &mut s,
        "250 Ok\r\n",
        &[send("RCPT TO:<a@x.example>\r\n")],
        &[],
    );
    let report = TransactionReport {
        mail: Some(r(250, None, "Ok")),
        rcpt: vec![Some(r(450, Some("4.7.1"), "greylisted"))],
        data: None,
        end: None,
    };
    step(
        &mut s,
        "450 4.7.1 greylisted\r\n",
        &[send("RSET\r\n")],
        &[TransactionDone(report)],
    );
    step(&mut s, "250 Ok\r\n", &[], &[Ready]);
}

#[test]
fn mail_refused_then_rset() {
    let mut s = sending(EHLO_PLAIN, &["a@x.example", "b@x.example"]);
    let report = TransactionReport {
        mail: Some(r(553, Some("5.7.1"), "Sender rejected")),
        rcpt: vec![None, None],
        data: None,
        end: None,
    };
    step(
        &mut s,
        "553 5.7.1 Sender rejected\r\n",
        &[send("RSET\r\n")],
        &[TransactionDone(report)],
    );
    step(&mut s, "250 Ok\r\n", &[], &[Ready]);

    // Pipelined: the RCPT and DATA replies are read, then RSET.
    let mut s = sending(EHLO_PIPE, &["a@x.example"]);
    let report = TransactionReport {
        mail: Some(r(553, Some("5.7.1"), "Sender rejected")),
        rcpt: vec![Some(r(503, Some("5.5.1"), "need MAIL"))],
        data: Some(r(503, Some("5.5.1"), "need RCPT")),
        end: None,
    };
    step(
        &mut s,
        "553 5.7.1 Sender rejected\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n",
        &[send("RSET\r\n")],
        &[TransactionDone(report)],
    );
    step(&mut s, "250 Ok\r\n", &[], &[Ready]);
}

#[test]
fn rset_refused_fails_the_session() {
    let mut s = sending(EHLO_PLAIN, &["a@x.example"]);
    s.on_bytes(T0, b"550 no\r\n");
    assert_eq!(actions(&mut s), [send("RSET\r\n")]);
    events(&mut s);
    step(
        &mut s,
        "500 what\r\n",
        &[Close],
        &[refused(Stage::Mail, r(500, None, "what"))],
    );
}

#[test]
fn final_reply_refused_needs_no_rset() {
    let mut s = sending(EHLO_PIPE, &["a@x.example"]);
    step(&mut s, "250 Ok\r\n250 Ok\r\n354 go\r\n", &[SendBody], &[]);
    s.on_bytes(T0, b"554 5.7.1 spam\r\n");
    assert_eq!(actions(&mut s), []);
    let ev = events(&mut s);
    assert!(
        matches!(&ev[..], [TransactionDone(rep), Ready] if rep.end.as_ref().unwrap().code == 554)
    );
}

#[test]
fn starttls_opportunistic_offered() {
    let mut s = connected(TlsMode::Opportunistic, &[]);
    step(
        &mut s,
        "220 mx ESMTP\r\n",
        &[send("EHLO client.example\r\n")],
        &[],
    );
    step(
        &mut s,
        "250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
        &[send("STARTTLS\r\n")],
        &[],
    );
    assert_eq!(s.deadline(), Some(T0.plus(timeouts().starttls)));
    step(&mut s, "220 2.0.0 Ready to start TLS\r\n", &[StartTls], &[]);
    assert_eq!(s.deadline(), Some(T0.plus(timeouts().starttls)));
    assert!(!s.is_idle());
    s.on_tls_established(T0, false);
    assert_eq!(actions(&mut s), [send("EHLO client.example\r\n")]);
    assert_eq!(s.tls(), Some(false));
    // Capabilities were forgotten until the new EHLO reply.
    assert!(!s.capabilities().pipelining);
    // STARTTLS offered again after TLS is not used again.
    step(
        &mut s,
        "250-mx\r\n250-SIZE 100\r\n250 STARTTLS\r\n",
        &[],
        &[Ready],
    );
    assert_eq!(s.capabilities().size, Some(100));
    assert!(!s.capabilities().pipelining);
    assert_eq!(s.tls(), Some(false));
}

#[test]
fn starttls_opportunistic_refused_goes_on_in_plaintext() {
    let mut s = connected(TlsMode::Opportunistic, &["220 mx\r\n"]);
    actions(&mut s);
    step(
        &mut s,
        "250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
        &[send("STARTTLS\r\n")],
        &[],
    );
    step(&mut s, "454 4.7.0 TLS not available\r\n", &[], &[Ready]);
    assert_eq!(s.tls(), None);
    assert!(s.capabilities().pipelining);
}

#[test]
fn starttls_handshake_failure() {
    let mut s = connected(
        TlsMode::Opportunistic,
        &["220 mx\r\n", "250-mx\r\n250 STARTTLS\r\n", "220 go\r\n"],
    );
    assert_eq!(
        actions(&mut s),
        [
            send("EHLO client.example\r\n"),
            send("STARTTLS\r\n"),
            StartTls
        ]
    );
    s.on_tls_failed(T0, "handshake failure\r\nalert 40");
    assert_eq!(actions(&mut s), [Close]);
    assert_eq!(
        events(&mut s),
        [failed(
            Stage::Tls,
            SessionError::TlsFailed("handshake failure alert 40".into())
        )]
    );
    // Nothing more, whatever arrives.
    s.on_bytes(T0, b"250 ok\r\n");
    s.on_tls_established(T0, true);
    s.on_disconnected(T0, None);
    s.on_timer(Time::MAX);
    s.quit(T0);
    assert_eq!(actions(&mut s), []);
    assert_eq!(events(&mut s), []);
    assert!(s.is_finished());
    assert_eq!(s.deadline(), None);
}

#[test]
fn starttls_response_injection_is_refused() {
    let mut s = connected(
        TlsMode::Opportunistic,
        &["220 mx\r\n", "250-mx\r\n250 STARTTLS\r\n"],
    );
    actions(&mut s);
    s.on_bytes(T0, b"220 go\r\n250-mx\r\n250 PIPELINING\r\n");
    assert_eq!(actions(&mut s), [Close]);
    assert!(matches!(
        &events(&mut s)[..],
        [SessionEvent::Failed {
            stage: Stage::Tls,
            error: SessionError::Protocol(_),
            partial: None
        }]
    ));
}

#[test]
fn starttls_required() {
    // Not offered.
    let mut s = connected(TlsMode::Required, &["220 mx\r\n"]);
    actions(&mut s);
    step(
        &mut s,
        "250-mx\r\n250 PIPELINING\r\n",
        &[Close],
        &[failed(
            Stage::Tls,
            SessionError::TlsRequired("TLS is required but STARTTLS is not offered".into()),
        )],
    );

    // Refused.
    let mut s = connected(
        TlsMode::Required,
        &["220 mx\r\n", "250-mx\r\n250 STARTTLS\r\n"],
    );
    actions(&mut s);
    step(
        &mut s,
        "454 4.7.0 later\r\n",
        &[Close],
        &[failed(
            Stage::Tls,
            SessionError::TlsRequired("STARTTLS refused: 454 4.7.0 later".into()),
        )],
    );

    // Established but unverified.
    let mut s = connected(
        TlsMode::Required,
        &["220 mx\r\n", "250-mx\r\n250 STARTTLS\r\n", "220 go\r\n"],
    );
    actions(&mut s);
    s.on_tls_established(T0, false);
    assert_eq!(actions(&mut s), [Close]);
    assert!(matches!(
        &events(&mut s)[..],
        [SessionEvent::Failed {
            stage: Stage::Tls,
            error: SessionError::TlsRequired(_),
            partial: None
        }]
    ));

    // Verified: fine.
    let mut s = connected(
        TlsMode::Required,
        &["220 mx\r\n", "250-mx\r\n250 STARTTLS\r\n", "220 go\r\n"],
    );
    actions(&mut s);
    s.on_tls_established(T0, true);
    assert_eq!(actions(&mut s), [send("EHLO client.example\r\n")]);
    step(&mut s, "250 mx\r\n", &[], &[Ready]);
    assert_eq!(s.tls(), Some(true));

    // HELO fallback means no STARTTLS.
    let mut s = connected(
        TlsMode::Required,
        &["220 mx\r\n", "502 no EHLO\r\n", "250 mx\r\n"],
    );
    assert!(matches!(
        &events(&mut s)[..],
        [SessionEvent::Failed {
            stage: Stage::Tls,
            error: SessionError::TlsRequired(_),
            ..
        }]
    ));
}

#[test]
fn starttls_disabled_is_never_sent() {
    let s = ready_with(TlsMode::Disabled, "250-mx\r\n250 STARTTLS\r\n");
    assert_eq!(s.tls(), None);
}

#[test]
fn helo_fallback() {
    let mut s = connected(TlsMode::Opportunistic, &[]);
    step(
        &mut s,
        "220 old\r\n",
        &[send("EHLO client.example\r\n")],
        &[],
    );
    step(
        &mut s,
        "500 5.5.1 Command unrecognized\r\n",
        &[send("HELO client.example\r\n")],
        &[],
    );
    step(&mut s, "250 old.example\r\n", &[], &[Ready]);
    assert_eq!(s.capabilities().host, "old.example");
    assert!(!s.capabilities().pipelining);
    let mut e = env(&["a@x.example"]);
    e.eight_bit = true;
    assert!(s.start_transaction(T0, e));
    assert_eq!(
        actions(&mut s),
        [send("MAIL FROM:<sender@outpost.example>\r\n")]
    );

    // HELO refused too: the session fails.
    let mut s = connected(TlsMode::Opportunistic, &["220 old\r\n", "502 no\r\n"]);
    actions(&mut s);
    step(
        &mut s,
        "550 go away\r\n",
        &[Close],
        &[refused(Stage::Ehlo, r(550, None, "go away"))],
    );

    // EHLO 4xx: no fallback.
    let mut s = connected(TlsMode::Opportunistic, &["220 old\r\n"]);
    actions(&mut s);
    step(
        &mut s,
        "451 later\r\n",
        &[Close],
        &[refused(Stage::Ehlo, r(451, None, "later"))],
    );
}

#[test]
fn service_closing_mid_transaction_reports_partial() {
    let mut s = sending(EHLO_PIPE, &["a@x.example", "b@x.example", "c@x.example"]);
    let partial = TransactionReport {
        mail: Some(r(250, None, "Ok")),
        rcpt: vec![
            Some(r(250, None, "Ok")),
            Some(r(421, Some("4.7.0"), "closing")),
            None,
        ],
        data: None,
        end: None,
    };
    step(
        &mut s,
        "250 Ok\r\n250 Ok\r\n421 4.7.0 closing\r\n",
        &[Close],
        &[SessionEvent::Failed {
            stage: Stage::Rcpt,
            error: SessionError::Reply(r(421, Some("4.7.0"), "closing")),
            partial: Some(partial),
        }],
    );
    assert!(s.is_finished());

    // 421 as the final reply.
    let mut s = ready_with(TlsMode::Opportunistic, EHLO_PLAIN);
    assert!(s.start_transaction(T0, env(&["a@x.example"])));
    s.on_bytes(T0, b"250 Ok\r\n");
    s.on_bytes(T0, b"250 Ok\r\n");
    s.on_bytes(T0, b"354 go\r\n");
    s.on_bytes(T0, b"421 bye\r\n");
    assert_eq!(
        actions(&mut s).last(),
        Some(&Close),
        "Close is the last action"
    );
    let ev = events(&mut s);
    assert!(matches!(
        &ev[..],
        [SessionEvent::Failed { stage: Stage::EndOfData, error: SessionError::Reply(_), partial: Some(p) }]
            if p.end.as_ref().unwrap().code == 421 && p.data.is_some()
    ));
}

#[test]
fn disconnect_mid_transaction_reports_partial() {
    let mut s = ready_with(TlsMode::Opportunistic, EHLO_PLAIN);
    assert!(s.start_transaction(T0, env(&["a@x.example"])));
    s.on_bytes(T0, b"250 Ok\r\n");
    actions(&mut s);
    s.on_disconnected(T0, Some("connection reset"));
    assert_eq!(actions(&mut s), [Close]);
    assert_eq!(
        events(&mut s),
        [SessionEvent::Failed {
            stage: Stage::Rcpt,
            error: SessionError::Closed(Some("connection reset".into())),
            partial: Some(TransactionReport {
                mail: Some(r(250, None, "Ok")),
                rcpt: vec![None],
                data: None,
                end: None
            }),
        }]
    );
}

#[test]
fn greeting_refused() {
    let mut s = connected(TlsMode::Opportunistic, &[]);
    step(
        &mut s,
        "554 5.7.1 You are not welcome\r\n",
        &[Close],
        &[refused(
            Stage::Greeting,
            r(554, Some("5.7.1"), "You are not welcome"),
        )],
    );
    let mut s = connected(TlsMode::Opportunistic, &["421 busy\r\n"]);
    assert!(matches!(
        &events(&mut s)[..],
        [SessionEvent::Failed {
            stage: Stage::Greeting,
            error: SessionError::Reply(_),
            ..
        }]
    ));
}

/// Drives a session to the point of awaiting `stage`, then checks the deadline and the
/// timeout failure.
fn check_timeout(s: &mut ClientSession, since: Time, timeout: Duration, stage: Stage) {
    let deadline = since.plus(timeout);
    assert_eq!(s.deadline(), Some(deadline), "{stage:?}");
    actions(s);
    events(s);
    s.on_timer(deadline.minus(Duration::from_millis(1)));
    assert_eq!(actions(s), [], "{stage:?}");
    s.on_timer(deadline);
    assert_eq!(actions(s), [Close], "{stage:?}");
    let ev = events(s);
    assert!(
        matches!(&ev[..], [SessionEvent::Failed { stage: st, error: SessionError::Timeout, .. }] if *st == stage),
        "{stage:?}: {ev:?}"
    );
    assert_eq!(s.deadline(), None);
}

#[test]
fn timeouts_per_stage() {
    let t = timeouts();
    let t1 = T0.plus(Duration::from_secs(100));

    let mut s = new_session(TlsMode::Opportunistic);
    assert_eq!(s.deadline(), None, "no deadline before on_connected");
    s.on_connected(T0);
    check_timeout(&mut s, T0, t.greeting, Stage::Greeting);

    let mut s = connected(TlsMode::Opportunistic, &[]);
    s.on_bytes(t1, b"220 mx\r\n");
    check_timeout(&mut s, t1, t.ehlo, Stage::Ehlo);

    let mut s = connected(TlsMode::Opportunistic, &["220 mx\r\n"]);
    s.on_bytes(t1, b"250-mx\r\n250 STARTTLS\r\n");
    check_timeout(&mut s, t1, t.starttls, Stage::Tls);

    // The handshake itself.
    let mut s = connected(
        TlsMode::Opportunistic,
        &["220 mx\r\n", "250-mx\r\n250 STARTTLS\r\n"],
    );
    s.on_bytes(t1, b"220 go\r\n");
    check_timeout(&mut s, t1, t.starttls, Stage::Tls);

    // Lockstep stages.
    let lockstep = || {
        let mut s = ready_with(TlsMode::Opportunistic, EHLO_PLAIN);
        assert!(s.start_transaction(t1, env(&["a@x.example"])));
        s
    };
    let mut s = lockstep();
    check_timeout(&mut s, t1, t.mail, Stage::Mail);
    let mut s = lockstep();
    s.on_bytes(t1, b"250 Ok\r\n");
    check_timeout(&mut s, t1, t.rcpt, Stage::Rcpt);
    let mut s = lockstep();
    s.on_bytes(t1, b"250 Ok\r\n");
    s.on_bytes(t1, b"250 Ok\r\n");
    check_timeout(&mut s, t1, t.data_init, Stage::Data);
    let mut s = lockstep();
    s.on_bytes(t1, b"250 Ok\r\n");
    s.on_bytes(t1, b"250 Ok\r\n");
    s.on_bytes(t1, b"354 go\r\n");
    check_timeout(&mut s, t1, t.data_end, Stage::EndOfData);
    let mut s = lockstep();
    s.on_bytes(t1, b"550 no\r\n");
    check_timeout(&mut s, t1, t.rset, Stage::Mail);

    // A timeout mid-transaction carries the partial report.
    let mut s = lockstep();
    s.on_bytes(t1, b"250 Ok\r\n");
    s.on_timer(Time::MAX);
    let ev = events(&mut s);
    assert!(matches!(&ev[..], [SessionEvent::Failed { partial: Some(p), .. }] if p.mail.is_some()));

    // Idle: no deadline, timers do nothing.
    let mut s = ready_with(TlsMode::Opportunistic, EHLO_PLAIN);
    s.on_timer(Time::MAX);
    assert_eq!(actions(&mut s), []);
    assert_eq!(events(&mut s), []);

    // QUIT: the timeout closes.
    s.quit(t1);
    assert_eq!(actions(&mut s), [send("QUIT\r\n")]);
    assert_eq!(s.deadline(), Some(t1.plus(t.quit)));
    s.on_timer(t1.plus(t.quit));
    assert_eq!(actions(&mut s), [Close]);
    assert_eq!(events(&mut s), [Closed]);
}

#[test]
fn size_limit_and_smtputf8() {
    // Over the advertised SIZE: refused before sending anything.
    let mut s = ready_with(TlsMode::Opportunistic, "250-mx\r\n250 SIZE 1000\r\n");
    let mut e = env(&["a@x.example", "b@x.example"]);
    e.size = 1001;
    assert!(s.start_transaction(T0, e));
    assert_eq!(actions(&mut s), []);
    let report = TransactionReport {
        mail: Some(r(
            552,
            Some("5.3.4"),
            "message size 1001 exceeds the server's limit of 1000 bytes",
        )),
        rcpt: vec![None, None],
        data: None,
        end: None,
    };
    assert_eq!(events(&mut s), [TransactionDone(report), Ready]);
    assert!(s.is_idle());
    // At the limit: sent with SIZE=.
    let mut e = env(&["a@x.example"]);
    e.size = 1000;
    assert!(s.start_transaction(T0, e));
    assert_eq!(
        actions(&mut s),
        [send("MAIL FROM:<sender@outpost.example> SIZE=1000\r\n")]
    );

    // SIZE without a limit: any size, still announced.
    let mut s = ready_with(TlsMode::Opportunistic, "250-mx\r\n250 SIZE\r\n");
    let mut e = env(&["a@x.example"]);
    e.size = u64::from(u32::MAX) + 1;
    assert!(s.start_transaction(T0, e));
    assert_eq!(
        actions(&mut s),
        [send(
            "MAIL FROM:<sender@outpost.example> SIZE=4294967296\r\n"
        )]
    );

    // SMTPUTF8 needed, not offered.
    let mut s = ready_with(TlsMode::Opportunistic, EHLO_PLAIN);
    let mut e = env(&["j\u{f6}rg@x.example"]);
    e.smtputf8 = true;
    assert!(s.start_transaction(T0, e.clone()));
    assert_eq!(actions(&mut s), []);
    let report = TransactionReport {
        mail: Some(r(
            555,
            Some("5.6.7"),
            "SMTPUTF8 required but not offered by the server",
        )),
        rcpt: vec![None],
        data: None,
        end: None,
    };
    assert_eq!(events(&mut s), [TransactionDone(report), Ready]);

    // Offered.
    let mut s = ready_with(TlsMode::Opportunistic, EHLO_PIPE);
    e.eight_bit = true;
    assert!(s.start_transaction(T0, e));
    assert_eq!(
        actions(&mut s),
        [send(
            "MAIL FROM:<sender@outpost.example> SIZE=1234 BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<j\u{f6}rg@x.example>\r\nDATA\r\n"
        )]
    );
}

#[test]
fn two_transactions_on_one_session() {
    let mut s = ready_with(TlsMode::Opportunistic, EHLO_PIPE);
    for i in 0..2 {
        let rcpt = format!("r{i}@x.example");
        assert!(s.start_transaction(T0, env(&[&rcpt])));
        assert_eq!(
            actions(&mut s),
            [send(&format!(
                "MAIL FROM:<sender@outpost.example> SIZE=1234\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n"
            ))]
        );
        step(&mut s, "250 Ok\r\n250 Ok\r\n354 go\r\n", &[SendBody], &[]);
        s.on_bytes(T0, b"250 Ok\r\n");
        let ev = events(&mut s);
        assert!(matches!(&ev[..], [TransactionDone(_), Ready]), "{ev:?}");
    }
    // Then QUIT.
    s.quit(T0);
    step(
        &mut s,
        "221 2.0.0 Bye\r\n",
        &[send("QUIT\r\n"), Close],
        &[Closed],
    );
    assert!(s.is_finished());
}

#[test]
fn quit_variants() {
    // The peer closes after QUIT.
    let mut s = ready_with(TlsMode::Opportunistic, EHLO_PLAIN);
    s.quit(T0);
    assert_eq!(actions(&mut s), [send("QUIT\r\n")]);
    s.on_disconnected(T0, None);
    assert_eq!(actions(&mut s), [Close]);
    assert_eq!(events(&mut s), [Closed]);

    // Garbage after QUIT still closes cleanly.
    let mut s = ready_with(TlsMode::Opportunistic, EHLO_PLAIN);
    s.quit(T0);
    actions(&mut s);
    step(&mut s, "\x00\x01garbage\r\n", &[Close], &[Closed]);

    // QUIT while busy gives up at once.
    let mut s = sending(EHLO_PLAIN, &["a@x.example"]);
    s.quit(T0);
    assert_eq!(actions(&mut s), [Close]);
    assert_eq!(events(&mut s), [Closed]);
}

#[test]
fn bytes_while_idle() {
    let mut s = ready_with(TlsMode::Opportunistic, EHLO_PLAIN);
    step(
        &mut s,
        "421 4.3.2 Shutting down\r\n",
        &[Close],
        &[refused(Stage::Mail, r(421, Some("4.3.2"), "Shutting down"))],
    );

    let mut s = ready_with(TlsMode::Opportunistic, EHLO_PLAIN);
    s.on_bytes(T0, b"250 surprise\r\n");
    assert_eq!(actions(&mut s), [Close]);
    assert!(matches!(
        &events(&mut s)[..],
        [SessionEvent::Failed {
            stage: Stage::Mail,
            error: SessionError::Protocol(_),
            partial: None
        }]
    ));

    let mut s = ready_with(TlsMode::Opportunistic, EHLO_PLAIN);
    s.on_disconnected(T0, None);
    assert_eq!(actions(&mut s), [Close]);
    assert_eq!(
        events(&mut s),
        [failed(Stage::Mail, SessionError::Closed(None))]
    );
}

#[test]
fn replies_ahead_of_commands_are_refused() {
    // A server answering EHLO before it was sent.
    let mut s = connected(TlsMode::Opportunistic, &["220 mx\r\n250 mx\r\n"]);
    assert_eq!(actions(&mut s), [send("EHLO client.example\r\n"), Close]);
    assert!(matches!(
        &events(&mut s)[..],
        [SessionEvent::Failed {
            stage: Stage::Ehlo,
            error: SessionError::Protocol(_),
            ..
        }]
    ));

    // Lockstep: an extra reply in the same chunk as the MAIL reply.
    let mut s = sending(EHLO_PLAIN, &["a@x.example"]);
    s.on_bytes(T0, b"250 Ok\r\n250 Ok\r\n");
    let ev = events(&mut s);
    assert!(
        matches!(
            &ev[..],
            [SessionEvent::Failed {
                stage: Stage::Rcpt,
                error: SessionError::Protocol(_),
                partial: Some(_)
            }]
        ),
        "{ev:?}"
    );

    // A partial line left over from before the command also counts.
    let s = connected(TlsMode::Opportunistic, &["220 mx\r\n25", "0 mx\r\n"]);
    assert!(s.is_finished());
}

#[test]
fn protocol_garbage_fails_the_session() {
    let mut s = connected(TlsMode::Opportunistic, &["HTTP/1.1 400 Bad Request\r\n"]);
    assert_eq!(actions(&mut s), [Close]);
    let ev = events(&mut s);
    let [
        SessionEvent::Failed {
            stage: Stage::Greeting,
            error: SessionError::Protocol(msg),
            partial: None,
        },
    ] = &ev[..]
    else {
        panic!("{ev:?}")
    };
    assert!(msg.starts_with("malformed reply line"), "{msg}");
    assert!(!msg.contains('\r'));

    // Mismatched codes in a multi-line reply.
    let mut s = sending(EHLO_PLAIN, &["a@x.example"]);
    s.on_bytes(T0, b"250-Ok\r\n550 no\r\n");
    assert!(matches!(
        &events(&mut s)[..],
        [SessionEvent::Failed {
            stage: Stage::Mail,
            error: SessionError::Protocol(_),
            partial: Some(_)
        }]
    ));

    // A never-ending line.
    let mut s = connected(TlsMode::Opportunistic, &["220 "]);
    for _ in 0..1000 {
        s.on_bytes(T0, &[b'x'; 100]);
        assert!(s.buffered_len() <= 4096);
    }
    assert!(s.is_finished());
}

#[test]
fn start_transaction_preconditions() {
    let mut s = new_session(TlsMode::Opportunistic);
    assert!(!s.start_transaction(T0, env(&["a@x.example"])), "not ready");
    let mut s = ready_with(TlsMode::Opportunistic, EHLO_PLAIN);
    assert!(!s.start_transaction(T0, env(&[])), "no recipients");
    assert!(
        !s.start_transaction(T0, env(&["a@x.example>\r\nRSET"])),
        "unsafe address"
    );
    let mut e = env(&["a@x.example"]);
    e.mail_from = "x\r\nDATA".into();
    assert!(!s.start_transaction(T0, e));
    assert_eq!(actions(&mut s), []);
    assert!(s.is_idle());
    // Null reverse-path.
    let mut e = env(&["a@x.example"]);
    e.mail_from = String::new();
    assert!(s.start_transaction(T0, e));
    assert_eq!(actions(&mut s), [send("MAIL FROM:<>\r\n")]);
    assert!(!s.start_transaction(T0, env(&["a@x.example"])), "busy");
}
