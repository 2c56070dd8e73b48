//! DNS: hickory's resolver running on smol/async-io, and the adapter answering the core's
//! `Output::Resolve` with `Input::Resolved`.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_io::{Async, Timer};
use futures_lite::{AsyncRead, AsyncWrite, FutureExt};
use hickory_resolver::Resolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::{DnsTcpStream, DnsUdpSocket, RuntimeProvider, Spawn, Time};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use outpost_core::io::{DnsAnswer, DnsError, QueryKind};

/// hickory's runtime over smol: tasks on smol's executor, async-io timers and sockets.
#[derive(Clone, Default)]
pub struct SmolRuntime {
    handle: SmolHandle,
}

#[derive(Clone, Default)]
pub struct SmolHandle;

impl Spawn for SmolHandle {
    fn spawn_bg(&mut self, future: impl Future<Output = ()> + Send + 'static) {
        smol::spawn(future).detach();
    }
}

#[derive(Clone, Copy, Debug)]
pub struct SmolTime;

#[async_trait::async_trait]
impl Time for SmolTime {
    async fn delay_for(duration: Duration) {
        Timer::after(duration).await;
    }

    async fn timeout<F: 'static + Future + Send>(
        duration: Duration,
        future: F,
    ) -> Result<F::Output, io::Error> {
        async { Ok(future.await) }
            .or(async {
                Timer::after(duration).await;
                Err(io::Error::new(io::ErrorKind::TimedOut, "future timed out"))
            })
            .await
    }
}

/// A UDP socket for hickory (not connected; hickory checks the source of answers).
pub struct SmolUdp(Async<UdpSocket>);

impl DnsUdpSocket for SmolUdp {
    type Time = SmolTime;

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        loop {
            match self.0.get_ref().recv_from(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::task::ready!(self.0.poll_readable(cx))?;
                }
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.0.get_ref().send_to(buf, target) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::task::ready!(self.0.poll_writable(cx))?;
                }
                r => return Poll::Ready(r),
            }
        }
    }
}

/// A TCP stream for hickory (DNS over TCP after truncation).
pub struct SmolTcp(Async<TcpStream>);

impl DnsTcpStream for SmolTcp {
    type Time = SmolTime;
}

impl AsyncRead for SmolTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SmolTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

impl RuntimeProvider for SmolRuntime {
    type Handle = SmolHandle;
    type Timer = SmolTime;
    type Udp = SmolUdp;
    type Tcp = SmolTcp;

    fn create_handle(&self) -> Self::Handle {
        self.handle.clone()
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        bind_addr: Option<SocketAddr>,
        timeout: Option<Duration>,
    ) -> Pin<Box<dyn Send + Future<Output = Result<Self::Tcp, io::Error>>>> {
        Box::pin(async move {
            if let Some(b) = bind_addr {
                tracing::debug!(bind = %b, "DNS over TCP: bind address not supported; ignored");
            }
            let wait = timeout.unwrap_or(Duration::from_secs(5));
            let stream =
                SmolTime::timeout(wait, Async::<TcpStream>::connect(server_addr)).await??;
            stream.get_ref().set_nodelay(true)?;
            Ok(SmolTcp(stream))
        })
    }

    fn bind_udp(
        &self,
        local_addr: SocketAddr,
        _server_addr: SocketAddr,
    ) -> Pin<Box<dyn Send + Future<Output = Result<Self::Udp, io::Error>>>> {
        let socket = Async::<UdpSocket>::bind(local_addr).map(SmolUdp);
        Box::pin(async move { socket })
    }
}

/// The daemon's resolver.
#[derive(Clone)]
pub struct Dns {
    resolver: std::sync::Arc<Resolver<SmolRuntime>>,
}

impl Dns {
    /// `server`: one DNS server (UDP, then TCP on truncation) or, if `None`, the system's
    /// configuration (resolv.conf).
    pub fn new(server: Option<SocketAddr>) -> Result<Dns, String> {
        Self::with_timeout(server, None)
    }

