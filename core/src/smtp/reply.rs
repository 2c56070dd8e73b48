//! SMTP replies: the [`Reply`] value and the [`ReplyReader`] that frames raw bytes from a
//! (possibly hostile) server into complete replies under hard limits.
//!
//! Framing and line validation are ours: smtp-proto's `ResponseReceiver` caps a whole reply
//! at 4096 bytes, does not check that all lines of a multi-line reply carry the same code,
//! and buffers input it has not yet judged; here every byte is judged as it arrives and
//! memory stays bounded by [`MAX_REPLY_BYTES`] plus one line. EHLO capabilities are read
//! by smtp-proto (see `capabilities.rs`).

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::sanitize;

/// Longest reply line accepted, terminator included (RFC 5321 says 512; servers exceed it).
pub const MAX_LINE_BYTES: usize = 4096;
/// Most lines in one reply.
pub const MAX_REPLY_LINES: usize = 100;
/// Most bytes in one reply, terminators included.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// One complete SMTP reply (all lines of a multi-line reply), sanitized.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub code: u16,
    /// RFC 3463 enhanced status code (`class.subject.detail`), if the reply has one.
    pub enhanced: Option<String>,
    /// Sanitized text of all lines joined by a space, at most 1024 bytes, without the
    /// code and enhanced code.
    pub text: String,
}

impl Reply {
    /// A reply built by us (not received), e.g. a refusal synthesized before sending.
    pub fn synthesized(code: u16, enhanced: Option<&str>, text: &str) -> Reply {
        Reply {
            code,
            enhanced: enhanced.map(str::to_string),
            text: sanitize::cut(text, sanitize::MAX_REMOTE_TEXT),
        }
    }
    pub fn class(&self) -> u16 {
        self.code / 100
    }
    pub fn is_positive(&self) -> bool {
        self.code / 100 == 2 || self.code / 100 == 3
    }
    /// `"550 5.1.1 text"`, as shown to people.
    pub fn display(&self) -> String {
        match &self.enhanced {
            Some(e) => format!("{} {} {}", self.code, e, self.text),
            None => format!("{} {}", self.code, self.text),
        }
    }
}

/// Why the byte stream is not SMTP replies. The description is short and sanitized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyError(pub String);

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReplyError {}

/// A complete reply as received: the code and its raw lines (validated, terminators
/// included), at most [`MAX_REPLY_BYTES`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawReply {
    pub code: u16,
    bytes: Vec<u8>,
}

impl RawReply {
    /// The raw bytes of all lines, terminators included.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Each line without its terminator (`"250-PIPELINING"`).
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.bytes
            .split_inclusive(|&b| b == b'\n')
            .map(strip_terminator)
    }

    /// The text of each line (after the code and separator).
    pub fn texts(&self) -> impl Iterator<Item = &[u8]> {
        self.lines().map(|l| l.get(4..).unwrap_or_default())
    }

    /// The sanitized [`Reply`]: the enhanced code of the first line (RFC 3463, repeated
    /// codes on later lines dropped), and the text of all lines joined with a space.
    pub fn reply(&self) -> Reply {
        let mut enhanced: Option<&[u8]> = None;
        let mut joined: Vec<u8> = Vec::with_capacity(self.bytes.len().min(2048));
        for (i, text) in self.texts().enumerate() {
            let mut text = text;
            if i == 0 {
                if let Some((code, rest)) = split_enhanced(text) {
                    enhanced = Some(code);
                    text = rest;
                }
            } else if let (Some(first), Some((code, rest))) = (enhanced, split_enhanced(text))
                && code == first
            {
                text = rest;
            }
            if !joined.is_empty() {
                joined.push(b' ');
            }
            joined.extend_from_slice(text);
            if joined.len() > 4 * sanitize::MAX_REMOTE_TEXT {
                // Enough to fill the sanitized budget whatever gets collapsed.
                break;
            }
        }
        Reply {
            code: self.code,
            enhanced: enhanced.map(|e| String::from_utf8_lossy(e).into_owned()),
            text: sanitize::remote_text(&joined),
        }
    }
}

