//! The message-signing hook (DKIM): the core decides *when* a message is signed (once, at
//! intake, after validation and before the store write that precedes the acknowledgement, so
//! every retry sends identical bytes); the shell decides *how* (keys live on disk, crypto
//! crates stay out of the core).
//!
//! A signer that reads the clock (DKIM `t=`) makes outputs depend on more than the inputs;
//! the deterministic simulator runs without one.

use std::fmt;
use std::sync::Arc;

use crate::intake::{dot_stuff, unstuff};
use crate::io::{SubmitError, SubmitErrorKind};

/// Signs outgoing messages for a tenant's domain.
pub trait MessageSigner: Send + Sync {
    /// `message` is the complete message with CRLF line endings, NOT dot-stuffed.
    /// Returns the header lines to prepend (each ending in CRLF, e.g. one or more
    /// `DKIM-Signature:` fields), `Ok(None)` when this domain is not signed, or an error
    /// (which must not contain key material: it is shown to the submitter and logged).
    fn sign(&self, tenant_domain: &str, message: &[u8]) -> Result<Option<Vec<u8>>, String>;
}

/// `Config::signer`: a shared signer. A wrapper so `Config` keeps deriving `Debug`/`Clone`.
#[derive(Clone)]
pub struct Signer(pub Arc<dyn MessageSigner>);

impl Signer {
    pub fn new(signer: impl MessageSigner + 'static) -> Signer {
        Signer(Arc::new(signer))
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signer(..)")
    }
}

/// Signs a prepared spool (dot-stuffed wire form) and returns the new spool, or the
/// submission error to answer with (`signing_failed`, HTTP 503 / SMTP 451): mail is never
/// sent unsigned because signing broke.
pub fn sign_spool(
    signer: &dyn MessageSigner,
    tenant_domain: &str,
    spool: &[u8],
) -> Result<Option<Vec<u8>>, SubmitError> {
    let plain = unstuff(spool);
    let headers = match signer.sign(tenant_domain, &plain) {
        Ok(None) => return Ok(None),
        Ok(Some(h)) => h,
        Err(e) => return Err(signing_failed(&e)),
    };
    // The prefix must be whole header lines, or it would corrupt the message (a missing
    // CRLF glues it onto the first header; a blank line would end the header section).
    let well_formed = headers.ends_with(b"\r\n")
        && !headers.starts_with(b"\r\n")
        && !headers.windows(4).any(|w| w == b"\r\n\r\n")
        && !headers.starts_with(b" ")
        && !headers.starts_with(b"\t");
    if !well_formed {
        return Err(signing_failed("the signer returned malformed header lines"));
    }
    // `headers` ends with CRLF, so stuffing it separately and appending the already-stuffed
    // spool equals stuffing the whole message (a line starts at the join either way).
    let mut out = dot_stuff(&headers);
    out.extend_from_slice(spool);
    Ok(Some(out))
}

fn signing_failed(why: &str) -> SubmitError {
    SubmitError::new(
        SubmitErrorKind::Unavailable,
        "signing_failed",
        format!("the message could not be DKIM-signed, so it was not accepted: {why}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Result<Option<Vec<u8>>, String>);
    impl MessageSigner for Fixed {
        fn sign(&self, _: &str, message: &[u8]) -> Result<Option<Vec<u8>>, String> {
            // The signer sees the un-stuffed message.
            assert!(!message.windows(3).any(|w| w == b"\n.."));
            self.0.clone()
        }
    }

    #[test]
    fn prepends_and_keeps_the_stuffing() {
        let spool = dot_stuff(b"From: a@b.test\r\n\r\n.dot\r\n");
        let s = Fixed(Ok(Some(b"X-Sig: 1\r\n\tmore\r\n".to_vec())));
        let out = sign_spool(&s, "b.test", &spool).ok().flatten();
        let expected = dot_stuff(b"X-Sig: 1\r\n\tmore\r\nFrom: a@b.test\r\n\r\n.dot\r\n");
        assert_eq!(out, Some(expected));
        assert_eq!(sign_spool(&Fixed(Ok(None)), "b.test", &spool), Ok(None));
    }

    #[test]
    fn errors_and_malformed_output_refuse() {
        let spool = b"From: a@b.test\r\n\r\nbody\r\n".to_vec();
        for bad in [
            Err("no key".to_string()),
            Ok(Some(b"X-Sig: 1".to_vec())),
            Ok(Some(b"X-Sig: 1\r\n\r\n".to_vec())),
            Ok(Some(b" cont\r\n".to_vec())),
        ] {
            let e = sign_spool(&Fixed(bad), "b.test", &spool).err();
            assert_eq!(e.map(|e| e.code), Some("signing_failed".to_string()));
        }
    }
}
