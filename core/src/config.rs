//! Engine configuration with DESIGN.md's defaults. The shell builds it from flags, env and
//! the config file and calls `validate` before starting.

use core::time::Duration;
use std::collections::BTreeMap;

use crate::classify::{CategoryPolicy, Classifier};

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug)]
pub struct Config {
    /// Our name in EHLO.
    pub hostname: String,
    /// Delays between attempts; after the last one, the last delay repeats.
    pub retry_schedule: Vec<Duration>,
    /// Retry jitter in per mille (100 = +-10%), from the engine's seeded RNG.
    pub retry_jitter_permille: u32,
    /// After this, a non-terminal recipient is `failed` with reason `expired`.
    pub max_age: Duration,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub breaker: BreakerConfig,
    pub destination: DestinationConfig,
    /// Per destination domain overrides (lowercase ASCII domain).
    pub domains: BTreeMap<String, DomainPolicy>,
    pub timeouts: SmtpTimeouts,
    /// Smarthost: all mail goes there instead of the recipients' MX hosts.
    pub relay: Option<Relay>,
    /// Port of remote MX hosts (25; tests use another).
    pub mx_port: u16,
    pub webhooks: WebhookConfig,
    pub spool_cleanup_interval: Duration,
    /// How long an Idempotency-Key is remembered.
    pub idempotency_window: Duration,
    /// How long a DNS answer is reused.
    pub dns_cache_ttl: Duration,
    pub classifier: Classifier,
    pub category_policy: CategoryPolicy,
    /// Allow webhook URLs on private or loopback addresses (tests).
    pub allow_private_webhooks: bool,
    /// Signs every accepted message once at intake (DKIM); `None`: nothing is signed.
    pub signer: Option<crate::signing::Signer>,
}

#[derive(Clone, Debug)]
pub struct BreakerConfig {
    /// Consecutive connection- or transaction-level failures that open the breaker.
    pub failure_threshold: u32,
    pub open_initial: Duration,
    pub open_max: Duration,
    /// Warm-up reads attempts this recent...
    pub warmup_window: Duration,
    /// ...and at most this many per domain.
    pub warmup_attempts: usize,
}

