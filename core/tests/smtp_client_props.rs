//! Property tests for the SMTP client session: hostile byte streams never panic and
//! memory stays bounded; chunk boundaries do not change what the session does.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proptest::prelude::*;

use outpost_core::config::SmtpTimeouts;
use outpost_core::smtp::reply::{MAX_LINE_BYTES, MAX_REPLY_BYTES};
use outpost_core::smtp::{
    ClientSession, Envelope, SessionAction, SessionConfig, SessionEvent, TlsMode,
};
use outpost_core::time::Time;

fn session(tls: TlsMode) -> ClientSession {
    ClientSession::new(SessionConfig {
        ehlo_name: "client.example".into(),
        tls,
        timeouts: SmtpTimeouts::default(),
    })
}

fn envelope(n: usize) -> Envelope {
    Envelope {
        mail_from: "s@outpost.example".into(),
        rcpt_to: (0..n).map(|i| format!("r{i}@x.example")).collect(),
        size: 100,
        smtputf8: false,
        eight_bit: true,
    }
}

// ---------- hostile streams ----------

#[derive(Clone, Debug)]
enum Step {
    Bytes(Vec<u8>),
    Start(usize),
    TlsUp(bool),
    TlsFailed,
    Timer(u64),
    Quit,
    Disconnect,
}

fn fragment() -> impl Strategy<Value = Vec<u8>> {
    let pieces: Vec<&'static [u8]> = vec![
        b"220 mx ESMTP\r\n",
        b"220-mx\r\n",
        b"250-mx\r\n",
        b"250-PIPELINING\r\n",
        b"250-STARTTLS\r\n",
        b"250-SIZE 10\r\n",
        b"250-SMTPUTF8\r\n",
        b"250 8BITMIME\r\n",
        b"250 2.1.0 Ok\r\n",
        b"250 Ok\r\n",
        b"354 go\r\n",
        b"550 5.1.1 no\r\n",
        b"421 4.7.0 bye\r\n",
        b"221 bye\r\n",
        b"220 go\r\n",
        b"\r\n",
        b"\n",
        b"250-",
        b"250 ",
    ];
    prop_oneof![
        4 => proptest::sample::select(pieces).prop_map(<[u8]>::to_vec),
        2 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => (1usize..3 * MAX_LINE_BYTES).prop_map(|n| vec![b'a'; n]),
        1 => (1usize..200).prop_map(|n| b"250-x\r\n".repeat(n)),
        1 => (1usize..40).prop_map(|n| {
            let mut l = b"250-".to_vec();
            l.extend(std::iter::repeat_n(b'y', 4000));
            l.extend_from_slice(b"\r\n");
            l.repeat(n)
        }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => proptest::collection::vec(fragment(), 1..4).prop_map(|v| Step::Bytes(v.concat())),
        2 => (0usize..4).prop_map(Step::Start),
        1 => any::<bool>().prop_map(Step::TlsUp),
        1 => Just(Step::TlsFailed),
        1 => (0u64..2_000_000).prop_map(Step::Timer),
        1 => Just(Step::Quit),
        1 => Just(Step::Disconnect),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn hostile_streams_never_panic_and_stay_bounded(
        mode in proptest::sample::select(vec![TlsMode::Opportunistic, TlsMode::Required, TlsMode::Disabled]),
        prelude in 0usize..4,
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let mut s = session(mode);
        let mut now = Time(1_000);
        s.on_connected(now);
        // Sometimes start from further in: after the greeting, idle, or mid-transaction.
        if prelude >= 1 {
            s.on_bytes(now, b"220 mx\r\n");
        }
        if prelude >= 2 {
            s.on_bytes(now, b"250-mx\r\n250-SIZE 1000\r\n250 PIPELINING\r\n");
        }
        if prelude >= 3 {
            s.start_transaction(now, envelope(3));
        }
        let mut ended = false;
        let mut closes = 0;
        for st in steps {
            match st {
                Step::Bytes(b) => s.on_bytes(now, &b),
                Step::Start(n) => { s.start_transaction(now, envelope(n)); }
                Step::TlsUp(v) => s.on_tls_established(now, v),
                Step::TlsFailed => s.on_tls_failed(now, "boom"),
                Step::Timer(ms) => { now = Time(now.0 + ms); s.on_timer(now); }
                Step::Quit => s.quit(now),
                Step::Disconnect => s.on_disconnected(now, Some("reset")),
            }
            prop_assert!(s.buffered_len() <= MAX_REPLY_BYTES + MAX_LINE_BYTES);
            for a in std::iter::from_fn(|| s.poll_action()) {
                prop_assert!(closes == 0, "an action after Close: {:?}", a);
                if a == SessionAction::Close { closes += 1; }
            }
            for e in std::iter::from_fn(|| s.poll_event()) {
                prop_assert!(!ended, "an event after the end: {:?}", e);
                if matches!(e, SessionEvent::Failed { .. } | SessionEvent::Closed) { ended = true; }
            }
            prop_assert_eq!(ended, s.is_finished());
            prop_assert_eq!(closes == 1, ended);
            // Waiting with a deadline, idle, or finished.
            prop_assert!(s.is_finished() || s.is_idle() || s.deadline().is_some());
            if let Some(d) = s.deadline() { prop_assert!(d >= now); }
        }
        // Time heals everything: past every deadline the session is idle or finished.
        s.on_timer(Time::MAX);
        prop_assert!(s.is_finished() || s.is_idle());
    }

    #[test]
    fn random_bytes_in_random_chunks(
        bytes in proptest::collection::vec(any::<u8>(), 0..20_000),
        sizes in proptest::collection::vec(1usize..300, 1..20),
    ) {
        let mut s = session(TlsMode::Opportunistic);
        s.on_connected(Time(0));
        let mut rest = &bytes[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].min(rest.len());
            let (head, tail) = rest.split_at(n);
            s.on_bytes(Time(0), head);
            rest = tail;
            i += 1;
            prop_assert!(s.buffered_len() <= MAX_REPLY_BYTES + MAX_LINE_BYTES);
            prop_assert!(s.is_finished() || s.is_idle() || s.deadline().is_some());
        }
    }
}

