//! Identifiers. Every id the core mints is a 128-bit ULID-like value: 48 bits of
//! milliseconds followed by 80 bits from the engine's seeded RNG. They sort by creation
//! time (newest-first listings need no extra column) and stay unique across restarts and
//! across several daemons sharing one store, while remaining deterministic for one seed.

use core::fmt;
use core::str::FromStr;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::time::Time;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Encodes 128 bits as 26 Crockford base32 characters.
fn encode(v: u128) -> String {
    let mut out = [0u8; 26];
    for (i, slot) in out.iter_mut().enumerate() {
        let shift = 125 - 5 * i as i32;
        let idx = if shift >= 0 {
            (v >> shift) & 0x1f
        } else {
            (v << (-shift)) & 0x1f
        };
        *slot = CROCKFORD[idx as usize];
    }
    out.iter().map(|&b| b as char).collect()
}

fn decode(s: &str) -> Option<u128> {
    if s.len() != 26 {
        return None;
    }
    let mut v: u128 = 0;
    for (i, c) in s.bytes().enumerate() {
        let d = CROCKFORD
            .iter()
            .position(|&x| x == c.to_ascii_uppercase())? as u128;
        if i == 0 {
            if d > 7 {
                return None;
            }
            v = d;
        } else {
            v = (v << 5) | d;
        }
    }
    Some(v)
}

/// Builds a time-ordered id from a timestamp and 80 random bits.
pub fn ulid(now: Time, random80: u128) -> u128 {
    ((now.0 as u128 & 0xffff_ffff_ffff) << 80) | (random80 & ((1u128 << 80) - 1))
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u128);

        impl $name {
            pub const PREFIX: &'static str = $prefix;
            /// Milliseconds part: when the id was minted.
            pub fn minted_at(self) -> Time {
                Time((self.0 >> 80) as u64)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, encode(self.0))
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                s.strip_prefix($prefix)
                    .and_then(decode)
                    .map($name)
                    .ok_or(InvalidId)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(|_| serde::de::Error::custom("invalid id"))
            }
        }
    };
}

/// The string is not an id of the expected kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid id")]
pub struct InvalidId;

prefixed_id!(
    /// A message accepted by outpost.
    MessageId,
    "msg_"
);
prefixed_id!(
    /// An event in the outbox; also the Standard Webhooks `webhook-id`.
    EventId,
    "evt_"
);
prefixed_id!(
    /// A webhook endpoint.
    EndpointId,
    "whk_"
);

/// A tenant (one sending domain). Assigned by the store; opaque to the core.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub u64);

/// One recipient of one message.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecipientRef {
    pub message: MessageId,
    pub idx: u32,
}

macro_rules! plain_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);
    };
}
plain_id!(
    /// Correlates a shell request (a submission, an admin command) with the core's answer.
    /// Chosen by the shell.
    RequestId
);
plain_id!(
    /// A store transaction requested by the core (`Output::Persist`).
    BatchId
);
plain_id!(
    /// An outbound SMTP connection.
    ConnId
);
plain_id!(
    /// A DNS query.
    QueryId
);
plain_id!(
    /// One webhook POST attempt.
    PostId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sorts_by_time() {
        let a = MessageId(ulid(Time(1_000), 0xdead_beef));
        let b = MessageId(ulid(Time(2_000), 1));
        assert!(a < b);
        let s = a.to_string();
        assert!(s.starts_with("msg_") && s.len() == 30, "{s}");
        assert_eq!(s.parse::<MessageId>(), Ok(a));
        assert_eq!(a.minted_at(), Time(1_000));
        assert!(
            "evt_00000000000000000000000000"
                .parse::<MessageId>()
                .is_err()
        );
        assert!(
            "msg_8ZZZZZZZZZZZZZZZZZZZZZZZZZ"
                .parse::<MessageId>()
                .is_err()
        );
        let max = MessageId(u128::MAX);
        assert_eq!(max.to_string().parse::<MessageId>(), Ok(max));
    }
}
