//! The SMTP submission listener (`--smtp`, default 127.0.0.1:2525): one task per client
//! connection drives the core's `ServerSession` over the socket and answers its
//! questions: AUTH (username = the tenant's domain, password = one of its API keys),
//! a trusted client's sender domain (`--trusted-networks`), and each complete message,
//! which goes through the same gateway as the HTTP API (`source: smtp`) and gets its
//! `250` only once it is durable. The session decides the protocol; this file only does
//! I/O, lookups and the rate limit.
//!
//! Once the daemon is shutting down (the engine loop's `accepting` flag is off) each
//! session is told so before it reads more input or gets an answer: a new client is
//! greeted `421 4.3.2`, an open session's next command is answered `421 4.3.2`, and a
//! message already handed to the engine still gets its real answer (see
//! `ServerSession::on_shutdown`).

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use futures_rustls::TlsAcceptor;
use outpost_core::RequestId;
use outpost_core::io::{Submission, SubmissionContent};
use outpost_core::model::Source;
use outpost_core::smtp::server::{
    AuthedTenant, ServerAction, ServerConfig, ServerEvent, ServerSession,
};

use crate::lazy_timer::LazyTimer;
use crate::ratelimit::RateLimiter;
use crate::runtime::LoopHandle;
use crate::runtime::now;
use crate::store::Store;
use crate::store::query;
use crate::stream::MaybeTls;

/// Read chunk size (the session bounds what it keeps).
const READ_CHUNK: usize = 16 * 1024;
/// Client connections served at once; more get `421` and are closed.
const MAX_CLIENTS: usize = 256;
/// How long a TLS handshake may take.
const TLS_TIMEOUT: Duration = Duration::from_secs(30);

/// An IPv4 or IPv6 network, `ADDR/BITS`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (a, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IP network like 10.0.0.0/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 peer matches IPv4 networks.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Parses `CIDR,CIDR,...` (empty: none).
pub fn parse_networks(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(Cidr::parse)
        .collect()
}

/// A rustls server configuration from PEM files (certificate chain, private key).
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

/// What the listener needs.
#[derive(Clone)]
pub struct SubmissionSettings {
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub trusted: Vec<Cidr>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

struct Shared {
    settings: SubmissionSettings,
    store: Store,
    engine: LoopHandle,
    limiter: Arc<RateLimiter>,
    clients: AtomicUsize,
}

/// Binds `addr` and serves clients on the smol executor until the process ends.
pub fn start(
    addr: SocketAddr,
    settings: SubmissionSettings,
    store: Store,
    engine: LoopHandle,
    limiter: Arc<RateLimiter>,
) -> Result<SocketAddr, String> {
    let listener = Async::<TcpListener>::bind(addr).map_err(|e| format!("{addr}: {e}"))?;
    let local = listener
        .get_ref()
        .local_addr()
        .map_err(|e| format!("{addr}: {e}"))?;
    let shared = Arc::new(Shared {
        settings,
        store,
        engine,
        limiter,
        clients: AtomicUsize::new(0),
    });
    smol::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    smol::spawn(async move { serve_client(&shared, stream, peer).await }).detach();
                }
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "SMTP accept failed");
                    Timer::after(Duration::from_millis(100)).await;
                }
            }
        }
    })
    .detach();
    Ok(local)
}

