//! The classifier and its rules drive the daemon's statuses and suppressions end to end.
//!
//! Rows of the reply corpus (`core/tests/data/replies.tsv`, read at test time) are chosen
//! by a fixed list of selectors (stage, expected category, how many, substrings the reply
//! must contain; first rows in file order). An aiosmtpd sink (`tests/py/corpus_sink.py`)
//! answers each row's reply at the row's stage for one local part. Each row is one message
//! with one recipient (so the shared-reply rule for DATA replies does not apply), and its
//! own recipient domain (so one row's temporary failures cannot open the circuit breaker
//! for another's). The real daemon delivers through `--relay` to the sink; then for every
//! row: the recipient's status is `CategoryPolicy::default().decide(category, code)`, the
//! attempt timeline shows the corpus category, the stage, the codes and the text, and the
//! suppression list holds exactly the addresses of the rows whose decision suppresses.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use outpost_core::classify::{Category, CategoryPolicy, Outcome, parse_reply_line};
use outpost_tests::sinks::AioSink;
use outpost_tests::{Daemon, require, scratch_dir};

/// Which corpus rows to use: (stage, expected category, how many, strings the reply line
/// must all contain; `^` = at its start). Each selector takes the first matching rows in file order that
/// no earlier selector took. Every suppressing category, the hard non-suppressing ones
/// (sender-side 5.1.x, misleading 5.7.1 / 5.1.1 codes), 5xx and 4xx rate limits, and
/// several 4xx at each stage.
const SELECTORS: &[(&str, &str, usize, &[&str])] = &[
    // Suppressing.
    ("rcpt", "invalid_recipient", 3, &[]),
    (
        "rcpt",
        "invalid_recipient",
        1,
        &["^550 5.7.1 ", "User unknown"],
    ),
    ("rcpt", "invalid_recipient", 1, &["^554 5.7.1 "]),
    ("rcpt", "invalid_recipient", 1, &["^550 4.1.1 "]),
    ("rcpt", "invalid_recipient", 1, &["(#5.1.1)"]),
    ("rcpt", "invalid_recipient", 1, &["^450 4.1.1 "]),
    ("end_of_data", "invalid_recipient", 1, &[]),
    ("rcpt", "invalid_domain", 2, &[]),
    ("rcpt", "invalid_domain", 1, &["^450 "]),
    ("rcpt", "recipient_moved", 3, &[]),
    // Sender-side, even with 5.1.x or "User unknown": never suppress the recipient.
    (
        "mail",
        "sender_rejected",
        1,
        &["^550 5.1.0 ", "sender rejected"],
    ),
    ("mail", "sender_rejected", 1, &["^550 5.1.1 "]),
    ("mail", "sender_rejected", 1, &["^451 "]),
    ("rcpt", "sender_rejected", 1, &["^550 5.1.0 "]),
    ("rcpt", "sender_rejected", 1, &["User unknown"]),
    // About us or the message.
    ("rcpt", "reputation_block", 2, &[]),
    ("end_of_data", "reputation_block", 1, &[]),
    ("mail", "reputation_block", 1, &["^553 "]),
    ("end_of_data", "auth_required", 1, &["^550 5.7.26 "]),
    ("end_of_data", "auth_required", 1, &["^421 "]),
    ("rcpt", "auth_required", 1, &[]),
    ("mail", "auth_required", 1, &[]),
    ("end_of_data", "spam_block", 1, &["^550 "]),
    ("end_of_data", "spam_block", 1, &["^421 "]),
    ("rcpt", "rate_limited", 1, &["^550 "]),
    ("rcpt", "rate_limited", 1, &["^450 "]),
    ("rcpt", "rate_limited", 1, &["^421 "]),
    ("mail", "rate_limited", 1, &["^550 "]),
    ("rcpt", "policy_other", 2, &[]),
    ("end_of_data", "policy_other", 1, &[]),
    ("rcpt", "relay_denied", 1, &[]),
    ("rcpt", "tls", 1, &[]),
    // About the mailbox, not suppressing.
    ("rcpt", "mailbox_full", 1, &["^552 5.2.2 "]),
    ("rcpt", "mailbox_full", 1, &["^452 "]),
    ("rcpt", "mailbox_full", 1, &["^552 5.1.1 "]),
    ("end_of_data", "mailbox_full", 1, &[]),
    ("rcpt", "mailbox_disabled", 1, &[]),
    // The message, the server, the conversation.
    ("end_of_data", "content_rejected", 1, &[]),
    ("end_of_data", "message_too_large", 1, &[]),
    ("rcpt", "server_error", 1, &[]),
    ("end_of_data", "server_error", 1, &["^554 "]),
    ("data", "protocol", 2, &[]),
    ("data", "protocol", 1, &["^554 "]),
    ("data", "timeout", 1, &[]),
    ("end_of_data", "delivered", 1, &[]),
];

