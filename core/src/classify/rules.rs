//! Data-driven classification: (stage, reply code, enhanced code, reply text) -> category.
//!
//! The rules are data (`rules.toml`, embedded at build time; operators replace or add rules
//! from the config file in the same format). Real servers put the truth in the reply text and
//! often send misleading enhanced codes (a user-unknown with 5.7.1, a sender-side 5.1.x), so
//! text rules outrank code rules, and rules about *us* (reputation, authentication, rate,
//! our envelope sender) outrank rules about the recipient's mailbox: when a reply mentions
//! both, we must not suppress an address for something that was our fault.
//!
//! All text regexes are compiled into one [`RegexSet`], so classifying a reply is one pass
//! over its text plus a walk over the rules in precedence order; the first rule whose
//! conditions all hold wins. Built-in fallbacks make the function total whatever the
//! operator's rules say.

use std::fmt;
use std::sync::{Arc, OnceLock};

// Byte regexes with Unicode mode off: reply texts are overwhelmingly ASCII, and ASCII-only
// classes and word boundaries keep the many-pattern set on the lazy DFA (Unicode mode made
// it ~50x slower on the corpus). Matching stays case-insensitive for ASCII letters.
use regex::bytes::{RegexBuilder, RegexSet, RegexSetBuilder, SetMatches};
use serde::Deserialize;

use super::{Category, CategoryPolicy, Decision};
use crate::smtp::Stage;

/// The embedded rule set (see docs/classification.md for the format).
const EMBEDDED_RULES: &str = include_str!("rules.toml");

/// Upper bound for one rule's compiled regex. Operator rules come from a config file; a
/// pathological pattern must fail at load time rather than cost memory on every reply.
const RULE_REGEX_SIZE_LIMIT: usize = 2 << 20;
/// Upper bound for the combined set.
const SET_REGEX_SIZE_LIMIT: usize = 64 << 20;
/// Lazy-DFA cache for the combined set: big enough that the embedded set does not thrash.
const SET_DFA_SIZE_LIMIT: usize = 8 << 20;

/// What the classifier reads.
#[derive(Clone, Copy, Debug)]
pub struct ReplyContext<'a> {
    pub stage: Stage,
    /// `None` for outcomes without a reply (connection refused, timeout, DNS).
    pub code: Option<u16>,
    /// RFC 3463 enhanced code, e.g. `5.1.1`.
    pub enhanced: Option<&'a str>,
    /// Sanitized reply text (or error text).
    pub text: &'a str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    pub category: Category,
    /// The name of the rule that matched (`builtin.*` for the fixed fallbacks).
    pub rule: String,
}

/// A rule that cannot be loaded. `rule` names it (`(toml)` when the file itself does not
/// parse, `(set)` when the rules compile one by one but not together).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rule `{rule}`: {reason}")]
pub struct RuleError {
    pub rule: String,
    pub reason: String,
}

impl RuleError {
    fn new(rule: &str, reason: impl Into<String>) -> RuleError {
        RuleError {
            rule: rule.to_string(),
            reason: reason.into(),
        }
    }
}

/// What `outpost classify` prints: the category, the winning rule, the decision under a
/// policy, and every other rule that also matched (in precedence order) so an operator can
/// see what an override would have to beat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub classification: Classification,
    pub decision: Decision,
    /// All matching rules, winner first. Empty when a built-in decided.
    pub matched: Vec<String>,
}

/// The compiled rule set. Cheap to clone (an `Arc`); `Classifier::default()` shares one
/// compiled copy of the embedded rules for the whole process.
#[derive(Clone)]
pub struct Classifier {
    compiled: Arc<Compiled>,
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier")
            .field("rules", &self.compiled.rules.len())
            .field("text_patterns", &self.compiled.patterns.len())
            .finish()
    }
}

impl Default for Classifier {
    fn default() -> Self {
        static EMBEDDED: OnceLock<Arc<Compiled>> = OnceLock::new();
        let compiled = EMBEDDED.get_or_init(|| {
            // The embedded file is part of the build and `embedded_rules_compile` tests it;
            // a failure here is a build defect, never an input error.
            let raw =
                parse_rules(EMBEDDED_RULES, Origin::Embedded).expect("embedded rules.toml parses");
            Arc::new(Compiled::build(raw).expect("embedded rules.toml compiles"))
        });
        Classifier {
            compiled: Arc::clone(compiled),
        }
    }
}

