//! Outbound SMTP connections: the shell side of the core's SMTP client. One task per
//! connection owns the socket; it reports what happens (`Connected`, `Received`, ...) and
//! carries out the core's commands in order (`Send`, `SendSpool`, `StartTls`, `Close`).
//! The core keeps every timeout; a `Close` also ends a task stuck in a write after a grace.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use async_io::{Async, Timer};
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use outpost_core::{ConnId, Input};
use rustls::pki_types::ServerName;

use crate::stream::MaybeTls;
use crate::tls::TlsClient;

/// How long a closed connection may still flush queued writes before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Read chunk size (bounded buffer).
const READ_CHUNK: usize = 8 * 1024;

/// A command for a connection task, in the core's order.
#[derive(Debug)]
pub enum ConnCmd {
    Send(Vec<u8>),
    /// Stream this spool file, then `.\r\n`.
    SendSpool(PathBuf),
    StartTls {
        server_name: String,
        require_verified: bool,
    },
    Close,
}

/// The runtime's handle on a connection task.
pub struct ConnHandle {
    cmds: Sender<ConnCmd>,
    /// Dropping every sender ends the task at once.
    kill: Sender<()>,
}

impl ConnHandle {
    pub fn command(&self, cmd: ConnCmd) {
        let _ = self.cmds.try_send(cmd);
    }

    /// Queue `Close` after what is already queued; the task is dropped after a grace
    /// period if it has not finished by then (e.g. blocked writing to a stalled peer).
    pub fn close(self) {
        let _ = self.cmds.try_send(ConnCmd::Close);
        let kill = self.kill;
        smol::spawn(async move {
            Timer::after(CLOSE_GRACE).await;
            drop(kill);
        })
        .detach();
    }
}

/// Opens a connection to `addr` in a new task; its reports go to `report`.
pub fn spawn(
    conn: ConnId,
    addr: SocketAddr,
    tls: TlsClient,
    report: impl Fn(Input) + Send + Sync + 'static,
) -> ConnHandle {
    let (cmds, cmd_rx) = async_channel::unbounded();
    let (kill, kill_rx) = async_channel::bounded::<()>(1);
    smol::spawn(async move {
        run(conn, addr, tls, cmd_rx, &report)
            .or(async {
                let _ = kill_rx.recv().await;
                tracing::debug!(conn = conn.0, "connection dropped after close grace");
            })
            .await;
    })
    .detach();
    ConnHandle { cmds, kill }
}

type Stream = MaybeTls<TlsStream<Async<TcpStream>>>;

enum Event<T> {
    Done(T),
    Cmd(Option<ConnCmd>),
}

/// Waits for `fut` or the next command, whichever comes first.
async fn or_cmd<T>(fut: impl Future<Output = T>, cmds: &Receiver<ConnCmd>) -> Event<T> {
    async { Event::Done(fut.await) }
        .or(async { Event::Cmd(cmds.recv().await.ok()) })
        .await
}

fn short(e: &io::Error) -> String {
    e.to_string()
}

