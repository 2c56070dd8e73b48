//! The invalid-input table through the real daemon's HTTP API: each bad request gets its
//! documented status, error code (and field, where one is at fault), and nothing is stored:
//! the send log stays empty, no spool file is written, nothing is counted as accepted.

use std::path::Path;

use outpost_tests::{Daemon, free_port, scratch_dir};
use serde_json::{Value, json};

fn spool_files(data: &Path) -> usize {
    fn walk(p: &Path) -> usize {
        std::fs::read_dir(p).map_or(0, |rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() { walk(&p) } else { 1 }
                })
                .sum()
        })
    }
    walk(&data.join("spool"))
}

fn send_log(d: &Daemon, key: &str) -> Vec<Value> {
    let (status, v) = d.get("/v1/messages", Some(key));
    assert_eq!(status, 200, "{v}");
    v["data"].as_array().cloned().expect("data")
}

/// (what, API key, body, HTTP status, error code (empty: any), the field named)
struct Case<'a>(&'a str, &'a str, Vec<u8>, u16, &'a str, Option<&'a str>);

#[test]
fn invalid_input_gets_its_documented_error_and_nothing_is_stored() {
    let dir = scratch_dir("intake");
    // Nothing listens on the relay port: a message stored by mistake would stay queued
    // (and show in the send log) rather than vanish into a sink.
    let d = Daemon::builder(dir.join("data")).relay(free_port()).start();
    let key = d.create_key("example.com");
    let other = d.create_key("other.example");
    let ok = json!({"from": "app@example.com", "to": ["a@dest.example"], "text": "hi"});
    let with = |field: &str, value: Value| {
        let mut v = ok.clone();
        v[field] = value;
        v.to_string().into_bytes()
    };
    let oversize = with("text", json!("x".repeat(11 * 1024 * 1024)));

    let table: Vec<Case> = vec![
        Case(
            "malformed JSON",
            &key,
            b"{\"from\": ".to_vec(),
            400,
            "invalid_json",
            None,
        ),
        Case("not an object", &key, b"[1,2]".to_vec(), 400, "", None),
        Case(
            "over the 10 MiB limit",
            &key,
            oversize,
            413,
            "payload_too_large",
            None,
        ),
        Case(
            "CRLF in the subject",
            &key,
            with("subject", json!("hi\r\nBcc: victim@else.example")),
            422,
            "header_injection",
            Some("subject"),
        ),
        Case(
            "CRLF in a header value",
            &key,
            with(
                "headers",
                json!({"X-Campaign": "a\r\nBcc: victim@else.example"}),
            ),
            422,
            "header_injection",
            Some("headers.X-Campaign"),
        ),
        Case(
            "CRLF in a recipient",
            &key,
            with(
                "to",
                json!(["a@dest.example\r\nRCPT TO:<victim@else.example>"]),
            ),
            422,
            "header_injection",
            Some("to[0]"),
        ),
        Case(
            "no @",
            &key,
            with("to", json!(["not-an-address"])),
            422,
            "invalid_address",
            Some("to[0]"),
        ),
        Case(
            "non-ASCII domain that is not a valid IDN",
            &key,
            with("to", json!(["user@bü_cher.example"])),
            422,
            "invalid_domain",
            Some("to[0]"),
        ),
        Case(
            "non-ASCII local part with a space",
            &key,
            with("to", json!(["jo sé@dest.example"])),
            422,
            "invalid_local_part",
            Some("to[0]"),
        ),
        Case(
            "invalid cc",
            &key,
            with("cc", json!(["a@b..example"])),
            422,
            "invalid_domain",
            Some("cc[0]"),
        ),
        Case(
            "a sender outside the key's domain",
            &key,
            with("from", json!("app@other.example")),
            403,
            "sender_domain_not_allowed",
            Some("from"),
        ),
        Case(
            "an unknown key",
            "op_not_a_real_key",
            ok.to_string().into_bytes(),
            401,
            "unauthorized",
            None,
        ),
    ];
    for Case(what, k, body, status, code, field) in &table {
        let r = d
            .try_request("POST", "/v1/messages", Some(k), Some(body))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let (s, text, v) = (r.status, &r.body, r.json());
        assert_eq!(s, *status, "{what}: {text}");
        if !code.is_empty() {
            assert_eq!(v["error"]["code"], *code, "{what}: {text}");
        }
        assert!(
            v["error"]["message"].is_string(),
            "{what}: an error message: {text}"
        );
        if let Some(f) = field {
            assert_eq!(v["error"]["field"], *f, "{what}: {text}");
        }
        // Nothing stored, for either tenant.
        assert!(send_log(&d, &key).is_empty(), "{what} stored something");
        assert!(send_log(&d, &other).is_empty(), "{what} stored something");
        assert_eq!(spool_files(d.data()), 0, "{what} wrote a spool file");
    }
    let metrics = d.metrics();
    assert!(
        metrics.contains("outpost_accepted_messages_total 0"),
        "{metrics}"
    );

    // Another tenant's message is not found (not forbidden: its existence is not revealed).
    let (s, v) = d.post(
        "/v1/messages",
        Some(&other),
        json!({"from": "app@other.example", "to": ["a@dest.example"], "text": "hi"}),
    );
    assert_eq!(s, 202, "{v}");
    let theirs = v["id"].as_str().expect("id").to_string();
    let (s, v) = d.get(&format!("/v1/messages/{theirs}"), Some(&key));
    assert_eq!((s, &v["error"]["code"]), (404, &json!("not_found")), "{v}");
    assert!(send_log(&d, &key).is_empty());
    assert_eq!(send_log(&d, &other).len(), 1);
    assert_eq!(d.message(&other, &theirs)["id"], theirs.as_str());
}
