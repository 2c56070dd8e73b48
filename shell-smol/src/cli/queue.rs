//! `outpost queue`: queue depth per destination domain, the oldest message, the next attempt.

use clap::Args;
use serde_json::Value;

use super::{CliResult, Client, ClientArgs, cell, table, time};

#[derive(Clone, Debug, Args)]
pub struct QueueArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: &QueueArgs) -> CliResult {
    let c = Client::new(&args.client)?;
    let v = c.call("GET", "/v1/admin/queue", None)?;
    if c.print_json(&v) {
        return Ok(());
    }
    let data = v["data"].as_array().cloned().unwrap_or_default();
    if data.is_empty() {
        println!("queue empty");
        return Ok(());
    }
    let total = |k: &str| data.iter().map(|d| d[k].as_u64().unwrap_or(0)).sum::<u64>();
    let rows: Vec<Vec<String>> = data
        .iter()
        .map(|d: &Value| {
            vec![
                cell(&d["domain"]),
                cell(&d["queued"]),
                cell(&d["deferred"]),
                cell(&d["sending"]),
                cell(&d["connections"]),
                time(&d["oldest_created_at"]),
                time(&d["next_attempt_at"]),
            ]
        })
        .collect();
    table(
        &[
            "DOMAIN",
            "QUEUED",
            "DEFERRED",
            "SENDING",
            "CONNS",
            "OLDEST",
            "NEXT ATTEMPT",
        ],
        &rows,
    );
    println!(
        "total: {} queued, {} deferred, {} sending",
        total("queued"),
        total("deferred"),
        total("sending")
    );
    Ok(())
}
