//! Helpers for the end-to-end tests.

pub mod daemon;
pub mod python;
