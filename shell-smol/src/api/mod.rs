//! HTTP API (placeholder)
