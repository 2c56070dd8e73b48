//! A small HTTP/1.1 server for the API: one accept thread, one thread per connection,
//! blocking I/O. A connection's requests are read, handled and answered one after the
//! other (pipelined requests are answered in order), so nothing waits behind another
//! connection: there is no pool to stall behind. Concurrent connections are capped; past
//! the cap a connection is answered 503 and closed.
//!
//! Limits: request line + headers <= 64 KiB (431), <= 100 header fields (431), a body of at
//! most `max_body` bytes (413, then the connection closes), a deadline for the head, one
//! for the body and one for an idle keep-alive connection. Bodies: `Content-Length` or
//! `Transfer-Encoding: chunked`; `Expect: 100-continue` is honoured.
//!
//! Stopping ([`Server::stop`]) closes the listener, closes idle keep-alive connections at
//! once and lets requests in flight finish (their answer says `Connection: close`).

mod conn;
mod parse;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use async_io::Async;

pub use parse::{Method, Request, Version};

/// Answers one request. Runs on the connection's thread; may block.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Default [`Config::header_timeout`] (`outpost serve --http-header-timeout`).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Config::body_timeout`] (`--http-body-timeout`).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`Config::idle_timeout`] (`--http-idle-timeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Limits and timeouts.
#[derive(Clone, Debug)]
pub struct Config {
    /// Connections served at once; past it a new connection is answered 503 and closed.
    pub max_connections: usize,
    /// Largest request body (413 above).
    pub max_body: usize,
    /// From a request's first byte to the end of its head (and, on a new connection,
    /// from accepting it to its first byte).
    pub header_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// From the end of the head to the end of the body.
    pub body_timeout: Duration,
    /// For each write of a response.
    pub write_timeout: Duration,
    /// At stop: how long requests in flight may take before their sockets are shut.
    pub drain_timeout: Duration,
    /// Stack of each connection thread.
    pub stack_size: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_connections: 512,
            max_body: 10 * 1024 * 1024,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            write_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            stack_size: DEFAULT_STACK,
        }
    }
}

/// Connection threads' stack. The handlers' deepest path is serde_json on nested input,
/// bounded by its recursion limit (128 levels): in a debug build (large frames) that
/// needs about 200-224 KiB (128 KiB overflows, 224 KiB does not), far less in release.
/// 512 KiB leaves room for the handler frames under it; only the pages a thread touches
/// become resident, the rest is address space. The server's and the API's tests send
/// nested JSON past the limit through this stack.
pub const DEFAULT_STACK: usize = 512 * 1024;

/// Rejections (503 past the cap) in progress at once; more are closed without an answer.
const MAX_REJECTING: usize = 64;

/// An answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Close the connection after this answer.
    pub close: bool,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body,
            close: false,
        }
    }

    /// `{"error":{"code","message"}}`, the API's error shape.
    pub fn json_error(status: u16, code: &str, message: &str) -> Response {
        let mut body = serde_json::to_vec(&serde_json::json!({
            "error": {"code": code, "message": message}
        }))
        .unwrap_or_default();
        body.push(b'\n');
        Response::new(status, "application/json", body)
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

/// An error answered by the server itself (before or instead of the handler); the
/// connection closes after it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct HttpError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl HttpError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::new(400, "bad_request", message)
    }
    pub fn response(&self) -> Response {
        let mut r = Response::json_error(self.status, self.code, &self.message);
        r.close = true;
        r
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {error}")]
    Listen { addr: String, error: std::io::Error },
    #[error("cannot start the accept thread: {0}")]
    Spawn(std::io::Error),
}

/// A connection being served: its socket (to shut it at stop) and whether it waits for
/// a request (idle: closed at once at stop).
struct Tracked {
    stream: TcpStream,
    idle: AtomicBool,
}

struct Shared {
    config: Config,
    handler: Handler,
    stop: AtomicBool,
    conns: Mutex<Conns>,
    /// Signalled whenever a connection ends.
    ended: Condvar,
    rejecting: AtomicUsize,
}

