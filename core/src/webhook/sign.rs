//! Standard Webhooks signing (<https://www.standardwebhooks.com/>).
//!
//! The signed content is `"{webhook-id}.{webhook-timestamp}.{body}"`; the signature is
//! `v1,` + standard base64 of HMAC-SHA256 over it with the endpoint's key. Several
//! signatures (during a secret rotation) are space-separated in `webhook-signature`.
//! Users see a key as `whsec_` + standard base64 of the key bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::model::WebhookSecret;
use crate::time::Time;

/// The prefix of a secret as shown to users.
pub const SECRET_PREFIX: &str = "whsec_";

/// Shortest signing key accepted (the specification asks for 24 to 64 bytes).
pub const MIN_SECRET_LEN: usize = 24;
/// Longest signing key accepted.
pub const MAX_SECRET_LEN: usize = 64;

/// A `whsec_...` string that is not a valid secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret starts with `whsec_`")]
    MissingPrefix,
    #[error("a webhook secret is `whsec_` followed by standard base64")]
    NotBase64,
    #[error("a webhook secret key has {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes")]
    BadLength,
}

/// `whsec_` + standard base64 (with padding) of the key bytes.
pub fn format_secret(key: &[u8]) -> String {
    let mut s = String::with_capacity(SECRET_PREFIX.len() + key.len().div_ceil(3) * 4);
    s.push_str(SECRET_PREFIX);
    STANDARD.encode_string(key, &mut s);
    s
}

/// The key bytes of a `whsec_...` secret.
pub fn parse_secret(s: &str) -> Result<Vec<u8>, SecretError> {
    let b64 = s
        .trim()
        .strip_prefix(SECRET_PREFIX)
        .ok_or(SecretError::MissingPrefix)?;
    let key = STANDARD.decode(b64).map_err(|_| SecretError::NotBase64)?;
    check_key(&key)?;
    Ok(key)
}

/// Whether `key` has an acceptable length for a signing key.
pub fn check_key(key: &[u8]) -> Result<(), SecretError> {
    if (MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&key.len()) {
        Ok(())
    } else {
        Err(SecretError::BadLength)
    }
}

/// One signature: `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &str) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(3 + 44);
    out.push_str("v1,");
    STANDARD.encode_string(tag, &mut out);
    out
}

/// The secrets that still sign at `now` (no expiry, or an expiry after `now`), newest
/// first.
pub fn live_secrets(secrets: &[WebhookSecret], now: Time) -> Vec<&WebhookSecret> {
    let mut live: Vec<&WebhookSecret> = secrets
        .iter()
        .filter(|s| s.expires_at.is_none_or(|e| e > now))
        .collect();
    // Stable: equal creation times keep the record's (newest-first) order.
    live.sort_by_key(|s| core::cmp::Reverse(s.created_at));
    live
}

/// The `webhook-signature` header value: one `v1,...` per live secret, newest first,
/// space-separated. Empty if no secret is live.
pub fn signature_header(
    secrets: &[WebhookSecret],
    now: Time,
    id: &str,
    timestamp: u64,
    body: &str,
) -> String {
    live_secrets(secrets, now)
        .into_iter()
        .map(|s| sign(&s.key, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's published test vector.
    #[test]
    fn spec_test_vector() {
        let key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert!(key.is_ok(), "{key:?}");
        let key = key.unwrap_or_default();
        assert_eq!(key.len(), 24);
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(
            format_secret(&key),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        );
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_refused() {
        let key: Vec<u8> = (0u8..32).collect();
        assert_eq!(parse_secret(&format_secret(&key)), Ok(key));
        assert_eq!(
            parse_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::MissingPrefix)
        );
        assert_eq!(
            parse_secret("whsec_not base64!"),
            Err(SecretError::NotBase64)
        );
        assert_eq!(parse_secret("whsec_c2hvcnQ="), Err(SecretError::BadLength));
        assert_eq!(parse_secret("whsec_"), Err(SecretError::BadLength));
    }

    #[test]
    fn header_lists_live_secrets_newest_first() {
        let old = WebhookSecret {
            key: vec![1; 32],
            created_at: Time(1_000),
            expires_at: Some(Time(10_000)),
        };
        let new = WebhookSecret {
            key: vec![2; 32],
            created_at: Time(5_000),
            expires_at: None,
        };
        let secrets = vec![old.clone(), new.clone()];
        let h = signature_header(&secrets, Time(9_999), "evt_x", 9, "{}");
        assert_eq!(
            h,
            format!(
                "{} {}",
                sign(&new.key, "evt_x", 9, "{}"),
                sign(&old.key, "evt_x", 9, "{}")
            )
        );
        let h = signature_header(&secrets, Time(10_000), "evt_x", 10, "{}");
        assert_eq!(h, sign(&new.key, "evt_x", 10, "{}"));
    }
}
