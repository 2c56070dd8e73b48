//! The HTTP API's way into the engine loop (`EngineGateway`), over the loop's channel.
//! Called from HTTP worker threads: every call blocks until the loop answers.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_lite::FutureExt;
use outpost_core::engine::{BreakerView, QueueView};
use outpost_core::io::{
    AdminCommand, AdminError, AdminReply, Receipt, Submission, SubmitError, SubmitErrorKind,
};

use crate::api::EngineGateway;
use crate::lazy_timer::LazyTimer;
use crate::runtime::{LoopHandle, Msg};

/// How long an HTTP request waits for the engine (a store write included).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Gateway {
    handle: LoopHandle,
}

impl Gateway {
    pub fn new(handle: LoopHandle) -> Gateway {
        Gateway { handle }
    }

    /// Sends `make(reply)` to the loop and waits for the reply; `None` if the loop is gone
    /// or does not answer in time.
    fn ask<T: Send + 'static>(
        &self,
        make: impl FnOnce(async_channel::Sender<T>) -> Msg,
    ) -> Option<T> {
        thread_local! {
            /// One timer per calling thread, kept across calls (see `LazyTimer`).
            static TIMER: std::cell::RefCell<LazyTimer> = std::cell::RefCell::default();
        }
        let (tx, rx) = async_channel::bounded(1);
        self.handle.tx.send_blocking(make(tx)).ok()?;
        let deadline = std::time::Instant::now() + ANSWER_TIMEOUT;
        // A plain park/unpark wait: this thread does not take over smol's reactor.
        TIMER.with(|timer| match timer.try_borrow_mut() {
            Ok(mut timer) => {
                futures_lite::future::block_on(async { rx.recv().await.ok() }.or(async {
                    timer.until(deadline).await;
                    None
                }))
            }
            // Re-entered (cannot happen: nothing here calls back): an own timer.
            Err(_) => futures_lite::future::block_on(async { rx.recv().await.ok() }.or(async {
                async_io::Timer::at(deadline).await;
                None
            })),
        })
    }
}

impl Gateway {
    /// What `/metrics` shows (`None` if the loop does not answer).
    pub fn metrics(&self) -> Option<crate::metrics::Snapshot> {
        self.ask(Msg::Metrics)
    }
}

fn unavailable() -> SubmitError {
    SubmitError::new(
        SubmitErrorKind::Unavailable,
        "unavailable",
        "the server cannot take messages right now; try again",
    )
}

/// Submits from async code (the SMTP listener): the same as `Gateway::submit` without a
/// blocking thread in between. `timer` bounds the wait (`ANSWER_TIMEOUT`).
pub async fn submit_async(
    handle: &LoopHandle,
    submission: Submission,
    timer: &mut LazyTimer,
) -> Result<Receipt, SubmitError> {
    if !handle.accepting.load(Ordering::SeqCst) {
        return Err(unavailable());
    }
    let (tx, rx) = async_channel::bounded(1);
    if handle.tx.send(Msg::Submit(submission, tx)).await.is_err() {
        return Err(unavailable());
    }
    let deadline = std::time::Instant::now() + ANSWER_TIMEOUT;
    async { rx.recv().await.ok() }
        .or(async {
            timer.until(deadline).await;
            None
        })
        .await
        .unwrap_or_else(|| Err(unavailable()))
}

impl EngineGateway for Gateway {
    fn submit(&self, submission: Submission) -> Result<Receipt, SubmitError> {
        if !self.accepting() {
            return Err(unavailable());
        }
        self.ask(|reply| Msg::Submit(submission, reply))
            .unwrap_or_else(|| Err(unavailable()))
    }

    fn admin(&self, command: AdminCommand) -> Result<AdminReply, AdminError> {
        self.ask(|reply| Msg::Admin(command, reply))
            .unwrap_or_else(|| Err(AdminError::Unavailable("the engine did not answer".into())))
    }

    fn breakers(&self) -> Vec<BreakerView> {
        self.ask(Msg::Breakers).unwrap_or_default()
    }

    fn queue(&self) -> Vec<QueueView> {
        self.ask(Msg::Queue).unwrap_or_default()
    }

    fn accepting(&self) -> bool {
        self.handle.accepting.load(Ordering::SeqCst)
    }
}
