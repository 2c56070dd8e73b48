//! RFC 5321 mailboxes (`local@domain`) and the display form `Name <local@domain>`.
//!
//! Parsing is strict on purpose: an address ends up in SMTP commands and in headers, so
//! anything that could smuggle a line break, a second address or an unroutable target is
//! refused here, with a message that names the problem without echoing raw input.

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// A parsed, validated email address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// Local part as given (may be UTF-8 when SMTPUTF8 is needed). A quoted local part
    /// whose content is a plain dot-atom is stored unquoted (`"john"` -> `john`), so the
    /// same mailbox always has the same form (suppression keys, deduplication).
    pub local: String,
    /// Domain lowercased, in Unicode form as given/decoded (U-labels).
    pub domain: String,
    /// Domain in ASCII (IDNA A-labels), lowercase: the routing domain.
    pub ascii_domain: String,
}

impl Address {
    /// `local@domain` for the envelope: the ASCII domain when the local part is ASCII;
    /// otherwise the UTF-8 form (needs SMTPUTF8).
    pub fn envelope(&self) -> String {
        format!("{}@{}", self.local, self.ascii_domain)
    }
    pub fn needs_smtputf8(&self) -> bool {
        !self.local.is_ascii()
    }
    /// The key used in suppression lists: the envelope form, lowercased.
    pub fn suppression_key(&self) -> String {
        self.envelope().to_lowercase()
    }
}

/// An address with an optional display name (`Name <local@domain>`), as the API accepts
/// in `from`, `to`, `cc`, `bcc` and `reply_to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mailbox {
    /// The display name, unquoted and trimmed; `None` when absent or empty.
    pub name: Option<String>,
    pub address: Address,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(pub String);

/// An address problem with its stable machine-readable code (used for `SubmitError`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AddrProblem {
    pub code: &'static str,
    pub message: String,
}

fn problem(code: &'static str, message: impl Into<String>) -> AddrProblem {
    AddrProblem {
        code,
        message: message.into(),
    }
}

impl From<AddrProblem> for AddressError {
    fn from(p: AddrProblem) -> AddressError {
        AddressError(p.message)
    }
}

const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 253;
const MAX_LABEL: usize = 63;
const MAX_ADDRESS: usize = 254;

/// Parses a bare mailbox `local@domain` (no display name, no angle brackets).
pub fn parse_address(s: &str) -> Result<Address, AddressError> {
    parse_addr_spec(s).map_err(AddressError::from)
}

/// Parses `local@domain`, `<local@domain>` or `Name <local@domain>` (the name may be a
/// quoted string).
pub fn parse_mailbox(s: &str) -> Result<Mailbox, AddressError> {
    parse_mailbox_detailed(s).map_err(AddressError::from)
}

