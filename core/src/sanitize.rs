//! Remote text is untrusted: strip control characters and cut to a byte budget on a
//! UTF-8 boundary before it is stored, logged or sent anywhere.

/// The most bytes of remote text kept anywhere.
pub const MAX_REMOTE_TEXT: usize = 1024;

/// Lossily decodes `raw` as UTF-8, replaces control characters (including CR, LF, TAB,
/// DEL and C1 controls) with a space, collapses runs of whitespace, trims, and cuts the
/// result to at most [`MAX_REMOTE_TEXT`] bytes on a character boundary.
pub fn remote_text(raw: &[u8]) -> String {
    cut(&String::from_utf8_lossy(raw), MAX_REMOTE_TEXT)
}

/// Like [`remote_text`] for text that is already a `str`, with a chosen budget.
pub fn cut(text: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_bytes));
    let mut pending_space = false;
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        let need = c.len_utf8() + usize::from(pending_space);
        if out.len() + need > max_bytes {
            break;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_controls_and_cuts_on_char_boundary() {
        assert_eq!(
            remote_text(b"550 5.1.1\r\n  user\x00 unknown\x1b[31m"),
            "550 5.1.1 user unknown [31m"
        );
        let long = "é".repeat(2000);
        let out = cut(&long, MAX_REMOTE_TEXT);
        assert!(out.len() <= MAX_REMOTE_TEXT);
        assert_eq!(out.len(), 1024);
        assert_eq!(remote_text(&[0xff, 0xfe, b'o', b'k']), "\u{fffd}\u{fffd}ok");
        assert_eq!(remote_text(b""), "");
        assert_eq!(remote_text(b"\r\n\t"), "");
    }
}
