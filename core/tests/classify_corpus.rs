//! Measures the embedded classification rules against a corpus of real reply lines
//! (`tests/data/replies.tsv`). Run with `--nocapture` to see the confusion matrix and every
//! misclassified row.
//!
//! The gates are about harm, not just accuracy: a missed `invalid_recipient` keeps mailing
//! a dead address (recall), a wrongly suppressed address silently loses a customer's mail
//! (false suppression), so both have hard limits.

use std::collections::BTreeMap;

use outpost_core::classify::{
    Category, CategoryPolicy, Classifier, ReplyContext, parse_reply_line,
};
use outpost_core::smtp::Stage;

const CORPUS: &str = include_str!("data/replies.tsv");

const MIN_INVALID_RECIPIENT_RECALL: f64 = 0.97;
const MAX_FALSE_SUPPRESSION_RATE: f64 = 0.02;
const MIN_ACCURACY: f64 = 0.95;
const MIN_ROWS: usize = 300;

struct Row<'a> {
    line_no: usize,
    stage: Stage,
    expected: Category,
    reply: &'a str,
    source: &'a str,
}

fn corpus() -> Vec<Row<'static>> {
    let mut rows = Vec::new();
    for (i, line) in CORPUS.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            cols.len(),
            4,
            "line {line_no}: want 4 tab-separated columns"
        );
        let stage = Stage::parse(cols[0])
            .unwrap_or_else(|| panic!("line {line_no}: unknown stage {:?}", cols[0]));
        let expected = Category::parse(cols[1])
            .unwrap_or_else(|| panic!("line {line_no}: unknown category {:?}", cols[1]));
        rows.push(Row {
            line_no,
            stage,
            expected,
            reply: cols[2],
            source: cols[3],
        });
    }
    rows
}

#[test]
fn corpus_meets_recall_safety_and_accuracy_gates() {
    let rows = corpus();
    assert!(rows.len() >= MIN_ROWS, "corpus has {} rows", rows.len());

    let classifier = Classifier::default();
    let policy = CategoryPolicy::default();

    let mut confusion: BTreeMap<(Category, Category), usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    let mut correct = 0usize;
    let (mut ir_total, mut ir_hit) = (0usize, 0usize);
    let (mut non_suppressing, mut falsely_suppressed) = (0usize, Vec::new());
    let mut four_xx_suppressed = Vec::new();

    for row in &rows {
        let (code, enhanced, text) = parse_reply_line(row.reply);
        let got = classifier.classify(&ReplyContext {
            stage: row.stage,
            code,
            enhanced,
            text,
        });
        *confusion.entry((row.expected, got.category)).or_default() += 1;
        if got.category == row.expected {
            correct += 1;
        } else {
            wrong.push((row, got.category, got.rule.clone()));
        }
        if row.expected == Category::InvalidRecipient {
            ir_total += 1;
            ir_hit += usize::from(got.category == Category::InvalidRecipient);
        }
        let got_decision = policy.decide(got.category, code);
        if !policy.decide(row.expected, code).suppress {
            non_suppressing += 1;
            if got_decision.suppress {
                falsely_suppressed.push((row, got.category));
            }
        }
        if code.is_some_and(|c| c / 100 == 4) && got_decision.suppress {
            four_xx_suppressed.push(row);
        }
    }

    let accuracy = correct as f64 / rows.len() as f64;
    let recall = ir_hit as f64 / ir_total.max(1) as f64;
    let false_suppression = falsely_suppressed.len() as f64 / non_suppressing.max(1) as f64;

    print_confusion(&confusion);
    println!("\nmisclassified ({}):", wrong.len());
    for (row, got, rule) in &wrong {
        println!(
            "  line {:>3} [{}] expected {} got {} (rule {}): {}   -- {}",
            row.line_no,
            row.stage.as_str(),
            row.expected.as_str(),
            got.as_str(),
            rule,
            row.reply,
            row.source
        );
    }
    println!(
        "\nrows {}  accuracy {:.4}  invalid_recipient recall {:.4} ({}/{})  false suppression {:.4} ({}/{})",
        rows.len(),
        accuracy,
        recall,
        ir_hit,
        ir_total,
        false_suppression,
        falsely_suppressed.len(),
        non_suppressing
    );
    for (row, got) in &falsely_suppressed {
        println!(
            "  FALSE SUPPRESSION line {} expected {} got {}: {}",
            row.line_no,
            row.expected.as_str(),
            got.as_str(),
            row.reply
        );
    }

    assert!(
        four_xx_suppressed.is_empty(),
        "a 4xx must never suppress: lines {:?}",
        four_xx_suppressed
            .iter()
            .map(|r| r.line_no)
            .collect::<Vec<_>>()
    );
    assert!(
        recall >= MIN_INVALID_RECIPIENT_RECALL,
        "invalid_recipient recall {recall:.4} < {MIN_INVALID_RECIPIENT_RECALL}"
    );
    assert!(
        false_suppression <= MAX_FALSE_SUPPRESSION_RATE,
        "false suppression rate {false_suppression:.4} > {MAX_FALSE_SUPPRESSION_RATE}"
    );
    assert!(
        accuracy >= MIN_ACCURACY,
        "accuracy {accuracy:.4} < {MIN_ACCURACY}; misclassified rows are listed above (--nocapture)"
    );
}

