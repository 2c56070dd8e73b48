//! One connection: read a request (head, then body), hand it to the handler, write the
//! answer, and again while the connection is kept alive. Blocking reads with deadlines.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::parse::{self, Expect, Framing, Head, MAX_CHUNK_LINE, MAX_HEAD};
use super::{Config, Handler, HttpError, Method, Request, Response, Shared, Tracked, Version};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// A closing connection reads (and discards) at most this much more before closing...
const LINGER_BYTES: u64 = 1024 * 1024;
/// ...for at most this long, so that the client reads our answer rather than a reset.
const LINGER_TIME: Duration = Duration::from_secs(5);

/// A byte stream with read deadlines (a socket; a script in tests).
pub(super) trait Io: Read + Write {
    /// Timeout of the reads that follow (never zero).
    fn set_read_timeout(&mut self, t: Duration) -> io::Result<()>;
    /// No more writes: the peer sees the end of the stream.
    fn shutdown_write(&mut self);
}

pub(super) struct TcpIo<'a> {
    stream: &'a TcpStream,
}

impl<'a> TcpIo<'a> {
    pub(super) fn new(stream: &'a TcpStream) -> TcpIo<'a> {
        TcpIo { stream }
    }
}

impl Read for TcpIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.stream).read(buf)
    }
}

impl Write for TcpIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.stream).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        (&*self.stream).flush()
    }
}

