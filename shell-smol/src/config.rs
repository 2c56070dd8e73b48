//! The daemon's settings: command-line flags (each also an `OUTPOST_*` environment variable)
//! and the optional TOML config file holding the core's settings. Everything is checked
//! before the daemon starts; a bad setting is named in the error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use outpost_core::Config;
use outpost_core::config::{DomainPolicy, Relay};
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "outpost",
    version,
    about = "outpost: outbound email delivery daemon"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up and matched once: the size difference between the `serve`
// arguments and the small subcommands costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Sending domains: check the DNS records (DKIM, SPF, DMARC) via the running daemon.
    Domains(crate::cli_domains::DomainsArgs),
    /// Queue depth per destination domain, oldest message, next attempts.
    Queue(crate::cli::queue::QueueArgs),
    /// A message's recipients and delivery timeline.
    Message(crate::cli::message::MessageArgs),
    /// Circuit breakers that are not plainly closed, with why and the next probe.
    Breakers(crate::cli::breakers::BreakersArgs),
    /// Force a destination's circuit breaker open or closed.
    Breaker(crate::cli::breakers::BreakerArgs),
    /// A tenant's suppression list.
    Suppress(crate::cli::suppress::SuppressArgs),
    /// API keys.
    Keys(crate::cli::keys::KeysArgs),
    /// Make every pending recipient of a message due now.
    Retry(crate::cli::message::MessageArgs),
    /// Cancel a message: its pending recipients fail with reason `cancelled`.
    Bounce(crate::cli::message::MessageArgs),
    /// Classify an SMTP reply offline: category, matching rules, decision.
    Classify(crate::cli::classify::ClassifyArgs),
    /// A one-command demo: daemon, SMTP sink and webhook receiver in this process.
    Demo(crate::demo::DemoArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Data directory (database and spool).
    #[arg(long, env = "OUTPOST_DATA", default_value = "./outpost-data")]
    pub data: PathBuf,
    /// HTTP API listen address.
    #[arg(long, env = "OUTPOST_HTTP", default_value = "127.0.0.1:8025")]
    pub http: SocketAddr,
    /// HTTP connections served at once (a thread each); past it a new connection is
    /// answered 503 and closed.
    #[arg(long, env = "OUTPOST_HTTP_MAX_CONNECTIONS", default_value_t = 512)]
    pub http_max_connections: usize,
    /// How long an HTTP client may take to send a request's head (and a new connection
    /// its first byte), e.g. `10s`; past it 408 and the connection closes.
    #[arg(long, env = "OUTPOST_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration_arg)]
    pub http_header_timeout: Duration,
    /// How long an HTTP client may take to send a request's body after its head, e.g.
    /// `60s`; past it 408 and the connection closes.
    #[arg(long, env = "OUTPOST_HTTP_BODY_TIMEOUT", default_value = "60s", value_parser = parse_duration_arg)]
    pub http_body_timeout: Duration,
    /// How long an idle keep-alive HTTP connection is kept open for its next request,
    /// e.g. `60s`.
    #[arg(long, env = "OUTPOST_HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration_arg)]
    pub http_idle_timeout: Duration,
    /// Smarthost HOST:PORT: all mail goes there instead of the recipients' MX hosts.
    #[arg(long, env = "OUTPOST_RELAY")]
    pub relay: Option<String>,
    /// DNS server IP[:PORT] (default: the system's resolv.conf).
    #[arg(long, env = "OUTPOST_DNS")]
    pub dns: Option<String>,
    /// Port of remote MX hosts.
    #[arg(long, env = "OUTPOST_MX_PORT")]
    pub mx_port: Option<u16>,
    /// Our name in EHLO.
    #[arg(long, env = "OUTPOST_HOSTNAME")]
    pub hostname: Option<String>,
    /// TOML file with the delivery settings (retry schedule, max age, per-domain policies...).
    #[arg(long, env = "OUTPOST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Allow webhook targets that resolve to private or loopback addresses (tests).
    #[arg(long, env = "OUTPOST_ALLOW_PRIVATE_WEBHOOKS")]
    pub allow_private_webhooks: bool,
    /// Extra trust roots (PEM) for verifying remote MX certificates, besides WebPKI's.
    #[arg(long, env = "OUTPOST_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// How long in-flight deliveries may take to finish at shutdown, e.g. `30s`.
    #[arg(long, env = "OUTPOST_SHUTDOWN_DEADLINE", default_value = "30s", value_parser = parse_duration_arg)]
    pub shutdown_deadline: Duration,
    #[arg(long, env = "OUTPOST_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// A public address outpost sends from (repeatable), for the suggested SPF record.
    #[arg(long = "public-ip", env = "OUTPOST_PUBLIC_IP", value_delimiter = ',')]
    pub public_ip: Vec<std::net::IpAddr>,
    /// SMTP submission listen address, or `off` [default: 127.0.0.1:2525; if that default
    /// is taken the daemon runs without SMTP, an address given here must bind].
    #[arg(long, env = "OUTPOST_SMTP")]
    pub smtp: Option<String>,
    /// Networks whose clients may submit without AUTH (their envelope sender must still
    /// belong to a known tenant), e.g. `10.0.0.0/8,192.168.1.0/24`.
    #[arg(long, env = "OUTPOST_TRUSTED_NETWORKS", default_value = "")]
    pub trusted_networks: String,
    /// PEM certificate chain for SMTP STARTTLS (with --smtp-tls-key).
    #[arg(long, env = "OUTPOST_SMTP_TLS_CERT")]
    pub smtp_tls_cert: Option<PathBuf>,
    /// PEM private key for SMTP STARTTLS.
    #[arg(long, env = "OUTPOST_SMTP_TLS_KEY")]
    pub smtp_tls_key: Option<PathBuf>,
}

