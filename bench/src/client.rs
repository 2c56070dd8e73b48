//! Minimal clients with as little overhead as we can manage (the benchmark shares two cores
//! with the daemon): HTTP/1.1 keep-alive over a raw socket, and an SMTP client that
//! pipelines when the server allows it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub type Res<T> = Result<T, String>;

/// One keep-alive HTTP connection; reconnects when the server closed it.
pub struct Http {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
}

impl Http {
    pub fn new(addr: &str) -> Http {
        Http {
            addr: addr.to_string(),
            conn: None,
        }
    }

    fn connect(&mut self) -> Res<&mut BufReader<TcpStream>> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr)
                .map_err(|e| format!("connect {}: {e}", self.addr))?;
            let _ = s.set_nodelay(true);
            s.set_read_timeout(Some(Duration::from_secs(120)))
                .map_err(|e| e.to_string())?;
            self.conn = Some(BufReader::with_capacity(16 * 1024, s));
        }
        self.conn
            .as_mut()
            .ok_or_else(|| "no connection".to_string())
    }

    /// Sends one request; returns (status, body). Retries once on a connection the
    /// server had closed while idle (keep-alive race) — only safe because the caller's
    /// requests are either reads or carry no side effect before the server reads them.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: &[u8],
    ) -> Res<(u16, Vec<u8>)> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\n");
        if let Some(k) = auth {
            head.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let fresh = self.conn.is_none();
        match self.try_request(head.as_bytes(), body) {
            Ok(x) => Ok(x),
            Err(_) if !fresh => {
                self.conn = None;
                self.try_request(head.as_bytes(), body)
            }
            Err(e) => Err(e),
        }
    }

    fn try_request(&mut self, head: &[u8], body: &[u8]) -> Res<(u16, Vec<u8>)> {
        let result = (|| {
            let c = self.connect()?;
            let s = c.get_mut();
            let mut buf = Vec::with_capacity(head.len() + body.len());
            buf.extend_from_slice(head);
            buf.extend_from_slice(body);
            s.write_all(&buf).map_err(|e| format!("write: {e}"))?;
            read_response(c)
        })();
        match result {
            Ok((status, body, close)) => {
                if close {
                    self.conn = None;
                }
                Ok((status, body))
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

fn read_response(r: &mut BufReader<TcpStream>) -> Res<(u16, Vec<u8>, bool)> {
    let mut line = String::new();
    if r.read_line(&mut line).map_err(|e| format!("read: {e}"))? == 0 {
        return Err("connection closed".into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = false;
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(|e| format!("read: {e}"))? == 0 {
            return Err("connection closed in headers".into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                length = v.parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.eq_ignore_ascii_case("chunked");
            } else if k.eq_ignore_ascii_case("connection") {
                close = v.eq_ignore_ascii_case("close");
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
            let n = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body).map_err(|e| format!("read: {e}"))?;
    } else {
        r.read_to_end(&mut body).map_err(|e| format!("read: {e}"))?;
        close = true;
    }
    Ok((status, body, close))
}

/// An SMTP client session (one connection, many transactions).
pub struct Smtp {
    r: BufReader<TcpStream>,
    pipelining: bool,
}

impl Smtp {
    pub fn connect(addr: &str, helo: &str) -> Res<Smtp> {
        let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(|e| e.to_string())?;
        let mut c = Smtp {
            r: BufReader::with_capacity(8192, s),
            pipelining: false,
        };
        c.expect(220)?;
        c.send(format!("EHLO {helo}\r\n").as_bytes())?;
        let lines = c.expect(250)?;
        c.pipelining = lines.iter().any(|l| {
            l.get(4..)
                .is_some_and(|x| x.eq_ignore_ascii_case("PIPELINING"))
        });
        Ok(c)
    }

    fn send(&mut self, b: &[u8]) -> Res<()> {
        self.r
            .get_mut()
            .write_all(b)
            .map_err(|e| format!("write: {e}"))
    }

    /// Reads one (multi-line) reply; fails unless its code is `code`.
    fn expect(&mut self, code: u16) -> Res<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self
                .r
                .read_line(&mut line)
                .map_err(|e| format!("read: {e}"))?
                == 0
            {
                return Err("connection closed".into());
            }
            let l = line.trim_end().to_string();
            let got: u16 = l.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            let more = l.as_bytes().get(3) == Some(&b'-');
            lines.push(l);
            if !more {
                if got != code {
                    return Err(format!("expected {code}, got {lines:?}"));
                }
                return Ok(lines);
            }
        }
    }

    /// One transaction; `data` is the message, already dot-stuffed, ending in CRLF.
    pub fn send_mail(&mut self, from: &str, to: &[String], data: &[u8]) -> Res<()> {
        let mut cmds = format!("MAIL FROM:<{from}>\r\n");
        for t in to {
            cmds.push_str(&format!("RCPT TO:<{t}>\r\n"));
        }
        cmds.push_str("DATA\r\n");
        if self.pipelining {
            self.send(cmds.as_bytes())?;
            self.expect(250)?;
            for _ in to {
                self.expect(250)?;
            }
            self.expect(354)?;
        } else {
            for (i, c) in cmds.split_inclusive("\r\n").enumerate() {
                self.send(c.as_bytes())?;
                self.expect(if i == to.len() + 1 { 354 } else { 250 })?;
            }
        }
        let mut msg = Vec::with_capacity(data.len() + 3);
        msg.extend_from_slice(data);
        msg.extend_from_slice(b".\r\n");
        self.send(&msg)?;
        self.expect(250)?;
        Ok(())
    }

    pub fn quit(mut self) {
        let _ = self.send(b"QUIT\r\n");
        let _ = self.expect(221);
    }
}
