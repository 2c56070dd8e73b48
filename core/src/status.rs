//! The recipient status machine (DESIGN.md "Status model") and the message status derived
//! from its recipients. One transition function; terminal statuses are never overwritten.

use serde::{Deserialize, Serialize};

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientStatus {
    Queued,
    Sending,
    Deferred,
    Delivered,
    Bounced,
    Failed,
    Suppressed,
}

impl RecipientStatus {
    pub const ALL: [RecipientStatus; 7] = [
        RecipientStatus::Queued,
        RecipientStatus::Sending,
        RecipientStatus::Deferred,
        RecipientStatus::Delivered,
        RecipientStatus::Bounced,
        RecipientStatus::Failed,
        RecipientStatus::Suppressed,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RecipientStatus::Delivered
                | RecipientStatus::Bounced
                | RecipientStatus::Failed
                | RecipientStatus::Suppressed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RecipientStatus::Queued => "queued",
            RecipientStatus::Sending => "sending",
            RecipientStatus::Deferred => "deferred",
            RecipientStatus::Delivered => "delivered",
            RecipientStatus::Bounced => "bounced",
            RecipientStatus::Failed => "failed",
            RecipientStatus::Suppressed => "suppressed",
        }
    }

    pub fn parse(s: &str) -> Option<RecipientStatus> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A refused status change. Never a panic: late replies, replays after a crash and admin
/// calls all arrive here and are answered with this.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("recipient is already {0:?}, a terminal status")]
    Terminal(RecipientStatus),
    #[error("no transition from {from:?} to {to:?}")]
    Illegal {
        from: RecipientStatus,
        to: RecipientStatus,
    },
}

/// The one transition function. Allowed:
/// `queued -> sending`, `deferred -> sending`,
/// `sending -> delivered | deferred | bounced | failed`,
/// `queued | deferred -> suppressed | failed`.
/// Also `sending -> queued` is refused: a crashed attempt is re-queued by recovery as
/// `deferred` (it counted as an attempt whose outcome is unknown).
pub fn transition(
    from: RecipientStatus,
    to: RecipientStatus,
) -> Result<RecipientStatus, TransitionError> {
    use RecipientStatus::*;
    if from.is_terminal() {
        return Err(TransitionError::Terminal(from));
    }
    let ok = matches!(
        (from, to),
        (Queued | Deferred, Sending)
            | (Sending, Delivered | Deferred | Bounced | Failed)
            | (Queued | Deferred, Suppressed | Failed)
    );
    if ok {
        Ok(to)
    } else {
        Err(TransitionError::Illegal { from, to })
    }
}

/// Message status derived from its recipients.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Queued,
    Sending,
    Deferred,
    Delivered,
    PartiallyDelivered,
    Bounced,
    Failed,
    Suppressed,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Sending => "sending",
            MessageStatus::Deferred => "deferred",
            MessageStatus::Delivered => "delivered",
            MessageStatus::PartiallyDelivered => "partially_delivered",
            MessageStatus::Bounced => "bounced",
            MessageStatus::Failed => "failed",
            MessageStatus::Suppressed => "suppressed",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(
            self,
            MessageStatus::Queued | MessageStatus::Sending | MessageStatus::Deferred
        )
    }
}

