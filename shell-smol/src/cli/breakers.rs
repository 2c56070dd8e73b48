//! `outpost breakers` (state, why, next probe) and `outpost breaker open|close DOMAIN`.

use clap::{Args, ValueEnum};
use serde_json::json;

use super::{CliResult, Client, ClientArgs, cell, encode, table, time};

#[derive(Clone, Debug, Args)]
pub struct BreakersArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Force {
    Open,
    Close,
}

#[derive(Clone, Debug, Args)]
pub struct BreakerArgs {
    /// `open` holds the destination's mail; `close` lets it flow again.
    pub action: Force,
    /// The destination domain.
    pub domain: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn list(args: &BreakersArgs) -> CliResult {
    let c = Client::new(&args.client)?;
    let v = c.call("GET", "/v1/admin/breakers", None)?;
    if c.print_json(&v) {
        return Ok(());
    }
    let data = v["data"].as_array().cloned().unwrap_or_default();
    if data.is_empty() {
        println!("no breaker has tripped (all destinations closed)");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = data
        .iter()
        .map(|b| {
            vec![
                cell(&b["domain"]),
                cell(&b["state"]),
                cell(&b["consecutive_failures"]),
                if b["forced"] == true { "yes" } else { "no" }.to_string(),
                time(&b["next_probe_at"]),
                cell(&b["explanation"]),
            ]
        })
        .collect();
    table(
        &["DOMAIN", "STATE", "FAILURES", "FORCED", "NEXT PROBE", "WHY"],
        &rows,
    );
    Ok(())
}

pub fn force(args: &BreakerArgs) -> CliResult {
    let c = Client::new(&args.client)?;
    let state = match args.action {
        Force::Open => "open",
        Force::Close => "closed",
    };
    let v = c.call(
        "POST",
        &format!("/v1/admin/breakers/{}", encode(&args.domain)),
        Some(&json!({ "state": state })),
    )?;
    if c.print_json(&v) {
        return Ok(());
    }
    println!("breaker for {} forced {state}", args.domain);
    Ok(())
}
