//! Routes (DESIGN.md's table) and their handlers.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use outpost_core::io::{
    AdminCommand, AdminError, AdminReply, ComposeRequest, ForcedBreakerState, Submission,
    SubmissionContent,
};
use outpost_core::model::{EndpointRecord, EventKind, MessageRecord, Source};
use outpost_core::status::MessageStatus;
use outpost_core::{EndpointId, EventId, MessageId, RequestId, Time};
use serde_json::{Value, json};

use super::http::{ApiError, Query, deny_unknown, opt_field, parse_object, req_field, split_url};
use super::server::{Method, Request};
use super::{Body, Caller, Ctx, Reply, authenticate, hash_key, hex, ops_routes, validate};
use crate::store::query::{self, Tenant};

type Res = Result<Reply, ApiError>;

const COMPOSE_FIELDS: &[&str] = &[
    "from", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "headers", "tags",
];
const RAW_FIELDS: &[&str] = &["from", "to", "raw"];

/// Routes the request; returns a route name for logs (never the raw path: it can hold an
/// address) and the answer.
pub(crate) fn dispatch(ctx: &Ctx, req: &Request) -> (&'static str, Res) {
    let (segs, params) = match split_url(&req.target) {
        Ok(x) => x,
        Err(e) => return ("invalid", Err(e)),
    };
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let q = Query(params);
    // HEAD is GET without the body (the server leaves the body out).
    let method = match req.method {
        Method::Head => Method::Get,
        m => m,
    };
    use Method::{Delete, Get, Post};
    match (&method, s.as_slice()) {
        (Get, ["healthz"]) => ("healthz", Ok(Reply::json(200, json!({"status": "ok"})))),
        (Get, ["readyz"]) => ("readyz", readyz(ctx)),
        (Get, ["metrics"]) => ("metrics", metrics(ctx)),
        (Post, ["v1", "keys"]) => ("keys.create", create_key(ctx, req, q)),
        (Post, ["v1", "messages"]) => ("messages.send", send(ctx, req, q)),
        (Get, ["v1", "messages"]) => ("messages.list", list_messages(ctx, req, q)),
        (Get, ["v1", "messages", id]) => ("messages.get", get_message(ctx, req, q, id)),
        (Get, ["v1", "events"]) => ("events.list", list_events(ctx, req, q)),
        (Get, ["v1", "suppressions"]) => ("suppressions.list", list_suppressions(ctx, req, q)),
        (Post, ["v1", "suppressions"]) => ("suppressions.add", add_suppression(ctx, req, q)),
        (Delete, ["v1", "suppressions", a]) => {
            ("suppressions.remove", remove_suppression(ctx, req, q, a))
        }
        (Get, ["v1", "webhooks"]) => ("webhooks.list", list_webhooks(ctx, req, q)),
        (Post, ["v1", "webhooks"]) => ("webhooks.create", create_webhook(ctx, req, q)),
        (Delete, ["v1", "webhooks", id]) => ("webhooks.delete", delete_webhook(ctx, req, q, id)),
        (Get, ["v1", "webhooks", id, "deliveries"]) => {
            ("webhooks.deliveries", list_deliveries(ctx, req, q, id))
        }
        (Post, ["v1", "webhooks", id, "rotate-secret"]) => {
            ("webhooks.rotate", rotate_secret(ctx, req, q, id))
        }
        (Post, ["v1", "webhooks", id, "deliveries", ev, "retry"]) => {
            ("webhooks.retry", retry_delivery(ctx, req, q, id, ev))
        }
        (Get, ["v1", "admin", "queue"]) => ("admin.queue", admin_queue(ctx, req, q)),
        (Get, ["v1", "admin", "breakers"]) => ("admin.breakers", admin_breakers(ctx, req, q)),
        (Post, ["v1", "admin", "breakers", d]) => {
            ("admin.force_breaker", force_breaker(ctx, req, q, d))
        }
        (Get, ["v1", "domains", d]) => ("domains.get", super::domains::get(ctx, req, q, d)),
        (Post, ["v1", "domains", d, "dkim"]) => (
            "domains.dkim.add",
            super::domains::create_dkim(ctx, req, q, d),
        ),
        (Delete, ["v1", "domains", d, "dkim", sel]) => (
            "domains.dkim.retire",
            super::domains::retire_dkim(ctx, req, q, d, sel),
        ),
        (Get, ["v1", "admin", "messages", id]) => (
            "admin.messages.get",
            ops_routes::get_message(ctx, req, q, id),
        ),
        (Post, ["v1", "admin", "messages", id, "retry"]) => {
            ("admin.messages.retry", ops_routes::retry(ctx, req, q, id))
        }
        (Post, ["v1", "admin", "messages", id, "cancel"]) => {
            ("admin.messages.cancel", ops_routes::cancel(ctx, req, q, id))
        }
        (Get, ["v1", "admin", "suppressions"]) => (
            "admin.suppressions.list",
            ops_routes::list_suppressions(ctx, req, q),
        ),
        (Post, ["v1", "admin", "suppressions"]) => (
            "admin.suppressions.add",
            ops_routes::add_suppression(ctx, req, q),
        ),
        (Delete, ["v1", "admin", "suppressions", a]) => (
            "admin.suppressions.remove",
            ops_routes::remove_suppression(ctx, req, q, a),
        ),
        (_, path) => match allowed_methods(path) {
            // RFC 9110 15.5.6: a 405 names the methods the resource does accept.
            Some(allow) => (
                "method_not_allowed",
                Err(ApiError::new(405, "method_not_allowed", "method not allowed").allow(allow)),
            ),
            None => ("not_found", Err(ApiError::not_found())),
        },
    }
}

