//! outpost-core: the pure, deterministic delivery core of outpost (sans-IO).
//!
//! One [`Engine`] owns all delivery state. The shell feeds it [`Input`]s with the current
//! [`Time`] and carries out the [`Output`]s it drains with `poll_output`; `poll_timeout`
//! says when to call back with [`Input::Tick`]. The core does no I/O, reads no clock, env
//! or global RNG: same seed and same inputs give byte-identical outputs.

pub mod classify;
pub mod config;
pub mod engine;
pub mod ids;
pub mod intake;
pub mod io;
pub mod model;
pub mod sanitize;
pub mod signing;
pub mod smtp;
pub mod status;
pub mod time;
pub mod webhook;

pub use config::Config;
pub use engine::Engine;
pub use ids::*;
pub use io::{Input, Output};
pub use time::Time;
pub mod breaker;
pub mod events;
pub mod retry;
pub mod routing;
pub mod spool;
