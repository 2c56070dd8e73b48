//! Webhook delivery under failure, end to end: a receiver down for a while then up gets
//! every event (none lost), a retried POST carries the same `webhook-id`, a dead endpoint
//! does not hold back another, a delivery that failed for good is replayable (also after a
//! daemon restart), and after a secret rotation both signatures verify.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use outpost_tests::python::{self, Receiver, SmtpSink};
use outpost_tests::{Daemon, free_port, poll, require, scratch_dir};
use serde_json::Value;

/// Event ids the receiver answered 2xx, with how many requests it saw per id.
fn seen(r: &Receiver) -> (BTreeSet<String>, BTreeMap<String, Vec<u64>>) {
    let mut ok = BTreeSet::new();
    let mut all: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for rec in r.received() {
        let Some(id) = rec["webhook_id"].as_str() else {
            continue;
        };
        let status = rec["status"].as_u64().unwrap_or(0);
        if status == 204 {
            ok.insert(id.to_string());
        }
        all.entry(id.to_string()).or_default().push(status);
    }
    (ok, all)
}

fn create_endpoint(d: &Daemon, key: &str, url: &str, events: &str) -> (String, String) {
    let (s, ep) = d.post(
        "/v1/webhooks",
        Some(key),
        format!(r#"{{"url":"{url}","events":{events}}}"#),
    );
    assert_eq!(s, 201, "{ep}");
    (
        ep["id"].as_str().expect("id").to_string(),
        ep["secret"].as_str().expect("secret").to_string(),
    )
}

fn deliveries(d: &Daemon, key: &str, ep: &str) -> Vec<Value> {
    let (s, v) = d.get(
        &format!("/v1/webhooks/{ep}/deliveries?limit=100"),
        Some(key),
    );
    assert_eq!(s, 200, "{v}");
    v["data"].as_array().cloned().unwrap_or_default()
}

#[test]
fn receivers_down_then_up_lose_nothing_and_rotation_signs_twice() {
    if !require(
        python::available(),
        "python3 with standardwebhooks and aiosmtpd",
    ) {
        return;
    }
    let dir = scratch_dir("events-retries");
    let sink = SmtpSink::start(free_port());
    // r1 answers 503 to its first two verified requests: those are retried.
    let mut r1 = Receiver::start(&dir, free_port(), 2);
    let mut r2 = Receiver::start(&dir, free_port(), 0);
    let mut d = Daemon::builder(dir.join("data"))
        .relay(sink.port)
        .arg("--allow-private-webhooks")
        .config(
            r#"
[webhooks]
retry_schedule = ["1s"]
retry_every = "1s"
give_up_after = "15s"
"#,
        )
        .start();
    let key = d.create_key("example.com");
    let (ep1, secret1) = create_endpoint(&d, &key, &r1.url(), "[]");
    let (ep2, secret2) = create_endpoint(&d, &key, &r2.url(), r#"["message.delivered"]"#);
    r1.set_secrets(&[&secret1]);
    r2.set_secrets(&[&secret2]);

    // Both receivers down: connections refused.
    r1.down();
    r2.down();
    let m1 = d.send(&key, "app@example.com", "ok1@dest.example");
    let m2 = d.send(&key, "app@example.com", "ok2@dest.example");
    // Delivery does not wait for webhooks.
    d.wait_status(&key, &m1, "delivered", Duration::from_secs(30));
    d.wait_status(&key, &m2, "delivered", Duration::from_secs(30));
    let events = d.events(&key, None);
    assert_eq!(events.len(), 4, "queued + delivered, twice: {events:?}");
    let ids: BTreeSet<String> = events
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect();
    let delivered_ids: BTreeSet<String> = events
        .iter()
        .filter(|e| e["type"] == "message.delivered")
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect();
    // Failed attempts are logged with their error, the delivery still pending.
    let rows = poll(Duration::from_secs(20), "failed attempts logged", || {
        let rows = deliveries(&d, &key, &ep1);
        (rows.len() == 4 && rows.iter().all(|r| r["attempts"].as_u64() >= Some(2))).then_some(rows)
    });
    for r in &rows {
        assert_eq!(r["state"], "pending", "{r}");
        let a = &r["attempt_log"][0];
        assert!(a["status_code"].is_null() && a["error"].is_string(), "{r}");
        assert!(a["duration_ms"].is_u64() && a["at"].is_string(), "{r}");
    }

    // r1 comes back: every event arrives, verified; the two answered 503 come again with
    // the same webhook-id; each id is delivered (2xx) exactly once.
    r1.up(2);
    poll(Duration::from_secs(30), "r1 has every event", || {
        let (ok, _) = seen(&r1);
        (ok == ids).then_some(())
    });
    let (_, all) = seen(&r1);
    let retried: Vec<&String> = all
        .iter()
        .filter(|(_, s)| s.contains(&503))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(retried.len(), 2, "{all:?}");
    for (id, statuses) in &all {
        assert_eq!(
            statuses.iter().filter(|s| **s == 204).count(),
            1,
            "{id}: {statuses:?}"
        );
        assert_eq!(statuses.last(), Some(&204), "{id}: {statuses:?}");
    }
    assert!(
        r1.received().iter().all(|r| r["ok"] == true),
        "all verified"
    );
    // r2 was dead all along and did not hold r1 back. Its deliveries (only the
    // subscribed type) fail for good after `give_up_after`, and are kept.
    let rows = poll(Duration::from_secs(40), "r2's deliveries failed", || {
        let rows = deliveries(&d, &key, &ep2);
        (rows.len() == 2 && rows.iter().all(|r| r["state"] == "failed")).then_some(rows)
    });
    let got: BTreeSet<String> = rows
        .iter()
        .filter_map(|r| r["event_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(got, delivered_ids, "only message.delivered for ep2");
    let attempts_before: BTreeMap<String, u64> = rows
        .iter()
        .map(|r| {
            (
                r["event_id"].as_str().unwrap_or("").to_string(),
                r["attempts"].as_u64().unwrap_or(0),
            )
        })
        .collect();

    // Restart: the failed deliveries stay failed (not posted again by themselves)...
    assert_eq!(d.terminate().code(), Some(0));
    let mut d = d.restart();
    r2.up(0);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        r2.received().is_empty(),
        "a failed delivery was re-sent by itself"
    );
    // ...and are replayable by hand, with the same webhook-id; attempt numbers continue.
    for id in &delivered_ids {
        let (s, v) = d.post(
            &format!("/v1/webhooks/{ep2}/deliveries/{id}/retry"),
            Some(&key),
            "{}",
        );
        assert_eq!(s, 202, "{v}");
    }
    poll(Duration::from_secs(20), "r2 got the replays", || {
        let (ok, _) = seen(&r2);
        (ok == delivered_ids).then_some(())
    });
    assert!(r2.received().iter().all(|r| r["ok"] == true));
    let rows = poll(Duration::from_secs(10), "replays logged", || {
        let rows = deliveries(&d, &key, &ep2);
        rows.iter()
            .all(|r| r["state"] == "delivered")
            .then_some(rows)
    });
    for r in &rows {
        let id = r["event_id"].as_str().unwrap_or("");
        assert_eq!(
            r["attempts"].as_u64(),
            attempts_before.get(id).map(|n| n + 1),
            "{r}"
        );
    }
    // An unknown event id is 404.
    let (s, _) = d.post(
        &format!("/v1/webhooks/{ep2}/deliveries/evt_00000000000000000000000000/retry"),
        Some(&key),
        "{}",
    );
    assert_eq!(s, 404);

    // Rotation: from now on both the old and the new secret verify (24 h overlap).
    let (s, rot) = d.post(
        &format!("/v1/webhooks/{ep1}/rotate-secret"),
        Some(&key),
        "{}",
    );
    assert_eq!(s, 200, "{rot}");
    let new_secret = rot["secret"].as_str().expect("secret").to_string();
    assert_ne!(new_secret, secret1);
    r1.set_secrets(&[&secret1, &new_secret]);
    let before = r1.received().len();
    let m3 = d.send(&key, "app@example.com", "ok3@dest.example");
    d.wait_status(&key, &m3, "delivered", Duration::from_secs(30));
    let recs = poll(Duration::from_secs(20), "r1 got m3's events", || {
        let recs: Vec<Value> = r1.received().into_iter().skip(before).collect();
        (recs.iter().filter(|r| r["status"] == 204).count() >= 2).then_some(recs)
    });
    for r in &recs {
        assert_eq!(r["verified"], serde_json::json!([true, true]), "{r}");
        let sig = r["signature"].as_str().unwrap_or("");
        assert_eq!(sig.split(' ').count(), 2, "two signatures: {sig}");
    }

    // Deleting an endpoint: gone from the list, its log 404.
    let (s, _) = d.delete(&format!("/v1/webhooks/{ep2}"), Some(&key));
    assert_eq!(s, 204);
    let (_, list) = d.get("/v1/webhooks", Some(&key));
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
    let (s, _) = d.get(&format!("/v1/webhooks/{ep2}/deliveries"), Some(&key));
    assert_eq!(s, 404);
    assert_eq!(d.terminate().code(), Some(0));
}
