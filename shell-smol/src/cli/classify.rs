//! `outpost classify "550 5.1.1 ..." [--stage rcpt] [--config FILE]`: offline, what the
//! core's classifier (with the config file's rule overrides) makes of a reply: category,
//! matching rules and the decision.

use std::path::PathBuf;

use clap::Args;
use outpost_core::classify::{ReplyContext, parse_reply_line};
use outpost_core::smtp::Stage;
use serde_json::json;

use super::{CliError, CliResult};

#[derive(Clone, Debug, Args)]
pub struct ClassifyArgs {
    /// The reply line, e.g. "550 5.1.1 <x@example.com>: user unknown", or an error text
    /// such as "connection refused".
    pub reply: String,
    /// The SMTP stage the reply answered (rcpt, mail, data, end_of_data, connect, ...).
    #[arg(long, default_value = "rcpt")]
    pub stage: String,
    /// The daemon's TOML config file (for `classifier_rules` overrides).
    #[arg(long, env = "OUTPOST_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ClassifyArgs) -> CliResult {
    let stage = Stage::parse(&args.stage).ok_or_else(|| {
        let names: Vec<&str> = Stage::ALL.iter().map(|s| s.as_str()).collect();
        CliError(format!(
            "unknown stage {:?} (one of: {})",
            args.stage,
            names.join(", ")
        ))
    })?;
    let cfg = crate::config::engine_config(args.config.as_deref())
        .map_err(|e| CliError(e.to_string()))?;
    let (code, enhanced, text) = parse_reply_line(&args.reply);
    let ctx = ReplyContext {
        stage,
        code,
        enhanced,
        text,
    };
    let e = cfg.classifier.explain(&ctx, &cfg.category_policy);
    let outcome = serde_json::to_value(e.decision.outcome).unwrap_or_default();
    let outcome = outcome.as_str().unwrap_or("?");
    if args.json {
        let v = json!({
            "stage": stage.as_str(),
            "code": code,
            "enhanced_code": enhanced,
            "category": e.classification.category.as_str(),
            "rule": e.classification.rule,
            "matched": e.matched,
            "outcome": outcome,
            "suppress": e.decision.suppress,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        );
        return Ok(());
    }
    println!("stage     {}", stage.as_str());
    println!(
        "code      {} {}",
        code.map_or("-".to_string(), |c| c.to_string()),
        enhanced.unwrap_or("-")
    );
    println!("category  {}", e.classification.category.as_str());
    println!("rule      {}", e.classification.rule);
    if e.matched.len() > 1 {
        println!("also      {}", e.matched[1..].join(", "));
    }
    println!(
        "decision  {outcome}{}",
        if e.decision.suppress {
            ", address suppressed for the tenant"
        } else {
            ""
        }
    );
    Ok(())
}
