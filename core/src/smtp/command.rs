//! The commands the client writes (RFC 5321 4.1), as bytes with CRLF.

/// `EHLO name` / `HELO name`. The name is reduced to printable ASCII without spaces (it
/// comes from configuration, but a command must never carry a stray CRLF); an empty name
/// becomes `localhost`.
pub fn ehlo(name: &str) -> Vec<u8> {
    greet("EHLO", name)
}

pub fn helo(name: &str) -> Vec<u8> {
    greet("HELO", name)
}

fn greet(verb: &str, name: &str) -> Vec<u8> {
    let clean: String = name.chars().filter(|c| c.is_ascii_graphic()).collect();
    let name = if clean.is_empty() {
        "localhost"
    } else {
        &clean
    };
    format!("{verb} {name}\r\n").into_bytes()
}

pub const STARTTLS: &[u8] = b"STARTTLS\r\n";
pub const DATA: &[u8] = b"DATA\r\n";
pub const RSET: &[u8] = b"RSET\r\n";
pub const QUIT: &[u8] = b"QUIT\r\n";
/// The end of an empty data block (a DATA that got 354 with no accepted recipient).
pub const DOT: &[u8] = b".\r\n";

/// Whether `address` can be written between angle brackets without breaking the command:
/// no ASCII control characters, spaces or angle brackets.
pub fn is_safe_address(address: &str) -> bool {
    !address
        .bytes()
        .any(|b| b <= b' ' || b == 0x7f || b == b'<' || b == b'>')
}

/// Parameters of MAIL FROM.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// RFC 1870 `SIZE=n`.
    pub size: Option<u64>,
    /// RFC 6152 `BODY=8BITMIME`.
    pub eight_bit_mime: bool,
    /// RFC 6531 `SMTPUTF8`.
    pub smtputf8: bool,
}

/// `MAIL FROM:<from>[ SIZE=n][ BODY=8BITMIME][ SMTPUTF8]`. `from` must be
/// [`is_safe_address`]; an empty one is the null reverse-path `<>`.
pub fn mail_from(from: &str, params: MailParams) -> Vec<u8> {
    let mut cmd = format!("MAIL FROM:<{from}>");
    if let Some(size) = params.size {
        cmd.push_str(&format!(" SIZE={size}"));
    }
    if params.eight_bit_mime {
        cmd.push_str(" BODY=8BITMIME");
    }
    if params.smtputf8 {
        cmd.push_str(" SMTPUTF8");
    }
    cmd.push_str("\r\n");
    cmd.into_bytes()
}

/// `RCPT TO:<to>`. `to` must be [`is_safe_address`].
pub fn rcpt_to(to: &str) -> Vec<u8> {
    format!("RCPT TO:<{to}>\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_commands() {
        assert_eq!(ehlo("client.example"), b"EHLO client.example\r\n");
        assert_eq!(helo("a b\r\nRSET"), b"HELO abRSET\r\n");
        assert_eq!(ehlo("\r\n"), b"EHLO localhost\r\n");
        assert_eq!(
            mail_from(
                "a@b.c",
                MailParams {
                    size: Some(12),
                    eight_bit_mime: true,
                    smtputf8: true
                }
            ),
            b"MAIL FROM:<a@b.c> SIZE=12 BODY=8BITMIME SMTPUTF8\r\n"
        );
        assert_eq!(mail_from("", MailParams::default()), b"MAIL FROM:<>\r\n");
        assert_eq!(rcpt_to("x@y.z"), b"RCPT TO:<x@y.z>\r\n");
        assert!(is_safe_address("j\u{f6}rg@b\u{fc}cher.example"));
        assert!(is_safe_address(""));
        assert!(!is_safe_address("a@b\r\nRSET"));
        assert!(!is_safe_address("a>@b"));
        assert!(!is_safe_address("a b@c"));
    }
}
