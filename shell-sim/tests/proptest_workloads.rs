//! Random small workloads and fault plans; a failure shrinks to a smaller one (fewer
//! messages, domains, crashes, lower fault level) that still fails.

use outpost_sim::{KNOWN_FINDINGS, Options, run_seed};
use proptest::prelude::*;

fn options() -> impl Strategy<Value = (u64, Options)> {
    (
        any::<u64>(),
        1usize..40,
        1usize..6,
        1usize..4,
        0u32..4,
        0u32..4,
        60u64..4 * 3600,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(seed, messages, domains, tenants, crashes, faults, active_secs, admin, jumps)| {
                (
                    seed,
                    Options {
                        messages,
                        domains,
                        tenants,
                        crashes,
                        faults,
                        active_secs,
                        admin,
                        jumps,
                        tail: 50,
                        allow: KNOWN_FINDINGS.iter().map(|s| s.to_string()).collect(),
                        ..Options::default()
                    },
                )
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every invariant holds (apart from the findings already reported).
    #[test]
    fn invariants_hold((seed, opts) in options()) {
        if let Err(f) = run_seed(seed, &opts) {
            prop_assert!(false, "{f}\n{}", f.trace.join("\n"));
        }
    }
}

/// A perfect world delivers everything that was acknowledged.
#[test]
fn a_perfect_world_delivers_everything() {
    let opts = Options {
        messages: 50,
        faults: 0,
        crashes: 0,
        admin: false,
        jumps: false,
        ..Options::default()
    };
    for seed in 0..4 {
        let s = match run_seed(seed, &opts) {
            Ok(s) => s,
            Err(f) => panic!("{f}\n{}", f.trace.join("\n")),
        };
        assert!(s.recipients > 0);
        assert_eq!(s.delivered, s.recipients, "{s:?}");
        assert_eq!(s.bounced + s.failed + s.suppressed, 0, "{s:?}");
        assert_eq!(s.dup_crash + s.dup_timeout, 0);
    }
}
