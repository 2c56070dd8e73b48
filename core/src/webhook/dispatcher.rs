//! The webhook dispatcher: which delivery to POST next, and what to persist about results.

use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::config::WebhookConfig;
use crate::ids::{EndpointId, EventId, PostId, TenantId};
use crate::io::{AdminError, AdminReply, Output};
use crate::model::{
    EndpointRecord, EventKind, EventRecord, PendingDelivery, StoreOp, WebhookAttemptRecord,
    WebhookDeliveryRecord, WebhookDeliveryState, WebhookSecret,
};
use crate::time::Time;

use super::sign::{check_key, signature_header};
use super::target::validate_url;

/// Transport errors are kept to this many bytes (sanitized).
pub const MAX_ERROR_LEN: usize = crate::sanitize::MAX_REMOTE_TEXT;

/// Default of [`DispatcherSettings::retained_deliveries`].
pub const DEFAULT_RETAINED_DELIVERIES: usize = 10_000;

/// Dispatcher settings that are not part of [`WebhookConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatcherSettings {
    /// Allow endpoints on private/loopback/link-local/unspecified literal addresses and
    /// `localhost` (`--allow-private-webhooks`, for tests).
    pub allow_private: bool,
    /// The `user-agent` header of every POST.
    pub user_agent: String,
    /// How many finished (delivered or failed) deliveries are remembered, with their
    /// event, so that `retry_delivery` can re-send them by event id. The oldest events
    /// are forgotten first.
    pub retained_deliveries: usize,
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        DispatcherSettings {
            allow_private: false,
            user_agent: super::USER_AGENT.to_string(),
            retained_deliveries: DEFAULT_RETAINED_DELIVERIES,
        }
    }
}

/// One POST to make: everything `Output::PostWebhook` needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostRequest {
    pub post: PostId,
    pub endpoint: EndpointId,
    pub tenant: TenantId,
    pub event: EventId,
    pub event_seq: u64,
    /// 1-based number of this attempt.
    pub attempt: u32,
    pub url: String,
    /// `content-type`, `user-agent`, `webhook-id`, `webhook-timestamp` and (if the
    /// endpoint has a live secret) `webhook-signature`, in that order.
    pub headers: Vec<(String, String)>,
    pub body: Arc<str>,
    pub timeout: Duration,
}

impl PostRequest {
    pub fn into_output(self) -> Output {
        Output::PostWebhook {
            post: self.post,
            endpoint: self.endpoint,
            event: self.event,
            url: self.url,
            headers: self.headers,
            body: self.body,
            timeout: self.timeout,
        }
    }
}

/// What an admin command did: the ops to persist (one batch) and the reply to give once
/// they are persisted.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminOutcome {
    pub ops: Vec<StoreOp>,
    pub reply: AdminReply,
}

/// A pending delivery as the dispatcher holds it (for inspection and tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryView {
    pub endpoint: EndpointId,
    pub event: EventId,
    pub event_seq: u64,
    pub attempts: u32,
    /// When it is due (meaningless while `in_flight`).
    pub due: Time,
    pub in_flight: Option<PostId>,
}

struct EndpointState {
    record: EndpointRecord,
    in_flight: usize,
    /// Due deliveries (by event seq), not in flight.
    ready: BTreeSet<u64>,
    /// Deliveries due later (due time, event seq), not in flight.
    waiting: BTreeSet<(Time, u64)>,
    /// This endpoint's key in `WebhookDispatcher::wake` (the first `waiting` time).
    wake_at: Option<Time>,
}

struct Delivery {
    event: Arc<EventRecord>,
    attempts: u32,
    /// `attempts` when the current retry round began (0, or at a manual retry): the
    /// schedule position is `attempts - round_base`.
    round_base: u32,
    /// First attempt of the current round: `give_up_after` counts from it.
    round_started: Option<Time>,
    due: Time,
    in_flight: Option<PostId>,
}

/// A finished delivery remembered for `retry_delivery`.
struct Finished {
    event: Arc<EventRecord>,
    attempts: u32,
}

