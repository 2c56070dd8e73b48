//! `outpost message ID`: a message's recipients and attempt timeline; `outpost retry ID`
//! (every pending recipient due now) and `outpost bounce ID` (admin cancel: pending
//! recipients `failed` with reason `cancelled`).

use clap::Args;
use serde_json::Value;

use super::{CliResult, Client, ClientArgs, cell, encode, table};

#[derive(Clone, Debug, Args)]
pub struct MessageArgs {
    /// The message id (from the send receipt).
    pub id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn show(args: &MessageArgs) -> CliResult {
    let c = Client::new(&args.client)?;
    let v = c.call(
        "GET",
        &format!("/v1/admin/messages/{}", encode(&args.id)),
        None,
    )?;
    if c.print_json(&v) {
        return Ok(());
    }
    print_timeline(&v);
    Ok(())
}

/// Prints a message (the API's `GET /v1/messages/{id}` shape) for people.
pub fn print_timeline(v: &Value) {
    println!("message  {}", cell(&v["id"]));
    println!("status   {}", cell(&v["status"]));
    println!("from     {}", cell(&v["from"]));
    println!("subject  {}", cell(&v["subject"]));
    println!("created  {}", cell(&v["created_at"]));
    println!();
    let rcpts: Vec<Vec<String>> = v["recipients"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            vec![
                cell(&r["address"]),
                cell(&r["status"]),
                cell(&r["attempts"]),
                cell(&r["next_attempt_at"]),
                cell(&r["reason"]),
            ]
        })
        .collect();
    table(
        &["RECIPIENT", "STATUS", "ATTEMPTS", "NEXT ATTEMPT", "REASON"],
        &rcpts,
    );
    let attempts = v["attempts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    println!();
    if attempts.is_empty() {
        println!("no delivery attempts yet");
        return;
    }
    let rows: Vec<Vec<String>> = attempts
        .iter()
        .map(|a| {
            let code = match (&a["smtp_code"], &a["enhanced_code"]) {
                (Value::Null, _) => "-".to_string(),
                (c, Value::Null) => cell(c),
                (c, e) => format!("{} {}", cell(c), cell(e)),
            };
            vec![
                cell(&a["at"]),
                cell(&a["recipient"]),
                cell(&a["attempt"]),
                cell(&a["status"]),
                code,
                cell(&a["category"]),
                cell(&a["mx"]),
                cell(&a["response"]),
            ]
        })
        .collect();
    table(
        &[
            "AT",
            "RECIPIENT",
            "#",
            "STATUS",
            "CODE",
            "CATEGORY",
            "MX",
            "RESPONSE",
        ],
        &rows,
    );
}

fn command(args: &MessageArgs, action: &str, done: &str) -> CliResult {
    let c = Client::new(&args.client)?;
    let v = c.call(
        "POST",
        &format!("/v1/admin/messages/{}/{action}", encode(&args.id)),
        None,
    )?;
    if c.print_json(&v) {
        return Ok(());
    }
    println!(
        "{}: {} recipient(s) {done}",
        args.id,
        v["recipients_changed"].as_u64().unwrap_or(0)
    );
    Ok(())
}

pub fn retry(args: &MessageArgs) -> CliResult {
    command(args, "retry", "due now")
}

pub fn bounce(args: &MessageArgs) -> CliResult {
    command(args, "cancel", "cancelled (failed)")
}
