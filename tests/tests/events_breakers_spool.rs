//! Breaker warm-up and orphan spool clean-up in the real daemon: a destination that
//! failed 5 times in the last hour has its breaker open right after a restart (from
//! `delivery_attempts`), the admin routes show and force it; the clean-up removes an old
//! orphan and leaves live and young files alone.

mod events_support;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use events_support::*;
use outpost_core::MessageId;
use outpost_tests::daemon::{Daemon, free_port, fresh_dir};
use serde_json::Value;

fn breaker(base: &str, domain: &str) -> Option<Value> {
    let (s, v) = call(
        "GET",
        &format!("{base}/v1/admin/breakers"),
        Some(ADMIN),
        None,
    );
    assert_eq!(s, 200, "{v}");
    v["data"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["domain"] == domain).cloned())
}

#[test]
fn a_failing_destination_is_open_right_after_a_restart() {
    let dir = fresh_dir(
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        "events-breaker",
    );
    // Nothing listens there: every connection is refused.
    let relay = format!("127.0.0.1:{}", free_port());
    let config = write_config(
        &dir,
        "retry_schedule = [\"1s\"]\nretry_jitter_percent = 0\n",
    );
    let args = ["--relay", &relay, "--config", &config];
    let data = dir.join("data");
    let mut d = Daemon::start(&data, &args, ADMIN);
    let base = d.url("");
    let key = tenant_key(&base, "example.com");
    let ids: Vec<String> = (0..5)
        .map(|i| {
            send(
                &base,
                &key,
                "app@example.com",
                &format!("r{i}@down.example"),
            )
        })
        .collect();
    let before = wait_for("the breaker to open", Duration::from_secs(60), || {
        breaker(&base, "down.example").filter(|b| b["state"] == "open")
    });
    assert!(
        before["consecutive_failures"].as_u64() >= Some(5),
        "{before}"
    );
    // Attempts are in the timeline (connection refused, no SMTP code).
    let (_, m) = call(
        "GET",
        &format!("{base}/v1/messages/{}", ids[0]),
        Some(&key),
        None,
    );
    let a = &m["attempts"][0];
    assert_eq!(a["status"], "deferred", "{m}");
    assert!(a["smtp_code"].is_null() && a["response"].is_string(), "{a}");

    assert_eq!(d.terminate().code(), Some(0));
    drop(d);
    let mut d = Daemon::start(&data, &args, ADMIN);
    let base = d.url("");
    // Open at once, from the attempts of the last hour.
    let b = breaker(&base, "down.example").expect("warmed-up breaker");
    assert_eq!(b["state"], "open", "{b}");
    assert!(b["consecutive_failures"].as_u64() >= Some(5), "{b}");
    assert!(b["last_failure"].is_string(), "{b}");
    assert!(
        !b["opened_at"].is_null() && !b["next_probe_at"].is_null(),
        "{b}"
    );
    assert_eq!(b["forced"], false);

    // The admin key only.
    let (s, _) = call(
        "GET",
        &format!("{base}/v1/admin/breakers"),
        Some(&key),
        None,
    );
    assert_eq!(s, 403);
    let (s, _) = call("GET", &format!("{base}/v1/admin/breakers"), None, None);
    assert_eq!(s, 401);
    let (s, _) = call(
        "POST",
        &format!("{base}/v1/admin/breakers/down.example"),
        Some(&key),
        Some(r#"{"state":"closed"}"#),
    );
    assert_eq!(s, 403);
    // Forced closed, then forced open.
    let (s, v) = call(
        "POST",
        &format!("{base}/v1/admin/breakers/down.example"),
        Some(ADMIN),
        Some(r#"{"state":"closed"}"#),
    );
    assert_eq!(s, 200, "{v}");
    let b = breaker(&base, "down.example");
    assert!(b.as_ref().is_none_or(|b| b["state"] != "open"), "{b:?}");
    let (s, v) = call(
        "POST",
        &format!("{base}/v1/admin/breakers/other.example"),
        Some(ADMIN),
        Some(r#"{"state":"open"}"#),
    );
    assert_eq!(s, 200, "{v}");
    let b = breaker(&base, "other.example").expect("forced");
    assert_eq!(b["state"], "open");
    assert_eq!(b["forced"], true);
    assert!(b["next_probe_at"].is_null(), "no probe while forced: {b}");

    // Without --allow-private-webhooks, loopback endpoints are refused.
    let (s, v) = call(
        "POST",
        &format!("{base}/v1/webhooks"),
        Some(&key),
        Some(r#"{"url":"http://127.0.0.1:9/hook"}"#),
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
    let dir = fresh_dir(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")), "events-spool");
    let relay = format!("127.0.0.1:{}", free_port());
    let config = write_config(
        &dir,
        "retry_schedule = [\"1h\"]\nspool_cleanup_interval = \"1s\"\n",
    );
    let data = dir.join("data");
    let d = Daemon::start(&data, &["--relay", &relay, "--config", &config], ADMIN);
    let base = d.url("");
    let key = tenant_key(&base, "example.com");
    // A live message (deferred: nothing listens at the relay).
    let live = send(&base, &key, "app@example.com", "r@down.example");
    wait_message_status(&base, &key, &live, "deferred", Duration::from_secs(30));
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
    wait_for("the orphan deleted", Duration::from_secs(30), || {
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
    let (_, m) = call(
        "GET",
        &format!("{base}/v1/messages/{live}"),
        Some(&key),
        None,
    );
    assert_eq!(m["status"], "deferred");
}