async fn run(
    conn: ConnId,
    addr: SocketAddr,
    tls: TlsClient,
    cmds: Receiver<ConnCmd>,
    report: &(impl Fn(Input) + Send + Sync),
) {
    let tcp = match or_cmd(Async::<TcpStream>::connect(addr), &cmds).await {
        Event::Done(Ok(s)) => s,
        Event::Done(Err(e)) => {
            tracing::debug!(conn = conn.0, %addr, error = %e, "connect failed");
            report(Input::ConnectFailed {
                conn,
                error: short(&e),
            });
            return;
        }
        // Closed (the core timed the connect out) or the runtime is gone.
        Event::Cmd(_) => return,
    };
    let _ = tcp.get_ref().set_nodelay(true);
    tracing::debug!(conn = conn.0, %addr, "connected");
    report(Input::Connected { conn });
    let mut stream = MaybeTls::Plain(tcp);
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match or_cmd(stream.read(&mut buf), &cmds).await {
            Event::Done(Ok(0)) => {
                report(Input::Disconnected { conn, error: None });
                return;
            }
            Event::Done(Ok(n)) => report(Input::Received {
                conn,
                bytes: buf[..n].to_vec(),
            }),
            Event::Done(Err(e)) => {
                report(Input::Disconnected {
                    conn,
                    error: Some(short(&e)),
                });
                return;
            }
            Event::Cmd(None) => return,
            Event::Cmd(Some(ConnCmd::Close)) => {
                let _ = stream
                    .close()
                    .or(async {
                        Timer::after(CLOSE_GRACE).await;
                        Ok(())
                    })
                    .await;
                return;
            }
            Event::Cmd(Some(ConnCmd::Send(bytes))) => {
                if let Err(e) = write(&mut stream, &bytes).await {
                    report(Input::Disconnected {
                        conn,
                        error: Some(short(&e)),
                    });
                    return;
                }
            }
            Event::Cmd(Some(ConnCmd::SendSpool(path))) => {
                if let Err(e) = send_spool(&mut stream, &path).await {
                    tracing::warn!(conn = conn.0, error = %e, "sending the message failed");
                    report(Input::Disconnected {
                        conn,
                        error: Some(short(&e)),
                    });
                    return;
                }
            }
            Event::Cmd(Some(ConnCmd::StartTls {
                server_name,
                require_verified,
            })) => {
                let MaybeTls::Plain(tcp) = stream else {
                    report(Input::TlsFailed {
                        conn,
                        error: "TLS already established".into(),
                    });
                    return;
                };
                match start_tls(tcp, &tls, &server_name, require_verified, &cmds).await {
                    Event::Done(Ok((s, verified))) => {
                        tracing::debug!(conn = conn.0, verified, "TLS established");
                        stream = MaybeTls::Tls(Box::new(s));
                        report(Input::TlsEstablished { conn, verified });
                    }
                    Event::Done(Err(error)) => {
                        tracing::debug!(conn = conn.0, %error, "TLS handshake failed");
                        report(Input::TlsFailed { conn, error });
                        return;
                    }
                    Event::Cmd(_) => return,
                }
            }
        }
    }
}

async fn write(stream: &mut Stream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Spool files up to this size are read in one go on the connection's task (they were
/// written moments ago and sit in the page cache: one `read`, no thread hand-off); larger
/// ones are streamed through a blocking thread.
const INLINE_SPOOL_MAX: u64 = 1024 * 1024;

async fn send_spool(stream: &mut Stream, path: &std::path::Path) -> io::Result<()> {
    let spool_err = |e: io::Error| io::Error::new(e.kind(), format!("spool file: {e}"));
    // Registered while it is read: a finished message's file is reused for a new one,
    // but never while a connection has it open.
    let (mut file, _reading) = crate::store::open_for_sending(path).map_err(spool_err)?;
    let len = file.metadata().map_err(spool_err)?.len();
    if len <= INLINE_SPOOL_MAX {
        // The message and its terminating `.\r\n` in one write.
        let mut bytes = Vec::with_capacity(len as usize + 3);
        std::io::Read::read_to_end(&mut file, &mut bytes).map_err(spool_err)?;
        bytes.extend_from_slice(b".\r\n");
        stream.write_all(&bytes).await?;
        return stream.flush().await;
    }
    let mut file = smol::Unblock::new(file);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        stream.write_all(&chunk[..n]).await?;
    }
    stream.write_all(b".\r\n").await?;
    stream.flush().await
}