/// `Allow` values. HEAD goes wherever GET does (`dispatch` answers it as GET).
pub(super) const GET: &str = "GET, HEAD";
pub(super) const POST: &str = "POST";
pub(super) const DELETE: &str = "DELETE";
pub(super) const GET_POST: &str = "GET, HEAD, POST";

/// The methods a known path answers, as an `Allow` header value (for its 405); `None`
/// for a path no route serves (404). Must list what `dispatch` matches (a test checks
/// each route).
pub(super) fn allowed_methods(s: &[&str]) -> Option<&'static str> {
    Some(match s {
        ["healthz"] | ["readyz"] | ["metrics"] => GET,
        ["v1", "keys"] => POST,
        ["v1", "messages"] => GET_POST,
        ["v1", "messages", _] => GET,
        ["v1", "events"] => GET,
        ["v1", "suppressions"] => GET_POST,
        ["v1", "suppressions", _] => DELETE,
        ["v1", "webhooks"] => GET_POST,
        ["v1", "webhooks", _] => DELETE,
        ["v1", "webhooks", _, "deliveries"] => GET,
        ["v1", "webhooks", _, "rotate-secret"] => POST,
        ["v1", "webhooks", _, "deliveries", _, "retry"] => POST,
        ["v1", "admin", "queue"] | ["v1", "admin", "breakers"] => GET,
        ["v1", "admin", "breakers", _] => POST,
        ["v1", "domains", _] => GET,
        ["v1", "domains", _, "dkim"] => POST,
        ["v1", "domains", _, "dkim", _] => DELETE,
        _ => return ops_routes::allowed_methods(s),
    })
}

fn now() -> Time {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Time(ms)
}

fn random_bytes(n: usize) -> Result<Vec<u8>, ApiError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| {
        tracing::error!(error = %e, "OS random generator failed");
        ApiError::unavailable("random generator unavailable")
    })?;
    Ok(buf)
}

/// A tenant's key (the admin key cannot act as a tenant).
pub(super) fn tenant(ctx: &Ctx, req: &Request) -> Result<Tenant, ApiError> {
    match authenticate(ctx, req)? {
        Caller::Admin => Err(ApiError::forbidden(
            "the admin key manages tenants; use a tenant key",
        )),
        Caller::Tenant(t) => Ok(t),
    }
}

/// The tenant's message rate (limits count messages, so only submissions ask).
fn rate_limit(ctx: &Ctx, t: &Tenant) -> Result<(), ApiError> {
    if let Some(limit) = &ctx.settings.rate_limiter
        && let Err(retry_after) = limit(t.id, &t.domain)
    {
        let mut e = ApiError::new(
            429,
            "rate_limited",
            format!("message rate limit reached; retry in {retry_after} s"),
        );
        e.retry_after = Some(retry_after);
        return Err(e);
    }
    Ok(())
}

