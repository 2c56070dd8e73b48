//! Same seed, same run: the digest covers every input and output.

use outpost_sim::{KNOWN_FINDINGS, Options, run_seed};

fn opts() -> Options {
    Options {
        messages: 60,
        domains: 6,
        active_secs: 3600,
        allow: KNOWN_FINDINGS.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    }
}

fn digest(seed: u64, o: &Options) -> u64 {
    match run_seed(seed, o) {
        Ok(s) => s.digest,
        Err(f) => f.digest,
    }
}

#[test]
fn same_seed_same_digest() {
    let o = opts();
    for seed in [1u64, 7, 42] {
        let a = run_seed(seed, &o);
        let b = run_seed(seed, &o);
        match (a, b) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "seed {seed}: summaries differ"),
            (a, b) => assert_eq!(
                a.map(|s| s.digest).unwrap_or_else(|f| f.digest),
                b.map(|s| s.digest).unwrap_or_else(|f| f.digest),
                "seed {seed}"
            ),
        }
    }
}

#[test]
fn different_seeds_differ_and_tracing_does_not_change_the_run() {
    let o = opts();
    assert_ne!(digest(1, &o), digest(2, &o));
    let traced = Options {
        trace: true,
        ..opts()
    };
    assert_eq!(digest(3, &o), digest(3, &traced));
}