impl Classifier {
    /// The embedded rules plus the operator's: a rule whose name exists replaces it (and
    /// keeps its place), a new name is added (ahead of embedded rules of the same group).
    pub fn with_overrides(toml: &str) -> Result<Classifier, RuleError> {
        let operator = parse_rules(toml, Origin::Operator)?;
        let mut merged = Classifier::default().compiled.raw.clone();
        for rule in operator {
            match merged.iter_mut().find(|r| r.name == rule.name) {
                Some(slot) => {
                    *slot = RawRule {
                        origin: slot.origin,
                        ..rule
                    }
                }
                None => merged.push(rule),
            }
        }
        Ok(Classifier {
            compiled: Arc::new(Compiled::build(merged)?),
        })
    }

    /// Names of all rules in precedence order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.compiled.rules.iter().map(|r| r.name.as_str())
    }

    pub fn classify(&self, ctx: &ReplyContext<'_>) -> Classification {
        let (category, rule) = self.compiled.classify(ctx, None);
        Classification {
            category,
            rule: rule.to_string(),
        }
    }

    pub fn explain(&self, ctx: &ReplyContext<'_>, policy: &CategoryPolicy) -> Explanation {
        let mut matched = Vec::new();
        let (category, rule) = self.compiled.classify(ctx, Some(&mut matched));
        Explanation {
            classification: Classification {
                category,
                rule: rule.to_string(),
            },
            decision: policy.decide(category, ctx.code),
            matched,
        }
    }
}

/// Splits `"550 5.1.1 text"` (or `"550-5.1.1 text"`) into code, enhanced code and text, for
/// the CLI and tests. A line without a leading three-digit code is all text (an outcome
/// without a reply, e.g. `"NXDOMAIN"`).
pub fn parse_reply_line(line: &str) -> (Option<u16>, Option<&str>, &str) {
    let line = line.trim();
    let bytes = line.as_bytes();
    let has_code = bytes.len() >= 3
        && bytes[..3].iter().all(u8::is_ascii_digit)
        && matches!(bytes.get(3), None | Some(b' ' | b'-'));
    if !has_code {
        return (None, None, line);
    }
    let code = line[..3].parse::<u16>().ok();
    let rest = line.get(4..).unwrap_or("").trim_start();
    let token_end = rest.find(' ').unwrap_or(rest.len());
    let token = &rest[..token_end];
    if parse_enhanced(token).is_some() {
        (code, Some(token), rest[token_end..].trim_start())
    } else {
        (code, None, rest)
    }
}

// ---------------------------------------------------------------------------------------
// File format

#[derive(Deserialize)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<toml::Table>,
}

/// One string or a list of strings (`codes = "5xx"` or `codes = ["4xx", "5xx"]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFields {
    /// Read from the raw table before typed parsing (so errors can name the rule); declared
    /// here so `deny_unknown_fields` accepts it.
    #[serde(rename = "name")]
    _name: String,
    category: String,
    group: String,
    #[serde(default)]
    stages: Option<OneOrMany>,
    #[serde(default)]
    codes: Option<OneOrMany>,
    #[serde(default)]
    enhanced: Option<OneOrMany>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Origin {
    /// Operator rules come first within a group: an operator adds a rule to win.
    Operator,
    Embedded,
}

#[derive(Clone, Debug)]
struct RawRule {
    name: String,
    origin: Origin,
    /// From the operator's file (a new rule, or one replacing an embedded rule, which
    /// keeps the embedded `origin`): checked in full at load.
    custom: bool,
    fields: RuleFields,
}