pub(super) fn admin(ctx: &Ctx, req: &Request) -> Result<(), ApiError> {
    match authenticate(ctx, req)? {
        Caller::Admin => Ok(()),
        Caller::Tenant(_) => Err(ApiError::forbidden("this route needs the admin key")),
    }
}

/// State-changing routes answer 503 while the daemon shuts down.
pub(super) fn accepting(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.gateway.accepting() {
        Ok(())
    } else {
        Err(ApiError::new(
            503,
            "shutting_down",
            "the daemon is shutting down",
        ))
    }
}

pub(super) fn admin_error(e: AdminError) -> ApiError {
    match e {
        AdminError::NotFound => ApiError::not_found(),
        AdminError::Invalid(m) => ApiError::new(422, "invalid", m),
        AdminError::Unavailable(m) => {
            tracing::warn!(error = %m, "admin command failed: storage");
            ApiError::unavailable("storage unavailable")
        }
    }
}

/// The body as a JSON object (the server has already read it, within the size limit).
pub(super) fn json_body(req: &Request) -> Result<serde_json::Map<String, Value>, ApiError> {
    parse_object(&req.body)
}

pub(super) fn opt_time(t: Option<Time>) -> Value {
    t.map_or(Value::Null, |t| json!(t.rfc3339()))
}

fn readyz(ctx: &Ctx) -> Res {
    if ctx.gateway.accepting() {
        Ok(Reply::json(200, json!({"status": "ready"})))
    } else {
        Err(ApiError::new(503, "shutting_down", "not ready"))
    }
}

fn metrics(ctx: &Ctx) -> Res {
    match &ctx.settings.metrics {
        Some(render) => Ok(Reply {
            status: 200,
            body: Body::Text(render()),
        }),
        None => Err(ApiError::not_found()),
    }
}

// ---- keys ----

fn create_key(ctx: &Ctx, req: &Request, q: Query) -> Res {
    admin(ctx, req)?;
    q.finish()?;
    let mut map = json_body(req)?;
    deny_unknown(&map, &["domain"])?;
    let domain: String = req_field(&mut map, "domain")?;
    let domain = validate::domain(&domain)
        .ok_or_else(|| ApiError::invalid("domain", "domain must be a valid DNS name"))?;
    let key = format!("op_{}", URL_SAFE_NO_PAD.encode(random_bytes(32)?));
    let hash = hex(&hash_key(&key));
    let prefix: String = key.chars().take(10).collect();
    let t = ctx
        .store
        .read(|c| query::create_key(c, &domain, &hash, &prefix, now()))?;
    tracing::info!(tenant = t.id.0, "API key created");
    Ok(Reply::json(201, json!({"key": key, "domain": t.domain})))
}

// ---- messages ----

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD
        .decode(&compact)
        .or_else(|_| STANDARD_NO_PAD.decode(&compact))
        .ok()
}

fn send(ctx: &Ctx, req: &Request, q: Query) -> Res {
    let t = tenant(ctx, req)?;
    accepting(ctx)?;
    q.finish()?;
    rate_limit(ctx, &t)?;
    let idempotency_key = match req.header("Idempotency-Key") {
        None => None,
        Some(k) if validate::idempotency_key(k) => Some(k.to_string()),
        Some(_) => {
            return Err(ApiError::invalid(
                "Idempotency-Key",
                "Idempotency-Key must be 1 to 255 printable ASCII characters",
            ));
        }
    };
    let mut map = json_body(req)?;
    let content = if map.contains_key("raw") {
        deny_unknown(&map, RAW_FIELDS)?;
        let mail_from: String = req_field(&mut map, "from")?;
        let rcpt_to: Vec<String> = opt_field(&mut map, "to")?.unwrap_or_default();
        let raw: String = req_field(&mut map, "raw")?;
        let data = decode_base64(&raw)
            .ok_or_else(|| ApiError::invalid("raw", "raw must be base64 (RFC 4648)"))?;
        SubmissionContent::Raw {
            mail_from,
            rcpt_to,
            data,
            smtputf8: false,
        }
    } else {
        deny_unknown(&map, COMPOSE_FIELDS)?;
        SubmissionContent::Compose(ComposeRequest {
            from: req_field(&mut map, "from")?,
            to: opt_field(&mut map, "to")?.unwrap_or_default(),
            cc: opt_field(&mut map, "cc")?.unwrap_or_default(),
            bcc: opt_field(&mut map, "bcc")?.unwrap_or_default(),
            reply_to: opt_field(&mut map, "reply_to")?,
            subject: opt_field(&mut map, "subject")?.unwrap_or_default(),
            text: opt_field(&mut map, "text")?,
            html: opt_field(&mut map, "html")?,
            headers: opt_field(&mut map, "headers")?.unwrap_or_default(),
            tags: opt_field(&mut map, "tags")?.unwrap_or_default(),
        })
    };
    let submission = Submission {
        request: RequestId(0),
        tenant: t.id,
        tenant_domain: t.domain,
        source: Source::Api,
        idempotency_key,
        content,
    };
    match ctx.gateway.submit(submission) {
        Ok(receipt) => {
            tracing::info!(message = %receipt.id, "message accepted");
            let body = serde_json::to_value(&receipt)
                .map_err(|_| ApiError::unavailable("could not render the receipt"))?;
            Ok(Reply::json(202, body))
        }
        Err(e) => {
            let mut err = ApiError::new(e.kind.http_status(), &e.code, e.message);
            err.field = e.field;
            Err(err)
        }
    }
}

