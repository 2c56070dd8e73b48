//! The API over real HTTP against a real store and a fake engine.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use outpost_core::engine::{BreakerView, QueueView};
use outpost_core::io::*;
use outpost_core::model::*;
use outpost_core::status::RecipientStatus;
use outpost_core::{EndpointId, EventId, MessageId, Time, ulid};
use serde_json::{Value, json};

use super::*;
use crate::store::tests::{T0, attempt, event, message};
use crate::store::{Completions, WriterHandle};

const ADMIN: &str = "admin-secret-key";

/// Applies what an engine would persist, synchronously, and answers like one.
struct FakeEngine {
    writer: Mutex<(WriterHandle, Completions)>,
    accepting: AtomicBool,
    next: AtomicU64,
    submissions: Mutex<Vec<Submission>>,
    commands: Mutex<Vec<AdminCommand>>,
}

impl FakeEngine {
    fn persist(&self, ops: Vec<StoreOp>) -> Result<(), String> {
        let guard = self.writer.lock().unwrap();
        let b = outpost_core::BatchId(self.next.fetch_add(1, Ordering::SeqCst));
        guard.0.submit(b, ops);
        let (got, r) = guard.1.recv_blocking().unwrap();
        assert_eq!(got, b);
        r
    }
}

impl EngineGateway for FakeEngine {
    fn submit(&self, s: Submission) -> Result<Receipt, SubmitError> {
        self.submissions.lock().unwrap().push(s.clone());
        let (from, to) = match &s.content {
            SubmissionContent::Compose(c) => (c.from.clone(), c.to.clone()),
            SubmissionContent::Raw {
                mail_from, rcpt_to, ..
            } => (mail_from.clone(), rcpt_to.clone()),
        };
        if !from.ends_with(&format!("@{}", s.tenant_domain)) {
            return Err(SubmitError::new(
                SubmitErrorKind::Forbidden,
                "sender_not_allowed",
                "from is not the tenant's domain",
            ));
        }
        if to.is_empty() {
            return Err(SubmitError::invalid("to", "no_recipients", "no recipients"));
        }
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let id = MessageId(ulid(
            T0.plus(std::time::Duration::from_secs(n)),
            u128::from(n),
        ));
        let addrs: Vec<&str> = to.iter().map(String::as_str).collect();
        let mut rec = message(id, s.tenant.0, &addrs);
        rec.mail_from = from;
        let receipt = Receipt {
            id,
            message_id: format!("<{}>", rec.message_id_header),
            status: rec.status(),
            recipients: rec
                .recipients
                .iter()
                .map(|r| ReceiptRecipient {
                    address: r.address.clone(),
                    status: r.status,
                })
                .collect(),
        };
        self.persist(vec![crate::store::tests::insert(rec)])
            .map_err(|e| SubmitError::new(SubmitErrorKind::Unavailable, "storage", e))?;
        Ok(receipt)
    }

    fn admin(&self, command: AdminCommand) -> Result<AdminReply, AdminError> {
        self.commands.lock().unwrap().push(command.clone());
        let ops = match command {
            AdminCommand::AddSuppression {
                tenant,
                address,
                reason,
            } => vec![StoreOp::AddSuppression(SuppressionRecord {
                tenant,
                address,
                source: SuppressionSource::Manual,
                reason,
                category: None,
                smtp_code: None,
                enhanced_code: None,
                event: None,
                created_at: T0,
            })],
            AdminCommand::RemoveSuppression { tenant, address } => {
                vec![StoreOp::RemoveSuppression { tenant, address }]
            }
            AdminCommand::CreateEndpoint {
                tenant,
                url,
                events,
                secret,
            } => {
                let n = self.next.fetch_add(1, Ordering::SeqCst);
                let ep = EndpointRecord {
                    id: EndpointId(ulid(T0, u128::from(n))),
                    tenant,
                    url,
                    events: events.into_iter().collect(),
                    secrets: vec![WebhookSecret {
                        key: secret,
                        created_at: T0,
                        expires_at: None,
                    }],
                    created_at: T0,
                };
                self.persist(vec![StoreOp::UpsertEndpoint(ep.clone())])
                    .map_err(AdminError::Unavailable)?;
                return Ok(AdminReply::Endpoint(ep));
            }
            AdminCommand::DeleteEndpoint { tenant, endpoint } => {
                vec![StoreOp::DeleteEndpoint { tenant, endpoint }]
            }
            AdminCommand::RetryWebhookDelivery { event, .. } => {
                if event == EventId(0) {
                    return Err(AdminError::NotFound);
                }
                vec![]
            }
            _ => vec![],
        };
        self.persist(ops).map_err(AdminError::Unavailable)?;
        Ok(AdminReply::Done)
    }

