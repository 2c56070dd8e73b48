//! Tenant isolation end to end: tenant B never sees tenant A's events, messages,
//! suppressions or webhooks, and another tenant's ids answer 404 (not 403: their existence
//! is not revealed).

use std::collections::BTreeSet;
use std::time::Duration;

use outpost_tests::http::AsBody;
use outpost_tests::python::{self, Receiver, SmtpSink};
use outpost_tests::{Daemon, free_port, poll, require, scratch_dir};

#[test]
fn a_tenant_never_sees_another_tenants_data() {
    if !require(
        python::available(),
        "python3 with standardwebhooks and aiosmtpd",
    ) {
        return;
    }
    let dir = scratch_dir("events-tenants");
    let sink = SmtpSink::start(free_port());
    let ra = Receiver::start(&dir, free_port(), 0);
    let rb = Receiver::start(&dir, free_port(), 0);
    let d = Daemon::builder(dir.join("data"))
        .relay(sink.port)
        .arg("--allow-private-webhooks")
        .start();
    let ka = d.create_key("a.example");
    let kb = d.create_key("b.example");
    let hook = |key: &str, r: &Receiver| {
        let (s, ep) = d.post(
            "/v1/webhooks",
            Some(key),
            format!(r#"{{"url":"{}"}}"#, r.url()),
        );
        assert_eq!(s, 201, "{ep}");
        r.set_secrets(&[ep["secret"].as_str().expect("secret")]);
        ep["id"].as_str().expect("id").to_string()
    };
    let ep_a = hook(&ka, &ra);
    let ep_b = hook(&kb, &rb);
    // Each suppresses an address by hand; A also bounces one (5.1.1).
    for (key, addr) in [(&ka, "stop-a@dest.example"), (&kb, "stop-b@dest.example")] {
        let (s, v) = d.post(
            "/v1/suppressions",
            Some(key),
            format!(r#"{{"address":"{addr}"}}"#),
        );
        assert_eq!(s, 201, "{v}");
    }
    let ma = d.send(&ka, "app@a.example", "unknown-x@dest.example");
    let mb = d.send(&kb, "app@b.example", "someone@dest.example");
    d.wait_status(&ka, &ma, "bounced", Duration::from_secs(30));
    d.wait_status(&kb, &mb, "delivered", Duration::from_secs(30));
    // A's bounce suppressed the address for A only: B's message to it is attempted.
    let mb2 = d.send(&kb, "app@b.example", "unknown-x@dest.example");
    d.wait_status(&kb, &mb2, "bounced", Duration::from_secs(30));
    sink.wait_rcpts("unknown-x@dest.example", 2, Duration::from_secs(10));

    // Messages.
    let (s, _) = d.get(&format!("/v1/messages/{ma}"), Some(&kb));
    assert_eq!(s, 404);
    let (s, list) = d.get("/v1/messages", Some(&kb));
    assert_eq!(s, 200);
    let ids: BTreeSet<&str> = list["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, [mb.as_str(), mb2.as_str()].into());

    // Events: B's stream holds B's messages only.
    let ev_b = d.events(&kb, None);
    assert!(!ev_b.is_empty());
    for e in &ev_b {
        let m = e["data"]["message_id"].as_str().unwrap_or("");
        assert!(m == mb || m == mb2, "B sees {e}");
    }
    assert!(
        d.events(&kb, Some("message.bounced"))
            .iter()
            .all(|e| e["data"]["message_id"] == mb2.as_str())
    );
    // And so do the webhooks: each receiver gets its tenant's events only.
    poll(
        Duration::from_secs(20),
        "A's events at A's receiver",
        || (ra.received().len() >= d.events(&ka, None).len()).then_some(()),
    );
    poll(
        Duration::from_secs(20),
        "B's events at B's receiver",
        || (rb.received().len() >= ev_b.len()).then_some(()),
    );
    for r in ra.received() {
        assert!(r["body"].as_str().is_some_and(|b| b.contains(&ma)), "{r}");
        assert_eq!(r["ok"], true);
    }
    for r in rb.received() {
        assert!(!r["body"].as_str().unwrap_or("").contains(&ma), "{r}");
        assert_eq!(r["ok"], true);
    }

    // Suppressions.
    let (_, sup) = d.get("/v1/suppressions", Some(&kb));
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
    let (s, _) = d.delete("/v1/suppressions/stop-a@dest.example", Some(&kb));
    assert_eq!(s, 404);
    let (_, sup_a) = d.get("/v1/suppressions", Some(&ka));
    assert_eq!(sup_a["data"].as_array().map(Vec::len), Some(2), "{sup_a}");

    // Webhooks.
    let (_, list) = d.get("/v1/webhooks", Some(&kb));
    let eps: Vec<&str> = list["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(eps, vec![ep_b.as_str()]);
    let evt_a = d.events(&ka, None)[0]["id"]
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
        let body = (method == "POST").then_some(&"{}" as &dyn AsBody);
        let (s, v) = d.call(method, &path, Some(&kb), body);
        assert_eq!(s, 404, "{method} {path}: {v}");
    }
    // A's endpoint survived B's attempts.
    let (_, list) = d.get("/v1/webhooks", Some(&ka));
    assert_eq!(list["data"][0]["id"], ep_a.as_str());
}