fn parse_message_status(s: &str) -> Option<MessageStatus> {
    serde_json::from_value(Value::String(s.to_string())).ok()
}

pub(super) fn message_summary(m: &MessageRecord) -> Value {
    json!({
        "id": m.id.to_string(),
        "message_id": format!("<{}>", m.message_id_header),
        "status": m.status(),
        "from": m.mail_from,
        "subject": m.subject,
        "tags": m.tags,
        "source": m.source,
        "size": m.size,
        "created_at": m.created_at.rfc3339(),
        "expires_at": m.expires_at.rfc3339(),
        "recipients": m.recipients.iter().map(|r| json!({
            "address": r.address,
            "kind": r.kind,
            "status": r.status,
        })).collect::<Vec<_>>(),
    })
}

fn list_messages(ctx: &Ctx, req: &Request, mut q: Query) -> Res {
    let t = tenant(ctx, req)?;
    let status = q.parse("status", parse_message_status)?;
    let limit = q.limit(50, 100)?;
    let cursor = q.parse("cursor", |s| s.parse::<MessageId>().ok())?;
    q.finish()?;
    let mut page = ctx
        .store
        .read(|c| query::list_messages(c, t.id, status, cursor, limit + 1))?;
    let more = page.len() > limit;
    page.truncate(limit);
    let next = if more {
        page.last().map(|m| json!(m.id.to_string()))
    } else {
        None
    };
    Ok(Reply::json(
        200,
        json!({
            "data": page.iter().map(message_summary).collect::<Vec<_>>(),
            "next_cursor": next.unwrap_or(Value::Null),
        }),
    ))
}

fn get_message(ctx: &Ctx, req: &Request, q: Query, id: &str) -> Res {
    let t = tenant(ctx, req)?;
    q.finish()?;
    let id: MessageId = id.parse().map_err(|_| ApiError::not_found())?;
    let (m, attempts) = ctx
        .store
        .read(|c| query::get_message(c, t.id, id))?
        .ok_or_else(ApiError::not_found)?;
    Ok(Reply::json(200, message_detail(&m, &attempts)))
}

/// A message with its recipients and attempt timeline (`GET /v1/messages/{id}`).
pub(super) fn message_detail(
    m: &MessageRecord,
    attempts: &[outpost_core::model::AttemptRecord],
) -> Value {
    let mut body = message_summary(m);
    body["recipients"] = json!(
        m.recipients
            .iter()
            .map(|r| json!({
                "address": r.address,
                "kind": r.kind,
                "status": r.status,
                "attempts": r.attempts,
                "next_attempt_at": opt_time(r.next_attempt_at),
                "updated_at": r.updated_at.rfc3339(),
                "reason": r.reason,
            }))
            .collect::<Vec<_>>()
    );
    body["attempts"] = json!(
        attempts
            .iter()
            .map(|a| json!({
                "recipient": m.recipients.iter().find(|r| r.idx == a.idx).map(|r| r.address.clone()),
                "attempt": a.attempt,
                "status": a.status,
                "stage": a.stage,
                "smtp_code": a.smtp_code,
                "enhanced_code": a.enhanced_code,
                "category": a.category.as_str(),
                "response": a.response,
                "mx": a.mx,
                "ip": a.ip,
                "tls": a.tls,
                "duration_ms": a.duration_ms,
                "at": a.started_at.rfc3339(),
            }))
            .collect::<Vec<_>>()
    );
    body
}