    /// As `new`, with a per-query timeout other than hickory's default (5 s, 2 attempts).
    pub fn with_timeout(
        server: Option<SocketAddr>,
        timeout: Option<Duration>,
    ) -> Result<Dns, String> {
        let mut builder = match server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                Resolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    SmolRuntime::default(),
                )
            }
            None => match Resolver::builder(SmolRuntime::default()) {
                Ok(b) => b,
                Err(e) => {
                    // No usable resolv.conf (missing, or no `nameserver` line, as in a
                    // container without networking). Do what the C library does
                    // (resolv.conf(5)): ask a resolver on this machine. The daemon still
                    // starts and takes mail; a wrong guess only defers deliveries.
                    tracing::warn!(error = %e, "no usable system DNS configuration; using 127.0.0.1:53 (set --dns to choose)");
                    Resolver::builder_with_config(
                        ResolverConfig::from_name_servers(vec![NameServerConfig::udp_and_tcp(
                            std::net::Ipv4Addr::LOCALHOST.into(),
                        )]),
                        SmolRuntime::default(),
                    )
                }
            },
        };
        let opts = builder.options_mut();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // The core caches answers itself (dns_cache_ttl); keep hickory's cache small.
        opts.cache_size = 64;
        if let Some(t) = timeout {
            opts.timeout = t;
            opts.attempts = 1;
        }
        let resolver = builder.build().map_err(|e| format!("DNS resolver: {e}"))?;
        Ok(Dns {
            resolver: std::sync::Arc::new(resolver),
        })
    }

    pub async fn resolve(&self, name: &str, kind: QueryKind) -> Result<DnsAnswer, DnsError> {
        // Fully qualified: no search domains.
        let fqdn = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        match kind {
            QueryKind::Mx => {
                let lookup = self
                    .resolver
                    .lookup(fqdn.as_str(), RecordType::MX)
                    .await
                    .map_err(map_error)?;
                let mut mx: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(m) => Some((
                            m.preference,
                            m.exchange.to_ascii().trim_end_matches('.').to_string(),
                        )),
                        _ => None,
                    })
                    .collect();
                if mx.is_empty() {
                    return Err(DnsError::NoRecords);
                }
                mx.sort();
                mx.dedup();
                Ok(DnsAnswer::Mx(mx))
            }
            QueryKind::Address => {
                let lookup = self
                    .resolver
                    .lookup_ip(fqdn.as_str())
                    .await
                    .map_err(map_error)?;
                let mut ips: Vec<_> = lookup.iter().collect();
                ips.dedup();
                if ips.is_empty() {
                    return Err(DnsError::NoRecords);
                }
                Ok(DnsAnswer::Address(ips))
            }
        }
    }
}

impl Dns {
    /// TXT records at `name`, each record's strings joined (RFC 6376 3.6.2.2, RFC 7208 3.3).
    /// Used by the DKIM/SPF/DMARC checks.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let fqdn = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        let lookup = self
            .resolver
            .lookup(fqdn.as_str(), RecordType::TXT)
            .await
            .map_err(map_error)?;
        Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect())
    }
}

