//! outpost-bench: throughput, latency and footprint of the outpost daemon on this machine,
//! optionally side by side with a private Postfix instance relaying to the same sink.
//!
//! `cargo run --release -p outpost-bench -- --help` lists the options; bench/README.md
//! describes the scenarios and how to read the figures.

mod client;
mod daemons;
mod procfs;
mod seed;
mod sink;
mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use crate::daemons::{Outpost, Postfix};
use crate::sink::Sink;
use crate::workload::{Intake, Outcome, Shape};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// N messages through the API (and SMTP, when the daemon has a listener); with
    /// `--postfix` the same through Postfix.
    Throughput,
    /// Start-up, RSS and new-mail throughput with `--deferred` recipients waiting.
    Deferred,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum IntakeChoice {
    Both,
    Http,
    Smtp,
}

#[derive(Debug, Parser)]
#[command(
    name = "outpost-bench",
    about = "Benchmark the outpost daemon (and Postfix)"
)]
struct Args {
    #[arg(long, value_enum, default_value = "throughput")]
    scenario: Scenario,
    /// Messages to submit.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Recipients per message (all at one destination domain).
    #[arg(long, default_value_t = 1)]
    recipients: usize,
    /// Body size in KiB (2 and 100 are the reference sizes).
    #[arg(long, default_value_t = 2)]
    body_kib: usize,
    /// Client threads (each one keep-alive HTTP connection or one SMTP session).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Deferred recipients to seed (scenario `deferred`).
    #[arg(long, default_value_t = 100_000)]
    deferred: usize,
    /// Also run the workload through a private Postfix instance (needs root).
    #[arg(long)]
    postfix: bool,
    /// Skip outpost (e.g. to measure Postfix alone).
    #[arg(long)]
    no_outpost: bool,
    /// Which of outpost's intakes the throughput scenario runs (`both`: the HTTP API,
    /// then SMTP when the daemon has a listener).
    #[arg(long, value_enum, default_value = "both")]
    intake: IntakeChoice,
    /// The daemon binary (default: target/release/outpost of this workspace).
    #[arg(long)]
    outpost: Option<PathBuf>,
    /// Build the daemon first (`cargo build --release -p outpost`).
    #[arg(long)]
    build: bool,
    /// Where data directories go (default: target/bench of this workspace).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// RUST_LOG for the daemon (its log goes to <work dir>/<run>/outpost.log).
    #[arg(long, default_value = "info")]
    log: String,
    /// Keep the data directories afterwards.
    #[arg(long)]
    keep: bool,
    /// How long to wait for the queue to drain after the last submission, seconds.
    #[arg(long, default_value_t = 600)]
    drain_timeout: u64,
    /// Pause before each measured run after the first, seconds. ext4 without a journal
    /// (this VM's disk) skips inodes freed in the last 30 s when it allocates one, reading
    /// each one's inode block: a run that starts right after another run's tens of
    /// thousands of deletions spends up to twice the CPU per file created (measured:
    /// 2,100-2,200 msg/s after a 40 s pause, 900-1,100 without, same binary). Without the
    /// pause the later runs, Postfix included, are slowed by the earlier ones' churn.
    #[arg(long, default_value_t = 35)]
    settle: u64,
}

