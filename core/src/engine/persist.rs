//! Store batches: every state change the engine makes is persisted as one batch (one
//! transaction), and what must wait for durability (answering a submitter, posting an
//! event, deleting a spool file, answering an admin call) waits for its acknowledgement.

use core::time::Duration;

use crate::ids::{BatchId, MessageId, RequestId, TenantId};
use crate::io::{AdminError, AdminReply, Output, SubmitError, SubmitErrorKind};
use crate::model::StoreOp;
use crate::time::Time;

use super::webhooks::PersistedEvent;
use super::{Engine, Timer};

/// Work that waits for a batch to be durable.
#[derive(Clone, Debug)]
pub(crate) enum AckAction {
    /// A submission's message: acknowledge the submitter and start delivering.
    Accept {
        request: RequestId,
        message: MessageId,
    },
    /// Post these events (they are in the batch).
    Events(Vec<PersistedEvent>),
    /// The message is final: its spool file may go.
    DeleteSpool(MessageId),
    /// Answer an admin call.
    Admin {
        request: RequestId,
        reply: AdminReply,
    },
    /// Apply a webhook endpoint change in memory once it is durable.
    Endpoint(super::webhooks::EndpointChange),
    /// Apply a suppression change in memory once it is durable.
    Suppress {
        tenant: TenantId,
        address: String,
        add: bool,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct PendingBatch {
    pub ops: Vec<StoreOp>,
    pub on_ack: Vec<AckAction>,
    pub failures: u32,
}

impl PendingBatch {
    /// Messages this batch still concerns (their spool files are live).
    pub fn messages(&self) -> impl Iterator<Item = MessageId> + '_ {
        self.ops.iter().filter_map(|op| match op {
            StoreOp::InsertMessage { message, .. } => Some(message.id),
            StoreOp::UpdateRecipient { message, .. } => Some(*message),
            _ => None,
        })
    }
}

const RETRY_MAX: Duration = Duration::from_secs(60);

impl Engine {
    /// Requests a store transaction.
    pub(crate) fn persist(&mut self, ops: Vec<StoreOp>, on_ack: Vec<AckAction>) -> BatchId {
        let batch = BatchId(self.next_batch);
        self.next_batch += 1;
        self.emit(Output::Persist {
            batch,
            ops: ops.clone(),
        });
        self.batches.insert(
            batch,
            PendingBatch {
                ops,
                on_ack,
                failures: 0,
            },
        );
        batch
    }

    pub(crate) fn on_persisted(&mut self, now: Time, batch: BatchId) {
        let Some(pending) = self.batches.remove(&batch) else {
            return; // a late or duplicate acknowledgement
        };
        for action in pending.on_ack {
            match action {
                AckAction::Accept { request, message } => {
                    self.on_message_committed(now, request, message)
                }
                AckAction::Events(events) => self.events_persisted(events),
                AckAction::DeleteSpool(message) => {
                    // Only once no other batch concerning the message is outstanding (an
                    // earlier one may have failed and wait for its retry): until then the
                    // store may still hold a recipient as pending, and its spool is live.
                    let holder = self
                        .batches
                        .iter()
                        .find(|(_, b)| b.messages().any(|m| m == message))
                        .map(|(id, _)| *id);
                    match holder.and_then(|id| self.batches.get_mut(&id)) {
                        Some(b) => b.on_ack.push(AckAction::DeleteSpool(message)),
                        None => self.emit(Output::DeleteSpool { message }),
                    }
                }
                AckAction::Endpoint(change) => self.apply_endpoint_change(change),
                AckAction::Admin { request, reply } => self.emit(Output::AdminAnswer {
                    request,
                    result: Ok(reply),
                }),
                AckAction::Suppress {
                    tenant,
                    address,
                    add,
                } => {
                    if add {
                        self.suppressions.insert((tenant, address));
                    } else {
                        self.suppressions.remove(&(tenant, address));
                    }
                }
            }
        }
    }

    /// A failed intake write refuses the submission and keeps nothing; an admin write is
    /// answered with an error; any other batch (status changes, events) is retried with
    /// backoff: the in-memory state already moved on and the store must catch up, or a
    /// restart replays from the older stored state (at-least-once).
    pub(crate) fn on_persist_failed(&mut self, now: Time, batch: BatchId, error: &str) {
        self.stats.persist_failures += 1;
        let Some(mut pending) = self.batches.remove(&batch) else {
            return;
        };
        let accept = pending.on_ack.iter().find_map(|a| match a {
            AckAction::Accept { request, message } => Some((*request, *message)),
            _ => None,
        });
        if let Some((request, message)) = accept {
            self.abandon_submission(message);
            self.stats.rejected_submissions += 1;
            self.emit(Output::SubmitRejected {
                request,
                error: SubmitError::new(
                    SubmitErrorKind::Unavailable,
                    "storage_unavailable",
                    format!(
                        "the message could not be stored ({}); nothing was kept, try again",
                        crate::sanitize::cut(error, 200)
                    ),
                ),
            });
            return;
        }
        let admin = pending.on_ack.iter().find_map(|a| match a {
            AckAction::Admin { request, .. } => Some(*request),
            _ => None,
        });
        if let Some(request) = admin {
            self.emit(Output::AdminAnswer {
                request,
                result: Err(AdminError::Unavailable(crate::sanitize::cut(error, 200))),
            });
            return;
        }
        pending.failures += 1;
        let factor = 1u32 << pending.failures.min(6);
        let delay = Duration::from_millis(500)
            .saturating_mul(factor)
            .min(RETRY_MAX);
        self.batches.insert(batch, pending);
        self.set_timer(now.plus(delay), Timer::PersistRetry(batch));
    }

    /// Re-emits a failed batch. Its events get fresh sequence numbers: later batches may
    /// have committed higher ones meanwhile, and the outbox must stay in seq order for
    /// pull-API readers (`after=<seq>`) not to miss an event.
    pub(crate) fn retry_batch(&mut self, _now: Time, batch: BatchId) {
        let Some(mut pending) = self.batches.remove(&batch) else {
            return;
        };
        let mut renumbered: Vec<(u64, u64)> = Vec::new();
        for op in pending.ops.iter_mut() {
            if let StoreOp::InsertEvent(e) = op {
                let seq = self.next_seq;
                self.next_seq += 1;
                renumbered.push((e.seq, seq));
                e.payload = std::sync::Arc::from(crate::events::with_seq(&e.payload, seq));
                e.seq = seq;
            }
        }
        let new_seq = |old: u64| renumbered.iter().find(|(o, _)| *o == old).map(|(_, n)| *n);
        for op in pending.ops.iter_mut() {
            if let StoreOp::UpsertWebhookDelivery(d) = op
                && let Some(n) = new_seq(d.event_seq)
            {
                d.event_seq = n;
            }
        }
        for action in pending.on_ack.iter_mut() {
            if let AckAction::Events(events) = action {
                for (e, rows) in events.iter_mut() {
                    if let Some(n) = new_seq(e.seq) {
                        e.payload = std::sync::Arc::from(crate::events::with_seq(&e.payload, n));
                        e.seq = n;
                        for r in rows.iter_mut() {
                            r.event_seq = n;
                        }
                    }
                }
            }
        }
        self.emit(Output::Persist {
            batch,
            ops: pending.ops.clone(),
        });
        self.batches.insert(batch, pending);
    }
}