    fn breakers(&self) -> Vec<BreakerView> {
        vec![BreakerView {
            domain: "dest.example".to_string(),
            state: "open".to_string(),
            consecutive_failures: 5,
            opened_at: Some(T0),
            next_probe_at: None,
            last_failure: None,
            forced: false,
            explanation: "opened".to_string(),
        }]
    }

    fn queue(&self) -> Vec<QueueView> {
        vec![QueueView {
            domain: "dest.example".to_string(),
            queued: 3,
            ..QueueView::default()
        }]
    }

    fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    store: Store,
    engine: Arc<FakeEngine>,
    api: Option<ApiHandle>,
    base: String,
    agent: ureq::Agent,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(api) = self.api.take() {
            api.stop();
        }
    }
}

fn harness_with(settings: ApiSettings) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let engine = Arc::new(FakeEngine {
        writer: Mutex::new(store.spawn_writer()),
        accepting: AtomicBool::new(true),
        next: AtomicU64::new(1),
        submissions: Mutex::new(Vec::new()),
        commands: Mutex::new(Vec::new()),
    });
    let api = serve(
        "127.0.0.1:0",
        store.clone(),
        engine.clone(),
        Some(hash_key(ADMIN)),
        settings,
    )
    .unwrap();
    let base = format!("http://{}", api.local_addr());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    Harness {
        _dir: dir,
        store,
        engine,
        api: Some(api),
        base,
        agent,
    }
}

fn harness() -> Harness {
    harness_with(ApiSettings {
        allow_private_webhooks: false,
        max_body_bytes: 64 * 1024,
        max_connections: 8,
        rate_limiter: None,
        metrics: Some(Arc::new(|| "outpost_up 1\n".to_string())),
        ..ApiSettings::default()
    })
}

impl Harness {
    fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("{}{}", self.base, path);
        let auth = key.map(|k| format!("Bearer {k}"));
        let mut res = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            ("DELETE", _) => {
                let mut r = self.agent.delete(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            (_, body) => {
                let mut r = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send(body.unwrap_or(""))
            }
        }
        .unwrap();
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string().unwrap();
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, v)
    }

    fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(key), Some(&body.to_string()))
    }

    fn get(&self, path: &str, key: &str) -> (u16, Value) {
        self.call("GET", path, Some(key), None)
    }

    fn new_key(&self, domain: &str) -> String {
        let (s, v) = self.post("/v1/keys", ADMIN, json!({"domain": domain}));
        assert_eq!(s, 201, "{v}");
        v["key"].as_str().unwrap().to_string()
    }

    fn send(&self, key: &str, from: &str, to: &[&str]) -> (u16, Value) {
        self.post(
            "/v1/messages",
            key,
            json!({"from": from, "to": to, "subject": "hi", "text": "hello"}),
        )
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[test]
fn health_readiness_and_shutdown() {
    let h = harness();
    assert_eq!(h.call("GET", "/healthz", None, None).0, 200);
    assert_eq!(h.call("GET", "/readyz", None, None).0, 200);
    let mut res = h.agent.get(format!("{}/metrics", h.base)).call().unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.body_mut().read_to_string().unwrap(), "outpost_up 1\n");
    let key = h.new_key("example.com");
    h.engine.accepting.store(false, Ordering::SeqCst);
    assert_eq!(h.call("GET", "/readyz", None, None).0, 503);
    let (s, v) = h.send(&key, "a@example.com", &["b@dest.example"]);
    assert_eq!((s, code(&v)), (503, "shutting_down"));
    // Reads still work while draining.
    assert_eq!(h.get("/v1/messages", &key).0, 200);
    assert_eq!(h.call("GET", "/nope", None, None).0, 404);
    assert_eq!(h.call("DELETE", "/v1/messages", Some(&key), None).0, 405);
}

