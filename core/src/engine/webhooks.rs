//! Glue between the engine and the webhook dispatcher (PLACEHOLDER until the dispatcher
//! lands: no endpoints, nothing posted).

use crate::config::Config;
use crate::ids::{PostId, RequestId};
use crate::io::{AdminCommand, AdminError, Output};
use crate::model::{EndpointRecord, EventRecord, PendingDelivery, WebhookDeliveryRecord};
use crate::time::Time;

use super::Engine;

pub(crate) struct Webhooks {}

impl Webhooks {
    pub fn new(_config: &Config) -> Webhooks {
        Webhooks {}
    }
    pub fn next_due(&self) -> Option<Time> {
        None
    }
    pub fn deliveries_for(&self, _event: &EventRecord, _now: Time) -> Vec<WebhookDeliveryRecord> {
        Vec::new()
    }
    pub fn events_persisted(&mut self, _now: Time, _events: Vec<EventRecord>) {}
    pub fn restore(
        &mut self,
        _now: Time,
        _endpoints: Vec<EndpointRecord>,
        _pending: Vec<PendingDelivery>,
    ) {
    }
}

impl Engine {
    pub(crate) fn pump_webhooks(&mut self, _now: Time) {}

    pub(crate) fn on_webhook_result(
        &mut self,
        _now: Time,
        _post: PostId,
        _result: Result<u16, String>,
        _duration_ms: u64,
    ) {
    }

    pub(crate) fn webhook_admin(&mut self, _now: Time, request: RequestId, _cmd: AdminCommand) {
        self.emit(Output::AdminAnswer {
            request,
            result: Err(AdminError::Invalid("webhooks are not available yet".into())),
        });
    }
}
