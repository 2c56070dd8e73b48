//! The server: the parser on bytes, the chunked decoder on a trickling script, and the
//! whole server over loopback sockets with a small echo handler.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::conn::{Conn, Io, RequestError, http_date};
use super::parse::{self, Framing, Method, Version};
use super::*;

// ---- parser ----

fn head(raw: &str) -> Result<parse::Head, HttpError> {
    let end = parse::find_head_end(raw.as_bytes(), 0).expect("complete head");
    parse::parse_head(&raw.as_bytes()[..end])
}

fn status_of(raw: &str) -> u16 {
    match head(raw).and_then(|h| parse::framing(&h).map(|_| h)) {
        Ok(_) => 200,
        Err(e) => e.status,
    }
}

#[test]
fn parses_a_head() {
    let h = head("POST /v1/messages?x=1 HTTP/1.1\r\nHost: a\r\nX-Key:  v a l \r\nx-key: 2\r\n\r\n")
        .unwrap();
    assert_eq!(h.method, Method::Post);
    assert_eq!(h.target, "/v1/messages?x=1");
    assert_eq!(h.version, Version::Http11);
    assert_eq!(parse::header(&h.headers, "X-KEY"), Some("v a l"));
    // Bare LF line ends are read too.
    let h = head("GET / HTTP/1.0\nHost: a\n\n").unwrap();
    assert_eq!(h.version, Version::Http10);
    // Absolute form is reduced to the path.
    let h = head("GET http://example.com:8025/healthz?a=b HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(h.target, "/healthz?a=b");
    let h = head("GET HTTP://example.com HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(h.target, "/");
    let h = head("OPTIONS * HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(h.target, "*");
}

#[test]
fn malformed_request_lines_and_headers() {
    for raw in [
        "GARBAGE\r\n\r\n",
        "GET\r\n\r\n",
        "GET /\r\n\r\n",
        "GET / HTTX/1.1\r\n\r\n",
        "GET / HTTP/1.1 extra\r\n\r\n",
        "GET  / HTTP/1.1\r\n\r\n",
        "GET example.com HTTP/1.1\r\n\r\n",
        "GET * HTTP/1.1\r\n\r\n",
        "GET http:///x HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        "GET / HTTP/1.1\r\n: novalue\r\n\r\n",
        "GET / HTTP/1.1\r\nNo-Colon\r\n\r\n",
        "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
        "\x00GET / HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(status_of(raw), 400, "{raw:?}");
    }
    // Unknown methods (methods are case-sensitive): 501.
    assert_eq!(status_of("BREW / HTTP/1.1\r\n\r\n"), 501);
    assert_eq!(status_of("get / HTTP/1.1\r\n\r\n"), 501);
    // Other HTTP versions: 505.
    for v in ["HTTP/2.0", "HTTP/1.2", "HTTP/3", "HTTP/0.9"] {
        assert_eq!(status_of(&format!("GET / {v}\r\n\r\n")), 505, "{v}");
    }
}

#[test]
fn too_many_headers_is_431() {
    let mut raw = String::from("GET / HTTP/1.1\r\n");
    for i in 0..100 {
        raw.push_str(&format!("X-{i}: v\r\n"));
    }
    assert_eq!(status_of(&format!("{raw}\r\n")), 200);
    raw.push_str("X-100: v\r\n\r\n");
    assert_eq!(status_of(&raw), 431);
}

#[test]
fn body_framing() {
    let framing = |raw: &str| head(raw).and_then(|h| parse::framing(&h));
    let get = |extra: &str| framing(&format!("POST / HTTP/1.1\r\n{extra}\r\n"));
    assert_eq!(get("").unwrap(), Framing::None);
    assert_eq!(get("Content-Length: 12\r\n").unwrap(), Framing::Length(12));
    assert_eq!(get("Content-Length: 0\r\n").unwrap(), Framing::Length(0));
    assert_eq!(
        get("Transfer-Encoding: Chunked\r\n").unwrap(),
        Framing::Chunked
    );
    for bad in [
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 5\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 0x10\r\n",
        "Content-Length: \r\n",
        "Content-Length: 99999999999999999999999\r\n",
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: \r\n",
    ] {
        let e = get(bad).unwrap_err();
        assert_eq!(e.status, 400, "{bad:?}: {e}");
    }
    for other in [
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: identity\r\n",
    ] {
        assert_eq!(get(other).unwrap_err().status, 501, "{other:?}");
    }
    // Transfer-Encoding in an HTTP/1.0 request: faulty framing.
    let e = framing("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err();
    assert_eq!(e.status, 400);
}

#[test]
fn keep_alive_and_expect_rules() {
    let ka = |raw: &str| parse::wants_keep_alive(&head(raw).unwrap());
    assert!(ka("GET / HTTP/1.1\r\n\r\n"));
    assert!(!ka("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
    assert!(!ka("GET / HTTP/1.1\r\nConnection: TE, Close\r\n\r\n"));
    assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
    assert!(ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    let ex = |raw: &str| parse::expect(&head(raw).unwrap());
    assert_eq!(
        ex("POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n"),
        parse::Expect::Continue
    );
    assert_eq!(
        ex("POST / HTTP/1.1\r\nExpect: something\r\n\r\n"),
        parse::Expect::Other
    );
    assert_eq!(
        ex("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n"),
        parse::Expect::Nothing
    );
}

#[test]
fn chunk_size_lines() {
    let ok = |s: &str| parse::parse_chunk_size(s.as_bytes()).unwrap();
    assert_eq!(ok("0"), 0);
    assert_eq!(ok("1a"), 26);
    assert_eq!(ok("FF"), 255);
    assert_eq!(ok("5;name=value"), 5);
    assert_eq!(ok("5 ;ext"), 5);
    assert_eq!(ok("000000000000010"), 16);
    for bad in [
        "",
        " 5",
        "-1",
        "0x5",
        "zz",
        "5 5",
        "5x",
        "1000000000000000",
        ";ext",
    ] {
        assert!(parse::parse_chunk_size(bad.as_bytes()).is_err(), "{bad:?}");
    }
}

#[test]
fn head_end_scan_is_incremental() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest";
    assert_eq!(parse::find_head_end(raw, 0), Some(raw.len() - 4));
    // Resuming a scan just past the previous end still finds a terminator split
    // across reads.
    for split in 1..raw.len() - 4 {
        let found = parse::find_head_end(&raw[..split], 0);
        assert!(found.is_none(), "{split}");
        assert_eq!(parse::find_head_end(raw, split), Some(raw.len() - 4));
    }
}

#[test]
fn http_dates() {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777);
    assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
}

// ---- the connection on a scripted stream ----

/// Reads come from a script, `step` bytes at a time; writes are recorded.
struct Script {
    input: VecDeque<u8>,
    step: usize,
    output: Vec<u8>,
}

impl Script {
    fn new(input: &[u8], step: usize) -> Script {
        Script {
            input: input.iter().copied().collect(),
            step,
            output: Vec::new(),
        }
    }
}

impl Read for Script {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(self.step).min(self.input.len());
        for b in buf.iter_mut().take(n) {
            *b = self.input.pop_front().unwrap();
        }
        Ok(n)
    }
}

impl Write for Script {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Io for Script {
    fn set_read_timeout(&mut self, _: Duration) -> io::Result<()> {
        Ok(())
    }
    fn shutdown_write(&mut self) {}
}

fn soon() -> Instant {
    Instant::now() + Duration::from_millis(200)
}

fn chunked(input: &str, step: usize, max: usize) -> (Result<Vec<u8>, RequestError>, Vec<u8>) {
    let mut conn = Conn::new(Script::new(input.as_bytes(), step));
    let r = conn.read_chunked(max, soon());
    // What is left for the next request.
    let mut rest = Vec::new();
    while let Ok(h) = conn.read_head(soon()) {
        rest.extend_from_slice(h.target.as_bytes());
    }
    (r, rest)
}

#[test]
fn chunked_bodies_decode_at_any_read_size() {
    let input = "5\r\nhello\r\n6;ext=\"a b\"\r\n world\r\n0\r\nX-Trailer: t\r\nMore: x\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
    for step in [1, 2, 3, 7, 64, 4096] {
        let (r, rest) = chunked(input, step, 100);
        assert_eq!(r.unwrap(), b"hello world", "step {step}");
        assert_eq!(rest, b"/next", "step {step}");
    }
    let (r, _) = chunked("0\r\n\r\n", 1, 100);
    assert!(r.unwrap().is_empty());
    // Exactly at the limit is fine; one byte over is not.
    let (r, _) = chunked("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 2, 5);
    assert_eq!(r.unwrap(), b"abcde");
    let (r, _) = chunked("3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", 2, 5);
    assert!(matches!(r, Err(RequestError::TooLarge)), "{r:?}");
    // A huge declared chunk is refused before anything is read or allocated.
    let (r, _) = chunked("fffffffffffffff\r\n", 64, 5);
    assert!(matches!(r, Err(RequestError::TooLarge)), "{r:?}");
}

#[test]
fn bad_chunked_bodies_are_400() {
    for bad in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "\r\nhello\r\n0\r\n\r\n",
        "-5\r\nhello\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "5\r\nhelloX\r\n0\r\n\r\n",
        "5\r\nhello\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\nTrailer: x\n\r\n",
        "1000000000000000\r\n",
    ] {
        let (r, _) = chunked(bad, 3, 100);
        match r {
            Err(RequestError::Http(e)) => assert_eq!(e.status, 400, "{bad:?}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    // A chunk-size line without end.
    let long = format!("5;{}", "x".repeat(5000));
    let (r, _) = chunked(&long, 512, 100);
    assert!(
        matches!(r, Err(RequestError::Http(ref e)) if e.status == 400),
        "{r:?}"
    );
    // A body cut short: the peer is gone, nothing to answer.
    let (r, _) = chunked("5\r\nhel", 1, 100);
    assert!(
        matches!(r, Err(RequestError::Timeout | RequestError::Lost(_))),
        "{r:?}"
    );
}

// ---- the server over sockets ----

fn echo(req: &Request) -> Response {
    match req.target.as_str() {
        "/slow" => std::thread::sleep(Duration::from_millis(400)),
        "/panic" => panic!("handler panicked on purpose"),
        "/fixed" => return Response::new(200, "text/plain", b"the same for GET and HEAD".to_vec()),
        "/nested" => {
            // The handlers' deepest path: serde_json on nested input.
            let r: Result<Value, _> = serde_json::from_slice(&req.body);
            return Response::new(
                if r.is_ok() { 200 } else { 400 },
                "text/plain",
                b"parsed".to_vec(),
            );
        }
        _ => {}
    }
    let body = json!({
        "method": format!("{:?}", req.method),
        "target": req.target,
        "body": String::from_utf8_lossy(&req.body),
        "x": req.header("x-test"),
    });
    Response::new(200, "application/json", body.to_string().into_bytes()).header("X-Echo", "1")
}

fn start(config: Config) -> Server {
    Server::start("127.0.0.1:0", config, Arc::new(echo)).unwrap()
}

fn small() -> Config {
    Config {
        max_body: 1024,
        header_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

/// A raw HTTP/1.1 client: responses are read by their Content-Length.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        parse::header(&self.headers, name)
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

impl Client {
    fn connect(s: &Server) -> Client {
        let stream = TcpStream::connect(s.local_addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("read: {e}"),
        }
    }

    /// The next response (`None`: the connection closed first).
    fn answer_opt(&mut self, head_only: bool) -> Option<Answer> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(end) = resp.parse(&self.buf).unwrap() {
                let status = resp.code.unwrap();
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).to_string(),
                        )
                    })
                    .collect();
                let len: usize = if head_only || status == 100 || status == 204 {
                    0
                } else {
                    parse::header(&headers, "content-length")
                        .unwrap()
                        .parse()
                        .unwrap()
                };
                while self.buf.len() < end + len {
                    assert!(self.fill() > 0, "closed mid-body");
                }
                let body = self.buf[end..end + len].to_vec();
                self.buf.drain(..end + len);
                return Some(Answer {
                    status,
                    headers,
                    body,
                });
            }
            if self.fill() == 0 {
                assert!(self.buf.is_empty(), "closed mid-head");
                return None;
            }
        }
    }

    fn answer(&mut self) -> Answer {
        self.answer_opt(false).expect("an answer")
    }

    /// True if the server closes the connection (EOF) within `within`.
    fn closed_within(&mut self, within: Duration) -> bool {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut b = [0u8; 64];
        matches!(self.stream.read(&mut b), Ok(0))
            || matches!(self.stream.read(&mut b), Err(e) if e.kind() == io::ErrorKind::ConnectionReset)
    }
}

#[test]
fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let s = start(small());
    let mut c = Client::connect(&s);
    // Three requests in one write, the middle one with a body, the last with a chunked
    // one, with stray empty lines between (ignored).
    c.send(
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-Test: one\r\n\r\n\
          POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\r\n\
          POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    let a = c.answer();
    assert_eq!((a.status, a.json()["target"].as_str()), (200, Some("/a")));
    assert_eq!(a.json()["x"], "one");
    assert_eq!(a.header("x-echo"), Some("1"));
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert!(a.header("date").unwrap().ends_with(" GMT"));
    assert_eq!(a.header("connection"), None);
    let b = c.answer();
    assert_eq!(b.json()["target"], "/b");
    assert_eq!(b.json()["body"], "hello");
    let d = c.answer();
    assert_eq!(d.json()["target"], "/c");
    assert_eq!(d.json()["body"], "abc");
    // The connection is still open for more.
    for i in 0..20 {
        c.send(format!("GET /again/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(c.answer().json()["target"], format!("/again/{i}"));
    }
    // `Connection: close` from the client: answered with it, then closed.
    c.send(b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let last = c.answer();
    assert_eq!(last.header("connection"), Some("close"));
    assert!(c.answer_opt(false).is_none());
    s.stop();
}

#[test]
fn http_1_0_closes_unless_asked_to_keep_alive() {
    let s = start(small());
    let mut c = Client::connect(&s);
    c.send(b"GET /one HTTP/1.0\r\n\r\n");
    let a = c.answer();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("connection"), Some("close"));
    assert!(c.answer_opt(false).is_none());

    let mut c = Client::connect(&s);
    c.send(b"GET /one HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.answer().header("connection"), Some("keep-alive"));
    c.send(b"GET /two HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.answer().json()["target"], "/two");
    s.stop();
}

#[test]
fn head_has_the_headers_and_no_body() {
    let s = start(small());
    let mut c = Client::connect(&s);
    c.send(b"GET /fixed HTTP/1.1\r\n\r\n");
    let get = c.answer();
    assert!(!get.body.is_empty());
    c.send(b"HEAD /fixed HTTP/1.1\r\n\r\nGET /after HTTP/1.1\r\n\r\n");
    let head = c.answer_opt(true).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length").unwrap(),
        get.body.len().to_string()
    );
    // Nothing of a body came: the next bytes are the next answer.
    assert_eq!(c.answer().json()["target"], "/after");
    s.stop();
}

#[test]
fn malformed_requests_are_answered_and_closed() {
    let s = start(small());
    for (raw, status) in [
        (&b"GARBAGE\r\n\r\n"[..], 400),
        (b"BREW / HTTP/1.1\r\n\r\n", 501),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nExpect: tea\r\n\r\n", 417),
    ] {
        let mut c = Client::connect(&s);
        c.send(raw);
        let a = c.answer();
        assert_eq!(a.status, status, "{}", String::from_utf8_lossy(raw));
        assert_eq!(a.header("connection"), Some("close"));
        assert_eq!(a.header("content-type"), Some("application/json"));
        assert!(a.json()["error"]["code"].is_string());
        assert!(c.answer_opt(false).is_none(), "closed after");
    }
    s.stop();
}

#[test]
fn header_overflow_is_431() {
    let s = start(small());
    let mut c = Client::connect(&s);
    let big = format!(
        "GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(parse::MAX_HEAD)
    );
    c.send(big.as_bytes());
    let a = c.answer();
    assert_eq!(a.status, 431);
    assert_eq!(a.header("connection"), Some("close"));
    // Without an end of the head at all: 431 once past the limit.
    let mut c = Client::connect(&s);
    c.send(b"GET / HTTP/1.1\r\n");
    for _ in 0..70 {
        c.send(format!("X-Pad: {}\r\n", "b".repeat(1000)).as_bytes());
    }
    assert_eq!(c.answer().status, 431);
    // Just under the limit is fine.
    let mut c = Client::connect(&s);
    let ok = format!(
        "GET /ok HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(parse::MAX_HEAD - 200)
    );
    c.send(ok.as_bytes());
    assert_eq!(c.answer().status, 200);
    s.stop();
}

#[test]
fn oversize_bodies_get_413_and_close() {
    let s = start(small());
    // By Content-Length: answered (the body is read and dropped), then closed.
    let mut c = Client::connect(&s);
    let body = "x".repeat(1500);
    c.send(format!("POST / HTTP/1.1\r\nContent-Length: 1500\r\n\r\n{body}").as_bytes());
    let a = c.answer();
    assert_eq!(a.status, 413);
    assert_eq!(a.header("connection"), Some("close"));
    assert_eq!(a.json()["error"]["code"], "payload_too_large");
    assert!(c.answer_opt(false).is_none());
    // Chunked: the read stops at the limit.
    let mut c = Client::connect(&s);
    c.send(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..3 {
        c.send(format!("200\r\n{}\r\n", "y".repeat(512)).as_bytes());
    }
    c.send(b"0\r\n\r\n");
    let a = c.answer();
    assert_eq!(a.status, 413);
    assert_eq!(a.header("connection"), Some("close"));
    assert!(c.answer_opt(false).is_none());
    // At the limit: fine.
    let mut c = Client::connect(&s);
    let body = "z".repeat(1024);
    c.send(format!("POST / HTTP/1.1\r\nContent-Length: 1024\r\n\r\n{body}").as_bytes());
    assert_eq!(c.answer().json()["body"].as_str().unwrap().len(), 1024);
    s.stop();
}

#[test]
fn expect_100_continue() {
    let s = start(small());
    let mut c = Client::connect(&s);
    c.send(b"POST /e HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    // The go-ahead comes before we send the body.
    let go = c.answer();
    assert_eq!(go.status, 100);
    c.send(b"hello");
    let a = c.answer();
    assert_eq!((a.status, a.json()["body"].as_str()), (200, Some("hello")));
    // Chunked too.
    c.send(b"POST /e HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(c.answer().status, 100);
    c.send(b"2\r\nhi\r\n0\r\n\r\n");
    assert_eq!(c.answer().json()["body"], "hi");
    // Over the limit: 413 at once, no 100, and the body is never sent.
    c.send(b"POST /e HTTP/1.1\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n");
    let a = c.answer();
    assert_eq!(a.status, 413);
    assert_eq!(a.header("connection"), Some("close"));
    assert!(c.answer_opt(false).is_none());
    s.stop();
}

#[test]
fn idle_and_slow_connections_are_closed() {
    let s = start(Config {
        idle_timeout: Duration::from_millis(300),
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        ..small()
    });
    // Idle keep-alive: closed quietly after the idle timeout.
    let mut c = Client::connect(&s);
    c.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(c.answer().status, 200);
    let t = Instant::now();
    assert!(c.closed_within(Duration::from_secs(5)));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // A connection that never sends anything: closed after the header timeout.
    let mut c = Client::connect(&s);
    assert!(c.closed_within(Duration::from_secs(5)));
    // A head that never ends: 408, closed.
    let mut c = Client::connect(&s);
    c.send(b"GET / HTTP/1.1\r\nX-Slow: ");
    let a = c.answer();
    assert_eq!(a.status, 408);
    assert_eq!(a.header("connection"), Some("close"));
    // A body that never ends: 408, closed.
    let mut c = Client::connect(&s);
    c.send(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
    assert_eq!(c.answer().status, 408);
    assert!(c.answer_opt(false).is_none());
    drop(c);
    let t = Instant::now();
    while s.connections() > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "connections not released"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s.stop();
}

#[test]
fn the_connection_cap_answers_503() {
    let s = start(Config {
        max_connections: 2,
        ..small()
    });
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(&s);
        c.send(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(c.answer().status, 200);
        held.push(c);
    }
    let mut c = Client::connect(&s);
    c.send(b"GET / HTTP/1.1\r\n\r\n");
    let a = c.answer();
    assert_eq!(a.status, 503);
    assert_eq!(a.header("connection"), Some("close"));
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(a.json()["error"]["code"], "too_many_connections");
    assert!(c.answer_opt(false).is_none());
    // A slot frees when a held connection closes.
    drop(held.pop());
    let t = Instant::now();
    loop {
        let mut c = Client::connect(&s);
        c.send(b"GET / HTTP/1.1\r\n\r\n");
        if c.answer().status == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "slot not freed");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.stop();
}

#[test]
fn a_panicking_handler_answers_500_and_the_server_goes_on() {
    let s = start(small());
    let mut c = Client::connect(&s);
    c.send(b"GET /panic HTTP/1.1\r\n\r\n");
    let a = c.answer();
    assert_eq!(a.status, 500);
    assert_eq!(a.header("connection"), Some("close"));
    let mut c = Client::connect(&s);
    c.send(b"GET /fine HTTP/1.1\r\n\r\n");
    assert_eq!(c.answer().status, 200);
    s.stop();
}

#[test]
fn stop_closes_idle_connections_and_finishes_requests_in_flight() {
    let s = start(small());
    let addr = s.local_addr();
    let mut idle = Client::connect(&s);
    idle.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(idle.answer().status, 200);
    let mut busy = Client::connect(&s);
    busy.send(b"GET /slow HTTP/1.1\r\n\r\n");
    // Let the slow request reach its handler.
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let stopped = Arc::new(AtomicBool::new(false));
    let flag = stopped.clone();
    let stopper = std::thread::spawn(move || {
        s.stop();
        flag.store(true, Ordering::SeqCst);
    });
    // The idle connection is closed at once (well before the idle timeout)...
    assert!(idle.closed_within(Duration::from_secs(2)));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // ...the request in flight is answered, and told the connection closes.
    let a = busy.answer();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("connection"), Some("close"));
    stopper.join().unwrap();
    assert!(stopped.load(Ordering::SeqCst));
    // The listener is gone.
    assert!(TcpStream::connect(addr).is_err());
    let _ = busy.stream.shutdown(Shutdown::Both);
}

#[test]
fn deeply_nested_json_does_not_overflow_the_connection_stack() {
    // serde_json stops at 128 levels; the default stack has room for that in a debug
    // build, with the server's own frames under it.
    let s = start(Config {
        max_body: 1024 * 1024,
        ..small()
    });
    let mut c = Client::connect(&s);
    for depth in [100, 127, 128, 200_000] {
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        c.send(
            format!(
                "POST /nested HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        c.send(body.as_bytes());
        let a = c.answer();
        // (serde_json's limit: 127 levels parse, 128 do not.)
        assert_eq!(a.status, if depth < 128 { 200 } else { 400 }, "{depth}");
    }
    let nested_objects = format!("{}1{}", "{\"a\":".repeat(127), "}".repeat(127));
    c.send(
        format!(
            "POST /nested HTTP/1.1\r\nContent-Length: {}\r\n\r\n{nested_objects}",
            nested_objects.len()
        )
        .as_bytes(),
    );
    assert_eq!(c.answer().status, 200);
    s.stop();
}

#[test]
fn many_keep_alive_connections_at_once_are_all_served() {
    // The tiny_http 0.12 defect this server replaces: connections opened in a burst were
    // queued behind keep-alive connections that stayed open, and waited for them to
    // close. Here every client keeps its connection open until all are done.
    let s = start(small());
    let addr = s.local_addr();
    let clients = 64;
    let per_client = 20;
    let barrier = Arc::new(std::sync::Barrier::new(clients));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (barrier, done) = (barrier.clone(), done.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let stream = TcpStream::connect(addr).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut c = Client {
                    stream,
                    buf: Vec::new(),
                };
                for j in 0..per_client {
                    c.send(format!("GET /c{i}/r{j} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
                    assert_eq!(c.answer().json()["target"], format!("/c{i}/r{j}"));
                }
                done.fetch_add(1, Ordering::SeqCst);
                // Hold the connection open until everyone is done (or 10 s).
                let end = Instant::now() + Duration::from_secs(10);
                while done.load(Ordering::SeqCst) < clients && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), clients);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    s.stop();
}
