//! Classification of an outcome: (stage, reply code, enhanced code, text) -> category, and
//! the one table from category to decision (outcome, suppress).
//!
//! The rules are data (`rules.toml`, embedded; operators add or override rules in the
//! config file). This module owns the vocabulary and the decision table.

mod category;
mod rules;

pub use category::{Category, CategoryPolicy, Decision, Outcome};
pub use rules::{
    Classification, Classifier, Explanation, ReplyContext, RuleError, parse_reply_line,
};