/// Where SMTP submission listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpListen {
    pub addr: SocketAddr,
    /// Given by the operator: failing to bind it is fatal.
    pub explicit: bool,
}

/// The default SMTP submission address (DESIGN.md).
pub const DEFAULT_SMTP: &str = "127.0.0.1:2525";

/// The longest HTTP timeout accepted: a sanity bound (a day is already far more than any
/// client needs; a longer value is more likely a typo, e.g. a unit left out).
const MAX_HTTP_TIMEOUT: Duration = Duration::from_secs(86_400);

/// A setting that cannot work, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{setting}`: {reason}")]
pub struct SettingError {
    pub setting: String,
    pub reason: String,
}

fn bad(setting: &str, reason: impl Into<String>) -> SettingError {
    SettingError {
        setting: setting.to_string(),
        reason: reason.into(),
    }
}

/// Everything the daemon needs, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub engine: Config,
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    /// HTTP connections served at once (`--http-max-connections`).
    pub http_max_connections: usize,
    /// `--http-header-timeout`, `--http-body-timeout`, `--http-idle-timeout`.
    pub http_header_timeout: Duration,
    pub http_body_timeout: Duration,
    pub http_idle_timeout: Duration,
    /// `None`: the system's resolver configuration.
    pub dns: Option<SocketAddr>,
    pub allow_private_webhooks: bool,
    pub tls_ca_file: Option<PathBuf>,
    pub shutdown_deadline: Duration,
    pub admin_key: Option<String>,
    pub log_format: LogFormat,
    /// `[dkim]` (signing per sending domain).
    pub dkim: crate::dkim::settings::DkimSettings,
    /// `--public-ip` / `public_ips`: for the suggested SPF record.
    pub public_ips: Vec<std::net::IpAddr>,
    /// The tracing filter from the config file (`RUST_LOG` wins over it).
    pub log_level: Option<String>,
    /// Message rate limits per tenant (`[limits]`).
    pub limits: crate::ratelimit::Limits,
    /// `None`: SMTP submission off.
    pub smtp: Option<SmtpListen>,
    pub trusted_networks: Vec<crate::submission::Cidr>,
    /// (certificate chain, private key) PEM files for STARTTLS.
    pub smtp_tls: Option<(PathBuf, PathBuf)>,
}

