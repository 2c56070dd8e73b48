//! PLACEHOLDER reply type; the full reader (limits, smtp-proto parsing) replaces it.

use serde::{Deserialize, Serialize};

/// One complete SMTP reply (all lines of a multi-line reply), sanitized.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub code: u16,
    /// RFC 3463 enhanced status code (`class.subject.detail`), if the reply has one.
    pub enhanced: Option<String>,
    /// Sanitized text of all lines joined by a space, at most 1024 bytes, without the
    /// code and enhanced code.
    pub text: String,
}

impl Reply {
    pub fn class(&self) -> u16 {
        self.code / 100
    }
    pub fn is_positive(&self) -> bool {
        self.code / 100 == 2 || self.code / 100 == 3
    }
    /// `"550 5.1.1 text"`, as shown to people.
    pub fn display(&self) -> String {
        match &self.enhanced {
            Some(e) => format!("{} {} {}", self.code, e, self.text),
            None => format!("{} {}", self.code, self.text),
        }
    }
}
