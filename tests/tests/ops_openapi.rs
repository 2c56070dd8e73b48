//! openapi.yaml describes the HTTP API: every route the daemon serves is in it, and
//! schemathesis, fuzzing the running daemon with a tenant key and then the admin key,
//! finds no server error and no response that does not match the schema.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outpost_tests::sinks::smtp_sink;
use outpost_tests::{ADMIN, Daemon, WAIT, have, require, scratch_dir};

fn spec() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi.yaml")
}

#[test]
fn every_route_is_documented() {
    let text = std::fs::read_to_string(spec()).expect("openapi.yaml");
    for path in [
        "/healthz:",
        "/readyz:",
        "/metrics:",
        "/v1/keys:",
        "/v1/messages:",
        "/v1/messages/{id}:",
        "/v1/events:",
        "/v1/suppressions:",
        "/v1/suppressions/{address}:",
        "/v1/webhooks:",
        "/v1/webhooks/{id}:",
        "/v1/webhooks/{id}/deliveries:",
        "/v1/webhooks/{id}/rotate-secret:",
        "/v1/webhooks/{id}/deliveries/{event_id}/retry:",
        "/v1/admin/queue:",
        "/v1/admin/breakers:",
        "/v1/admin/breakers/{domain}:",
        "/v1/admin/messages/{id}:",
        "/v1/admin/messages/{id}/retry:",
        "/v1/admin/messages/{id}/cancel:",
        "/v1/admin/suppressions:",
        "/v1/admin/suppressions/{address}:",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start() == path && l.starts_with("  /")),
            "{path} is not in openapi.yaml"
        );
    }
}

/// Runs schemathesis with `key`; panics with its report unless it passes.
fn schemathesis(d: &Daemon, key: &str, dir: &std::path::Path) {
    let mut child = Command::new("schemathesis")
        .arg("run")
        .arg(spec())
        .args(["--url", &d.base()])
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        // The coverage phase is left out: it trips over a Hypothesis internal error
        // (schemathesis 4.32) that has nothing to do with the API.
        .args(["--phases", "examples,fuzzing,stateful"])
        .args(["--max-examples", "15", "--seed", "7", "--workers", "2"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run schemathesis");
    let end = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("schemathesis took over 5 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = child.wait_with_output().expect("output");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(status.success(), "schemathesis failed:\n{report}");
    assert!(report.contains("passed"), "{report}");
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_mismatch() {
    if !require(have("schemathesis"), "schemathesis") {
        return;
    }
    let (port, _got) = smtp_sink();
    let d = Daemon::builder(scratch_dir("openapi").join("data"))
        .relay(port)
        .config("retry_schedule = [\"1h\"]\n")
        .args(["--allow-private-webhooks", "--smtp", "off"])
        .start();
    let key = d.create_key("example.com");
    // Some data for the read routes: a delivered message, a deferred one, an event.
    let a = d.send(&key, "app@example.com", "ok@dest.example");
    d.send(&key, "app@example.com", "defer@dest.example");
    d.wait_status(&key, &a, "delivered", WAIT);
    let dir = scratch_dir("schemathesis");
    schemathesis(&d, &key, &dir);
    schemathesis(&d, ADMIN, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!d.log().contains("panicked"), "{}", d.log());
}