fn parse_rules(toml_text: &str, origin: Origin) -> Result<Vec<RawRule>, RuleError> {
    let file: RuleFile =
        toml::from_str(toml_text).map_err(|e| RuleError::new("(toml)", e.to_string()))?;
    let mut out: Vec<RawRule> = Vec::with_capacity(file.rule.len());
    for (i, table) in file.rule.into_iter().enumerate() {
        let name = match table.get("name") {
            Some(toml::Value::String(s)) if !s.trim().is_empty() => s.clone(),
            _ => {
                return Err(RuleError::new(
                    &format!("#{}", i + 1),
                    "missing or empty `name`",
                ));
            }
        };
        let fields: RuleFields = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| RuleError::new(&name, e.to_string()))?;
        if out.iter().any(|r| r.name == name) {
            return Err(RuleError::new(&name, "duplicate rule name"));
        }
        out.push(RawRule {
            name,
            origin,
            custom: origin == Origin::Operator,
            fields,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Compiled form

/// Precedence groups, strongest first. Declaration order is the precedence.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    /// Reputation, authentication, rate, spam, relay, TLS, explicit policy: about us or the
    /// message, so they beat anything about the mailbox.
    Block,
    /// About our envelope sender.
    Sender,
    /// About the recipient's mailbox or domain.
    Mailbox,
    /// Other explicit texts: size, content, protocol, server trouble, timeouts.
    Message,
    /// Enhanced-code fallbacks.
    Enhanced,
    /// Weak wording ("denied", "try again later") that only decides when no code does.
    Hint,
    /// Basic reply-code fallbacks.
    Code,
    /// Stage and class fallbacks, outcomes without a reply.
    Fallback,
}

impl Group {
    fn parse(s: &str) -> Option<Group> {
        Some(match s {
            "block" => Group::Block,
            "sender" => Group::Sender,
            "mailbox" => Group::Mailbox,
            "message" => Group::Message,
            "enhanced" => Group::Enhanced,
            "hint" => Group::Hint,
            "code" => Group::Code,
            "fallback" => Group::Fallback,
            _ => return None,
        })
    }
}

/// `5xx`, `55x`, `550` (digits or `x`), or `none` (no reply at all).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum CodePat {
    NoReply,
    Digits([Option<u8>; 3]),
}

impl CodePat {
    fn parse(s: &str) -> Option<CodePat> {
        if s.eq_ignore_ascii_case("none") {
            return Some(CodePat::NoReply);
        }
        let b = s.as_bytes();
        if b.len() != 3 {
            return None;
        }
        let mut out = [None; 3];
        for (slot, &c) in out.iter_mut().zip(b) {
            *slot = match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'x' | b'X' => None,
                _ => return None,
            };
        }
        // Reply codes are 2xx-5xx; a pattern that can never match is a typo.
        match out[0] {
            Some(2..=5) | None => Some(CodePat::Digits(out)),
            Some(_) => None,
        }
    }

    fn matches(self, code: Option<u16>) -> bool {
        match (self, code) {
            (CodePat::NoReply, None) => true,
            (CodePat::Digits(p), Some(c)) => {
                let d = [(c / 100) % 10, (c / 10) % 10, c % 10];
                p.iter()
                    .zip(d)
                    .all(|(p, d)| p.is_none_or(|p| u16::from(p) == d))
            }
            _ => false,
        }
    }
}

/// `5.1.1`, `5.7.*`, `*.1.1` (each part digits or `*`/`x`), or `none` (no enhanced code).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum EnhPat {
    Absent,
    Parts([Option<u16>; 3]),
}

impl EnhPat {
    fn parse(s: &str) -> Option<EnhPat> {
        if s.eq_ignore_ascii_case("none") {
            return Some(EnhPat::Absent);
        }
        let mut out = [None; 3];
        let mut parts = s.split('.');
        for slot in &mut out {
            let p = parts.next()?;
            *slot = match p {
                "*" | "x" | "X" => None,
                _ if (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
                    Some(p.parse().ok()?)
                }
                _ => return None,
            };
        }
        if parts.next().is_some() {
            return None;
        }
        match out[0] {
            Some(2 | 4 | 5) | None => Some(EnhPat::Parts(out)),
            Some(_) => None,
        }
    }

    fn matches(self, enhanced: Option<[u16; 3]>) -> bool {
        match (self, enhanced) {
            (EnhPat::Absent, None) => true,
            (EnhPat::Parts(p), Some(e)) => p.iter().zip(e).all(|(p, e)| p.is_none_or(|p| p == e)),
            _ => false,
        }
    }
}

/// `class.subject.detail` per RFC 3463; `None` for anything else (garbage is not a code).
fn parse_enhanced(s: &str) -> Option<[u16; 3]> {
    let mut out = [0u16; 3];
    let mut parts = s.split('.');
    for slot in &mut out {
        let p = parts.next()?;
        if !(1..=3).contains(&p.len()) || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = p.parse().ok()?;
    }
    if parts.next().is_some() || !matches!(out[0], 2 | 4 | 5) {
        return None;
    }
    Some(out)
}