/// One corpus row.
#[derive(Clone, Debug)]
struct Row {
    line: usize,
    stage: String,
    category: String,
    reply: String,
}

impl Row {
    /// The local part used for this row, in the sender and the recipient alike.
    fn tag(&self) -> String {
        format!("c{}", self.line)
    }
    fn from(&self) -> String {
        format!("{}@example.com", self.tag())
    }
    fn to(&self) -> String {
        format!("{0}@{0}.example.net", self.tag())
    }
}

fn corpus_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/data/replies.tsv")
}

/// Rows the sink can answer: a one-line, ASCII reply with a code, at MAIL, RCPT, DATA or
/// end of data.
fn corpus_rows() -> Vec<Row> {
    let text = std::fs::read_to_string(corpus_path()).expect("read the corpus");
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|(i, l)| {
            let mut f = l.split('\t');
            let (stage, category, reply) = (f.next()?, f.next()?, f.next()?);
            Some(Row {
                line: i + 1,
                stage: stage.trim().to_string(),
                category: category.trim().to_string(),
                reply: reply.trim().to_string(),
            })
        })
        .filter(|r| matches!(r.stage.as_str(), "mail" | "rcpt" | "data" | "end_of_data"))
        .filter(|r| {
            let b = r.reply.as_bytes();
            r.reply.is_ascii()
                && b.len() > 4
                && b[..3].iter().all(u8::is_ascii_digit)
                && b[3] == b' '
        })
        .collect()
}

fn select(rows: &[Row]) -> Vec<Row> {
    let mut used = BTreeSet::new();
    let mut picked = Vec::new();
    for &(stage, category, n, needles) in SELECTORS {
        let found: Vec<&Row> = rows
            .iter()
            .filter(|r| r.stage == stage && r.category == category && !used.contains(&r.line))
            .filter(|r| {
                needles.iter().all(|s| match s.strip_prefix('^') {
                    Some(prefix) => r.reply.starts_with(prefix),
                    None => r.reply.contains(s),
                })
            })
            .take(n)
            .collect();
        assert_eq!(
            found.len(),
            n,
            "the corpus no longer has {n} usable {stage}/{category} rows containing \
             {needles:?}: update SELECTORS"
        );
        for r in found {
            used.insert(r.line);
            picked.push(r.clone());
        }
    }
    picked
}

/// What the decision table says for a row: (status, suppressed).
fn expected(row: &Row) -> (&'static str, bool) {
    let category = Category::parse(&row.category)
        .unwrap_or_else(|| panic!("line {}: unknown category {}", row.line, row.category));
    let (code, _, _) = parse_reply_line(&row.reply);
    let d = CategoryPolicy::default().decide(category, code);
    let status = match d.outcome {
        Outcome::Delivered => "delivered",
        Outcome::Deferred => "deferred",
        Outcome::Bounced => "bounced",
    };
    (status, d.suppress)
}

// ---- processes ----------------------------------------------------------------------

/// The corpus sink; killed on drop (and it exits by itself when its stdin closes).
struct Sink {
    child: Child,
    _stdin: ChildStdin,
    port: u16,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sink(mapping: &Path) -> Sink {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/corpus_sink.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(mapping)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the corpus sink");
    let stdin = child.stdin.take().expect("sink stdin");
    let stdout = child.stdout.take().expect("sink stdout");
    let stderr = child.stderr.take().expect("sink stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            eprintln!("{line}");
        }
    });
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let port = lines
            .next()
            .and_then(Result::ok)
            .and_then(|l| l.strip_prefix("PORT ").and_then(|p| p.trim().parse().ok()));
        let _ = tx.send(port);
        for _ in lines {}
    });
    let port = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Some(port)) => port,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the corpus sink did not say its port: {other:?}");
        }
    };
    Sink {
        child,
        _stdin: stdin,
        port,
    }
}

/// Whitespace runs as one space (the daemon stores remote text that way).
fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---- the test -----------------------------------------------------------------------