// ---- events ----

fn list_events(ctx: &Ctx, req: &Request, mut q: Query) -> Res {
    let t = tenant(ctx, req)?;
    let after = q.parse("after", |s| s.parse::<u64>().ok())?.unwrap_or(0);
    let limit = q.limit(100, 1000)?;
    let kind = q.parse("type", EventKind::parse)?;
    q.finish()?;
    let rows = ctx
        .store
        .read(|c| query::list_events(c, t.id, after, kind, limit))?;
    let next = rows.last().map_or(after, |(seq, _)| *seq);
    let data: Vec<Value> = rows
        .into_iter()
        .map(|(_, p)| serde_json::from_str(&p).unwrap_or(Value::String(p)))
        .collect();
    Ok(Reply::json(200, json!({"data": data, "next_after": next})))
}

// ---- suppressions ----

fn list_suppressions(ctx: &Ctx, req: &Request, q: Query) -> Res {
    let t = tenant(ctx, req)?;
    suppressions_page(ctx, &t, q)
}

/// One page of a tenant's suppression list (tenant route and admin route).
pub(super) fn suppressions_page(ctx: &Ctx, t: &Tenant, mut q: Query) -> Res {
    let limit = q.limit(100, 1000)?;
    let cursor = q.take("cursor");
    q.finish()?;
    let mut rows = ctx
        .store
        .read(|c| query::list_suppressions(c, t.id, cursor.as_deref(), limit + 1))?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(|s| json!(s.address))
    } else {
        None
    };
    let data: Vec<Value> = rows
        .iter()
        .map(|s| {
            json!({
                "address": s.address,
                "source": s.source,
                "reason": s.reason,
                "category": s.category.map(|c| c.as_str()),
                "smtp_code": s.smtp_code,
                "enhanced_code": s.enhanced_code,
                "event_id": s.event.map(|e| e.to_string()),
                "created_at": s.created_at.rfc3339(),
            })
        })
        .collect();
    Ok(Reply::json(
        200,
        json!({"data": data, "next_cursor": next.unwrap_or(Value::Null)}),
    ))
}

fn add_suppression(ctx: &Ctx, req: &Request, q: Query) -> Res {
    let t = tenant(ctx, req)?;
    accepting(ctx)?;
    q.finish()?;
    suppress(ctx, req, &t)
}

/// Adds the body's address to a tenant's suppression list (tenant route and admin route).
pub(super) fn suppress(ctx: &Ctx, req: &Request, t: &Tenant) -> Res {
    let mut map = json_body(req)?;
    deny_unknown(&map, &["address", "reason"])?;
    let address: String = req_field(&mut map, "address")?;
    let address = validate::address(&address)
        .ok_or_else(|| ApiError::invalid("address", "address must be an email address"))?;
    let reason: String = opt_field(&mut map, "reason")?.unwrap_or_else(|| "manual".to_string());
    if reason.len() > 1024 {
        return Err(ApiError::invalid(
            "reason",
            "reason is longer than 1024 bytes",
        ));
    }
    ctx.gateway
        .admin(AdminCommand::AddSuppression {
            tenant: t.id,
            address: address.clone(),
            reason: reason.clone(),
        })
        .map_err(admin_error)?;
    Ok(Reply::json(
        201,
        json!({"address": address, "source": "manual", "reason": reason}),
    ))
}

fn remove_suppression(ctx: &Ctx, req: &Request, q: Query, address: &str) -> Res {
    let t = tenant(ctx, req)?;
    accepting(ctx)?;
    q.finish()?;
    unsuppress(ctx, &t, address)
}

