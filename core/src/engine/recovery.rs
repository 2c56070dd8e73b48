//! Start-up from the store's snapshot: everything pending resumes. A recipient the
//! snapshot holds as `sending` was in an attempt when the process died; its outcome is
//! unknown, so it is attempted again (at-least-once: the only duplicates are messages in
//! flight at the crash).
//!
//! A queue can hold a million messages: they are taken over in one pass, their strings
//! moved rather than copied, and the message map and timer set are built in bulk (full
//! B-tree nodes, half the memory of inserting one by one in key order).

use std::collections::{BTreeMap, BTreeSet};

use crate::breaker::warm_up;
use crate::ids::MessageId;
use crate::model::{PendingMessage, PendingRecipient, Snapshot};
use crate::status::RecipientStatus;
use crate::time::Time;

use super::{Engine, Msg, Rcpt, Timer};

impl Engine {
    pub(crate) fn recover(&mut self, now: Time, snapshot: Snapshot) {
        if self.recovered {
            return; // handled once
        }
        self.recovered = true;
        let Snapshot {
            messages,
            recipients,
            suppressions,
            recent_attempts,
            last_event_seq,
            endpoints,
            pending_deliveries,
            idempotency,
        } = snapshot;
        self.next_seq = self.next_seq.max(last_event_seq + 1);
        self.suppressions.extend(suppressions);
        for e in idempotency {
            self.restore_idempotency(e.tenant, e.key, e.request_hash, e.receipt, e.created_at);
        }
        for (domain, breaker) in warm_up(now, &recent_attempts, &self.cfg.breaker) {
            let until = breaker.next_probe_at();
            self.dest_mut(&domain).breaker = breaker;
            if let Some(until) = until {
                self.set_timer(until, Timer::Dest(domain.clone()));
                self.dest_mut(&domain).timer_at = Some(until);
            }
        }
        drop(recent_attempts);
        self.restore_messages(now, messages, recipients);
        self.webhooks.restore(endpoints, pending_deliveries, now);
        let first_scan = now.plus(self.cfg.spool_cleanup_interval);
        self.set_timer(first_scan, Timer::SpoolScan);
    }

    fn restore_messages(
        &mut self,
        now: Time,
        mut messages: Vec<PendingMessage>,
        mut recipients: Vec<PendingRecipient>,
    ) {
        // Stores hand them sorted; sort otherwise (a stable sort of sorted runs is linear).
        if !messages.is_sorted_by_key(|m| m.id) {
            messages.sort_by_key(|m| m.id);
        }
        if !recipients.is_sorted_by_key(|r| (r.message, r.idx)) {
            recipients.sort_by_key(|r| (r.message, r.idx));
        }
        let mut restored: Vec<(MessageId, Msg)> = Vec::with_capacity(messages.len());
        let mut rcpts = recipients.into_iter().peekable();
        for m in messages {
            // Recipients of no listed message are skipped.
            while rcpts.next_if(|r| r.message < m.id).is_some() {}
            let mut group = Vec::new();
            while let Some(r) = rcpts.next_if(|r| r.message == m.id) {
                let waiting = !r.status.is_terminal();
                group.push(Rcpt {
                    address: r.address,
                    domain: self.intern_arc(r.domain),
                    // In an attempt at the crash: attempt it again.
                    status: if r.status == RecipientStatus::Sending {
                        RecipientStatus::Deferred
                    } else {
                        r.status
                    },
                    attempts: r.attempts,
                    next_attempt_at: waiting
                        .then(|| r.next_attempt_at.unwrap_or(now).min(m.expires_at)),
                });
            }
            let duplicate = restored.last().is_some_and(|(id, _)| *id == m.id);
            if duplicate || self.messages.contains_key(&m.id) {
                continue;
            }
            let mut msg = Msg {
                tenant: m.tenant,
                mail_from: self.intern_arc(m.mail_from),
                message_id_header: m.message_id_header,
                created_at: m.created_at,
                expires_at: m.expires_at,
                size: m.size,
                wake: None,
                smtputf8: m.smtputf8,
                eight_bit: m.eight_bit,
                committed: true,
                expired: false,
                rcpts: group.into(),
            };
            if msg.all_terminal() {
                continue;
            }
            msg.wake = msg.next_wake();
            restored.push((m.id, msg));
        }
        drop(rcpts);
        let timers = |msgs: &BTreeMap<MessageId, Msg>| -> Vec<(Time, MessageId)> {
            msgs.iter()
                .filter_map(|(id, m)| Some((m.wake?, *id)))
                .collect()
        };
        if self.messages.is_empty() && self.msg_timers.is_empty() {
            // Sorted and distinct: built in bulk (the list is freed before the timers are
            // listed, to keep the peak down).
            self.messages = BTreeMap::from_iter(restored);
            self.msg_timers = BTreeSet::from_iter(timers(&self.messages));
        } else {
            let restored = BTreeMap::from_iter(restored);
            self.msg_timers.extend(timers(&restored));
            self.messages.extend(restored);
        }
    }
}
