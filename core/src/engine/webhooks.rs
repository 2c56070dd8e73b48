//! Glue between the engine and the webhook dispatcher (`crate::webhook`): events are
//! handed over only once persisted; POST results and endpoint changes are persisted.

use crate::ids::{EndpointId, PostId, RequestId};
use crate::io::{AdminCommand, Output};
use crate::model::{EventRecord, WebhookDeliveryRecord};
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

    pub(crate) fn webhook_admin(&mut self, now: Time, request: RequestId, cmd: AdminCommand) {
        let outcome = match cmd {
            AdminCommand::CreateEndpoint {
                tenant,
                url,
                events,
                secret,
            } => {
                let id = EndpointId(self.mint_id(now));
                self.webhooks
                    .create_endpoint(id, tenant, &url, &events, secret, now)
            }
            AdminCommand::DeleteEndpoint { tenant, endpoint } => {
                self.webhooks.delete_endpoint(tenant, endpoint)
            }
            AdminCommand::RotateSecret {
                tenant,
                endpoint,
                secret,
            } => self.webhooks.rotate_secret(tenant, endpoint, secret, now),
            AdminCommand::RetryWebhookDelivery {
                tenant,
                endpoint,
                event,
            } => self.webhooks.retry_delivery(tenant, endpoint, event, now),
            AdminCommand::ReplayWebhookDelivery {
                tenant,
                endpoint,
                event,
                attempts,
            } => self.webhooks.retry_delivery_with(
                tenant,
                endpoint,
                std::sync::Arc::new(*event),
                attempts,
                now,
            ),
            _ => return,
        };
        match outcome {
            Ok(o) => {
                self.persist(
                    o.ops,
                    vec![AckAction::Admin {
                        request,
                        reply: o.reply,
                    }],
                );
            }
            Err(e) => self.emit(Output::AdminAnswer {
                request,
                result: Err(e),
            }),
        }
    }
}
