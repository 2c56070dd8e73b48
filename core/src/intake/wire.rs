//! The SMTP DATA wire form (RFC 5321 4.5.2): CRLF lines with transparency dots.

/// Dot-stuffs CRLF text: every line that starts with `.` gets one more `.`. A line starts
/// at offset 0 and after each CRLF (a bare LF does not start a line, matching how the
/// receiving side reads lines). The final `.\r\n` terminator is not added.
pub fn dot_stuff(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 64 + 1);
    let mut at_line_start = true;
    for (i, &b) in text.iter().enumerate() {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n' && i > 0 && text[i - 1] == b'\r';
    }
    out
}

/// The inverse of [`dot_stuff`]: drops the first `.` of every line that starts with one.
pub fn unstuff(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire.len());
    let mut at_line_start = true;
    for (i, &b) in wire.iter().enumerate() {
        let skip = at_line_start && b == b'.';
        at_line_start = b == b'\n' && i > 0 && wire[i - 1] == b'\r';
        if !skip {
            out.push(b);
        }
    }
    out
}

/// The length of the longest line (without its CRLF) of CRLF text.
pub fn longest_line(text: &[u8]) -> usize {
    super::encode::lines(text)
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffs_line_starts_only() {
        assert_eq!(
            dot_stuff(b".a\r\nb.\r\n..c\r\n."),
            b"..a\r\nb.\r\n...c\r\n.."
        );
        assert_eq!(dot_stuff(b"a\n.b"), b"a\n.b");
        assert_eq!(unstuff(&dot_stuff(b".\r\n.\r\n")), b".\r\n.\r\n");
        assert_eq!(longest_line(b"abc\r\nde\r\n"), 3);
    }
}
