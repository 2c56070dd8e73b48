//! The operator CLI against a running daemon: keys, queue, message timeline, breakers,
//! suppressions, retry, bounce (cancel), classify (offline), `--json`, and the error when
//! no daemon runs.

use std::process::Command;
use std::time::Duration;

use outpost_tests::sinks::smtp_sink;
use outpost_tests::{
    ADMIN, Daemon, WAIT, free_port, outpost_bin, poll, scratch_dir, stderr, stdout,
};

#[test]
fn cli_without_a_daemon_says_so() {
    let port = free_port();
    let out = Command::new(outpost_bin())
        .args(["queue", "--url", &format!("http://127.0.0.1:{port}")])
        .env("OUTPOST_ADMIN_KEY", ADMIN)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot reach outpost at http://127.0.0.1:{port}"))
            && err.contains("is the daemon running?"),
        "{err}"
    );
}

#[test]
fn classify_is_offline_and_explains() {
    let out = Command::new(outpost_bin())
        .args([
            "classify",
            "550 5.1.1 <x@dest.example>: Recipient address rejected: User unknown",
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("invalid_recipient"), "{text}");
    assert!(text.contains("bounced, address suppressed"), "{text}");
    let out = Command::new(outpost_bin())
        .args([
            "classify",
            "--json",
            "--stage",
            "mail",
            "421 4.7.0 Try again later",
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["outcome"], "deferred");
    assert_eq!(v["suppress"], false);
    assert_eq!(v["stage"], "mail");
    assert!(v["matched"].as_array().is_some_and(|m| !m.is_empty()));
    let out = Command::new(outpost_bin())
        .args(["classify", "--stage", "nowhere", "550 x"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn cli_manages_a_running_daemon() {
    let (port, _got) = smtp_sink();
    let d = Daemon::builder(scratch_dir("cli").join("data"))
        .relay(port)
        .smtp()
        .config("retry_schedule = [\"1h\"]\n")
        .start();

    // keys create
    let out = d.cli(&["keys", "create", "example.com", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let key = v["key"].as_str().expect("key").to_string();
    assert_eq!(v["domain"], "example.com");

    // A deferred message (the sink answers 451 to defer@) stays in the queue.
    let id = d.send(&key, "app@example.com", "defer@dest.example");
    d.wait_status(&key, &id, "deferred", WAIT);

    let out = d.cli(&["queue"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("DOMAIN") && text.contains("dest.example"),
        "{text}"
    );
    let out = d.cli(&["queue", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["data"][0]["domain"], "dest.example");
    assert_eq!(v["data"][0]["deferred"], 1);

    // message ID: the timeline.
    let out = d.cli(&["message", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&id), "{text}");
    assert!(
        text.contains("451 4.3.0") && text.contains("deferred"),
        "{text}"
    );

    // retry ID: due now, so a second attempt happens.
    let out = d.cli(&["retry", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("1 recipient(s) due now"),
        "{}",
        stdout(&out)
    );
    poll(Duration::from_secs(20), "a second attempt", || {
        let out = d.cli(&["message", &id, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v["attempts"]
            .as_array()
            .is_some_and(|a| a.len() >= 2)
            .then_some(())
    });

    // bounce ID: cancelled, failed.
    let out = d.cli(&["bounce", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = d.wait_status(&key, &id, "failed", WAIT);
    assert_eq!(v["recipients"][0]["reason"], "cancelled", "{v}");
    // An unknown id is a clear error.
    let out = d.cli(&["bounce", "msg_01M87JJFVSFDZAJJEB8AJCRQDR"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));

    // breakers; breaker open/close.
    let out = d.cli(&["breaker", "open", "dest.example"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.cli(&["breakers"]);
    let text = stdout(&out);
    assert!(
        text.contains("dest.example") && text.contains("open"),
        "{text}"
    );
    let out = d.cli(&["breakers", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["data"][0]["forced"], true, "{v}");
    let out = d.cli(&["breaker", "close", "dest.example"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // suppress add/list/remove by tenant domain.
    let out = d.cli(&[
        "suppress",
        "add",
        "--domain",
        "example.com",
        "gone@dest.example",
        "--reason",
        "asked",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.cli(&["suppress", "list", "--domain", "example.com"]);
    let text = stdout(&out);
    assert!(
        text.contains("gone@dest.example") && text.contains("asked"),
        "{text}"
    );
    let (s, v) = d.get("/v1/suppressions", Some(&key));
    assert_eq!(s, 200);
    assert_eq!(v["data"][0]["address"], "gone@dest.example");
    let out = d.cli(&[
        "suppress",
        "remove",
        "--domain",
        "example.com",
        "gone@dest.example",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.cli(&["suppress", "list", "--domain", "example.com", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["data"].as_array().map(Vec::len), Some(0), "{v}");
    let out = d.cli(&["suppress", "list", "--domain", "unknown.example"]);
    assert_eq!(out.status.code(), Some(1));

    // A wrong admin key is named.
    let out = Command::new(outpost_bin())
        .args(["queue"])
        .env("OUTPOST_ADMIN_KEY", "not-the-admin-key-at-all")
        .env("OUTPOST_URL", d.base())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));

    // One INFO line per attempt, with ids and codes but no address.
    let log = d.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("delivery attempt"))
        .collect();
    assert!(lines.len() >= 2, "{log}");
    assert!(lines.iter().all(|l| l.contains(&id) && l.contains("INFO")));
    assert!(
        !log.contains("defer@dest.example"),
        "an address leaked into the log"
    );
    assert!(
        !log.contains("gone@dest.example"),
        "an address leaked into the log"
    );
}
