//! Webhook POSTs (`Output::PostWebhook`): ureq on a blocking thread, with the core's
//! timeout and headers. Targets that resolve to private, loopback or otherwise internal
//! addresses are refused unless `--allow-private-webhooks`.
//!
//! The check lives inside ureq's resolver ([`PublicOnly`]): the addresses that are checked
//! are the very addresses the connection then uses. Checking a name first and letting the
//! HTTP client resolve it again would leave a DNS-rebinding window (a record that answers
//! a public address to the check and 169.254.169.254 to the connect).

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// POSTs `body` to `url`; returns the HTTP status (any status, not only 2xx) or a transport
/// error, and how long it took.
pub async fn post(
    url: String,
    headers: Vec<(String, String)>,
    body: Arc<str>,
    timeout: Duration,
    allow_private: bool,
) -> (Result<u16, String>, u64) {
    smol::unblock(move || {
        let start = Instant::now();
        let r = post_blocking(&url, &headers, &body, timeout, allow_private);
        (r, start.elapsed().as_millis() as u64)
    })
    .await
}

fn agent_config() -> ureq::config::Config {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent("outpost-webhooks/0.1")
        .build()
}

/// The agent for a target: public addresses only, or any address.
fn agent(allow_private: bool) -> &'static ureq::Agent {
    static PUBLIC_ONLY: OnceLock<ureq::Agent> = OnceLock::new();
    static ANY: OnceLock<ureq::Agent> = OnceLock::new();
    if allow_private {
        ANY.get_or_init(|| agent_config().into())
    } else {
        PUBLIC_ONLY.get_or_init(|| {
            ureq::Agent::with_parts(agent_config(), DefaultConnector::new(), PublicOnly)
        })
    }
}

/// A resolver that answers only when every address of the host is public.
#[derive(Debug)]
struct PublicOnly;

impl Resolver for PublicOnly {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let addrs = DefaultResolver::default().resolve(uri, config, timeout)?;
        match refuse_private(addrs.iter().map(|a| a.ip())) {
            Ok(()) => Ok(addrs),
            Err(reason) => Err(ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                reason,
            ))),
        }
    }
}

fn post_blocking(
    url: &str,
    headers: &[(String, String)],
    body: &str,
    timeout: Duration,
    allow_private: bool,
) -> Result<u16, String> {
    let uri: ureq::http::Uri = url.parse().map_err(|_| "invalid URL".to_string())?;
    let scheme = uri.scheme_str().unwrap_or("");
    if scheme != "http" && scheme != "https" {
        return Err("URL scheme must be http or https".into());
    }
    if uri.host().is_none() {
        return Err("URL has no host".into());
    }
    let mut req = agent(allow_private)
        .post(url)
        .config()
        .timeout_global(Some(timeout))
        .build()
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    match req.send(body.as_bytes()) {
        Ok(resp) => Ok(resp.status().as_u16()),
        Err(ureq::Error::Timeout(_)) => Err("timeout".into()),
        Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Refuses a set of addresses if any of them is not public (so a name that mixes a
/// public and an internal address is refused whichever the connection would pick).
fn refuse_private(ips: impl Iterator<Item = IpAddr>) -> Result<(), String> {
    let mut any = false;
    for ip in ips {
        any = true;
        if !is_public(ip) {
            return Err(format!(
                "refused: webhook target resolves to a private or loopback address ({ip})"
            ));
        }
    }
    if any {
        Ok(())
    } else {
        Err("webhook host has no address".into())
    }
}

pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 shared
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18/15 benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    #[test]
    fn classifies_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn a_mixed_answer_is_refused_whole() {
        let public: IpAddr = "93.184.216.34".parse().expect("ip");
        let private: IpAddr = "169.254.169.254".parse().expect("ip");
        assert_eq!(refuse_private([public].into_iter()), Ok(()));
        assert!(refuse_private([public, private].into_iter()).is_err());
        assert!(refuse_private(std::iter::empty()).is_err());
    }

    /// A name (not an IP literal) is checked by the resolver the connection uses: the
    /// address refused is the one resolved for the connect, not a second lookup's.
    #[test]
    fn a_name_resolving_to_loopback_is_refused_at_connect() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let (r, _) = smol::block_on(post(
            format!("http://localhost:{port}/hook"),
            Vec::new(),
            Arc::from("{}"),
            Duration::from_secs(5),
            false,
        ));
        let err = r.expect_err("refused");
        assert!(err.contains("refused"), "{err}");
        // Nothing connected.
        assert!(listener.accept().is_err());
    }

    #[test]
    fn refuses_private_targets_unless_allowed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            let mut r = BufReader::new(s);
            let mut head = String::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).expect("read");
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().expect("len");
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).expect("body");
            r.get_mut()
                .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                .expect("write");
            (head, String::from_utf8(body).expect("utf8"))
        });
        let url = format!("http://127.0.0.1:{port}/hook");
        let headers = vec![("webhook-id".to_string(), "evt_1".to_string())];
        let body: Arc<str> = Arc::from("{\"a\":1}");
        let (r, _) = smol::block_on(post(
            url.clone(),
            headers.clone(),
            body.clone(),
            Duration::from_secs(5),
            false,
        ));
        assert!(r.expect_err("refused").contains("refused"));
        let (r, _) = smol::block_on(post(url, headers, body, Duration::from_secs(5), true));
        assert_eq!(r, Ok(204));
        let (head, body) = server.join().expect("server");
        assert!(
            head.to_ascii_lowercase().contains("webhook-id: evt_1"),
            "{head}"
        );
        assert_eq!(body, "{\"a\":1}");
    }
}