/// Refuses line breaks and other control characters anywhere in the input. Done first so
/// no later message can quote a control character back.
pub(crate) fn check_controls(s: &str, what: &str) -> Result<(), AddrProblem> {
    if s.contains(['\r', '\n']) {
        return Err(problem(
            "header_injection",
            format!("{what} contains a line break (CR or LF)"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(problem(
            "control_character",
            format!("{what} contains a control character"),
        ));
    }
    Ok(())
}

pub(crate) fn parse_mailbox_detailed(s: &str) -> Result<Mailbox, AddrProblem> {
    check_controls(s, "address")?;
    let trimmed = s.trim_matches(' ');
    let Some(open) = angle_start(trimmed) else {
        return Ok(Mailbox {
            name: None,
            address: parse_addr_spec(trimmed)?,
        });
    };
    let inner = trimmed[open + 1..]
        .strip_suffix('>')
        .ok_or_else(|| problem("invalid_address", "text after the closing '>' or no '>'"))?;
    if inner.is_empty() {
        return Err(problem(
            "null_address",
            "the null address <> is not accepted here",
        ));
    }
    let name = parse_display_name(&trimmed[..open])?;
    Ok(Mailbox {
        name,
        address: parse_addr_spec(inner)?,
    })
}

/// The byte index of the '<' that opens the angle address, skipping quoted display-name
/// text (`"a <b>" <c@d>`). `None` when the input is a bare address.
fn angle_start(s: &str) -> Option<usize> {
    // A bare address may contain '<' only inside a quoted local part; a display form
    // always ends with '>'.
    if !s.ends_with('>') {
        return None;
    }
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '<' if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

fn parse_display_name(raw: &str) -> Result<Option<String>, AddrProblem> {
    let raw = raw.trim_matches(' ');
    let name = if let Some(q) = raw.strip_prefix('"') {
        let body = q.strip_suffix('"').ok_or_else(|| {
            problem(
                "invalid_display_name",
                "display name has an unterminated quote",
            )
        })?;
        let mut out = String::with_capacity(body.len());
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(n) => out.push(n),
                    None => {
                        return Err(problem(
                            "invalid_display_name",
                            "display name ends with a lone backslash",
                        ));
                    }
                },
                '"' => {
                    return Err(problem(
                        "invalid_display_name",
                        "display name has an unescaped quote",
                    ));
                }
                c => out.push(c),
            }
        }
        out
    } else {
        if raw.contains(['"', '<', '>']) {
            return Err(problem(
                "invalid_display_name",
                "display name has a stray quote or angle bracket; quote it",
            ));
        }
        raw.to_string()
    };
    let name = name.trim_matches(' ');
    Ok((!name.is_empty()).then(|| name.to_string()))
}

/// RFC 5322 atext, extended with UTF-8 (RFC 6531).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|a| !a.is_empty() && a.chars().all(is_atext))
}

pub(crate) fn parse_addr_spec(s: &str) -> Result<Address, AddrProblem> {
    check_controls(s, "address")?;
    if s.is_empty() {
        return Err(problem("empty_address", "address is empty"));
    }
    if s == "<>" {
        return Err(problem(
            "null_address",
            "the null address <> is not accepted here",
        ));
    }
    let (local, domain) = s
        .rsplit_once('@')
        .ok_or_else(|| problem("invalid_address", "address has no '@'"))?;
    let local = parse_local(local)?;
    let (domain, ascii_domain) = parse_domain(domain)?;
    if local.len() + 1 + ascii_domain.len() > MAX_ADDRESS {
        return Err(problem(
            "address_too_long",
            format!("address is longer than {MAX_ADDRESS} octets"),
        ));
    }
    Ok(Address {
        local,
        domain,
        ascii_domain,
    })
}

fn parse_local(local: &str) -> Result<String, AddrProblem> {
    if local.is_empty() {
        return Err(problem("invalid_local_part", "local part is empty"));
    }
    if local.len() > MAX_LOCAL {
        return Err(problem(
            "local_part_too_long",
            format!("local part is longer than {MAX_LOCAL} octets"),
        ));
    }
    if let Some(q) = local.strip_prefix('"') {
        let body = q.strip_suffix('"').ok_or_else(|| {
            problem(
                "invalid_local_part",
                "quoted local part is not a single quoted string",
            )
        })?;
        let mut content = String::with_capacity(body.len());
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                // quoted-pairSMTP: backslash followed by any printable ASCII or space.
                '\\' => match chars.next() {
                    Some(n) if n == ' ' || n.is_ascii_graphic() => content.push(n),
                    _ => {
                        return Err(problem(
                            "invalid_local_part",
                            "bad backslash escape in quoted local part",
                        ));
                    }
                },
                '"' => {
                    return Err(problem(
                        "invalid_local_part",
                        "unescaped quote in quoted local part",
                    ));
                }
                c => content.push(c),
            }
        }
        if content.is_empty() {
            return Err(problem("invalid_local_part", "local part is empty"));
        }
        // Quoting that is not needed is dropped, so one mailbox has one spelling.
        if is_dot_atom(&content) {
            return Ok(content);
        }
        // Quoted spaces and angle brackets are valid RFC 5321, but many servers mis-parse
        // them inside `RCPT TO:<...>` and the SMTP client refuses to write them: refuse
        // them here with a clear error rather than accept mail that cannot be sent.
        if content
            .bytes()
            .any(|b| b <= b' ' || b == 0x7f || b == b'<' || b == b'>')
        {
            return Err(problem(
                "unsupported_local_part",
                "quoted local parts containing spaces or angle brackets are not supported",
            ));
        }
        return Ok(local.to_string());
    }
    if local.contains(' ') {
        return Err(problem(
            "invalid_local_part",
            "local part contains a space outside quotes",
        ));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(problem(
            "invalid_local_part",
            "local part has an empty dot-separated part (leading, trailing or consecutive dots)",
        ));
    }
    if !is_dot_atom(local) {
        return Err(problem(
            "invalid_local_part",
            "local part contains characters that need quoting",
        ));
    }
    Ok(local.to_string())
}

