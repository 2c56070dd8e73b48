//! HTTP plumbing: errors, bodies, JSON fields, query strings, path segments.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::store::StoreError;

/// An error answer: `{"error":{"code","message","field"?}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header (429 from the rate limiter).
    pub retry_after: Option<u64>,
    /// The `Allow` header of a 405: the methods the path does accept.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
            field: None,
            retry_after: None,
            allow: None,
        }
    }
    pub fn field(mut self, field: &str) -> ApiError {
        self.field = Some(field.to_string());
        self
    }
    pub fn allow(mut self, methods: &'static str) -> ApiError {
        self.allow = Some(methods);
        self
    }
    pub fn bad_request(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(400, code, message)
    }
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(422, "invalid_field", message).field(field)
    }
    pub fn not_found() -> ApiError {
        ApiError::new(404, "not_found", "not found")
    }
    pub fn unauthorized(message: &str) -> ApiError {
        ApiError::new(401, "unauthorized", message)
    }
    pub fn forbidden(message: &str) -> ApiError {
        ApiError::new(403, "forbidden", message)
    }
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, "unavailable", message)
    }
    pub fn body(&self) -> Value {
        let mut e = json!({ "code": self.code, "message": self.message });
        if let Some(f) = &self.field {
            e["field"] = json!(f);
        }
        json!({ "error": e })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "store read failed");
        ApiError::unavailable("storage unavailable")
    }
}

/// Parses a JSON object body.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("malformed JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad_request(
            "invalid_json",
            "the body must be a JSON object",
        )),
    }
}

/// Refuses fields other than `allowed` (422 naming them).
pub fn deny_unknown(map: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    let unknown: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|k| !allowed.contains(k))
        .collect();
    match unknown.first() {
        None => Ok(()),
        Some(first) => Err(ApiError::new(
            422,
            "unknown_field",
            format!("unknown field(s): {}", unknown.join(", ")),
        )
        .field(first)),
    }
}

/// An optional field of type `T` (`null` counts as absent); a wrong type is a 422.
pub fn opt_field<T: DeserializeOwned>(
    map: &mut Map<String, Value>,
    name: &str,
) -> Result<Option<T>, ApiError> {
    match map.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| ApiError::invalid(name, format!("{name}: {e}"))),
    }
}

pub fn req_field<T: DeserializeOwned>(
    map: &mut Map<String, Value>,
    name: &str,
) -> Result<T, ApiError> {
    opt_field(map, name)?.ok_or_else(|| {
        ApiError::new(422, "missing_field", format!("{name} is required")).field(name)
    })
}

/// Decodes `%XX` escapes (and `+` as space when `plus_space`).
pub fn percent_decode(s: &str, plus_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Splits a request target into decoded path segments and query parameters.
pub fn split_url(url: &str) -> Result<(Vec<String>, BTreeMap<String, String>), ApiError> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let bad_path = || ApiError::bad_request("invalid_path", "malformed path");
    let segments = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false).ok_or_else(bad_path))
        .collect::<Result<Vec<_>, _>>()?;
    let mut params = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = || ApiError::bad_request("invalid_query", "malformed query string");
        let k = percent_decode(k, true).ok_or_else(bad)?;
        let v = percent_decode(v, true).ok_or_else(bad)?;
        if params.insert(k.clone(), v).is_some() {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("query parameter {k} given twice"),
            ));
        }
    }
    Ok((segments, params))
}

/// Query parameters, each taken at most once; leftovers are refused.
pub struct Query(pub BTreeMap<String, String>);

impl Query {
    pub fn take(&mut self, name: &str) -> Option<String> {
        self.0.remove(name).filter(|v| !v.is_empty())
    }

    pub fn parse<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => parse(&v).map(Some).ok_or_else(|| {
                ApiError::bad_request("invalid_query", format!("invalid value for {name}"))
            }),
        }
    }

    /// `limit`: 1..=max, default `default`.
    pub fn limit(&mut self, default: usize, max: usize) -> Result<usize, ApiError> {
        Ok(self
            .parse("limit", |s| {
                s.parse::<usize>().ok().filter(|&n| n >= 1 && n <= max)
            })?
            .unwrap_or(default))
    }

    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.keys().next() {
            None => Ok(()),
            Some(k) => Err(ApiError::bad_request(
                "invalid_query",
                format!("unknown query parameter {k}"),
            )),
        }
    }
}
