//! Admin routes for operators (`outpost` CLI): one message across tenants, retry now,
//! cancel, and a tenant's suppression list by domain. Kept apart from `routes.rs` so the
//! tenant API stays as DESIGN.md lists it.

use outpost_core::MessageId;
use outpost_core::io::{AdminCommand, AdminReply};
use serde_json::json;

use super::http::{ApiError, Query};
use super::routes::{
    DELETE, GET, GET_POST, POST, accepting, admin, admin_error, message_detail, suppress,
    suppressions_page, unsuppress,
};
use super::server::Request;
use super::{Ctx, Reply, validate};
use crate::store::query::{self, Tenant};

type Res = Result<Reply, ApiError>;

/// The methods these paths answer (the `Allow` header of a 405); `None`: not one of them.
pub(super) fn allowed_methods(s: &[&str]) -> Option<&'static str> {
    Some(match s {
        ["v1", "admin", "messages", _] => GET,
        ["v1", "admin", "messages", _, "retry"] | ["v1", "admin", "messages", _, "cancel"] => POST,
        ["v1", "admin", "suppressions"] => GET_POST,
        ["v1", "admin", "suppressions", _] => DELETE,
        _ => return None,
    })
}

fn message_id(id: &str) -> Result<MessageId, ApiError> {
    id.parse().map_err(|_| ApiError::not_found())
}

pub(super) fn get_message(ctx: &Ctx, req: &Request, q: Query, id: &str) -> Res {
    admin(ctx, req)?;
    q.finish()?;
    let id = message_id(id)?;
    let (m, attempts) = ctx
        .store
        .read(|c| query::get_message_scoped(c, None, id))?
        .ok_or_else(ApiError::not_found)?;
    let mut body = message_detail(&m, &attempts);
    body["tenant_id"] = json!(m.tenant.0);
    Ok(Reply::json(200, body))
}

/// Runs a per-message admin command across tenants; answers how many recipients changed.
fn message_command(
    ctx: &Ctx,
    req: &Request,
    q: Query,
    id: &str,
    make: fn(MessageId) -> AdminCommand,
) -> Res {
    admin(ctx, req)?;
    accepting(ctx)?;
    q.finish()?;
    let id = message_id(id)?;
    let changed = match ctx.gateway.admin(make(id)).map_err(admin_error)? {
        AdminReply::Recipients(n) => n,
        _ => 0,
    };
    tracing::info!(message_id = %id, recipients = changed, "admin message command");
    Ok(Reply::json(
        200,
        json!({"id": id.to_string(), "recipients_changed": changed}),
    ))
}

pub(super) fn retry(ctx: &Ctx, req: &Request, q: Query, id: &str) -> Res {
    message_command(ctx, req, q, id, |message| AdminCommand::RetryNow {
        tenant: None,
        message,
    })
}

pub(super) fn cancel(ctx: &Ctx, req: &Request, q: Query, id: &str) -> Res {
    message_command(ctx, req, q, id, |message| AdminCommand::Cancel {
        tenant: None,
        message,
    })
}

/// The tenant named by `?domain=` (404 when there is none).
fn tenant_param(ctx: &Ctx, q: &mut Query) -> Result<Tenant, ApiError> {
    let domain = q.take("domain").ok_or_else(|| {
        ApiError::new(422, "missing_field", "domain is required (?domain=)").field("domain")
    })?;
    let domain = validate::domain(&domain)
        .ok_or_else(|| ApiError::invalid("domain", "domain must be a valid DNS name"))?;
    ctx.store
        .read(|c| query::tenant_by_domain(c, &domain))?
        .ok_or_else(ApiError::not_found)
}

pub(super) fn list_suppressions(ctx: &Ctx, req: &Request, mut q: Query) -> Res {
    admin(ctx, req)?;
    let t = tenant_param(ctx, &mut q)?;
    suppressions_page(ctx, &t, q)
}

pub(super) fn add_suppression(ctx: &Ctx, req: &Request, mut q: Query) -> Res {
    admin(ctx, req)?;
    accepting(ctx)?;
    let t = tenant_param(ctx, &mut q)?;
    q.finish()?;
    suppress(ctx, req, &t)
}

pub(super) fn remove_suppression(ctx: &Ctx, req: &Request, mut q: Query, a: &str) -> Res {
    admin(ctx, req)?;
    accepting(ctx)?;
    let t = tenant_param(ctx, &mut q)?;
    q.finish()?;
    unsuppress(ctx, &t, a)
}
