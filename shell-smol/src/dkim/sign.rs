//! The DKIM signer the core calls at intake (`outpost_core::signing::MessageSigner`):
//! relaxed/relaxed, rsa-sha256 always plus ed25519-sha256 (RFC 8463 dual signing) with
//! every active selector of the tenant's domain.

use mail_auth::common::crypto::{Algorithm, DkimKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};
use outpost_core::signing::MessageSigner;

use super::keys::{Alg, KeyStore};
use super::settings::DkimSettings;

/// Signs with the keys in the store, per the domain's settings.
#[derive(Debug, Clone)]
pub struct Signer {
    keys: KeyStore,
    settings: DkimSettings,
}

impl Signer {
    pub fn new(keys: KeyStore, settings: DkimSettings) -> Signer {
        Signer { keys, settings }
    }
}

/// mail-auth's signer takes its key by value; a reference lets one loaded key sign every
/// message (building the signer per message so `h=` lists only the headers present).
struct KeyRef<'a>(&'a DkimKey);

impl SigningKey for KeyRef<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

impl MessageSigner for Signer {
    fn sign(&self, tenant_domain: &str, message: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let policy = self.settings.for_domain(tenant_domain);
        if !policy.enabled {
            return Ok(None);
        }
        let keys: Vec<_> = self
            .keys
            .keys(tenant_domain)
            .into_iter()
            .filter(|k| policy.algorithms.contains(&k.alg))
            .collect();
        if keys.is_empty() {
            // No key yet: the domain is not signed (signing starts once a key exists).
            return Ok(None);
        }
        if !keys.iter().any(|k| k.alg == Alg::Rsa) {
            return Err(format!(
                "{tenant_domain} has no active rsa-sha256 key (rsa-sha256 always signs)"
            ));
        }
        let present = header_names(message);
        let mut h: Vec<String> = policy
            .headers
            .iter()
            .filter(|name| present.iter().any(|p| p.eq_ignore_ascii_case(name)))
            .cloned()
            .collect();
        if !h.iter().any(|n| n.eq_ignore_ascii_case("from")) {
            return Err("the message has no From header".into());
        }
        // Over-sign From: the extra entry matches no instance, so a second From added in
        // transit breaks the signature (RFC 6376 8.15).
        h.push("From".to_string());
        let mut out = Vec::new();
        // RSA first: a verifier that stops at the first signature it understands meets the
        // one everybody understands.
        let mut ordered = keys;
        ordered.sort_by_key(|k| k.alg);
        for key in ordered {
            let signature = DkimSigner::from_key(KeyRef(&key.private))
                .domain(tenant_domain)
                .selector(key.selector.clone())
                .headers(h.iter().cloned())
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed)
                .sign(message)
                // mail-auth's errors name the failure, never key bytes.
                .map_err(|e| format!("{} selector {}: {e}", key.alg.name(), key.selector))?;
            out.extend_from_slice(signature.to_header().as_bytes());
        }
        Ok(Some(out))
    }
}

/// Names of the header fields of a CRLF message (up to the first empty line).
fn header_names(message: &[u8]) -> Vec<&str> {
    let mut names = Vec::new();
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':')
            && let Ok(name) = std::str::from_utf8(&line[..colon])
        {
            names.push(name.trim_end());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_stop_at_the_body() {
        let m = b"From: a@b\r\nSubject: x\r\n y\r\nTo: c@d\r\n\r\nCc: not a header\r\n";
        assert_eq!(header_names(m), vec!["From", "Subject", "To"]);
    }
}
