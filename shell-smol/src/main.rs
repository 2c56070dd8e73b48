//! outpost: the outbound email delivery daemon (smol + async-io shell around outpost-core).

// Parts of the API are used only by its tests.
#[allow(dead_code)]
mod api;
mod cli;
#[path = "cli/domains.rs"]
mod cli_domains;
mod config;
mod demo;
mod dkim;
mod dns;
mod gateway;
mod lazy_timer;
mod metrics;
mod ratelimit;
mod runtime;
mod smtp_conn;
// Parts of the store are used only by the API and tests.
#[allow(dead_code)]
mod store;
mod stream;
mod submission;
mod tls;
mod webhook;

use std::process::ExitCode;

use clap::Parser;
use outpost_core::Engine;

use crate::config::{Cli, Command, LogFormat, ServeArgs, Settings};
use crate::runtime::{Deps, Msg, Runtime};

/// Exit code for a bad configuration.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure at start-up or while running.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Domains(args) => cli_domains::run(&args),
        Command::Queue(a) => cli::run(|| cli::queue::run(&a)),
        Command::Message(a) => cli::run(|| cli::message::show(&a)),
        Command::Breakers(a) => cli::run(|| cli::breakers::list(&a)),
        Command::Breaker(a) => cli::run(|| cli::breakers::force(&a)),
        Command::Suppress(a) => cli::run(|| cli::suppress::run(&a)),
        Command::Keys(a) => cli::run(|| cli::keys::run(&a)),
        Command::Retry(a) => cli::run(|| cli::message::retry(&a)),
        Command::Bounce(a) => cli::run(|| cli::message::bounce(&a)),
        Command::Classify(a) => cli::run(|| cli::classify::run(&a)),
        Command::Demo(a) => demo::run(&a),
    }
}

