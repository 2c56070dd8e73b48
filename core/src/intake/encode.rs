//! Header and body encodings: RFC 2047 encoded-words, header folding (RFC 5322 2.2.3) and
//! quoted-printable (RFC 2045 6.7). Everything here produces CRLF line endings and keeps
//! lines within the limits, so the composed message never needs a second pass.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// The line length folding aims for (RFC 5322 "SHOULD be no more than 78").
const SOFT_LIMIT: usize = 78;
/// The hard line limit (RFC 5322 "MUST be no more than 998"), excluding CRLF.
pub const HARD_LIMIT: usize = 998;
/// An encoded-word is at most 75 characters (RFC 2047 2).
const MAX_ENCODED_WORD: usize = 75;
/// `=?UTF-8?B?` + `?=`.
const EW_OVERHEAD: usize = 12;

/// Splits `text` into RFC 2047 B-encoded words of whole characters, each fitting the
/// 75-character limit. Whitespace between adjacent encoded-words is ignored by decoders,
/// so the words may be separated by folding whitespace.
pub fn encoded_words(text: &str) -> Vec<String> {
    // Base64 of n bytes is 4*ceil(n/3) chars; 63 chars available -> at most 45 bytes.
    let max_bytes = (MAX_ENCODED_WORD - EW_OVERHEAD) / 4 * 3;
    let mut words = Vec::new();
    let mut start = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        let next = i + c.len_utf8();
        if next - start > max_bytes && end > start {
            words.push(encode_word(&text[start..end]));
            start = end;
        }
        end = next;
    }
    if end > start {
        words.push(encode_word(&text[start..end]));
    }
    words
}

fn encode_word(chunk: &str) -> String {
    format!("=?UTF-8?B?{}?=", B64.encode(chunk.as_bytes()))
}

/// A header field being written: tokens separated by single spaces, folded (CRLF before
/// the space) when a line would pass the soft limit.
pub struct HeaderLine {
    out: String,
    line_len: usize,
    /// Whether the current line has a token after the field name (folding before the
    /// first token would leave a line with nothing but the name).
    has_token: bool,
}

impl HeaderLine {
    pub fn new(name: &str) -> HeaderLine {
        let out = format!("{name}:");
        HeaderLine {
            line_len: out.len(),
            out,
            has_token: false,
        }
    }

    /// Appends ` token`, folding first when the line would get too long.
    pub fn token(&mut self, token: &str) {
        if self.has_token && self.line_len + 1 + token.len() > SOFT_LIMIT {
            self.out.push_str("\r\n");
            self.line_len = 0;
        }
        self.out.push(' ');
        self.out.push_str(token);
        self.line_len += 1 + token.len();
        self.has_token = true;
    }

    /// Appends text right after the previous token, without a space (e.g. a comma).
    pub fn glue(&mut self, text: &str) {
        self.out.push_str(text);
        self.line_len += text.len();
    }

    /// The finished field with its terminating CRLF.
    pub fn finish(mut self) -> String {
        self.out.push_str("\r\n");
        self.out
    }
}

/// Folds an ASCII unstructured value at its own whitespace, preserving it exactly (a fold
/// only inserts CRLF before an existing space or tab, so unfolding restores the value).
/// `None` if some line would still pass the hard limit (a very long word).
pub fn fold_ascii(name: &str, value: &str) -> Option<String> {
    let mut out = format!("{name}:");
    let mut line_len = out.len();
    let mut has_word = false;
    // Segments: a run of whitespace followed by a run of non-whitespace. The first one
    // gets a separating space so the value does not touch the colon.
    let mut segments = Vec::new();
    let mut seg_start = 0;
    let bytes = value.as_bytes();
    for i in 1..bytes.len() {
        let ws = |b: u8| b == b' ' || b == b'\t';
        if ws(bytes[i]) && !ws(bytes[i - 1]) {
            segments.push(&value[seg_start..i]);
            seg_start = i;
        }
    }
    if seg_start < value.len() {
        segments.push(&value[seg_start..]);
    }
    for (n, seg) in segments.into_iter().enumerate() {
        let seg_is_blank = seg.bytes().all(|b| b == b' ' || b == b'\t');
        let lead = if n == 0 { " " } else { "" };
        let add = lead.len() + seg.len();
        // Fold only before whitespace that is followed by a word (a line of only
        // whitespace is not allowed).
        if n > 0 && has_word && !seg_is_blank && line_len + add > SOFT_LIMIT {
            out.push_str("\r\n");
            line_len = 0;
        }
        out.push_str(lead);
        out.push_str(seg);
        line_len += add;
        has_word |= !seg_is_blank;
        if line_len > HARD_LIMIT {
            return None;
        }
    }
    out.push_str("\r\n");
    Some(out)
}

/// An unstructured field (Subject, custom header values): folded plain ASCII when that is
/// safe, RFC 2047 encoded-words otherwise (non-ASCII, text that would read as an
/// encoded-word, or a word too long to fold).
pub fn unstructured(name: &str, value: &str) -> String {
    if value.is_ascii()
        && !value.contains("=?")
        && let Some(folded) = fold_ascii(name, value)
    {
        return folded;
    }
    let mut line = HeaderLine::new(name);
    for w in encoded_words(value) {
        line.token(&w);
    }
    line.finish()
}