#[derive(Clone, Debug)]
pub struct DestinationConfig {
    pub max_connections: usize,
    pub max_messages_per_connection: u32,
    /// RCPT commands per transaction (RFC 5321 requires servers to take 100).
    pub max_recipients_per_transaction: usize,
    /// How long an idle connection waits for more mail before QUIT.
    pub idle_timeout: Duration,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainPolicy {
    /// Only deliver over TLS with a WebPKI-verified certificate; otherwise defer.
    pub require_tls: bool,
    pub max_connections: Option<usize>,
    /// New transactions per minute to this destination (shaping), if set.
    pub messages_per_minute: Option<u32>,
}

/// RFC 5321 4.5.3.2 timeouts, plus connect and TLS.
#[derive(Clone, Debug)]
pub struct SmtpTimeouts {
    pub connect: Duration,
    pub greeting: Duration,
    pub ehlo: Duration,
    pub starttls: Duration,
    pub mail: Duration,
    pub rcpt: Duration,
    pub data_init: Duration,
    /// Sending the body and waiting for the final reply (data block + data termination).
    pub data_end: Duration,
    pub rset: Duration,
    pub quit: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relay {
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Delays between POST attempts; after the last, `retry_every` until `give_up_after`.
    pub retry_schedule: Vec<Duration>,
    pub retry_every: Duration,
    pub give_up_after: Duration,
    pub timeout: Duration,
    pub max_in_flight_per_endpoint: usize,
    /// After a rotation, the old secret keeps signing this long.
    pub rotation_overlap: Duration,
}

impl Default for SmtpTimeouts {
    fn default() -> Self {
        SmtpTimeouts {
            connect: Duration::from_secs(30),
            greeting: 5 * MIN,
            ehlo: 5 * MIN,
            starttls: 2 * MIN,
            mail: 5 * MIN,
            rcpt: 5 * MIN,
            data_init: 2 * MIN,
            data_end: 10 * MIN,
            rset: 2 * MIN,
            quit: Duration::from_secs(30),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: "localhost".to_string(),
            retry_schedule: vec![
                MIN,
                5 * MIN,
                15 * MIN,
                30 * MIN,
                HOUR,
                2 * HOUR,
                4 * HOUR,
                8 * HOUR,
            ],
            retry_jitter_permille: 100,
            max_age: 7 * 24 * HOUR,
            max_message_size: 10 * 1024 * 1024,
            max_recipients: 100,
            breaker: BreakerConfig {
                failure_threshold: 5,
                open_initial: 5 * MIN,
                open_max: HOUR,
                warmup_window: HOUR,
                warmup_attempts: 10,
            },
            destination: DestinationConfig {
                max_connections: 10,
                max_messages_per_connection: 100,
                max_recipients_per_transaction: 100,
                idle_timeout: Duration::from_secs(5),
            },
            domains: BTreeMap::new(),
            timeouts: SmtpTimeouts::default(),
            relay: None,
            mx_port: 25,
            webhooks: WebhookConfig {
                retry_schedule: vec![Duration::from_secs(30), MIN, 5 * MIN, 15 * MIN, HOUR],
                retry_every: 2 * HOUR,
                give_up_after: 3 * 24 * HOUR,
                timeout: Duration::from_secs(10),
                max_in_flight_per_endpoint: 4,
                rotation_overlap: 24 * HOUR,
            },
            spool_cleanup_interval: 5 * MIN,
            idempotency_window: 24 * HOUR,
            dns_cache_ttl: 5 * MIN,
            classifier: Classifier::default(),
            category_policy: CategoryPolicy::default(),
            allow_private_webhooks: false,
            signer: None,
        }
    }
}

/// A setting that cannot work, named.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{setting}`: {reason}")]
pub struct ConfigError {
    pub setting: String,
    pub reason: String,
}

fn bad(setting: &str, reason: &str) -> ConfigError {
    ConfigError {
        setting: setting.to_string(),
        reason: reason.to_string(),
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.hostname.is_empty()
            || !self
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(bad("hostname", "must be an ASCII host name"));
        }
        if self.retry_schedule.is_empty() || self.retry_schedule.iter().any(|d| d.is_zero()) {
            return Err(bad("retry_schedule", "needs at least one non-zero delay"));
        }
        if self.retry_jitter_permille >= 1000 {
            return Err(bad("retry_jitter", "must be below 100%"));
        }
        if self.max_age < MIN {
            return Err(bad("max_age", "must be at least one minute"));
        }
        if self.max_message_size < 1024 {
            return Err(bad("max_message_size", "must be at least 1 KiB"));
        }
        if self.max_recipients == 0 {
            return Err(bad("max_recipients", "must be at least 1"));
        }
        if self.breaker.failure_threshold == 0 {
            return Err(bad("breaker.failure_threshold", "must be at least 1"));
        }
        if self.breaker.open_initial.is_zero() || self.breaker.open_max < self.breaker.open_initial
        {
            return Err(bad(
                "breaker.open",
                "open_initial must be > 0 and <= open_max",
            ));
        }
        if self.destination.max_connections == 0 {
            return Err(bad("destination.max_connections", "must be at least 1"));
        }
        if self.destination.max_messages_per_connection == 0 {
            return Err(bad(
                "destination.max_messages_per_connection",
                "must be at least 1",
            ));
        }
        if self.destination.max_recipients_per_transaction == 0 {
            return Err(bad(
                "destination.max_recipients_per_transaction",
                "must be at least 1",
            ));
        }
        for (domain, p) in &self.domains {
            if p.max_connections == Some(0) {
                return Err(bad(
                    &format!("domains.{domain}.max_connections"),
                    "must be at least 1",
                ));
            }
            if p.messages_per_minute == Some(0) {
                return Err(bad(
                    &format!("domains.{domain}.messages_per_minute"),
                    "must be at least 1",
                ));
            }
        }
        if let Some(r) = &self.relay
            && (r.host.is_empty() || r.port == 0)
        {
            return Err(bad("relay", "must be HOST:PORT"));
        }
        if self.mx_port == 0 {
            return Err(bad("mx_port", "must be a port number"));
        }
        if self.webhooks.retry_schedule.is_empty() || self.webhooks.retry_every.is_zero() {
            return Err(bad("webhooks.retry_schedule", "needs non-zero delays"));
        }
        if self.webhooks.max_in_flight_per_endpoint == 0 {
            return Err(bad(
                "webhooks.max_in_flight_per_endpoint",
                "must be at least 1",
            ));
        }
        if self.webhooks.timeout.is_zero() {
            return Err(bad("webhooks.timeout", "must be > 0"));
        }
        if self.spool_cleanup_interval.is_zero() {
            return Err(bad("spool_cleanup_interval", "must be > 0"));
        }
        Ok(())
    }

    pub fn domain_policy(&self, domain: &str) -> DomainPolicy {
        self.domains.get(domain).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_settings_are_named() {
        assert_eq!(Config::default().validate(), Ok(()));
        let mut c = Config::default();
        c.retry_schedule.clear();
        assert_eq!(
            c.validate().map_err(|e| e.setting),
            Err("retry_schedule".to_string())
        );
        let mut c = Config::default();
        c.domains.insert(
            "example.com".into(),
            DomainPolicy {
                max_connections: Some(0),
                ..Default::default()
            },
        );
        let e = c
            .validate()
            .err()
            .unwrap_or_else(|| bad("none", "no error"));
        assert!(
            e.to_string()
                .contains("domains.example.com.max_connections"),
            "{e}"
        );
    }
}