impl Settings {
    /// Builds the settings from the flags, the config file they name and `admin_key`
    /// (`OUTPOST_ADMIN_KEY`). Flags override the file.
    pub fn build(args: &ServeArgs, admin_key: Option<String>) -> Result<Settings, SettingError> {
        let mut engine = Config::default();
        let mut dkim = crate::dkim::settings::DkimSettings::default();
        let mut public_ips = Vec::new();
        let mut limits = crate::ratelimit::Limits::default();
        let mut log_level = None;
        if let Some(path) = &args.config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| bad("config", format!("cannot read {}: {e}", path.display())))?;
            let mut file = parse_file(&text)?;
            if let Some(d) = file.dkim.take() {
                dkim = d.into_settings().map_err(|(s, r)| bad(&s, r))?;
            }
            public_ips = file.public_ips.take().unwrap_or_default();
            if let Some(l) = file.limits.take() {
                limits = l.into_limits()?;
            }
            if let Some(level) = file.log_level.take() {
                tracing_subscriber::EnvFilter::try_new(&level)
                    .map_err(|e| bad("log_level", format!("{level:?}: {e}")))?;
                log_level = Some(level);
            }
            file.apply(&mut engine)?;
        }
        if !args.public_ip.is_empty() {
            public_ips = args.public_ip.clone();
        }
        if public_ips.iter().any(|ip| ip.is_unspecified()) {
            return Err(bad(
                "public-ip",
                "0.0.0.0 / :: is not an address mail is sent from",
            ));
        }
        if let Some(h) = &args.hostname {
            engine.hostname = h.clone();
        }
        if let Some(p) = args.mx_port {
            engine.mx_port = p;
        }
        if let Some(r) = &args.relay {
            engine.relay = Some(parse_relay(r)?);
        }
        // The engine's dispatcher validates endpoint URLs itself: without this the flag
        // passed the API's check but the engine still refused loopback endpoints.
        engine.allow_private_webhooks = args.allow_private_webhooks;
        engine
            .validate()
            .map_err(|e| bad(&e.setting, e.reason.clone()))?;
        let dns = args.dns.as_deref().map(parse_dns).transpose()?;
        if args.http_max_connections == 0 {
            return Err(bad("http-max-connections", "must be at least 1"));
        }
        for (setting, d) in [
            ("http-header-timeout", args.http_header_timeout),
            ("http-body-timeout", args.http_body_timeout),
            ("http-idle-timeout", args.http_idle_timeout),
        ] {
            if d.is_zero() {
                return Err(bad(setting, "must be more than 0"));
            }
            if d > MAX_HTTP_TIMEOUT {
                return Err(bad(setting, "must be at most 1d"));
            }
        }
        if args.data.as_os_str().is_empty() {
            return Err(bad("data", "must not be empty"));
        }
        if let Some(ca) = &args.tls_ca_file
            && !ca.is_file()
        {
            return Err(bad(
                "tls-ca-file",
                format!("{} is not a readable file", ca.display()),
            ));
        }
        let admin_key = admin_key.filter(|k| !k.is_empty());
        if let Some(k) = &admin_key
            && k.len() < 16
        {
            return Err(bad("OUTPOST_ADMIN_KEY", "must be at least 16 characters"));
        }
        let smtp = match args.smtp.as_deref().map(str::trim) {
            Some("off") => None,
            Some(a) => Some(SmtpListen {
                addr: a
                    .parse()
                    .map_err(|_| bad("smtp", format!("{a:?} is not IP:PORT or `off`")))?,
                explicit: true,
            }),
            None => Some(SmtpListen {
                addr: DEFAULT_SMTP
                    .parse()
                    .map_err(|_| bad("smtp", "bad built-in default"))?,
                explicit: false,
            }),
        };
        let trusted_networks = crate::submission::parse_networks(&args.trusted_networks)
            .map_err(|e| bad("trusted-networks", e))?;
        let smtp_tls = match (&args.smtp_tls_cert, &args.smtp_tls_key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                for (name, p) in [("smtp-tls-cert", c), ("smtp-tls-key", k)] {
                    if !p.is_file() {
                        return Err(bad(name, format!("{} is not a readable file", p.display())));
                    }
                }
                Some((c.clone(), k.clone()))
            }
            _ => {
                return Err(bad(
                    "smtp-tls-cert",
                    "--smtp-tls-cert and --smtp-tls-key go together",
                ));
            }
        };
        Ok(Settings {
            smtp,
            trusted_networks,
            smtp_tls,
            engine,
            data_dir: args.data.clone(),
            http: args.http,
            http_max_connections: args.http_max_connections,
            http_header_timeout: args.http_header_timeout,
            http_body_timeout: args.http_body_timeout,
            http_idle_timeout: args.http_idle_timeout,
            dns,
            allow_private_webhooks: args.allow_private_webhooks,
            tls_ca_file: args.tls_ca_file.clone(),
            shutdown_deadline: args.shutdown_deadline,
            admin_key,
            log_format: args.log_format,
            log_level,
            limits,
            dkim,
            public_ips,
        })
    }
}