#[test]
fn domain_key_changes_answer_503_while_shutting_down() {
    let keys = tempfile::tempdir().unwrap();
    let domains =
        crate::dkim::Domains::open(keys.path(), Default::default(), None, Vec::new()).unwrap();
    let h = harness_with(ApiSettings {
        max_body_bytes: 64 * 1024,
        max_connections: 8,
        domains: Some(domains),
        ..ApiSettings::default()
    });
    let key = h.new_key("example.com");
    let other = h.new_key("other.example");
    h.engine.accepting.store(false, Ordering::SeqCst);
    // Adding and retiring keys change state: refused like every other write.
    let (s, v) = h.post(
        "/v1/domains/example.com/dkim",
        &key,
        json!({"selector": "s2"}),
    );
    assert_eq!((s, code(&v)), (503, "shutting_down"), "{v}");
    let (s, v) = h.call(
        "DELETE",
        "/v1/domains/example.com/dkim/s1",
        Some(&key),
        None,
    );
    assert_eq!((s, code(&v)), (503, "shutting_down"), "{v}");
    // The caller is still checked first: another tenant's domain stays a 404.
    let (s, _) = h.post("/v1/domains/example.com/dkim", &other, json!({}));
    assert_eq!(s, 404);
}

/// One request over a fresh connection (any method): status, `Allow` header, body.
fn raw_call(h: &Harness, method: &str, path: &str, key: &str) -> (u16, Option<String>, Value) {
    let mut tcp = TcpStream::connect(h.api.as_ref().unwrap().local_addr()).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let allow = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("allow"))
        .map(|(_, v)| v.trim().to_string());
    (
        status,
        allow,
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[test]
fn method_not_allowed_names_the_allowed_methods() {
    let h = harness();
    let key = h.new_key("example.com");
    for (method, path, allow) in [
        ("DELETE", "/v1/messages", "GET, HEAD, POST"),
        ("PUT", "/v1/keys", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
        // Routes with a path parameter.
        (
            "POST",
            "/v1/messages/01J0000000000000000000000",
            "GET, HEAD",
        ),
        ("GET", "/v1/suppressions/a%40dest.example", "DELETE"),
        ("PATCH", "/v1/webhooks/w1/deliveries/e1/retry", "POST"),
        ("DELETE", "/v1/admin/messages/m1/cancel", "POST"),
        ("HEAD", "/v1/admin/suppressions/a%40dest.example", "DELETE"),
    ] {
        let (status, got, body) = raw_call(&h, method, path, &key);
        assert_eq!(status, 405, "{method} {path}");
        assert_eq!(got.as_deref(), Some(allow), "{method} {path}");
        if method != "HEAD" {
            assert_eq!(code(&body), "method_not_allowed", "{method} {path}");
        }
    }
    // Other answers have no Allow header; an unknown path is a 404 whatever the method.
    assert_eq!(raw_call(&h, "GET", "/healthz", &key).1, None);
    assert_eq!(raw_call(&h, "PUT", "/v1/nope", &key).0, 404);
    assert_eq!(raw_call(&h, "PUT", "/v1/nope", &key).1, None);
}

/// `allowed_methods` (the Allow header) lists exactly the methods `dispatch` routes, for
/// every route.
#[test]
fn allowed_methods_match_the_routes() {
    use server::{Method, Version};
    let h = harness();
    let ctx = Ctx {
        store: h.store.clone(),
        gateway: h.engine.clone(),
        admin_key_hash: None,
        settings: ApiSettings::default(),
    };
    let methods = [
        (Method::Get, "GET"),
        (Method::Head, "HEAD"),
        (Method::Post, "POST"),
        (Method::Put, "PUT"),
        (Method::Delete, "DELETE"),
        (Method::Patch, "PATCH"),
        (Method::Options, "OPTIONS"),
    ];
    let paths = [
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/keys",
        "/v1/messages",
        "/v1/messages/m1",
        "/v1/events",
        "/v1/suppressions",
        "/v1/suppressions/a%40b.example",
        "/v1/webhooks",
        "/v1/webhooks/w1",
        "/v1/webhooks/w1/deliveries",
        "/v1/webhooks/w1/rotate-secret",
        "/v1/webhooks/w1/deliveries/e1/retry",
        "/v1/admin/queue",
        "/v1/admin/breakers",
        "/v1/admin/breakers/d.example",
        "/v1/admin/messages/m1",
        "/v1/admin/messages/m1/retry",
        "/v1/admin/messages/m1/cancel",
        "/v1/admin/suppressions",
        "/v1/admin/suppressions/a%40b.example",
        "/v1/domains/example.com",
        "/v1/domains/example.com/dkim",
        "/v1/domains/example.com/dkim/s1",
    ];
    for path in paths {
        let (segs, _) = http::split_url(path).unwrap();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let allow = routes::allowed_methods(&segs).unwrap_or_else(|| panic!("{path}"));
        for (method, name) in methods {
            let req = Request {
                method,
                target: path.to_string(),
                version: Version::Http11,
                headers: Vec::new(),
                body: Vec::new(),
                peer: "127.0.0.1:1".parse().unwrap(),
            };
            let (route, _) = routes::dispatch(&ctx, &req);
            let listed = allow.split(", ").any(|m| m == name);
            assert_eq!(
                route != "method_not_allowed",
                listed,
                "{name} {path}: routed as {route}, Allow: {allow}"
            );
        }
    }
    assert_eq!(routes::allowed_methods(&["v1", "nope"]), None);
}

#[test]
fn keys_are_shown_once_and_stored_hashed() {
    let h = harness();
    let (s, v) = h.post("/v1/keys", ADMIN, json!({"domain": "Example.COM"}));
    assert_eq!(s, 201);
    assert_eq!(v["domain"], "example.com");
    let key = v["key"].as_str().unwrap();
    assert!(key.starts_with("op_"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&key[3..])
        .unwrap();
    assert!(raw.len() >= 32);
    // Only the SHA-256 is stored.
    let stored: Vec<(String, String)> = h
        .store
        .read(|c| {
            let mut st = c.prepare("SELECT key_hash, prefix FROM api_keys")?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, hex(&hash_key(key)));
    assert!(!stored[0].0.contains(&key[3..]));
    assert!(key.starts_with(&stored[0].1) && stored[0].1.len() < 12);
    // The key works; a second key for the same domain is the same tenant.
    let key2 = h.new_key("example.com");
    let (s, _) = h.send(key, "a@example.com", &["x@dest.example"]);
    assert_eq!(s, 202);
    let (_, list) = h.get("/v1/messages", &key2);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    // Only the admin creates keys.
    assert_eq!(h.post("/v1/keys", key, json!({"domain": "x.com"})).0, 403);
    assert_eq!(h.call("POST", "/v1/keys", None, Some("{}")).0, 401);
    let (s, v) = h.post("/v1/keys", ADMIN, json!({"domain": "bad domain"}));
    assert_eq!((s, v["error"]["field"].as_str()), (422, Some("domain")));
}

#[test]
fn auth_and_tenant_isolation() {
    let h = harness();
    let a = h.new_key("a.example");
    let b = h.new_key("b.example");
    let (s, v) = h.call("GET", "/v1/messages", None, None);
    assert_eq!((s, code(&v)), (401, "unauthorized"));
    assert_eq!(h.get("/v1/messages", "op_unknown").0, 401);
    assert_eq!(h.call("GET", "/v1/messages", Some(""), None).0, 401);
    // The admin key cannot send mail or read a tenant's log.
    let (s, _) = h.send(ADMIN, "x@a.example", &["y@dest.example"]);
    assert_eq!(s, 403);
    assert_eq!(h.get("/v1/admin/queue", &a).0, 403);
    // Sending from another tenant's domain: the core's 403.
    let (s, v) = h.send(&a, "x@b.example", &["y@dest.example"]);
    assert_eq!((s, code(&v)), (403, "sender_not_allowed"));

    let (s, receipt) = h.send(&a, "x@a.example", &["y@dest.example"]);
    assert_eq!(s, 202);
    let id = receipt["id"].as_str().unwrap();
    assert_eq!(h.get(&format!("/v1/messages/{id}"), &a).0, 200);
    let (s, v) = h.get(&format!("/v1/messages/{id}"), &b);
    assert_eq!((s, code(&v)), (404, "not_found"));
    assert_eq!(h.get("/v1/messages/msg_garbage", &a).0, 404);
    assert!(
        h.get("/v1/messages", &b).1["data"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let (s, ep) = h.post(
        "/v1/webhooks",
        &a,
        json!({"url": "https://hooks.a.example/x"}),
    );
    assert_eq!(s, 201, "{ep}");
    let ep_id = ep["id"].as_str().unwrap();
    assert_eq!(
        h.call("DELETE", &format!("/v1/webhooks/{ep_id}"), Some(&b), None)
            .0,
        404
    );
    assert_eq!(
        h.get(&format!("/v1/webhooks/{ep_id}/deliveries"), &b).0,
        404
    );
    assert_eq!(
        h.post(
            &format!("/v1/webhooks/{ep_id}/rotate-secret"),
            &b,
            json!({})
        )
        .0,
        404
    );
    assert!(
        h.get("/v1/webhooks", &b).1["data"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        h.call("DELETE", &format!("/v1/webhooks/{ep_id}"), Some(&a), None)
            .0,
        204
    );
}

#[test]
fn send_maps_fields_and_headers_into_the_submission() {
    let h = harness();
    let key = h.new_key("example.com");
    let body = json!({
        "from": "a@example.com", "to": ["b@dest.example"], "cc": ["c@dest.example"],
        "bcc": ["d@dest.example"], "reply_to": "r@example.com", "subject": "s",
        "text": "t", "html": "<p>h</p>", "headers": {"X-A": "1"}, "tags": ["x"]
    });
    let mut res = h
        .agent
        .post(format!("{}/v1/messages", h.base))
        .header("Authorization", format!("Bearer {key}"))
        .header("Idempotency-Key", "order-42")
        .send(body.to_string())
        .unwrap();
    assert_eq!(res.status().as_u16(), 202);
    let receipt: Value = serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap();
    assert!(receipt["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(receipt["status"], "queued");
    assert_eq!(receipt["recipients"][0]["address"], "b@dest.example");
    assert_eq!(receipt["recipients"][0]["status"], "queued");
    let raw = base64::engine::general_purpose::STANDARD.encode(b"Subject: x\r\n\r\nbody\r\n");
    let (s, _) = h.post(
        "/v1/messages",
        &key,
        json!({"from": "a@example.com", "to": ["b@dest.example"], "raw": raw}),
    );
    assert_eq!(s, 202);
    let subs = h.engine.submissions.lock().unwrap().clone();
    assert_eq!(subs.len(), 2);
    assert_eq!(subs[0].tenant_domain, "example.com");
    assert_eq!(subs[0].source, Source::Api);
    assert_eq!(subs[0].idempotency_key.as_deref(), Some("order-42"));
    let SubmissionContent::Compose(c) = &subs[0].content else {
        panic!("compose expected")
    };
    assert_eq!(c.bcc, vec!["d@dest.example".to_string()]);
    assert_eq!(c.reply_to.as_deref(), Some("r@example.com"));
    assert_eq!(c.headers.get("X-A").map(String::as_str), Some("1"));
    assert_eq!(c.html.as_deref(), Some("<p>h</p>"));
    let SubmissionContent::Raw { data, rcpt_to, .. } = &subs[1].content else {
        panic!("raw expected")
    };
    assert_eq!(data, b"Subject: x\r\n\r\nbody\r\n");
    assert_eq!(rcpt_to, &vec!["b@dest.example".to_string()]);
}

#[test]
fn malformed_invalid_and_oversize_requests() {
    let h = harness();
    let key = h.new_key("example.com");
    let post_raw = |body: &str| h.call("POST", "/v1/messages", Some(&key), Some(body));
    let (s, v) = post_raw("{\"from\": ");
    assert_eq!((s, code(&v)), (400, "invalid_json"));
    assert_eq!(post_raw("[1,2]").0, 400);
    // Nesting stops at serde_json's recursion limit, within the connection thread's stack
    // (the server's default); just under the limit the value reaches field checks.
    let deep = format!(
        r#"{{"from":{}1{}}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let (s, v) = post_raw(&deep);
    assert_eq!((s, code(&v)), (400, "invalid_json"));
    let nested = format!(
        r#"{{"from":"a@example.com","to":["b@x.example"],"tags":{}1{}}}"#,
        "[".repeat(125),
        "]".repeat(125)
    );
    let (s, v) = post_raw(&nested);
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (422, Some("tags")),
        "{v}"
    );
    let (s, v) = post_raw(r#"{"from":"a@example.com","to":["b@x.example"],"bogus":1,"zz":2}"#);
    assert_eq!((s, code(&v)), (422, "unknown_field"));
    assert_eq!(v["error"]["field"], "bogus");
    assert!(v["error"]["message"].as_str().unwrap().contains("zz"));
    let (s, v) = post_raw(r#"{"from":"a@example.com","to":"b@x.example"}"#);
    assert_eq!((s, v["error"]["field"].as_str()), (422, Some("to")));
    let (s, v) = post_raw(r#"{"to":["b@x.example"]}"#);
    assert_eq!(
        (s, code(&v), v["error"]["field"].as_str()),
        (422, "missing_field", Some("from"))
    );
    let (s, v) = post_raw(r#"{"from":"a@example.com","to":["b@x.example"],"raw":"!!notb64"}"#);
    assert_eq!((s, v["error"]["field"].as_str()), (422, Some("raw")));
    let (s, v) = post_raw(r#"{"from":"a@example.com","to":["b@x.example"],"raw":"QQ==","cc":[]}"#);
    assert_eq!((s, v["error"]["field"].as_str()), (422, Some("cc")));
    // The core's 422 passes through with its field.
    let (s, v) = post_raw(r#"{"from":"a@example.com","to":[]}"#);
    assert_eq!(
        (s, code(&v), v["error"]["field"].as_str()),
        (422, "no_recipients", Some("to"))
    );
    let mut res = h
        .agent
        .post(format!("{}/v1/messages", h.base))
        .header("Authorization", format!("Bearer {key}"))
        .header("Idempotency-Key", "has space")
        .send("{}")
        .unwrap();
    assert_eq!(res.status().as_u16(), 422);
    let _ = res.body_mut().read_to_string();

    // Over the limit by Content-Length.
    let big = format!(
        r#"{{"from":"a@example.com","to":["b@x.example"],"text":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let (s, v) = post_raw(&big);
    assert_eq!((s, code(&v)), (413, "payload_too_large"));
    let res = h
        .agent
        .post(format!("{}/v1/messages", h.base))
        .header("Authorization", format!("Bearer {key}"))
        .send(&big)
        .unwrap();
    assert_eq!(res.status().as_u16(), 413);
    assert_eq!(
        res.headers()
            .get("connection")
            .and_then(|v| v.to_str().ok()),
        Some("close")
    );
    // Over the limit without a Content-Length (chunked): the read is capped.
    let mut tcp = TcpStream::connect(h.api.as_ref().unwrap().local_addr()).unwrap();
    let chunk = "y".repeat(70 * 1024);
    write!(
        tcp,
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    // Only the `"to":[]` request reached the engine.
    assert_eq!(h.engine.submissions.lock().unwrap().len(), 1);

    // Bad query parameters.
    assert_eq!(h.get("/v1/messages?limit=0", &key).0, 400);
    assert_eq!(h.get("/v1/messages?limit=abc", &key).0, 400);
    assert_eq!(h.get("/v1/messages?status=nope", &key).0, 400);
    assert_eq!(h.get("/v1/messages?cursor=nope", &key).0, 400);
    assert_eq!(h.get("/v1/messages?colour=red", &key).0, 400);
    assert_eq!(h.get("/v1/events?type=message.nope", &key).0, 400);
    assert_eq!(h.get("/v1/events?after=-1", &key).0, 400);
}

#[test]
fn send_log_paginates_with_a_cursor() {
    let h = harness();
    let key = h.new_key("example.com");
    let mut sent = Vec::new();
    for i in 0..5 {
        let (s, r) = h.send(
            &key,
            "a@example.com",
            &[&format!("r{i}@dest.example"), "z@dest.example"],
        );
        assert_eq!(s, 202);
        sent.push(r["id"].as_str().unwrap().to_string());
    }
    // Mark one delivered so the status filter has something to find.
    let last: MessageId = sent[4].parse().unwrap();
    let ops = vec![
        StoreOp::UpdateRecipient {
            message: last,
            idx: 0,
            status: RecipientStatus::Sending,
            attempts: 1,
            next_attempt_at: None,
            at: T0,
            reason: None,
        },
        StoreOp::InsertAttempt(attempt(last, 0, 1, T0)),
    ];
    h.engine.persist(ops).unwrap();

    let mut seen = Vec::new();
    let mut path = "/v1/messages?limit=2".to_string();
    loop {
        let (s, page) = h.get(&path, &key);
        assert_eq!(s, 200, "{page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        for m in data {
            assert_eq!(m["recipients"].as_array().unwrap().len(), 2);
            seen.push(m["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/messages?limit=2&cursor={c}"),
            None => break,
        }
    }
    let mut newest_first = sent.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    let (_, sending) = h.get("/v1/messages?status=sending", &key);
    let data = sending["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["id"], sent[4].as_str());

    let (s, detail) = h.get(&format!("/v1/messages/{}", sent[4]), &key);
    assert_eq!(s, 200);
    assert_eq!(detail["status"], "sending");
    assert_eq!(detail["recipients"][0]["status"], "sending");
    assert_eq!(detail["recipients"][0]["attempts"], 1);
    let a = &detail["attempts"][0];
    assert_eq!(a["recipient"], "r4@dest.example");
    assert_eq!(a["attempt"], 1);
    assert_eq!(a["smtp_code"], 451);
    assert_eq!(a["enhanced_code"], "4.7.1");
    assert_eq!(a["category"], "rate_limited");
    assert_eq!(a["mx"], "mx.dest.example");
    assert_eq!(a["tls"]["mode"], "starttls");
    assert_eq!(a["at"], T0.rfc3339());
}

#[test]
fn events_suppressions_webhooks_and_admin() {
    let h = harness();
    let key = h.new_key("example.com");
    let tenant = h
        .store
        .read(|c| crate::store::query::tenant_by_domain(c, "example.com"))
        .unwrap()
        .unwrap();
    let (_, r) = h.send(&key, "a@example.com", &["b@dest.example"]);
    let id: MessageId = r["id"].as_str().unwrap().parse().unwrap();
    let e1 = event(1, tenant.id.0, id, EventKind::Queued);
    let e2 = event(2, tenant.id.0, id, EventKind::Delivered);
    let other = event(3, tenant.id.0 + 1, id, EventKind::Delivered);
    h.engine
        .persist(vec![
            StoreOp::InsertEvent(e1.clone()),
            StoreOp::InsertEvent(e2.clone()),
            StoreOp::InsertEvent(other),
        ])
        .unwrap();
    let (s, ev) = h.get("/v1/events", &key);
    assert_eq!(s, 200);
    assert_eq!(ev["data"].as_array().unwrap().len(), 2);
    assert_eq!(ev["data"][0]["type"], "message.queued");
    assert_eq!(ev["next_after"], 2);
    let (_, ev) = h.get("/v1/events?after=1", &key);
    assert_eq!(ev["data"].as_array().unwrap().len(), 1);
    let (_, ev) = h.get("/v1/events?type=message.queued", &key);
    assert_eq!(ev["data"][0]["id"], e1.id.to_string());

    // Suppressions.
    let (s, v) = h.post(
        "/v1/suppressions",
        &key,
        json!({"address": "Bad@Dest.example"}),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["address"], "bad@dest.example");
    let (s, v) = h.post("/v1/suppressions", &key, json!({"address": "nope"}));
    assert_eq!((s, v["error"]["field"].as_str()), (422, Some("address")));
    let (_, list) = h.get("/v1/suppressions", &key);
    assert_eq!(list["data"][0]["address"], "bad@dest.example");
    assert_eq!(list["data"][0]["source"], "manual");
    let other = h.new_key("other.example");
    assert_eq!(
        h.call(
            "DELETE",
            "/v1/suppressions/bad%40dest.example",
            Some(&other),
            None
        )
        .0,
        404
    );
    assert_eq!(
        h.call(
            "DELETE",
            "/v1/suppressions/bad%40dest.example",
            Some(&key),
            None
        )
        .0,
        204
    );
    assert!(
        h.get("/v1/suppressions", &key).1["data"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        h.call(
            "DELETE",
            "/v1/suppressions/bad%40dest.example",
            Some(&key),
            None
        )
        .0,
        404
    );

    // Webhooks: private targets refused; the secret is shown once.
    let (s, v) = h.post("/v1/webhooks", &key, json!({"url": "http://127.0.0.1:9/h"}));
    assert_eq!((s, code(&v)), (422, "private_webhook_target"));
    let (s, v) = h.post(
        "/v1/webhooks",
        &key,
        json!({"url": "https://hooks.example.com/h", "events": ["message.nope"]}),
    );
    assert_eq!((s, v["error"]["field"].as_str()), (422, Some("events")));
    let (s, ep) = h.post(
        "/v1/webhooks",
        &key,
        json!({"url": "https://hooks.example.com/h", "events": ["message.delivered"]}),
    );
    assert_eq!(s, 201);
    let secret = ep["secret"].as_str().unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    assert!(raw.len() >= 24);
    let ep_id: EndpointId = ep["id"].as_str().unwrap().parse().unwrap();
    let stored = h
        .store
        .read(|c| crate::store::query::list_endpoints(c, tenant.id))
        .unwrap();
    assert_eq!(stored[0].secrets[0].key, raw);
    let (_, list) = h.get("/v1/webhooks", &key);
    assert_eq!(list["data"][0]["events"], json!(["message.delivered"]));
    assert!(list["data"][0].get("secret").is_none());
    let (s, rot) = h.post(
        &format!("/v1/webhooks/{ep_id}/rotate-secret"),
        &key,
        json!({}),
    );
    assert_eq!(s, 200);
    assert_ne!(rot["secret"], ep["secret"]);
    assert!(rot["secret"].as_str().unwrap().starts_with("whsec_"));

    // Deliveries log.
    h.engine
        .persist(vec![
            StoreOp::UpsertWebhookDelivery(WebhookDeliveryRecord {
                endpoint: ep_id,
                event: e2.id,
                event_seq: 2,
                tenant: tenant.id,
                state: WebhookDeliveryState::Failed,
                attempts: 1,
                next_attempt_at: None,
                updated_at: T0,
            }),
            StoreOp::InsertWebhookAttempt(WebhookAttemptRecord {
                endpoint: ep_id,
                event: e2.id,
                tenant: tenant.id,
                attempt: 1,
                at: T0,
                duration_ms: 30,
                status_code: Some(500),
                error: None,
            }),
        ])
        .unwrap();
    let (s, d) = h.get(&format!("/v1/webhooks/{ep_id}/deliveries"), &key);
    assert_eq!(s, 200);
    assert_eq!(d["data"][0]["event_id"], e2.id.to_string());
    assert_eq!(d["data"][0]["state"], "failed");
    assert_eq!(d["data"][0]["type"], "message.delivered");
    assert_eq!(d["data"][0]["attempt_log"][0]["status_code"], 500);
    let (s, _) = h.post(
        &format!("/v1/webhooks/{ep_id}/deliveries/{}/retry", e2.id),
        &key,
        json!({}),
    );
    assert_eq!(s, 202);
    let (s, _) = h.post(
        &format!("/v1/webhooks/{ep_id}/deliveries/{}/retry", EventId(0)),
        &key,
        json!({}),
    );
    assert_eq!(s, 404);

    // Admin views and the breaker override.
    let (s, q) = h.get("/v1/admin/queue", ADMIN);
    assert_eq!((s, q["data"][0]["queued"].as_u64()), (200, Some(3)));
    let (s, b) = h.get("/v1/admin/breakers", ADMIN);
    assert_eq!((s, b["data"][0]["state"].as_str()), (200, Some("open")));
    let (s, v) = h.post(
        "/v1/admin/breakers/Dest.Example",
        ADMIN,
        json!({"state": "closed"}),
    );
    assert_eq!(
        (s, v["domain"].as_str(), v["state"].as_str()),
        (200, Some("dest.example"), Some("closed"))
    );
    let (s, v) = h.post(
        "/v1/admin/breakers/dest.example",
        ADMIN,
        json!({"state": "ajar"}),
    );
    assert_eq!((s, v["error"]["field"].as_str()), (422, Some("state")));
    assert_eq!(
        h.post(
            "/v1/admin/breakers/dest.example",
            &key,
            json!({"state": "open"})
        )
        .0,
        403
    );
    let cmds = h.engine.commands.lock().unwrap().clone();
    assert!(cmds.contains(&AdminCommand::ForceBreaker {
        domain: "dest.example".to_string(),
        state: ForcedBreakerState::Closed
    }));
    let _ = Time(0);
}

#[test]
fn rate_limit_hook_answers_429() {
    let h = harness_with(ApiSettings {
        rate_limiter: Some(Arc::new(|_, _| Err(7))),
        ..ApiSettings::default()
    });
    let key = h.new_key("example.com");
    // Reads are not messages: only submissions count.
    let (s, _) = h.get("/v1/messages", &key);
    assert_eq!(s, 200);
    let (s, v) = h.call(
        "POST",
        "/v1/messages",
        Some(&key),
        Some(r#"{"from":"a@example.com","to":["b@dest.example"],"text":"x"}"#),
    );
    assert_eq!((s, code(&v)), (429, "rate_limited"));
    assert!(v["error"]["message"].as_str().unwrap().contains("7 s"));
}