/// Waits `--settle` seconds unless this is the first measured run of the process.
fn settle(args: &Args) {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0 && args.settle > 0 {
        println!("  (settling {} s: see --settle)", args.settle);
        std::thread::sleep(Duration::from_secs(args.settle));
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("outpost-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<bool, String> {
    let bin = args
        .outpost
        .clone()
        .unwrap_or_else(|| workspace().join("target/release/outpost"));
    if args.build {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "-p", "outpost", "--bin", "outpost"])
            .current_dir(workspace())
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err("building the daemon failed".into());
        }
    }
    if !args.no_outpost && !bin.is_file() {
        return Err(format!(
            "no daemon at {} (build it: cargo build --release -p outpost, or pass --build)",
            bin.display()
        ));
    }
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| workspace().join("target/bench"))
        .join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let shape = Shape {
        messages: args.messages,
        recipients: args.recipients.max(1),
        body_bytes: args.body_kib.max(1) * 1024,
        concurrency: args.concurrency.max(1),
    };
    println!(
        "outpost-bench: {:?}, {} messages x {} recipient(s), {} KiB body, {} client threads",
        args.scenario, shape.messages, shape.recipients, args.body_kib, shape.concurrency
    );
    println!(
        "machine: {} cores, load average at start {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        procfs::loadavg()
    );
    let ok = match args.scenario {
        Scenario::Throughput => throughput(args, &bin, &work, &shape)?,
        Scenario::Deferred => deferred(args, &bin, &work, &shape)?,
    };
    println!("load average at end {}", procfs::loadavg());
    if !args.keep {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(ok)
}

fn drain_timeout(args: &Args) -> Duration {
    Duration::from_secs(args.drain_timeout)
}

/// Prints an outcome; returns whether every submitted message arrived exactly once.
fn report(label: &str, o: &Outcome, shape: &Shape, cpu: Option<Duration>) -> bool {
    println!("  [{label}]");
    println!(
        "    submitted {} (failed {}), accepted {:.0} msg/s ({:.2} s)",
        o.submitted,
        o.failed,
        o.accepted_per_s(),
        o.submit_time.as_secs_f64()
    );
    if let Some(e) = &o.first_error {
        println!("    first submission error: {e}");
    }
    match (o.delivered_per_s(), o.deliver_time) {
        (Some(r), Some(t)) => println!(
            "    delivered {} messages / {} recipients, {:.0} msg/s ({:.0} rcpt/s) first submit to last delivery ({:.2} s)",
            o.delivered_messages,
            o.delivered_recipients,
            r,
            o.delivered_recipients as f64 / t.as_secs_f64().max(1e-9),
            t.as_secs_f64()
        ),
        _ => println!(
            "    NOT DRAINED: {} of {} messages delivered",
            o.delivered_messages, o.submitted
        ),
    }
    if let (Some(p50), Some(p99), Some(max)) =
        (o.percentile(0.5), o.percentile(0.99), o.latencies.last())
    {
        println!(
            "    submit-to-delivered latency p50 {} p99 {} max {}",
            ms(p50),
            ms(p99),
            ms(*max)
        );
    }
    if let Some(c) = cpu {
        println!(
            "    CPU {:.2} s = {:.0} us per message",
            c.as_secs_f64(),
            c.as_secs_f64() * 1e6 / o.submitted.max(1) as f64
        );
    }
    let ok = o.failed == 0
        && o.deliver_time.is_some()
        && o.delivered_messages == o.submitted as u64
        && o.delivered_recipients == (o.submitted * shape.recipients) as u64;
    println!(
        "    RESULT {label}: submitted={} delivered={} recipients={} {}",
        o.submitted,
        o.delivered_messages,
        o.delivered_recipients,
        if ok { "ok" } else { "MISMATCH" }
    );
    ok
}

struct OutpostRun {
    outcome: Outcome,
    ok: bool,
}

