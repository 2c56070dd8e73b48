//! The DKIM signer the core calls at intake (`outpost_core::signing::MessageSigner`):
//! relaxed/relaxed, rsa-sha256 always plus ed25519-sha256 (RFC 8463 dual signing) with
//! every active selector of the tenant's domain.

use mail_auth::common::crypto::{Algorithm, CryptoError, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};
use outpost_core::signing::MessageSigner;

use super::keys::{Alg, Key, KeyStore, Private};
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
struct KeyRef<'a>(&'a Private);

impl SigningKey for KeyRef<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        match self.0 {
            Private::RingRsa(pair) => {
                // The signed data is the canonical headers plus the signature header (small).
                let mut data = Vec::new();
                input.write(&mut data);
                let mut sig = vec![0u8; pair.public().modulus_len()];
                pair.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &ring::rand::SystemRandom::new(),
                    &data,
                    &mut sig,
                )
                .map_err(|_| {
                    mail_auth::Error::Crypto(CryptoError::Library("RSA signing failed".into()))
                })?;
                Ok(sig)
            }
            Private::MailAuth(key) => key.sign(input),
        }
    }

    fn algorithm(&self) -> Algorithm {
        match self.0 {
            Private::RingRsa(_) => Algorithm::RsaSha256,
            Private::MailAuth(key) => key.algorithm(),
        }
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
            out.extend_from_slice(sign_one(&key, tenant_domain, &h, message)?.as_bytes());
        }
        Ok(Some(out))
    }
}

/// One `DKIM-Signature:` header line (folded, ending in CRLF) by `key` over `message`.
fn sign_one(key: &Key, domain: &str, h: &[String], message: &[u8]) -> Result<String, String> {
    let signature = DkimSigner::from_key(KeyRef(&key.private))
        .domain(domain)
        .selector(key.selector.clone())
        .headers(h.iter().cloned())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
        .sign(message)
        // mail-auth's errors name the failure, never key bytes.
        .map_err(|e| format!("{} selector {}: {e}", key.alg.name(), key.selector))?;
    Ok(signature.to_header())
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

    fn message(size: usize) -> Vec<u8> {
        let mut m = b"From: App <app@bench.test>\r\nTo: someone@dest.example\r\n\
            Subject: benchmark\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\n\
            Message-ID: <bench@bench.test>\r\nMIME-Version: 1.0\r\n\
            Content-Type: text/plain; charset=utf-8\r\n\r\n"
            .to_vec();
        while m.len() < size {
            m.extend_from_slice(
                b"The quick brown fox jumps over the lazy dog, again and again.\r\n",
            );
        }
        m
    }

    /// Signing cost per message (`cargo test -p outpost --bin outpost dkim_signing_cost
    /// -- --ignored --nocapture`). The crypto and mail-auth are optimized in the dev
    /// profile too (workspace Cargo.toml), so the figures are close to a release build.
    #[test]
    #[ignore = "benchmark: prints ns/message"]
    fn dkim_signing_cost() {
        let dir = std::env::temp_dir().join(format!("outpost-dkim-bench-{}", std::process::id()));
        let keys = KeyStore::open(&dir).expect("keys");
        let made = keys
            .generate("bench.test", "b", &Alg::ALL)
            .expect("generate");
        let signer = Signer::new(keys, DkimSettings::default());
        let h: Vec<String> = [
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "MIME-Version",
            "Content-Type",
            "From",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert!(
            made.iter()
                .any(|k| matches!(k.private, Private::RingRsa(_))),
            "generated RSA keys sign with ring"
        );
        // CPU time of this thread (ns), from the scheduler: wall time on a shared, loaded
        // machine mostly measures the other processes.
        let cpu = || -> u128 {
            std::fs::read_to_string("/proc/thread-self/schedstat")
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let measure = |label: &str, size: usize, f: &mut dyn FnMut()| {
            let n = 300u128;
            let (wall, c0) = (std::time::Instant::now(), cpu());
            for _ in 0..n {
                f();
            }
            let (wall, c) = (wall.elapsed().as_nanos() / n, (cpu() - c0) / n);
            println!(
                "{label:>15} {:>4} KB: {c:>9} ns CPU/message ({wall} ns wall)",
                size / 1024
            );
        };
        for size in [2 * 1024, 100 * 1024] {
            let m = message(size);
            for key in &made {
                measure(key.alg.name(), size, &mut || {
                    sign_one(key, "bench.test", &h, &m).expect("sign");
                });
            }
            measure("both (intake)", size, &mut || {
                signer.sign("bench.test", &m).expect("sign");
            });
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