impl Io for TcpIo<'_> {
    fn set_read_timeout(&mut self, t: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(t))
    }
    fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ReadError {
    #[error("end of stream")]
    Eof,
    #[error("timed out")]
    Timeout,
    #[error("i/o: {0}")]
    Io(io::Error),
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum RequestError {
    /// The peer went away (or the socket failed): nothing to answer.
    #[error("connection lost: {0}")]
    Lost(ReadError),
    /// A deadline passed: 408.
    #[error("timed out")]
    Timeout,
    /// Over the body limit: 413.
    #[error("body too large")]
    TooLarge,
    /// Answer this and close.
    #[error(transparent)]
    Http(#[from] HttpError),
}

impl From<ReadError> for RequestError {
    fn from(e: ReadError) -> RequestError {
        match e {
            ReadError::Timeout => RequestError::Timeout,
            e => RequestError::Lost(e),
        }
    }
}

/// Reads once into `buf`, waiting until `deadline` at most.
fn read_until<S: Io>(io: &mut S, buf: &mut [u8], deadline: Instant) -> Result<usize, ReadError> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ReadError::Timeout);
        }
        io.set_read_timeout(deadline - now).map_err(ReadError::Io)?;
        match io.read(buf) {
            Ok(0) => return Err(ReadError::Eof),
            Ok(n) => return Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

/// A connection's stream and the bytes read from it but not yet consumed (the start of a
/// pipelined request, say).
pub(super) struct Conn<S> {
    pub io: S,
    buf: Vec<u8>,
    pos: usize,
}

impl<S: Io> Conn<S> {
    pub fn new(io: S) -> Conn<S> {
        Conn {
            io,
            buf: Vec::new(),
            pos: 0,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads more into the buffer.
    fn fill(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            if self.buf.capacity() > MAX_HEAD + READ_CHUNK {
                self.buf.shrink_to(READ_CHUNK);
            }
        } else if self.pos >= READ_CHUNK {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK, 0);
        let r = read_until(&mut self.io, &mut self.buf[old..], deadline);
        self.buf.truncate(old + r.as_ref().map_or(0, |n| *n));
        r
    }

    /// Drops empty lines before a request (RFC 9112 2.2: a server SHOULD ignore them).
    fn skip_empty_lines(&mut self) {
        while let Some(b'\r' | b'\n') = self.buf.get(self.pos) {
            self.pos += 1;
        }
    }

    /// Reads a request head (its first bytes may already be buffered).
    pub fn read_head(&mut self, deadline: Instant) -> Result<Head, RequestError> {
        let mut scanned = 0;
        loop {
            let avail = self.buffered();
            if let Some(end) = parse::find_head_end(avail, scanned) {
                if end > MAX_HEAD {
                    return Err(head_too_large().into());
                }
                let head = parse::parse_head(&avail[..end])?;
                self.pos += end;
                return Ok(head);
            }
            if avail.len() > MAX_HEAD {
                return Err(head_too_large().into());
            }
            scanned = avail.len();
            self.fill(deadline)?;
        }
    }

    /// Appends exactly `n` body bytes to `out`.
    fn read_exact_into(
        &mut self,
        out: &mut Vec<u8>,
        n: usize,
        deadline: Instant,
    ) -> Result<(), ReadError> {
        let from_buf = n.min(self.buffered().len());
        out.extend_from_slice(&self.buf[self.pos..self.pos + from_buf]);
        self.pos += from_buf;
        let end = out.len() + (n - from_buf);
        while out.len() < end {
            let old = out.len();
            // Grow with the data actually received, not with what the client declared.
            let want = (end - old).min(64 * 1024);
            out.resize(old + want, 0);
            let r = read_until(&mut self.io, &mut out[old..], deadline);
            out.truncate(old + r.as_ref().map_or(0, |n| *n));
            r?;
        }
        Ok(())
    }

    /// A body of `Content-Length: n` (the caller checked `n` against the limit).
    pub fn read_sized(&mut self, n: usize, deadline: Instant) -> Result<Vec<u8>, RequestError> {
        let mut body = Vec::with_capacity(n.min(64 * 1024));
        self.read_exact_into(&mut body, n, deadline)?;
        Ok(body)
    }

    /// A line ending in CRLF, without it; at most `max` bytes before the CRLF.
    fn read_line(&mut self, max: usize, deadline: Instant) -> Result<Vec<u8>, RequestError> {
        let mut scanned = 0;
        loop {
            let avail = self.buffered();
            if let Some(i) = avail[scanned..].iter().position(|&b| b == b'\n') {
                let i = scanned + i;
                if i == 0 || avail[i - 1] != b'\r' {
                    return Err(
                        HttpError::bad_request("chunked body: line not ended by CRLF").into(),
                    );
                }
                if i - 1 > max {
                    return Err(HttpError::bad_request("chunked body: line too long").into());
                }
                let line = avail[..i - 1].to_vec();
                self.pos += i + 1;
                return Ok(line);
            }
            if avail.len() > max + 1 {
                return Err(HttpError::bad_request("chunked body: line too long").into());
            }
            scanned = avail.len();
            self.fill(deadline)?;
        }
    }

    /// A `Transfer-Encoding: chunked` body of at most `max` bytes (trailers are read and
    /// ignored).
    pub fn read_chunked(&mut self, max: usize, deadline: Instant) -> Result<Vec<u8>, RequestError> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line(MAX_CHUNK_LINE, deadline)?;
            let size = parse::parse_chunk_size(&line)?;
            if size == 0 {
                break;
            }
            if body.len() as u64 + size > max as u64 {
                return Err(RequestError::TooLarge);
            }
            // In range: the sum is at most `max`, a usize.
            let size = usize::try_from(size).map_err(|_| RequestError::TooLarge)?;
            self.read_exact_into(&mut body, size, deadline)?;
            if !self.read_line(0, deadline)?.is_empty() {
                return Err(
                    HttpError::bad_request("chunked body: no CRLF after chunk data").into(),
                );
            }
        }
        let mut trailers = 0usize;
        loop {
            let line = self.read_line(MAX_HEAD.saturating_sub(trailers), deadline)?;
            if line.is_empty() {
                return Ok(body);
            }
            trailers += line.len() + 2;
        }
    }
}

fn head_too_large() -> HttpError {
    HttpError::new(
        431,
        "header_fields_too_large",
        format!("request line and headers over {MAX_HEAD} bytes"),
    )
}

fn too_large(max: usize) -> HttpError {
    HttpError::new(
        413,
        "payload_too_large",
        format!("request body over {max} bytes"),
    )
}

/// What a connection thread needs.
pub(super) struct Cx<'a> {
    pub config: &'a Config,
    pub handler: &'a Handler,
    pub stop: &'a AtomicBool,
    /// Set while waiting for a request (the connection is closed at once at stop).
    pub idle: &'a AtomicBool,
}

