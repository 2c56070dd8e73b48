//! Operator and API commands that change state.

use crate::classify::Category;
use crate::ids::{MessageId, RequestId, TenantId};
use crate::intake::parse_address;
use crate::io::{AdminCommand, AdminError, AdminReply, ForcedBreakerState, Output};
use crate::model::{StoreOp, SuppressionRecord, SuppressionSource};
use crate::time::Time;

use super::Engine;
use super::persist::AckAction;

impl Engine {
    pub(crate) fn admin(&mut self, now: Time, request: RequestId, command: AdminCommand) {
        let result = match command {
            AdminCommand::ForceBreaker { domain, state } => {
                let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
                if domain.is_empty() {
                    Err(AdminError::Invalid("domain is empty".into()))
                } else {
                    self.dest_mut(&domain)
                        .breaker
                        .force(state == ForcedBreakerState::Open, now);
                    self.dirty.insert(domain);
                    Ok(Some(AdminReply::Done))
                }
            }
            AdminCommand::RetryNow { tenant, message } => self.retry_now(now, tenant, message),
            AdminCommand::Cancel { tenant, message } => self.cancel(now, request, tenant, message),
            AdminCommand::AddSuppression {
                tenant,
                address,
                reason,
            } => {
                return self.change_suppression(now, request, tenant, &address, Some(reason));
            }
            AdminCommand::RemoveSuppression { tenant, address } => {
                return self.change_suppression(now, request, tenant, &address, None);
            }
            cmd @ (AdminCommand::CreateEndpoint { .. }
            | AdminCommand::DeleteEndpoint { .. }
            | AdminCommand::RotateSecret { .. }
            | AdminCommand::RetryWebhookDelivery { .. }
            | AdminCommand::ReplayWebhookDelivery { .. }) => {
                return self.webhook_admin(now, request, cmd);
            }
        };
        match result {
            Ok(None) => {} // answered when its batch is durable
            Ok(Some(reply)) => self.emit(Output::AdminAnswer {
                request,
                result: Ok(reply),
            }),
            Err(e) => self.emit(Output::AdminAnswer {
                request,
                result: Err(e),
            }),
        }
    }

    fn owned_message(
        &self,
        tenant: Option<TenantId>,
        message: MessageId,
    ) -> Result<(), AdminError> {
        match self.messages.get(&message) {
            Some(m) if m.committed && tenant.is_none_or(|t| t == m.tenant) => Ok(()),
            _ => Err(AdminError::NotFound),
        }
    }

    fn retry_now(
        &mut self,
        now: Time,
        tenant: Option<TenantId>,
        message: MessageId,
    ) -> Result<Option<AdminReply>, AdminError> {
        self.owned_message(tenant, message)?;
        let idxs = self.waiting_recipients(message);
        for &idx in &idxs {
            self.schedule_due(message, idx, now);
        }
        Ok(Some(AdminReply::Recipients(idxs.len())))
    }

    fn cancel(
        &mut self,
        now: Time,
        request: RequestId,
        tenant: Option<TenantId>,
        message: MessageId,
    ) -> Result<Option<AdminReply>, AdminError> {
        self.owned_message(tenant, message)?;
        let (ops, events, n) = self.fail_waiting(
            now,
            message,
            Category::Cancelled,
            "cancelled",
            "cancelled by an operator",
        );
        if n == 0 {
            return Ok(Some(AdminReply::Recipients(0)));
        }
        let done = self
            .messages
            .get(&message)
            .is_some_and(|m| m.all_terminal());
        let mut acks = vec![
            AckAction::Events(events),
            AckAction::Admin {
                request,
                reply: AdminReply::Recipients(n),
            },
        ];
        if done {
            self.forget_message(message);
            acks.push(AckAction::DeleteSpool(message));
        }
        self.persist(ops, acks);
        Ok(None)
    }

    fn change_suppression(
        &mut self,
        now: Time,
        request: RequestId,
        tenant: TenantId,
        address: &str,
        reason: Option<String>,
    ) {
        let key = match parse_address(address.trim()) {
            Ok(a) => a.suppression_key(),
            Err(e) => {
                return self.emit(Output::AdminAnswer {
                    request,
                    result: Err(AdminError::Invalid(format!("address: {e}"))),
                });
            }
        };
        let add = reason.is_some();
        let op = match reason {
            Some(reason) => StoreOp::AddSuppression(SuppressionRecord {
                tenant,
                address: key.clone(),
                source: SuppressionSource::Manual,
                reason: crate::sanitize::cut(&reason, 512),
                category: None,
                smtp_code: None,
                enhanced_code: None,
                event: None,
                created_at: now,
            }),
            None => {
                if !self.suppressions.contains(&(tenant, key.clone())) {
                    return self.emit(Output::AdminAnswer {
                        request,
                        result: Err(AdminError::NotFound),
                    });
                }
                StoreOp::RemoveSuppression {
                    tenant,
                    address: key.clone(),
                }
            }
        };
        self.persist(
            vec![op],
            vec![
                AckAction::Suppress {
                    tenant,
                    address: key,
                    add,
                },
                AckAction::Admin {
                    request,
                    reply: AdminReply::Done,
                },
            ],
        );
    }
}
