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
                AckAction::DeleteSpool(message) => self.emit(Output::DeleteSpool { message }),
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

    pub(crate) fn retry_batch(&mut self, _now: Time, batch: BatchId) {
        if let Some(pending) = self.batches.get(&batch) {
            let ops = pending.ops.clone();
            self.emit(Output::Persist { batch, ops });
        }
    }
}
