//! Input checks the API does itself (the core validates submissions).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A tenant domain: lowercase ASCII labels (IDNA A-labels), 1..=63 bytes each, 253 total.
pub fn domain(s: &str) -> Option<String> {
    let d = s.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() || d.len() > 253 {
        return None;
    }
    let ok = d.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    ok.then_some(d)
}

/// An email address for the suppression list, normalized (lowercased).
pub fn address(s: &str) -> Option<String> {
    let a = s.trim();
    let (local, dom) = a.rsplit_once('@')?;
    if local.is_empty()
        || dom.is_empty()
        || a.len() > 320
        || a.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return None;
    }
    Some(a.to_lowercase())
}

/// An idempotency key: 1..=255 printable ASCII characters.
pub fn idempotency_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Why a webhook URL is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum UrlError {
    Malformed(&'static str),
    Private,
}

/// Checks a webhook URL: http(s), a host, no credentials; loopback/private/link-local
/// literal addresses and `localhost` refused unless `allow_private`. (Names are resolved
/// when posting: the sender must check the resolved addresses too.)
pub fn webhook_url(url: &str, allow_private: bool) -> Result<(), UrlError> {
    if url.len() > 2048 || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(UrlError::Malformed("invalid characters or too long"));
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or(UrlError::Malformed("missing scheme"))?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(UrlError::Malformed("scheme must be http or https"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(UrlError::Malformed("credentials in URLs are not allowed"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or(UrlError::Malformed("unterminated IPv6 address"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::Malformed("missing host"));
    }
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(UrlError::Malformed("invalid port"));
    }
    if allow_private {
        return Ok(());
    }
    let host_l = host.to_ascii_lowercase();
    let host_l = host_l.trim_end_matches('.');
    if host_l == "localhost" || host_l.ends_with(".localhost") {
        return Err(UrlError::Private);
    }
    if let Ok(ip) = host_l.parse::<IpAddr>()
        && !is_public(ip)
    {
        return Err(UrlError::Private);
    }
    Ok(())
}

/// False for loopback, private, link-local, unspecified, broadcast, CGNAT, documentation,
/// unique-local and IPv4-mapped non-public addresses.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let seg0 = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (seg0 & 0xfe00) == 0xfc00 // unique local
                || (seg0 & 0xffc0) == 0xfe80 // link local
                || v6 == Ipv6Addr::LOCALHOST)
        }
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert_eq!(domain("Example.COM").as_deref(), Some("example.com"));
        assert_eq!(
            domain("xn--bcher-kva.de.").as_deref(),
            Some("xn--bcher-kva.de")
        );
        assert_eq!(domain("-bad.com"), None);
        assert_eq!(domain("bad..com"), None);
        assert_eq!(domain("bü.de"), None);
        assert_eq!(domain(""), None);
    }

    #[test]
    fn webhook_urls() {
        assert_eq!(
            webhook_url("https://hooks.example.com/x?y=1", false),
            Ok(())
        );
        assert_eq!(
            webhook_url("http://127.0.0.1:9000/h", false),
            Err(UrlError::Private)
        );
        assert_eq!(
            webhook_url("http://[::1]:9000/h", false),
            Err(UrlError::Private)
        );
        assert_eq!(
            webhook_url("http://10.1.2.3/h", false),
            Err(UrlError::Private)
        );
        assert_eq!(
            webhook_url("http://192.168.1.1/h", false),
            Err(UrlError::Private)
        );
        assert_eq!(
            webhook_url("http://169.254.169.254/", false),
            Err(UrlError::Private)
        );
        assert_eq!(
            webhook_url("http://[::ffff:127.0.0.1]/", false),
            Err(UrlError::Private)
        );
        assert_eq!(
            webhook_url("http://LOCALHOST./", false),
            Err(UrlError::Private)
        );
        assert_eq!(webhook_url("http://127.0.0.1:9000/h", true), Ok(()));
        assert!(webhook_url("ftp://example.com/", false).is_err());
        assert!(webhook_url("https://user:pw@example.com/", false).is_err());
        assert!(webhook_url("https:///x", false).is_err());
        assert!(webhook_url("https://example.com:0/", false).is_err());
        assert!(webhook_url("https://exa mple.com/", false).is_err());
    }

    #[test]
    fn addresses_and_keys() {
        assert_eq!(address(" A@Ex.com ").as_deref(), Some("a@ex.com"));
        assert_eq!(address("nodomain@"), None);
        assert_eq!(address("no-at"), None);
        assert!(idempotency_key("order-123"));
        assert!(!idempotency_key(""));
        assert!(!idempotency_key("has space"));
    }
}