fn init_logging(format: LogFormat, level: Option<&str>) {
    // RUST_LOG wins over the config file's `log_level`; `info` otherwise.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.unwrap_or("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Starts SMTP submission if configured: its bound address, `None` when off (or when the
/// default address is taken: the HTTP API alone still works).
fn start_smtp(
    settings: &Settings,
    store: store::Store,
    engine: runtime::LoopHandle,
    limiter: std::sync::Arc<ratelimit::RateLimiter>,
) -> Result<Option<std::net::SocketAddr>, ExitCode> {
    let Some(listen) = &settings.smtp else {
        return Ok(None);
    };
    let tls = match &settings.smtp_tls {
        Some((cert, key)) => match submission::load_tls(cert, key) {
            Ok(t) => Some(t),
            Err(e) => return Err(config_error("smtp-tls-cert", e)),
        },
        None => None,
    };
    let sub = submission::SubmissionSettings {
        hostname: settings.engine.hostname.clone(),
        max_message_size: settings.engine.max_message_size,
        max_recipients: settings.engine.max_recipients,
        trusted: settings.trusted_networks.clone(),
        tls,
    };
    match submission::start(listen.addr, sub, store, engine, limiter) {
        Ok(a) => {
            tracing::info!(addr = %a, "SMTP submission listening");
            Ok(Some(a))
        }
        Err(e) if !listen.explicit => {
            tracing::warn!(error = %e, "SMTP submission disabled: the default address is not available (set --smtp)");
            Ok(None)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start SMTP submission");
            Err(ExitCode::from(EXIT_FAILURE))
        }
    }
}

fn config_error(setting: &str, reason: impl std::fmt::Display) -> ExitCode {
    eprintln!("outpost: invalid setting `{setting}`: {reason}");
    ExitCode::from(EXIT_CONFIG)
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // Not security-relevant (jitter, MX order); fall back to the clock.
        return runtime::now().0 ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(b)
}

fn serve(args: &ServeArgs) -> ExitCode {
    let admin_key = std::env::var("OUTPOST_ADMIN_KEY").ok();
    let settings = match Settings::build(args, admin_key) {
        Ok(s) => s,
        Err(e) => return config_error(&e.setting, &e.reason),
    };
    init_logging(settings.log_format, settings.log_level.as_deref());
    let tls = match tls::TlsClient::new(settings.tls_ca_file.as_deref()) {
        Ok(t) => t,
        Err(e) => return config_error("tls-ca-file", e),
    };
    let dns = match dns::Dns::new(settings.dns) {
        Ok(d) => d,
        Err(e) => return config_error("dns", e),
    };
    if let Err(e) = std::fs::create_dir_all(&settings.data_dir) {
        return config_error(
            "data",
            format!("cannot create {}: {e}", settings.data_dir.display()),
        );
    }
    let store = match store::Store::open(&settings.data_dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, data = %settings.data_dir.display(), "cannot open the store");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    // DKIM keys load before anything is accepted: the signer is part of the engine's config.
    let domains = match dkim::Domains::open(
        &settings.data_dir,
        settings.dkim.clone(),
        settings.dns,
        settings.public_ips.clone(),
    ) {
        Ok(d) => d,
        Err(e) => return config_error("dkim", e),
    };
    let mut engine_config = settings.engine.clone();
    engine_config.signer = Some(domains.signer());
    let engine = Engine::new(engine_config, seed());
    let deps = Deps {
        store: store.clone(),
        data_dir: settings.data_dir.clone(),
        dns,
        tls,
        allow_private_webhooks: settings.allow_private_webhooks,
        shutdown_deadline: settings.shutdown_deadline,
    };
    let (rt, handle) = match Runtime::start(engine, deps) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            return ExitCode::from(EXIT_FAILURE);
        }
    };

    // SIGTERM/SIGINT: the first drains, a second one exits at once.
    let sig_tx = handle.tx.clone();
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    std::thread::spawn(move || {
        let mut seen = false;
        for sig in signals.forever() {
            if seen {
                tracing::warn!(signal = sig, "second signal: exiting now");
                std::process::exit(1);
            }
            seen = true;
            tracing::info!(signal = sig, "signal received");
            let _ = sig_tx.send_blocking(Msg::Shutdown);
        }
    });

    let gateway = std::sync::Arc::new(gateway::Gateway::new(handle.clone()));
    let metrics_gw = gateway.clone();
    let metrics_store = store.clone();
    let limiter = std::sync::Arc::new(ratelimit::RateLimiter::new(settings.limits.clone()));
    let api_limiter = limiter.clone();
    let api_settings = api::ApiSettings {
        rate_limiter: Some(std::sync::Arc::new(move |t, d| api_limiter.check(t, d))),
        allow_private_webhooks: settings.allow_private_webhooks,
        max_connections: settings.http_max_connections,
        header_timeout: settings.http_header_timeout,
        body_timeout: settings.http_body_timeout,
        idle_timeout: settings.http_idle_timeout,
        metrics: Some(std::sync::Arc::new(move || {
            metrics_gw
                .metrics()
                .map(|s| metrics::render(&s, Some(&metrics_store)))
                .unwrap_or_default()
        })),
        domains: Some(domains),
        ..Default::default()
    };
    let smtp_store = store.clone();
    let smtp_engine = handle.clone();
    let api = match api::serve(
        &settings.http.to_string(),
        store,
        gateway,
        settings.admin_key.as_deref().map(api::hash_key),
        api_settings,
    ) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the HTTP API");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let smtp = match start_smtp(&settings, smtp_store, smtp_engine, limiter) {
        Ok(a) => a,
        Err(code) => return code,
    };
    tracing::info!(
        http = %api.local_addr(),
        smtp = ?smtp,
        data = %settings.data_dir.display(),
        admin_key = settings.admin_key.is_some(),
        relay = ?settings.engine.relay.as_ref().map(|r| format!("{}:{}", r.host, r.port)),
        "outpost started"
    );
    smol::block_on(rt.run());
    api.stop();
    tracing::info!("bye");
    ExitCode::SUCCESS
}