/// Counts a client while it is served.
struct ClientSlot<'a>(&'a AtomicUsize);

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_client(shared: &Shared, stream: Async<TcpStream>, peer: SocketAddr) {
    let n = shared.clients.fetch_add(1, Ordering::SeqCst);
    let _slot = ClientSlot(&shared.clients);
    let mut stream = MaybeTls::Plain(stream);
    if n >= MAX_CLIENTS {
        let line = format!(
            "421 4.3.2 {} Too many connections\r\n",
            shared.settings.hostname
        );
        let _ = stream.write_all(line.as_bytes()).await;
        return;
    }
    let started = Instant::now();
    let s = &shared.settings;
    let trusted = s.trusted.iter().any(|c| c.contains(peer.ip()));
    let mut config = ServerConfig::new(&s.hostname);
    config.max_message_size = s.max_message_size;
    config.max_recipients = s.max_recipients;
    config.tls_available = s.tls.is_some();
    // Credentials in plaintext only never leave the machine.
    config.auth_without_tls = peer.ip().is_loopback();
    config.trusted_client = trusted;
    let mut session = ServerSession::new(config, now());
    note_shutdown(shared, &mut session);
    session.on_connected(now());
    tracing::debug!(%peer, trusted, "SMTP client connected");
    let mut messages = 0u32;
    let mut buf = vec![0u8; READ_CHUNK];
    // One timer for the connection's deadlines and waits (see `LazyTimer`).
    let mut timer = LazyTimer::default();
    'conn: loop {
        // Carry out what the session asked for, answering its questions, until it needs
        // input.
        loop {
            while let Some(action) = session.poll_action() {
                match action {
                    ServerAction::Send(bytes) => {
                        if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err()
                        {
                            session.on_disconnected(now());
                            break 'conn;
                        }
                    }
                    ServerAction::StartTls => {
                        let Some(tls) = s.tls.clone() else {
                            break 'conn;
                        };
                        let MaybeTls::Plain(plain) = stream else {
                            break 'conn;
                        };
                        let handshake = TlsAcceptor::from(tls).accept(plain).or(async {
                            Timer::after(TLS_TIMEOUT).await;
                            Err(io::Error::new(io::ErrorKind::TimedOut, "TLS timeout"))
                        });
                        match handshake.await {
                            Ok(t) => {
                                stream = MaybeTls::Tls(Box::new(t));
                                session.on_tls_established(now());
                            }
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "SMTP STARTTLS failed");
                                session.on_disconnected(now());
                                break 'conn;
                            }
                        }
                    }
                    ServerAction::Close => {
                        let _ = stream.close().await;
                        break 'conn;
                    }
                }
            }
            let Some(event) = session.poll_event() else {
                break;
            };
            answer(shared, &mut session, event, &mut messages, &mut timer).await;
        }
        if session.is_closed() {
            break;
        }
        let deadline = session.deadline();
        let read = async { Some(stream.read(&mut buf).await) };
        let got = match deadline {
            Some(d) => {
                let at = Instant::now() + Duration::from_millis(d.0.saturating_sub(now().0));
                read.or(async {
                    timer.until(at).await;
                    None
                })
                .await
            }
            None => read.await,
        };
        match got {
            None => session.on_timer(now()),
            Some(Ok(0)) | Some(Err(_)) => {
                session.on_disconnected(now());
                break;
            }
            Some(Ok(n)) => {
                note_shutdown(shared, &mut session);
                session.on_bytes(now(), &buf[..n]);
            }
        }
    }
    tracing::debug!(
        %peer,
        messages,
        ms = started.elapsed().as_millis() as u64,
        "SMTP client done"
    );
}

/// Tells the session when the daemon has begun shutting down: it then answers what the
/// client says next with `421 4.3.2` and closes.
fn note_shutdown(shared: &Shared, session: &mut ServerSession) {
    if !shared.engine.accepting.load(Ordering::SeqCst) {
        session.on_shutdown(now());
    }
}