/// qmail-style replies carry the enhanced code only in the text: `(#5.1.1 - chkusr)`.
/// Used only when the reply has no enhanced code of its own.
fn enhanced_in_text(text: &str) -> Option<[u16; 3]> {
    text.match_indices('#').find_map(|(i, _)| {
        let tail = &text[i + 1..];
        let end = tail
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(tail.len());
        parse_enhanced(tail[..end].trim_end_matches('.'))
    })
}

fn stage_bit(stage: Stage) -> u16 {
    1u16 << (stage as u16)
}

#[derive(Debug)]
struct CompiledRule {
    name: String,
    category: Category,
    /// Bitmask of stages; `None` = any stage.
    stages: Option<u16>,
    /// Empty = any reply code (but not "no reply": that must be asked for with `none`).
    codes: Vec<CodePat>,
    /// Empty = any enhanced code, or none.
    enhanced: Vec<EnhPat>,
    /// Index into the regex set.
    text: Option<usize>,
}

impl CompiledRule {
    fn matches(
        &self,
        stage: u16,
        code: Option<u16>,
        enhanced: Option<[u16; 3]>,
        texts: &SetMatches,
    ) -> bool {
        self.stages.is_none_or(|s| s & stage != 0)
            && if self.codes.is_empty() {
                code.is_some()
            } else {
                self.codes.iter().any(|p| p.matches(code))
            }
            && (self.enhanced.is_empty() || self.enhanced.iter().any(|p| p.matches(enhanced)))
            && self.text.is_none_or(|i| texts.matched(i))
    }
}

fn compile_set(patterns: &[String]) -> Result<RegexSet, String> {
    RegexSetBuilder::new(patterns)
        .case_insensitive(true)
        .unicode(false)
        .size_limit(SET_REGEX_SIZE_LIMIT)
        .dfa_size_limit(SET_DFA_SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string())
}

struct Compiled {
    /// In precedence order.
    rules: Vec<CompiledRule>,
    /// The text patterns (`CompiledRule::text` indexes them), compiled into one set on
    /// first use: only replies that are not 2xx need it, and compiling it takes ~3 MiB of
    /// transient heap that the allocator keeps. Operator rules build it at load (their
    /// errors must show then); the embedded rules are tested to compile.
    patterns: Vec<String>,
    set: OnceLock<Option<RegexSet>>,
    /// The source rules in file order, kept so overrides can be merged and recompiled.
    raw: Vec<RawRule>,
}

/// Categories the engine decides itself; a rule naming them is a mistake (a `delivered`
/// rule on a 5xx would lose mail silently).
const NOT_RULE_CATEGORIES: [Category; 4] = [
    Category::Delivered,
    Category::Expired,
    Category::Cancelled,
    Category::Suppressed,
];

