//! Reading one command line: the verb, and the path and parameters of MAIL FROM and
//! RCPT TO (RFC 5321 4.1.1.2-3, 4.1.2). Pure functions over `&str`; nothing here
//! allocates more than the (already bounded) line.

/// A command line split into its verb (uppercased) and the rest.
pub(super) fn split_verb(line: &str) -> (String, &str) {
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    (verb.to_ascii_uppercase(), rest.trim_matches(' '))
}

/// A MAIL FROM / RCPT TO argument: the address inside the angle brackets (source route
/// dropped, RFC 5321 4.1.1.3 says to accept and ignore it) and the ESMTP parameters.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PathArgs<'a> {
    pub address: &'a str,
    /// `(keyword uppercased, value)`.
    pub params: Vec<(String, Option<&'a str>)>,
}

/// Parses `FROM:<addr> [params]` (`keyword` = `"FROM:"`) or `TO:<addr> [params]`. Spaces
/// between the colon and `<` are tolerated (common client behaviour). `None` on any
/// syntax error.
pub(super) fn path_args<'a>(rest: &'a str, keyword: &str) -> Option<PathArgs<'a>> {
    let head = rest.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = rest.get(keyword.len()..)?.trim_start_matches(' ');
    let body = rest.strip_prefix('<')?;
    let close = closing_bracket(body)?;
    let mut address = body.get(..close)?;
    let after = body.get(close + 1..)?;
    if address.starts_with('@') {
        // A source route `@a,@b:user@d`.
        let (_, mailbox) = address.split_once(':')?;
        address = mailbox;
    }
    let params = if after.is_empty() {
        Vec::new()
    } else {
        // Parameters are separated from the path, and from each other, by spaces.
        let list = after.strip_prefix(' ')?;
        let mut params = Vec::new();
        for p in list.split(' ').filter(|p| !p.is_empty()) {
            params.push(param(p)?);
        }
        params
    };
    Some(PathArgs { address, params })
}

/// Index of the `>` closing the path in `body` (which starts after `<`), skipping quoted
/// strings in the local part.
fn closing_bracket(body: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '>' if !in_quotes => return Some(i),
            '<' if !in_quotes => return None,
            _ => {}
        }
    }
    None
}

/// `esmtp-keyword ["=" esmtp-value]` (RFC 5321 4.1.2; values may be UTF-8 under
/// SMTPUTF8, RFC 6531 3.3).
fn param(p: &str) -> Option<(String, Option<&str>)> {
    let (key, value) = match p.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (p, None),
    };
    let mut chars = key.chars();
    if !chars.next()?.is_ascii_alphanumeric()
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return None;
    }
    if let Some(v) = value
        && (v.is_empty() || v.chars().any(|c| c == '=' || c.is_control() || c == ' '))
    {
        return None;
    }
    Some((key.to_ascii_uppercase(), value))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn verbs() {
        assert_eq!(split_verb("mail FROM:<a@b>"), ("MAIL".into(), "FROM:<a@b>"));
        assert_eq!(split_verb("QUIT"), ("QUIT".into(), ""));
        assert_eq!(split_verb("EHLO  x "), ("EHLO".into(), "x"));
    }

    #[test]
    fn paths() {
        let p = path_args("FROM:<a@b.c> SIZE=10 body=8BITMIME SMTPUTF8", "FROM:").unwrap();
        assert_eq!(p.address, "a@b.c");
        assert_eq!(
            p.params,
            vec![
                ("SIZE".into(), Some("10")),
                ("BODY".into(), Some("8BITMIME")),
                ("SMTPUTF8".into(), None)
            ]
        );
        assert_eq!(path_args("from: <>", "FROM:").unwrap().address, "");
        assert_eq!(path_args("TO:<@r1,@r2:u@d>", "TO:").unwrap().address, "u@d");
        assert_eq!(
            path_args("TO:<\"a>b\"@d>", "TO:").unwrap().address,
            "\"a>b\"@d"
        );
        assert!(path_args("FROM:a@b", "FROM:").is_none());
        assert!(path_args("FROM:<a@b", "FROM:").is_none());
        assert!(path_args("FROM:<a@b>x", "FROM:").is_none());
        assert!(path_args("TO:<a@b>", "FROM:").is_none());
        assert!(path_args("FROM:<a<b>", "FROM:").is_none());
        assert!(path_args("FROM:<a@b> SIZE=", "FROM:").is_none());
        assert!(path_args("FROM:<a@b> =1", "FROM:").is_none());
        assert!(path_args("TO:<@r1>", "TO:").is_none());
        assert!(path_args("F", "FROM:").is_none());
        assert!(path_args("FRÖM:<a@b>", "FROM:").is_none());
    }
}
