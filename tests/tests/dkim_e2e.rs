//! DKIM end to end, against real peers: the real `outpost serve`, dnsmasq serving the
//! published records on a loopback port, an aiosmtpd sink storing the exact bytes it got,
//! and dkimpy verifying them with the keys it looks up in dnsmasq. Messages come in over
//! the HTTP API and over SMTP submission (Python smtplib).
//!
//! Needs dnsmasq, python3 with dkimpy, dnspython and aiosmtpd (scripts/install-test-deps.sh).
//! Skipped when they are missing, except under CI.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use outpost_tests::dnsmasq::{self, Dnsmasq, txt};
use outpost_tests::{
    ADMIN, Daemon, free_port, outpost_bin, python_has, require, scratch_dir, stdout,
};
use serde_json::{Value, json};

const DOMAIN: &str = "example.com";
const PUBLIC_IP: &str = "192.0.2.10";

fn py(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(name)
}

/// Whether the real peers are here; under CI their absence is a failure.
fn peers_available() -> bool {
    require(
        dnsmasq::binary().is_some() && python_has("dkim, nacl, dns.message, aiosmtpd"),
        "dnsmasq and python3 dkimpy/PyNaCl/dnspython/aiosmtpd",
    )
}

/// dnsmasq on a fixed loopback port, authoritative-ish for `example.com` (unknown names
/// there answer NXDOMAIN), with the given TXT records. Restarted to change them.
fn dns_with(port: u16, records: &[(String, String)]) -> Dnsmasq {
    let mut args = vec![format!("--local=/{DOMAIN}/"), "--no-negcache".into()];
    args.extend(records.iter().map(|(name, value)| txt(name, value)));
    Dnsmasq::start_on(port, &args).expect("start dnsmasq")
}

// ---- the sink ----

struct Sink {
    child: Child,
    port: u16,
    dir: PathBuf,
    seen: usize,
}

impl Sink {
    fn start(dir: PathBuf) -> Sink {
        let port = free_port();
        let mut child = Command::new("python3")
            .arg(py("smtp_dump_sink.py"))
            .arg(port.to_string())
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the sink");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("sink ready line");
        assert_eq!(line.trim(), "ready");
        Sink {
            child,
            port,
            dir,
            seen: 0,
        }
    }

