//! Column encodings shared by the writer, the snapshot and the API reads.

use outpost_core::Time;
use outpost_core::model::{RecipientKind, Source, SuppressionSource, WebhookDeliveryState};
use rusqlite::types::Type;

pub fn time_to_sql(t: Time) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

pub fn time_from_sql(v: i64) -> Time {
    Time(u64::try_from(v).unwrap_or(0))
}

pub fn opt_time_to_sql(t: Option<Time>) -> Option<i64> {
    t.map(time_to_sql)
}

pub fn u64_to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub fn u64_from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A conversion error for a column whose text does not decode.
pub fn bad_column(idx: usize, what: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        idx,
        Type::Text,
        format!("invalid {what}: {value:?}").into(),
    )
}

/// Reads a text column and decodes it with `parse`.
pub fn get_parsed<T>(
    row: &rusqlite::Row<'_>,
    idx: usize,
    what: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    parse(&s).ok_or_else(|| bad_column(idx, what, &s))
}

/// Borrows a text column (no copy).
pub fn get_str<'r>(row: &'r rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<&'r str> {
    let v = row.get_ref(idx)?;
    v.as_str()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, v.data_type(), Box::new(e)))
}

/// Decodes a text column with `parse`, without copying it first.
pub fn parse_str<T>(
    row: &rusqlite::Row<'_>,
    idx: usize,
    what: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let s = get_str(row, idx)?;
    parse(s).ok_or_else(|| bad_column(idx, what, s))
}

/// Reads an optional text column and decodes it with `parse`.
pub fn get_parsed_opt<T>(
    row: &rusqlite::Row<'_>,
    idx: usize,
    what: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> rusqlite::Result<Option<T>> {
    let s: Option<String> = row.get(idx)?;
    match s {
        None => Ok(None),
        Some(s) => parse(&s).map(Some).ok_or_else(|| bad_column(idx, what, &s)),
    }
}

/// Reads a JSON text column.
pub fn get_json<T: serde::de::DeserializeOwned>(
    row: &rusqlite::Row<'_>,
    idx: usize,
) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    serde_json::from_str(&s)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

pub fn source_str(s: Source) -> &'static str {
    match s {
        Source::Api => "api",
        Source::Smtp => "smtp",
    }
}

pub fn source_parse(s: &str) -> Option<Source> {
    match s {
        "api" => Some(Source::Api),
        "smtp" => Some(Source::Smtp),
        _ => None,
    }
}

pub fn kind_str(k: RecipientKind) -> &'static str {
    match k {
        RecipientKind::To => "to",
        RecipientKind::Cc => "cc",
        RecipientKind::Bcc => "bcc",
    }
}

pub fn kind_parse(s: &str) -> Option<RecipientKind> {
    match s {
        "to" => Some(RecipientKind::To),
        "cc" => Some(RecipientKind::Cc),
        "bcc" => Some(RecipientKind::Bcc),
        _ => None,
    }
}

pub fn suppression_source_str(s: SuppressionSource) -> &'static str {
    match s {
        SuppressionSource::Bounce => "bounce",
        SuppressionSource::Manual => "manual",
    }
}

pub fn suppression_source_parse(s: &str) -> Option<SuppressionSource> {
    match s {
        "bounce" => Some(SuppressionSource::Bounce),
        "manual" => Some(SuppressionSource::Manual),
        _ => None,
    }
}

pub fn delivery_state_str(s: WebhookDeliveryState) -> &'static str {
    match s {
        WebhookDeliveryState::Pending => "pending",
        WebhookDeliveryState::Delivered => "delivered",
        WebhookDeliveryState::Failed => "failed",
    }
}

pub fn delivery_state_parse(s: &str) -> Option<WebhookDeliveryState> {
    match s {
        "pending" => Some(WebhookDeliveryState::Pending),
        "delivered" => Some(WebhookDeliveryState::Delivered),
        "failed" => Some(WebhookDeliveryState::Failed),
        _ => None,
    }
}
