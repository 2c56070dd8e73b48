//! The category vocabulary and the decision table (DESIGN.md "Status model").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What an outcome was about. One documented vocabulary, shown in the attempt timeline,
/// events (`data.category`), suppression records, metrics and the CLI.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// 2xx: accepted by the remote server.
    Delivered,
    /// The mailbox does not exist.
    InvalidRecipient,
    /// The recipient domain does not exist or accepts no mail (NXDOMAIN, null MX).
    InvalidDomain,
    /// The recipient moved (551 / 5.1.6).
    RecipientMoved,
    MailboxFull,
    /// The mailbox exists but is disabled or inactive.
    MailboxDisabled,
    MessageTooLarge,
    /// The content was refused (viruses, attachments, headers), not as spam.
    ContentRejected,
    /// Refused as spam.
    SpamBlock,
    /// Our IP or domain is listed or has a bad reputation.
    ReputationBlock,
    /// Authentication required: SPF, DKIM, DMARC, reverse DNS.
    AuthRequired,
    RateLimited,
    /// Our envelope sender was refused.
    SenderRejected,
    RelayDenied,
    PolicyOther,
    /// The destination lacks an extension the message needs (e.g. SMTPUTF8).
    NotSupported,
    ServerError,
    /// TCP connection refused, reset or unreachable.
    Connection,
    /// Name resolution failed temporarily.
    Dns,
    Tls,
    Timeout,
    /// The remote broke the protocol (garbage, overlong replies).
    Protocol,
    /// The message reached its maximum age.
    Expired,
    /// Cancelled by an operator.
    Cancelled,
    /// The address is on the tenant's suppression list.
    Suppressed,
    Unknown,
}

impl Category {
    pub const ALL: [Category; 26] = [
        Category::Delivered,
        Category::InvalidRecipient,
        Category::InvalidDomain,
        Category::RecipientMoved,
        Category::MailboxFull,
        Category::MailboxDisabled,
        Category::MessageTooLarge,
        Category::ContentRejected,
        Category::SpamBlock,
        Category::ReputationBlock,
        Category::AuthRequired,
        Category::RateLimited,
        Category::SenderRejected,
        Category::RelayDenied,
        Category::PolicyOther,
        Category::NotSupported,
        Category::ServerError,
        Category::Connection,
        Category::Dns,
        Category::Tls,
        Category::Timeout,
        Category::Protocol,
        Category::Expired,
        Category::Cancelled,
        Category::Suppressed,
        Category::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Delivered => "delivered",
            Category::InvalidRecipient => "invalid_recipient",
            Category::InvalidDomain => "invalid_domain",
            Category::RecipientMoved => "recipient_moved",
            Category::MailboxFull => "mailbox_full",
            Category::MailboxDisabled => "mailbox_disabled",
            Category::MessageTooLarge => "message_too_large",
            Category::ContentRejected => "content_rejected",
            Category::SpamBlock => "spam_block",
            Category::ReputationBlock => "reputation_block",
            Category::AuthRequired => "auth_required",
            Category::RateLimited => "rate_limited",
            Category::SenderRejected => "sender_rejected",
            Category::RelayDenied => "relay_denied",
            Category::PolicyOther => "policy_other",
            Category::NotSupported => "not_supported",
            Category::ServerError => "server_error",
            Category::Connection => "connection",
            Category::Dns => "dns",
            Category::Tls => "tls",
            Category::Timeout => "timeout",
            Category::Protocol => "protocol",
            Category::Expired => "expired",
            Category::Cancelled => "cancelled",
            Category::Suppressed => "suppressed",
            Category::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Category> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Connection-level categories: the destination as a whole failed, not one mailbox.
    pub fn is_transport(self) -> bool {
        matches!(
            self,
            Category::Connection
                | Category::Dns
                | Category::Tls
                | Category::Timeout
                | Category::Protocol
        )
    }
}

/// What happens to a recipient after an outcome.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Delivered,
    Deferred,
    Bounced,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Decision {
    pub outcome: Outcome,
    /// Add the address to the tenant's suppression list.
    pub suppress: bool,
}

/// The one table from category to decision. Defaults: 2xx delivered; 4xx and
/// connection/DNS/TLS/timeout/protocol deferred; 5xx bounced, except `rate_limited`, which
/// is deferred (a rate limit passes). Only `invalid_recipient`, `invalid_domain` and
/// `recipient_moved` suppress, and never on a 4xx. Operators may override per category.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CategoryPolicy {
    pub overrides: BTreeMap<Category, Decision>,
}

impl CategoryPolicy {
    pub fn default_decision(category: Category) -> Decision {
        use Category::*;
        let (outcome, suppress) = match category {
            Delivered => (Outcome::Delivered, false),
            InvalidRecipient | InvalidDomain | RecipientMoved => (Outcome::Bounced, true),
            RateLimited | Connection | Dns | Tls | Timeout | Protocol | Unknown => {
                (Outcome::Deferred, false)
            }
            _ => (Outcome::Bounced, false),
        };
        Decision { outcome, suppress }
    }

    /// The decision for a category given the reply code class (2, 4, 5, or `None` for
    /// outcomes without a reply). A 4xx is always deferred and never suppresses; a 2xx is
    /// always delivered; `Unknown` with a 5xx bounces.
    pub fn decide(&self, category: Category, code: Option<u16>) -> Decision {
        match code.map(|c| c / 100) {
            Some(2) => {
                return Decision {
                    outcome: Outcome::Delivered,
                    suppress: false,
                };
            }
            Some(4) => {
                return Decision {
                    outcome: Outcome::Deferred,
                    suppress: false,
                };
            }
            _ => {}
        }
        let mut d = self
            .overrides
            .get(&category)
            .copied()
            .unwrap_or_else(|| Self::default_decision(category));
        // A 5xx is permanent (RFC 5321 4.2.1) whatever the category says, except for a
        // rate limit, which passes: only operator overrides may defer other 5xx.
        if code.map(|c| c / 100) == Some(5)
            && category != Category::RateLimited
            && !self.overrides.contains_key(&category)
        {
            d.outcome = Outcome::Bounced;
        }
        if d.outcome != Outcome::Bounced {
            d.suppress = false;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Category::ALL {
            assert_eq!(Category::parse(c.as_str()), Some(c));
            let json = serde_json::to_string(&c).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
        }
    }

    #[test]
    fn table_is_total_and_four_xx_never_suppresses() {
        let p = CategoryPolicy::default();
        for c in Category::ALL {
            for code in [None, Some(250), Some(421), Some(450), Some(550), Some(554)] {
                let d = p.decide(c, code);
                if code.is_some_and(|c| c / 100 == 4) {
                    assert_eq!(d.outcome, Outcome::Deferred);
                    assert!(!d.suppress);
                }
                if d.suppress {
                    assert_eq!(d.outcome, Outcome::Bounced);
                    assert!(matches!(
                        c,
                        Category::InvalidRecipient
                            | Category::InvalidDomain
                            | Category::RecipientMoved
                    ));
                }
            }
        }
        assert_eq!(
            p.decide(Category::MailboxFull, Some(552)),
            Decision {
                outcome: Outcome::Bounced,
                suppress: false
            }
        );
        assert_eq!(
            p.decide(Category::InvalidRecipient, Some(550)),
            Decision {
                outcome: Outcome::Bounced,
                suppress: true
            }
        );
        assert_eq!(
            p.decide(Category::Connection, None).outcome,
            Outcome::Deferred
        );
    }
}