/// The webhook dispatcher. See the module documentation for the call order.
pub struct WebhookDispatcher {
    config: WebhookConfig,
    settings: DispatcherSettings,
    endpoints: BTreeMap<EndpointId, EndpointState>,
    by_tenant: BTreeSet<(TenantId, EndpointId)>,
    /// Pending deliveries, keyed by (endpoint, event seq).
    deliveries: BTreeMap<(EndpointId, u64), Delivery>,
    posts: BTreeMap<PostId, (EndpointId, u64)>,
    /// (first waiting due time, endpoint) for endpoints with waiting deliveries.
    wake: BTreeSet<(Time, EndpointId)>,
    /// Endpoints with a ready delivery and a free in-flight slot.
    runnable: BTreeSet<EndpointId>,
    /// Delivered or failed deliveries, oldest event first, bounded.
    finished: BTreeMap<(EventId, EndpointId), Finished>,
}

impl WebhookDispatcher {
    pub fn new(config: WebhookConfig, settings: DispatcherSettings) -> WebhookDispatcher {
        WebhookDispatcher {
            config,
            settings,
            endpoints: BTreeMap::new(),
            by_tenant: BTreeSet::new(),
            deliveries: BTreeMap::new(),
            posts: BTreeMap::new(),
            wake: BTreeSet::new(),
            runnable: BTreeSet::new(),
            finished: BTreeMap::new(),
        }
    }

    pub fn settings(&self) -> &DispatcherSettings {
        &self.settings
    }

    fn max_in_flight(&self) -> usize {
        self.config.max_in_flight_per_endpoint.max(1)
    }

    /// Replaces all state with what the store recovered. Pending deliveries of unknown
    /// endpoints (or whose rows do not match their event) are ignored; the rest are due at
    /// their `next_attempt_at` (or `now`). Posts in flight before a restart are simply
    /// due again. Rows in state `Failed` or `Delivered`, if the store hands any, are not
    /// posted but remembered (bounded) so that `retry_delivery` can re-send them.
    pub fn restore(
        &mut self,
        endpoints: Vec<EndpointRecord>,
        pending: Vec<PendingDelivery>,
        now: Time,
    ) {
        self.endpoints.clear();
        self.by_tenant.clear();
        self.deliveries.clear();
        self.posts.clear();
        self.wake.clear();
        self.runnable.clear();
        self.finished.clear();
        for record in endpoints {
            self.insert_endpoint(record);
        }
        // One shared copy of each event.
        let mut events: BTreeMap<u64, Arc<EventRecord>> = BTreeMap::new();
        for PendingDelivery { delivery, event } in pending {
            if !row_matches(&delivery, &event) {
                continue;
            }
            let Some(ep) = self.endpoints.get(&delivery.endpoint) else {
                continue;
            };
            if ep.record.tenant != delivery.tenant
                || self
                    .deliveries
                    .contains_key(&(delivery.endpoint, event.seq))
            {
                continue;
            }
            let event = events
                .entry(event.seq)
                .or_insert_with(|| Arc::new(event))
                .clone();
            if delivery.state != WebhookDeliveryState::Pending {
                self.remember_finished(delivery.endpoint, event, delivery.attempts);
                continue;
            }
            let round_started = (delivery.attempts > 0).then(|| {
                delivery
                    .updated_at
                    .minus(self.elapsed_before(delivery.attempts))
            });
            let due = delivery.next_attempt_at.unwrap_or(now);
            self.add_delivery(
                delivery.endpoint,
                Delivery {
                    event,
                    attempts: delivery.attempts,
                    round_base: 0,
                    round_started,
                    due,
                    in_flight: None,
                },
            );
        }
    }

    /// The pending delivery rows for `event`: one per endpoint of its tenant subscribed to
    /// its kind (an empty `events` set means all kinds), due at `now`. Persist them in the
    /// same batch as the event, then `enqueue`.
    pub fn deliveries_for(&self, event: &EventRecord, now: Time) -> Vec<WebhookDeliveryRecord> {
        self.tenant_endpoints(event.tenant)
            .filter(|r| subscribed(r, event.kind))
            .map(|r| WebhookDeliveryRecord {
                endpoint: r.id,
                event: event.id,
                event_seq: event.seq,
                tenant: event.tenant,
                state: WebhookDeliveryState::Pending,
                attempts: 0,
                next_attempt_at: Some(now),
                updated_at: now,
            })
            .collect()
    }

