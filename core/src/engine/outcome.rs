//! Applying outcomes: the one place where recipient statuses change after intake. Every
//! change goes through `status::transition`, is persisted with its attempt record and its
//! event in one batch (the outbox), and hard bounces in suppressing categories add the
//! address to the tenant's suppression list.

use std::sync::Arc;

use crate::classify::Category;
use crate::classify::Outcome;
use crate::events::{EventData, payload};
use crate::ids::{EventId, MessageId};
use crate::model::{
    AttemptRecord, EventKind, EventRecord, StoreOp, SuppressionRecord, SuppressionSource, TlsRecord,
};
use crate::retry;
use crate::smtp::Stage;
use crate::status::{RecipientStatus, transition};
use crate::time::Time;

use super::Engine;
use super::persist::AckAction;
use super::webhooks::PersistedEvent;

/// What an event says beyond the status.
#[derive(Clone, Debug, Default)]
pub(crate) struct EventInfo {
    pub smtp_code: Option<u16>,
    pub enhanced: Option<String>,
    pub category: Option<Category>,
    pub response: Option<String>,
    pub attempt: u32,
    pub mx: Option<String>,
}

/// The result of one delivery attempt for one recipient.
#[derive(Clone, Debug)]
pub(crate) struct AttemptOutcome {
    pub stage: Stage,
    pub code: Option<u16>,
    pub enhanced: Option<String>,
    /// Sanitized reply or error text.
    pub text: String,
    pub category: Category,
    pub rule: String,
    pub mx: Option<String>,
    pub ip: Option<String>,
    pub tls: TlsRecord,
    pub started_at: Time,
    /// False when the reply was not about this recipient alone (a DATA or end-of-data
    /// reply to a transaction with several recipients): it never suppresses then.
    pub about_recipient: bool,
}

impl AttemptOutcome {
    /// A connection- or transaction-level failure (counted by the circuit breaker), as
    /// opposed to a per-recipient answer from a working server.
    pub fn is_destination_failure(&self) -> bool {
        if self.category.is_transport() {
            return true;
        }
        let temp = self.code.is_some_and(|c| c / 100 == 4);
        temp && matches!(
            self.stage,
            Stage::Greeting
                | Stage::Ehlo
                | Stage::Tls
                | Stage::Mail
                | Stage::Data
                | Stage::EndOfData
        )
    }

    /// `"550 5.1.1 text"`, or the error text.
    pub fn display(&self) -> String {
        match (self.code, &self.enhanced) {
            (Some(c), Some(e)) => format!("{c} {e} {}", self.text),
            (Some(c), None) => format!("{c} {}", self.text),
            _ => self.text.clone(),
        }
    }
}

