//! Submissions: validate (via `crate::intake`), persist, acknowledge only once durable;
//! Idempotency-Key handling.

use std::sync::Arc;

use crate::ids::{MessageId, RequestId, TenantId};
use crate::intake::{self as validate, IntakeLimits};
use crate::io::{Output, Receipt, ReceiptRecipient, Submission, SubmitError, SubmitErrorKind};
use crate::model::{Idempotency, MessageRecord, RecipientRecord, StoreOp};
use crate::status::{RecipientStatus, derive_message_status};
use crate::time::Time;

use super::outcome::EventInfo;
use super::persist::AckAction;
use super::{Engine, Msg, Rcpt};

/// An Idempotency-Key seen recently.
#[derive(Clone, Debug)]
pub(crate) enum IdempotencyState {
    /// The first request's store write is not yet acknowledged; later identical requests
    /// wait for it.
    InFlight {
        request_hash: String,
        message: MessageId,
        waiters: Vec<RequestId>,
        created_at: Time,
    },
    Done {
        request_hash: String,
        receipt: Receipt,
        created_at: Time,
    },
}

impl IdempotencyState {
    fn created_at(&self) -> Time {
        match self {
            IdempotencyState::InFlight { created_at, .. }
            | IdempotencyState::Done { created_at, .. } => *created_at,
        }
    }
}

impl Engine {
    pub(crate) fn submit(&mut self, now: Time, sub: Submission) {
        let request = sub.request;
        if self.draining {
            return self.reject(
                request,
                SubmitError::new(
                    SubmitErrorKind::Unavailable,
                    "shutting_down",
                    "outpost is shutting down; try again",
                ),
            );
        }
        let id = MessageId(self.mint_id(now));
        let limits = IntakeLimits {
            max_message_size: self.cfg.max_message_size,
            max_recipients: self.cfg.max_recipients,
        };
        let mut prepared = match validate::prepare(&sub, id, now, &limits) {
            Ok(p) => p,
            Err(e) => return self.reject(request, e),
        };
        let tenant = sub.tenant;
        if let Some(key) = &sub.idempotency_key {
            let slot = (tenant, key.clone());
            match self.idempotency.get_mut(&slot) {
                Some(IdempotencyState::Done {
                    request_hash,
                    receipt,
                    ..
                }) if *request_hash == prepared.request_hash => {
                    let receipt = receipt.clone();
                    self.emit(Output::SubmitAccepted { request, receipt });
                    return;
                }
                Some(IdempotencyState::InFlight {
                    request_hash,
                    waiters,
                    ..
                }) if *request_hash == prepared.request_hash => {
                    waiters.push(request);
                    return;
                }
                Some(_) => {
                    return self.reject(
                        request,
                        SubmitError::new(
                            SubmitErrorKind::Conflict,
                            "idempotency_conflict",
                            "this Idempotency-Key was used with a different request",
                        ),
                    );
                }
                None => {}
            }
        }
        // Signed once, here, before anything is stored or acknowledged: the spool keeps the
        // signed bytes, so every retry sends the same message. A repeated Idempotency-Key
        // answered above is not signed again. A failure refuses the submission (nothing
        // stored) rather than letting unsigned mail out.
        if let Some(signer) = &self.cfg.signer {
            match crate::signing::sign_spool(&*signer.0, &sub.tenant_domain, &prepared.spool) {
                Ok(Some(signed)) => prepared.spool = signed,
                Ok(None) => {}
                Err(e) => return self.reject(request, e),
            }
        }
        if let Some(key) = &sub.idempotency_key {
            let slot = (tenant, key.clone());
            self.idempotency_in_flight.insert(id, slot.clone());
            self.idempotency.insert(
                slot,
                IdempotencyState::InFlight {
                    request_hash: prepared.request_hash.clone(),
                    message: id,
                    waiters: Vec::new(),
                    created_at: now,
                },
            );
        }

        let expires_at = now.plus(self.cfg.max_age);
        let mut rcpts = Vec::with_capacity(prepared.recipients.len());
        let mut records = Vec::with_capacity(prepared.recipients.len());
        for (i, r) in prepared.recipients.iter().enumerate() {
            let suppressed = self
                .suppressions
                .contains(&(tenant, r.address.suppression_key()));
            let status = if suppressed {
                RecipientStatus::Suppressed
            } else {
                RecipientStatus::Queued
            };
            let address = r.address.envelope();
            records.push(RecipientRecord {
                idx: i as u32,
                address: address.clone(),
                domain: r.address.ascii_domain.clone(),
                kind: r.kind,
                status,
                attempts: 0,
                next_attempt_at: (!suppressed).then_some(now),
                updated_at: now,
                reason: suppressed.then(|| "address is on the suppression list".to_string()),
            });
            let domain = self.intern(&r.address.ascii_domain);
            rcpts.push(Rcpt {
                address: address.into_boxed_str(),
                domain,
                status,
                attempts: 0,
                next_attempt_at: None,
            });
        }
        let record = MessageRecord {
            id,
            tenant,
            source: sub.source,
            message_id_header: prepared.message_id_header.clone(),
            mail_from: prepared.mail_from.clone(),
            subject: prepared.subject.clone(),
            tags: prepared.tags.clone(),
            size: prepared.spool.len() as u64,
            smtputf8: prepared.smtputf8,
            eight_bit: prepared.eight_bit,
            created_at: now,
            expires_at,
            idempotency: sub.idempotency_key.as_ref().map(|key| Idempotency {
                key: key.clone(),
                request_hash: prepared.request_hash.clone(),
            }),
            recipients: records,
        };
        let msg = Msg {
            tenant,
            mail_from: self.intern(&prepared.mail_from),
            message_id_header: prepared.message_id_header.into_boxed_str(),
            created_at: now,
            expires_at,
            size: record.size,
            wake: None,
            smtputf8: prepared.smtputf8,
            eight_bit: prepared.eight_bit,
            committed: false,
            expired: false,
            rcpts: rcpts.into(),
        };
        let size = record.size;
        let mut ops = vec![StoreOp::InsertMessage {
            message: record,
            spool: Arc::from(prepared.spool.into_boxed_slice()),
        }];
        self.messages.insert(id, msg);
        let mut events = Vec::new();
        let n = self.messages.get(&id).map_or(0, |m| m.rcpts.len());
        for idx in 0..n as u32 {
            self.record_event(
                now,
                id,
                idx,
                RecipientStatus::Queued,
                &EventInfo::default(),
                &mut ops,
                &mut events,
            );
            let suppressed = self
                .messages
                .get(&id)
                .and_then(|m| m.rcpts.get(idx as usize))
                .is_some_and(|r| r.status == RecipientStatus::Suppressed);
            if suppressed {
                self.stats.suppressed += 1;
                let info = EventInfo {
                    category: Some(crate::classify::Category::Suppressed),
                    response: Some("address is on the suppression list".to_string()),
                    ..EventInfo::default()
                };
                self.record_event(
                    now,
                    id,
                    idx,
                    RecipientStatus::Suppressed,
                    &info,
                    &mut ops,
                    &mut events,
                );
            }
        }
        let _ = size;
        self.persist(
            ops,
            vec![
                AckAction::Accept {
                    request,
                    message: id,
                },
                AckAction::Events(events),
            ],
        );
    }

