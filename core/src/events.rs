//! Event payloads: the exact JSON that webhooks POST and the pull API returns.

use serde::Serialize;

use crate::classify::Category;
use crate::ids::{EventId, MessageId};
use crate::model::EventKind;
use crate::status::RecipientStatus;
use crate::time::Time;

/// `data` of an event (DESIGN.md "Events").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventData<'a> {
    /// outpost's message id (`msg_...`).
    pub message_id: MessageId,
    /// The RFC 5322 Message-ID header, with angle brackets.
    pub message_id_header: String,
    pub recipient: &'a str,
    pub status: RecipientStatus,
    pub smtp_code: Option<u16>,
    pub enhanced_code: Option<&'a str>,
    pub category: Option<Category>,
    /// Sanitized remote reply or reason, at most 1024 bytes.
    pub response: Option<&'a str>,
    /// Attempt number (0 before any attempt).
    pub attempt: u32,
    pub mx: Option<&'a str>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    id: EventId,
    seq: u64,
    #[serde(rename = "type")]
    kind: EventKind,
    timestamp: String,
    data: &'a EventData<'a>,
}

/// The event body. Field order is fixed (serde follows declaration order), so the bytes
/// are deterministic.
pub fn payload(id: EventId, seq: u64, kind: EventKind, at: Time, data: &EventData<'_>) -> String {
    let env = Envelope {
        id,
        seq,
        kind,
        timestamp: at.rfc3339(),
        data,
    };
    // Serializing plain data into a String cannot fail; fall back to a minimal body anyway
    // rather than panic.
    serde_json::to_string(&env).unwrap_or_else(|_| format!("{{\"id\":\"{id}\",\"seq\":{seq}}}"))
}

/// The same payload with another sequence number (a retried outbox batch is renumbered).
/// The body starts `{"id":"evt_…","seq":N,` (field order is fixed by `payload`).
pub fn with_seq(payload: &str, seq: u64) -> String {
    const KEY: &str = ",\"seq\":";
    let Some(start) = payload.find(KEY).map(|i| i + KEY.len()) else {
        return payload.to_string();
    };
    let digits = payload[start..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    format!("{}{seq}{}", &payload[..start], &payload[start + digits..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_shape() {
        let data = EventData {
            message_id: MessageId(5),
            message_id_header: "<a@b>".into(),
            recipient: "x@example.org",
            status: RecipientStatus::Bounced,
            smtp_code: Some(550),
            enhanced_code: Some("5.1.1"),
            category: Some(Category::InvalidRecipient),
            response: Some("user unknown"),
            attempt: 1,
            mx: Some("mx.example.org"),
        };
        let p = payload(EventId(7), 3, EventKind::Bounced, Time(0), &data);
        let v: serde_json::Value = serde_json::from_str(&p).unwrap_or_default();
        assert_eq!(v["type"], "message.bounced");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["id"], EventId(7).to_string());
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["data"]["category"], "invalid_recipient");
        assert_eq!(v["data"]["status"], "bounced");
        assert_eq!(v["data"]["message_id"], MessageId(5).to_string());
        assert_eq!(v["data"]["smtp_code"], 550);
        assert!(p.starts_with("{\"id\":"));
        let q = with_seq(&p, 12345);
        let w: serde_json::Value = serde_json::from_str(&q).unwrap_or_default();
        assert_eq!(w["seq"], 12345);
        assert_eq!(w["data"], v["data"]);
    }
}
