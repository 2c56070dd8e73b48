//! The API's view of the engine. The daemon implements it over its engine loop; tests use
//! a fake.

use outpost_core::engine::{BreakerView, QueueView};
use outpost_core::io::{AdminCommand, AdminError, AdminReply, Receipt, Submission, SubmitError};

pub trait EngineGateway: Send + Sync {
    /// Blocking (called from HTTP worker threads): submit and wait for the engine's answer.
    /// The gateway assigns the RequestId (overwrites `submission.request`).
    fn submit(&self, submission: Submission) -> Result<Receipt, SubmitError>;
    /// Blocking: run a state-changing command and wait for the engine's answer.
    fn admin(&self, command: AdminCommand) -> Result<AdminReply, AdminError>;
    fn breakers(&self) -> Vec<BreakerView>;
    fn queue(&self) -> Vec<QueueView>;
    /// False while shutting down (HTTP answers 503).
    fn accepting(&self) -> bool;
}