// ---------- chunking does not matter ----------

#[derive(Clone, Debug)]
struct Txn {
    mail_ok: bool,
    rcpt_ok: Vec<bool>,
    /// Pipelined, no recipient accepted: DATA still gets 354.
    data_354_anyway: bool,
}

#[derive(Clone, Debug)]
struct Scenario {
    pipelining: bool,
    starttls: bool,
    multiline: bool,
    txns: Vec<Txn>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let txn = (
        any::<bool>(),
        proptest::collection::vec(any::<bool>(), 1..5),
        any::<bool>(),
    )
        .prop_map(|(m, r, d)| Txn {
            mail_ok: m,
            rcpt_ok: r,
            data_354_anyway: d,
        });
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(txn, 0..4),
    )
        .prop_map(|(pipelining, starttls, multiline, txns)| Scenario {
            pipelining,
            starttls,
            multiline,
            txns,
        })
}

fn ok_reply(multiline: bool) -> Vec<u8> {
    if multiline {
        b"250-2.0.0 Fine\r\n250-2.0.0 really\r\n250 2.0.0 Ok\r\n".to_vec()
    } else {
        b"250 2.0.0 Ok\r\n".to_vec()
    }
}

/// The server's turns for a scenario (each answers what the client sent before it).
fn turns(sc: &Scenario) -> Vec<Vec<u8>> {
    let ml = sc.multiline;
    let mut t = vec![if ml {
        b"220-mx ESMTP\r\n220 welcome\r\n".to_vec()
    } else {
        b"220 mx ESMTP\r\n".to_vec()
    }];
    let ehlo = |with_tls: bool| {
        let mut e = b"250-mx hello\r\n250-SIZE 100000\r\n".to_vec();
        if sc.pipelining {
            e.extend_from_slice(b"250-PIPELINING\r\n");
        }
        if with_tls {
            e.extend_from_slice(b"250-STARTTLS\r\n");
        }
        e.extend_from_slice(b"250 8BITMIME\r\n");
        e
    };
    t.push(ehlo(sc.starttls));
    if sc.starttls {
        t.push(b"220 2.0.0 go ahead\r\n".to_vec());
        t.push(ehlo(false));
    }
    let refuse = b"550-5.1.1 no such\r\n550 5.1.1 user\r\n".to_vec();
    for x in &sc.txns {
        let mail = if x.mail_ok {
            ok_reply(ml)
        } else {
            b"553 5.7.1 sender refused\r\n".to_vec()
        };
        let rcpt = |ok: bool| if ok { ok_reply(ml) } else { refuse.clone() };
        let any = x.mail_ok && x.rcpt_ok.iter().any(|&b| b);
        if sc.pipelining {
            let mut group = mail;
            for &ok in &x.rcpt_ok {
                group.extend(if x.mail_ok {
                    rcpt(ok)
                } else {
                    b"503 5.5.1 need MAIL\r\n".to_vec()
                });
            }
            if any {
                group.extend_from_slice(b"354 go\r\n");
                t.push(group);
                t.push(ok_reply(ml));
            } else if x.data_354_anyway {
                group.extend_from_slice(b"354 go\r\n");
                t.push(group);
                t.push(b"554 5.5.1 no valid recipients\r\n".to_vec());
                t.push(ok_reply(ml)); // RSET
            } else {
                group.extend_from_slice(b"554 5.5.1 no valid recipients\r\n");
                t.push(group);
                t.push(ok_reply(ml)); // RSET
            }
        } else {
            t.push(mail);
            if x.mail_ok {
                for &ok in &x.rcpt_ok {
                    t.push(rcpt(ok));
                }
                if any {
                    t.push(b"354 go\r\n".to_vec());
                    t.push(ok_reply(ml));
                    continue;
                }
            }
            t.push(ok_reply(ml)); // RSET
        }
    }
    t.push(b"221 2.0.0 bye\r\n".to_vec());
    t
}