/// The core's settings from an optional config file alone (for offline commands such as
/// `outpost classify`).
pub fn engine_config(path: Option<&std::path::Path>) -> Result<Config, SettingError> {
    let mut engine = Config::default();
    if let Some(path) = path {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad("config", format!("cannot read {}: {e}", path.display())))?;
        parse_file(&text)?.apply(&mut engine)?;
    }
    Ok(engine)
}

fn parse_relay(s: &str) -> Result<Relay, SettingError> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| bad("relay", "must be HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port
        .parse()
        .map_err(|_| bad("relay", format!("bad port in {s:?}")))?;
    if host.is_empty() || port == 0 {
        return Err(bad("relay", "must be HOST:PORT"));
    }
    Ok(Relay {
        host: host.to_string(),
        port,
    })
}

fn parse_dns(s: &str) -> Result<SocketAddr, SettingError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| bad("dns", format!("{s:?} is not IP or IP:PORT")))
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// `500ms`, `30s`, `5m`, `2h`, `7d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m, 2h, 7d"))?;
    let ms = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?} is not a duration like 30s, 5m, 2h, 7d")),
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// A duration in the config file: a string like `"5m"` or a number of seconds.
#[derive(Clone, Copy, Debug)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Dur(Duration::from_secs(s))),
            Raw::Text(t) => parse_duration(&t)
                .map(Dur)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    hostname: Option<String>,
    retry_schedule: Option<Vec<Dur>>,
    /// Retry jitter in percent (10 = +-10%).
    retry_jitter_percent: Option<u32>,
    max_age: Option<Dur>,
    max_message_size: Option<u64>,
    max_recipients: Option<usize>,
    spool_cleanup_interval: Option<Dur>,
    idempotency_window: Option<Dur>,
    dns_cache_ttl: Option<Dur>,
    relay: Option<String>,
    mx_port: Option<u16>,
    /// Extra classification rules (TOML, the same form as the embedded rules).
    classifier_rules: Option<String>,
    breaker: Option<FileBreaker>,
    destination: Option<FileDestination>,
    timeouts: Option<FileTimeouts>,
    webhooks: Option<FileWebhooks>,
    #[serde(default)]
    domains: BTreeMap<String, FileDomain>,
    dkim: Option<crate::dkim::settings::FileDkim>,
    /// Public addresses outpost sends from (the `--public-ip` flag overrides).
    public_ips: Option<Vec<std::net::IpAddr>>,
    /// Message rate limits per tenant (the shell's, not the core's).
    limits: Option<FileLimits>,
    /// Tracing filter, e.g. `"info"` or `"info,outpost=debug"` (`RUST_LOG` wins).
    log_level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimit {
    messages_per_minute: Option<u32>,
    messages_per_hour: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    messages_per_minute: Option<u32>,
    messages_per_hour: Option<u32>,
    #[serde(default)]
    tenants: BTreeMap<String, FileLimit>,
}

