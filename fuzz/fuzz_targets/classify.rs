//! `Classifier::default().classify` and `CategoryPolicy::default().decide` on arbitrary
//! stage / code / enhanced code / text.
//!
//! Checks: classification is total (no panic, a named rule); a 2xx reply is `delivered`;
//! the decision for a 2xx is delivered, for a 4xx deferred and never suppressing, whatever
//! the category; only a bounce may suppress, and only for the suppressing categories.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use outpost_core::classify::{Category, CategoryPolicy, Classifier, Outcome, ReplyContext};
use outpost_core::smtp::Stage;

#[derive(Arbitrary, Debug)]
struct In {
    stage: u8,
    code: Option<u16>,
    enhanced: Option<String>,
    text: String,
    /// Also decide for this category (any, not only what the classifier names).
    other_category: u8,
}

fn check_decision(policy: &CategoryPolicy, category: Category, code: Option<u16>) {
    let d = policy.decide(category, code);
    match code.map(|c| c / 100) {
        Some(2) => assert_eq!(d.outcome, Outcome::Delivered, "{category:?} {code:?}"),
        Some(4) => {
            assert_eq!(d.outcome, Outcome::Deferred, "{category:?} {code:?}");
            assert!(!d.suppress, "a 4xx suppressed: {category:?} {code:?}");
        }
        Some(5) if category == Category::Unknown => assert_eq!(d.outcome, Outcome::Bounced),
        _ => {}
    }
    if d.suppress {
        assert_eq!(d.outcome, Outcome::Bounced, "{category:?} {code:?}");
        assert!(
            matches!(
                category,
                Category::InvalidRecipient | Category::InvalidDomain | Category::RecipientMoved
            ),
            "{category:?} suppresses"
        );
    }
}

fuzz_target!(|input: In| {
    let stage = Stage::ALL[usize::from(input.stage) % Stage::ALL.len()];
    let classifier = Classifier::default();
    let ctx = ReplyContext {
        stage,
        code: input.code,
        enhanced: input.enhanced.as_deref(),
        text: &input.text,
    };
    let c = classifier.classify(&ctx);
    assert!(!c.rule.is_empty(), "a classification names its rule");
    if input.code.is_some_and(|c| c / 100 == 2) {
        assert_eq!(c.category, Category::Delivered, "2xx: {ctx:?} -> {c:?}");
    }
    let policy = CategoryPolicy::default();
    check_decision(&policy, c.category, input.code);
    let other = Category::ALL[usize::from(input.other_category) % Category::ALL.len()];
    check_decision(&policy, other, input.code);
    // Deterministic.
    assert_eq!(classifier.classify(&ctx), c);
});