    /// Starts delivering `event` to the endpoints of `rows` (from `deliveries_for`), once
    /// the batch holding them is persisted. Rows for endpoints deleted meanwhile, rows that
    /// do not belong to the event, and deliveries already queued are skipped.
    pub fn enqueue(&mut self, event: impl Into<Arc<EventRecord>>, rows: &[WebhookDeliveryRecord]) {
        let event: Arc<EventRecord> = event.into();
        for row in rows {
            if row.state != WebhookDeliveryState::Pending || !row_matches(row, &event) {
                continue;
            }
            let Some(ep) = self.endpoints.get(&row.endpoint) else {
                continue;
            };
            if ep.record.tenant != event.tenant
                || self.deliveries.contains_key(&(row.endpoint, event.seq))
            {
                continue;
            }
            self.add_delivery(
                row.endpoint,
                Delivery {
                    event: event.clone(),
                    attempts: row.attempts,
                    round_base: row.attempts,
                    round_started: None,
                    due: row.next_attempt_at.unwrap_or(row.updated_at),
                    in_flight: None,
                },
            );
        }
    }

    /// The next POST to make now, if any: a due delivery of an endpoint with fewer than
    /// `max_in_flight_per_endpoint` posts in flight (lowest event seq first within an
    /// endpoint). Call until `None`.
    pub fn poll_post(
        &mut self,
        now: Time,
        next_post_id: &mut dyn FnMut() -> PostId,
    ) -> Option<PostRequest> {
        self.promote(now);
        loop {
            let id = *self.runnable.first()?;
            let max = self.max_in_flight();
            let Some(ep) = self.endpoints.get_mut(&id) else {
                self.runnable.remove(&id);
                continue;
            };
            if ep.in_flight >= max {
                self.refresh(id);
                continue;
            }
            let Some(seq) = ep.ready.pop_first() else {
                self.refresh(id);
                continue;
            };
            let Some(d) = self.deliveries.get_mut(&(id, seq)) else {
                self.refresh(id);
                continue;
            };
            let post = next_post_id();
            ep.in_flight += 1;
            d.in_flight = Some(post);
            d.round_started.get_or_insert(now);
            let event = d.event.clone();
            let attempt = d.attempts.saturating_add(1);
            self.posts.insert(post, (id, seq));
            let record = &ep.record;
            let id_str = event.id.to_string();
            let ts = now.as_secs();
            let mut headers = vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("user-agent".to_string(), self.settings.user_agent.clone()),
                ("webhook-id".to_string(), id_str.clone()),
                ("webhook-timestamp".to_string(), ts.to_string()),
            ];
            let sig = signature_header(&record.secrets, now, &id_str, ts, &event.payload);
            if !sig.is_empty() {
                headers.push(("webhook-signature".to_string(), sig));
            }
            let req = PostRequest {
                post,
                endpoint: id,
                tenant: record.tenant,
                event: event.id,
                event_seq: event.seq,
                attempt,
                url: record.url.clone(),
                headers,
                body: event.payload.clone(),
                timeout: self.config.timeout,
            };
            self.refresh(id);
            return Some(req);
        }
    }

    /// The result of a POST: 2xx delivers; anything else (another status, a transport
    /// error) schedules a retry, or fails the delivery for good once the next attempt
    /// would fall after `give_up_after` since the first attempt. Returns the ops to
    /// persist (the attempt and the delivery's new state). An unknown or stale post id
    /// (e.g. its endpoint was deleted) returns nothing.
    pub fn on_result(
        &mut self,
        now: Time,
        post: PostId,
        result: Result<u16, String>,
        duration_ms: u64,
    ) -> Vec<StoreOp> {
        let Some((id, seq)) = self.posts.remove(&post) else {
            return Vec::new();
        };
        if let Some(ep) = self.endpoints.get_mut(&id) {
            ep.in_flight = ep.in_flight.saturating_sub(1);
        }
        let key = (id, seq);
        let Some(d) = self.deliveries.get_mut(&key) else {
            self.refresh(id);
            return Vec::new();
        };
        if d.in_flight != Some(post) {
            self.refresh(id);
            return Vec::new();
        }
        d.in_flight = None;
        d.attempts = d.attempts.saturating_add(1);
        let (attempts, round_base, round_started) = (d.attempts, d.round_base, d.round_started);
        let event = d.event.clone();
        let (status_code, error) = match &result {
            Ok(code) => (Some(*code), None),
            Err(e) => {
                let mut e = crate::sanitize::cut(e, MAX_ERROR_LEN);
                if e.is_empty() {
                    e = "error".to_string();
                }
                (None, Some(e))
            }
        };
        let attempt = WebhookAttemptRecord {
            endpoint: id,
            event: event.id,
            tenant: event.tenant,
            attempt: attempts,
            at: now,
            duration_ms,
            status_code,
            error,
        };
        let delivered = matches!(result, Ok(200..=299));
        let (state, next) = if delivered {
            (WebhookDeliveryState::Delivered, None)
        } else {
            let k = attempts.saturating_sub(round_base).max(1);
            let next = now.plus(self.delay_after(k));
            let started = round_started.unwrap_or(now);
            if next > started.plus(self.config.give_up_after) {
                (WebhookDeliveryState::Failed, None)
            } else {
                (WebhookDeliveryState::Pending, Some(next))
            }
        };
        match next {
            Some(due) => {
                if let Some(d) = self.deliveries.get_mut(&key) {
                    d.due = due;
                }
                if let Some(ep) = self.endpoints.get_mut(&id) {
                    ep.waiting.insert((due, seq));
                }
            }
            None => {
                self.deliveries.remove(&key);
                self.remember_finished(id, event.clone(), attempts);
            }
        }
        self.refresh(id);
        let row = WebhookDeliveryRecord {
            endpoint: id,
            event: event.id,
            event_seq: event.seq,
            tenant: event.tenant,
            state,
            attempts,
            next_attempt_at: next,
            updated_at: now,
        };
        vec![
            StoreOp::InsertWebhookAttempt(attempt),
            StoreOp::UpsertWebhookDelivery(row),
        ]
    }

    /// When a delivery is next due: the engine's `poll_timeout` should include it. A time
    /// at or before now means "due now" (drain `poll_post`).
    pub fn next_due(&self) -> Option<Time> {
        if !self.runnable.is_empty() {
            return Some(Time::ZERO);
        }
        self.wake.first().map(|&(t, _)| t)
    }

    /// Creates an endpoint. `secret` is the raw key ([`super::MIN_SECRET_LEN`] to
    /// [`super::MAX_SECRET_LEN`] bytes, from the shell's CSPRNG); the reply carries the
    /// record, whose `secrets[0]` the API shows once as `format_secret(key)`.
    pub fn create_endpoint(
        &mut self,
        id: EndpointId,
        tenant: TenantId,
        url: &str,
        events: &[EventKind],
        secret: Vec<u8>,
        now: Time,
    ) -> Result<AdminOutcome, AdminError> {
        let record = self.new_endpoint(id, tenant, url, events, secret, now)?;
        self.install_endpoint(record.clone());
        Ok(AdminOutcome {
            ops: vec![StoreOp::UpsertEndpoint(record.clone())],
            reply: AdminReply::Endpoint(record),
        })
    }

    /// Validates a new endpoint and builds its record without installing it: the engine
    /// installs it (`install_endpoint`) only once its store write is durable, so that no
    /// event is ever routed to an endpoint the store does not have.
    pub fn new_endpoint(
        &self,
        id: EndpointId,
        tenant: TenantId,
        url: &str,
        events: &[EventKind],
        secret: Vec<u8>,
        now: Time,
    ) -> Result<EndpointRecord, AdminError> {
        validate_url(url, self.settings.allow_private)
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        check_key(&secret).map_err(|e| AdminError::Invalid(e.to_string()))?;
        if self.endpoints.contains_key(&id) {
            return Err(AdminError::Invalid(
                "endpoint id already exists".to_string(),
            ));
        }
        Ok(EndpointRecord {
            id,
            tenant,
            url: url.to_string(),
            events: events.iter().copied().collect(),
            secrets: vec![WebhookSecret {
                key: secret,
                created_at: now,
                expires_at: None,
            }],
            created_at: now,
        })
    }

    /// Installs a new or changed endpoint record. A known endpoint keeps its queue and
    /// in-flight state; only its record (URL, subscriptions, secrets) is replaced.
    pub fn install_endpoint(&mut self, record: EndpointRecord) {
        match self.endpoints.get_mut(&record.id) {
            Some(ep) if ep.record.tenant == record.tenant => ep.record = record,
            _ => self.insert_endpoint(record),
        }
    }

    /// Deletes an endpoint of `tenant` (another tenant's endpoint is `NotFound`). Its
    /// pending deliveries are dropped from memory; results of its posts in flight are
    /// ignored.
    pub fn delete_endpoint(
        &mut self,
        tenant: TenantId,
        id: EndpointId,
    ) -> Result<AdminOutcome, AdminError> {
        self.endpoint(tenant, id).ok_or(AdminError::NotFound)?;
        if let Some(ep) = self.endpoints.remove(&id)
            && let Some(t) = ep.wake_at
        {
            self.wake.remove(&(t, id));
        }
        self.by_tenant.remove(&(tenant, id));
        self.runnable.remove(&id);
        let keys: Vec<(EndpointId, u64)> = self
            .deliveries
            .range((id, 0)..=(id, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.deliveries.remove(&k);
        }
        self.posts.retain(|_, (ep, _)| *ep != id);
        self.finished.retain(|(_, ep), _| *ep != id);
        Ok(AdminOutcome {
            ops: vec![StoreOp::DeleteEndpoint {
                tenant,
                endpoint: id,
            }],
            reply: AdminReply::Done,
        })
    }

    /// Rotates the endpoint's signing secret: `new_secret` signs from now on; the current
    /// ones keep signing until `now + rotation_overlap` (an earlier expiry is kept);
    /// expired secrets are pruned. The reply's `secrets[0]` is the new key.
    pub fn rotate_secret(
        &mut self,
        tenant: TenantId,
        id: EndpointId,
        new_secret: Vec<u8>,
        now: Time,
    ) -> Result<AdminOutcome, AdminError> {
        let record = self.rotated_endpoint(tenant, id, new_secret, now)?;
        self.install_endpoint(record.clone());
        Ok(AdminOutcome {
            ops: vec![StoreOp::UpsertEndpoint(record.clone())],
            reply: AdminReply::Endpoint(record),
        })
    }

    /// The endpoint's record after a rotation, without applying it (see
    /// `install_endpoint`).
    pub fn rotated_endpoint(
        &self,
        tenant: TenantId,
        id: EndpointId,
        new_secret: Vec<u8>,
        now: Time,
    ) -> Result<EndpointRecord, AdminError> {
        let mut record = self
            .endpoint(tenant, id)
            .ok_or(AdminError::NotFound)?
            .clone();
        check_key(&new_secret).map_err(|e| AdminError::Invalid(e.to_string()))?;
        let until = now.plus(self.config.rotation_overlap);
        let secrets = &mut record.secrets;
        secrets.retain(|s| s.expires_at.is_none_or(|e| e > now));
        for s in secrets.iter_mut() {
            s.expires_at = Some(s.expires_at.map_or(until, |e| e.min(until)));
        }
        secrets.insert(
            0,
            WebhookSecret {
                key: new_secret,
                created_at: now,
                expires_at: None,
            },
        );
        Ok(record)
    }

    /// Drops expired secrets from every endpoint; returns an `UpsertEndpoint` per endpoint
    /// changed. Optional housekeeping (expired secrets never sign anyway).
    pub fn prune_expired_secrets(&mut self, now: Time) -> Vec<StoreOp> {
        let mut ops = Vec::new();
        for ep in self.endpoints.values_mut() {
            let before = ep.record.secrets.len();
            ep.record
                .secrets
                .retain(|s| s.expires_at.is_none_or(|e| e > now));
            if ep.record.secrets.len() != before {
                ops.push(StoreOp::UpsertEndpoint(ep.record.clone()));
            }
        }
        ops
    }

    /// Sends `event` to the endpoint again, due now, with a fresh retry round (the
    /// schedule and `give_up_after` start over; attempt numbers continue). Works for a
    /// pending delivery, and for a delivered or failed one the dispatcher remembers: the
    /// last [`DispatcherSettings::retained_deliveries`] finished since start-up, plus the
    /// finished rows handed to `restore`. Otherwise `NotFound` (the attempts made so far
    /// are unknown, and attempt numbers must not repeat): the engine can then supply the
    /// event and the row's attempt count itself with [`Self::retry_delivery_with`].
    pub fn retry_delivery(
        &mut self,
        tenant: TenantId,
        endpoint: EndpointId,
        event: EventId,
        now: Time,
    ) -> Result<AdminOutcome, AdminError> {
        self.endpoint(tenant, endpoint)
            .ok_or(AdminError::NotFound)?;
        // Pending for this endpoint?
        let pending = self
            .deliveries
            .range((endpoint, 0)..=(endpoint, u64::MAX))
            .find(|(_, d)| d.event.id == event)
            .map(|(_, d)| d.event.clone());
        if let Some(ev) = pending {
            return self.retry_delivery_with(tenant, endpoint, ev, 0, now);
        }
        match self.finished.get(&(event, endpoint)) {
            Some(f) => {
                let (ev, attempts) = (f.event.clone(), f.attempts);
                self.retry_delivery_with(tenant, endpoint, ev, attempts, now)
            }
            None => Err(AdminError::NotFound),
        }
    }

    /// Like [`Self::retry_delivery`] with the event supplied by the caller (e.g. read
    /// from the store), and the attempts already made (so attempt numbers continue; 0 if
    /// unknown). If the delivery is pending it is made due now (`attempts` is then
    /// ignored); if a POST of it is in flight, nothing changes.
    pub fn retry_delivery_with(
        &mut self,
        tenant: TenantId,
        endpoint: EndpointId,
        event: Arc<EventRecord>,
        attempts: u32,
        now: Time,
    ) -> Result<AdminOutcome, AdminError> {
        self.endpoint(tenant, endpoint)
            .ok_or(AdminError::NotFound)?;
        if event.tenant != tenant {
            return Err(AdminError::NotFound);
        }
        let key = (endpoint, event.seq);
        let attempts = match self.deliveries.get_mut(&key) {
            Some(d) if d.in_flight.is_some() => {
                return Ok(AdminOutcome {
                    ops: Vec::new(),
                    reply: AdminReply::Done,
                });
            }
            Some(d) => {
                let (old_due, attempts) = (d.due, d.attempts);
                d.round_base = attempts;
                d.round_started = None;
                d.due = now;
                if let Some(ep) = self.endpoints.get_mut(&endpoint)
                    && ep.waiting.remove(&(old_due, event.seq))
                {
                    ep.waiting.insert((now, event.seq));
                }
                self.refresh(endpoint);
                attempts
            }
            None => {
                self.finished.remove(&(event.id, endpoint));
                self.add_delivery(
                    endpoint,
                    Delivery {
                        event: event.clone(),
                        attempts,
                        round_base: attempts,
                        round_started: None,
                        due: now,
                        in_flight: None,
                    },
                );
                attempts
            }
        };
        let row = WebhookDeliveryRecord {
            endpoint,
            event: event.id,
            event_seq: event.seq,
            tenant,
            state: WebhookDeliveryState::Pending,
            attempts,
            next_attempt_at: Some(now),
            updated_at: now,
        };
        Ok(AdminOutcome {
            ops: vec![StoreOp::UpsertWebhookDelivery(row)],
            reply: AdminReply::Done,
        })
    }

    /// The endpoints of `tenant`, by id.
    pub fn endpoints(&self, tenant: TenantId) -> Vec<&EndpointRecord> {
        self.tenant_endpoints(tenant).collect()
    }

    /// One endpoint of `tenant`.
    pub fn endpoint(&self, tenant: TenantId, id: EndpointId) -> Option<&EndpointRecord> {
        self.endpoints
            .get(&id)
            .map(|e| &e.record)
            .filter(|r| r.tenant == tenant)
    }

    /// A pending delivery (`None` once delivered, failed, or never queued).
    pub fn delivery(&self, endpoint: EndpointId, event_seq: u64) -> Option<DeliveryView> {
        self.deliveries
            .get(&(endpoint, event_seq))
            .map(|d| view(endpoint, d))
    }

    /// All pending deliveries, by (endpoint, event seq).
    pub fn pending(&self) -> impl Iterator<Item = DeliveryView> + '_ {
        self.deliveries.iter().map(|(&(ep, _), d)| view(ep, d))
    }

    pub fn pending_len(&self) -> usize {
        self.deliveries.len()
    }

    pub fn in_flight_len(&self) -> usize {
        self.posts.len()
    }

    /// Posts in flight to one endpoint.
    pub fn in_flight_to(&self, endpoint: EndpointId) -> usize {
        self.endpoints.get(&endpoint).map_or(0, |e| e.in_flight)
    }

    // ---- internals ----

    fn tenant_endpoints(&self, tenant: TenantId) -> impl Iterator<Item = &EndpointRecord> + '_ {
        self.by_tenant
            .range((tenant, EndpointId(0))..=(tenant, EndpointId(u128::MAX)))
            .filter_map(|(_, id)| self.endpoints.get(id).map(|e| &e.record))
    }

    fn insert_endpoint(&mut self, record: EndpointRecord) {
        let id = record.id;
        if let Some(old) = self.endpoints.get(&id) {
            self.by_tenant.remove(&(old.record.tenant, id));
        }
        self.by_tenant.insert((record.tenant, id));
        let state = EndpointState {
            record,
            in_flight: 0,
            ready: BTreeSet::new(),
            waiting: BTreeSet::new(),
            wake_at: None,
        };
        // Replacing an endpoint record (restore of a duplicate) keeps no queue state.
        if let Some(old) = self.endpoints.insert(id, state)
            && let Some(t) = old.wake_at
        {
            self.wake.remove(&(t, id));
        }
    }

    fn add_delivery(&mut self, endpoint: EndpointId, d: Delivery) {
        let seq = d.event.seq;
        let due = d.due;
        let Some(ep) = self.endpoints.get_mut(&endpoint) else {
            return;
        };
        ep.waiting.insert((due, seq));
        self.deliveries.insert((endpoint, seq), d);
        self.refresh(endpoint);
    }

    /// Moves deliveries due at `now` from `waiting` to `ready`.
    fn promote(&mut self, now: Time) {
        while let Some(&(t, id)) = self.wake.first() {
            if t > now {
                break;
            }
            self.wake.pop_first();
            if let Some(ep) = self.endpoints.get_mut(&id) {
                ep.wake_at = None;
                while let Some(&(due, seq)) = ep.waiting.first() {
                    if due > now {
                        break;
                    }
                    ep.waiting.pop_first();
                    ep.ready.insert(seq);
                }
            }
            self.refresh(id);
        }
    }

    /// Re-derives the endpoint's `wake` and `runnable` entries from its queues.
    fn refresh(&mut self, id: EndpointId) {
        let max = self.max_in_flight();
        let Some(ep) = self.endpoints.get_mut(&id) else {
            self.runnable.remove(&id);
            return;
        };
        let wake_at = ep.waiting.first().map(|&(t, _)| t);
        if ep.wake_at != wake_at {
            if let Some(t) = ep.wake_at {
                self.wake.remove(&(t, id));
            }
            if let Some(t) = wake_at {
                self.wake.insert((t, id));
            }
            ep.wake_at = wake_at;
        }
        if !ep.ready.is_empty() && ep.in_flight < max {
            self.runnable.insert(id);
        } else {
            self.runnable.remove(&id);
        }
    }

    /// The delay after the `k`-th failed attempt of a round (1-based).
    fn delay_after(&self, k: u32) -> Duration {
        let i = (k as usize).saturating_sub(1);
        self.config
            .retry_schedule
            .get(i)
            .copied()
            .unwrap_or(self.config.retry_every)
    }

    /// Time from a round's first attempt to its `attempts`-th (the sum of the delays
    /// after attempts 1 .. attempts-1), to rebuild the round start after a restart.
    fn elapsed_before(&self, attempts: u32) -> Duration {
        let n = attempts.saturating_sub(1);
        let listed = (n as usize).min(self.config.retry_schedule.len());
        let head: Duration = self.config.retry_schedule[..listed]
            .iter()
            .fold(Duration::ZERO, |a, d| a.saturating_add(*d));
        let rest = n.saturating_sub(listed as u32);
        head.saturating_add(self.config.retry_every.saturating_mul(rest))
    }

    fn remember_finished(&mut self, endpoint: EndpointId, event: Arc<EventRecord>, attempts: u32) {
        if self.settings.retained_deliveries == 0 {
            return;
        }
        self.finished
            .insert((event.id, endpoint), Finished { event, attempts });
        while self.finished.len() > self.settings.retained_deliveries {
            self.finished.pop_first();
        }
    }
}

fn subscribed(r: &EndpointRecord, kind: EventKind) -> bool {
    r.events.is_empty() || r.events.contains(&kind)
}

fn row_matches(row: &WebhookDeliveryRecord, event: &EventRecord) -> bool {
    row.event == event.id && row.event_seq == event.seq && row.tenant == event.tenant
}

fn view(endpoint: EndpointId, d: &Delivery) -> DeliveryView {
    DeliveryView {
        endpoint,
        event: d.event.id,
        event_seq: d.event.seq,
        attempts: d.attempts,
        due: d.due,
        in_flight: d.in_flight,
    }
}
