//! Tenant isolation end to end: tenant B never sees tenant A's events, messages,
//! suppressions or webhooks, and another tenant's ids answer 404 (not 403: their existence
//! is not revealed).

mod events_support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use events_support::*;
use outpost_tests::daemon::{Daemon, free_port, fresh_dir};
use outpost_tests::python::{Receiver, SmtpSink, skip_without_python};

#[test]
fn a_tenant_never_sees_another_tenants_data() {
    if skip_without_python() {
        return;
    }
    let dir = fresh_dir(
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        "events-tenants",
    );
    let sink = SmtpSink::start(free_port());
    let ra = Receiver::start(&dir, free_port(), 0);
    let rb = Receiver::start(&dir, free_port(), 0);
    let relay = format!("127.0.0.1:{}", sink.port);
    let d = Daemon::start(
        &dir.join("data"),
        &["--relay", &relay, "--allow-private-webhooks"],
        ADMIN,
    );
    let base = d.url("");
    let ka = tenant_key(&base, "a.example");
    let kb = tenant_key(&base, "b.example");
    let hook = |key: &str, r: &Receiver| {
        let (s, ep) = call(
            "POST",
            &format!("{base}/v1/webhooks"),
            Some(key),
            Some(&format!(r#"{{"url":"{}"}}"#, r.url())),
        );
        assert_eq!(s, 201, "{ep}");
        r.set_secrets(&[ep["secret"].as_str().expect("secret")]);
        ep["id"].as_str().expect("id").to_string()
    };
    let ep_a = hook(&ka, &ra);
    let ep_b = hook(&kb, &rb);
    // Each suppresses an address by hand; A also bounces one (5.1.1).
    for (key, addr) in [(&ka, "stop-a@dest.example"), (&kb, "stop-b@dest.example")] {
        let (s, v) = call(
            "POST",
            &format!("{base}/v1/suppressions"),
            Some(key),
            Some(&format!(r#"{{"address":"{addr}"}}"#)),
        );
        assert_eq!(s, 201, "{v}");
    }
    let ma = send(&base, &ka, "app@a.example", "unknown-x@dest.example");
    let mb = send(&base, &kb, "app@b.example", "someone@dest.example");
    wait_message_status(&base, &ka, &ma, "bounced", Duration::from_secs(30));
    wait_message_status(&base, &kb, &mb, "delivered", Duration::from_secs(30));
    // A's bounce suppressed the address for A only: B's message to it is attempted.
    let mb2 = send(&base, &kb, "app@b.example", "unknown-x@dest.example");
    wait_message_status(&base, &kb, &mb2, "bounced", Duration::from_secs(30));
    sink.wait_rcpts("unknown-x@dest.example", 2, Duration::from_secs(10));

    // Messages.
    let (s, _) = call("GET", &format!("{base}/v1/messages/{ma}"), Some(&kb), None);
    assert_eq!(s, 404);
    let (s, list) = call("GET", &format!("{base}/v1/messages"), Some(&kb), None);
    assert_eq!(s, 200);
    let ids: BTreeSet<&str> = list["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, [mb.as_str(), mb2.as_str()].into());

    // Events: B's stream holds B's messages only.
    let ev_b = all_events(&base, &kb, None);
    assert!(!ev_b.is_empty());
    for e in &ev_b {
        let m = e["data"]["message_id"].as_str().unwrap_or("");
        assert!(m == mb || m == mb2, "B sees {e}");
    }
    assert!(
        all_events(&base, &kb, Some("message.bounced"))
            .iter()
            .all(|e| e["data"]["message_id"] == mb2.as_str())
    );
    // And so do the webhooks: each receiver gets its tenant's events only.
    wait_for(
        "A's events at A's receiver",
        Duration::from_secs(20),
        || (received(&ra).len() >= all_events(&base, &ka, None).len()).then_some(()),
    );
    wait_for(
        "B's events at B's receiver",
        Duration::from_secs(20),
        || (received(&rb).len() >= ev_b.len()).then_some(()),
    );
    for r in received(&ra) {
        assert!(r["body"].as_str().is_some_and(|b| b.contains(&ma)), "{r}");
        assert_eq!(r["ok"], true);
    }
    for r in received(&rb) {
        assert!(!r["body"].as_str().unwrap_or("").contains(&ma), "{r}");
        assert_eq!(r["ok"], true);
    }

    // Suppressions.
    let (_, sup) = call("GET", &format!("{base}/v1/suppressions"), Some(&kb), None);
    let addrs: BTreeSet<&str> = sup["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["address"].as_str()).collect())
        .unwrap_or_default();
    // B's own bounce suppressed the address for B too, caused by B's event.
    assert_eq!(
        addrs,
        ["stop-b@dest.example", "unknown-x@dest.example"].into(),
        "{sup}"
    );
    let cause = sup["data"][1]["event_id"].clone();
    assert!(
        ev_b.iter().any(|e| e["id"] == cause),
        "{cause} is not B's event"
    );
    let (s, _) = call(
        "DELETE",
        &format!("{base}/v1/suppressions/stop-a@dest.example"),
        Some(&kb),
        None,
    );
    assert_eq!(s, 404);
    let (_, sup_a) = call("GET", &format!("{base}/v1/suppressions"), Some(&ka), None);
    assert_eq!(sup_a["data"].as_array().map(Vec::len), Some(2), "{sup_a}");

    // Webhooks.
    let (_, list) = call("GET", &format!("{base}/v1/webhooks"), Some(&kb), None);
    let eps: Vec<&str> = list["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(eps, vec![ep_b.as_str()]);
    let evt_a = all_events(&base, &ka, None)[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    for (method, path) in [
        ("GET", format!("/v1/webhooks/{ep_a}/deliveries")),
        ("POST", format!("/v1/webhooks/{ep_a}/rotate-secret")),
        (
            "POST",
            format!("/v1/webhooks/{ep_a}/deliveries/{evt_a}/retry"),
        ),
        // B's own endpoint with A's event: still not found.
        (
            "POST",
            format!("/v1/webhooks/{ep_b}/deliveries/{evt_a}/retry"),
        ),
        ("DELETE", format!("/v1/webhooks/{ep_a}")),
    ] {
        let (s, v) = call(method, &format!("{base}{path}"), Some(&kb), None);
        assert_eq!(s, 404, "{method} {path}: {v}");
    }
    // A's endpoint survived B's attempts.
    let (_, list) = call("GET", &format!("{base}/v1/webhooks"), Some(&ka), None);
    assert_eq!(list["data"][0]["id"], ep_a.as_str());
}