/// Rows: expected category; columns: what the rules said. Only categories that occur.
fn print_confusion(confusion: &BTreeMap<(Category, Category), usize>) {
    let mut cats: Vec<Category> = confusion.keys().flat_map(|(e, g)| [*e, *g]).collect();
    cats.sort();
    cats.dedup();
    // Column headers are the category's index; the legend maps them back.
    println!("\nconfusion matrix (rows: expected, columns: got)");
    for (i, c) in cats.iter().enumerate() {
        println!("  [{i:>2}] {}", c.as_str());
    }
    print!("{:>20}", "");
    for i in 0..cats.len() {
        print!("{i:>4}");
    }
    println!();
    for (i, e) in cats.iter().enumerate() {
        print!("{:>15} [{i:>2}]", e.as_str());
        for g in &cats {
            match confusion.get(&(*e, *g)) {
                Some(n) => print!("{n:>4}"),
                None => print!("{:>4}", "."),
            }
        }
        println!();
    }
}

/// The examples the design calls out must come out right whatever the overall figures.
#[test]
fn named_hard_cases() {
    let c = Classifier::default();
    let check = |stage: Stage, line: &str, want: Category| {
        let (code, enhanced, text) = parse_reply_line(line);
        let got = c.classify(&ReplyContext {
            stage,
            code,
            enhanced,
            text,
        });
        assert_eq!(got.category, want, "{line} (rule {})", got.rule);
    };
    check(
        Stage::Rcpt,
        "550 5.1.0 <bounce@example.com> sender rejected",
        Category::SenderRejected,
    );
    check(
        Stage::Mail,
        "553 5.1.8 Domain of sender address does not exist",
        Category::SenderRejected,
    );
    check(
        Stage::Rcpt,
        "550 5.7.1 <x@example.org>: Recipient address rejected: User unknown",
        Category::InvalidRecipient,
    );
    check(
        Stage::Rcpt,
        "550 sorry, no mailbox here by that name (#5.1.1 - chkusr)",
        Category::InvalidRecipient,
    );
    check(
        Stage::Rcpt,
        "550 Unknown user x@example.jp",
        Category::InvalidRecipient,
    );
    check(
        Stage::Rcpt,
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound",
        Category::InvalidRecipient,
    );
    check(
        Stage::Rcpt,
        "550 5.7.1 Service unavailable; client host blocked using a DNS block list",
        Category::ReputationBlock,
    );
    check(
        Stage::EndOfData,
        "550 5.7.26 unauthenticated sender",
        Category::AuthRequired,
    );
    check(
        Stage::Rcpt,
        "552 5.2.2 Quota exceeded",
        Category::MailboxFull,
    );
    check(
        Stage::Rcpt,
        "550 5.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered",
        Category::RateLimited,
    );
}