impl Engine {
    /// Creates the event for a recipient entering `status`; pushes its store ops (the
    /// event and its webhook deliveries) into `ops` and the event into `events`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_event(
        &mut self,
        now: Time,
        id: MessageId,
        idx: u32,
        status: RecipientStatus,
        info: &EventInfo,
        ops: &mut Vec<StoreOp>,
        events: &mut Vec<PersistedEvent>,
    ) -> Option<EventId> {
        let kind = EventKind::for_status(status)?;
        let event_id = EventId(self.mint_id(now));
        let seq = self.next_seq;
        let m = self.messages.get(&id)?;
        let r = m.rcpts.get(idx as usize)?;
        let data = EventData {
            message_id: id,
            message_id_header: format!("<{}>", m.message_id_header),
            recipient: &r.address,
            status,
            smtp_code: info.smtp_code,
            enhanced_code: info.enhanced.as_deref(),
            category: info.category,
            response: info.response.as_deref(),
            attempt: info.attempt,
            mx: info.mx.as_deref(),
        };
        let body = payload(event_id, seq, kind, now, &data);
        let record = EventRecord {
            seq,
            id: event_id,
            tenant: m.tenant,
            kind,
            at: now,
            message: id,
            idx,
            payload: Arc::from(body),
        };
        self.next_seq += 1;
        let rows = self.webhooks.deliveries_for(&record, now);
        ops.push(StoreOp::InsertEvent(record.clone()));
        ops.extend(rows.iter().cloned().map(StoreOp::UpsertWebhookDelivery));
        events.push((record, rows));
        Some(event_id)
    }

    /// (Re)schedules a pending recipient's next attempt.
    pub(crate) fn schedule_due(&mut self, id: MessageId, idx: u32, at: Time) {
        let Some(r) = self
            .messages
            .get_mut(&id)
            .and_then(|m| m.rcpts.get_mut(idx as usize))
        else {
            return;
        };
        r.next_attempt_at = Some(at);
        self.refresh_wake(id);
    }

    /// A recipient's attempt is due: queue it at its destination, unless it is suppressed.
    pub(crate) fn on_due(&mut self, now: Time, id: MessageId, idx: u32) {
        let Some(m) = self.messages.get_mut(&id) else {
            return;
        };
        let tenant = m.tenant;
        let Some(r) = m.rcpts.get_mut(idx as usize) else {
            return;
        };
        if r.status.is_terminal() || r.status == RecipientStatus::Sending {
            return;
        }
        r.next_attempt_at = None;
        let key = (tenant, r.address.to_lowercase());
        let domain = r.domain.to_string();
        if self.suppressions.contains(&key) {
            let info = EventInfo {
                category: Some(Category::Suppressed),
                response: Some("address is on the suppression list".to_string()),
                attempt: self
                    .messages
                    .get(&id)
                    .and_then(|m| m.rcpts.get(idx as usize))
                    .map_or(0, |r| r.attempts),
                ..EventInfo::default()
            };
            self.stats.suppressed += 1;
            let mut ops = Vec::new();
            let mut events = Vec::new();
            self.change_status(
                now,
                id,
                idx,
                RecipientStatus::Suppressed,
                None,
                "address is on the suppression list",
                &info,
                &mut ops,
                &mut events,
            );
            self.commit_changes(now, id, ops, events);
            return;
        }
        self.dest_mut(&domain).ready.insert((id, idx));
        self.dirty.insert(domain);
    }

    /// The message reached its max age: every pending recipient not in an attempt right
    /// now is `failed` with reason `expired` (one in an attempt is settled when it ends).
    pub(crate) fn on_expire(&mut self, now: Time, id: MessageId) {
        let (ops, events, _) = self.fail_waiting(
            now,
            id,
            Category::Expired,
            "expired",
            "expired: maximum age reached without delivery",
        );
        if !ops.is_empty() {
            self.commit_changes(now, id, ops, events);
        }
    }

    /// Recipients of the message waiting for an attempt (`queued` or `deferred`).
    pub(crate) fn waiting_recipients(&self, id: MessageId) -> Vec<u32> {
        self.messages.get(&id).map_or_else(Vec::new, |m| {
            m.rcpts
                .iter()
                .enumerate()
                .filter(|(_, r)| r.is_waiting())
                .map(|(i, _)| i as u32)
                .collect()
        })
    }

    /// Fails every waiting recipient of the message (expiry, cancellation): out of its
    /// destination's ready queue, `failed` with `reason`, one event each. Returns the ops
    /// and events to persist, and how many recipients it failed.
    pub(crate) fn fail_waiting(
        &mut self,
        now: Time,
        id: MessageId,
        category: Category,
        reason: &str,
        response: &str,
    ) -> (Vec<StoreOp>, Vec<PersistedEvent>, usize) {
        let mut ops = Vec::new();
        let mut events = Vec::new();
        let victims = self.waiting_recipients(id);
        for &idx in &victims {
            let Some(r) = self
                .messages
                .get(&id)
                .and_then(|m| m.rcpts.get(idx as usize))
            else {
                continue;
            };
            let (domain, attempts) = (r.domain.clone(), r.attempts);
            if let Some(d) = self.dests.get_mut(&*domain) {
                d.ready.remove(&(id, idx));
            }
            let info = EventInfo {
                category: Some(category),
                response: Some(response.to_string()),
                attempt: attempts,
                ..EventInfo::default()
            };
            self.stats.failed += 1;
            self.change_status(
                now,
                id,
                idx,
                RecipientStatus::Failed,
                None,
                reason,
                &info,
                &mut ops,
                &mut events,
            );
        }
        (ops, events, victims.len())
    }

    /// One status change: transition check, memory, the recipient update op and its event.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn change_status(
        &mut self,
        now: Time,
        id: MessageId,
        idx: u32,
        to: RecipientStatus,
        next_attempt_at: Option<Time>,
        reason: &str,
        info: &EventInfo,
        ops: &mut Vec<StoreOp>,
        events: &mut Vec<PersistedEvent>,
    ) -> Option<EventId> {
        let r = self.messages.get_mut(&id)?.rcpts.get_mut(idx as usize)?;
        let to = transition(r.status, to).ok()?;
        r.status = to;
        let attempts = r.attempts;
        if to.is_terminal() {
            // The message's timer, if it was for this recipient, fires early and is
            // recomputed; a finished message leaves with its timer.
            r.next_attempt_at = None;
        }
        ops.push(StoreOp::UpdateRecipient {
            message: id,
            idx,
            status: to,
            attempts,
            next_attempt_at,
            at: now,
            reason: Some(crate::sanitize::cut(
                reason,
                crate::sanitize::MAX_REMOTE_TEXT,
            )),
        });
        self.record_event(now, id, idx, to, info, ops, events)
    }

    /// Persists a set of changes for one message; if the message is now final, it leaves
    /// memory and its spool file is deleted once the batch is durable.
    pub(crate) fn commit_changes(
        &mut self,
        _now: Time,
        id: MessageId,
        ops: Vec<StoreOp>,
        events: Vec<PersistedEvent>,
    ) {
        let mut acks = vec![AckAction::Events(events)];
        let done = self
            .messages
            .get(&id)
            .is_some_and(|m| m.committed && m.all_terminal());
        if done {
            self.forget_message(id);
            acks.push(AckAction::DeleteSpool(id));
        }
        self.persist(ops, acks);
    }

    /// Settles the recipients of one attempt (all of one message) with their outcomes.
    pub(crate) fn settle(
        &mut self,
        now: Time,
        id: MessageId,
        outcomes: Vec<(u32, AttemptOutcome)>,
    ) {
        let mut ops = Vec::new();
        let mut events = Vec::new();
        for (idx, o) in outcomes {
            self.settle_one(now, id, idx, &o, &mut ops, &mut events);
        }
        if !ops.is_empty() {
            self.commit_changes(now, id, ops, events);
        }
    }

    fn settle_one(
        &mut self,
        now: Time,
        id: MessageId,
        idx: u32,
        o: &AttemptOutcome,
        ops: &mut Vec<StoreOp>,
        events: &mut Vec<PersistedEvent>,
    ) {
        let Some(m) = self.messages.get(&id) else {
            return;
        };
        let (tenant, expires_at) = (m.tenant, m.expires_at);
        let Some(r) = m.rcpts.get(idx as usize) else {
            return;
        };
        if r.status != RecipientStatus::Sending {
            return; // a late outcome: terminal statuses are never overwritten
        }
        let (attempts, domain) = (r.attempts, r.domain.to_string());
        let key = (tenant, r.address.to_lowercase());
        self.stats.attempts += 1;
        let decision = self.cfg.category_policy.decide(o.category, o.code);
        let display = o.display();
        let (status, next, reason) = match decision.outcome {
            Outcome::Delivered => (RecipientStatus::Delivered, None, display.clone()),
            Outcome::Bounced => (RecipientStatus::Bounced, None, display.clone()),
            Outcome::Deferred if now >= expires_at => (
                RecipientStatus::Failed,
                None,
                format!("expired after the last attempt: {display}"),
            ),
            Outcome::Deferred => {
                let delay = retry::next_delay(
                    &self.cfg.retry_schedule,
                    attempts,
                    self.cfg.retry_jitter_permille,
                    &mut self.rng,
                );
                (
                    RecipientStatus::Deferred,
                    Some(retry::next_attempt_at(now, delay, expires_at)),
                    display.clone(),
                )
            }
        };
        match status {
            RecipientStatus::Delivered => self.stats.delivered += 1,
            RecipientStatus::Bounced => self.stats.bounced += 1,
            RecipientStatus::Failed => self.stats.failed += 1,
            _ => self.stats.deferred += 1,
        }
        ops.push(StoreOp::InsertAttempt(AttemptRecord {
            message: id,
            idx,
            tenant,
            domain,
            attempt: attempts,
            started_at: o.started_at,
            duration_ms: now.since(o.started_at).as_millis() as u64,
            status,
            stage: o.stage,
            smtp_code: o.code,
            enhanced_code: o.enhanced.clone(),
            response: o.text.clone(),
            category: o.category,
            rule: o.rule.clone(),
            mx: o.mx.clone(),
            ip: o.ip.clone(),
            tls: o.tls.clone(),
            breaker_failure: o.is_destination_failure(),
        }));
        let info = EventInfo {
            smtp_code: o.code,
            enhanced: o.enhanced.clone(),
            category: Some(if status == RecipientStatus::Failed {
                Category::Expired
            } else {
                o.category
            }),
            response: Some(o.text.clone()),
            attempt: attempts,
            mx: o.mx.clone(),
        };
        let event = self.change_status(now, id, idx, status, next, &reason, &info, ops, events);
        if let Some(at) = next {
            self.schedule_due(id, idx, at);
        }
        if decision.suppress
            && o.about_recipient
            && status == RecipientStatus::Bounced
            && !self.suppressions.contains(&key)
        {
            // In memory at once, so that no other pending message to the address is sent
            // while the batch commits; durable with the bounce itself.
            self.suppressions.insert(key.clone());
            ops.push(StoreOp::AddSuppression(SuppressionRecord {
                tenant,
                address: key.1,
                source: SuppressionSource::Bounce,
                reason: crate::sanitize::cut(&display, crate::sanitize::MAX_REMOTE_TEXT),
                category: Some(o.category),
                smtp_code: o.code,
                enhanced_code: o.enhanced.clone(),
                event,
                created_at: now,
            }));
        }
    }
}