impl Compiled {
    /// Checks and orders the rules. The text set is compiled now if any rule is the
    /// operator's (each operator pattern alone first, so that an error names its rule), on
    /// first use otherwise.
    fn build(raw: Vec<RawRule>) -> Result<Compiled, RuleError> {
        let mut keyed: Vec<((Group, Origin, usize), CompiledRule)> = Vec::with_capacity(raw.len());
        let mut patterns: Vec<String> = Vec::new();
        let eager = raw.iter().any(|r| r.custom);
        for (index, r) in raw.iter().enumerate() {
            let f = &r.fields;
            let name = r.name.as_str();
            let category = Category::parse(&f.category).ok_or_else(|| {
                RuleError::new(name, format!("unknown category `{}`", f.category))
            })?;
            if NOT_RULE_CATEGORIES.contains(&category) {
                return Err(RuleError::new(
                    name,
                    format!(
                        "category `{}` is decided by the engine, not by rules",
                        f.category
                    ),
                ));
            }
            let group = Group::parse(&f.group)
                .ok_or_else(|| RuleError::new(name, format!("unknown group `{}`", f.group)))?;
            let stages = match &f.stages {
                None => None,
                Some(list) => {
                    let mut mask = 0u16;
                    for s in list.clone().into_vec() {
                        let st = Stage::parse(&s)
                            .ok_or_else(|| RuleError::new(name, format!("unknown stage `{s}`")))?;
                        mask |= stage_bit(st);
                    }
                    Some(mask)
                }
            };
            let codes = match &f.codes {
                None => Vec::new(),
                Some(list) => list
                    .clone()
                    .into_vec()
                    .iter()
                    .map(|c| {
                        CodePat::parse(c).ok_or_else(|| {
                            RuleError::new(
                                name,
                                format!("bad code pattern `{c}` (want e.g. 5xx, 55x, 550, none)"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            };
            let enhanced = match &f.enhanced {
                None => Vec::new(),
                Some(list) => list
                    .clone()
                    .into_vec()
                    .iter()
                    .map(|e| {
                        EnhPat::parse(e).ok_or_else(|| {
                            RuleError::new(
                                name,
                                format!(
                                    "bad enhanced pattern `{e}` (want e.g. 5.1.1, 5.7.*, none)"
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            };
            let text = match &f.text {
                None => None,
                Some(t) => {
                    // Compiled alone first so a bad pattern is reported under its rule's name.
                    if r.custom {
                        RegexBuilder::new(t)
                            .case_insensitive(true)
                            .unicode(false)
                            .size_limit(RULE_REGEX_SIZE_LIMIT)
                            .build()
                            .map_err(|e| RuleError::new(name, format!("bad text regex: {e}")))?;
                    }
                    patterns.push(t.clone());
                    Some(patterns.len() - 1)
                }
            };
            keyed.push((
                (group, r.origin, index),
                CompiledRule {
                    name: r.name.clone(),
                    category,
                    stages,
                    codes,
                    enhanced,
                    text,
                },
            ));
        }
        let set = OnceLock::new();
        if eager {
            let built = compile_set(&patterns).map_err(|e| RuleError::new("(set)", e))?;
            let _ = set.set(Some(built));
        }
        keyed.sort_by_key(|(k, _)| *k);
        Ok(Compiled {
            rules: keyed.into_iter().map(|(_, r)| r).collect(),
            patterns,
            set,
            raw,
        })
    }

    /// The compiled text set. `None` only if it does not compile, which `build` rules out
    /// for operator rules and `embedded_rules_compile` for the embedded ones; text rules
    /// then match nothing rather than panic.
    fn set(&self) -> Option<&RegexSet> {
        self.set
            .get_or_init(|| compile_set(&self.patterns).ok())
            .as_ref()
    }

    fn classify<'s>(
        &'s self,
        ctx: &ReplyContext<'_>,
        mut all: Option<&mut Vec<String>>,
    ) -> (Category, &'s str) {
        // Fixed by the contract, not by rules: a 2xx is delivered, and anything that is not
        // a 2xx/4xx/5xx reply broke the protocol.
        match ctx.code.map(|c| c / 100) {
            Some(2) => return (Category::Delivered, "builtin.delivered"),
            Some(4 | 5) | None => {}
            Some(_) => return (Category::Protocol, "builtin.unexpected_code"),
        }
        let enhanced = ctx
            .enhanced
            .and_then(parse_enhanced)
            .or_else(|| enhanced_in_text(ctx.text));
        let texts = match self.set() {
            Some(set) => set.matches(ctx.text.as_bytes()),
            None => RegexSet::empty().matches(b""),
        };
        let stage = stage_bit(ctx.stage);
        let mut winner: Option<&CompiledRule> = None;
        for rule in &self.rules {
            if rule.matches(stage, ctx.code, enhanced, &texts) {
                match all.as_deref_mut() {
                    Some(list) => list.push(rule.name.clone()),
                    None => {
                        winner = Some(rule);
                        break;
                    }
                }
                if winner.is_none() {
                    winner = Some(rule);
                }
            }
        }
        if let Some(rule) = winner {
            return (rule.category, &rule.name);
        }
        // Totality whatever the operator's rules say.
        match (ctx.code, ctx.stage) {
            (Some(_), _) => (Category::Unknown, "builtin.unknown"),
            (None, Stage::Dns) => (Category::Dns, "builtin.no_reply"),
            (None, Stage::Tls) => (Category::Tls, "builtin.no_reply"),
            (None, Stage::Queue) => (Category::Unknown, "builtin.no_reply"),
            (None, _) => (Category::Connection, "builtin.no_reply"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Outcome;

    fn classify_line(c: &Classifier, stage: Stage, line: &str) -> Classification {
        let (code, enhanced, text) = parse_reply_line(line);
        c.classify(&ReplyContext {
            stage,
            code,
            enhanced,
            text,
        })
    }

    fn cat(stage: Stage, line: &str) -> Category {
        classify_line(&Classifier::default(), stage, line).category
    }

    #[test]
    fn embedded_rules_compile() {
        let raw = parse_rules(EMBEDDED_RULES, Origin::Embedded);
        assert!(raw.is_ok(), "{raw:?}");
        let built = raw.map(Compiled::build);
        assert!(matches!(built, Ok(Ok(_))), "embedded rules must compile");
        if let Ok(Ok(c)) = &built {
            assert!(c.set.get().is_none(), "the set is compiled on first use");
            assert!(c.set().is_some_and(|s| s.len() == c.patterns.len()));
        }
        assert!(Classifier::default().rule_names().count() > 50);
    }

    #[test]
    fn default_shares_one_compiled_set() {
        let a = Classifier::default();
        let b = Classifier::default();
        assert!(Arc::ptr_eq(&a.compiled, &b.compiled));
        assert!(format!("{a:?}").starts_with("Classifier"));
    }

    #[test]
    fn parse_reply_line_splits() {
        assert_eq!(
            parse_reply_line("550 5.1.1 <a@b>: User unknown"),
            (Some(550), Some("5.1.1"), "<a@b>: User unknown")
        );
        assert_eq!(
            parse_reply_line("550-5.7.26 Unauthenticated"),
            (Some(550), Some("5.7.26"), "Unauthenticated")
        );
        assert_eq!(
            parse_reply_line("550 Unknown user x@example.jp"),
            (Some(550), None, "Unknown user x@example.jp")
        );
        assert_eq!(parse_reply_line("NXDOMAIN"), (None, None, "NXDOMAIN"));
        assert_eq!(parse_reply_line("421"), (Some(421), None, ""));
        assert_eq!(parse_reply_line("5501 x"), (None, None, "5501 x"));
    }

    #[test]
    fn brief_examples() {
        use Category::*;
        let cases: &[(Stage, &str, Category)] = &[
            (
                Stage::Mail,
                "550 5.1.0 <bounce@example.com> sender rejected",
                SenderRejected,
            ),
            (
                Stage::Rcpt,
                "550 5.1.0 <bounce@example.com> sender rejected",
                SenderRejected,
            ),
            (
                Stage::Mail,
                "553 5.1.8 Domain of sender address does not exist",
                SenderRejected,
            ),
            (
                Stage::Rcpt,
                "553 5.1.8 Domain of sender address does not exist",
                SenderRejected,
            ),
            (
                Stage::Rcpt,
                "550 5.7.1 <x@example.org>: Recipient address rejected: User unknown",
                InvalidRecipient,
            ),
            (
                Stage::Rcpt,
                "550 sorry, no mailbox here by that name (#5.1.1 - chkusr)",
                InvalidRecipient,
            ),
            (
                Stage::Rcpt,
                "550 Unknown user x@example.jp",
                InvalidRecipient,
            ),
            (
                Stage::Rcpt,
                "550 5.1.10 RESOLVER.ADR.RecipientNotFound",
                InvalidRecipient,
            ),
            (
                Stage::Rcpt,
                "550 5.7.1 Service unavailable; client host blocked using a DNS block list",
                ReputationBlock,
            ),
            (
                Stage::EndOfData,
                "550 5.7.26 unauthenticated sender",
                AuthRequired,
            ),
            (Stage::Rcpt, "552 5.2.2 Quota exceeded", MailboxFull),
            (
                Stage::Rcpt,
                "550 5.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered",
                RateLimited,
            ),
        ];
        for (stage, line, want) in cases {
            assert_eq!(cat(*stage, line), *want, "{line}");
        }
    }

    #[test]
    fn precedence() {
        use Category::*;
        // Sender-side beats the mailbox wording in the same reply.
        assert_eq!(
            cat(
                Stage::Rcpt,
                "550 5.1.1 <bounce@example.com>: Sender address rejected: User unknown in local recipient table"
            ),
            SenderRejected
        );
        // Reputation beats mailbox wording ("unknown recipients" here is about our traffic).
        assert_eq!(
            cat(
                Stage::Rcpt,
                "451 VS1-IP Excessive unknown recipients - possible Open Relay (#4.1.8)"
            ),
            ReputationBlock
        );
        // Text beats a misleading enhanced code, both ways.
        assert_eq!(
            cat(Stage::Rcpt, "550 5.7.1 No such user!"),
            InvalidRecipient
        );
        assert_eq!(
            cat(
                Stage::Rcpt,
                "552 5.1.1 <x@example.com> recipient rejected - extended quota violation"
            ),
            MailboxFull
        );
        // Enhanced fallback when the text says nothing clear.
        assert_eq!(cat(Stage::Rcpt, "550 5.1.1 Rejected"), InvalidRecipient);
        assert_eq!(cat(Stage::Rcpt, "550 5.7.1 Rejected"), PolicyOther);
        // A recipient-mailbox code at MAIL FROM is about our sender.
        assert_eq!(cat(Stage::Mail, "550 5.1.1 Rejected"), SenderRejected);
        // Class fallback.
        assert_eq!(cat(Stage::Rcpt, "550 Go away"), Unknown);
        assert_eq!(cat(Stage::Rcpt, "450 Go away"), Unknown);
    }

    #[test]
    fn no_reply_outcomes() {
        use Category::*;
        assert_eq!(cat(Stage::Dns, "NXDOMAIN"), InvalidDomain);
        assert_eq!(cat(Stage::Dns, "null MX (RFC 7505)"), InvalidDomain);
        assert_eq!(cat(Stage::Dns, "SERVFAIL"), Dns);
        assert_eq!(cat(Stage::Dns, "timeout"), Dns);
        assert_eq!(cat(Stage::Dns, "no MX or address records"), Dns);
        assert_eq!(cat(Stage::Connect, "connection refused"), Connection);
        assert_eq!(cat(Stage::Connect, "timeout"), Timeout);
        assert_eq!(cat(Stage::Tls, "handshake failed: bad certificate"), Tls);
        assert_eq!(cat(Stage::Data, "connection reset by peer"), Connection);
        let p = CategoryPolicy::default();
        assert!(p.decide(Category::InvalidDomain, None).suppress);
        assert!(!p.decide(Category::Dns, None).suppress);
    }

    #[test]
    fn overrides_replace_add_and_name_bad_rules() {
        // Replace: the embedded `mailbox.invalid` rule now says mailbox_disabled.
        let replaced = Classifier::with_overrides(
            r#"
            [[rule]]
            name = "mailbox.invalid"
            category = "mailbox_disabled"
            group = "mailbox"
            stages = ["rcpt"]
            text = 'user unknown'
            "#,
        );
        let Ok(replaced) = replaced else {
            panic!("{replaced:?}")
        };
        let c = classify_line(&replaced, Stage::Rcpt, "550 User unknown");
        assert_eq!(c.category, Category::MailboxDisabled);
        assert_eq!(c.rule, "mailbox.invalid");
        assert_eq!(
            replaced.rule_names().count(),
            Classifier::default().rule_names().count()
        );

        // Add: a new rule wins over embedded rules of its group.
        let added = Classifier::with_overrides(
            r#"
            [[rule]]
            name = "acme.soft"
            category = "mailbox_full"
            group = "mailbox"
            codes = "55x"
            enhanced = ["5.1.1"]
            text = 'acme-overflow'
            "#,
        );
        let Ok(added) = added else {
            panic!("{added:?}")
        };
        let c = classify_line(&added, Stage::Rcpt, "550 5.1.1 user unknown acme-overflow");
        assert_eq!(
            (c.category, c.rule.as_str()),
            (Category::MailboxFull, "acme.soft")
        );
        // Everything else is untouched.
        assert_eq!(
            classify_line(&added, Stage::Rcpt, "550 5.1.1 user unknown").category,
            Category::InvalidRecipient
        );

        let bad = |toml: &str| Classifier::with_overrides(toml).map(|_| ()).err();
        let rule = |field: &str| {
            format!(
                "[[rule]]\nname = \"op.bad\"\ncategory = \"spam_block\"\ngroup = \"block\"\n{field}\n"
            )
        };
        for field in [
            "text = '(unclosed'",
            "codes = \"6xx\"",
            "codes = \"55\"",
            "enhanced = \"5.1\"",
            "enhanced = \"9.1.1\"",
            "stages = [\"helo-ish\"]",
            "colour = \"red\"",
        ] {
            let err = bad(&rule(field));
            assert_eq!(
                err.as_ref().map(|e| e.rule.as_str()),
                Some("op.bad"),
                "{field}: {err:?}"
            );
        }
        let err = bad("[[rule]]\nname = \"op.cat\"\ncategory = \"nope\"\ngroup = \"block\"\n");
        assert_eq!(err.map(|e| e.rule), Some("op.cat".to_string()));
        let err = bad("[[rule]]\nname = \"op.del\"\ncategory = \"delivered\"\ngroup = \"block\"\n");
        assert_eq!(err.map(|e| e.rule), Some("op.del".to_string()));
        let err = bad("[[rule]]\nname = \"op.grp\"\ncategory = \"unknown\"\ngroup = \"first\"\n");
        assert_eq!(err.map(|e| e.rule), Some("op.grp".to_string()));
        let err = bad("[[rule]]\ncategory = \"unknown\"\ngroup = \"block\"\n");
        assert_eq!(err.map(|e| e.rule), Some("#1".to_string()));
        let err = bad("[[rule]\n");
        assert_eq!(err.map(|e| e.rule), Some("(toml)".to_string()));
        let dup = "[[rule]]\nname = \"d\"\ncategory = \"unknown\"\ngroup = \"block\"\n";
        let err = bad(&format!("{dup}{dup}"));
        assert_eq!(err.map(|e| e.rule), Some("d".to_string()));
        // A replaced embedded rule is checked like a new one.
        let err = bad(
            "[[rule]]\nname = \"mailbox.invalid\"\ncategory = \"unknown\"\ngroup = \"mailbox\"\ntext = '(x'\n",
        );
        assert_eq!(err.map(|e| e.rule), Some("mailbox.invalid".to_string()));
        // An empty override file is the embedded set.
        assert!(Classifier::with_overrides("").is_ok());
    }

    #[test]
    fn explain_lists_all_matches() {
        let c = Classifier::default();
        let (code, enhanced, text) =
            parse_reply_line("550 5.7.1 <x@example.org>: Recipient address rejected: User unknown");
        let e = c.explain(
            &ReplyContext {
                stage: Stage::Rcpt,
                code,
                enhanced,
                text,
            },
            &CategoryPolicy::default(),
        );
        assert_eq!(e.classification.category, Category::InvalidRecipient);
        assert_eq!(e.matched.first(), Some(&e.classification.rule));
        assert!(
            e.matched.len() >= 2,
            "the 5.7.* fallback also matched: {e:?}"
        );
        assert_eq!(e.decision.outcome, Outcome::Bounced);
        assert!(e.decision.suppress);
    }

    #[test]
    fn two_xx_and_odd_codes_are_fixed() {
        assert_eq!(
            cat(Stage::Rcpt, "250 2.1.5 user unknown"),
            Category::Delivered
        );
        assert_eq!(cat(Stage::Data, "354 go ahead"), Category::Protocol);
        assert_eq!(
            Classifier::default()
                .classify(&ReplyContext {
                    stage: Stage::Rcpt,
                    code: Some(999),
                    enhanced: None,
                    text: ""
                })
                .category,
            Category::Protocol
        );
    }

    mod totality {
        use proptest::prelude::*;

        use super::*;

        fn stage() -> impl Strategy<Value = Stage> {
            (0..Stage::ALL.len()).prop_map(|i| Stage::ALL[i])
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn total_and_safe(
                st in stage(),
                code in proptest::option::of(0u16..1000),
                enhanced in proptest::option::of("[0-9x.#]{0,8}"),
                text in "\\PC{0,200}",
                words in proptest::collection::vec(
                    prop_oneof![
                        Just("user unknown"), Just("no such user"), Just("5.1.1"),
                        Just("#5.1.1"), Just("NXDOMAIN"), Just("sender"), Just("spamhaus"),
                        Just("quota"), Just("rate"), Just("timeout"), Just("mailbox unavailable"),
                    ],
                    0..4,
                ),
            ) {
                let c = Classifier::default();
                let text = format!("{text} {}", words.join(" "));
                let ctx = ReplyContext { stage: st, code, enhanced: enhanced.as_deref(), text: &text };
                let got = c.classify(&ctx);
                prop_assert!(!got.rule.is_empty());
                let d = CategoryPolicy::default().decide(got.category, code);
                match code.map(|c| c / 100) {
                    Some(2) => prop_assert_eq!(got.category, Category::Delivered),
                    Some(4) => {
                        prop_assert!(!d.suppress);
                        prop_assert_eq!(d.outcome, Outcome::Deferred);
                    }
                    _ => {}
                }
                if d.suppress {
                    prop_assert!(matches!(
                        got.category,
                        Category::InvalidRecipient | Category::InvalidDomain | Category::RecipientMoved
                    ));
                }
                // Sender-side stages never suppress a recipient.
                if matches!(st, Stage::Mail | Stage::Greeting | Stage::Ehlo | Stage::Connect | Stage::Tls | Stage::Queue) {
                    prop_assert!(!d.suppress, "{:?} at {:?}", got, st);
                }
            }
        }
    }
}
