//! Events end to end: the real daemon delivers to an aiosmtpd sink answering per
//! recipient; every event is POSTed to a Python receiver that verifies it with the
//! `standardwebhooks` package. Hard bounces (5.1.1) suppress, policy blocks (5.7.1) and
//! mailbox-full do not; a suppressed address gets no SMTP attempt; the pull API and its
//! `type` filter agree with what the receiver got; the timeline shows every attempt.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use outpost_tests::http::{self, query_escape};
use outpost_tests::python::{self, Receiver, SmtpSink};
use outpost_tests::{Daemon, free_port, poll, require, scratch_dir};
use serde_json::Value;

#[test]
fn events_are_signed_verified_and_hard_bounces_suppress() {
    if !require(
        python::available(),
        "python3 with standardwebhooks and aiosmtpd",
    ) {
        return;
    }
    let dir = scratch_dir("events-webhooks");
    let sink = SmtpSink::start(free_port());
    let receiver = Receiver::start(&dir, free_port(), 0);
    let d = Daemon::builder(dir.join("data"))
        .relay(sink.port)
        .arg("--allow-private-webhooks")
        .config(
            r#"
retry_schedule = ["10s"]
retry_jitter_percent = 0
max_age = "1m"
[webhooks]
retry_schedule = ["1s"]
retry_every = "1s"
"#,
        )
        .start();
    let key = d.create_key("example.com");

    // An endpoint for every event type; the secret is shown once, `whsec_` + base64 of
    // at least 24 random bytes.
    let (s, ep) = d.post(
        "/v1/webhooks",
        Some(&key),
        format!(r#"{{"url":"{}"}}"#, receiver.url()),
    );
    assert_eq!(s, 201, "{ep}");
    let secret = ep["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let raw = outpost_core::webhook::parse_secret(&secret).expect("whsec_ + base64");
    assert!(raw.len() >= 24, "{} bytes", raw.len());
    let ep_id = ep["id"].as_str().expect("id").to_string();
    let (s, list) = d.get("/v1/webhooks", Some(&key));
    assert_eq!(s, 200);
    assert_eq!(list["data"][0]["id"], ep_id.as_str());
    assert!(
        list["data"][0].get("secret").is_none(),
        "secret shown again: {list}"
    );
    // Only http(s).
    let (s, v) = d.post(
        "/v1/webhooks",
        Some(&key),
        r#"{"url":"ftp://hooks.example.com/x"}"#,
    );
    assert_eq!(s, 422, "{v}");
    receiver.set_secrets(&[&secret]);

    let from = "app@example.com";
    let ok = d.send(&key, from, "ok@dest.example");
    let unknown = d.send(&key, from, "unknown@dest.example");
    let blocked = d.send(&key, from, "blocked@dest.example");
    let full = d.send(&key, from, "full@dest.example");
    let later = d.send(&key, from, "later@dest.example");
    let within = Duration::from_secs(40);
    d.wait_status(&key, &ok, "delivered", within);
    let bounced = d.wait_status(&key, &unknown, "bounced", within);
    d.wait_status(&key, &blocked, "bounced", within);
    d.wait_status(&key, &full, "bounced", within);
    d.wait_status(&key, &later, "deferred", within);

    // The timeline: every attempt with MX, IP, TLS, codes, category, response, duration.
    let a = &bounced["attempts"][0];
    assert_eq!(a["recipient"], "unknown@dest.example", "{bounced}");
    assert_eq!(a["attempt"], 1);
    assert_eq!(a["status"], "bounced");
    assert_eq!(a["smtp_code"], 550);
    assert_eq!(a["enhanced_code"], "5.1.1");
    assert_eq!(a["category"], "invalid_recipient");
    assert!(
        a["response"]
            .as_str()
            .is_some_and(|r| r.contains("User unknown")),
        "{a}"
    );
    assert_eq!(a["ip"], "127.0.0.1", "{a}");
    assert!(a["mx"].is_string(), "{a}");
    assert!(a.get("tls").is_some(), "{a}");
    assert!(a["duration_ms"].is_u64(), "{a}");
    assert!(a["at"].is_string(), "{a}");

    // Every event the pull API has reaches the receiver, verified by the library.
    let events = poll(
        Duration::from_secs(30),
        "every event at the receiver",
        || {
            let events = d.events(&key, None);
            let got: BTreeSet<String> = receiver
                .received()
                .iter()
                .filter(|r| r["ok"] == true)
                .filter_map(|r| r["webhook_id"].as_str().map(str::to_string))
                .collect();
            events
                .iter()
                .all(|e| e["id"].as_str().is_some_and(|id| got.contains(id)))
                .then_some(events)
        },
    );
    let recs = receiver.received();
    assert!(!recs.is_empty());
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in &recs {
        assert_eq!(r["ok"], true, "not verified: {r}");
        assert_eq!(r["status"], 204);
        let sig = r["signature"].as_str().expect("signature");
        assert!(sig.starts_with("v1,") && !sig.contains(' '), "{sig}");
        let body: Value = serde_json::from_str(r["body"].as_str().expect("body")).expect("json");
        assert_eq!(body["id"], r["webhook_id"], "webhook-id is the event id");
        let ts: u64 = r["timestamp"]
            .as_str()
            .expect("ts")
            .parse()
            .expect("unix secs");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(ts <= now && now - ts < 600, "timestamp {ts}");
        *seen
            .entry(body["id"].as_str().expect("id").to_string())
            .or_default() += 1;
    }
    // The receiver always answered 2xx: nothing was retried, so each id came once.
    assert!(seen.values().all(|n| *n == 1), "duplicates: {seen:?}");

    // Payload: every field, for the hard bounce.
    let bounce_evt = events
        .iter()
        .find(|e| {
            e["type"] == "message.bounced" && e["data"]["recipient"] == "unknown@dest.example"
        })
        .expect("the bounce event")
        .clone();
    let data = &bounce_evt["data"];
    assert_eq!(data["message_id"], unknown.as_str());
    assert!(
        data["message_id_header"]
            .as_str()
            .is_some_and(|h| h.starts_with('<') && h.ends_with('>'))
    );
    assert_eq!(data["status"], "bounced");
    assert_eq!(data["smtp_code"], 550);
    assert_eq!(data["enhanced_code"], "5.1.1");
    assert_eq!(data["category"], "invalid_recipient");
    assert!(
        data["response"]
            .as_str()
            .is_some_and(|r| r.contains("User unknown"))
    );
    assert_eq!(data["attempt"], 1);
    assert!(data["mx"].is_string(), "{data}");
    assert!(bounce_evt["seq"].is_u64() && bounce_evt["timestamp"].is_string());
    let received_body = recs
        .iter()
        .find(|r| r["webhook_id"] == bounce_evt["id"])
        .map(|r| {
            serde_json::from_str::<Value>(r["body"].as_str().unwrap_or("")).unwrap_or_default()
        })
        .expect("posted");
    assert_eq!(received_body, bounce_evt, "webhook body == pull API event");
    // In order, by seq.
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // The `type` filter.
    let bounces = d.events(&key, Some("message.bounced"));
    let rcpts: BTreeSet<&str> = bounces
        .iter()
        .filter_map(|e| e["data"]["recipient"].as_str())
        .collect();
    assert_eq!(
        rcpts,
        [
            "blocked@dest.example",
            "full@dest.example",
            "unknown@dest.example"
        ]
        .into()
    );
    assert!(bounces.iter().all(|e| e["type"] == "message.bounced"));
    let delivered = d.events(&key, Some("message.delivered"));
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(!d.events(&key, Some("message.queued")).is_empty());
    let (s, v) = d.get("/v1/events?type=message.nope", Some(&key));
    assert_eq!(s, 400, "{v}");

    // Suppression: only the 5.1.1 address, with its cause.
    let (s, sup) = d.get("/v1/suppressions", Some(&key));
    assert_eq!(s, 200);
    let sup = sup["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(sup.len(), 1, "{sup:?}");
    let e = &sup[0];
    assert_eq!(e["address"], "unknown@dest.example");
    assert_eq!(e["source"], "bounce");
    assert_eq!(e["smtp_code"], 550);
    assert_eq!(e["enhanced_code"], "5.1.1");
    assert_eq!(e["category"], "invalid_recipient");
    assert_eq!(e["event_id"], bounce_evt["id"]);
    assert!(
        e["reason"].as_str().is_some_and(|r| r.contains("5.1.1")),
        "{e}"
    );

    // A second message to it ends `suppressed` without any SMTP attempt.
    assert_eq!(sink.rcpts("unknown@dest.example").len(), 1);
    let again = d.send(&key, from, "unknown@dest.example");
    let m = d.wait_status(&key, &again, "suppressed", within);
    assert_eq!(m["attempts"].as_array().map(Vec::len), Some(0), "{m}");
    // The policy block is not suppressed: its next message is attempted.
    let again_blocked = d.send(&key, from, "blocked@dest.example");
    d.wait_status(&key, &again_blocked, "bounced", within);
    sink.wait_rcpts("blocked@dest.example", 2, within);
    assert_eq!(
        sink.rcpts("unknown@dest.example").len(),
        1,
        "an RCPT for a suppressed address"
    );
    let sup_evt = poll(within, "message.suppressed", || {
        d.events(&key, Some("message.suppressed"))
            .into_iter()
            .find(|e| e["data"]["message_id"] == again.as_str())
    });
    assert_eq!(sup_evt["data"]["status"], "suppressed");
    assert_eq!(sup_evt["data"]["category"], "suppressed");

    // Manual suppressions: added, honoured, removed.
    let (s, v) = d.post(
        "/v1/suppressions",
        Some(&key),
        r#"{"address":"manual@dest.example","reason":"asked us to stop"}"#,
    );
    assert_eq!(s, 201, "{v}");
    let (_, sup) = d.get("/v1/suppressions", Some(&key));
    let manual = sup["data"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|e| e["address"] == "manual@dest.example")
                .cloned()
        })
        .expect("listed");
    assert_eq!(manual["source"], "manual");
    assert_eq!(manual["reason"], "asked us to stop");
    let m1 = d.send(&key, from, "manual@dest.example");
    d.wait_status(&key, &m1, "suppressed", within);
    let (s, _) = d.delete("/v1/suppressions/manual@dest.example", Some(&key));
    assert_eq!(s, 204);
    let (s, _) = d.delete("/v1/suppressions/manual@dest.example", Some(&key));
    assert_eq!(s, 404);
    assert!(sink.rcpts("manual@dest.example").is_empty());
    let m2 = d.send(&key, from, "manual@dest.example");
    d.wait_status(&key, &m2, "delivered", within);
    assert_eq!(sink.rcpts("manual@dest.example").len(), 1);

    // The delivery log: each attempt with its status code, duration and time.
    let (s, dl) = d.get(
        &format!("/v1/webhooks/{ep_id}/deliveries?limit=100"),
        Some(&key),
    );
    assert_eq!(s, 200, "{dl}");
    let rows = dl["data"].as_array().cloned().unwrap_or_default();
    let row = rows
        .iter()
        .find(|r| r["event_id"] == bounce_evt["id"])
        .expect("the bounce's delivery");
    assert_eq!(row["state"], "delivered", "{row}");
    assert_eq!(row["type"], "message.bounced");
    let att = &row["attempt_log"][0];
    assert_eq!(att["status_code"], 204, "{row}");
    assert!(
        att["duration_ms"].is_u64() && att["at"].is_string(),
        "{row}"
    );

    // The check can fail: the library refuses a tampered body, a wrong secret and a
    // stale timestamp (and accepts the untouched request, as a control).
    let rec = recs
        .iter()
        .find(|r| r["webhook_id"] == bounce_evt["id"])
        .expect("recorded")
        .clone();
    let id = rec["webhook_id"].as_str().expect("id");
    let ts = rec["timestamp"].as_str().expect("ts");
    let sig = rec["signature"].as_str().expect("sig");
    let body = rec["body"].as_str().expect("body");
    let probe = format!("http://127.0.0.1:{}/probe", receiver.port);
    let post = |url: &str, ts: &str, sig: &str, body: &str| {
        let headers = [
            ("content-type", "application/json"),
            ("webhook-id", id),
            ("webhook-timestamp", ts),
            ("webhook-signature", sig),
        ];
        http::request("POST", url, &headers, Some(body.as_bytes()))
            .expect("HTTP request")
            .status
    };
    assert_eq!(post(&probe, ts, sig, body), 204, "control");
    let tampered = body.replacen("bounced", "delivered", 1);
    assert_eq!(post(&probe, ts, sig, &tampered), 400, "tampered body");
    let wrong = outpost_core::webhook::format_secret(&[7u8; 32]);
    let wrong_url = format!("{probe}?secret={}", query_escape(&wrong));
    assert_eq!(post(&wrong_url, ts, sig, body), 400, "wrong secret");
    let stale = ts.parse::<u64>().expect("ts") - 3600;
    let stale_sig = outpost_core::webhook::sign(&raw, id, stale, body);
    assert_eq!(
        post(&probe, &stale.to_string(), &stale_sig, body),
        400,
        "stale"
    );
    let fresh = ts.parse::<u64>().expect("ts");
    let fresh_sig = outpost_core::webhook::sign(&raw, id, fresh, body);
    assert_eq!(
        post(&probe, &fresh.to_string(), &fresh_sig, body),
        204,
        "re-signed"
    );
    let probes: Vec<Value> = receiver
        .received()
        .into_iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/probe")))
        .collect();
    assert_eq!(probes.len(), 5);
    assert!(
        probes[1]["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("signature")),
        "{probes:?}"
    );
    assert!(
        probes[3]["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("old")),
        "{probes:?}"
    );

    // The deferred address fails at max age (1 minute): deferred events, then failed.
    let failed = d.wait_status(&key, &later, "failed", Duration::from_secs(120));
    assert!(
        failed["attempts"].as_array().is_some_and(|a| !a.is_empty()),
        "{failed}"
    );
    let fail_evt = poll(
        Duration::from_secs(30),
        "message.failed at the receiver",
        || {
            let evt = d.events(&key, Some("message.failed")).into_iter().next()?;
            receiver
                .received()
                .iter()
                .any(|r| r["webhook_id"] == evt["id"] && r["ok"] == true)
                .then_some(evt)
        },
    );
    assert_eq!(fail_evt["data"]["recipient"], "later@dest.example");
    let deferred = d.events(&key, Some("message.deferred"));
    assert!(!deferred.is_empty());
    assert_eq!(deferred[0]["data"]["smtp_code"], 450);
    assert!(
        sink.rcpts("later@dest.example").len() >= 2,
        "retried on the schedule: {:?}",
        sink.rcpts("later@dest.example")
    );

    // Logs carry message ids, never addresses.
    let log = d.log();
    for a in [
        "unknown@dest.example",
        "blocked@dest.example",
        "later@dest.example",
    ] {
        assert!(!log.contains(a), "{a} in the daemon's log");
    }
}
