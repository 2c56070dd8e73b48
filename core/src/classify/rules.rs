//! PLACEHOLDER (to be replaced by the data-driven rules engine): classifies on the reply
//! code and enhanced code only.

use crate::smtp::Stage;

use super::Category;

/// What the classifier reads.
#[derive(Clone, Copy, Debug)]
pub struct ReplyContext<'a> {
    pub stage: Stage,
    /// `None` for outcomes without a reply (connection refused, timeout, DNS).
    pub code: Option<u16>,
    /// RFC 3463 enhanced code, e.g. `5.1.1`.
    pub enhanced: Option<&'a str>,
    /// Sanitized reply text (or error text).
    pub text: &'a str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    pub category: Category,
    /// The name of the rule that matched.
    pub rule: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rule `{rule}`: {reason}")]
pub struct RuleError {
    pub rule: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default)]
pub struct Classifier {}

impl Classifier {
    pub fn with_overrides(_toml: &str) -> Result<Classifier, RuleError> {
        Ok(Classifier {})
    }

    pub fn classify(&self, ctx: &ReplyContext<'_>) -> Classification {
        let category = match (ctx.code.map(|c| c / 100), ctx.enhanced) {
            (Some(2), _) => Category::Delivered,
            (None, _) => match ctx.stage {
                Stage::Dns => Category::Dns,
                Stage::Tls => Category::Tls,
                _ => Category::Connection,
            },
            (_, Some(e)) if e.ends_with(".1.1") => Category::InvalidRecipient,
            (_, Some(e)) if e.ends_with(".2.2") => Category::MailboxFull,
            _ => Category::Unknown,
        };
        Classification {
            category,
            rule: "placeholder".to_string(),
        }
    }
}
