//! `outpost suppress list|add|remove --domain TENANT [ADDRESS]`: a tenant's suppression list.

use clap::{Args, Subcommand};
use serde_json::json;

use super::{CliError, CliResult, Client, ClientArgs, cell, encode, table};

#[derive(Clone, Debug, Args)]
pub struct SuppressArgs {
    #[command(subcommand)]
    pub action: SuppressAction,
}

#[derive(Clone, Debug, Subcommand)]
pub enum SuppressAction {
    /// The tenant's suppressed addresses.
    List(Target),
    /// Suppress an address for the tenant.
    Add(Target),
    /// Remove an address from the tenant's list.
    Remove(Target),
}

#[derive(Clone, Debug, Args)]
pub struct Target {
    /// The tenant (its sending domain).
    #[arg(long)]
    pub domain: String,
    /// The address (add, remove).
    pub address: Option<String>,
    /// Why (add).
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn address(t: &Target) -> Result<&str, CliError> {
    t.address
        .as_deref()
        .ok_or_else(|| CliError("an ADDRESS is needed".into()))
}

pub fn run(args: &SuppressArgs) -> CliResult {
    match &args.action {
        SuppressAction::List(t) => {
            let c = Client::new(&t.client)?;
            let mut rows = Vec::new();
            let mut all = Vec::new();
            let mut cursor: Option<String> = None;
            // Follow the cursor: the list is short enough to print whole.
            loop {
                let mut path = format!(
                    "/v1/admin/suppressions?domain={}&limit=1000",
                    encode(&t.domain)
                );
                if let Some(cur) = &cursor {
                    path.push_str(&format!("&cursor={}", encode(cur)));
                }
                let v = c.call("GET", &path, None)?;
                for s in v["data"].as_array().cloned().unwrap_or_default() {
                    rows.push(vec![
                        cell(&s["address"]),
                        cell(&s["source"]),
                        cell(&s["category"]),
                        cell(&s["reason"]),
                        cell(&s["created_at"]),
                    ]);
                    all.push(s);
                }
                match v["next_cursor"].as_str() {
                    Some(n) => cursor = Some(n.to_string()),
                    None => break,
                }
            }
            if c.print_json(&json!({ "data": all })) {
                return Ok(());
            }
            if rows.is_empty() {
                println!("no suppressions for {}", t.domain);
            } else {
                table(&["ADDRESS", "SOURCE", "CATEGORY", "REASON", "SINCE"], &rows);
            }
            Ok(())
        }
        SuppressAction::Add(t) => {
            let c = Client::new(&t.client)?;
            let mut body = json!({ "address": address(t)? });
            if let Some(r) = &t.reason {
                body["reason"] = json!(r);
            }
            let v = c.call(
                "POST",
                &format!("/v1/admin/suppressions?domain={}", encode(&t.domain)),
                Some(&body),
            )?;
            if !c.print_json(&v) {
                println!("suppressed {} for {}", cell(&v["address"]), t.domain);
            }
            Ok(())
        }
        SuppressAction::Remove(t) => {
            let c = Client::new(&t.client)?;
            let a = address(t)?;
            c.call(
                "DELETE",
                &format!(
                    "/v1/admin/suppressions/{}?domain={}",
                    encode(a),
                    encode(&t.domain)
                ),
                None,
            )?;
            if !c.print_json(&json!({ "address": a, "removed": true })) {
                println!("removed {a} from {}'s suppressions", t.domain);
            }
            Ok(())
        }
    }
}
