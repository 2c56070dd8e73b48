//! `outpost-sim --seeds N [--from S]` runs many seeds; `outpost-sim --seed S --trace`
//! replays one and prints its trace. Always ends with the digest of what ran.

use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use outpost_sim::{Failure, Options, PANIC_LOCATION, Summary, run_seed};

const USAGE: &str = "usage: outpost-sim [--seeds N] [--from S] [--seed S [--trace]] [--messages M] [--domains D] [--tenants T] [--crashes C] [--faults 0-3] [--active-secs S] [--threads N] [--no-admin] [--no-jumps] [--allow KEY]... [--allow-known] [--verbose]";

struct Args {
    seeds: u64,
    from: u64,
    one: Option<u64>,
    threads: usize,
    verbose: bool,
    opts: Options,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seeds: 100,
        from: 0,
        one: None,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        verbose: false,
        opts: Options::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))?
                .parse::<u64>()
                .map_err(|e| format!("{name}: {e}"))
        };
        match flag.as_str() {
            "--seeds" => a.seeds = num("--seeds")?,
            "--from" => a.from = num("--from")?,
            "--seed" => a.one = Some(num("--seed")?),
            "--messages" => a.opts.messages = num("--messages")? as usize,
            "--domains" => a.opts.domains = num("--domains")? as usize,
            "--tenants" => a.opts.tenants = num("--tenants")? as usize,
            "--crashes" => a.opts.crashes = num("--crashes")? as u32,
            "--faults" => a.opts.faults = num("--faults")?.min(3) as u32,
            "--active-secs" => a.opts.active_secs = num("--active-secs")?,
            "--threads" => a.threads = num("--threads")?.max(1) as usize,
            "--trace" => a.opts.trace = true,
            "--no-admin" => a.opts.admin = false,
            "--no-jumps" => a.opts.jumps = false,
            "--verbose" => a.verbose = true,
            "--allow-known" => a
                .opts
                .allow
                .extend(outpost_sim::KNOWN_FINDINGS.iter().map(|k| k.to_string())),
            "--allow" => a
                .opts
                .allow
                .push(it.next().ok_or("--allow needs a finding key")?),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(a)
}

fn print_failure(f: &Failure, with_trace: bool) {
    println!("{f}");
    if with_trace {
        println!("  last {} trace lines:", f.trace.len());
        for l in &f.trace {
            println!("    {l}");
        }
        println!("  replay: outpost-sim --seed {} --trace", f.seed);
    }
}

fn main() -> ExitCode {
    // Engine panics are caught per seed and reported as failures; keep where they
    // happened and stay quiet otherwise.
    std::panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| format!("at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        PANIC_LOCATION.with(|p| *p.borrow_mut() = Some(loc));
    }));
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(seed) = args.one {
        let started = Instant::now();
        let r = run_seed(seed, &args.opts);
        let (digest, ok) = match &r {
            Ok(s) => {
                println!("seed {seed} ok: {}", describe(s));
                (s.digest, true)
            }
            Err(f) => {
                if args.opts.trace {
                    for l in &f.trace {
                        println!("{l}");
                    }
                }
                print_failure(f, !args.opts.trace);
                (f.digest, false)
            }
        };
        if let (true, Ok(_)) = (args.opts.trace, &r) {
            // The full trace is only kept in memory by a traced run; print it.
            let opts = args.opts.clone();
            let mut sim = outpost_sim::sim::Sim::new(seed, &opts);
            let _ = sim.run();
            for l in &sim.lines.lines {
                println!("{l}");
            }
        }
        println!("wall: {:.3}s", started.elapsed().as_secs_f64());
        println!("digest: {digest:016x}");
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }

    let started = Instant::now();
    let next = AtomicU64::new(args.from);
    let end = args.from + args.seeds;
    let total = Mutex::new(Summary::default());
    let failures: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..args.threads {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    match run_seed(seed, &args.opts) {
                        Ok(sum) => {
                            if args.verbose {
                                println!("seed {seed} ok: {}", describe(&sum));
                            }
                            if let Ok(mut t) = total.lock() {
                                t.merge(&sum);
                            }
                        }
                        Err(f) => {
                            println!("{f}");
                            if let Ok(mut t) = failures.lock() {
                                t.push(f);
                            }
                            if let Ok(mut t) = total.lock() {
                                t.seeds += 1;
                            }
                        }
                    }
                }
            });
        }
    });
    let wall = started.elapsed().as_secs_f64();
    let total = total.into_inner().unwrap_or_default();
    let mut failures = failures.into_inner().unwrap_or_default();
    failures.sort_by_key(|f| f.seed);
    println!("---");
    println!(
        "seeds run: {} (from {}), failed: {}",
        total.seeds,
        args.from,
        failures.len()
    );
    println!("{}", describe(&total));
    let per_sec = total.recipients as f64 / wall.max(1e-9);
    println!(
        "wall time: {wall:.2}s on {} threads; {:.1} seeds/s; {:.0} recipient lifecycles/s ({:.2}M per minute)",
        args.threads,
        total.seeds as f64 / wall.max(1e-9),
        per_sec,
        per_sec * 60.0 / 1e6
    );
    if let Some(cpu) = cpu_seconds() {
        let per_cpu = total.recipients as f64 / cpu.max(1e-9);
        println!(
            "cpu time: {cpu:.2}s; {per_cpu:.0} recipient lifecycles per CPU-second ({:.2}M per CPU-minute)",
            per_cpu * 60.0 / 1e6
        );
    }
    if let Some(f) = failures.first() {
        println!("--- first failure:");
        print_failure(f, true);
    }
    println!("digest: {:016x}", total.digest);
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// CPU seconds used by this process (user + system), from /proc (Linux); the machine is
/// shared, so wall time alone says little about the simulator's own speed.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn describe(s: &Summary) -> String {
    let mut out = format!(
        "acknowledged messages {} recipients {} (final statuses in the store: delivered {} bounced {} failed {} suppressed {}), rejected submissions {}, unanswered at a crash {}, crashes {}, faults {}, events {}, duplicates across crashes {}, after timeouts {}, guard refusals {}, webhook deliveries failed {}, engine steps {}",
        s.messages,
        s.recipients,
        s.delivered,
        s.bounced,
        s.failed,
        s.suppressed,
        s.rejected,
        s.unanswered_at_crash,
        s.crashes,
        s.faults,
        s.events,
        s.dup_crash,
        s.dup_timeout,
        s.guard_refusals,
        s.webhooks_failed,
        s.steps
    );
    out.push_str(&format!(
        "; check coverage: warm-up comparisons {}, half-open probes {}, orphan files deleted {}, failed spool scans {}, 5.1.1 bounces checked {}, idle destinations forgotten {}",
        s.warmup_checks,
        s.probes,
        s.orphans_deleted,
        s.scans_failed,
        s.hard_bounces_checked,
        s.destinations_forgotten
    ));
    if !s.allowed.is_empty() {
        out.push_str(&format!("; allowed findings: {:?}", s.allowed));
    }
    if s.valid_refused > 0 {
        out.push_str(&format!(
            "; valid-looking submissions refused by intake: {} (e.g. {})",
            s.valid_refused, s.valid_refused_example
        ));
    }
    out
}