fn map_error(e: NetError) -> DnsError {
    use hickory_resolver::net::DnsError as HDnsError;
    if e.is_nx_domain() {
        return DnsError::NxDomain;
    }
    if e.is_no_records_found() {
        return DnsError::NoRecords;
    }
    match &e {
        NetError::Dns(HDnsError::ResponseCode(ResponseCode::ServFail)) => DnsError::ServFail,
        NetError::Timeout => DnsError::Timeout,
        NetError::Io(io) if io.kind() == io::ErrorKind::TimedOut => DnsError::Timeout,
        _ => DnsError::Other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::{Message, MessageType, OpCode};
    use hickory_resolver::proto::rr::rdata::{A, AAAA, MX, SOA};
    use hickory_resolver::proto::rr::{Name, Record};

    /// A tiny authoritative responder for `test.example` on a loopback UDP port.
    fn responder() -> SocketAddr {
        let socket = Async::<UdpSocket>::bind(([127, 0, 0, 1], 0)).expect("bind");
        let addr = socket.get_ref().local_addr().expect("addr");
        smol::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(query) = q.queries.first().cloned() else {
                    continue;
                };
                let mut r = Message::new(q.id, MessageType::Response, OpCode::Query);
                r.metadata.recursion_desired = q.recursion_desired;
                r.metadata.recursion_available = true;
                r.metadata.authoritative = true;
                r.add_query(query.clone());
                let name = query.name().to_ascii().to_ascii_lowercase();
                let qname = query.name().clone();
                let soa = || {
                    Record::from_rdata(
                        Name::from_ascii("test.example.").expect("name"),
                        60,
                        RData::SOA(SOA::new(
                            Name::from_ascii("ns.test.example.").expect("name"),
                            Name::from_ascii("admin.test.example.").expect("name"),
                            1,
                            60,
                            60,
                            60,
                            60,
                        )),
                    )
                };
                match (name.as_str(), query.query_type()) {
                    ("mail.test.example.", RecordType::MX) => {
                        r.add_answer(Record::from_rdata(
                            qname.clone(),
                            60,
                            RData::MX(MX::new(
                                20,
                                Name::from_ascii("mx2.test.example.").expect("n"),
                            )),
                        ));
                        r.add_answer(Record::from_rdata(
                            qname,
                            60,
                            RData::MX(MX::new(
                                10,
                                Name::from_ascii("mx1.test.example.").expect("n"),
                            )),
                        ));
                    }
                    ("null.test.example.", RecordType::MX) => {
                        r.add_answer(Record::from_rdata(
                            qname,
                            60,
                            RData::MX(MX::new(0, Name::root())),
                        ));
                    }
                    ("mx1.test.example.", RecordType::A) => {
                        r.add_answer(Record::from_rdata(
                            qname,
                            60,
                            RData::A(A::new(192, 0, 2, 1)),
                        ));
                    }
                    ("mx1.test.example.", RecordType::AAAA) => {
                        r.add_answer(Record::from_rdata(
                            qname,
                            60,
                            RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                        ));
                    }
                    ("broken.test.example.", _) => {
                        r.metadata.response_code = ResponseCode::ServFail;
                    }
                    ("slow.test.example.", _) => continue,
                    (n, _) if n.starts_with("mail.") || n.starts_with("mx1.") => {
                        r.add_authority(soa());
                    }
                    _ => {
                        r.metadata.response_code = ResponseCode::NXDomain;
                        r.add_authority(soa());
                    }
                }
                let bytes = r.to_vec().expect("encode");
                let _ = socket.send_to(&bytes, peer).await;
            }
        })
        .detach();
        addr
    }

    #[test]
    fn answers_and_errors_are_mapped() {
        smol::block_on(async {
            let addr = responder();
            let dns = Dns::new(Some(addr)).expect("resolver");
            assert_eq!(
                dns.resolve("mail.test.example", QueryKind::Mx).await,
                Ok(DnsAnswer::Mx(vec![
                    (10, "mx1.test.example".into()),
                    (20, "mx2.test.example".into())
                ]))
            );
            assert_eq!(
                dns.resolve("null.test.example", QueryKind::Mx).await,
                Ok(DnsAnswer::Mx(vec![(0, "".into())]))
            );
            let Ok(DnsAnswer::Address(mut ips)) =
                dns.resolve("mx1.test.example", QueryKind::Address).await
            else {
                panic!("no address");
            };
            ips.sort();
            assert_eq!(
                ips,
                vec![
                    "192.0.2.1".parse::<std::net::IpAddr>().expect("ip"),
                    "2001:db8::1".parse().expect("ip")
                ]
            );
            assert_eq!(
                dns.resolve("nope.test.example", QueryKind::Mx).await,
                Err(DnsError::NxDomain)
            );
            assert_eq!(
                dns.resolve("mx1.test.example", QueryKind::Mx).await,
                Err(DnsError::NoRecords)
            );
            assert_eq!(
                dns.resolve("broken.test.example", QueryKind::Mx).await,
                Err(DnsError::ServFail)
            );
        });
    }

    #[test]
    fn an_unanswered_query_times_out() {
        smol::block_on(async {
            let addr = responder();
            let dns =
                Dns::with_timeout(Some(addr), Some(Duration::from_millis(500))).expect("resolver");
            let r = dns.resolve("slow.test.example", QueryKind::Mx).await;
            assert!(
                matches!(r, Err(DnsError::Timeout)),
                "expected a timeout, got {r:?}"
            );
        });
    }
}
