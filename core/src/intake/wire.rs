//! The SMTP DATA wire form (RFC 5321 4.5.2): CRLF lines with transparency dots.

/// Dot-stuffs CRLF text: every line that starts with `.` gets one more `.`. A line starts
/// at offset 0 and after each CRLF (a bare LF does not start a line, matching how the
/// receiving side reads lines). The final `.\r\n` terminator is not added.
pub fn dot_stuff(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 64 + 1);
    if text.first() == Some(&b'.') {
        out.push(b'.');
    }
    // A line starts at the beginning and after each CRLF (a bare LF does not start one).
    let mut copied = 0;
    for at in memchr::memmem::find_iter(text, b"\r\n.") {
        let dot = at + 2;
        out.extend_from_slice(&text[copied..dot]);
        out.push(b'.');
        copied = dot;
    }
    out.extend_from_slice(&text[copied..]);
    out
}

/// The inverse of [`dot_stuff`]: drops the first `.` of every line that starts with one.
pub fn unstuff(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire.len());
    let mut copied = usize::from(wire.first() == Some(&b'.'));
    for at in memchr::memmem::find_iter(wire, b"\r\n.") {
        let dot = at + 2;
        out.extend_from_slice(&wire[copied..dot]);
        copied = dot + 1;
    }
    out.extend_from_slice(&wire[copied..]);
    out
}

/// The length of the longest line (without its CRLF) of CRLF text.
pub fn longest_line(text: &[u8]) -> usize {
    let mut longest = 0;
    let mut start = 0;
    for end in memchr::memmem::find_iter(text, b"\r\n") {
        longest = longest.max(end - start);
        start = end + 2;
    }
    longest.max(text.len() - start)
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

    // The byte-at-a-time definitions the memchr versions must agree with.
    fn at_line_start(text: &[u8], i: usize) -> bool {
        i == 0 || (i >= 2 && &text[i - 2..i] == b"\r\n")
    }

    fn reference_stuff(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &b) in text.iter().enumerate() {
            if b == b'.' && at_line_start(text, i) {
                out.push(b'.');
            }
            out.push(b);
        }
        out
    }

    fn reference_unstuff(wire: &[u8]) -> Vec<u8> {
        (0..wire.len())
            .filter(|&i| !(wire[i] == b'.' && at_line_start(wire, i)))
            .map(|i| wire[i])
            .collect()
    }

    fn reference_crlf(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            match input[i] {
                b'\r' => {
                    out.extend_from_slice(b"\r\n");
                    if input.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    }
                }
                b'\n' => out.extend_from_slice(b"\r\n"),
                b => out.push(b),
            }
            i += 1;
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn scans_agree_with_the_octet_by_octet_definitions(
            text in proptest::collection::vec(
                proptest::sample::select(vec![b'.', b'\r', b'\n', b'a', 0x80]), 0..64)
        ) {
            proptest::prop_assert_eq!(dot_stuff(&text), reference_stuff(&text));
            proptest::prop_assert_eq!(unstuff(&text), reference_unstuff(&text));
            proptest::prop_assert_eq!(unstuff(&dot_stuff(&text)), text.clone());
            proptest::prop_assert_eq!(super::super::encode::crlf(&text), reference_crlf(&text));
            let longest = super::super::encode::lines(&text).map(<[u8]>::len).max().unwrap_or(0);
            proptest::prop_assert_eq!(longest_line(&text), longest);
        }
    }
}
