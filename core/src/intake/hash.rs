//! `request_hash`: what an Idempotency-Key is bound to. Only the content counts (not the
//! request id, the key itself or the time), so a retried request matches its original and
//! a different request under the same key is detected.

use sha2::{Digest, Sha256};

use crate::io::SubmissionContent;

/// Feeds a canonical, unambiguous encoding: every variable-length item is length-prefixed
/// and every optional or list item is tagged, so no two different contents encode alike.
struct Canon(Sha256);

impl Canon {
    fn bytes(&mut self, b: &[u8]) {
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn tag(&mut self, t: u8) {
        self.0.update([t]);
    }
    fn list(&mut self, items: &[String]) {
        self.0.update((items.len() as u64).to_le_bytes());
        for i in items {
            self.str(i);
        }
    }
    fn opt(&mut self, o: Option<&String>) {
        match o {
            None => self.tag(0),
            Some(s) => {
                self.tag(1);
                self.str(s);
            }
        }
    }
}

/// Lowercase hex SHA-256 of the canonical encoding of `content`.
pub fn request_hash(content: &SubmissionContent) -> String {
    let mut c = Canon(Sha256::new());
    c.str("outpost-submission-v1");
    match content {
        SubmissionContent::Compose(r) => {
            c.tag(b'C');
            c.str(&r.from);
            c.list(&r.to);
            c.list(&r.cc);
            c.list(&r.bcc);
            c.opt(r.reply_to.as_ref());
            c.str(&r.subject);
            c.opt(r.text.as_ref());
            c.opt(r.html.as_ref());
            // A BTreeMap iterates in key order: the encoding does not depend on the order
            // the client sent the headers in.
            c.0.update((r.headers.len() as u64).to_le_bytes());
            for (k, v) in &r.headers {
                c.str(k);
                c.str(v);
            }
            c.list(&r.tags);
        }
        SubmissionContent::Raw {
            mail_from,
            rcpt_to,
            data,
            smtputf8,
        } => {
            c.tag(b'R');
            c.str(mail_from);
            c.list(rcpt_to);
            c.bytes(data);
            c.tag(u8::from(*smtputf8));
        }
    }
    let digest = c.0.finalize();
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::ComposeRequest;

    #[test]
    fn distinguishes_field_boundaries() {
        let a = ComposeRequest {
            to: vec!["ab".into(), "c".into()],
            ..Default::default()
        };
        let b = ComposeRequest {
            to: vec!["a".into(), "bc".into()],
            ..Default::default()
        };
        let ha = request_hash(&SubmissionContent::Compose(a.clone()));
        assert_eq!(ha.len(), 64);
        assert_eq!(ha, request_hash(&SubmissionContent::Compose(a)));
        assert_ne!(ha, request_hash(&SubmissionContent::Compose(b)));
        let t = ComposeRequest {
            text: Some(String::new()),
            ..Default::default()
        };
        assert_ne!(
            request_hash(&SubmissionContent::Compose(t)),
            request_hash(&SubmissionContent::Compose(ComposeRequest::default()))
        );
    }
}