/// Serves a connection until it closes.
pub(super) fn serve(shared: &Shared, tracked: &Tracked, peer: SocketAddr) {
    let mut conn = Conn::new(TcpIo::new(&tracked.stream));
    let cx = Cx {
        config: &shared.config,
        handler: &shared.handler,
        stop: &shared.stop,
        idle: &tracked.idle,
    };
    serve_conn(&mut conn, &cx, peer);
}

pub(super) fn serve_conn<S: Io>(conn: &mut Conn<S>, cx: &Cx<'_>, peer: SocketAddr) {
    let mut first = true;
    loop {
        conn.skip_empty_lines();
        if conn.buffered().is_empty() {
            // A new connection gets the head's timeout for its first byte; a kept-alive
            // one may wait the idle timeout.
            let wait = if first {
                cx.config.header_timeout
            } else {
                cx.config.idle_timeout
            };
            // Idle first, then check stop: `Server::stop` sets stop, then closes the idle.
            cx.idle.store(true, Ordering::SeqCst);
            if cx.stop.load(Ordering::SeqCst) {
                return;
            }
            let got = conn.fill(Instant::now() + wait);
            cx.idle.store(false, Ordering::SeqCst);
            if let Err(e) = got {
                tracing::trace!(error = %e, "HTTP connection closed while idle");
                return;
            }
            continue;
        }
        first = false;
        if !exchange(conn, cx, peer) {
            return;
        }
    }
}

/// Reads one request, answers it; whether the connection stays open.
fn exchange<S: Io>(conn: &mut Conn<S>, cx: &Cx<'_>, peer: SocketAddr) -> bool {
    let config = cx.config;
    let head = match conn.read_head(Instant::now() + config.header_timeout) {
        Ok(h) => h,
        Err(e) => return fail(conn, e, cx, false),
    };
    let head_only = head.method == Method::Head;
    let body = match read_body(conn, &head, config) {
        Ok(b) => b,
        Err(e) => return fail(conn, e, cx, head_only),
    };
    let keep_alive = parse::wants_keep_alive(&head);
    let version = head.version;
    let request = Request {
        method: head.method,
        target: head.target,
        version,
        headers: head.headers,
        body,
        peer,
    };
    let response = match catch_unwind(AssertUnwindSafe(|| (cx.handler)(&request))) {
        Ok(r) => r,
        Err(_) => {
            tracing::error!("HTTP handler panicked");
            HttpError::new(500, "internal", "internal error").response()
        }
    };
    drop(request);
    let close = response.close || !keep_alive || cx.stop.load(Ordering::SeqCst);
    let announce = !close && version == Version::Http10;
    if !write_response(&mut conn.io, &response, head_only, close, announce) {
        return false;
    }
    if close {
        closing(conn, cx, LINGER_BYTES);
    }
    !close
}

/// The body the head declares, read whole (or why not).
fn read_body<S: Io>(
    conn: &mut Conn<S>,
    head: &Head,
    config: &Config,
) -> Result<Vec<u8>, RequestError> {
    let framing = parse::framing(head)?;
    let expect = parse::expect(head);
    if expect == Expect::Other {
        return Err(HttpError::new(417, "expectation_failed", "unsupported Expect").into());
    }
    let max = config.max_body;
    let deadline = Instant::now() + config.body_timeout;
    let go_ahead = |conn: &mut Conn<S>| -> Result<(), RequestError> {
        // Only if the client waits for it (none of the body has come yet).
        if expect == Expect::Continue && conn.buffered().is_empty() {
            conn.io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|e| RequestError::Lost(ReadError::Io(e)))?;
        }
        Ok(())
    };
    match framing {
        Framing::None => Ok(Vec::new()),
        Framing::Length(0) => Ok(Vec::new()),
        Framing::Length(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|n| *n <= max)
                .ok_or(RequestError::TooLarge)?;
            go_ahead(conn)?;
            conn.read_sized(n, deadline)
        }
        Framing::Chunked => {
            go_ahead(conn)?;
            conn.read_chunked(max, deadline)
        }
    }
}

