//! `/v1/domains/{domain}`: DKIM keys and the DNS records to publish (logic in
//! `crate::dkim`). The admin key manages any tenant's domain, a tenant key its own.
//! Private keys are never in a response or a log line.

use std::time::SystemTime;

use serde_json::{Map, Value, json};

use super::http::{ApiError, Query, deny_unknown, opt_field, parse_object};
use super::routes::accepting;
use super::server::Request;
use super::{Caller, Ctx, Reply, authenticate, validate};
use crate::dkim::Domains;
use crate::dkim::keys::{Alg, KeyError};
use crate::store::query;

type Res = Result<Reply, ApiError>;

/// The domain (normalized) if the caller may manage it and it is a known tenant's.
fn authorize<'a>(
    ctx: &'a Ctx,
    req: &Request,
    domain: &str,
) -> Result<(String, &'a Domains), ApiError> {
    let caller = authenticate(ctx, req)?;
    let domains = ctx
        .settings
        .domains
        .as_deref()
        .ok_or_else(ApiError::not_found)?;
    let domain = validate::domain(domain).ok_or_else(ApiError::not_found)?;
    match caller {
        Caller::Admin => {}
        Caller::Tenant(t) => {
            // (Rate limits count messages; managing keys is not sending.)
            if t.domain != domain {
                // Another tenant's domain: indistinguishable from an unknown one.
                return Err(ApiError::not_found());
            }
        }
    }
    if ctx
        .store
        .read(|c| query::tenant_by_domain(c, &domain))?
        .is_none()
    {
        return Err(ApiError::not_found());
    }
    Ok((domain, domains))
}

fn key_error(e: KeyError) -> ApiError {
    match e {
        KeyError::Invalid(m) => ApiError::new(422, "invalid_key", m),
        KeyError::Conflict(m) => ApiError::new(409, "conflict", m),
        KeyError::NotFound => ApiError::not_found(),
        KeyError::Io(m) => {
            tracing::error!(error = %m, "DKIM key storage failed");
            ApiError::unavailable("key storage unavailable")
        }
    }
}

pub(crate) fn get(ctx: &Ctx, req: &Request, q: Query, domain: &str) -> Res {
    let (domain, domains) = authorize(ctx, req, domain)?;
    q.finish()?;
    Ok(Reply::json(200, domains.report(&domain)))
}

/// `{"selector"?, "algorithms"?}` generates keys; `{"selector"?, "private_key": PEM}` imports.
pub(crate) fn create_dkim(ctx: &Ctx, req: &Request, q: Query, domain: &str) -> Res {
    let (domain, domains) = authorize(ctx, req, domain)?;
    accepting(ctx)?;
    q.finish()?;
    let mut map = if req.body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        parse_object(&req.body)?
    };
    deny_unknown(&map, &["selector", "algorithms", "private_key"])?;
    let selector: Option<String> = opt_field(&mut map, "selector")?;
    let algorithms: Option<Vec<String>> = opt_field(&mut map, "algorithms")?;
    let pem: Option<String> = opt_field(&mut map, "private_key")?;
    let base = domains.default_base(&domain, SystemTime::now());
    let created = match pem {
        Some(pem) => {
            if algorithms.is_some() {
                return Err(ApiError::invalid(
                    "algorithms",
                    "algorithms applies to generated keys; an imported key has its own",
                ));
            }
            vec![
                domains
                    .keys
                    .import(&domain, selector.as_deref(), &base, &pem)
                    .map_err(key_error)?,
            ]
        }
        None => {
            let algs = match algorithms {
                None => domains.settings.for_domain(&domain).algorithms.clone(),
                Some(names) => names
                    .iter()
                    .map(|n| {
                        Alg::parse(n).ok_or_else(|| {
                            ApiError::invalid(
                                "algorithms",
                                format!("unknown algorithm {n:?} (rsa-sha256, ed25519-sha256)"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            };
            if algs.is_empty() {
                return Err(ApiError::invalid(
                    "algorithms",
                    "name at least one algorithm",
                ));
            }
            let base = selector.unwrap_or(base);
            domains
                .keys
                .generate(&domain, &base, &algs)
                .map_err(key_error)?
        }
    };
    for k in &created {
        tracing::info!(domain = %domain, selector = %k.selector, algorithm = k.alg.name(), "DKIM key added");
    }
    Ok(Reply::json(
        201,
        json!({
            "domain": domain,
            "created": created.iter().map(|k| domains.key_json(&domain, k)).collect::<Vec<Value>>(),
        }),
    ))
}

pub(crate) fn retire_dkim(ctx: &Ctx, req: &Request, q: Query, domain: &str, selector: &str) -> Res {
    let (domain, domains) = authorize(ctx, req, domain)?;
    accepting(ctx)?;
    q.finish()?;
    let retired = domains.keys.retire(&domain, selector).map_err(key_error)?;
    for s in &retired {
        tracing::info!(domain = %domain, selector = %s, "DKIM selector retired");
    }
    Ok(Reply::json(
        200,
        json!({"domain": domain, "retired": retired}),
    ))
}
