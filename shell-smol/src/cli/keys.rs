//! `outpost keys create DOMAIN`: a new API key for a tenant (created with its first key).

use clap::{Args, Subcommand};
use serde_json::json;

use super::{CliResult, Client, ClientArgs, cell};

#[derive(Clone, Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub action: KeysAction,
}

#[derive(Clone, Debug, Subcommand)]
pub enum KeysAction {
    /// Create an API key for the tenant DOMAIN; the key is shown once.
    Create {
        domain: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub fn run(args: &KeysArgs) -> CliResult {
    match &args.action {
        KeysAction::Create { domain, client } => {
            let c = Client::new(client)?;
            let v = c.call("POST", "/v1/keys", Some(&json!({ "domain": domain })))?;
            if !c.print_json(&v) {
                println!("tenant  {}", cell(&v["domain"]));
                println!("key     {}", cell(&v["key"]));
                println!("(shown once: store it now)");
            }
            Ok(())
        }
    }
}
