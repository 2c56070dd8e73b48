//! Micro-benchmark: classify the whole reply corpus many times and print ns per reply.
//! `cargo bench -p outpost-core --bench classify` (harness = false; std only).

use std::hint::black_box;
use std::time::Instant;

use outpost_core::classify::{Classifier, ReplyContext, parse_reply_line};
use outpost_core::smtp::Stage;

const CORPUS: &str = include_str!("../tests/data/replies.tsv");

fn main() {
    // Parse once: the benchmark measures classification, not TSV handling.
    let rows: Vec<(Stage, Option<u16>, Option<&str>, &str)> = CORPUS
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut cols = l.split('\t');
            let stage = Stage::parse(cols.next()?)?;
            let _expected = cols.next()?;
            let (code, enhanced, text) = parse_reply_line(cols.next()?);
            Some((stage, code, enhanced, text))
        })
        .collect();
    assert!(!rows.is_empty(), "empty corpus");

    let classifier = Classifier::default();
    let run = |rounds: usize| {
        let start = Instant::now();
        for _ in 0..rounds {
            for &(stage, code, enhanced, text) in &rows {
                let ctx = ReplyContext {
                    stage,
                    code,
                    enhanced,
                    text,
                };
                black_box(classifier.classify(black_box(&ctx)));
            }
        }
        start.elapsed()
    };

    // Warm the lazy DFA caches and the CPU before measuring.
    run(20);
    let rounds = 400;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let elapsed = run(rounds);
        let per = elapsed.as_nanos() as f64 / (rounds * rows.len()) as f64;
        best = best.min(per);
    }
    let startup = Instant::now();
    let fresh = Classifier::with_overrides("").map(|_| ());
    let compile = startup.elapsed();
    assert!(fresh.is_ok());
    println!(
        "classify: {} replies x {rounds} rounds, best of 5: {best:.0} ns/reply; compiling the rule set: {:.1} ms",
        rows.len(),
        compile.as_secs_f64() * 1e3
    );
}