/// Removes an address from a tenant's suppression list (tenant route and admin route).
pub(super) fn unsuppress(ctx: &Ctx, t: &Tenant, address: &str) -> Res {
    let address = validate::address(address).ok_or_else(ApiError::not_found)?;
    if !ctx
        .store
        .read(|c| query::suppression_exists(c, t.id, &address))?
    {
        return Err(ApiError::not_found());
    }
    ctx.gateway
        .admin(AdminCommand::RemoveSuppression {
            tenant: t.id,
            address,
        })
        .map_err(admin_error)?;
    Ok(Reply::no_content())
}

// ---- webhooks ----

fn endpoint_json(ep: &EndpointRecord) -> Value {
    json!({
        "id": ep.id.to_string(),
        "url": ep.url,
        "events": ep.events.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        "created_at": ep.created_at.rfc3339(),
    })
}

fn whsec(key: &[u8]) -> String {
    format!("whsec_{}", STANDARD.encode(key))
}

/// The caller's endpoint, or 404 (also for another tenant's).
fn own_endpoint(ctx: &Ctx, t: &Tenant, id: &str) -> Result<EndpointId, ApiError> {
    let id: EndpointId = id.parse().map_err(|_| ApiError::not_found())?;
    if ctx.store.read(|c| query::endpoint_exists(c, t.id, id))? {
        Ok(id)
    } else {
        Err(ApiError::not_found())
    }
}

fn list_webhooks(ctx: &Ctx, req: &Request, q: Query) -> Res {
    let t = tenant(ctx, req)?;
    q.finish()?;
    let eps = ctx.store.read(|c| query::list_endpoints(c, t.id))?;
    Ok(Reply::json(
        200,
        json!({"data": eps.iter().map(endpoint_json).collect::<Vec<_>>()}),
    ))
}

fn create_webhook(ctx: &Ctx, req: &Request, q: Query) -> Res {
    let t = tenant(ctx, req)?;
    accepting(ctx)?;
    q.finish()?;
    let mut map = json_body(req)?;
    deny_unknown(&map, &["url", "events"])?;
    let url: String = req_field(&mut map, "url")?;
    match validate::webhook_url(&url, ctx.settings.allow_private_webhooks) {
        Ok(()) => {}
        Err(validate::UrlError::Malformed(why)) => {
            return Err(ApiError::invalid("url", format!("url: {why}")));
        }
        Err(validate::UrlError::Private) => {
            return Err(ApiError::new(
                422,
                "private_webhook_target",
                "webhook URLs may not target loopback or private addresses",
            )
            .field("url"));
        }
    }
    let names: Vec<String> = opt_field(&mut map, "events")?.unwrap_or_default();
    let events: BTreeSet<EventKind> = names
        .iter()
        .map(|n| {
            EventKind::parse(n)
                .ok_or_else(|| ApiError::invalid("events", format!("unknown event type {n:?}")))
        })
        .collect::<Result<_, _>>()?;
    let secret = random_bytes(32)?;
    let reply = ctx
        .gateway
        .admin(AdminCommand::CreateEndpoint {
            tenant: t.id,
            url,
            events: events.into_iter().collect(),
            secret: secret.clone(),
        })
        .map_err(admin_error)?;
    let AdminReply::Endpoint(ep) = reply else {
        tracing::error!("engine answered CreateEndpoint without the endpoint");
        return Err(ApiError::unavailable("unexpected engine answer"));
    };
    tracing::info!(endpoint = %ep.id, "webhook endpoint created");
    let mut body = endpoint_json(&ep);
    body["secret"] = json!(whsec(&secret));
    Ok(Reply::json(201, body))
}

fn delete_webhook(ctx: &Ctx, req: &Request, q: Query, id: &str) -> Res {
    let t = tenant(ctx, req)?;
    accepting(ctx)?;
    q.finish()?;
    let id = own_endpoint(ctx, &t, id)?;
    ctx.gateway
        .admin(AdminCommand::DeleteEndpoint {
            tenant: t.id,
            endpoint: id,
        })
        .map_err(admin_error)?;
    Ok(Reply::no_content())
}

