//! Breaker warm-up and orphan spool clean-up in the real daemon: a destination that
//! failed 5 times in the last hour has its breaker open right after a restart (from
//! `delivery_attempts`), the admin routes show and force it; the clean-up removes an old
//! orphan and leaves live and young files alone.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use outpost_core::MessageId;
use outpost_tests::{ADMIN, Daemon, free_port, poll, scratch_dir};
use serde_json::Value;

fn breaker(d: &Daemon, domain: &str) -> Option<Value> {
    let (s, v) = d.get("/v1/admin/breakers", Some(ADMIN));
    assert_eq!(s, 200, "{v}");
    v["data"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["domain"] == domain).cloned())
}

#[test]
fn a_failing_destination_is_open_right_after_a_restart() {
    // Nothing listens there: every connection is refused.
    let mut d = Daemon::builder(scratch_dir("events-breaker").join("data"))
        .relay(free_port())
        .config("retry_schedule = [\"1s\"]\nretry_jitter_percent = 0\n")
        .start();
    let key = d.create_key("example.com");
    let ids: Vec<String> = (0..5)
        .map(|i| d.send(&key, "app@example.com", &format!("r{i}@down.example")))
        .collect();
    let before = poll(Duration::from_secs(60), "the breaker to open", || {
        breaker(&d, "down.example").filter(|b| b["state"] == "open")
    });
    assert!(
        before["consecutive_failures"].as_u64() >= Some(5),
        "{before}"
    );
    // Attempts are in the timeline (connection refused, no SMTP code).
    let (_, m) = d.get(&format!("/v1/messages/{}", ids[0]), Some(&key));
    let a = &m["attempts"][0];
    assert_eq!(a["status"], "deferred", "{m}");
    assert!(a["smtp_code"].is_null() && a["response"].is_string(), "{a}");

    assert_eq!(d.terminate().code(), Some(0));
    let mut d = d.restart();
    // Open at once, from the attempts of the last hour.
    let b = breaker(&d, "down.example").expect("warmed-up breaker");
    assert_eq!(b["state"], "open", "{b}");
    assert!(b["consecutive_failures"].as_u64() >= Some(5), "{b}");
    assert!(b["last_failure"].is_string(), "{b}");
    assert!(
        !b["opened_at"].is_null() && !b["next_probe_at"].is_null(),
        "{b}"
    );
    assert_eq!(b["forced"], false);

    // The admin key only.
    let (s, _) = d.get("/v1/admin/breakers", Some(&key));
    assert_eq!(s, 403);
    let (s, _) = d.get("/v1/admin/breakers", None);
    assert_eq!(s, 401);
    let (s, _) = d.post(
        "/v1/admin/breakers/down.example",
        Some(&key),
        r#"{"state":"closed"}"#,
    );
    assert_eq!(s, 403);
    // Forced closed, then forced open.
    let (s, v) = d.post(
        "/v1/admin/breakers/down.example",
        Some(ADMIN),
        r#"{"state":"closed"}"#,
    );
    assert_eq!(s, 200, "{v}");
    let b = breaker(&d, "down.example");
    assert!(b.as_ref().is_none_or(|b| b["state"] != "open"), "{b:?}");
    let (s, v) = d.post(
        "/v1/admin/breakers/other.example",
        Some(ADMIN),
        r#"{"state":"open"}"#,
    );
    assert_eq!(s, 200, "{v}");
    let b = breaker(&d, "other.example").expect("forced");
    assert_eq!(b["state"], "open");
    assert_eq!(b["forced"], true);
    assert!(b["next_probe_at"].is_null(), "no probe while forced: {b}");

    // Without --allow-private-webhooks, loopback endpoints are refused.
    let (s, v) = d.post(
        "/v1/webhooks",
        Some(&key),
        r#"{"url":"http://127.0.0.1:9/hook"}"#,
    );
    assert_eq!(s, 422, "{v}");
    assert_eq!(d.terminate().code(), Some(0));
}

fn set_mtime(path: &std::path::Path, age: Duration) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open spool file");
    f.set_modified(SystemTime::now() - age).expect("set mtime");
}

fn spool_file(data: &std::path::Path, id: &str) -> PathBuf {
    data.join("spool").join(&id[id.len() - 2..]).join(id)
}

#[test]
fn spool_cleanup_removes_old_orphans_only() {
    let data = scratch_dir("events-spool").join("data");
    let d = Daemon::builder(&data)
        .relay(free_port())
        .config("retry_schedule = [\"1h\"]\nspool_cleanup_interval = \"1s\"\n")
        .start();
    let key = d.create_key("example.com");
    // A live message (deferred: nothing listens at the relay).
    let live = d.send(&key, "app@example.com", "r@down.example");
    d.wait_status(&key, &live, "deferred", Duration::from_secs(30));
    let live_path = spool_file(&data, &live);
    assert!(live_path.is_file(), "{}", live_path.display());
    const DAY: Duration = Duration::from_secs(86_400);
    // Old, but live: kept.
    set_mtime(&live_path, 30 * DAY);
    // An old orphan and a young one (younger than max age, 7 days by default).
    let old = MessageId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef).to_string();
    let young = MessageId(0x0fed_cba9_8765_4321_0fed_cba9_8765_4321).to_string();
    for (id, age) in [(&old, 30 * DAY), (&young, DAY)] {
        let p = spool_file(&data, id);
        std::fs::create_dir_all(p.parent().expect("shard")).expect("shard dir");
        std::fs::write(&p, "Subject: orphan\r\n\r\nbody\r\n").expect("write");
        set_mtime(&p, age);
    }
    poll(Duration::from_secs(30), "the orphan deleted", || {
        (!spool_file(&data, &old).exists()).then_some(())
    });
    d.wait_for_log("deleting orphaned spool files", Duration::from_secs(5));
    // A few more scans: still nothing else goes.
    std::thread::sleep(Duration::from_secs(3));
    assert!(live_path.is_file(), "the live file was deleted");
    assert!(
        spool_file(&data, &young).is_file(),
        "the young orphan was deleted"
    );
    let (_, m) = d.get(&format!("/v1/messages/{live}"), Some(&key));
    assert_eq!(m["status"], "deferred");
}