/// Answers one of the session's questions.
async fn answer(
    shared: &Shared,
    session: &mut ServerSession,
    event: ServerEvent,
    n: &mut u32,
    timer: &mut LazyTimer,
) {
    match event {
        ServerEvent::AuthRequest { username, password } => {
            let store = shared.store.clone();
            let hash = crate::api::hex(&crate::api::hash_key(&password));
            // On a blocking thread: a store read can wait for a lock (busy timeout), and
            // this thread serves every session.
            let tenant =
                smol::unblock(move || store.read(|c| query::tenant_by_key_hash(c, &hash))).await;
            let result = match tenant {
                Ok(Some(t)) if t.domain.eq_ignore_ascii_case(username.trim()) => {
                    tracing::info!(tenant = t.id.0, "SMTP AUTH accepted");
                    Some(AuthedTenant {
                        tenant: t.id,
                        domain: t.domain,
                    })
                }
                Ok(_) => {
                    tracing::info!("SMTP AUTH refused");
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "SMTP AUTH: store read failed");
                    None
                }
            };
            note_shutdown(shared, session);
            session.on_auth_result(now(), result);
        }
        ServerEvent::SenderCheck { domain } => {
            // As for AUTH: on a blocking thread.
            let store = shared.store.clone();
            let tenant =
                smol::unblock(move || store.read(|c| query::tenant_by_domain(c, &domain))).await;
            let result = match tenant {
                Ok(t) => t.map(|t| AuthedTenant {
                    tenant: t.id,
                    domain: t.domain,
                }),
                Err(e) => {
                    tracing::error!(error = %e, "SMTP sender check: store read failed");
                    None
                }
            };
            note_shutdown(shared, session);
            session.on_sender_check(now(), result);
        }
        ServerEvent::Message {
            tenant,
            mail_from,
            rcpt_to,
            data,
            smtputf8,
            eight_bit: _,
        } => {
            if let Err(wait) = shared.limiter.check(tenant.tenant, &tenant.domain) {
                tracing::info!(
                    tenant = tenant.tenant.0,
                    retry_after_s = wait,
                    "SMTP message rate limited"
                );
                note_shutdown(shared, session);
                session.on_rate_limited(now());
                return;
            }
            let submission = Submission {
                request: RequestId(0),
                tenant: tenant.tenant,
                tenant_domain: tenant.domain,
                source: Source::Smtp,
                idempotency_key: None,
                content: SubmissionContent::Raw {
                    mail_from,
                    rcpt_to,
                    data,
                    smtputf8,
                },
            };
            // The engine answers after the store commit.
            let result = crate::gateway::submit_async(&shared.engine, submission, timer).await;
            match &result {
                Ok(r) => {
                    *n += 1;
                    // The engine loop logs the acceptance at INFO (every intake).
                    tracing::debug!(message_id = %r.id, recipients = r.recipients.len(), "SMTP message accepted");
                }
                Err(e) => tracing::info!(code = %e.code, "SMTP message refused"),
            }
            note_shutdown(shared, session);
            session.on_message_result(now(), result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::AtomicBool;

    use outpost_core::MessageId;
    use outpost_core::io::Receipt;
    use outpost_core::status::MessageStatus;

    use crate::runtime::Msg;

    /// A client of the listener: lines in, replies out.
    struct Client {
        reader: BufReader<TcpStream>,
        writer: TcpStream,
    }

    impl Client {
        fn connect(addr: SocketAddr) -> Client {
            let writer = TcpStream::connect(addr).expect("connect");
            writer
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let reader = BufReader::new(writer.try_clone().expect("clone"));
            Client { reader, writer }
        }
        fn send(&mut self, text: &str) {
            self.writer.write_all(text.as_bytes()).expect("write");
        }
        /// One reply (its lines up to the one with a space after the code).
        fn reply(&mut self) -> String {
            let mut all = String::new();
            loop {
                let mut line = String::new();
                self.reader.read_line(&mut line).expect("read");
                assert!(line.ends_with("\r\n"), "cut short: {all}{line:?}");
                all.push_str(&line);
                if line.as_bytes().get(3) != Some(&b'-') {
                    return all;
                }
            }
        }
        /// The server closed the connection (after everything it sent was read).
        fn closed(&mut self) -> bool {
            let mut rest = Vec::new();
            self.reader.read_to_end(&mut rest).is_ok() && rest.is_empty()
        }
    }

    const SHUTDOWN: &str =
        "421 4.3.2 outpost.test Service shutting down, closing transmission channel\r\n";

    /// Over the wire: a message handed to the engine before the shutdown keeps its real
    /// answer; after it, the next command, and a new connection's greeting, get `421 4.3.2`
    /// and the connection closes.
    #[test]
    fn shutdown_answers_421_and_keeps_the_answer_of_a_message_in_flight() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        store
            .read(|c| query::create_key(c, "example.com", "00", "op_", now()))
            .expect("tenant");
        let (tx, rx) = async_channel::unbounded::<Msg>();
        let accepting = Arc::new(AtomicBool::new(true));
        let engine = LoopHandle {
            tx,
            accepting: accepting.clone(),
        };
        let settings = SubmissionSettings {
            hostname: "outpost.test".to_string(),
            max_message_size: 1024 * 1024,
            max_recipients: 10,
            trusted: parse_networks("127.0.0.0/8").expect("networks"),
            tls: None,
        };
        let limiter = Arc::new(RateLimiter::new(Default::default()));
        let addr = start(
            "127.0.0.1:0".parse().expect("addr"),
            settings,
            store,
            engine,
            limiter,
        )
        .expect("listen");

        // Before the shutdown: one client hands a message over (with a command pipelined
        // behind it), another is between transactions.
        let mut a = Client::connect(addr);
        assert!(a.reply().starts_with("220 "));
        a.send("EHLO a.test\r\n");
        assert!(a.reply().starts_with("250-outpost.test"));
        let mut b = Client::connect(addr);
        assert!(b.reply().starts_with("220 "));
        b.send("EHLO b.test\r\n");
        assert!(b.reply().starts_with("250-outpost.test"));
        a.send(
            "MAIL FROM:<app@example.com>\r\nRCPT TO:<rcpt@dest.example>\r\nDATA\r\n\
             Subject: hi\r\n\r\nhello\r\n.\r\nNOOP\r\n",
        );
        assert_eq!(a.reply(), "250 2.1.0 Ok\r\n");
        assert_eq!(a.reply(), "250 2.1.5 Ok\r\n");
        assert!(a.reply().starts_with("354 "));
        let Ok(Msg::Submit(submission, answer)) = rx.recv_blocking() else {
            panic!("no submission");
        };
        assert_eq!(submission.source, Source::Smtp);

        // The daemon begins shutting down while the message is being stored.
        accepting.store(false, Ordering::SeqCst);
        answer
            .send_blocking(Ok(Receipt {
                id: MessageId(77),
                message_id: "<m@example.com>".to_string(),
                status: MessageStatus::Queued,
                recipients: Vec::new(),
            }))
            .expect("answer");
        assert_eq!(
            a.reply(),
            format!("250 2.0.0 Ok: queued as {}\r\n", MessageId(77))
        );
        assert_eq!(a.reply(), SHUTDOWN);
        assert!(a.closed());

        // The idle session: its next command.
        b.send("MAIL FROM:<app@example.com>\r\n");
        assert_eq!(b.reply(), SHUTDOWN);
        assert!(b.closed());

        // A new connection: greeted with the 421.
        let mut c = Client::connect(addr);
        assert_eq!(c.reply(), SHUTDOWN);
        assert!(c.closed());
        // Nothing more reached the engine.
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn networks_match() {
        let n = parse_networks("10.0.0.0/8, 192.168.1.7 ,fd00::/8").expect("valid");
        assert!(n[0].contains("10.1.2.3".parse().expect("ip")));
        assert!(!n[0].contains("11.0.0.1".parse().expect("ip")));
        assert!(n[1].contains("192.168.1.7".parse().expect("ip")));
        assert!(!n[1].contains("192.168.1.8".parse().expect("ip")));
        assert!(n[2].contains("fd12::1".parse().expect("ip")));
        assert!(n[0].contains("::ffff:10.9.9.9".parse().expect("ip")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("valid")
                .contains("8.8.8.8".parse().expect("ip"))
        );
        assert!(parse_networks("").expect("empty").is_empty());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense").is_err());
    }
}
