//! `[dkim]` in the config file: on by default, per-domain overrides. Checked at start; a
//! bad setting is named (`dkim.domains.example.com.algorithms`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::keys::{Alg, valid_selector};

/// Headers signed when present (From is also over-signed). List-Unsubscribe-Post is
/// included because one-click unsubscribe (RFC 8058) requires it to be signed.
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Reply-To",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDkim {
    enabled: Option<bool>,
    algorithms: Option<Vec<String>>,
    headers: Option<Vec<String>>,
    #[serde(default)]
    domains: BTreeMap<String, FileDkimDomain>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDkimDomain {
    enabled: Option<bool>,
    algorithms: Option<Vec<String>>,
    /// Base name for keys created without one (instead of `outpost` + YYYYMM).
    selector: Option<String>,
    headers: Option<Vec<String>>,
}

/// What applies to one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub enabled: bool,
    pub algorithms: Vec<Alg>,
    pub headers: Vec<String>,
    pub selector: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimSettings {
    default: Policy,
    domains: BTreeMap<String, Policy>,
}

impl Default for DkimSettings {
    fn default() -> Self {
        DkimSettings {
            default: Policy {
                enabled: true,
                algorithms: Alg::ALL.to_vec(),
                headers: DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect(),
                selector: None,
            },
            domains: BTreeMap::new(),
        }
    }
}

/// (setting, reason)
pub type SettingProblem = (String, String);

fn problem(setting: &str, reason: impl Into<String>) -> SettingProblem {
    (setting.to_string(), reason.into())
}

fn algorithms(setting: &str, names: &[String]) -> Result<Vec<Alg>, SettingProblem> {
    let mut out = Vec::new();
    for n in names {
        let a = Alg::parse(n).ok_or_else(|| {
            problem(
                setting,
                format!("unknown algorithm {n:?} (rsa-sha256, ed25519-sha256)"),
            )
        })?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    // Not every receiver verifies Ed25519 yet (RFC 8463 is recent): RSA always signs.
    if !out.contains(&Alg::Rsa) {
        return Err(problem(setting, "must include rsa-sha256"));
    }
    out.sort();
    Ok(out)
}

fn headers(setting: &str, names: &[String]) -> Result<Vec<String>, SettingProblem> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let ok = !n.is_empty() && n.bytes().all(|b| (33..=126).contains(&b) && b != b':');
        if !ok {
            return Err(problem(setting, format!("{n:?} is not a header name")));
        }
        if n.eq_ignore_ascii_case("dkim-signature") {
            return Err(problem(setting, "DKIM-Signature cannot be signed"));
        }
        if !out.iter().any(|h| h.eq_ignore_ascii_case(n)) {
            out.push(n.clone());
        }
    }
    // RFC 6376 5.4: the From field MUST be signed.
    if !out.iter().any(|h| h.eq_ignore_ascii_case("from")) {
        return Err(problem(setting, "must include From"));
    }
    Ok(out)
}

impl FileDkim {
    pub fn into_settings(self) -> Result<DkimSettings, SettingProblem> {
        let mut s = DkimSettings::default();
        if let Some(e) = self.enabled {
            s.default.enabled = e;
        }
        if let Some(a) = &self.algorithms {
            s.default.algorithms = algorithms("dkim.algorithms", a)?;
        }
        if let Some(h) = &self.headers {
            s.default.headers = headers("dkim.headers", h)?;
        }
        for (domain, d) in self.domains {
            let key = domain.trim_end_matches('.').to_ascii_lowercase();
            let at = format!("dkim.domains.{domain}");
            let valid_domain = !key.is_empty()
                && key.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !valid_domain {
                return Err(problem(&at, "must be an ASCII (A-label) domain"));
            }
            let mut p = s.default.clone();
            if let Some(e) = d.enabled {
                p.enabled = e;
            }
            if let Some(a) = &d.algorithms {
                p.algorithms = algorithms(&format!("{at}.algorithms"), a)?;
            }
            if let Some(h) = &d.headers {
                p.headers = headers(&format!("{at}.headers"), h)?;
            }
            if let Some(sel) = d.selector {
                if !valid_selector(&sel) {
                    return Err(problem(
                        &format!("{at}.selector"),
                        "must be lowercase letters, digits and '-' (DNS labels)",
                    ));
                }
                p.selector = Some(sel);
            }
            s.domains.insert(key, p);
        }
        Ok(s)
    }
}

impl DkimSettings {
    pub fn for_domain(&self, domain: &str) -> &Policy {
        self.domains.get(domain).unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<DkimSettings, SettingProblem> {
        toml::from_str::<FileDkim>(t)
            .map_err(|e| problem("toml", e.to_string()))?
            .into_settings()
    }

    #[test]
    fn defaults_and_overrides() {
        let s = parse(
            "enabled = true\n[domains.\"Example.com\"]\nenabled = false\n\
             [domains.\"b.test\"]\nalgorithms = [\"rsa-sha256\"]\nselector = \"mail\"\n",
        )
        .expect("valid");
        assert!(s.for_domain("other.test").enabled);
        assert_eq!(s.for_domain("other.test").algorithms, Alg::ALL.to_vec());
        assert!(!s.for_domain("example.com").enabled);
        assert_eq!(s.for_domain("b.test").algorithms, vec![Alg::Rsa]);
        assert_eq!(s.for_domain("b.test").selector.as_deref(), Some("mail"));
    }

    #[test]
    fn bad_settings_are_named() {
        let cases = [
            ("algorithms = [\"ed25519-sha256\"]", "dkim.algorithms"),
            (
                "[domains.\"a.test\"]\nalgorithms = [\"rsa-sha1\"]",
                "dkim.domains.a.test.algorithms",
            ),
            (
                "[domains.\"a.test\"]\nheaders = [\"To\"]",
                "dkim.domains.a.test.headers",
            ),
            ("headers = [\"From\", \"Bad:Name\"]", "dkim.headers"),
            (
                "[domains.\"a.test\"]\nselector = \"../x\"",
                "dkim.domains.a.test.selector",
            ),
        ];
        for (text, setting) in cases {
            assert_eq!(
                parse(text).map_err(|e| e.0),
                Err(setting.to_string()),
                "{text}"
            );
        }
    }
}