/// One run of the workload against a fresh daemon. Prints start-up, idle RSS, throughput,
/// latency, peak RSS and CPU per message.
fn outpost_run(
    args: &Args,
    bin: &Path,
    data: &Path,
    shape: &Shape,
    smtp: bool,
) -> Result<OutpostRun, String> {
    settle(args);
    let sink = Sink::start().map_err(|e| format!("sink: {e}"))?;
    let smtp_port = if smtp {
        Some(daemons::free_port()?)
    } else {
        None
    };
    let d = Outpost::start(
        bin,
        data,
        sink.port,
        &args.log,
        smtp_port,
        Duration::from_secs(60),
    )?;
    let key = d.create_key()?;
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "  outpost (pid {}): start-up to /readyz {}; idle RSS {} (peak so far {})",
        d.pid,
        ms(d.startup),
        mib(procfs::rss_kib(d.pid).unwrap_or(0)),
        mib(procfs::hwm_kib(d.pid).unwrap_or(0))
    );
    let cpu0 = procfs::cpu(d.pid).unwrap_or_default();
    let intake = match smtp_port {
        Some(p) => Intake::Smtp {
            addr: format!("127.0.0.1:{p}"),
        },
        None => Intake::Http {
            addr: d.http.clone(),
            key,
        },
    };
    let outcome = workload::run(&intake, shape, &sink, drain_timeout(args));
    // The sink has everything; the daemon still records the outcomes. Drained = empty queue.
    let t = Instant::now();
    let mut depth = d.queue_depth().unwrap_or(u64::MAX);
    while depth != 0 && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
        depth = d.queue_depth().unwrap_or(u64::MAX);
    }
    let cpu = procfs::cpu(d.pid).unwrap_or_default().saturating_sub(cpu0);
    let label = format!("outpost via {}", intake.name());
    let ok = report(&label, &outcome, shape, Some(cpu));
    println!(
        "    queue empty {} after the last delivery (depth {depth}); peak RSS {}",
        ms(t.elapsed()),
        mib(procfs::hwm_kib(d.pid).unwrap_or(0))
    );
    let stop = d.stop(Duration::from_secs(60));
    println!("    shutdown (SIGTERM to exit) {}", ms(stop));
    Ok(OutpostRun {
        outcome,
        ok: ok && depth == 0,
    })
}

fn postfix_run(args: &Args, work: &Path, shape: &Shape) -> Result<(Outcome, bool), String> {
    settle(args);
    let sink = Sink::start().map_err(|e| format!("sink: {e}"))?;
    let pf = Postfix::start(&work.join("postfix"), sink.port, 10)?;
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "  postfix (master pid {}): private instance in {}; idle PSS (all processes) {}",
        pf.master_pid,
        pf.config_dir.display(),
        mib(pf.pss_kib())
    );
    let cpu0 = pf.cpu();
    // Sample memory while the workload runs (Postfix is many processes; no single HWM).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let master = pf.master_pid;
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut pids = vec![master];
                pids.extend(procfs::children(master));
                peak = peak.max(pids.iter().filter_map(|&p| procfs::pss_kib(p)).sum());
                std::thread::sleep(Duration::from_millis(250));
            }
            peak
        })
    };
    let intake = Intake::Smtp {
        addr: format!("127.0.0.1:{}", pf.smtpd_port),
    };
    let outcome = workload::run(&intake, shape, &sink, drain_timeout(args));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap_or(0);
    let cpu = pf.cpu().saturating_sub(cpu0);
    let ok = report("postfix via SMTP", &outcome, shape, Some(cpu));
    println!(
        "    peak PSS of all Postfix processes {} (sampled every 250 ms)",
        mib(peak)
    );
    pf.stop();
    Ok((outcome, ok))
}

fn throughput(args: &Args, bin: &Path, work: &Path, shape: &Shape) -> Result<bool, String> {
    let mut ok = true;
    let mut outpost_rate = None;
    if !args.no_outpost {
        if args.intake != IntakeChoice::Smtp {
            let r = outpost_run(args, bin, &work.join("outpost-http"), shape, false)?;
            ok &= r.ok;
            outpost_rate = r.outcome.delivered_per_s();
        }
        if args.intake == IntakeChoice::Http {
            // HTTP only, as asked.
        } else if daemons::outpost_has_smtp(bin) {
            let r = outpost_run(args, bin, &work.join("outpost-smtp"), shape, true)?;
            ok &= r.ok;
            if let Some(s) = r.outcome.delivered_per_s() {
                // Compare like with like when the daemon takes SMTP.
                outpost_rate = Some(s);
            }
        } else {
            println!(
                "  (this outpost build has no SMTP submission listener: `serve --smtp` absent; HTTP only)"
            );
        }
    }
    if args.postfix {
        let (o, pf_ok) = postfix_run(args, work, shape)?;
        ok &= pf_ok;
        if let (Some(a), Some(b)) = (outpost_rate, o.delivered_per_s()) {
            let input = if daemons::outpost_has_smtp(bin) {
                "both fed over SMTP"
            } else {
                "outpost fed over its HTTP API, Postfix over SMTP: outpost has no SMTP listener yet"
            };
            println!(
                "  RATIO outpost/Postfix delivered msg/s = {:.2} ({a:.0} / {b:.0}; {input}; both fsync before acknowledging)",
                a / b
            );
        }
    }
    Ok(ok)
}

