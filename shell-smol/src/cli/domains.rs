//! `outpost domains check DOMAIN`: asks the running daemon (`GET /v1/domains/{domain}`,
//! admin key from `OUTPOST_ADMIN_KEY`) and prints the records as a table, then what to
//! publish. Exit 0 when every record is `ok`, 1 when one is not, 2 on a usage or API error.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Debug, Args)]
pub struct DomainsArgs {
    #[command(subcommand)]
    pub command: DomainsCommand,
}

#[derive(Debug, Subcommand)]
pub enum DomainsCommand {
    /// Show a domain's DKIM selectors and its DKIM/SPF/DMARC records, checked in DNS.
    Check {
        /// The sending domain.
        domain: String,
        /// The daemon's HTTP API.
        #[arg(long, env = "OUTPOST_API", default_value = "http://127.0.0.1:8025")]
        api: String,
    },
}

pub fn run(args: &DomainsArgs) -> ExitCode {
    match &args.command {
        DomainsCommand::Check { domain, api } => check(domain, api),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("outpost domains: {msg}");
    ExitCode::from(2)
}

fn check(domain: &str, api: &str) -> ExitCode {
    let Some(key) = std::env::var("OUTPOST_ADMIN_KEY")
        .ok()
        .filter(|k| !k.is_empty())
    else {
        return fail("set OUTPOST_ADMIN_KEY to the daemon's admin key");
    };
    if domain.is_empty() || domain.contains(['/', '?', '#', '%', ' ']) {
        return fail(format!("{domain:?} is not a domain"));
    }
    let url = format!("{}/v1/domains/{domain}", api.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // The daemon does several DNS lookups for the answer.
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let resp = match agent
        .get(&url)
        .header("authorization", &format!("Bearer {key}"))
        .call()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot reach the daemon at {api}: {e}")),
    };
    let status = resp.status().as_u16();
    let text = match resp.into_body().read_to_string() {
        Ok(t) => t,
        Err(e) => return fail(format!("reading the answer: {e}")),
    };
    let body: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => return fail(format!("HTTP {status}: not JSON")),
    };
    if status != 200 {
        let msg = body["error"]["message"]
            .as_str()
            .unwrap_or("request failed");
        return fail(format!("HTTP {status}: {msg}"));
    }
    let (table, all_ok) = render(&body);
    print!("{table}");
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// One row: (kind, name, status, detail, value to publish).
fn rows(body: &Value) -> Vec<[String; 5]> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut out = Vec::new();
    if let Some(sels) = body["dkim"]["selectors"].as_array() {
        for k in sels {
            let kind = match k["algorithm"].as_str() {
                Some("ed25519-sha256") => "DKIM ed25519",
                _ => "DKIM rsa",
            };
            let mut detail = s(&k["detail"]);
            if k["signing"] == Value::Bool(false) {
                detail = format!("not signing (disabled by config) {detail}");
            }
            out.push([
                kind.to_string(),
                s(&k["record"]["name"]),
                s(&k["status"]),
                detail.trim().to_string(),
                s(&k["record"]["value"]),
            ]);
        }
    }
    for (kind, key) in [("SPF", "spf"), ("DMARC", "dmarc")] {
        let r = &body[key];
        out.push([
            kind.to_string(),
            s(&r["record"]["name"]),
            s(&r["status"]),
            s(&r["detail"]),
            s(&r["record"]["value"]),
        ]);
    }
    out
}

fn render(body: &Value) -> (String, bool) {
    let rows = rows(body);
    let head = ["RECORD", "NAME", "STATUS", "DETAIL"];
    let mut w = head.map(str::len);
    for r in &rows {
        for i in 0..4 {
            w[i] = w[i].max(r[i].chars().count());
        }
    }
    let line = |c: [&str; 4]| {
        format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}\n",
            c[0],
            c[1],
            c[2],
            c[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        )
        .trim_end()
        .to_string()
            + "\n"
    };
    let mut out = format!("{}\n", body["domain"].as_str().unwrap_or(""));
    if body["dkim"]["selectors"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        out.push_str("no DKIM key yet: POST /v1/domains/{domain}/dkim creates one\n");
    }
    out.push('\n');
    out.push_str(&line(head));
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3]]));
    }
    let all_ok = rows.iter().all(|r| r[2] == "ok")
        && body["dkim"]["selectors"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
    let todo: Vec<&[String; 5]> = rows
        .iter()
        .filter(|r| r[2] != "ok" && !r[4].is_empty())
        .collect();
    if !todo.is_empty() {
        out.push_str("\nPublish (TXT):\n");
        for r in todo {
            out.push_str(&format!("  {}  TXT  \"{}\"\n", r[1], r[4]));
        }
    }
    (out, all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_table_and_what_to_publish() {
        let body = serde_json::json!({
            "domain": "example.com",
            "dkim": {"selectors": [
                {"algorithm": "rsa-sha256", "signing": true, "status": "ok", "detail": null,
                 "record": {"name": "s-rsa._domainkey.example.com", "value": "v=DKIM1; k=rsa; p=AB"}},
                {"algorithm": "ed25519-sha256", "signing": true, "status": "missing", "detail": null,
                 "record": {"name": "s-ed25519._domainkey.example.com", "value": "v=DKIM1; k=ed25519; p=CD"}}
            ]},
            "spf": {"status": "ok", "detail": null, "record": {"name": "example.com", "value": "v=spf1 ip4:192.0.2.1 ~all"}},
            "dmarc": {"status": "mismatch", "detail": "p= must be none, quarantine or reject",
                      "record": {"name": "_dmarc.example.com", "value": "v=DMARC1; p=none"}}
        });
        let (out, ok) = render(&body);
        assert!(!ok);
        assert!(
            out.contains("DKIM rsa      s-rsa._domainkey.example.com      ok"),
            "{out}"
        );
        assert!(
            out.contains("DKIM ed25519  s-ed25519._domainkey.example.com  missing"),
            "{out}"
        );
        assert!(out.contains("\"v=DKIM1; k=ed25519; p=CD\""), "{out}");
        assert!(!out.contains("p=AB\""), "{out}");
    }
}