    fn reject(&mut self, request: RequestId, error: SubmitError) {
        self.stats.rejected_submissions += 1;
        self.emit(Output::SubmitRejected { request, error });
    }

    pub(crate) fn receipt(&self, id: MessageId) -> Option<Receipt> {
        let m = self.messages.get(&id)?;
        Some(Receipt {
            id,
            message_id: format!("<{}>", m.message_id_header),
            status: derive_message_status(m.rcpts.iter().map(|r| r.status)),
            recipients: m
                .rcpts
                .iter()
                .map(|r| ReceiptRecipient {
                    address: r.address.to_string(),
                    status: r.status,
                })
                .collect(),
        })
    }

    /// The message's store write committed: answer, then schedule its recipients.
    pub(crate) fn on_message_committed(&mut self, now: Time, request: RequestId, id: MessageId) {
        let Some(receipt) = self.receipt(id) else {
            return;
        };
        self.stats.accepted_messages += 1;
        self.emit(Output::SubmitAccepted {
            request,
            receipt: receipt.clone(),
        });
        self.finish_idempotency(id, &receipt);
        let Some(m) = self.messages.get_mut(&id) else {
            return;
        };
        m.committed = true;
        let mut due = false;
        for r in m.rcpts.iter_mut().filter(|r| !r.status.is_terminal()) {
            r.next_attempt_at = Some(now);
            due = true;
        }
        if !due {
            self.forget_message(id);
            self.emit(crate::io::Output::DeleteSpool { message: id });
            return;
        }
        self.refresh_wake(id);
    }

    fn finish_idempotency(&mut self, id: MessageId, receipt: &Receipt) {
        let Some(key) = self.in_flight_slot(id) else {
            return;
        };
        if let Some(IdempotencyState::InFlight {
            request_hash,
            waiters,
            created_at,
            ..
        }) = self.idempotency.remove(&key)
        {
            for w in waiters {
                self.emit(Output::SubmitAccepted {
                    request: w,
                    receipt: receipt.clone(),
                });
            }
            self.idempotency.insert(
                key,
                IdempotencyState::Done {
                    request_hash,
                    receipt: receipt.clone(),
                    created_at,
                },
            );
        }
    }

    /// The submission's store write failed: forget it entirely.
    pub(crate) fn abandon_submission(&mut self, id: MessageId) {
        self.messages.remove(&id);
        if let Some(key) = self.in_flight_slot(id)
            && let Some(IdempotencyState::InFlight { waiters, .. }) = self.idempotency.remove(&key)
        {
            for w in waiters {
                self.reject(
                    w,
                    SubmitError::new(
                        SubmitErrorKind::Unavailable,
                        "storage_unavailable",
                        "the message could not be stored; nothing was kept, try again",
                    ),
                );
            }
        }
    }

    /// Takes the Idempotency-Key slot of submission `id` if it is still in flight.
    fn in_flight_slot(&mut self, id: MessageId) -> Option<(TenantId, String)> {
        let slot = self.idempotency_in_flight.remove(&id)?;
        matches!(
            self.idempotency.get(&slot),
            Some(IdempotencyState::InFlight { message, .. }) if *message == id
        )
        .then_some(slot)
    }

    pub(crate) fn prune_idempotency(&mut self, now: Time) {
        let window = self.cfg.idempotency_window;
        self.idempotency.retain(|_, v| {
            matches!(v, IdempotencyState::InFlight { .. }) || now.since(v.created_at()) < window
        });
    }

    pub(crate) fn restore_idempotency(
        &mut self,
        tenant: TenantId,
        key: String,
        request_hash: String,
        receipt: Receipt,
        created_at: Time,
    ) {
        self.idempotency.insert(
            (tenant, key),
            IdempotencyState::Done {
                request_hash,
                receipt,
                created_at,
            },
        );
    }
}
