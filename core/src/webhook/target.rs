//! Webhook URL validation: what an endpoint may point at.
//!
//! This is a syntactic check of the URL as given. A host *name* that resolves to a private
//! address is not caught here (the core does no DNS); the shell must refuse to connect to
//! a private, loopback, link-local or unspecified address after resolution unless
//! private targets are allowed.

use core::net::{Ipv4Addr, Ipv6Addr};

/// Longest URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// Why a webhook URL is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the URL is longer than {MAX_URL_LEN} bytes")]
    TooLong,
    #[error("the URL has whitespace or control characters")]
    BadCharacter,
    #[error("the URL scheme must be http or https")]
    Scheme,
    #[error("the URL must not carry credentials")]
    UserInfo,
    #[error("the URL has no host")]
    NoHost,
    #[error("the URL's host is not a valid host name or IP address")]
    BadHost,
    #[error("the URL's port is invalid")]
    BadPort,
    #[error("the URL points at a private, loopback, link-local or unspecified address")]
    Private,
}

/// A URL's host as parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Name(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// Checks a webhook URL: `http`/`https` only, a host, no userinfo, at most
/// [`MAX_URL_LEN`] bytes, no whitespace or control characters; a literal private,
/// loopback, link-local, unspecified (or otherwise non-public) IP host, IPv4 or IPv6
/// (IPv4-mapped and other IPv4-embedding forms included), and `localhost` are refused
/// unless `allow_private`. Returns the host.
pub fn validate_url(url: &str, allow_private: bool) -> Result<Host, UrlError> {
    if url.len() > MAX_URL_LEN {
        return Err(UrlError::TooLong);
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(UrlError::BadCharacter);
    }
    let rest = strip_prefix_ci(url, "https://")
        .or_else(|| strip_prefix_ci(url, "http://"))
        .ok_or(UrlError::Scheme)?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains('@') {
        return Err(UrlError::UserInfo);
    }
    if authority.contains('\\') {
        return Err(UrlError::BadHost);
    }
    let (host, port) = if let Some(after) = authority.strip_prefix('[') {
        let close = after.find(']').ok_or(UrlError::BadHost)?;
        let inside = &after[..close];
        let tail = &after[close + 1..];
        let port = match tail {
            "" => None,
            t => Some(t.strip_prefix(':').ok_or(UrlError::BadHost)?),
        };
        // No zone ids: `fe80::1%25eth0` does not parse and is refused.
        let ip: Ipv6Addr = inside.parse().map_err(|_| UrlError::BadHost)?;
        (Host::V6(ip), port)
    } else {
        let (name, port) = match authority.rfind(':') {
            Some(i) => (&authority[..i], Some(&authority[i + 1..])),
            None => (authority, None),
        };
        (parse_host_name(name)?, port)
    };
    if let Some(p) = port {
        // An empty port (`host:`) means the default port.
        if !p.is_empty() && (!p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err()) {
            return Err(UrlError::BadPort);
        }
    }
    if !allow_private && is_private_host(&host) {
        return Err(UrlError::Private);
    }
    Ok(host)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn parse_host_name(name: &str) -> Result<Host, UrlError> {
    if name.is_empty() {
        return Err(UrlError::NoHost);
    }
    let lower = name.to_ascii_lowercase();
    let trimmed = lower.strip_suffix('.').unwrap_or(&lower);
    if trimmed.is_empty() {
        return Err(UrlError::NoHost);
    }
    // A host whose last label is numeric is an IPv4 address to HTTP clients (WHATWG URL,
    // inet_aton): `127.1`, `2130706433`, `0x7f.0.0.1`. Parse it the same way, or refuse it.
    let last = trimmed.rsplit('.').next().unwrap_or(trimmed);
    if is_numeric_label(last) {
        return parse_ipv4_loose(trimmed)
            .map(Host::V4)
            .ok_or(UrlError::BadHost);
    }
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if trimmed.len() > 253 || !trimmed.split('.').all(ok_label) {
        return Err(UrlError::BadHost);
    }
    Ok(Host::Name(trimmed.to_string()))
}

fn is_numeric_label(l: &str) -> bool {
    if l.is_empty() {
        return false;
    }
    if let Some(hex) = l.strip_prefix("0x") {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    l.bytes().all(|b| b.is_ascii_digit())
}

/// inet_aton / WHATWG IPv4 parsing: 1 to 4 parts, each decimal, octal (leading `0`) or hex
/// (`0x`); the last part fills the remaining bytes.
fn parse_ipv4_loose(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(parts.len());
    for p in &parts {
        let v = if let Some(hex) = p.strip_prefix("0x") {
            if hex.is_empty() {
                0
            } else {
                u64::from_str_radix(hex, 16).ok()?
            }
        } else if p.len() > 1 && p.starts_with('0') {
            u64::from_str_radix(&p[1..], 8).ok()?
        } else {
            p.parse::<u64>().ok()?
        };
        nums.push(v);
    }
    let (last, init) = nums.split_last()?;
    if init.iter().any(|&n| n > 255) {
        return None;
    }
    let rest_bits = 8 * (4 - init.len() as u32);
    if *last >= 1u64 << rest_bits {
        return None;
    }
    let mut v: u64 = 0;
    for (i, n) in init.iter().enumerate() {
        v |= n << (24 - 8 * i as u32);
    }
    v |= last;
    Some(Ipv4Addr::from(v as u32))
}

/// `localhost` (and `*.localhost`, RFC 6761) or a non-public literal address.
pub fn is_private_host(host: &Host) -> bool {
    match host {
        Host::Name(n) => n == "localhost" || n.ends_with(".localhost"),
        Host::V4(ip) => is_private_v4(*ip),
        Host::V6(ip) => is_private_v6(*ip),
    }
}

/// Unspecified/"this network" 0/8, private 10/8, 172.16/12, 192.168/16, loopback 127/8,
/// link-local 169.254/16, shared (CGNAT) 100.64/10, IETF protocol assignments
/// 192.0.0/24, benchmarking 198.18/15, multicast 224/4, reserved 240/4 and broadcast.
pub fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0
        || a == 10
        || a == 127
        || (a == 169 && b == 254)
        || (a == 172 && (16..=31).contains(&b))
        || (a == 192 && b == 168)
        || (a == 100 && (64..=127).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 224
}

/// Unspecified `::`, loopback `::1`, link-local fe80::/10, site-local fec0::/10, unique
/// local fc00::/7, multicast ff00::/8, and addresses embedding a private IPv4 address:
/// IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 64:ff9b::/96, 6to4
/// 2002::/16.
pub fn is_private_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let o = ip.octets();
    if ip.is_unspecified() || ip.is_loopback() {
        return true;
    }
    if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 || (s[0] & 0xfe00) == 0xfc00 {
        return true;
    }
    if (s[0] & 0xff00) == 0xff00 {
        return true;
    }
    let v4 = |i: usize| Ipv4Addr::new(o[i], o[i + 1], o[i + 2], o[i + 3]);
    // IPv4-mapped and IPv4-compatible.
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        return is_private_v4(v4(12));
    }
    // NAT64 well-known prefix.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_private_v4(v4(12));
    }
    // 6to4.
    if s[0] == 0x2002 {
        return is_private_v4(v4(2));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> Option<UrlError> {
        validate_url(url, false).err()
    }

    #[test]
    fn accepts_public_http_and_https() {
        for ok in [
            "https://example.com/hook",
            "http://example.com",
            "HTTPS://Example.COM:8443/a?b=c#d",
            "https://hooks.example.com./x",
            "https://93.184.216.34/x",
            "https://[2606:2800:220:1:248:1893:25c8:1946]:443/x",
            "https://example.com:/x",
        ] {
            assert!(validate_url(ok, false).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_malformed() {
        assert_eq!(refused("ftp://example.com"), Some(UrlError::Scheme));
        assert_eq!(refused("example.com"), Some(UrlError::Scheme));
        assert_eq!(
            refused("https://user:pw@example.com/"),
            Some(UrlError::UserInfo)
        );
        assert_eq!(refused("https://@example.com/"), Some(UrlError::UserInfo));
        assert_eq!(refused("https:///x"), Some(UrlError::NoHost));
        assert_eq!(refused("https://"), Some(UrlError::NoHost));
        assert_eq!(
            refused("https://exa mple.com"),
            Some(UrlError::BadCharacter)
        );
        assert_eq!(
            refused("https://example.com\r\n/x"),
            Some(UrlError::BadCharacter)
        );
        assert_eq!(
            refused("https://example.com:99999/"),
            Some(UrlError::BadPort)
        );
        assert_eq!(refused("https://example.com:8a/"), Some(UrlError::BadPort));
        assert_eq!(refused("https://ex_ample..com/"), Some(UrlError::BadHost));
        assert_eq!(refused("https://[::1/"), Some(UrlError::BadHost));
        assert_eq!(refused("https://256.1.1.1/"), Some(UrlError::BadHost));
        assert_eq!(
            refused("https://example.com\\@evil/"),
            Some(UrlError::UserInfo)
        );
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(refused(&long), Some(UrlError::TooLong));
    }

    #[test]
    fn refuses_private_targets_unless_allowed() {
        for bad in [
            "http://localhost:8080/",
            "http://LOCALHOST./",
            "http://api.localhost/",
            "http://127.0.0.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://0.0.0.0/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://172.31.255.255/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/",
            "http://[::1]/",
            "http://[::]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:10.0.0.1]:80/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://[64:ff9b::a00:1]/",
            "http://[2002:c0a8:0101::1]/",
        ] {
            assert_eq!(refused(bad), Some(UrlError::Private), "{bad}");
            assert!(validate_url(bad, true).is_ok(), "{bad} allowed");
        }
        for ok in [
            "http://172.32.0.1/",
            "http://[::ffff:8.8.8.8]/",
            "http://localhost.example.com/",
        ] {
            assert!(validate_url(ok, false).is_ok(), "{ok}");
        }
    }
}
