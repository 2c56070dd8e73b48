//! The DNS records a tenant publishes (DKIM, SPF, DMARC) and how the published ones compare
//! (`missing`, `mismatch`, `ok`; `unknown` when the lookup itself failed). Pure: the caller
//! does the TXT lookups.

use std::net::IpAddr;

use outpost_core::io::DnsError;
use serde::Serialize;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Missing,
    Mismatch,
    /// The lookup failed (SERVFAIL, timeout): nothing can be said.
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::Mismatch => "mismatch",
            Status::Unknown => "unknown",
        }
    }
}

/// How a published record compares to what outpost suggests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: Status,
    /// The TXT values found (only those relevant to the check).
    pub found: Vec<String>,
    pub detail: Option<String>,
}

fn verdict(status: Status, found: Vec<String>, detail: Option<String>) -> Verdict {
    Verdict {
        status,
        found,
        detail,
    }
}

/// Not found, or a failed lookup.
fn no_answer(e: &DnsError) -> Verdict {
    match e {
        DnsError::NxDomain | DnsError::NoRecords => verdict(Status::Missing, Vec::new(), None),
        other => verdict(
            Status::Unknown,
            Vec::new(),
            Some(format!("DNS lookup failed: {other}")),
        ),
    }
}

/// `tag=value` pairs of a DKIM/DMARC tag list (RFC 6376 3.2), names lowercased.
fn tags(record: &str) -> Vec<(String, String)> {
    record
        .split(';')
        .filter_map(|t| {
            let (k, v) = t.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect()
}

fn tag<'a>(tags: &'a [(String, String)], name: &str) -> Option<&'a str> {
    tags.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Compares the TXT records at `<selector>._domainkey.<domain>` with the key.
pub fn check_dkim(key_type: &str, public: &str, answer: &Result<Vec<String>, DnsError>) -> Verdict {
    let found = match answer {
        Ok(f) if !f.is_empty() => f.clone(),
        Ok(_) => return verdict(Status::Missing, Vec::new(), None),
        Err(e) => return no_answer(e),
    };
    if found.len() > 1 {
        return verdict(
            Status::Mismatch,
            found,
            Some("several TXT records at this name; publish exactly one".into()),
        );
    }
    let t = tags(&found[0]);
    let detail = if tag(&t, "v").is_some_and(|v| v != "DKIM1") {
        Some("v= must be DKIM1".to_string())
    } else if !tag(&t, "k").unwrap_or("rsa").eq_ignore_ascii_case(key_type) {
        Some(format!("k= must be {key_type}"))
    } else {
        // Whitespace inside p= is allowed (FWS) and TXT strings may be split anywhere.
        let p: Option<String> =
            tag(&t, "p").map(|p| p.chars().filter(|c| !c.is_whitespace()).collect());
        match p.as_deref() {
            None => Some("no p= tag".to_string()),
            Some("") => Some("p= is empty (the key is revoked)".to_string()),
            Some(p) if p != public => Some("p= holds another public key".to_string()),
            Some(_) => None,
        }
    };
    match detail {
        None => verdict(Status::Ok, found, None),
        Some(d) => verdict(Status::Mismatch, found, Some(d)),
    }
}

/// `v=spf1 ip4:... ip6:... ~all`, or `None` without `--public-ip`.
pub fn spf_suggestion(ips: &[IpAddr]) -> Option<String> {
    if ips.is_empty() {
        return None;
    }
    let mut s = String::from("v=spf1");
    for ip in ips {
        match ip {
            IpAddr::V4(v4) => s.push_str(&format!(" ip4:{v4}")),
            IpAddr::V6(v6) => s.push_str(&format!(" ip6:{v6}")),
        }
    }
    s.push_str(" ~all");
    Some(s)
}

/// Whether an `ip4:`/`ip6:` mechanism (with optional prefix) covers `ip`.
fn covers(mechanism: &str, ip: IpAddr) -> bool {
    let m = mechanism.trim_start_matches(['+', '?', '~']);
    let (net, len) = match m.split_once('/') {
        Some((n, l)) => (n, l.parse::<u32>().ok()),
        None => (m, None),
    };
    let net = match (net.strip_prefix("ip4:"), net.strip_prefix("ip6:")) {
        (Some(v4), _) => v4.parse::<IpAddr>().ok(),
        (_, Some(v6)) => v6.parse::<IpAddr>().ok(),
        _ => None,
    };
    match (net, ip) {
        (Some(IpAddr::V4(n)), IpAddr::V4(a)) => {
            let len = len.unwrap_or(32).min(32);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (Some(IpAddr::V6(n)), IpAddr::V6(a)) => {
            let len = len.unwrap_or(128).min(128);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Checks the domain's SPF record against our public addresses.
pub fn check_spf(ips: &[IpAddr], answer: &Result<Vec<String>, DnsError>) -> Verdict {
    let all = match answer {
        Ok(f) => f,
        Err(e) => return no_answer(e),
    };
    let spf: Vec<String> = all
        .iter()
        .filter(|r| {
            let r = r.trim_start().to_ascii_lowercase();
            r == "v=spf1" || r.starts_with("v=spf1 ")
        })
        .cloned()
        .collect();
    match spf.len() {
        0 => return verdict(Status::Missing, spf, None),
        1 => {}
        _ => {
            return verdict(
                Status::Mismatch,
                spf,
                Some("several SPF records (a permanent error, RFC 7208 4.5); merge them".into()),
            );
        }
    }
    let terms: Vec<String> = spf[0]
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let missing: Vec<String> = ips
        .iter()
        .filter(|ip| !terms.iter().any(|t| covers(t, **ip)))
        .map(ToString::to_string)
        .collect();
    if missing.is_empty() {
        verdict(Status::Ok, spf, None)
    } else {
        // include:/a/mx are not followed: what is not listed directly is reported.
        verdict(
            Status::Mismatch,
            spf,
            Some(format!(
                "not listed as ip4:/ip6: {} (include:, a and mx are not followed)",
                missing.join(", ")
            )),
        )
    }
}

pub fn dmarc_suggestion(domain: &str) -> String {
    format!("v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}")
}

/// Checks `_dmarc.<domain>`: any valid DMARC record passes (the policy is the owner's).
pub fn check_dmarc(answer: &Result<Vec<String>, DnsError>) -> Verdict {
    let all = match answer {
        Ok(f) => f,
        Err(e) => return no_answer(e),
    };
    let dmarc: Vec<String> = all
        .iter()
        .filter(|r| {
            tags(r)
                .first()
                .is_some_and(|(k, v)| k == "v" && v == "DMARC1")
        })
        .cloned()
        .collect();
    match dmarc.len() {
        0 if all.is_empty() => verdict(Status::Missing, dmarc, None),
        0 => verdict(
            Status::Mismatch,
            all.clone(),
            Some("no record starts with v=DMARC1".into()),
        ),
        1 => {
            let t = tags(&dmarc[0]);
            match tag(&t, "p") {
                Some("none" | "quarantine" | "reject") => verdict(Status::Ok, dmarc, None),
                _ => verdict(
                    Status::Mismatch,
                    dmarc,
                    Some("p= must be none, quarantine or reject".into()),
                ),
            }
        }
        _ => verdict(
            Status::Mismatch,
            dmarc,
            Some("several DMARC records; receivers ignore them all (RFC 7489 6.6.3)".into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(v: &[&str]) -> Result<Vec<String>, DnsError> {
        Ok(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn dkim_records() {
        let s = |a| check_dkim("rsa", "QUJD", &a).status;
        assert_eq!(s(found(&["v=DKIM1; k=rsa; p=QUJD"])), Status::Ok);
        assert_eq!(s(found(&["v=DKIM1; p=QU JD"])), Status::Ok);
        assert_eq!(s(found(&["v=DKIM1; k=rsa; p=QUJE"])), Status::Mismatch);
        assert_eq!(s(found(&["v=DKIM1; k=ed25519; p=QUJD"])), Status::Mismatch);
        assert_eq!(s(found(&["v=DKIM1; k=rsa; p="])), Status::Mismatch);
        assert_eq!(s(found(&["p=QUJD", "p=QUJD"])), Status::Mismatch);
        assert_eq!(s(Err(DnsError::NxDomain)), Status::Missing);
        assert_eq!(s(Err(DnsError::NoRecords)), Status::Missing);
        assert_eq!(s(Err(DnsError::Timeout)), Status::Unknown);
    }

    #[test]
    fn spf_records() {
        let ips: Vec<IpAddr> = vec![
            "192.0.2.10".parse().expect("ip"),
            "2001:db8::1".parse().expect("ip"),
        ];
        assert_eq!(
            spf_suggestion(&ips).as_deref(),
            Some("v=spf1 ip4:192.0.2.10 ip6:2001:db8::1 ~all")
        );
        let s = |a| check_spf(&ips, &a).status;
        assert_eq!(
            s(found(&["v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"])),
            Status::Ok
        );
        assert_eq!(
            s(found(&[
                "google-site-verification=x",
                "v=spf1 ip4:192.0.2.10 ip6:2001:db8::1 ~all"
            ])),
            Status::Ok
        );
        assert_eq!(s(found(&["v=spf1 ip4:192.0.2.11 ~all"])), Status::Mismatch);
        assert_eq!(s(found(&["v=spf1 -all", "v=spf1 ~all"])), Status::Mismatch);
        assert_eq!(s(found(&["something else"])), Status::Missing);
    }

    #[test]
    fn dmarc_records() {
        assert_eq!(
            dmarc_suggestion("example.com"),
            "v=DMARC1; p=none; rua=mailto:dmarc-reports@example.com"
        );
        assert_eq!(
            check_dmarc(&found(&["v=DMARC1; p=reject"])).status,
            Status::Ok
        );
        assert_eq!(
            check_dmarc(&found(&["v=DMARC1; p=maybe"])).status,
            Status::Mismatch
        );
        assert_eq!(check_dmarc(&found(&["v=spf1"])).status, Status::Mismatch);
        assert_eq!(
            check_dmarc(&Err(DnsError::NxDomain)).status,
            Status::Missing
        );
    }
}
