//! The engine: one value owning all delivery state (PLACEHOLDER body; the public surface
//! below is the contract).
#![allow(dead_code, unused_variables)]

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::io::{Input, Output};
use crate::time::Time;

pub struct Engine {
    config: Config,
    outputs: VecDeque<Output>,
}

/// A destination's circuit breaker, for `GET /v1/admin/breakers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerView {
    pub domain: String,
    /// `closed`, `open` or `half_open`.
    pub state: String,
    pub consecutive_failures: u32,
    pub opened_at: Option<Time>,
    pub next_probe_at: Option<Time>,
    pub last_failure: Option<String>,
    /// Forced by an operator (stays until forced otherwise).
    pub forced: bool,
    /// e.g. "opened at 2026-11-24T10:00:00Z after 5 failures: last reply 421 ...; next
    /// probe at ...".
    pub explanation: String,
}

/// Queue depth of one destination, for `GET /v1/admin/queue`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueView {
    pub domain: String,
    pub queued: u64,
    pub deferred: u64,
    pub sending: u64,
    pub oldest_created_at: Option<Time>,
    pub next_attempt_at: Option<Time>,
    pub connections: u64,
}

impl Engine {
    pub fn new(config: Config, seed: u64) -> Engine {
        Engine {
            config,
            outputs: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn handle(&mut self, now: Time, input: Input) {}

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        None
    }

    pub fn breakers(&self, now: Time) -> Vec<BreakerView> {
        Vec::new()
    }

    pub fn queue(&self) -> Vec<QueueView> {
        Vec::new()
    }

    /// Pending (non-terminal) recipients held.
    pub fn pending_recipients(&self) -> usize {
        0
    }
}