/// Answers a request that could not be read (when there is anyone to answer) and closes.
fn fail<S: Io>(conn: &mut Conn<S>, e: RequestError, cx: &Cx<'_>, head_only: bool) -> bool {
    let config = cx.config;
    let error = match e {
        RequestError::Lost(e) => {
            tracing::trace!(error = %e, "HTTP connection lost mid-request");
            return false;
        }
        RequestError::Timeout => {
            HttpError::new(408, "request_timeout", "request not received in time")
        }
        RequestError::TooLarge => too_large(config.max_body),
        RequestError::Http(e) => e,
    };
    tracing::debug!(
        status = error.status,
        code = error.code,
        "HTTP request refused"
    );
    if write_response(&mut conn.io, &error.response(), head_only, true, false) {
        // Read what the client is still sending (a body over the limit, say), up to a
        // bound, so that it reads our answer rather than a reset. A client that does not
        // wait for `100 Continue` sends its whole body before reading: an overage of up to
        // the limit again is read through (closing with unread bytes would reset the
        // connection, and the client would see a broken pipe instead of the 413).
        closing(
            conn,
            cx,
            LINGER_BYTES.max((config.max_body as u64).saturating_mul(2)),
        );
    }
    false
}

/// Lingers before closing, unless the server is stopping (a lingering connection counts
/// as idle: `Server::stop` shuts it at once).
fn closing<S: Io>(conn: &mut Conn<S>, cx: &Cx<'_>, budget: u64) {
    cx.idle.store(true, Ordering::SeqCst);
    if !cx.stop.load(Ordering::SeqCst) {
        linger(&mut conn.io, budget, LINGER_TIME);
    }
}

/// Ends our side, then reads and discards what the peer still sends, up to `budget`
/// bytes or `within`, until it closes.
pub(super) fn linger<S: Io>(io: &mut S, budget: u64, within: Duration) {
    io.shutdown_write();
    let deadline = Instant::now() + within;
    let mut scratch = [0u8; 4096];
    let mut left = budget;
    while left > 0 {
        let want = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(scratch.len());
        match read_until(io, &mut scratch[..want], deadline) {
            Ok(n) => left = left.saturating_sub(n as u64),
            Err(_) => return,
        }
    }
}

/// Writes an answer (without the body for HEAD); false if the write failed.
pub(super) fn write_response<S: Io>(
    io: &mut S,
    r: &Response,
    head_only: bool,
    close: bool,
    announce_keep_alive: bool,
) -> bool {
    let bodiless = r.status == 204 || r.status == 304 || r.status < 200;
    let mut out = Vec::with_capacity(256 + r.body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\nDate: {}\r\n",
            r.status,
            reason(r.status),
            http_date(SystemTime::now())
        )
        .as_bytes(),
    );
    if !bodiless {
        out.extend_from_slice(
            format!(
                "Content-Type: {}\r\nContent-Length: {}\r\n",
                r.content_type,
                r.body.len()
            )
            .as_bytes(),
        );
    }
    for (name, value) in &r.headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if announce_keep_alive {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && !bodiless {
        out.extend_from_slice(&r.body);
    }
    match io.write_all(&out).and_then(|()| io.flush()) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(status = r.status, error = %e, "HTTP response not sent");
            false
        }
    }
}

/// The reason phrase of a status code.
pub(super) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        s if s < 200 => "Informational",
        s if s < 300 => "Success",
        s if s < 400 => "Redirection",
        s if s < 500 => "Client Error",
        _ => "Server Error",
    }
}

/// IMF-fixdate (RFC 9110 5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(super) fn http_date(now: SystemTime) -> String {
    let ms = now
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    // `Tue, 4 Nov 2026 19:01:08 +0000`: the same fields, day unpadded, numeric zone.
    let s = outpost_core::Time(ms).rfc5322();
    let parts: Vec<&str> = s.split(' ').collect();
    match parts.as_slice() {
        [wd, d, mon, y, hms, _zone] => format!("{wd} {d:0>2} {mon} {y} {hms} GMT"),
        _ => s,
    }
}