#[test]
fn corpus_replies_through_the_daemon_give_the_statuses_and_suppressions_of_the_table() {
    if !require(AioSink::available(), "python3 with aiosmtpd") {
        return;
    }
    let rows = select(&corpus_rows());
    assert!(rows.len() >= 36, "only {} rows", rows.len());

    let dir = scratch_dir("classify");
    let mapping: BTreeMap<String, serde_json::Value> = rows
        .iter()
        .map(|r| {
            (
                r.tag(),
                serde_json::json!({"stage": r.stage, "reply": r.reply}),
            )
        })
        .collect();
    let mapping_path = dir.join("mapping.json");
    std::fs::write(
        &mapping_path,
        serde_json::to_string_pretty(&mapping).expect("json"),
    )
    .expect("write the mapping");
    let sink = start_sink(&mapping_path);
    let d = Daemon::builder(dir.join("data")).relay(sink.port).start();
    let key = d.create_key("example.com");

    // One message, one recipient per row.
    let mut ids = Vec::with_capacity(rows.len());
    for r in &rows {
        let msg = serde_json::json!({
            "from": r.from(),
            "to": [r.to()],
            "subject": format!("corpus line {}", r.line),
            "text": "classification end to end",
        });
        let (status, v) = d.post("/v1/messages", Some(&key), &msg);
        assert_eq!(status, 202, "line {}: {v}", r.line);
        ids.push(v["id"].as_str().expect("id").to_string());
    }

    // Poll until every recipient has left queued/sending.
    let mut done: BTreeMap<usize, serde_json::Value> = BTreeMap::new();
    let end = Instant::now() + Duration::from_secs(45);
    while done.len() < rows.len() {
        for (i, id) in ids.iter().enumerate() {
            if done.contains_key(&i) {
                continue;
            }
            let v = d.message(&key, id);
            let st = v["recipients"][0]["status"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if !matches!(st.as_str(), "queued" | "sending" | "") {
                done.insert(i, v);
            }
        }
        if done.len() < rows.len() {
            assert!(
                Instant::now() < end,
                "still queued or sending after 45 s: {:?}\ndaemon log:\n{}",
                (0..rows.len())
                    .filter(|i| !done.contains_key(i))
                    .map(|i| rows[i].line)
                    .collect::<Vec<_>>(),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    let mut failures = Vec::new();
    let mut report = Vec::new();
    let mut want_suppressed = BTreeSet::new();
    for (i, r) in rows.iter().enumerate() {
        let v = &done[&i];
        let (want_status, suppress) = expected(r);
        if suppress {
            want_suppressed.insert(r.to());
        }
        let (code, enhanced, text) = parse_reply_line(&r.reply);
        let rcpt = &v["recipients"][0];
        let status = rcpt["status"].as_str().unwrap_or("?");
        let attempt = v["attempts"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["recipient"] == r.to().as_str()));
        let Some(a) = attempt else {
            failures.push(format!("line {}: no attempt in the timeline: {v}", r.line));
            continue;
        };
        let got = (
            status,
            a["category"].as_str().unwrap_or("?"),
            a["stage"].as_str().unwrap_or("?"),
            a["smtp_code"].as_u64().map(|c| c as u16),
            a["enhanced_code"].as_str(),
            squeeze(a["response"].as_str().unwrap_or("")),
        );
        let want = (
            want_status,
            r.category.as_str(),
            r.stage.as_str(),
            code,
            enhanced,
            squeeze(text),
        );
        report.push(format!(
            "line {:>3} {:<11} {:<17} {:>8} {:<9} {}",
            r.line,
            r.stage,
            r.category,
            status,
            if suppress { "suppress" } else { "" },
            r.reply.chars().take(70).collect::<String>()
        ));
        if got != want {
            failures.push(format!(
                "line {} ({} {}): got {got:?}, want {want:?}",
                r.line, r.stage, r.reply
            ));
        }
    }

    let (status, list) = d.get("/v1/suppressions?limit=1000", Some(&key));
    assert_eq!(status, 200, "{list}");
    let mut got_suppressed = BTreeSet::new();
    for s in list["data"].as_array().expect("data") {
        let address = s["address"].as_str().unwrap_or("?").to_string();
        if let Some(r) = rows.iter().find(|r| r.to() == address)
            && (s["category"] != r.category.as_str() || s["source"] != "bounce")
        {
            failures.push(format!("line {}: suppression record {s}", r.line));
        }
        got_suppressed.insert(address);
    }
    if got_suppressed != want_suppressed {
        failures.push(format!(
            "suppression list: unexpected {:?}, missing {:?}",
            got_suppressed
                .difference(&want_suppressed)
                .collect::<Vec<_>>(),
            want_suppressed
                .difference(&got_suppressed)
                .collect::<Vec<_>>()
        ));
    }

    let mut per_category: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rows {
        *per_category.entry(r.category.as_str()).or_default() += 1;
    }
    eprintln!(
        "{} corpus rows through the daemon, {} suppressed; per category: {per_category:?}\n{}",
        rows.len(),
        want_suppressed.len(),
        report.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} of {} rows disagree with the corpus and the decision table:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    drop(sink);
}
