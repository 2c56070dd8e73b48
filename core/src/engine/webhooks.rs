//! Glue between the engine and the webhook dispatcher (`crate::webhook`): events are
//! handed over only once persisted; POST results and endpoint changes are persisted.

use crate::ids::{EndpointId, PostId, RequestId};
use crate::io::{AdminCommand, AdminError, AdminReply, Output};
use crate::model::{EventRecord, StoreOp, WebhookDeliveryRecord};
use crate::time::Time;
use crate::webhook::{DispatcherSettings, WebhookDispatcher};

use super::Engine;
use super::persist::AckAction;

/// An event with the webhook delivery rows persisted in its batch.
pub(crate) type PersistedEvent = (EventRecord, Vec<WebhookDeliveryRecord>);

pub(crate) fn dispatcher(config: &crate::config::Config) -> WebhookDispatcher {
    WebhookDispatcher::new(
        config.webhooks.clone(),
        DispatcherSettings {
            allow_private: config.allow_private_webhooks,
            ..DispatcherSettings::default()
        },
    )
}

impl Engine {
    /// Events of a durable batch may now be posted.
    pub(crate) fn events_persisted(&mut self, events: Vec<PersistedEvent>) {
        for (event, rows) in events {
            if !rows.is_empty() {
                self.webhooks.enqueue(event, &rows);
            }
        }
    }

    /// Emits every POST that is due and within its endpoint's in-flight bound.
    pub(crate) fn pump_webhooks(&mut self, now: Time) {
        let mut next = self.next_post;
        let mut mint = || {
            let id = PostId(next);
            next += 1;
            id
        };
        while let Some(post) = self.webhooks.poll_post(now, &mut mint) {
            self.outputs.push_back(post.into_output());
        }
        self.next_post = next;
    }

    pub(crate) fn on_webhook_result(
        &mut self,
        now: Time,
        post: PostId,
        result: Result<u16, String>,
        duration_ms: u64,
    ) {
        let ops = self.webhooks.on_result(now, post, result, duration_ms);
        if !ops.is_empty() {
            self.persist(ops, Vec::new());
        }
    }

    /// Endpoint changes take effect in memory only once durable (a failed write leaves
    /// nothing behind that the store does not have); a delivery retry is re-queued at once
    /// (a failed write of it only loses the record of the request).
    pub(crate) fn webhook_admin(&mut self, now: Time, request: RequestId, cmd: AdminCommand) {
        let planned: Result<(Vec<StoreOp>, AdminReply, Option<EndpointChange>), AdminError> =
            match cmd {
                AdminCommand::CreateEndpoint {
                    tenant,
                    url,
                    events,
                    secret,
                } => {
                    let id = EndpointId(self.mint_id(now));
                    self.webhooks
                        .new_endpoint(id, tenant, &url, &events, secret, now)
                        .map(|r| {
                            (
                                vec![StoreOp::UpsertEndpoint(r.clone())],
                                AdminReply::Endpoint(r.clone()),
                                Some(EndpointChange::Install(r)),
                            )
                        })
                }
                AdminCommand::RotateSecret {
                    tenant,
                    endpoint,
                    secret,
                } => self
                    .webhooks
                    .rotated_endpoint(tenant, endpoint, secret, now)
                    .map(|r| {
                        (
                            vec![StoreOp::UpsertEndpoint(r.clone())],
                            AdminReply::Endpoint(r.clone()),
                            Some(EndpointChange::Install(r)),
                        )
                    }),
                AdminCommand::DeleteEndpoint { tenant, endpoint } => {
                    match self.webhooks.endpoint(tenant, endpoint) {
                        Some(_) => Ok((
                            vec![StoreOp::DeleteEndpoint { tenant, endpoint }],
                            AdminReply::Done,
                            Some(EndpointChange::Delete { tenant, endpoint }),
                        )),
                        None => Err(AdminError::NotFound),
                    }
                }
                AdminCommand::RetryWebhookDelivery {
                    tenant,
                    endpoint,
                    event,
                } => self
                    .webhooks
                    .retry_delivery(tenant, endpoint, event, now)
                    .map(|o| (o.ops, o.reply, None)),
                AdminCommand::ReplayWebhookDelivery {
                    tenant,
                    endpoint,
                    event,
                    attempts,
                } => self
                    .webhooks
                    .retry_delivery_with(
                        tenant,
                        endpoint,
                        std::sync::Arc::new(*event),
                        attempts,
                        now,
                    )
                    .map(|o| (o.ops, o.reply, None)),
                _ => return,
            };
        match planned {
            Ok((ops, reply, change)) => {
                let mut acks = Vec::new();
                if let Some(change) = change {
                    acks.push(AckAction::Endpoint(change));
                }
                acks.push(AckAction::Admin { request, reply });
                self.persist(ops, acks);
            }
            Err(e) => self.emit(Output::AdminAnswer {
                request,
                result: Err(e),
            }),
        }
    }

    pub(crate) fn apply_endpoint_change(&mut self, change: EndpointChange) {
        match change {
            EndpointChange::Install(record) => self.webhooks.install_endpoint(record),
            EndpointChange::Delete { tenant, endpoint } => {
                let _ = self.webhooks.delete_endpoint(tenant, endpoint);
            }
        }
    }
}

/// An endpoint change to apply once its store write is durable.
#[derive(Clone, Debug)]
pub(crate) enum EndpointChange {
    Install(crate::model::EndpointRecord),
    Delete {
        tenant: crate::ids::TenantId,
        endpoint: EndpointId,
    },
}