async fn start_tls(
    tcp: Async<TcpStream>,
    tls: &TlsClient,
    server_name: &str,
    require_verified: bool,
    cmds: &Receiver<ConnCmd>,
) -> Event<Result<(TlsStream<Async<TcpStream>>, bool), String>> {
    let name = match ServerName::try_from(server_name.trim_end_matches('.').to_string()) {
        Ok(n) => n,
        Err(e) => return Event::Done(Err(format!("bad TLS server name: {e}"))),
    };
    let hs = match tls.handshake(require_verified) {
        Ok(h) => h,
        Err(e) => return Event::Done(Err(e)),
    };
    let connect = TlsConnector::from(hs.config.clone()).connect(name, tcp);
    match or_cmd(connect, cmds).await {
        Event::Done(Ok(s)) => Event::Done(Ok((s, hs.verified()))),
        Event::Done(Err(e)) => Event::Done(Err(e.to_string())),
        Event::Cmd(c) => Event::Cmd(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_io::Async;
    use futures_lite::io::BufReader;
    use futures_lite::{AsyncBufReadExt, AsyncWriteExt};
    use futures_rustls::TlsAcceptor;
    use std::net::TcpListener;

    fn collector() -> (impl Fn(Input) + Send + Sync + 'static, Receiver<Input>) {
        let (tx, rx) = async_channel::unbounded();
        (
            move |i| {
                let _ = tx.try_send(i);
            },
            rx,
        )
    }

    async fn received_line(rx: &Receiver<Input>) -> String {
        let mut s = Vec::new();
        while !s.ends_with(b"\n") {
            match rx.recv().await.expect("input") {
                Input::Received { bytes, .. } => s.extend(bytes),
                other => panic!("unexpected {other:?}"),
            }
        }
        String::from_utf8(s).expect("utf8")
    }

    #[test]
    fn talks_upgrades_to_tls_and_streams_the_spool() {
        smol::block_on(async {
            let pki = crate::tls::tests::test_pki(&["mx.test.example"]);
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.ca_der.clone()).expect("root");
            let tls = TlsClient::with_roots(roots).expect("tls");
            let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
            let addr = listener.get_ref().local_addr().expect("addr");
            let acceptor = TlsAcceptor::from(pki.server.clone());
            let server = smol::spawn(async move {
                let (mut s, _) = listener.accept().await.expect("accept");
                s.write_all(b"220 hi\r\n").await.expect("w");
                let mut r = BufReader::new(s);
                let mut line = String::new();
                r.read_line(&mut line).await.expect("r");
                assert_eq!(line, "STARTTLS\r\n");
                r.get_mut().write_all(b"220 go\r\n").await.expect("w");
                let s = r.into_inner();
                let t = acceptor.accept(s).await.expect("tls");
                let mut r = BufReader::new(t);
                let mut body = String::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.expect("r") == 0 {
                        break;
                    }
                    body.push_str(&line);
                    if line == ".\r\n" {
                        break;
                    }
                }
                r.get_mut().write_all(b"250 ok\r\n").await.expect("w");
                r.get_mut().flush().await.expect("f");
                body
            });

            let dir = std::env::temp_dir().join(format!("outpost-conn-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("dir");
            let spool = dir.join("m.eml");
            std::fs::write(&spool, b"Subject: x\r\n\r\n..dot\r\n").expect("write");

            let (report, rx) = collector();
            let h = spawn(ConnId(7), addr, tls, report);
            assert!(matches!(
                rx.recv().await,
                Ok(Input::Connected { conn: ConnId(7) })
            ));
            assert_eq!(received_line(&rx).await, "220 hi\r\n");
            h.command(ConnCmd::Send(b"STARTTLS\r\n".to_vec()));
            assert_eq!(received_line(&rx).await, "220 go\r\n");
            h.command(ConnCmd::StartTls {
                server_name: "mx.test.example".into(),
                require_verified: true,
            });
            assert!(matches!(
                rx.recv().await,
                Ok(Input::TlsEstablished { verified: true, .. })
            ));
            h.command(ConnCmd::SendSpool(spool));
            assert_eq!(received_line(&rx).await, "250 ok\r\n");
            assert_eq!(server.await, "Subject: x\r\n\r\n..dot\r\n.\r\n");
            assert!(matches!(rx.recv().await, Ok(Input::Disconnected { .. })));
            let _ = std::fs::remove_dir_all(&dir);
        });
    }

    #[test]
    fn refused_connections_are_reported() {
        smol::block_on(async {
            // Bind then drop to find a closed port.
            let addr = {
                let l = TcpListener::bind("127.0.0.1:0").expect("bind");
                l.local_addr().expect("addr")
            };
            let (report, rx) = collector();
            let _h = spawn(ConnId(1), addr, TlsClient::new(None).expect("tls"), report);
            assert!(matches!(
                rx.recv().await,
                Ok(Input::ConnectFailed {
                    conn: ConnId(1),
                    ..
                })
            ));
        });
    }
}
