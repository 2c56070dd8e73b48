//! Helpers for the end-to-end tests.

pub mod daemon;
pub mod delivery_daemon;
pub mod dnsmasq;
pub mod pki;
pub mod python;
pub mod sinks;