/// Returns (Unicode form, ASCII form), both lowercase.
pub(crate) fn parse_domain(domain: &str) -> Result<(String, String), AddrProblem> {
    if domain.is_empty() {
        return Err(problem("invalid_domain", "domain is empty"));
    }
    if domain.starts_with('[') {
        return Err(problem(
            "address_literal",
            "address literals like [192.0.2.1] are not accepted; use a domain name",
        ));
    }
    if domain.contains(' ') {
        return Err(problem("invalid_domain", "domain contains a space"));
    }
    if domain.split('.').any(str::is_empty) {
        return Err(problem(
            "invalid_domain",
            "domain has an empty label (leading, trailing or consecutive dots)",
        ));
    }
    let uts46 = Uts46::new();
    let ascii = uts46
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::Ignore,
        )
        .map_err(|_| {
            problem(
                "invalid_domain",
                "domain is not a valid (internationalized) domain name",
            )
        })?
        .to_ascii_lowercase();
    // Lengths are checked on the A-label form: that is what DNS and SMTP carry.
    if ascii.len() > MAX_DOMAIN {
        return Err(problem(
            "domain_too_long",
            format!("domain is longer than {MAX_DOMAIN} octets"),
        ));
    }
    if ascii.split('.').any(|l| l.len() > MAX_LABEL) {
        return Err(problem(
            "label_too_long",
            format!("a domain label is longer than {MAX_LABEL} octets"),
        ));
    }
    if ascii.split('.').any(str::is_empty) {
        return Err(problem("invalid_domain", "domain has an empty label"));
    }
    // A numeric last label is no top-level domain: this is a bare IP address (or a typo).
    if ascii
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(problem(
            "address_literal",
            "domain looks like an IP address; use a domain name",
        ));
    }
    let (unicode, result) = uts46.to_unicode(ascii.as_bytes(), AsciiDenyList::STD3, Hyphens::Allow);
    if result.is_err() {
        return Err(problem(
            "invalid_domain",
            "domain is not a valid (internationalized) domain name",
        ));
    }
    Ok((unicode.to_lowercase(), ascii))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Address {
        match parse_address(s) {
            Ok(a) => a,
            Err(e) => panic!("{s:?}: {e}"),
        }
    }
    fn code(s: &str) -> &'static str {
        match parse_addr_spec(s) {
            Ok(a) => panic!("{s:?} accepted as {a:?}"),
            Err(p) => p.code,
        }
    }

    #[test]
    fn accepts_plain_idn_and_utf8() {
        let a = ok("John.Doe+tag@Example.COM");
        assert_eq!(a.local, "John.Doe+tag");
        assert_eq!(a.ascii_domain, "example.com");
        assert_eq!(a.suppression_key(), "john.doe+tag@example.com");
        assert!(!a.needs_smtputf8());

        let a = ok("user@Bücher.example");
        assert_eq!(a.domain, "bücher.example");
        assert_eq!(a.ascii_domain, "xn--bcher-kva.example");
        assert_eq!(a.envelope(), "user@xn--bcher-kva.example");

        let a = ok("user@xn--bcher-kva.example");
        assert_eq!(a.domain, "bücher.example");

        let a = ok("josé@example.com");
        assert!(a.needs_smtputf8());

        let a = ok("\"john\"@example.com");
        assert_eq!(a.local, "john");
        let a = ok("\"john@doe\"@example.com");
        assert_eq!(a.local, "\"john@doe\"");
        // Valid RFC 5321, but not writable safely in RCPT TO: refused with its own code.
        assert_eq!(code("\"john doe\"@example.com"), "unsupported_local_part");
        let a = ok("\"a@b\"@example.com");
        assert_eq!(a.local, "\"a@b\"");
    }

    #[test]
    fn refuses_bad_addresses() {
        assert_eq!(code(""), "empty_address");
        assert_eq!(code("<>"), "null_address");
        assert_eq!(code("a@b.com\r\nRCPT TO:<x@y>"), "header_injection");
        assert_eq!(code("a\0@b.com"), "control_character");
        assert_eq!(code("a b@c.com"), "invalid_local_part");
        assert_eq!(code("a..b@c.com"), "invalid_local_part");
        assert_eq!(code(".a@c.com"), "invalid_local_part");
        assert_eq!(code("@c.com"), "invalid_local_part");
        assert_eq!(code("a@"), "invalid_domain");
        assert_eq!(code("a@b..com"), "invalid_domain");
        assert_eq!(code("a@b.com."), "invalid_domain");
        assert_eq!(code("a@[1.2.3.4]"), "address_literal");
        assert_eq!(code("a@1.2.3.4"), "address_literal");
        assert_eq!(code("abc"), "invalid_address");
        assert_eq!(code("a@-b.com"), "invalid_domain");
        assert_eq!(code("a@b_c.com"), "invalid_domain");
        assert_eq!(
            code(&format!("{}@b.com", "x".repeat(65))),
            "local_part_too_long"
        );
        assert_eq!(code(&format!("a@{}.com", "x".repeat(64))), "label_too_long");
        let long_domain = vec!["abcdefghi"; 26].join(".");
        assert_eq!(code(&format!("a@{long_domain}")), "domain_too_long");
        let domain = vec!["abcdefghi"; 20].join("."); // 199 octets: 64 + 1 + 199 > 254
        assert_eq!(
            code(&format!("{}@{domain}", "x".repeat(64))),
            "address_too_long"
        );
        assert_eq!(code("a\"b@c.com"), "invalid_local_part");
        assert_eq!(code("\"a\"b\"@c.com"), "invalid_local_part");
        assert_eq!(code("a(b)@c.com"), "invalid_local_part");
    }

    #[test]
    fn display_form() {
        let m = parse_mailbox("Jane Doe <jane@example.com>").expect("valid");
        assert_eq!(m.name.as_deref(), Some("Jane Doe"));
        assert_eq!(m.address.envelope(), "jane@example.com");
        let m = parse_mailbox("\"Doe, Jane \\\"JD\\\"\" <jane@example.com>").expect("valid");
        assert_eq!(m.name.as_deref(), Some("Doe, Jane \"JD\""));
        let m = parse_mailbox("<jane@example.com>").expect("valid");
        assert_eq!(m.name, None);
        let m = parse_mailbox("jane@example.com").expect("valid");
        assert_eq!(m.name, None);
        let m = parse_mailbox("Zoë <zoe@example.com>").expect("valid");
        assert_eq!(m.name.as_deref(), Some("Zoë"));
        assert!(parse_mailbox("Jane <jane@example.com> x").is_err());
        assert!(parse_mailbox("Ja\"ne <jane@example.com>").is_err());
        assert_eq!(
            parse_mailbox_detailed("Jane\r\nBcc: x <jane@example.com>").map_err(|p| p.code),
            Err("header_injection")
        );
    }
}
