//! What the server offered in its EHLO reply. smtp-proto reads the capability lines; when
//! it cannot (an odd parameter on some line), a tolerant keyword scan of our own is used
//! instead, so one malformed line does not hide PIPELINING or STARTTLS.

use smtp_proto::{
    EXT_8BIT_MIME, EXT_CHUNKING, EXT_ENHANCED_STATUS_CODES, EXT_PIPELINING, EXT_SIZE,
    EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse,
};

use super::reply::RawReply;
use crate::sanitize;

/// The extensions the session cares about. All false after HELO.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The host name the server gave in the first EHLO line (sanitized, ≤ 255 bytes).
    pub host: String,
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870: `Some(limit)` when SIZE was offered; `Some(0)` means no stated limit.
    pub size: Option<u64>,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 2034.
    pub enhanced_status_codes: bool,
    /// RFC 3030.
    pub chunking: bool,
}

impl Capabilities {
    /// Reads a positive EHLO reply.
    pub fn from_ehlo(raw: &RawReply) -> Capabilities {
        if raw.code == 250
            && let Ok(ehlo) = EhloResponse::<String>::parse(&mut raw.bytes().iter())
        {
            let has = |ext| ehlo.capabilities & ext != 0;
            return Capabilities {
                host: sanitize::cut(&ehlo.hostname, 255),
                pipelining: has(EXT_PIPELINING),
                size: has(EXT_SIZE).then_some(ehlo.size as u64),
                eight_bit_mime: has(EXT_8BIT_MIME),
                smtputf8: has(EXT_SMTP_UTF8),
                starttls: has(EXT_START_TLS),
                enhanced_status_codes: has(EXT_ENHANCED_STATUS_CODES),
                chunking: has(EXT_CHUNKING),
            };
        }
        Self::scan(raw)
    }

    /// The tolerant fallback: the first word of each line after the first is a keyword.
    fn scan(raw: &RawReply) -> Capabilities {
        let mut caps = Capabilities::default();
        for (i, text) in raw.texts().enumerate() {
            let text = String::from_utf8_lossy(text);
            let mut words = text.split_ascii_whitespace();
            if i == 0 {
                caps.host = sanitize::cut(words.next().unwrap_or_default(), 255);
                continue;
            }
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => {
                    caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
                }
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "STARTTLS" => caps.starttls = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "CHUNKING" => caps.chunking = true,
                _ => {}
            }
        }
        caps
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::smtp::reply::ReplyReader;

    fn raw(bytes: &[u8]) -> RawReply {
        let mut input = bytes;
        ReplyReader::new().read(&mut input).unwrap().unwrap()
    }

    #[test]
    fn reads_capabilities() {
        let caps = Capabilities::from_ehlo(&raw(
            b"250-mx.example.com Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n",
        ));
        assert_eq!(
            caps,
            Capabilities {
                host: "mx.example.com".into(),
                pipelining: true,
                size: Some(10_240_000),
                eight_bit_mime: true,
                smtputf8: true,
                starttls: true,
                enhanced_status_codes: true,
                chunking: false,
            }
        );
        let caps = Capabilities::from_ehlo(&raw(b"250-mx\r\n250 size\r\n"));
        assert_eq!(caps.size, Some(0));
        assert!(!caps.pipelining);
        let caps = Capabilities::from_ehlo(&raw(b"250 mx.example.com\r\n"));
        assert_eq!(caps.host, "mx.example.com");
        assert_eq!(caps.size, None);
    }

    #[test]
    fn odd_lines_do_not_hide_others() {
        let caps = Capabilities::from_ehlo(&raw(
            b"250-mx\r\n250-SIZE lots\r\n250-AUTH \xff\xfe\r\n250-X-WEIRD=1\r\n250-pipelining\r\n250 STARTTLS\r\n",
        ));
        assert!(caps.pipelining);
        assert!(caps.starttls);
        assert_eq!(caps.host, "mx");
    }
}