fn deferred(args: &Args, bin: &Path, work: &Path, shape: &Shape) -> Result<bool, String> {
    let data = work.join("outpost-deferred");
    let sink = Sink::start().map_err(|e| format!("sink: {e}"))?;
    // 1. A fresh store with the schema and the bench tenant.
    let d = Outpost::start(
        bin,
        &data,
        sink.port,
        &args.log,
        None,
        Duration::from_secs(60),
    )?;
    d.create_key()?;
    d.stop(Duration::from_secs(30));
    // 2. The deferred rows.
    let took = seed::deferred(
        &data.join("outpost.db"),
        daemons::TENANT_DOMAIN,
        args.deferred,
    )?;
    println!(
        "  seeded {} deferred recipients in {:.1} s (db {})",
        args.deferred,
        took.as_secs_f64(),
        mib(std::fs::metadata(data.join("outpost.db")).map_or(0, |m| m.len() / 1024))
    );
    drop(sink);
    // 3. Start-up with them, then new mail while they wait.
    let r = {
        let sink = Sink::start().map_err(|e| format!("sink: {e}"))?;
        let d = Outpost::start(
            bin,
            &data,
            sink.port,
            &args.log,
            None,
            Duration::from_secs(600),
        )?;
        let cpu_start = procfs::cpu(d.pid).unwrap_or_default();
        let hwm_start = procfs::hwm_kib(d.pid).unwrap_or(0);
        std::thread::sleep(Duration::from_secs(2));
        let depth = d.queue_depth().unwrap_or(0);
        println!(
            "  start-up with {} deferred: to /readyz {} (CPU {:.2} s); RSS after 2 s {} (peak {}, peak at ready {}); queue depth {depth}",
            args.deferred,
            ms(d.startup),
            cpu_start.as_secs_f64(),
            mib(procfs::rss_kib(d.pid).unwrap_or(0)),
            mib(procfs::hwm_kib(d.pid).unwrap_or(0)),
            mib(hwm_start),
        );
        let cpu_idle0 = procfs::cpu(d.pid).unwrap_or_default();
        std::thread::sleep(Duration::from_secs(5));
        let idle_cpu = procfs::cpu(d.pid)
            .unwrap_or_default()
            .saturating_sub(cpu_idle0);
        println!(
            "  idle with them waiting: CPU {:.0} ms over 5 s",
            idle_cpu.as_secs_f64() * 1000.0
        );
        let key = d.create_key()?;
        let cpu0 = procfs::cpu(d.pid).unwrap_or_default();
        let intake = Intake::Http {
            addr: d.http.clone(),
            key,
        };
        let outcome = workload::run(&intake, shape, &sink, drain_timeout(args));
        let cpu = procfs::cpu(d.pid).unwrap_or_default().saturating_sub(cpu0);
        let ok = report(
            "new mail via HTTP API, deferred waiting",
            &outcome,
            shape,
            Some(cpu),
        );
        println!(
            "    peak RSS {}; queue depth after {}",
            mib(procfs::hwm_kib(d.pid).unwrap_or(0)),
            d.queue_depth().unwrap_or(0)
        );
        let stop = d.stop(Duration::from_secs(120));
        println!("    shutdown (SIGTERM to exit) {}", ms(stop));
        ok
    };
    Ok(r)
}
