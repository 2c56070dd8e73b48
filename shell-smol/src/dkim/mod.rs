//! DKIM signing per sending domain and the DNS records a tenant publishes.
//!
//! - [`keys`]: private keys in `DATA/dkim/<domain>/` (0600), loaded at start.
//! - [`sign`]: the signer installed as the core's `Config::signer` (signs once at intake).
//! - [`records`]: the DKIM/SPF/DMARC records to publish and the check of what is published.
//! - [`settings`]: `[dkim]` in the config file.
//!
//! The API (`api/domains.rs`) and `outpost domains check` use [`Domains`].

pub mod keys;
pub mod records;
pub mod settings;
pub mod sign;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_core::Time;
use outpost_core::io::DnsError;
use serde_json::{Value, json};

use keys::{Key, KeyStore};
use records::Verdict;
use settings::DkimSettings;

/// Everything the domain routes need.
#[derive(Debug)]
pub struct Domains {
    pub keys: KeyStore,
    pub settings: DkimSettings,
    /// The resolver the checks use (`--dns`; `None`: the system's).
    pub dns_server: Option<SocketAddr>,
    /// `--public-ip`: the addresses outpost sends from, for the SPF suggestion.
    pub public_ips: Vec<IpAddr>,
}

/// How long one TXT lookup of a check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

fn time(t: SystemTime) -> Time {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Time(ms)
}

impl Domains {
    /// Loads the keys; the signer for the core.
    pub fn open(
        data_dir: &std::path::Path,
        settings: DkimSettings,
        dns_server: Option<SocketAddr>,
        public_ips: Vec<IpAddr>,
    ) -> Result<Arc<Domains>, keys::KeyError> {
        let keys = KeyStore::open(data_dir)?;
        Ok(Arc::new(Domains {
            keys,
            settings,
            dns_server,
            public_ips,
        }))
    }

    pub fn signer(&self) -> outpost_core::signing::Signer {
        outpost_core::signing::Signer::new(sign::Signer::new(
            self.keys.clone(),
            self.settings.clone(),
        ))
    }

    /// The base name for new keys: the domain's configured selector, else `outpost` and
    /// the year and month (`outpost202611`), so a rotation gets a fresh name.
    pub fn default_base(&self, domain: &str, now: SystemTime) -> String {
        if let Some(s) = &self.settings.for_domain(domain).selector {
            return s.clone();
        }
        let stamp = time(now).rfc3339();
        let yyyymm: String = stamp.chars().take(7).filter(char::is_ascii_digit).collect();
        format!("outpost{yyyymm}")
    }

    /// A new key as the API shows it on creation (no DNS check yet).
    pub fn key_json(&self, domain: &str, key: &Key) -> Value {
        let policy = self.settings.for_domain(domain);
        json!({
            "selector": key.selector,
            "algorithm": key.alg.name(),
            "bits": (key.bits > 0).then_some(key.bits),
            "created_at": time(key.created_at).rfc3339(),
            "signing": policy.enabled && policy.algorithms.contains(&key.alg),
            "record": {
                "type": "TXT",
                "name": format!("{}._domainkey.{domain}", key.selector),
                "value": key.dns_value(),
            },
        })
    }

    /// `GET /v1/domains/{domain}`: keys, the records to publish and what DNS has now.
    /// Blocks for the TXT lookups (a fresh resolver each time: a record published a
    /// minute ago must not hide behind a cached NXDOMAIN).
    pub fn report(&self, domain: &str) -> Value {
        let keys = self.keys.keys(domain);
        let policy = self.settings.for_domain(domain);
        let dns = crate::dns::Dns::with_timeout(self.dns_server, Some(CHECK_TIMEOUT));
        let lookup = |name: String| -> Result<Vec<String>, DnsError> {
            match &dns {
                Ok(d) => smol::block_on(d.txt(&name)),
                Err(e) => Err(DnsError::Other(e.clone())),
            }
        };
        let with_verdict = |mut v: Value, verdict: Verdict| {
            v["status"] = json!(verdict.status.as_str());
            v["found"] = json!(verdict.found);
            v["detail"] = json!(verdict.detail);
            v
        };
        let selectors: Vec<Value> = keys
            .iter()
            .map(|k| {
                let answer = lookup(format!("{}._domainkey.{domain}", k.selector));
                let verdict = records::check_dkim(k.alg.key_type(), &k.public, &answer);
                with_verdict(self.key_json(domain, k), verdict)
            })
            .collect();
        let spf_value = records::spf_suggestion(&self.public_ips);
        let spf = records::check_spf(&self.public_ips, &lookup(domain.to_string()));
        let spf = with_verdict(
            json!({
                "record": {"type": "TXT", "name": domain, "value": spf_value},
                "note": spf_value.is_none().then_some(
                    "start outpost with --public-ip to get an SPF suggestion; any SPF record counts as ok"
                ),
            }),
            spf,
        );
        let dmarc_name = format!("_dmarc.{domain}");
        let dmarc = with_verdict(
            json!({"record": {"type": "TXT", "name": dmarc_name, "value": records::dmarc_suggestion(domain)}}),
            records::check_dmarc(&lookup(dmarc_name.clone())),
        );
        json!({
            "domain": domain,
            "dkim": {
                "enabled": policy.enabled,
                "algorithms": policy.algorithms.iter().map(|a| a.name()).collect::<Vec<_>>(),
                "headers": policy.headers,
                "selectors": selectors,
            },
            "spf": spf,
            "dmarc": dmarc,
        })
    }
}