/// Derivation rules, in order:
/// 1. any recipient `sending` -> `sending`;
/// 2. any `deferred` -> `deferred`; else any `queued` -> `queued`;
/// 3. all terminal: all delivered -> `delivered`; some delivered -> `partially_delivered`;
///    otherwise the most common of bounced/failed/suppressed, ties broken in that order.
///
/// A message with no recipients (never created by the core) counts as `failed`.
pub fn derive_message_status<I>(statuses: I) -> MessageStatus
where
    I: IntoIterator<Item = RecipientStatus>,
{
    let mut counts = [0usize; 7];
    let mut total = 0usize;
    for s in statuses {
        counts[s as usize] += 1;
        total += 1;
    }
    let n = |s: RecipientStatus| counts[s as usize];
    use RecipientStatus as R;
    if total == 0 {
        return MessageStatus::Failed;
    }
    if n(R::Sending) > 0 {
        return MessageStatus::Sending;
    }
    if n(R::Deferred) > 0 {
        return MessageStatus::Deferred;
    }
    if n(R::Queued) > 0 {
        return MessageStatus::Queued;
    }
    if n(R::Delivered) == total {
        return MessageStatus::Delivered;
    }
    if n(R::Delivered) > 0 {
        return MessageStatus::PartiallyDelivered;
    }
    let (b, f, s) = (n(R::Bounced), n(R::Failed), n(R::Suppressed));
    if b >= f && b >= s {
        MessageStatus::Bounced
    } else if f >= s {
        MessageStatus::Failed
    } else {
        MessageStatus::Suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RecipientStatus::*;
    use proptest::prelude::*;

    #[test]
    fn allowed_and_refused() {
        assert_eq!(transition(Queued, Sending), Ok(Sending));
        assert_eq!(transition(Deferred, Sending), Ok(Sending));
        assert_eq!(transition(Sending, Delivered), Ok(Delivered));
        assert_eq!(transition(Queued, Suppressed), Ok(Suppressed));
        assert_eq!(transition(Deferred, Failed), Ok(Failed));
        assert_eq!(
            transition(Delivered, Bounced),
            Err(TransitionError::Terminal(Delivered))
        );
        assert_eq!(
            transition(Queued, Delivered),
            Err(TransitionError::Illegal {
                from: Queued,
                to: Delivered
            })
        );
        assert!(transition(Sending, Suppressed).is_err());
        assert!(transition(Sending, Queued).is_err());
    }

    #[test]
    fn message_status() {
        assert_eq!(
            derive_message_status([Delivered, Delivered]),
            MessageStatus::Delivered
        );
        assert_eq!(
            derive_message_status([Delivered, Bounced]),
            MessageStatus::PartiallyDelivered
        );
        assert_eq!(
            derive_message_status([Delivered, Sending]),
            MessageStatus::Sending
        );
        assert_eq!(
            derive_message_status([Queued, Deferred]),
            MessageStatus::Deferred
        );
        assert_eq!(
            derive_message_status([Bounced, Suppressed]),
            MessageStatus::Bounced
        );
        assert_eq!(
            derive_message_status([Suppressed]),
            MessageStatus::Suppressed
        );
        assert_eq!(
            derive_message_status([Failed, Failed, Bounced]),
            MessageStatus::Failed
        );
    }

    fn status() -> impl Strategy<Value = RecipientStatus> {
        proptest::sample::select(RecipientStatus::ALL.to_vec())
    }

    proptest! {
        /// Random sequences of requested transitions never leave a terminal state and
        /// never panic; the state only ever follows allowed edges.
        #[test]
        fn terminal_is_forever(start in status(), steps in proptest::collection::vec(status(), 0..64)) {
            let mut cur = start;
            let mut terminal = cur.is_terminal().then_some(cur);
            for to in steps {
                match transition(cur, to) {
                    Ok(next) => {
                        prop_assert!(!cur.is_terminal());
                        prop_assert_eq!(next, to);
                        cur = next;
                    }
                    Err(TransitionError::Terminal(s)) => prop_assert!(s.is_terminal() && s == cur),
                    Err(TransitionError::Illegal { from, .. }) => prop_assert_eq!(from, cur),
                }
                if let Some(t) = terminal {
                    prop_assert_eq!(cur, t);
                }
                if cur.is_terminal() {
                    terminal.get_or_insert(cur);
                }
            }
        }

        #[test]
        fn derived_status_is_final_iff_all_terminal(v in proptest::collection::vec(status(), 1..10)) {
            let all_terminal = v.iter().all(|s| s.is_terminal());
            prop_assert_eq!(derive_message_status(v.clone()).is_final(), all_terminal);
        }
    }
}
