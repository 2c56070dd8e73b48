//! Pure parsing: the request head (with `httparse`), the body framing it declares, and
//! chunked-encoding lines. No I/O here; `conn.rs` feeds bytes in.

use std::net::SocketAddr;

use super::HttpError;

/// Largest request line + header section accepted (431 above).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields accepted (431 above).
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (size, extensions) accepted in a chunked body.
pub const MAX_CHUNK_LINE: usize = 4096;

/// The request methods the server knows (an unknown one is answered 501).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Trace,
    Connect,
}

impl Method {
    /// Methods are case-sensitive tokens (RFC 9110 9.1).
    pub fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "CONNECT" => Method::Connect,
            _ => return None,
        })
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub method: Method,
    /// Path and query (origin form; an absolute-form target is reduced to it).
    pub target: String,
    pub version: Version,
    /// Header fields in order, values trimmed (non-UTF-8 bytes replaced).
    pub headers: Vec<(String, String)>,
}

/// A request as the handlers see it: the body is already read.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    pub target: String,
    pub version: Version,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Request {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every value of a header (all fields with that name), split at commas, trimmed,
/// lower-cased, empty elements dropped.
pub fn tokens(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Where the head ends (the index just past its empty line), searching from `from`
/// (callers pass where the previous search stopped, so a head trickling in byte by byte
/// is scanned once overall). Both CRLF and bare LF line ends count.
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    let mut i = start;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match buf.get(i + 1) {
                Some(b'\n') => return Some(i + 2),
                Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Parses a complete head (`buf` ends at [`find_head_end`]'s index, leading empty lines
/// already skipped).
pub fn parse_head(buf: &[u8]) -> Result<Head, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(
                431,
                "header_fields_too_large",
                format!("more than {MAX_HEADERS} header fields"),
            ));
        }
        Err(httparse::Error::Version) => {
            return Err(if declares_other_version(buf) {
                HttpError::new(
                    505,
                    "http_version_not_supported",
                    "only HTTP/1.0 and HTTP/1.1 are supported",
                )
            } else {
                HttpError::bad_request("malformed request line")
            });
        }
        Err(e) => {
            return Err(HttpError::bad_request(format!("malformed request: {e}")));
        }
    };
    if status.is_partial() {
        // `find_head_end` saw an empty line that httparse does not take as the end of
        // the head (e.g. a line of stray whitespace): refuse rather than guess.
        return Err(HttpError::bad_request("malformed request head"));
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::bad_request("malformed request line"));
    };
    let method = Method::parse(method)
        .ok_or_else(|| HttpError::new(501, "not_implemented", "request method not implemented"))?;
    let version = match version {
        0 => Version::Http10,
        _ => Version::Http11,
    };
    let target = origin_form(path, method)
        .ok_or_else(|| HttpError::bad_request("malformed request target"))?;
    let headers = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    Ok(Head {
        method,
        target,
        version,
        headers,
    })
}

/// `METHOD SP target SP HTTP/<digit>.<digit>` with a version other than 1.0 / 1.1.
fn declares_other_version(buf: &[u8]) -> bool {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = buf[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..line_end]);
    let Some(sp) = line.iter().rposition(|&b| b == b' ') else {
        return false;
    };
    match &line[sp + 1..] {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] => {
            major.is_ascii_digit() && minor.is_ascii_digit()
        }
        [b'H', b'T', b'T', b'P', b'/', major] => major.is_ascii_digit(),
        _ => false,
    }
}

/// The origin-form of a request target: `/path?query` as is, `*` for OPTIONS, and an
/// absolute-form `http://host/path?q` reduced to `/path?q` (RFC 9112 3.2).
fn origin_form(target: &str, method: Method) -> Option<String> {
    if target.starts_with('/') {
        return Some(target.to_string());
    }
    if target == "*" && method == Method::Options {
        return Some(target.to_string());
    }
    let lower = target
        .get(..8)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return None;
    };
    let path_at = rest.find(['/', '?']).unwrap_or(rest.len());
    if path_at == 0 {
        return None;
    }
    let path = &rest[path_at..];
    Some(if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    })
}

/// How the request's body is delimited (RFC 9112 6.3).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    Length(u64),
    Chunked,
}

/// The framing the head declares, or why it cannot be trusted.
pub fn framing(head: &Head) -> Result<Framing, HttpError> {
    let has = |name: &str| {
        head.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let lengths: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    if has("transfer-encoding") {
        if head.version == Version::Http10 {
            return Err(HttpError::bad_request(
                "Transfer-Encoding is not allowed in an HTTP/1.0 request",
            ));
        }
        if !lengths.is_empty() {
            return Err(HttpError::bad_request(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        let codings = tokens(&head.headers, "transfer-encoding");
        if codings.iter().any(|c| c != "chunked") {
            return Err(HttpError::new(
                501,
                "not_implemented",
                "only the chunked transfer coding is supported",
            ));
        }
        if codings.len() != 1 {
            return Err(HttpError::bad_request("malformed Transfer-Encoding"));
        }
        return Ok(Framing::Chunked);
    }
    match lengths.as_slice() {
        [] => Ok(Framing::None),
        [v] => parse_length(v)
            .map(Framing::Length)
            .ok_or_else(|| HttpError::bad_request("invalid Content-Length")),
        _ => Err(HttpError::bad_request("more than one Content-Length")),
    }
}

/// `1*DIGIT`, no sign, no list, no overflow.
fn parse_length(v: &str) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// What the `Expect` header asks for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    Nothing,
    Continue,
    /// An expectation we cannot meet (417).
    Other,
}

pub fn expect(head: &Head) -> Expect {
    // A server MUST ignore a 100-continue expectation in an HTTP/1.0 request.
    if head.version == Version::Http10 {
        return Expect::Nothing;
    }
    match header(&head.headers, "expect") {
        None => Expect::Nothing,
        Some(v) if v.eq_ignore_ascii_case("100-continue") => Expect::Continue,
        Some(_) => Expect::Other,
    }
}

/// Whether the client wants the connection kept open after this exchange.
pub fn wants_keep_alive(head: &Head) -> bool {
    let conn = tokens(&head.headers, "connection");
    match head.version {
        Version::Http11 => !conn.iter().any(|t| t == "close"),
        Version::Http10 => {
            conn.iter().any(|t| t == "keep-alive") && !conn.iter().any(|t| t == "close")
        }
    }
}

/// The size in a chunk-size line (without its CRLF): hex digits, optional whitespace and
/// `;extensions` after them (ignored).
pub fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let bad = || HttpError::bad_request("invalid chunk size");
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    // 15 hex digits keep the size far from overflow; no sane body gets near.
    if digits_end == 0 || digits_end > 15 {
        return Err(bad());
    }
    let rest = &line[digits_end..];
    let after_ws = rest
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(rest.len());
    match rest.get(after_ws) {
        None | Some(b';') => {}
        Some(_) => return Err(bad()),
    }
    let digits = std::str::from_utf8(&line[..digits_end]).map_err(|_| bad())?;
    u64::from_str_radix(digits, 16).map_err(|_| bad())
}