impl FileLimits {
    fn into_limits(self) -> Result<crate::ratelimit::Limits, SettingError> {
        use crate::ratelimit::{Limit, Limits};
        let check = |name: &str, v: Option<u32>| match v {
            Some(0) => Err(bad(name, "must be at least 1 (leave it out for no limit)")),
            _ => Ok(v),
        };
        let mut out = Limits {
            default: Limit {
                per_minute: check("limits.messages_per_minute", self.messages_per_minute)?,
                per_hour: check("limits.messages_per_hour", self.messages_per_hour)?,
            },
            tenants: BTreeMap::new(),
        };
        for (domain, l) in self.tenants {
            let key = domain.trim_end_matches('.').to_ascii_lowercase();
            let p = format!("limits.tenants.{domain}");
            out.tenants.insert(
                key,
                Limit {
                    per_minute: check(&format!("{p}.messages_per_minute"), l.messages_per_minute)?,
                    per_hour: check(&format!("{p}.messages_per_hour"), l.messages_per_hour)?,
                },
            );
        }
        Ok(out)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBreaker {
    failure_threshold: Option<u32>,
    open_initial: Option<Dur>,
    open_max: Option<Dur>,
    warmup_window: Option<Dur>,
    warmup_attempts: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDestination {
    max_connections: Option<usize>,
    max_messages_per_connection: Option<u32>,
    max_recipients_per_transaction: Option<usize>,
    idle_timeout: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTimeouts {
    connect: Option<Dur>,
    greeting: Option<Dur>,
    ehlo: Option<Dur>,
    starttls: Option<Dur>,
    mail: Option<Dur>,
    rcpt: Option<Dur>,
    data_init: Option<Dur>,
    data_end: Option<Dur>,
    rset: Option<Dur>,
    quit: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWebhooks {
    retry_schedule: Option<Vec<Dur>>,
    retry_every: Option<Dur>,
    give_up_after: Option<Dur>,
    timeout: Option<Dur>,
    max_in_flight_per_endpoint: Option<usize>,
    rotation_overlap: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDomain {
    #[serde(default)]
    require_tls: bool,
    max_connections: Option<usize>,
    messages_per_minute: Option<u32>,
}

fn parse_file(text: &str) -> Result<FileConfig, SettingError> {
    toml::from_str(text).map_err(|e| {
        // The TOML error names the key (and shows the line); keep it on one line.
        let msg = e.to_string().replace('\n', " ");
        let setting = e
            .message()
            .split('`')
            .nth(1)
            .filter(|_| e.message().starts_with("unknown field"))
            .map(str::to_string)
            .unwrap_or_else(|| "config".to_string());
        bad(&setting, msg)
    })
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

fn durs(v: Option<Vec<Dur>>) -> Option<Vec<Duration>> {
    v.map(|v| v.into_iter().map(|d| d.0).collect())
}

fn dur(v: Option<Dur>) -> Option<Duration> {
    v.map(|d| d.0)
}

impl FileConfig {
    fn apply(self, c: &mut Config) -> Result<(), SettingError> {
        set(&mut c.hostname, self.hostname);
        set(&mut c.retry_schedule, durs(self.retry_schedule));
        if let Some(p) = self.retry_jitter_percent {
            c.retry_jitter_permille = p.saturating_mul(10);
        }
        set(&mut c.max_age, dur(self.max_age));
        set(&mut c.max_message_size, self.max_message_size);
        set(&mut c.max_recipients, self.max_recipients);
        set(
            &mut c.spool_cleanup_interval,
            dur(self.spool_cleanup_interval),
        );
        set(&mut c.idempotency_window, dur(self.idempotency_window));
        set(&mut c.dns_cache_ttl, dur(self.dns_cache_ttl));
        if let Some(r) = &self.relay {
            c.relay = Some(parse_relay(r)?);
        }
        set(&mut c.mx_port, self.mx_port);
        if let Some(rules) = &self.classifier_rules {
            c.classifier = outpost_core::classify::Classifier::with_overrides(rules)
                .map_err(|e| bad("classifier_rules", format!("{e:?}")))?;
        }
        if let Some(b) = self.breaker {
            set(&mut c.breaker.failure_threshold, b.failure_threshold);
            set(&mut c.breaker.open_initial, dur(b.open_initial));
            set(&mut c.breaker.open_max, dur(b.open_max));
            set(&mut c.breaker.warmup_window, dur(b.warmup_window));
            set(&mut c.breaker.warmup_attempts, b.warmup_attempts);
        }
        if let Some(d) = self.destination {
            set(&mut c.destination.max_connections, d.max_connections);
            set(
                &mut c.destination.max_messages_per_connection,
                d.max_messages_per_connection,
            );
            set(
                &mut c.destination.max_recipients_per_transaction,
                d.max_recipients_per_transaction,
            );
            set(&mut c.destination.idle_timeout, dur(d.idle_timeout));
        }
        if let Some(t) = self.timeouts {
            let o = &mut c.timeouts;
            set(&mut o.connect, dur(t.connect));
            set(&mut o.greeting, dur(t.greeting));
            set(&mut o.ehlo, dur(t.ehlo));
            set(&mut o.starttls, dur(t.starttls));
            set(&mut o.mail, dur(t.mail));
            set(&mut o.rcpt, dur(t.rcpt));
            set(&mut o.data_init, dur(t.data_init));
            set(&mut o.data_end, dur(t.data_end));
            set(&mut o.rset, dur(t.rset));
            set(&mut o.quit, dur(t.quit));
        }
        if let Some(w) = self.webhooks {
            set(&mut c.webhooks.retry_schedule, durs(w.retry_schedule));
            set(&mut c.webhooks.retry_every, dur(w.retry_every));
            set(&mut c.webhooks.give_up_after, dur(w.give_up_after));
            set(&mut c.webhooks.timeout, dur(w.timeout));
            set(
                &mut c.webhooks.max_in_flight_per_endpoint,
                w.max_in_flight_per_endpoint,
            );
            set(&mut c.webhooks.rotation_overlap, dur(w.rotation_overlap));
        }
        for (domain, d) in self.domains {
            let key = domain.trim_end_matches('.').to_ascii_lowercase();
            if key.is_empty() || !key.is_ascii() {
                return Err(bad(
                    &format!("domains.{domain}"),
                    "must be a lowercase ASCII (A-label) domain",
                ));
            }
            c.domains.insert(
                key,
                DomainPolicy {
                    require_tls: d.require_tls,
                    max_connections: d.max_connections,
                    messages_per_minute: d.messages_per_minute,
                },
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut v = vec!["outpost", "serve"];
        v.extend_from_slice(extra);
        match Cli::try_parse_from(v).expect("parse").command {
            Command::Serve(a) => a,
            Command::Domains(_) => panic!("not serve"),
            other => panic!("not serve: {other:?}"),
        }
    }

    fn with_file(text: &str) -> Result<Settings, SettingError> {
        let dir = std::env::temp_dir().join(format!(
            "outpost-config-test-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("outpost.toml");
        std::fs::write(&path, text).expect("write");
        let path = path.to_str().expect("utf8").to_string();
        let r = Settings::build(&args(&["--config", &path]), None);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn defaults_are_valid() {
        let s = Settings::build(&args(&[]), None).expect("defaults");
        assert_eq!(s.data_dir, PathBuf::from("./outpost-data"));
        assert_eq!(s.http, "127.0.0.1:8025".parse().expect("addr"));
        assert_eq!(s.http_max_connections, 512);
        assert_eq!(s.engine.mx_port, 25);
        assert!(s.dns.is_none());
        assert_eq!(s.shutdown_deadline, Duration::from_secs(30));
        // The HTTP server's own defaults.
        use crate::api::server;
        assert_eq!(s.http_header_timeout, server::DEFAULT_HEADER_TIMEOUT);
        assert_eq!(s.http_body_timeout, server::DEFAULT_BODY_TIMEOUT);
        assert_eq!(s.http_idle_timeout, server::DEFAULT_IDLE_TIMEOUT);
        assert_eq!(s.http_header_timeout, Duration::from_secs(10));
        assert_eq!(s.http_body_timeout, Duration::from_secs(60));
        assert_eq!(s.http_idle_timeout, Duration::from_secs(60));
        assert!(!s.engine.allow_private_webhooks);
        let s = Settings::build(&args(&["--allow-private-webhooks"]), None).expect("valid");
        assert!(s.allow_private_webhooks && s.engine.allow_private_webhooks);
    }

    #[test]
    fn flags_are_applied() {
        let s = Settings::build(
            &args(&[
                "--relay",
                "127.0.0.1:2526",
                "--dns",
                "127.0.0.1:5353",
                "--mx-port",
                "2500",
                "--hostname",
                "out.example.com",
            ]),
            Some("an-admin-key-long-enough".into()),
        )
        .expect("valid");
        assert_eq!(
            s.engine.relay,
            Some(Relay {
                host: "127.0.0.1".into(),
                port: 2526
            })
        );
        assert_eq!(s.dns, Some("127.0.0.1:5353".parse().expect("addr")));
        assert_eq!(s.engine.mx_port, 2500);
        assert_eq!(s.engine.hostname, "out.example.com");
        assert_eq!(
            Settings::build(&args(&["--dns", "10.0.0.1"]), None)
                .expect("dns")
                .dns,
            Some("10.0.0.1:53".parse().expect("addr"))
        );
    }

    #[test]
    fn bad_flags_name_the_setting() {
        let e = Settings::build(&args(&["--relay", "nohost"]), None).expect_err("invalid");
        assert_eq!(e.setting, "relay");
        let e = Settings::build(&args(&["--dns", "not-an-ip"]), None).expect_err("invalid");
        assert_eq!(e.setting, "dns");
        let e = Settings::build(&args(&["--hostname", "bad host!"]), None).expect_err("invalid");
        assert_eq!(e.setting, "hostname");
        let e = Settings::build(&args(&["--mx-port", "0"]), None).expect_err("invalid");
        assert_eq!(e.setting, "mx_port");
        let e = Settings::build(&args(&[]), Some("short".into())).expect_err("invalid");
        assert_eq!(e.setting, "OUTPOST_ADMIN_KEY");
        let e =
            Settings::build(&args(&["--http-max-connections", "0"]), None).expect_err("invalid");
        assert_eq!(e.setting, "http-max-connections");
        let s = Settings::build(&args(&["--http-max-connections", "64"]), None).expect("valid");
        assert_eq!(s.http_max_connections, 64);
        assert!(Cli::try_parse_from(["outpost", "serve", "--shutdown-deadline", "soon"]).is_err());
    }

    #[test]
    fn http_timeouts_are_settings() {
        let s = Settings::build(
            &args(&[
                "--http-header-timeout",
                "500ms",
                "--http-body-timeout",
                "2m",
                "--http-idle-timeout",
                "5",
            ]),
            None,
        )
        .expect("valid");
        assert_eq!(s.http_header_timeout, Duration::from_millis(500));
        assert_eq!(s.http_body_timeout, Duration::from_secs(120));
        assert_eq!(s.http_idle_timeout, Duration::from_secs(5));
        for name in [
            "http-header-timeout",
            "http-body-timeout",
            "http-idle-timeout",
        ] {
            let flag = format!("--{name}");
            let flag = flag.as_str();
            for zero in ["0", "0s", "0ms"] {
                let e = Settings::build(&args(&[flag, zero]), None).expect_err("zero");
                assert_eq!(e.setting, name, "{flag} {zero}");
            }
            let e = Settings::build(&args(&[flag, "2d"]), None).expect_err("too long");
            assert_eq!(e.setting, name);
            assert!(Cli::try_parse_from(["outpost", "serve", flag, "soon"]).is_err());
        }
    }

    #[test]
    fn the_file_sets_core_settings() {
        let s = with_file(
            r#"
retry_schedule = ["1s", "2s", 5]
max_age = "2d"
retry_jitter_percent = 5
[breaker]
failure_threshold = 3
[timeouts]
connect = "2s"
[domains."Example.COM"]
require_tls = true
max_connections = 2
"#,
        )
        .expect("valid");
        assert_eq!(
            s.engine.retry_schedule,
            vec![
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(5)
            ]
        );
        assert_eq!(s.engine.max_age, Duration::from_secs(2 * 86_400));
        assert_eq!(s.engine.retry_jitter_permille, 50);
        assert_eq!(s.engine.breaker.failure_threshold, 3);
        assert_eq!(s.engine.timeouts.connect, Duration::from_secs(2));
        let p = s.engine.domain_policy("example.com");
        assert!(p.require_tls);
        assert_eq!(p.max_connections, Some(2));
    }

    #[test]
    fn bad_file_settings_are_named() {
        let e = with_file("retry_schedule = []").expect_err("invalid");
        assert_eq!(e.setting, "retry_schedule");
        let e = with_file("[breaker]\nfailure_threshold = 0").expect_err("invalid");
        assert_eq!(e.setting, "breaker.failure_threshold");
        let e = with_file("[domains.\"a.example\"]\nmax_connections = 0").expect_err("invalid");
        assert_eq!(e.setting, "domains.a.example.max_connections");
        let e = with_file("max_agee = \"1d\"").expect_err("invalid");
        assert_eq!(e.setting, "max_agee");
        let e = with_file("max_age = \"forever\"").expect_err("invalid");
        assert!(e.to_string().contains("max_age"), "{e}");
        let e = with_file("max_age = \"10s\"").expect_err("invalid");
        assert_eq!(e.setting, "max_age");
    }

    #[test]
    fn limits_and_log_level_are_read() {
        let s = with_file(
            r#"
log_level = "info,outpost=debug"
[limits]
messages_per_minute = 60
[limits.tenants."Big.Example"]
messages_per_hour = 1000
"#,
        )
        .expect("valid");
        assert_eq!(s.log_level.as_deref(), Some("info,outpost=debug"));
        assert_eq!(s.limits.default.per_minute, Some(60));
        assert_eq!(
            s.limits.tenants.get("big.example").map(|l| l.per_hour),
            Some(Some(1000))
        );
        let e = with_file("[limits]\nmessages_per_minute = 0").expect_err("invalid");
        assert_eq!(e.setting, "limits.messages_per_minute");
        let e = with_file("[limits]\nper_minute = 3").expect_err("invalid");
        assert_eq!(e.setting, "per_minute");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("").is_err());
    }
}