    /// The next message the sink stored (they are numbered in arrival order).
    fn next(&mut self) -> (PathBuf, Vec<u8>) {
        let path = self.dir.join(format!("{:04}.eml", self.seen));
        let end = Instant::now() + Duration::from_secs(30);
        while !path.is_file() {
            assert!(
                Instant::now() < end,
                "the sink got no message #{}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.seen += 1;
        let bytes = std::fs::read(&path).expect("read message");
        (path, bytes)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon on `dir/data`, as verbose as it gets: a key must not show up at any level.
fn daemon(dir: &Path) -> outpost_tests::DaemonBuilder {
    Daemon::builder(dir.join("data")).rust_log("trace")
}

// ---- SMTP submission ----

/// Submits the message in `eml` to the daemon's SMTP listener with Python's smtplib
/// (AUTH as `user`/`password`, SMTPUTF8 and BODY=8BITMIME) and returns the replies.
fn smtp_submit(port: u16, user: &str, password: &str, from: &str, to: &str, eml: &Path) -> Value {
    let out = Command::new("python3")
        .arg(py("smtp_submit.py"))
        .args(["127.0.0.1", &port.to_string(), user, password, from, to])
        .arg(eml)
        .output()
        .expect("run smtp_submit.py");
    assert!(
        out.status.success(),
        "smtp_submit.py failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

// ---- verification ----

#[derive(Debug, Clone)]
struct Sig {
    a: String,
    s: String,
    d: String,
    h: String,
    c: String,
    ok: bool,
}

/// dkimpy's verdict on every signature of the message in `path`.
fn verify(dns_port: u16, path: &Path) -> Vec<Sig> {
    let out = Command::new("python3")
        .arg(py("dkim_verify.py"))
        .arg(dns_port.to_string())
        .arg(path)
        .output()
        .expect("run dkim_verify.py");
    assert!(
        out.status.success(),
        "dkim_verify.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let s = |x: &Value| x.as_str().unwrap_or("").to_string();
    v["signatures"]
        .as_array()
        .expect("signatures")
        .iter()
        .map(|x| Sig {
            a: s(&x["a"]),
            s: s(&x["s"]),
            d: s(&x["d"]),
            h: s(&x["h"]),
            c: s(&x["c"]),
            ok: x["ok"].as_bool().unwrap_or(false),
        })
        .collect()
}

/// Asserts the message carries exactly the expected (algorithm, selector) signatures, all
/// passing, and returns them.
fn assert_verifies(dns_port: u16, path: &Path, expected: &[(&str, &str)]) -> Vec<Sig> {
    let sigs = verify(dns_port, path);
    let got: BTreeSet<(String, String)> = sigs.iter().map(|s| (s.a.clone(), s.s.clone())).collect();
    let want: BTreeSet<(String, String)> = expected
        .iter()
        .map(|(a, s)| (a.to_string(), s.to_string()))
        .collect();
    assert_eq!(got, want, "signatures of {}", path.display());
    for s in &sigs {
        assert!(
            s.ok,
            "{} / {} does not verify: {}\n{}",
            s.a,
            s.s,
            path.display(),
            String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default())
        );
        assert_eq!(s.d, DOMAIN);
        assert_eq!(s.c, "relaxed/relaxed");
    }
    sigs
}

/// A tampered copy of the message must fail every signature (so the check can fail).
fn assert_tampering_fails(dns_port: u16, path: &Path, msg: &[u8]) {
    let text = String::from_utf8_lossy(msg).into_owned();
    let split = text.find("\r\n\r\n").expect("header/body split");
    let body_changed = format!("{}Tampered line.\r\n", text);
    let mut subject_changed = text.clone();
    let subj = subject_changed[..split]
        .find("\r\nSubject:")
        .expect("Subject header");
    subject_changed.insert_str(subj + "\r\nSubject:".len(), " Re:");
    for (what, bytes) in [("body", body_changed), ("subject", subject_changed)] {
        let p = path.with_extension(format!("{what}.eml"));
        std::fs::write(&p, bytes).expect("write");
        let sigs = verify(dns_port, &p);
        assert!(!sigs.is_empty());
        for s in sigs {
            assert!(
                !s.ok,
                "{} / {} still verifies after changing the {what}",
                s.a, s.s
            );
        }
    }
}

fn status_of(report: &Value, selector: &str) -> String {
    report["dkim"]["selectors"]
        .as_array()
        .expect("selectors")
        .iter()
        .find(|k| k["selector"] == selector)
        .map(|k| k["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no selector {selector} in {report}"))
}

fn record(created: &Value, alg: &str) -> (String, String, String) {
    let k = created["created"]
        .as_array()
        .expect("created")
        .iter()
        .find(|k| k["algorithm"] == alg)
        .unwrap_or_else(|| panic!("no {alg} key in {created}"));
    (
        k["selector"].as_str().expect("selector").to_string(),
        k["record"]["name"].as_str().expect("name").to_string(),
        k["record"]["value"].as_str().expect("value").to_string(),
    )
}

fn cli_check(d: &Daemon) -> (i32, String) {
    let out = d.cli(&["domains", "check", DOMAIN, "--api", &d.base()]);
    (out.status.code().unwrap_or(-1), stdout(&out))
}

#[test]
fn tenant_creates_keys_publishes_records_and_every_message_verifies() {
    if !peers_available() {
        return;
    }
    let dir = scratch_dir("dkim-flow");
    let dns_port = free_port();
    let mut dns = dns_with(dns_port, &[]);
    let mut sink = Sink::start(dir.join("sink"));
    let d = daemon(&dir)
        .relay(sink.port)
        .args([
            "--dns",
            &format!("127.0.0.1:{dns_port}"),
            "--public-ip",
            PUBLIC_IP,
        ])
        .smtp()
        .start();
    let key = d.create_key(DOMAIN);

    // Before the domain has a key, mail goes out unsigned (signing starts with a key).
    d.submit(&key, &json!({"from": "app@example.com", "to": ["a@dest.example"], "subject": "before", "text": "x"}));
    let (_, msg) = sink.next();
    assert!(!String::from_utf8_lossy(&msg).contains("DKIM-Signature"));

    // Another tenant cannot manage this domain; unknown domains are 404.
    let other_key = d.create_key("other.test");
    let (status, _) = d.post("/v1/domains/example.com/dkim", Some(&other_key), json!({}));
    assert_eq!(status, 404);
    let (status, _) = d.get("/v1/domains/unknown.test", Some(ADMIN));
    assert_eq!(status, 404);

    // The tenant creates its keys (RSA-2048 + Ed25519) with its own key.
    let (status, created) = d.post("/v1/domains/example.com/dkim", Some(&key), json!({}));
    assert_eq!(status, 201, "{created}");
    let (rsa_sel, rsa_name, rsa_value) = record(&created, "rsa-sha256");
    let (ed_sel, ed_name, ed_value) = record(&created, "ed25519-sha256");
    assert!(
        rsa_sel.starts_with("outpost20") && rsa_sel.ends_with("-rsa"),
        "{rsa_sel}"
    );
    assert_eq!(rsa_name, format!("{rsa_sel}._domainkey.{DOMAIN}"));
    assert!(
        rsa_value.starts_with("v=DKIM1; k=rsa; p=MIIBIjAN"),
        "{rsa_value}"
    );
    assert!(ed_value.starts_with("v=DKIM1; k=ed25519; p="), "{ed_value}");
    let base = rsa_sel.trim_end_matches("-rsa").to_string();
    // The same selector again is a conflict.
    let (status, _) = d.post(
        "/v1/domains/example.com/dkim",
        Some(&key),
        json!({"selector": base}),
    );
    assert_eq!(status, 409);

    // Private keys: 0600 files in a 0700 directory.
    let key_dir = d.data().join("dkim").join(DOMAIN);
    let mut pems = Vec::new();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&key_dir), 0o700);
        for sel_alg in [format!("{rsa_sel}.rsa"), format!("{ed_sel}.ed25519")] {
            let p = key_dir.join(format!("{sel_alg}.pem"));
            assert_eq!(mode(&p), 0o600, "{}", p.display());
            pems.push(std::fs::read_to_string(&p).expect("pem"));
        }
    }

    // Nothing published yet: everything is missing.
    let (status, report) = d.get("/v1/domains/example.com", Some(&key));
    assert_eq!(status, 200, "{report}");
    assert_eq!(status_of(&report, &rsa_sel), "missing", "{report}");
    assert_eq!(status_of(&report, &ed_sel), "missing");
    assert_eq!(report["spf"]["status"], "missing");
    assert_eq!(report["dmarc"]["status"], "missing");
    let spf_value = report["spf"]["record"]["value"]
        .as_str()
        .expect("spf")
        .to_string();
    assert_eq!(spf_value, format!("v=spf1 ip4:{PUBLIC_IP} ~all"));
    let dmarc_value = report["dmarc"]["record"]["value"]
        .as_str()
        .expect("dmarc")
        .to_string();
    assert_eq!(
        dmarc_value,
        "v=DMARC1; p=none; rua=mailto:dmarc-reports@example.com"
    );
    assert_eq!(report["dmarc"]["record"]["name"], "_dmarc.example.com");
    let (code, table) = cli_check(&d);
    assert_eq!(code, 1, "{table}");
    assert!(
        table.contains("missing") && table.contains("Publish (TXT):"),
        "{table}"
    );

    // Published wrongly: the Ed25519 name holds the RSA record, SPF lacks our address.
    drop(dns);
    dns = dns_with(
        dns_port,
        &[
            (rsa_name.clone(), rsa_value.clone()),
            (ed_name.clone(), rsa_value.clone()),
            (DOMAIN.to_string(), "v=spf1 ip4:192.0.2.99 ~all".to_string()),
            (format!("_dmarc.{DOMAIN}"), dmarc_value.clone()),
        ],
    );
    let (_, report) = d.get("/v1/domains/example.com", Some(ADMIN));
    assert_eq!(status_of(&report, &rsa_sel), "ok", "{report}");
    assert_eq!(status_of(&report, &ed_sel), "mismatch", "{report}");
    assert_eq!(report["spf"]["status"], "mismatch", "{report}");
    assert_eq!(report["dmarc"]["status"], "ok", "{report}");

    // Published as shown: all ok, and the CLI agrees.
    drop(dns);
    let mut published = vec![
        (rsa_name.clone(), rsa_value.clone()),
        (ed_name.clone(), ed_value.clone()),
        (DOMAIN.to_string(), spf_value.clone()),
        (format!("_dmarc.{DOMAIN}"), dmarc_value.clone()),
    ];
    dns = dns_with(dns_port, &published);
    let (_, report) = d.get("/v1/domains/example.com", Some(&key));
    assert_eq!(status_of(&report, &rsa_sel), "ok", "{report}");
    assert_eq!(status_of(&report, &ed_sel), "ok", "{report}");
    assert_eq!(report["spf"]["status"], "ok", "{report}");
    assert_eq!(report["dmarc"]["status"], "ok", "{report}");
    let (code, table) = cli_check(&d);
    assert_eq!(code, 0, "{table}");
    assert!(
        table.contains(&rsa_name) && !table.contains("missing"),
        "{table}"
    );

    let both = [
        ("rsa-sha256", rsa_sel.as_str()),
        ("ed25519-sha256", ed_sel.as_str()),
    ];

    // 1. The JSON API: UTF-8 subject and names, Cc, Reply-To, List-Unsubscribe, a long
    //    line, a leading dot.
    let long_line = "lorem ipsum dolor sit amet ".repeat(120);
    d.submit(&key, &json!({
            "from": "Jörg Müller <app@example.com>",
            "to": ["Zoë <zoe@dest.example>"],
            "cc": ["cc@dest.example"],
            "reply_to": "help@example.com",
            "subject": "Grüße aus Köln — ünïcödé subject that is long enough to need folding when encoded",
            "text": format!("Hallo!\n.leading dot\n{long_line}\n\n\n"),
            "html": "<p>Grüße</p>",
            "headers": {"List-Unsubscribe": "<mailto:unsubscribe@example.com>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        }));
    let (path, msg) = sink.next();
    let sigs = assert_verifies(dns_port, &path, &both);
    let h = sigs[0].h.to_ascii_lowercase();
    for name in [
        "from",
        "to",
        "cc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "reply-to",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ] {
        assert!(h.split(':').any(|x| x == name), "{name} not signed: {h}");
    }
    assert_eq!(
        h.split(':').filter(|x| *x == "from").count(),
        2,
        "From over-signed: {h}"
    );
    // Signed once at intake, the RSA signature first.
    let text = String::from_utf8_lossy(&msg);
    assert!(
        text.starts_with("DKIM-Signature: v=1; a=rsa-sha256"),
        "{text}"
    );
    assert_tampering_fails(dns_port, &path, &msg);

    // 2. A raw message with 8-bit UTF-8 headers (SMTPUTF8) and a long body line.
    let raw = format!(
        "From: Jörg <app@example.com>\r\nTo: zoë@dest.example\r\nSubject: Grüße, raw 8-bit\r\n\
         Date: Mon, 02 Nov 2026 10:00:00 +0000\r\nMessage-ID: <raw-1@example.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\nÄ body line\r\n..two dots\r\n{}\r\n\r\n",
        "x".repeat(990)
    );
    d.submit(
        &key,
        &json!({
            "from": "app@example.com",
            "to": ["zoë@dest.example"],
            "raw": base64::engine::general_purpose::STANDARD.encode(raw.as_bytes()),
        }),
    );
    let (path, msg) = sink.next();
    assert_verifies(dns_port, &path, &both);
    assert!(String::from_utf8_lossy(&msg).contains("Subject: Grüße, raw 8-bit"));
    assert_tampering_fails(dns_port, &path, &msg);

    // 3. SMTP submission (AUTH as the tenant, SMTPUTF8 + 8BITMIME): 8-bit UTF-8 headers,
    //    a 990-octet body line and lines starting with a dot (dot-stuffed by the client).
    let long_smtp = "y".repeat(990);
    let submitted = format!(
        "From: Jörg Müller <app@example.com>\r\nTo: Zoë <zoë@dest.example>\r\n\
         Subject: Grüße aus Köln\r\nDate: Mon, 02 Nov 2026 11:00:00 +0000\r\n\
         Message-ID: <smtp-1@example.com>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         Grüße über SMTP\r\n.leading dot\r\n..two dots\r\n{long_smtp}\r\nend\r\n"
    );
    let eml = dir.join("submitted.eml");
    std::fs::write(&eml, submitted.as_bytes()).expect("write");
    let reply = smtp_submit(
        d.smtp(),
        DOMAIN,
        &key,
        "app@example.com",
        "zoë@dest.example",
        &eml,
    );
    assert_eq!(reply["auth"], 235, "{reply}");
    assert_eq!(reply["data"][0], 250, "{reply}");
    let ext = reply["ehlo"].to_string().to_ascii_lowercase();
    assert!(
        ext.contains("smtputf8") && ext.contains("8bitmime"),
        "{reply}"
    );
    let (path, msg) = sink.next();
    assert_verifies(dns_port, &path, &both);
    let text = String::from_utf8_lossy(&msg);
    assert!(
        text.starts_with("DKIM-Signature: v=1; a=rsa-sha256"),
        "{text}"
    );
    for part in [
        "\r\nSubject: Grüße aus Köln\r\n",
        "\r\nFrom: Jörg Müller <app@example.com>\r\n",
        "\r\n.leading dot\r\n..two dots\r\n",
        &format!("\r\n{long_smtp}\r\nend\r\n"),
    ] {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
    assert_tampering_fails(dns_port, &path, &msg);

    // Rotation: an imported RSA key (openssl) under a new selector signs alongside the
    // old ones until they are retired.
    let pem = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl");
    assert!(pem.status.success());
    let pem = String::from_utf8(pem.stdout).expect("pem");
    let (status, imported) = d.post(
        "/v1/domains/example.com/dkim",
        Some(ADMIN),
        json!({"selector": "rotated", "private_key": pem}),
    );
    assert_eq!(status, 201, "{imported}");
    let (new_sel, new_name, new_value) = record(&imported, "rsa-sha256");
    assert_eq!(new_sel, "rotated");
    pems.push(pem.clone());
    drop(dns);
    published.push((new_name, new_value));
    dns = dns_with(dns_port, &published);
    d.submit(&key, &json!({"from": "app@example.com", "to": ["a@dest.example"], "subject": "rotation", "text": "three signatures"}));
    let (path, _) = sink.next();
    assert_verifies(
        dns_port,
        &path,
        &[both[0], both[1], ("rsa-sha256", "rotated")],
    );

    // Retiring the old selectors (by their base name) stops them signing.
    let (status, retired) = d.delete(&format!("/v1/domains/example.com/dkim/{base}"), Some(&key));
    assert_eq!(status, 200, "{retired}");
    assert_eq!(
        retired["retired"].as_array().map(Vec::len),
        Some(2),
        "{retired}"
    );
    assert!(!key_dir.join(format!("{rsa_sel}.rsa.pem")).exists());
    d.submit(&key, &json!({"from": "app@example.com", "to": ["a@dest.example"], "subject": "retired", "text": "one signature"}));
    let (path, _) = sink.next();
    assert_verifies(dns_port, &path, &[("rsa-sha256", "rotated")]);

    // No private key in any response, log line or event.
    let (_, events) = d.get("/v1/events?limit=1000", Some(&key));
    assert!(events["data"].as_array().is_some_and(|e| !e.is_empty()));
    let log = d.log();
    assert!(
        log.contains("DKIM key added"),
        "the log should say what happened"
    );
    let everything = format!("{log}\n{}", d.responses().join("\n"));
    assert!(!everything.contains("PRIVATE KEY"));
    for pem in &pems {
        for line in pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 32)
        {
            assert!(
                !everything.contains(line),
                "private key material leaked: {line}"
            );
        }
    }
    drop(dns);
}

#[test]
fn invalid_dkim_settings_stop_the_start_and_are_named() {
    let dir = scratch_dir("dkim-badconfig");
    for (text, setting) in [
        (
            "[dkim.domains.\"example.com\"]\nalgorithms = [\"ed25519-sha256\"]\n",
            "dkim.domains.example.com.algorithms",
        ),
        ("[dkim]\nheaders = [\"To\"]\n", "dkim.headers"),
        (
            "[dkim.domains.\"example.com\"]\nselector = \"Bad Selector\"\n",
            "dkim.domains.example.com.selector",
        ),
    ] {
        let cfg = dir.join("outpost.toml");
        std::fs::write(&cfg, text).expect("write");
        let out = Command::new(outpost_bin())
            .arg("serve")
            .arg("--data")
            .arg(dir.join("data"))
            .arg("--config")
            .arg(&cfg)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("`{setting}`")), "{err}");
    }
}

#[test]
fn a_domain_with_dkim_disabled_in_the_config_is_not_signed() {
    if !peers_available() {
        return;
    }
    let dir = scratch_dir("dkim-disabled");
    let mut sink = Sink::start(dir.join("sink"));
    let d = daemon(&dir)
        .relay(sink.port)
        .config("[dkim.domains.\"example.com\"]\nenabled = false\n")
        .start();
    let key = d.create_key(DOMAIN);
    let (status, created) = d.post(
        "/v1/domains/example.com/dkim",
        Some(&key),
        json!({"algorithms": ["rsa-sha256"]}),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["created"][0]["signing"], false, "{created}");
    d.submit(&key, &json!({"from": "app@example.com", "to": ["a@dest.example"], "subject": "off", "text": "x"}));
    let (_, msg) = sink.next();
    assert!(!String::from_utf8_lossy(&msg).contains("DKIM-Signature"));
}
