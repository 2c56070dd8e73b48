//! Start-up from the store's snapshot: everything pending resumes. A recipient the
//! snapshot holds as `sending` was in an attempt when the process died; its outcome is
//! unknown, so it is attempted again (at-least-once: the only duplicates are messages in
//! flight at the crash).

use crate::breaker::warm_up;
use crate::model::Snapshot;
use crate::status::RecipientStatus;
use crate::time::Time;

use super::{Engine, Msg, Rcpt, Timer};

impl Engine {
    pub(crate) fn recover(&mut self, now: Time, snapshot: Snapshot) {
        if self.recovered {
            return; // handled once
        }
        self.recovered = true;
        self.next_seq = self.next_seq.max(snapshot.last_event_seq + 1);
        self.suppressions.extend(snapshot.suppressions);
        for e in snapshot.idempotency {
            self.restore_idempotency(e.tenant, e.key, e.request_hash, e.receipt, e.created_at);
        }
        for (domain, breaker) in warm_up(now, &snapshot.recent_attempts, &self.cfg.breaker) {
            let until = breaker.next_probe_at();
            self.dest_mut(&domain).breaker = breaker;
            if let Some(until) = until {
                self.set_timer(until, Timer::Dest(domain.clone()));
                self.dest_mut(&domain).timer_at = Some(until);
            }
        }
        for m in snapshot.messages {
            let id = m.id;
            if self.messages.contains_key(&id) {
                continue;
            }
            let rcpts: Vec<Rcpt> = m
                .recipients
                .iter()
                .map(|r| Rcpt {
                    address: r.address.clone(),
                    domain: r.domain.clone(),
                    kind: r.kind,
                    // In an attempt at the crash: attempt it again.
                    status: if r.status == RecipientStatus::Sending {
                        RecipientStatus::Deferred
                    } else {
                        r.status
                    },
                    attempts: r.attempts,
                    next_attempt_at: None,
                })
                .collect();
            let msg = Msg {
                tenant: m.tenant,
                source: m.source,
                mail_from: m.mail_from,
                message_id_header: m.message_id_header,
                created_at: m.created_at,
                expires_at: m.expires_at,
                size: m.size,
                smtputf8: m.smtputf8,
                eight_bit: m.eight_bit,
                rcpts,
                committed: true,
            };
            if msg.all_terminal() {
                continue;
            }
            let expires_at = msg.expires_at;
            self.messages.insert(id, msg);
            self.set_timer(expires_at, Timer::Expire(id));
            for r in &m.recipients {
                if r.status.is_terminal() {
                    continue;
                }
                let due = r.next_attempt_at.unwrap_or(now).min(expires_at);
                self.schedule_due(id, r.idx, due);
            }
        }
        self.webhooks
            .restore(snapshot.endpoints, snapshot.pending_deliveries, now);
        let first_scan = now.plus(self.cfg.spool_cleanup_interval);
        self.set_timer(first_scan, Timer::SpoolScan);
    }
}
