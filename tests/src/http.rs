//! An ordinary HTTP/1.1 client (ureq, one shared agent with keep-alive) for the daemon's
//! API and the test peers. Statuses are answers, not errors: only transport failures
//! (connection refused, reset) are `Err`.

use std::io::Read;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

/// One response: status, headers and the body as text.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The body parsed as JSON; `Null` if it is empty or not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What can be sent as a request body.
pub trait AsBody {
    fn body_bytes(&self) -> Vec<u8>;
}

impl AsBody for str {
    fn body_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl AsBody for String {
    fn body_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl AsBody for [u8] {
    fn body_bytes(&self) -> Vec<u8> {
        self.to_vec()
    }
}

impl AsBody for Vec<u8> {
    fn body_bytes(&self) -> Vec<u8> {
        self.clone()
    }
}

impl AsBody for Value {
    fn body_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl<T: AsBody + ?Sized> AsBody for &T {
    fn body_bytes(&self) -> Vec<u8> {
        (**self).body_bytes()
    }
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into()
    })
}

/// One request with the given headers and body. A body without a `content-type` header
/// goes as `application/json`.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Reply, ureq::Error> {
    let has_body = body.is_some() || matches!(method, "POST" | "PUT" | "PATCH");
    let resp = if has_body {
        let mut req = match method {
            "PUT" => agent().put(url),
            "PATCH" => agent().patch(url),
            _ => agent().post(url),
        };
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send(body.unwrap_or_default())?
    } else {
        let mut req = match method {
            "DELETE" => agent().delete(url),
            "GET" => agent().get(url),
            other => panic!("no body-less {other} in this client"),
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.call()?
    };
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = String::new();
    resp.into_body().into_reader().read_to_string(&mut body)?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// One request with an optional bearer key; transport errors are returned, not panicked
/// on, so that callers can run requests against a daemon that is being killed.
pub fn with_key(
    method: &str,
    url: &str,
    key: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Reply, ureq::Error> {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    request(method, url, &headers, body)
}

/// Percent-encodes a query value (base64 has `+`, `/` and `=`).
pub fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