#[derive(Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
enum Out {
    A(SessionAction),
    E(SessionEvent),
}

/// Plays the scenario; `split` cuts each turn into chunks.
fn play(sc: &Scenario, split: &dyn Fn(&[u8]) -> Vec<Vec<u8>>) -> Vec<Out> {
    let mut s = session(TlsMode::Opportunistic);
    let now = Time(5_000);
    s.on_connected(now);
    let mut trace = Vec::new();
    let mut next_txn = 0;
    for turn in turns(sc) {
        for chunk in split(&turn) {
            s.on_bytes(now, &chunk);
        }
        // Engine reactions, after the whole turn.
        loop {
            let mut progressed = false;
            while let Some(a) = s.poll_action() {
                if a == SessionAction::StartTls {
                    trace.push(Out::A(a));
                    s.on_tls_established(now, true);
                } else {
                    trace.push(Out::A(a));
                }
                progressed = true;
            }
            while let Some(e) = s.poll_event() {
                if e == SessionEvent::Ready {
                    if let Some(x) = sc.txns.get(next_txn) {
                        next_txn += 1;
                        assert!(s.start_transaction(now, envelope(x.rcpt_ok.len())));
                    } else {
                        s.quit(now);
                    }
                }
                trace.push(Out::E(e));
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
    }
    trace
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn chunk_boundaries_do_not_matter(
        sc in scenario(),
        sizes in proptest::collection::vec(1usize..12, 1..16),
    ) {
        let whole = play(&sc, &|t: &[u8]| vec![t.to_vec()]);
        let cut = |t: &[u8]| {
            let mut out = Vec::new();
            let mut rest = t;
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                out.push(rest[..n].to_vec());
                rest = &rest[n..];
                i += 1;
            }
            out
        };
        let chunked = play(&sc, &cut);
        let bytewise = play(&sc, &|t: &[u8]| t.iter().map(|b| vec![*b]).collect());
        prop_assert_eq!(&whole, &chunked);
        prop_assert_eq!(&whole, &bytewise);

        // The scenario was understood: every transaction reported, then a clean QUIT.
        let done = whole.iter().filter(|o| matches!(o, Out::E(SessionEvent::TransactionDone(_)))).count();
        prop_assert_eq!(done, sc.txns.len());
        prop_assert!(whole.contains(&Out::A(SessionAction::Close)));
        prop_assert!(whole.contains(&Out::E(SessionEvent::Closed)));
        prop_assert!(!whole.iter().any(|o| matches!(o, Out::E(SessionEvent::Failed { .. }))), "{:?}", whole);
        let bodies = whole.iter().filter(|o| **o == Out::A(SessionAction::SendBody)).count();
        let expected = sc.txns.iter().filter(|x| x.mail_ok && x.rcpt_ok.iter().any(|&b| b)).count();
        prop_assert_eq!(bodies, expected);
    }
}

#[test]
fn deadline_is_never_in_the_past_after_input() {
    let mut s = session(TlsMode::Opportunistic);
    s.on_connected(Time(0));
    assert_eq!(
        s.deadline(),
        Some(Time(0).plus(SmtpTimeouts::default().greeting))
    );
    let later = Time(0).plus(Duration::from_secs(60));
    s.on_bytes(later, b"220 mx\r\n");
    assert_eq!(s.deadline(), Some(later.plus(SmtpTimeouts::default().ehlo)));
}
