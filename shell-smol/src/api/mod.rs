//! The HTTP API (DESIGN.md "HTTP API") over our own small HTTP/1.1 server ([`server`]:
//! a thread per connection, blocking I/O, a cap on connections).
//!
//! Writes that change engine state go through [`EngineGateway`]; reads come straight from
//! SQLite through the [`Store`]'s read pool. Every tenant request is scoped to the caller's
//! tenant (another tenant's ids answer 404). Logs name routes and message ids, never
//! addresses or bodies.

mod domains;
pub mod gateway;
mod http;
mod ops_routes;
mod routes;
pub mod server;
mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_core::TenantId;
use sha2::{Digest, Sha256};

pub use gateway::EngineGateway;

use crate::store::Store;
use crate::store::query::Tenant;
use http::ApiError;
use server::Request;

/// Takes one message from the tenant's (id, domain) allowance: `Err(seconds)` when over
/// the limit (HTTP 429 with `Retry-After: seconds`).
pub type RateLimiter = Arc<dyn Fn(TenantId, &str) -> Result<(), u64> + Send + Sync>;

/// Renders the Prometheus text exposition for `GET /metrics`.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// API settings.
#[derive(Clone)]
pub struct ApiSettings {
    /// Largest request body accepted (HTTP 413 above). Default 10 MiB.
    pub max_body_bytes: usize,
    /// Accept loopback/private webhook URLs (tests).
    pub allow_private_webhooks: bool,
    /// HTTP connections served at once (each on its own thread); past it a new
    /// connection is answered 503 and closed. Default 512. A submission holds its
    /// connection's thread until the store has committed it, so this also bounds how many
    /// submissions can share one group commit.
    pub max_connections: usize,
    /// Rate limiting hook (none by default).
    pub rate_limiter: Option<RateLimiter>,
    /// `GET /metrics` (unauthenticated, like /healthz); 404 when `None`.
    pub metrics: Option<MetricsRenderer>,
    /// DKIM keys and DNS records (`/v1/domains`); 404 when `None`.
    pub domains: Option<Arc<crate::dkim::Domains>>,
    /// How long a request's head may take (and a new connection's first byte). Default
    /// 10 s; past it 408 (or, before any byte, a quiet close).
    pub header_timeout: Duration,
    /// How long a request's body may take after its head. Default 60 s; past it 408.
    pub body_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request. Default 60 s;
    /// past it the connection is closed.
    pub idle_timeout: Duration,
}

impl Default for ApiSettings {
    fn default() -> ApiSettings {
        ApiSettings {
            max_body_bytes: 10 * 1024 * 1024,
            allow_private_webhooks: false,
            max_connections: 512,
            rate_limiter: None,
            metrics: None,
            domains: None,
            header_timeout: server::DEFAULT_HEADER_TIMEOUT,
            body_timeout: server::DEFAULT_BODY_TIMEOUT,
            idle_timeout: server::DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSettings")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("allow_private_webhooks", &self.allow_private_webhooks)
            .field("max_connections", &self.max_connections)
            .field("rate_limiter", &self.rate_limiter.is_some())
            .field("metrics", &self.metrics.is_some())
            .field("domains", &self.domains.is_some())
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiServeError {
    #[error(transparent)]
    Start(#[from] server::StartError),
}

/// SHA-256 of a key, as the store keeps it (and as `serve` takes the admin key).
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A running API server.
pub struct ApiHandle {
    server: server::Server,
}

impl std::fmt::Debug for ApiHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiHandle")
            .field("addr", &self.server.local_addr())
            .finish_non_exhaustive()
    }
}

impl ApiHandle {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops accepting, closes idle keep-alive connections, lets in-flight requests
    /// finish (up to the server's drain timeout).
    pub fn stop(self) {
        self.server.stop();
    }
}

pub(crate) struct Ctx {
    pub store: Store,
    pub gateway: Arc<dyn EngineGateway>,
    pub admin_key_hash: Option<[u8; 32]>,
    pub settings: ApiSettings,
}

/// Who is calling.
pub(crate) enum Caller {
    Admin,
    Tenant(Tenant),
}

/// Starts the API on `addr`. `admin_key_hash` is [`hash_key`] of `OUTPOST_ADMIN_KEY`
/// (`None`: no admin key, the admin routes answer 401).
pub fn serve(
    addr: &str,
    store: Store,
    gateway: Arc<dyn EngineGateway>,
    admin_key_hash: Option<[u8; 32]>,
    settings: ApiSettings,
) -> Result<ApiHandle, ApiServeError> {
    let config = server::Config {
        max_connections: settings.max_connections.max(1),
        max_body: settings.max_body_bytes,
        header_timeout: settings.header_timeout,
        body_timeout: settings.body_timeout,
        idle_timeout: settings.idle_timeout,
        ..server::Config::default()
    };
    let ctx = Arc::new(Ctx {
        store,
        gateway,
        admin_key_hash,
        settings,
    });
    let handler: server::Handler = Arc::new(move |req: &Request| handle(&ctx, req));
    let server = server::Server::start(addr, config, handler)?;
    tracing::info!(addr = %server.local_addr(), "HTTP API listening");
    Ok(ApiHandle { server })
}

pub(crate) enum Body {
    Json(serde_json::Value),
    /// Plain text (Prometheus exposition).
    Text(String),
    None,
}

/// A successful answer.
pub(crate) struct Reply {
    pub status: u16,
    pub body: Body,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            body: Body::Json(body),
        }
    }
    pub fn no_content() -> Reply {
        Reply {
            status: 204,
            body: Body::None,
        }
    }
}

fn handle(ctx: &Ctx, req: &Request) -> server::Response {
    let started = Instant::now();
    let (route, result) = routes::dispatch(ctx, req);
    let (status, body, retry_after, allow) = match result {
        Ok(r) => (r.status, r.body, None, None),
        Err(e) => (e.status, Body::Json(e.body()), e.retry_after, e.allow),
    };
    let (bytes, content_type) = match body {
        Body::Json(b) => {
            let mut bytes = serde_json::to_vec(&b).unwrap_or_default();
            bytes.push(b'\n');
            (bytes, "application/json")
        }
        Body::Text(t) => (t.into_bytes(), "text/plain; version=0.0.4; charset=utf-8"),
        Body::None => (Vec::new(), "application/json"),
    };
    let mut response = server::Response::new(status, content_type, bytes);
    if let Some(secs) = retry_after {
        response = response.header("Retry-After", secs.to_string());
    }
    if let Some(methods) = allow {
        response = response.header("Allow", methods);
    }
    tracing::debug!(
        route,
        status,
        ms = started.elapsed().as_millis() as u64,
        "HTTP request"
    );
    response
}

/// Authenticates the `Authorization: Bearer` key.
pub(crate) fn authenticate(ctx: &Ctx, req: &Request) -> Result<Caller, ApiError> {
    let value = req
        .header("Authorization")
        .ok_or_else(|| ApiError::unauthorized("missing API key (Authorization: Bearer)"))?;
    let key = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, k)| k.trim())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::unauthorized("malformed Authorization header"))?;
    let hash = hash_key(key);
    if let Some(admin) = &ctx.admin_key_hash {
        // Constant-time comparison of the digests.
        let diff = admin
            .iter()
            .zip(hash.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            return Ok(Caller::Admin);
        }
    }
    let hex = hex(&hash);
    match ctx
        .store
        .read(|c| crate::store::query::tenant_by_key_hash(c, &hex))?
    {
        Some(t) => Ok(Caller::Tenant(t)),
        None => Err(ApiError::unauthorized("unknown API key")),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests;