fn list_deliveries(ctx: &Ctx, req: &Request, mut q: Query, id: &str) -> Res {
    let t = tenant(ctx, req)?;
    let limit = q.limit(50, 100)?;
    let cursor = q.parse("cursor", |s| s.parse::<u64>().ok())?;
    q.finish()?;
    let id = own_endpoint(ctx, &t, id)?;
    let mut logs = ctx
        .store
        .read(|c| query::list_deliveries(c, t.id, id, cursor, limit + 1))?;
    let more = logs.len() > limit;
    logs.truncate(limit);
    let next = if more {
        logs.last().map(|l| json!(l.delivery.event_seq.to_string()))
    } else {
        None
    };
    let data: Vec<Value> = logs
        .iter()
        .map(|l| {
            let d = &l.delivery;
            json!({
                "event_id": d.event.to_string(),
                "event_seq": d.event_seq,
                "type": l.kind.map(|k| k.as_str()),
                "state": d.state,
                "attempts": d.attempts,
                "next_attempt_at": opt_time(d.next_attempt_at),
                "updated_at": d.updated_at.rfc3339(),
                "attempt_log": l.attempts.iter().map(|a| json!({
                    "attempt": a.attempt,
                    "at": a.at.rfc3339(),
                    "duration_ms": a.duration_ms,
                    "status_code": a.status_code,
                    "error": a.error,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Reply::json(
        200,
        json!({"data": data, "next_cursor": next.unwrap_or(Value::Null)}),
    ))
}

fn rotate_secret(ctx: &Ctx, req: &Request, q: Query, id: &str) -> Res {
    let t = tenant(ctx, req)?;
    accepting(ctx)?;
    q.finish()?;
    let id = own_endpoint(ctx, &t, id)?;
    let secret = random_bytes(32)?;
    ctx.gateway
        .admin(AdminCommand::RotateSecret {
            tenant: t.id,
            endpoint: id,
            secret: secret.clone(),
        })
        .map_err(admin_error)?;
    tracing::info!(endpoint = %id, "webhook secret rotated");
    Ok(Reply::json(
        200,
        json!({"id": id.to_string(), "secret": whsec(&secret)}),
    ))
}

fn retry_delivery(ctx: &Ctx, req: &Request, q: Query, id: &str, event: &str) -> Res {
    let t = tenant(ctx, req)?;
    accepting(ctx)?;
    q.finish()?;
    let id = own_endpoint(ctx, &t, id)?;
    let event: EventId = event.parse().map_err(|_| ApiError::not_found())?;
    match ctx.gateway.admin(AdminCommand::RetryWebhookDelivery {
        tenant: t.id,
        endpoint: id,
        event,
    }) {
        Ok(_) => {}
        // The engine forgets finished deliveries at a restart (and beyond a bounded
        // cache); a failed delivery must stay replayable, so hand it the stored event.
        Err(AdminError::NotFound) => {
            let (record, attempts) = ctx
                .store
                .read(|c| query::delivery_for_replay(c, t.id, id, event))?
                .ok_or_else(ApiError::not_found)?;
            ctx.gateway
                .admin(AdminCommand::ReplayWebhookDelivery {
                    tenant: t.id,
                    endpoint: id,
                    event: Box::new(record),
                    attempts,
                })
                .map_err(admin_error)?;
        }
        Err(e) => return Err(admin_error(e)),
    }
    Ok(Reply::json(
        202,
        json!({"endpoint_id": id.to_string(), "event_id": event.to_string(), "state": "pending"}),
    ))
}

// ---- admin ----

fn admin_queue(ctx: &Ctx, req: &Request, q: Query) -> Res {
    admin(ctx, req)?;
    q.finish()?;
    Ok(Reply::json(200, json!({"data": ctx.gateway.queue()})))
}

fn admin_breakers(ctx: &Ctx, req: &Request, q: Query) -> Res {
    admin(ctx, req)?;
    q.finish()?;
    Ok(Reply::json(200, json!({"data": ctx.gateway.breakers()})))
}

fn force_breaker(ctx: &Ctx, req: &Request, q: Query, domain: &str) -> Res {
    admin(ctx, req)?;
    accepting(ctx)?;
    q.finish()?;
    let domain = validate::domain(domain)
        .ok_or_else(|| ApiError::invalid("domain", "domain must be a valid DNS name"))?;
    let mut map = json_body(req)?;
    deny_unknown(&map, &["state"])?;
    let state: ForcedBreakerState = req_field(&mut map, "state")?;
    ctx.gateway
        .admin(AdminCommand::ForceBreaker {
            domain: domain.clone(),
            state,
        })
        .map_err(admin_error)?;
    Ok(Reply::json(200, json!({"domain": domain, "state": state})))
}
