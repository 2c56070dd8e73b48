//! Webhook delivery under failure, end to end: a receiver down for a while then up gets
//! every event (none lost), a retried POST carries the same `webhook-id`, a dead endpoint
//! does not hold back another, a delivery that failed for good is replayable (also after a
//! daemon restart), and after a secret rotation both signatures verify.

mod events_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use events_support::*;
use outpost_tests::daemon::{Daemon, free_port, fresh_dir};
use outpost_tests::python::{Receiver, SmtpSink, skip_without_python};
use serde_json::Value;

/// Event ids the receiver answered 2xx, with how many requests it saw per id.
fn seen(r: &Receiver) -> (BTreeSet<String>, BTreeMap<String, Vec<u64>>) {
    let mut ok = BTreeSet::new();
    let mut all: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for rec in received(r) {
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

fn create_endpoint(base: &str, key: &str, url: &str, events: &str) -> (String, String) {
    let (s, ep) = call(
        "POST",
        &format!("{base}/v1/webhooks"),
        Some(key),
        Some(&format!(r#"{{"url":"{url}","events":{events}}}"#)),
    );
    assert_eq!(s, 201, "{ep}");
    (
        ep["id"].as_str().expect("id").to_string(),
        ep["secret"].as_str().expect("secret").to_string(),
    )
}

fn deliveries(base: &str, key: &str, ep: &str) -> Vec<Value> {
    let (s, v) = call(
        "GET",
        &format!("{base}/v1/webhooks/{ep}/deliveries?limit=100"),
        Some(key),
        None,
    );
    assert_eq!(s, 200, "{v}");
    v["data"].as_array().cloned().unwrap_or_default()
}

#[test]
fn receivers_down_then_up_lose_nothing_and_rotation_signs_twice() {
    if skip_without_python() {
        return;
    }
    let dir = fresh_dir(
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        "events-retries",
    );
    let sink = SmtpSink::start(free_port());
    // r1 answers 503 to its first two verified requests: those are retried.
    let mut r1 = Receiver::start(&dir, free_port(), 2);
    let mut r2 = Receiver::start(&dir, free_port(), 0);
    let config = write_config(
        &dir,
        r#"
[webhooks]
retry_schedule = ["1s"]
retry_every = "1s"
give_up_after = "15s"
"#,
    );
    let relay = format!("127.0.0.1:{}", sink.port);
    let args = [
        "--relay",
        &relay,
        "--allow-private-webhooks",
        "--config",
        &config,
    ];
    let data = dir.join("data");
    let mut d = Daemon::start(&data, &args, ADMIN);
    let base = d.url("");
    let key = tenant_key(&base, "example.com");
    let (ep1, secret1) = create_endpoint(&base, &key, &r1.url(), "[]");
    let (ep2, secret2) = create_endpoint(&base, &key, &r2.url(), r#"["message.delivered"]"#);
    r1.set_secrets(&[&secret1]);
    r2.set_secrets(&[&secret2]);

    // Both receivers down: connections refused.
    r1.down();
    r2.down();
    let m1 = send(&base, &key, "app@example.com", "ok1@dest.example");
    let m2 = send(&base, &key, "app@example.com", "ok2@dest.example");
    // Delivery does not wait for webhooks.
    wait_message_status(&base, &key, &m1, "delivered", Duration::from_secs(30));
    wait_message_status(&base, &key, &m2, "delivered", Duration::from_secs(30));
    let events = all_events(&base, &key, None);
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
    let rows = wait_for("failed attempts logged", Duration::from_secs(20), || {
        let rows = deliveries(&base, &key, &ep1);
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
    wait_for("r1 has every event", Duration::from_secs(30), || {
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
        received(&r1).iter().all(|r| r["ok"] == true),
        "all verified"
    );
    // r2 was dead all along and did not hold r1 back. Its deliveries (only the
    // subscribed type) fail for good after `give_up_after`, and are kept.
    let rows = wait_for("r2's deliveries failed", Duration::from_secs(40), || {
        let rows = deliveries(&base, &key, &ep2);
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
    drop(d);
    d = Daemon::start(&data, &args, ADMIN);
    let base = d.url("");
    r2.up(0);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        received(&r2).is_empty(),
        "a failed delivery was re-sent by itself"
    );
    // ...and are replayable by hand, with the same webhook-id; attempt numbers continue.
    for id in &delivered_ids {
        let (s, v) = call(
            "POST",
            &format!("{base}/v1/webhooks/{ep2}/deliveries/{id}/retry"),
            Some(&key),
            None,
        );
        assert_eq!(s, 202, "{v}");
    }
    wait_for("r2 got the replays", Duration::from_secs(20), || {
        let (ok, _) = seen(&r2);
        (ok == delivered_ids).then_some(())
    });
    assert!(received(&r2).iter().all(|r| r["ok"] == true));
    let rows = wait_for("replays logged", Duration::from_secs(10), || {
        let rows = deliveries(&base, &key, &ep2);
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
    let (s, _) = call(
        "POST",
        &format!("{base}/v1/webhooks/{ep2}/deliveries/evt_00000000000000000000000000/retry"),
        Some(&key),
        None,
    );
    assert_eq!(s, 404);

    // Rotation: from now on both the old and the new secret verify (24 h overlap).
    let (s, rot) = call(
        "POST",
        &format!("{base}/v1/webhooks/{ep1}/rotate-secret"),
        Some(&key),
        None,
    );
    assert_eq!(s, 200, "{rot}");
    let new_secret = rot["secret"].as_str().expect("secret").to_string();
    assert_ne!(new_secret, secret1);
    r1.set_secrets(&[&secret1, &new_secret]);
    let before = received(&r1).len();
    let m3 = send(&base, &key, "app@example.com", "ok3@dest.example");
    wait_message_status(&base, &key, &m3, "delivered", Duration::from_secs(30));
    let recs = wait_for("r1 got m3's events", Duration::from_secs(20), || {
        let recs: Vec<Value> = received(&r1).into_iter().skip(before).collect();
        (recs.iter().filter(|r| r["status"] == 204).count() >= 2).then_some(recs)
    });
    for r in &recs {
        assert_eq!(r["verified"], serde_json::json!([true, true]), "{r}");
        let sig = r["signature"].as_str().unwrap_or("");
        assert_eq!(sig.split(' ').count(), 2, "two signatures: {sig}");
    }

    // Deleting an endpoint: gone from the list, its log 404.
    let (s, _) = call(
        "DELETE",
        &format!("{base}/v1/webhooks/{ep2}"),
        Some(&key),
        None,
    );
    assert_eq!(s, 204);
    let (_, list) = call("GET", &format!("{base}/v1/webhooks"), Some(&key), None);
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
    let (s, _) = call(
        "GET",
        &format!("{base}/v1/webhooks/{ep2}/deliveries"),
        Some(&key),
        None,
    );
    assert_eq!(s, 404);
    assert_eq!(d.terminate().code(), Some(0));
}
