//! Durable intake, end to end: what the daemon acknowledged (HTTP 202) reaches the SMTP
//! sink (Postfix's smtp-sink, counted by Message-ID) across a SIGKILL in the middle of a
//! burst, and across a graceful SIGTERM during deliveries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_tests::http;
use outpost_tests::sinks::{PostfixSink, counts};
use outpost_tests::{Daemon, free_port, poll, require, scratch_dir};
use serde_json::{Value, json};

fn body(i: usize) -> Vec<u8> {
    json!({
        "from": "app@example.com",
        "to": [format!("user{i}@dest.example")],
        "subject": format!("burst {i}"),
        "text": "hello",
    })
    .to_string()
    .into_bytes()
}

/// Waits until every Message-ID in `accepted` is at the sink; returns the sink's counts.
fn all_delivered(
    sink: &PostfixSink,
    accepted: &BTreeSet<String>,
    within: Duration,
) -> BTreeMap<String, usize> {
    let mut missing = accepted.len();
    poll(within, "every accepted message at the sink", || {
        let c = counts(&sink.message_ids());
        missing = accepted.iter().filter(|m| !c.contains_key(*m)).count();
        (missing == 0).then_some(c)
    })
}

#[test]
fn kill_9_during_a_burst_loses_nothing_that_got_a_202() {
    if !require(PostfixSink::available(), "smtp-sink") {
        return;
    }
    let dir = scratch_dir("kill9");
    let port = free_port();
    let sink = PostfixSink::start(&dir.join("dump"), port, &[]).expect("smtp-sink starts");
    let mut d = Daemon::builder(dir.join("data")).relay(port).start();
    let key = d.create_key("example.com");

    // Four clients submit as fast as they can; each 202 is recorded by its Message-ID.
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let url = d.url("/v1/messages");
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (accepted, stop, url, key) =
                (accepted.clone(), stop.clone(), url.clone(), key.clone());
            std::thread::spawn(move || {
                let mut i = c * 1_000_000;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    match http::with_key("POST", &url, Some(&key), Some(&body(i))) {
                        Ok(r) if r.status == 202 => {
                            let v: Value = serde_json::from_str(&r.body).expect("receipt");
                            let mid = v["message_id"].as_str().expect("message_id");
                            accepted.lock().expect("lock").insert(mid.to_string());
                        }
                        Ok(r) => panic!("unexpected {}: {}", r.status, r.body),
                        // The daemon was killed under this request: it was never acknowledged.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();

    poll(Duration::from_secs(60), "150 messages accepted", || {
        (accepted.lock().expect("lock").len() >= 150).then_some(())
    });
    // Messages whose delivery is already recorded (persisted) just before the kill: these
    // must not be sent again after the restart.
    let (status, page) = d.get("/v1/messages?status=delivered&limit=100", Some(&key));
    assert_eq!(status, 200, "{page}");
    let durable_delivered: Vec<String> = page["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["message_id"].as_str().map(str::to_string))
        .collect();
    d.kill9();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("client");
    }
    let accepted = accepted.lock().expect("lock").clone();
    let at_kill = sink.message_ids().len();

    let d = d.restart();
    let got = all_delivered(&sink, &accepted, Duration::from_secs(60));
    let duplicated: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "kill -9: {} accepted, {} at the sink at the kill, {} delivered in all, {} twice",
        accepted.len(),
        at_kill,
        got.values().sum::<usize>(),
        duplicated.len()
    );
    for mid in &durable_delivered {
        assert_eq!(
            got.get(mid),
            Some(&1),
            "{mid} was recorded delivered, then resent"
        );
    }
    // And the daemon's own books agree: nothing left pending.
    poll(Duration::from_secs(30), "no recipient pending", || {
        let r = d.try_request("GET", "/metrics", None, None).ok()?;
        r.body
            .lines()
            .any(|l| l == "outpost_pending_recipients 0")
            .then_some(())
    });
}

#[test]
fn sigterm_during_deliveries_exits_0_and_the_restart_delivers_the_rest() {
    if !require(PostfixSink::available(), "smtp-sink") {
        return;
    }
    let dir = scratch_dir("sigterm-drain");
    let port = free_port();
    // One second before each DATA reply: deliveries are in flight when SIGTERM arrives.
    let sink = PostfixSink::start(&dir.join("dump"), port, &["-w", "1"]).expect("smtp-sink starts");
    let mut d = Daemon::builder(dir.join("data"))
        .relay(port)
        .args(["--shutdown-deadline", "20s"])
        .start();
    let key = d.create_key("example.com");
    let mut accepted = BTreeSet::new();
    for i in 0..40 {
        let (status, v) = d.post("/v1/messages", Some(&key), body(i));
        assert_eq!(status, 202, "{v}");
        accepted.insert(v["message_id"].as_str().expect("message_id").to_string());
    }
    poll(Duration::from_secs(30), "a first delivery", || {
        (!sink.message_ids().is_empty()).then_some(())
    });
    let status = d.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}\n{}",
        d.log()
    );
    assert!(d.log().contains("stopped"), "{}", d.log());
    let before_restart = counts(&sink.message_ids());

    let _d = d.restart();
    let got = all_delivered(&sink, &accepted, Duration::from_secs(60));
    eprintln!(
        "SIGTERM: {} accepted, {} delivered before the restart",
        accepted.len(),
        before_restart.len()
    );
    // A graceful stop lets in-flight transactions finish and records them: nothing twice.
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
}