/// Splits a leading RFC 3463 enhanced status code (`class.subject.detail`, class 2, 4 or
/// 5, subject and detail 1 to 3 digits) followed by whitespace or the end.
fn split_enhanced(text: &[u8]) -> Option<(&[u8], &[u8])> {
    let class = *text.first()?;
    if !matches!(class, b'2' | b'4' | b'5') || text.get(1) != Some(&b'.') {
        return None;
    }
    let mut i = 2;
    for part in 0..2 {
        let start = i;
        while text.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start || i - start > 3 {
            return None;
        }
        if part == 0 {
            if text.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
    }
    match text.get(i) {
        None => Some((text, &[])),
        Some(b' ' | b'\t') => {
            let code = text.get(..i)?;
            let rest = text.get(i..).unwrap_or_default();
            let skip = rest
                .iter()
                .take_while(|b| matches!(b, b' ' | b'\t'))
                .count();
            Some((code, rest.get(skip..).unwrap_or_default()))
        }
        Some(_) => None,
    }
}

fn strip_terminator(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Frames bytes into complete replies. Lines end in CRLF (a bare LF is tolerated).
///
/// Memory is bounded: at most [`MAX_REPLY_BYTES`] of complete lines plus
/// [`MAX_LINE_BYTES`] of the line in progress; anything beyond is an error as soon as
/// it is seen, never buffered. After an error the reader is empty and should be dropped.
#[derive(Clone, Debug, Default)]
pub struct ReplyReader {
    /// The reply in progress: complete lines, then the line in progress.
    buf: Vec<u8>,
    /// Where the line in progress starts in `buf`.
    line_start: usize,
    /// Complete lines in `buf`.
    lines: usize,
    /// The code of the reply in progress (from its first line).
    code: Option<u16>,
}

impl ReplyReader {
    pub fn new() -> ReplyReader {
        ReplyReader::default()
    }

    /// Bytes held (the reply in progress). Never more than
    /// `MAX_REPLY_BYTES + MAX_LINE_BYTES`.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Forgets the reply in progress.
    pub fn clear(&mut self) {
        self.buf = Vec::new();
        self.line_start = 0;
        self.lines = 0;
        self.code = None;
    }

    /// Consumes bytes from `input` up to the end of the next complete reply and returns
    /// it; `Ok(None)` when all of `input` was consumed without completing one. Bytes after
    /// the returned reply stay in `input`.
    pub fn read(&mut self, input: &mut &[u8]) -> Result<Option<RawReply>, ReplyError> {
        match self.read_inner(input) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.clear();
                *input = &[];
                Err(e)
            }
        }
    }

    fn read_inner(&mut self, input: &mut &[u8]) -> Result<Option<RawReply>, ReplyError> {
        loop {
            if input.is_empty() {
                return Ok(None);
            }
            let in_line = self.buf.len() - self.line_start;
            let room = MAX_LINE_BYTES.saturating_sub(in_line);
            let newline = input.iter().position(|&b| b == b'\n');
            let take = match newline {
                Some(p) => p + 1,
                None => input.len(),
            };
            if take > room {
                return Err(ReplyError(format!(
                    "reply line longer than {MAX_LINE_BYTES} bytes"
                )));
            }
            if self.buf.len() + take > MAX_REPLY_BYTES {
                return Err(ReplyError(format!(
                    "reply longer than {MAX_REPLY_BYTES} bytes"
                )));
            }
            let (head, tail) = input.split_at(take);
            self.buf.extend_from_slice(head);
            *input = tail;
            if newline.is_none() {
                return Ok(None);
            }
            if let Some(reply) = self.end_line()? {
                return Ok(Some(reply));
            }
        }
    }

    /// The line in progress just got its LF: validate it; return the reply if it was the
    /// last line.
    fn end_line(&mut self) -> Result<Option<RawReply>, ReplyError> {
        let line = strip_terminator(self.buf.get(self.line_start..).unwrap_or_default());
        let (code, last) = parse_line(line)?;
        match self.code {
            None => self.code = Some(code),
            Some(c) if c != code => {
                return Err(ReplyError(format!(
                    "reply lines with different codes ({c} then {code})"
                )));
            }
            Some(_) => {}
        }
        self.lines += 1;
        self.line_start = self.buf.len();
        if last {
            let bytes = std::mem::take(&mut self.buf);
            self.clear();
            return Ok(Some(RawReply { code, bytes }));
        }
        if self.lines >= MAX_REPLY_LINES {
            return Err(ReplyError(format!(
                "reply with more than {MAX_REPLY_LINES} lines"
            )));
        }
        Ok(None)
    }
}