/// Appends a display name (RFC 5322 phrase) as tokens: atoms as-is, a quoted string when
/// it has specials, encoded-words when non-ASCII or too long to quote on one line.
pub fn phrase(line: &mut HeaderLine, name: &str) {
    let is_atom_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    let words: Vec<&str> = name.split(' ').filter(|w| !w.is_empty()).collect();
    let plain = name.is_ascii()
        && !name.contains("=?")
        && words
            .iter()
            .all(|w| w.len() <= 60 && w.chars().all(is_atom_char));
    if plain {
        for w in words {
            line.token(w);
        }
        return;
    }
    if name.is_ascii() && !name.contains("=?") && name.len() <= 60 {
        let mut q = String::with_capacity(name.len() + 2);
        q.push('"');
        for c in name.chars() {
            if c == '"' || c == '\\' {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        line.token(&q);
        return;
    }
    for w in encoded_words(name) {
        line.token(&w);
    }
}

/// Normalizes line endings to CRLF (bare LF and bare CR each become CRLF).
pub fn crlf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32);
    let mut i = 0;
    while let Some(p) = memchr::memchr2(b'\r', b'\n', &input[i..]) {
        let at = i + p;
        out.extend_from_slice(&input[i..at]);
        out.extend_from_slice(b"\r\n");
        i = at + 1;
        if input[at] == b'\r' && input.get(i) == Some(&b'\n') {
            i += 1;
        }
    }
    out.extend_from_slice(&input[i..]);
    out
}

/// Lines of CRLF-normalized text, without their CRLF. A final line without CRLF is
/// included; the empty remainder after a final CRLF is not.
pub fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match memchr::memmem::find(rest, b"\r\n") {
            Some(p) => {
                let line = &rest[..p];
                rest = &rest[p + 2..];
                Some(line)
            }
            None => {
                let line = rest;
                rest = &[];
                Some(line)
            }
        }
    })
}

/// Body transfer encoding chosen for a text part.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BodyEncoding {
    SevenBit,
    QuotedPrintable,
}

impl BodyEncoding {
    pub fn header_value(self) -> &'static str {
        match self {
            BodyEncoding::SevenBit => "7bit",
            BodyEncoding::QuotedPrintable => "quoted-printable",
        }
    }
}

/// The longest line a quoted-printable encoder emits (RFC 2045 6.7 rule 5), and the
/// longest line a 7bit part may keep (so a plain body is as tidy as an encoded one).
const QP_LINE: usize = 76;

/// Encodes a text body: 7bit when it is plain ASCII with short lines and no control
/// characters besides TAB, quoted-printable otherwise. The result ends with CRLF.
pub fn body(text: &str) -> (BodyEncoding, Vec<u8>) {
    let normalized = crlf(text.as_bytes());
    let plain = normalized
        .iter()
        .all(|&b| b == b'\r' || b == b'\n' || b == b'\t' || (0x20..0x7f).contains(&b))
        && lines(&normalized)
            .all(|l| l.len() <= QP_LINE && !l.ends_with(b" ") && !l.ends_with(b"\t"));
    if plain {
        let mut out = normalized;
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        return (BodyEncoding::SevenBit, out);
    }
    let mut out = Vec::with_capacity(normalized.len() * 11 / 10 + 8);
    for line in lines(&normalized) {
        qp_line(line, &mut out);
    }
    if out.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    (BodyEncoding::QuotedPrintable, out)
}

/// One quoted-printable encoded line (a hard line break of the text) with soft breaks so
/// every output line is at most 76 characters.
fn qp_line(line: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut len = 0;
    for (i, &b) in line.iter().enumerate() {
        let last = i + 1 == line.len();
        let literal = (b == b' ' || b == b'\t') && !last || (33..=126).contains(&b) && b != b'=';
        let width = if literal { 1 } else { 3 };
        // Leave room for the soft break '=' unless this is the line's last character.
        let room = if last { QP_LINE } else { QP_LINE - 1 };
        if len + width > room {
            out.extend_from_slice(b"=\r\n");
            len = 0;
        }
        if literal {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
        len += width;
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_words_split_on_char_boundaries() {
        let text = "é".repeat(100);
        let words = encoded_words(&text);
        assert!(words.iter().all(|w| w.len() <= MAX_ENCODED_WORD));
        let decoded: String = words
            .iter()
            .map(|w| {
                let b = &w[10..w.len() - 2];
                String::from_utf8(B64.decode(b).expect("base64")).expect("whole chars")
            })
            .collect();
        assert_eq!(decoded, text);
    }

    #[test]
    fn folds_ascii_and_keeps_whitespace() {
        let v = "word ".repeat(40) + "end";
        let f = fold_ascii("Subject", &v).expect("foldable");
        assert!(f.split("\r\n").all(|l| l.len() <= SOFT_LIMIT));
        let unfolded = f.trim_end_matches("\r\n").replace("\r\n", "");
        assert_eq!(unfolded, format!("Subject: {v}"));
        assert!(fold_ascii("Subject", &"x".repeat(1000)).is_none());
        assert_eq!(fold_ascii("X", "").as_deref(), Some("X:\r\n"));
    }

    #[test]
    fn quoted_printable() {
        let (enc, out) = body("hello\nworld\n");
        assert_eq!(enc, BodyEncoding::SevenBit);
        assert_eq!(out, b"hello\r\nworld\r\n");
        let (enc, out) = body("caf\u{e9} = ok \n");
        assert_eq!(enc, BodyEncoding::QuotedPrintable);
        assert_eq!(out, b"caf=C3=A9 =3D ok=20\r\n");
        let (_, out) = body(&"a".repeat(200));
        for l in lines(&out) {
            assert!(l.len() <= QP_LINE);
        }
        let (_, out) = body(&"=".repeat(100));
        for l in lines(&out) {
            assert!(l.len() <= QP_LINE);
        }
    }

    #[test]
    fn crlf_normalization() {
        assert_eq!(crlf(b"a\nb\rc\r\nd\r\r\n"), b"a\r\nb\r\nc\r\nd\r\n\r\n");
    }
}