#[derive(Default)]
struct Conns {
    next: u64,
    live: HashMap<u64, Arc<Tracked>>,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Removes a connection from the live set when its thread ends (however it ends).
struct Registration {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.conns().live.remove(&self.id);
        self.shared.ended.notify_all();
    }
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop_tx: async_channel::Sender<()>,
    accept: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Listens on `addr` and serves with `handler`.
    pub fn start(addr: &str, config: Config, handler: Handler) -> Result<Server, StartError> {
        let listen_err = |error| StartError::Listen {
            addr: addr.to_string(),
            error,
        };
        let listener = TcpListener::bind(addr).map_err(listen_err)?;
        let local = listener.local_addr().map_err(listen_err)?;
        let listener = Async::new(listener).map_err(listen_err)?;
        let shared = Arc::new(Shared {
            config,
            handler,
            stop: AtomicBool::new(false),
            conns: Mutex::new(Conns::default()),
            ended: Condvar::new(),
            rejecting: AtomicUsize::new(0),
        });
        let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("outpost-http-accept".to_string())
            .spawn(move || smol::block_on(accept_loop(listener, accept_shared, stop_rx)))
            .map_err(StartError::Spawn)?;
        Ok(Server {
            addr: local,
            shared,
            stop_tx,
            accept: Some(accept),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections being served now.
    pub fn connections(&self) -> usize {
        self.shared.conns().live.len()
    }

    /// Stops accepting (the listener closes), closes idle keep-alive connections, and
    /// waits up to `drain_timeout` for requests in flight; sockets still open then are
    /// shut down.
    pub fn stop(mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.stop_tx.close();
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        let deadline = Instant::now() + self.shared.config.drain_timeout;
        let mut conns = self.shared.conns();
        for t in conns.live.values() {
            if t.idle.load(Ordering::SeqCst) {
                let _ = t.stream.shutdown(std::net::Shutdown::Both);
            }
        }
        while !conns.live.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    connections = conns.live.len(),
                    "HTTP requests still in flight at the drain deadline: closing them"
                );
                for t in conns.live.values() {
                    let _ = t.stream.shutdown(std::net::Shutdown::Both);
                }
                return;
            }
            conns = self
                .shared
                .ended
                .wait_timeout(conns, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Dropped without `stop`: at least stop accepting.
        self.shared.stop.store(true, Ordering::SeqCst);
        self.stop_tx.close();
    }
}

async fn accept_loop(
    listener: Async<TcpListener>,
    shared: Arc<Shared>,
    stop: async_channel::Receiver<()>,
) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            let _ = stop.recv().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok((stream, peer))) => {
                if shared.stopping() {
                    return;
                }
                match stream.into_inner().and_then(|s| {
                    s.set_nonblocking(false)?;
                    Ok(s)
                }) {
                    Ok(s) => admit(&shared, s, peer),
                    Err(e) => tracing::debug!(error = %e, "HTTP: could not set up a connection"),
                }
            }
            Some(Err(e)) => {
                // Out of file descriptors and the like: don't spin.
                tracing::warn!(error = %e, "HTTP accept failed");
                async_io::Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Starts serving an accepted connection on its own thread, or answers 503 past the cap.
fn admit(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let config = &shared.config;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(config.write_timeout));
    let (id, tracked) = {
        let mut conns = shared.conns();
        if conns.live.len() >= config.max_connections.max(1) {
            drop(conns);
            reject(shared, stream);
            return;
        }
        // The thread and the registry share one `TcpStream` (no second descriptor).
        let tracked = Arc::new(Tracked {
            stream,
            idle: AtomicBool::new(false),
        });
        let id = conns.next;
        conns.next += 1;
        conns.live.insert(id, Arc::clone(&tracked));
        (id, tracked)
    };
    let registration = Registration {
        shared: Arc::clone(shared),
        id,
    };
    let spawned = thread::Builder::new()
        .name("outpost-http".to_string())
        .stack_size(config.stack_size)
        .spawn(move || {
            let shared = Arc::clone(&registration.shared);
            conn::serve(&shared, &tracked, peer);
            drop(registration);
        });
    if let Err(e) = spawned {
        // The closure (and the registration in it) was dropped: the slot is free again.
        tracing::warn!(error = %e, "HTTP: cannot start a connection thread");
    }
}

/// Past the connection cap: `503` + `Connection: close`, on a short-lived thread that
/// lingers so the client reads the answer rather than a reset.
fn reject(shared: &Arc<Shared>, stream: TcpStream) {
    if shared.rejecting.fetch_add(1, Ordering::SeqCst) >= MAX_REJECTING {
        shared.rejecting.fetch_sub(1, Ordering::SeqCst);
        tracing::debug!("HTTP: over the connection cap, closed without an answer");
        return;
    }
    tracing::debug!("HTTP: over the connection cap, answering 503");
    let reject_shared = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name("outpost-http-reject".to_string())
        .stack_size(64 * 1024)
        .spawn(move || {
            let response = Response::json_error(
                503,
                "too_many_connections",
                "too many connections; retry later",
            )
            .header("Retry-After", "1");
            let mut io = conn::TcpIo::new(&stream);
            conn::write_response(&mut io, &response, false, true, false);
            conn::linger(&mut io, 64 * 1024, Duration::from_secs(1));
            reject_shared.rejecting.fetch_sub(1, Ordering::SeqCst);
        });
    if spawned.is_err() {
        shared.rejecting.fetch_sub(1, Ordering::SeqCst);
    }
}