/// Validates one line (terminator stripped): a 3-digit code 2xx..5xx, then `-`
/// (continuation), a space and text, or nothing (last line). Text may hold any byte but
/// NUL and ASCII controls other than TAB.
fn parse_line(line: &[u8]) -> Result<(u16, bool), ReplyError> {
    let malformed = || {
        let shown = sanitize::cut(
            &String::from_utf8_lossy(line.get(..line.len().min(64)).unwrap_or_default()),
            64,
        );
        ReplyError(format!("malformed reply line: {shown:?}"))
    };
    let [d0, d1, d2, rest @ ..] = line else {
        return Err(malformed());
    };
    if !(b'2'..=b'5').contains(d0) || !d1.is_ascii_digit() || !d2.is_ascii_digit() {
        return Err(malformed());
    }
    let code = u16::from(d0 - b'0') * 100 + u16::from(d1 - b'0') * 10 + u16::from(d2 - b'0');
    let last = match rest.first() {
        None | Some(b' ') => true,
        Some(b'-') => false,
        Some(_) => return Err(malformed()),
    };
    if rest.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(ReplyError(format!(
            "control characters in reply line with code {code}"
        )));
    }
    Ok((code, last))
}

/// Parses bytes holding exactly one complete reply (for tests and fuzzing).
pub fn parse_reply(bytes: &[u8]) -> Result<Reply, ReplyError> {
    let mut reader = ReplyReader::new();
    let mut input = bytes;
    match reader.read(&mut input)? {
        Some(raw) if input.is_empty() => Ok(raw.reply()),
        Some(_) => Err(ReplyError("bytes after the reply".to_string())),
        None => Err(ReplyError("incomplete reply".to_string())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Reply {
        parse_reply(bytes).unwrap()
    }

    #[test]
    fn single_and_multi_line() {
        let r = one(b"250 2.1.0 Ok\r\n");
        assert_eq!(r.code, 250);
        assert_eq!(r.enhanced.as_deref(), Some("2.1.0"));
        assert_eq!(r.text, "Ok");
        assert_eq!(r.display(), "250 2.1.0 Ok");

        let r = one(b"550-5.1.1 The email account that you tried to reach does\r\n550-5.1.1 not exist. Please try\r\n550 5.1.1 double-checking. x - gsmtp\r\n");
        assert_eq!(r.code, 550);
        assert_eq!(r.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(
            r.text,
            "The email account that you tried to reach does not exist. Please try double-checking. x - gsmtp"
        );

        let r = one(b"220 mx.example.com ESMTP ready\n");
        assert_eq!(r.enhanced, None);
        assert_eq!(r.text, "mx.example.com ESMTP ready");

        let r = one(b"250\r\n");
        assert_eq!((r.code, r.text.as_str()), (250, ""));
        let r = one(b"354 \r\n");
        assert_eq!((r.code, r.text.as_str()), (354, ""));
        let r = one(b"550 5.7.1\r\n");
        assert_eq!(r.enhanced.as_deref(), Some("5.7.1"));
        let r = one(b"452 4.5.3 Too many recipients\r\n");
        assert_eq!(r.enhanced.as_deref(), Some("4.5.3"));
        // Not enhanced codes.
        assert_eq!(one(b"250 2.1.0Ok\r\n").enhanced, None);
        assert_eq!(one(b"250 3.1.0 x\r\n").enhanced, None);
        assert_eq!(one(b"250 2.1234.0 x\r\n").enhanced, None);
        assert_eq!(one(b"250 2.1 x\r\n").enhanced, None);
        // A different enhanced code on a later line is kept in the text.
        assert_eq!(one(b"250-2.0.0 a\r\n250 2.1.0 b\r\n").text, "a 2.1.0 b");
        // Text is sanitized.
        assert_eq!(
            one(b"250 caf\xc3\xa9 \xff\tx\r\n").text,
            "caf\u{e9} \u{fffd} x"
        );
    }

    #[test]
    fn long_text_is_cut() {
        let mut bytes = Vec::new();
        for _ in 0..50 {
            bytes.extend_from_slice(b"250-");
            bytes.extend_from_slice(&[b'a'; 200]);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"250 end\r\n");
        let r = one(&bytes);
        assert!(r.text.len() <= 1024);
    }

    #[test]
    fn malformed() {
        for bad in [
            &b"hello\r\n"[..],
            b"25\r\n",
            b"2500 x\r\n",
            b"250x\r\n",
            b"650 x\r\n",
            b"150 x\r\n",
            b"\r\n",
            b"250-a\r\n251 b\r\n",
            b"250 a\x00b\r\n",
            b"250 a\rb\r\n",
            b"250 a\x1b[31m\r\n",
        ] {
            assert!(parse_reply(bad).is_err(), "{bad:?}");
        }
        assert!(parse_reply(b"250 a\r\n250 b\r\n").is_err());
        assert!(parse_reply(b"250-a\r\n").is_err());
    }

    #[test]
    fn limits() {
        let mut r = ReplyReader::new();
        let mut line = vec![b'2', b'5', b'0', b' '];
        line.extend(std::iter::repeat_n(b'a', MAX_LINE_BYTES - 6));
        line.extend_from_slice(b"\r\n");
        assert_eq!(line.len(), MAX_LINE_BYTES);
        let mut input = &line[..];
        assert!(r.read(&mut input).unwrap().is_some());

        // One byte over: fails as soon as it is seen, even without the LF.
        let mut line = vec![b'2', b'5', b'0', b' '];
        line.extend(std::iter::repeat_n(b'a', MAX_LINE_BYTES - 3));
        let mut input = &line[..];
        assert!(r.read(&mut input).is_err());
        assert_eq!(r.buffered(), 0);

        // Never-ending line in small chunks.
        let mut r = ReplyReader::new();
        let mut failed = false;
        for _ in 0..10_000 {
            let mut input = &b"250 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"[..];
            match r.read(&mut input) {
                Ok(None) => assert!(r.buffered() <= MAX_LINE_BYTES),
                Ok(Some(_)) => unreachable!(),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed);

        // Too many lines.
        let mut r = ReplyReader::new();
        let many = b"250-x\r\n".repeat(MAX_REPLY_LINES);
        let mut input = &many[..];
        assert!(r.read(&mut input).is_err());
        let ok = [
            b"250-x\r\n".repeat(MAX_REPLY_LINES - 1),
            b"250 x\r\n".to_vec(),
        ]
        .concat();
        let mut input = &ok[..];
        assert!(r.read(&mut input).unwrap().is_some());

        // Too many bytes.
        let mut r = ReplyReader::new();
        let mut big = Vec::new();
        for _ in 0..20 {
            big.extend_from_slice(b"250-");
            big.extend(std::iter::repeat_n(b'b', 4000));
            big.extend_from_slice(b"\r\n");
        }
        let mut input = &big[..];
        assert!(r.read(&mut input).is_err());
    }

    #[test]
    fn leaves_following_bytes() {
        let mut r = ReplyReader::new();
        let mut input = &b"250-a\r\n250 b\r\n354 go\r\n25"[..];
        let first = r.read(&mut input).unwrap().unwrap();
        assert_eq!(first.code, 250);
        assert_eq!(first.bytes(), b"250-a\r\n250 b\r\n");
        assert_eq!(
            first.lines().collect::<Vec<_>>(),
            vec![&b"250-a"[..], b"250 b"]
        );
        assert_eq!(input, b"354 go\r\n25");
        assert_eq!(r.read(&mut input).unwrap().unwrap().code, 354);
        assert_eq!(r.read(&mut input).unwrap(), None);
        assert_eq!(r.buffered(), 2);
        let mut input = &b"0 ok\r\n"[..];
        assert_eq!(r.read(&mut input).unwrap().unwrap().reply().text, "ok");
    }
}
