//! Content filters of the gateway: a tenant's (and the platform's) block
//! rules and PII detection, applied to input before any provider sees it and
//! to output before it is stored or returned.
//!
//! A blocked text reports the rule's name, and findings report a kind and a
//! count: neither ever carries the text that matched.
//!
//! Redaction picks, among the matches of the kinds in `redact` mode, the
//! leftmost, then the longest, and drops any match overlapping one already
//! picked, so no placeholder lands inside another. Each kind in `log` mode
//! counts its own matches, whether or not another kind redacted them.

mod pii;
mod stream;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

pub use pii::PiiKind;
pub use stream::{Finished, StreamFilter};

use pii::Detector;

/// Block rules per settings (a tenant's, or the platform's).
pub const MAX_RULES: usize = 100;
/// A rule name's longest length, in characters of `a-z0-9_-`.
pub const MAX_NAME_LEN: usize = 64;
/// A block pattern's longest source, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1000;
/// The most one block pattern may compile to (`RegexBuilder::size_limit`).
/// A Unicode class costs about 50 KB each time it is repeated (`\w{10}` is
/// about 490 KiB), an ASCII one about 100 bytes (`[a-z]{100}` is 7 KiB).
pub const RULE_SIZE_LIMIT: usize = 512 * 1024;
/// The most one settings' block patterns may compile to together, as one
/// `RegexSet` (`RegexSetBuilder::size_limit`); the rules compiled one by one
/// take about as much again.
pub const RULES_SIZE_LIMIT: usize = 1024 * 1024;
/// The lazy DFA's cache per search of the rule set
/// (`RegexSetBuilder::dfa_size_limit`); when full, the search falls back to
/// a slower engine, never to a wrong answer.
pub const RULES_DFA_SIZE_LIMIT: usize = 1024 * 1024;
/// The lazy DFA's cache per search of one rule, used only to place a
/// streamed match.
const RULE_DFA_SIZE_LIMIT: usize = 256 * 1024;
/// Regex assertions (`\b`, `$`, `(?m)^`…) look at most one character beyond
/// a match: the bytes a stream holds back past the longest match.
const LOOK_AROUND: usize = 4;

/// Which text a filter applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// A task's input, before any provider sees it.
    Input,
    /// A provider's answer, before it is stored or returned.
    Output,
}

impl Direction {
    fn both() -> BTreeSet<Direction> {
        BTreeSet::from([Direction::Input, Direction::Output])
    }
}

/// What happens to text in which a PII kind is found. Ordered from the
/// mildest to the strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Passed on unchanged; the kind and count are reported.
    Log,
    /// Each match replaced by the kind's placeholder, such as `[EMAIL]`.
    Redact,
    /// The whole text refused, naming `pii:<kind>`.
    Block,
}

/// A set whose items may not repeat (what its schema's `uniqueItems`
/// says), refused rather than merged.
fn unique<'de, D, T>(d: D) -> Result<BTreeSet<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Ord,
{
    let items = Vec::<T>::deserialize(d)?;
    let listed = items.len();
    let set: BTreeSet<T> = items.into_iter().collect();
    if set.len() != listed {
        return Err(serde::de::Error::custom("items must not repeat"));
    }
    Ok(set)
}

/// PII detection: the kinds to look for, and what to do when one is found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PiiSettings {
    pub mode: Mode,
    #[serde(default, deserialize_with = "unique")]
    pub kinds: BTreeSet<PiiKind>,
}

/// A rule that blocks any text its pattern (Rust `regex` syntax) matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockRule {
    /// 1–64 characters of `a-z0-9_-`, unique in the list: what a blocked
    /// text reports.
    pub name: String,
    /// At most 1,000 bytes.
    pub pattern: String,
}

/// Filter settings as stored and as requested (the `filters` section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii: Option<PiiSettings>,
    /// At most 100 rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block: Vec<BlockRule>,
    /// Both when left out.
    #[serde(default = "Direction::both", deserialize_with = "unique")]
    pub apply_to: BTreeSet<Direction>,
}

impl Default for FilterSettings {
    fn default() -> Self {
        FilterSettings {
            pii: None,
            block: Vec::new(),
            apply_to: Direction::both(),
        }
    }
}

/// Settings that cannot be compiled, naming the field (for a 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("filters.block has {count} rules; at most {MAX_RULES} are allowed")]
    TooManyRules { count: usize },
    #[error(
        "filters.block[{index}].name must be 1 to {MAX_NAME_LEN} characters of a-z, 0-9, _ and -"
    )]
    BadName { index: usize },
    #[error("filters.block[{index}].name repeats filters.block[{first}].name")]
    DuplicateName { index: usize, first: usize },
    #[error("filters.block[{index}].pattern is longer than {MAX_PATTERN_BYTES} bytes")]
    PatternTooLong { index: usize },
    #[error("filters.block[{index}].pattern is not a valid regular expression: {reason}")]
    BadPattern { index: usize, reason: String },
    #[error("filters.block[{index}].pattern matches empty text, so it would block everything")]
    MatchesEmpty { index: usize },
    #[error(
        "filters.block[{index}].pattern compiles to more than {RULE_SIZE_LIMIT} bytes (a Unicode \
         class such as \\w costs about 50 KB each time it repeats; ASCII ones, such as \
         [A-Za-z0-9_], about 100 bytes)"
    )]
    PatternTooBig { index: usize },
    #[error("filters.block's patterns together compile to more than {RULES_SIZE_LIMIT} bytes")]
    RulesTooBig,
    /// In the platform's settings, as `Filters::combine` found it.
    #[error("platform {0}")]
    Platform(Box<FilterError>),
    /// The built-in PII detectors did not compile: a bug (a test compiles them).
    #[error("filters.pii: the PII detectors did not compile: {0}")]
    Detectors(String),
}

impl FilterError {
    /// The settings field the error is about, such as `filters.block[3].pattern`
    /// (`platform.filters…` in the platform's settings).
    pub fn field(&self) -> String {
        match self {
            FilterError::TooManyRules { .. } | FilterError::RulesTooBig => "filters.block".into(),
            FilterError::BadName { index } | FilterError::DuplicateName { index, .. } => {
                format!("filters.block[{index}].name")
            }
            FilterError::PatternTooLong { index }
            | FilterError::BadPattern { index, .. }
            | FilterError::MatchesEmpty { index }
            | FilterError::PatternTooBig { index } => format!("filters.block[{index}].pattern"),
            FilterError::Platform(inner) => format!("platform.{}", inner.field()),
            FilterError::Detectors(_) => "filters.pii".into(),
        }
    }
}

/// A text refused by a filter, naming the rule (`pii:<kind>` for PII), never
/// what matched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blocked by content filter {rule}")]
pub struct Blocked {
    pub rule: String,
}

/// How often a PII kind was found (or, in `redact` mode, replaced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `pii:<kind>`.
    pub what: String,
    pub count: u32,
    pub mode: Mode,
}

/// The outcome of filtering a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'t> {
    /// The text to pass on (redacted, or borrowed unchanged) and what was found.
    Pass {
        text: Cow<'t, str>,
        findings: Vec<Finding>,
    },
    Blocked(Blocked),
}

/// Compiled filters, built once per settings and cached by the caller;
/// cheap to clone. Each direction has its own: a settings' rules and PII
/// kinds apply only in the directions its `apply_to` names.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    input: Arc<Compiled>,
    output: Arc<Compiled>,
}

#[derive(Debug, Default)]
struct Compiled {
    /// The platform's rules, then the tenant's.
    rule_sets: Vec<RuleSet>,
    /// The configured PII kinds, in `PiiKind::ALL` order.
    pii: Vec<(&'static Detector, Mode)>,
    /// The bytes a stream holds back: the longest match plus `LOOK_AROUND`;
    /// `None` when some rule's match has no longest length.
    hold: Option<usize>,
}

/// One settings' block rules: one `RegexSet` to tell whether and which rules
/// match, and each rule alone to place a match in a stream.
#[derive(Debug, Clone)]
struct RuleSet {
    set: RegexSet,
    rules: Vec<CompiledRule>,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    name: String,
    regex: Regex,
    max_len: Option<usize>,
}

/// Per-kind counts, indexed by `PiiKind::index`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts([u32; PiiKind::ALL.len()]);

impl Counts {
    fn add(&mut self, kind: PiiKind) {
        let count = &mut self.0[kind.index()];
        *count = count.saturating_add(1);
    }

    fn merge(&mut self, other: Counts) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine = mine.saturating_add(theirs);
        }
    }
}

/// What a scan of `hay[start..]` decided: no match found later can reach
/// into `hay[start..cut]`.
struct Decided<'h> {
    cut: usize,
    /// `hay[start..cut]`, redacted.
    text: Cow<'h, str>,
    /// What was found in `hay[start..cut]`.
    counts: Counts,
}

fn is_rule_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// One settings' block rules, checked and compiled; names get `prefix`.
fn compile_rules(rules: &[BlockRule], prefix: &str) -> Result<Option<RuleSet>, FilterError> {
    if rules.len() > MAX_RULES {
        return Err(FilterError::TooManyRules { count: rules.len() });
    }
    if rules.is_empty() {
        return Ok(None);
    }
    let mut first_by_name = BTreeMap::new();
    let mut compiled = Vec::with_capacity(rules.len());
    for (index, rule) in rules.iter().enumerate() {
        if !is_rule_name(&rule.name) {
            return Err(FilterError::BadName { index });
        }
        if let Some(&first) = first_by_name.get(rule.name.as_str()) {
            return Err(FilterError::DuplicateName { index, first });
        }
        first_by_name.insert(rule.name.as_str(), index);
        compiled.push(compile_rule(index, rule, prefix)?);
    }
    let set = RegexSetBuilder::new(rules.iter().map(|rule| &rule.pattern))
        .size_limit(RULES_SIZE_LIMIT)
        .dfa_size_limit(RULES_DFA_SIZE_LIMIT)
        .build()
        // each pattern compiled alone above, so only the size can fail here
        .map_err(|_| FilterError::RulesTooBig)?;
    Ok(Some(RuleSet {
        set,
        rules: compiled,
    }))
}

fn compile_rule(index: usize, rule: &BlockRule, prefix: &str) -> Result<CompiledRule, FilterError> {
    if rule.pattern.len() > MAX_PATTERN_BYTES {
        return Err(FilterError::PatternTooLong { index });
    }
    // The regex crate parses with the same defaults, so this is its pattern.
    let hir = regex_syntax::parse(&rule.pattern).map_err(|error| FilterError::BadPattern {
        index,
        reason: error.to_string(),
    })?;
    if hir.properties().minimum_len() == Some(0) {
        return Err(FilterError::MatchesEmpty { index });
    }
    let regex = RegexBuilder::new(&rule.pattern)
        .size_limit(RULE_SIZE_LIMIT)
        .dfa_size_limit(RULE_DFA_SIZE_LIMIT)
        .build()
        .map_err(|error| match error {
            regex::Error::CompiledTooBig(_) => FilterError::PatternTooBig { index },
            other => FilterError::BadPattern {
                index,
                reason: other.to_string(),
            },
        })?;
    Ok(CompiledRule {
        name: format!("{prefix}{}", rule.name),
        regex,
        max_len: hir.properties().maximum_len(),
    })
}

/// Each configured kind with its strictest mode across `settings`.
fn pii_modes<'s>(
    settings: impl IntoIterator<Item = &'s FilterSettings>,
) -> BTreeMap<PiiKind, Mode> {
    let mut modes = BTreeMap::new();
    for pii in settings.into_iter().filter_map(|s| s.pii.as_ref()) {
        for &kind in &pii.kinds {
            let mode = modes.entry(kind).or_insert(pii.mode);
            *mode = (*mode).max(pii.mode);
        }
    }
    modes
}

impl Filters {
    /// One settings' filters; an error names the field at fault.
    pub fn compile(settings: &FilterSettings) -> Result<Filters, FilterError> {
        let rules = compile_rules(&settings.block, "")?;
        Filters::build([(settings, rules)])
    }

    /// The filters that apply to a tenant: the platform's, which the tenant
    /// cannot turn off, with its own. Each applies in the directions its
    /// `apply_to` names; where both do, both lists of block rules apply
    /// (the platform's named `platform:<name>`) and each PII kind either
    /// names takes the strictest of their modes.
    pub fn combine(
        platform: &FilterSettings,
        tenant: &FilterSettings,
    ) -> Result<Filters, FilterError> {
        let platform_rules = compile_rules(&platform.block, "platform:")
            .map_err(|error| FilterError::Platform(Box::new(error)))?;
        let tenant_rules = compile_rules(&tenant.block, "")?;
        Filters::build([(platform, platform_rules), (tenant, tenant_rules)])
    }

    fn build<const N: usize>(
        layers: [(&FilterSettings, Option<RuleSet>); N],
    ) -> Result<Filters, FilterError> {
        let direction = |direction: Direction| {
            let applying: Vec<&(&FilterSettings, Option<RuleSet>)> = layers
                .iter()
                .filter(|(settings, _)| settings.apply_to.contains(&direction))
                .collect();
            Compiled::build(
                applying
                    .iter()
                    .filter_map(|(_, rules)| rules.clone())
                    .collect(),
                pii_modes(applying.iter().map(|(settings, _)| *settings)),
            )
        };
        Ok(Filters {
            input: Arc::new(direction(Direction::Input)?),
            output: Arc::new(direction(Direction::Output)?),
        })
    }

    fn compiled(&self, direction: Direction) -> &Arc<Compiled> {
        match direction {
            Direction::Input => &self.input,
            Direction::Output => &self.output,
        }
    }

    /// No rule and no PII kind in either direction: every text passes unchanged.
    pub fn is_empty(&self) -> bool {
        self.input.is_empty() && self.output.is_empty()
    }

    /// Whether text going in `direction` is filtered at all.
    pub fn applies_to(&self, direction: Direction) -> bool {
        !self.compiled(direction).is_empty()
    }

    /// The bytes a `StreamFilter` for `direction` holds back before it can
    /// pass text on; `None` when it must hold the whole answer (a block
    /// rule's match has no longest length, such as `password\s*=`).
    pub fn stream_hold(&self, direction: Direction) -> Option<usize> {
        self.compiled(direction).hold
    }

    /// Filters `text` going in `direction`. Block rules are tried first
    /// (the platform's, then the tenant's, each in its listed order), then
    /// PII kinds in `block` mode; the first that matches is the one named.
    pub fn apply<'t>(&self, direction: Direction, text: &'t str) -> Verdict<'t> {
        let compiled = self.compiled(direction);
        if compiled.is_empty() {
            return Verdict::Pass {
                text: Cow::Borrowed(text),
                findings: Vec::new(),
            };
        }
        match compiled.scan(text, 0, true) {
            Ok(decided) => Verdict::Pass {
                text: decided.text,
                findings: compiled.findings(decided.counts),
            },
            Err(blocked) => Verdict::Blocked(blocked),
        }
    }

    /// A filter for text going in `direction` that arrives in chunks.
    pub fn stream(&self, direction: Direction) -> StreamFilter {
        let compiled = self.compiled(direction);
        StreamFilter::new(compiled.clone(), !compiled.is_empty())
    }
}

impl Compiled {
    fn build(
        rule_sets: Vec<RuleSet>,
        modes: BTreeMap<PiiKind, Mode>,
    ) -> Result<Compiled, FilterError> {
        let pii = modes
            .into_iter()
            .map(|(kind, mode)| pii::detector(kind).map(|detector| (detector, mode)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(FilterError::Detectors)?;
        let rule_lens = rule_sets
            .iter()
            .flat_map(|set| &set.rules)
            .map(|rule| rule.max_len);
        let pii_lens = pii.iter().map(|(detector, _)| Some(detector.max_len));
        let longest = rule_lens
            .chain(pii_lens)
            .try_fold(0, |longest, len| len.map(|len| longest.max(len)));
        Ok(Compiled {
            rule_sets,
            pii,
            hold: longest.map(|len| len + LOOK_AROUND),
        })
    }

    /// No rule and no PII kind: every text passes unchanged.
    fn is_empty(&self) -> bool {
        self.rule_sets.is_empty() && self.pii.is_empty()
    }

    /// Neither a rule nor a PII kind can block or change text.
    fn only_logs(&self) -> bool {
        self.rule_sets.is_empty() && self.pii.iter().all(|&(_, mode)| mode == Mode::Log)
    }

    fn findings(&self, counts: Counts) -> Vec<Finding> {
        self.pii
            .iter()
            .filter(|(detector, _)| counts.0[detector.kind.index()] > 0)
            .map(|&(detector, mode)| Finding {
                what: detector.kind.rule_name().to_owned(),
                count: counts.0[detector.kind.index()],
                mode,
            })
            .collect()
    }

    /// Decides as much of `hay[start..]` as can be: all of it when `hay` is
    /// the complete text, else the part that no match starting within
    /// `hold` bytes of the end can reach into (none when `hold` is unbounded).
    /// `hay[..start]` is context (already decided), for look-behind.
    ///
    /// A candidate that starts its detector's longest match plus one
    /// character before the end of `hay` is the candidate the complete text
    /// has there, and a rule's match that ends a character before the end is
    /// a match in the complete text. The scan acts only on those, and cuts
    /// outside every candidate, so a stream's scans put together give what one
    /// scan of the complete text gives.
    fn scan<'h>(&self, hay: &'h str, start: usize, complete: bool) -> Result<Decided<'h>, Blocked> {
        let end = hay.len();
        let horizon = match (complete, self.hold) {
            (true, _) => end,
            (false, None) => start,
            (false, Some(hold)) => hay.floor_char_boundary(end.saturating_sub(hold)).max(start),
        };

        for rule_set in &self.rule_sets {
            for index in rule_set.set.matches_at(hay, start).iter() {
                let Some(rule) = rule_set.rules.get(index) else {
                    continue;
                };
                let found = complete
                    || rule
                        .regex
                        .find_at(hay, start)
                        .is_some_and(|found| found.end() + LOOK_AROUND <= end);
                if found {
                    return Err(Blocked {
                        rule: rule.name.clone(),
                    });
                }
            }
        }

        let mut candidates: Vec<Range<usize>> = Vec::new();
        let mut accepted: Vec<(Range<usize>, PiiKind, Mode)> = Vec::new();
        for &(detector, mode) in &self.pii {
            let mut at = start;
            let settled = |at: usize| complete || at + detector.max_len + LOOK_AROUND <= end;
            while let Some(candidate) = detector.find_at(hay, at) {
                if !settled(candidate.raw.start) {
                    break;
                }
                if let Some(span) = candidate.accepted {
                    if mode == Mode::Block {
                        return Err(Blocked {
                            rule: detector.kind.rule_name().to_owned(),
                        });
                    }
                    accepted.push((span, detector.kind, mode));
                }
                // candidates are never empty, so this moves on
                at = candidate.raw.end;
                candidates.push(candidate.raw);
            }
        }

        let cut = cut_outside(horizon, &mut candidates);
        let mut counts = Counts::default();
        let mut redactions: Vec<(Range<usize>, PiiKind)> = Vec::new();
        for (span, kind, mode) in accepted {
            if span.start >= cut {
                continue;
            }
            match mode {
                Mode::Log => counts.add(kind),
                Mode::Redact | Mode::Block => redactions.push((span, kind)),
            }
        }
        // leftmost, then longest, then the kind listed first
        redactions.sort_by(|(a, a_kind), (b, b_kind)| {
            (a.start, b.end, a_kind).cmp(&(b.start, a.end, b_kind))
        });
        let mut text = String::new();
        let mut copied = start;
        for (span, kind) in redactions {
            if span.start < copied {
                continue;
            }
            text.push_str(&hay[copied..span.start]);
            text.push_str(kind.placeholder());
            copied = span.end;
            counts.add(kind);
        }
        let text = if copied == start {
            Cow::Borrowed(&hay[start..cut])
        } else {
            text.push_str(&hay[copied..cut]);
            Cow::Owned(text)
        };
        Ok(Decided { cut, text, counts })
    }
}

/// The last position at or before `horizon` that no candidate straddles.
/// Candidates that overlap form runs; a cut inside a run moves to its start.
fn cut_outside(horizon: usize, candidates: &mut [Range<usize>]) -> usize {
    candidates.sort_by_key(|span| span.start);
    let mut run: Option<Range<usize>> = None;
    for span in candidates.iter() {
        if span.start >= horizon {
            break;
        }
        run = match run {
            Some(run) if span.start < run.end => Some(run.start..run.end.max(span.end)),
            _ => Some(span.clone()),
        };
    }
    match run {
        Some(run) if run.start < horizon && horizon < run.end => run.start,
        _ => horizon,
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Input => "input",
            Direction::Output => "output",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> FilterSettings {
        serde_json::from_str(json).unwrap()
    }

    fn compile(json: &str) -> Filters {
        Filters::compile(&parse(json)).unwrap()
    }

    fn rules(rules: &[(&str, &str)]) -> FilterSettings {
        FilterSettings {
            block: rules
                .iter()
                .map(|&(name, pattern)| BlockRule {
                    name: name.into(),
                    pattern: pattern.into(),
                })
                .collect(),
            ..FilterSettings::default()
        }
    }

    fn passed(verdict: Verdict<'_>) -> (String, Vec<Finding>) {
        match verdict {
            Verdict::Pass { text, findings } => (text.into_owned(), findings),
            Verdict::Blocked(blocked) => panic!("blocked by {}", blocked.rule),
        }
    }

    fn finding(what: &str, count: u32, mode: Mode) -> Finding {
        Finding {
            what: what.into(),
            count,
            mode,
        }
    }

    const ISSUE_EXAMPLE: &str = r#"{
        "pii": {"mode": "redact", "kinds": ["email", "phone", "card", "iban", "ssn", "ip"]},
        "block": [{"name": "no-secrets", "pattern": "(?i)password\\s*="}],
        "apply_to": ["input", "output"]}"#;

    #[test]
    fn the_issue_example_parses_and_round_trips() {
        let settings = parse(ISSUE_EXAMPLE);
        assert_eq!(settings.pii.as_ref().unwrap().kinds.len(), 6);
        assert_eq!(settings.block[0].name, "no-secrets");
        let json = serde_json::to_string(&settings).unwrap();
        assert_eq!(
            serde_json::from_str::<FilterSettings>(&json).unwrap(),
            settings
        );
        Filters::compile(&settings).unwrap();
    }

    #[test]
    fn settings_reject_unknown_fields_and_values_and_default_to_both_directions() {
        let settings = parse(r#"{"block": []}"#);
        assert_eq!(settings.apply_to, Direction::both());
        assert_eq!(settings, FilterSettings::default());
        for bad in [
            r#"{"blocks": []}"#,
            r#"{"pii": {"mode": "redact", "kinds": ["passport"]}}"#,
            r#"{"pii": {"mode": "mask", "kinds": []}}"#,
            r#"{"pii": {"mode": "log", "kinds": [], "extra": 1}}"#,
            r#"{"block": [{"name": "a", "pattern": "b", "flags": "i"}]}"#,
            r#"{"apply_to": ["both"]}"#,
        ] {
            assert!(
                serde_json::from_str::<FilterSettings>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn redact_replaces_each_kind_with_its_placeholder_and_counts_it() {
        let filters = compile(ISSUE_EXAMPLE);
        let text = "Mail jane@example.com or bob@example.org, call +1 555 123 4567, \
                    card 4111 1111 1111 1111, IBAN DE44 5001 0517 5407 3249 31, \
                    SSN 123-45-6789, from 192.168.0.1 and 2001:db8::1.";
        let (redacted, findings) = passed(filters.apply(Direction::Input, text));
        assert_eq!(
            redacted,
            "Mail [EMAIL] or [EMAIL], call [PHONE], card [CARD], IBAN [IBAN], SSN [SSN], \
             from [IP] and [IP]."
        );
        assert_eq!(
            findings,
            [
                finding("pii:email", 2, Mode::Redact),
                finding("pii:phone", 1, Mode::Redact),
                finding("pii:card", 1, Mode::Redact),
                finding("pii:iban", 1, Mode::Redact),
                finding("pii:ssn", 1, Mode::Redact),
                finding("pii:ip", 2, Mode::Redact),
            ]
        );
    }

    #[test]
    fn near_misses_pass_unchanged_and_borrowed() {
        let filters = compile(ISSUE_EXAMPLE);
        let text = "card 4111 1111 1111 1112, IBAN DE45 5001 0517 5407 3249 31, \
                    SSN 000-12-3456, host 256.1.1.1, order 12345678901234567890, v1.2.3.4";
        let verdict = filters.apply(Direction::Output, text);
        let unchanged = Verdict::Pass {
            text: Cow::Borrowed(text),
            findings: Vec::new(),
        };
        assert_eq!(verdict, unchanged);
        assert!(
            matches!(
                verdict,
                Verdict::Pass {
                    text: Cow::Borrowed(_),
                    ..
                }
            ),
            "{verdict:?}"
        );
    }

    #[test]
    fn log_passes_the_text_unchanged_and_reports_counts_only() {
        let filters = compile(r#"{"pii": {"mode": "log", "kinds": ["email", "ssn"]}}"#);
        let text = "a@example.com, b@example.com, 123-45-6789";
        let verdict = filters.apply(Direction::Output, text);
        let Verdict::Pass {
            text: out,
            findings,
        } = &verdict
        else {
            panic!("{verdict:?}");
        };
        assert!(matches!(out, Cow::Borrowed(t) if *t == text));
        assert_eq!(
            findings,
            &[
                finding("pii:email", 2, Mode::Log),
                finding("pii:ssn", 1, Mode::Log)
            ]
        );
        let shown = format!("{findings:?} {}", serde_json::to_string(findings).unwrap());
        assert!(
            !shown.contains("example") && !shown.contains("6789"),
            "{shown}"
        );
    }

    #[test]
    fn block_mode_names_the_kind_and_never_the_text() {
        let filters = compile(r#"{"pii": {"mode": "block", "kinds": ["email", "card"]}}"#);
        let verdict = filters.apply(
            Direction::Input,
            "card 4111111111111111 of jane@example.com",
        );
        assert_eq!(
            verdict,
            Verdict::Blocked(Blocked {
                rule: "pii:email".into()
            })
        );
        let shown = format!(
            "{verdict:?} {}",
            Blocked {
                rule: "pii:email".into()
            }
        );
        assert!(
            !shown.contains("jane") && !shown.contains("4111"),
            "{shown}"
        );
        assert!(matches!(
            filters.apply(Direction::Input, "card 4111111111111111"),
            Verdict::Blocked(Blocked { rule }) if rule == "pii:card"
        ));
    }

    #[test]
    fn block_rules_always_block_and_name_the_rule_not_the_text() {
        let filters = compile(ISSUE_EXAMPLE);
        let verdict = filters.apply(
            Direction::Input,
            "my Password = hunter2, mail jane@example.com",
        );
        assert_eq!(
            verdict,
            Verdict::Blocked(Blocked {
                rule: "no-secrets".into()
            })
        );
        assert!(!format!("{verdict:?}").contains("hunter2"));
        // log-only PII does not soften a block rule
        let filters = Filters::compile(&FilterSettings {
            pii: Some(PiiSettings {
                mode: Mode::Log,
                kinds: BTreeSet::from([PiiKind::Email]),
            }),
            ..rules(&[("first", "never-matches-[0-9]"), ("second", "(?i)token:")])
        })
        .unwrap();
        assert!(matches!(
            filters.apply(Direction::Output, "TOKEN: abc"),
            Verdict::Blocked(Blocked { rule }) if rule == "second"
        ));
        // the first rule in list order is the one named
        let filters = Filters::compile(&rules(&[("b-rule", "b"), ("a-rule", "a")])).unwrap();
        assert!(matches!(
            filters.apply(Direction::Output, "a b"),
            Verdict::Blocked(Blocked { rule }) if rule == "b-rule"
        ));
    }

    #[test]
    fn directions_are_filtered_only_where_configured() {
        let filters =
            compile(r#"{"pii": {"mode": "redact", "kinds": ["email"]}, "apply_to": ["output"]}"#);
        assert!(!filters.applies_to(Direction::Input));
        assert!(filters.applies_to(Direction::Output));
        let text = "jane@example.com";
        assert!(matches!(
            filters.apply(Direction::Input, text),
            Verdict::Pass {
                text: Cow::Borrowed(_),
                ..
            }
        ));
        assert_eq!(passed(filters.apply(Direction::Output, text)).0, "[EMAIL]");
    }

    #[test]
    fn empty_settings_filter_nothing() {
        let filters = Filters::compile(&FilterSettings::default()).unwrap();
        assert!(filters.is_empty());
        assert!(!filters.applies_to(Direction::Input));
        assert!(Filters::default().is_empty());
        let filters = compile(r#"{"pii": {"mode": "block", "kinds": []}}"#);
        assert!(filters.is_empty());
        assert!(!compile(r#"{"pii": {"mode": "log", "kinds": ["ip"]}}"#).is_empty());
    }

    #[test]
    fn overlapping_matches_redact_leftmost_longest_without_nesting() {
        let filters = compile(
            r#"{"pii": {"mode": "redact",
                        "kinds": ["email", "phone", "card", "iban", "ssn", "ip"]}}"#,
        );
        // a phone number inside an e-mail address: the address is redacted whole
        assert_eq!(
            passed(filters.apply(Direction::Output, "to john.555-123-4567@example.com now")).0,
            "to [EMAIL] now"
        );
        // an IPv4 address embedded in an IPv6 one: one address
        let (text, findings) = passed(filters.apply(Direction::Output, "from ::ffff:192.0.2.1 on"));
        assert_eq!(text, "from [IP] on");
        assert_eq!(findings, [finding("pii:ip", 1, Mode::Redact)]);
        // adjacent matches each get a placeholder
        assert_eq!(
            passed(filters.apply(Direction::Output, "123-45-6789,192.168.0.1")).0,
            "[SSN],[IP]"
        );
    }

    #[test]
    fn a_logged_kind_is_counted_even_where_another_kind_is_redacted() {
        let platform = parse(r#"{"pii": {"mode": "log", "kinds": ["phone"]}}"#);
        let tenant = parse(r#"{"pii": {"mode": "redact", "kinds": ["email"]}}"#);
        let filters = Filters::combine(&platform, &tenant).unwrap();
        let (text, findings) =
            passed(filters.apply(Direction::Output, "john.555-123-4567@example.com"));
        assert_eq!(text, "[EMAIL]");
        assert_eq!(
            findings,
            [
                finding("pii:email", 1, Mode::Redact),
                finding("pii:phone", 1, Mode::Log)
            ]
        );
    }

    #[test]
    fn rule_names_are_checked() {
        let long = "a".repeat(MAX_NAME_LEN);
        assert!(Filters::compile(&rules(&[(&long, "x"), ("a_b-9", "y")])).is_ok());
        for bad in [
            "",
            "Upper",
            "a b",
            "é",
            "a:b",
            &"a".repeat(MAX_NAME_LEN + 1),
        ] {
            let error = Filters::compile(&rules(&[("ok", "x"), (bad, "y")])).unwrap_err();
            assert_eq!(error, FilterError::BadName { index: 1 }, "{bad:?}");
            assert_eq!(error.field(), "filters.block[1].name");
        }
        let error = Filters::compile(&rules(&[("a", "x"), ("b", "y"), ("a", "z")])).unwrap_err();
        assert_eq!(error, FilterError::DuplicateName { index: 2, first: 0 });
        assert_eq!(error.field(), "filters.block[2].name");
    }

    #[test]
    fn patterns_are_checked_and_name_the_rule() {
        let error =
            Filters::compile(&rules(&[("ok", "x"), ("big", r"\w{1000}{1000}")])).unwrap_err();
        assert_eq!(error, FilterError::PatternTooBig { index: 1 });
        assert_eq!(error.field(), "filters.block[1].pattern");

        let error = Filters::compile(&rules(&[("bad", "(unclosed")])).unwrap_err();
        assert!(
            matches!(error, FilterError::BadPattern { index: 0, .. }),
            "{error}"
        );
        assert_eq!(error.field(), "filters.block[0].pattern");
        assert!(
            error
                .to_string()
                .starts_with("filters.block[0].pattern is not a valid")
        );

        let error = Filters::compile(&rules(&[("long", &"a".repeat(1001))])).unwrap_err();
        assert_eq!(error, FilterError::PatternTooLong { index: 0 });
        assert!(Filters::compile(&rules(&[("long", &"a".repeat(1000))])).is_ok());

        for empty in ["a*", "x?", "(?:)", "^", r"\b"] {
            let error = Filters::compile(&rules(&[("empty", empty)])).unwrap_err();
            assert_eq!(error, FilterError::MatchesEmpty { index: 0 }, "{empty}");
        }
        // look-around is not supported by the regex crate
        assert!(matches!(
            Filters::compile(&rules(&[("look", "(?=a)b")])).unwrap_err(),
            FilterError::BadPattern { .. }
        ));
    }

    #[test]
    fn too_many_rules_or_too_much_compiled_is_refused_as_a_whole() {
        let names: Vec<String> = (0..=MAX_RULES).map(|i| format!("rule-{i}")).collect();
        let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "x")).collect();
        assert!(Filters::compile(&rules(&many[..MAX_RULES])).is_ok());
        let error = Filters::compile(&rules(&many)).unwrap_err();
        assert_eq!(error, FilterError::TooManyRules { count: 101 });
        assert_eq!(error.field(), "filters.block");

        // each alone fits RULE_SIZE_LIMIT, all together not RULES_SIZE_LIMIT
        let heavy: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), r"\w{10}")).collect();
        assert!(Filters::compile(&rules(&heavy[..2])).is_ok());
        let error = Filters::compile(&rules(&heavy[..3])).unwrap_err();
        assert_eq!(error, FilterError::RulesTooBig);
        assert_eq!(error.field(), "filters.block");
    }

    #[test]
    fn combine_keeps_the_platforms_rules_and_the_strictest_modes() {
        let platform = parse(
            r#"{"pii": {"mode": "redact", "kinds": ["email", "card"]},
                "block": [{"name": "no-secrets", "pattern": "secret-[0-9]+"}]}"#,
        );
        let tenant = parse(
            r#"{"pii": {"mode": "log", "kinds": ["email", "ip"]},
                "block": [{"name": "no-secrets", "pattern": "(?i)password"}]}"#,
        );
        let filters = Filters::combine(&platform, &tenant).unwrap();
        for direction in [Direction::Input, Direction::Output] {
            let compiled = filters.compiled(direction);
            let names: Vec<&str> = compiled
                .rule_sets
                .iter()
                .flat_map(|set| &set.rules)
                .map(|rule| rule.name.as_str())
                .collect();
            assert_eq!(names, ["platform:no-secrets", "no-secrets"]);
            let modes: Vec<(PiiKind, Mode)> = compiled
                .pii
                .iter()
                .map(|(detector, mode)| (detector.kind, *mode))
                .collect();
            assert_eq!(
                modes,
                [
                    (PiiKind::Email, Mode::Redact),
                    (PiiKind::Card, Mode::Redact),
                    (PiiKind::Ip, Mode::Log)
                ]
            );
        }
        assert_eq!(
            filters.apply(Direction::Output, "secret-42"),
            Verdict::Blocked(Blocked {
                rule: "platform:no-secrets".into()
            })
        );
        let (text, _) = passed(filters.apply(Direction::Output, "jane@example.com at 10.0.0.1"));
        assert_eq!(text, "[EMAIL] at 10.0.0.1");
    }

    #[test]
    fn a_repeated_kind_or_direction_is_refused_as_the_schema_says() {
        for repeated in [
            r#"{"pii": {"mode": "log", "kinds": ["ip", "ip"]}}"#,
            r#"{"apply_to": ["input", "input"]}"#,
        ] {
            assert!(
                serde_json::from_str::<FilterSettings>(repeated).is_err(),
                "{repeated}"
            );
        }
    }

    #[test]
    fn each_settings_applies_only_in_its_own_directions() {
        let platform = parse(
            r#"{"block": [{"name": "no-secrets", "pattern": "secret-[0-9]+"}],
                "apply_to": ["input"]}"#,
        );
        let tenant =
            parse(r#"{"pii": {"mode": "redact", "kinds": ["email"]}, "apply_to": ["output"]}"#);
        let filters = Filters::combine(&platform, &tenant).unwrap();
        assert!(matches!(
            filters.apply(Direction::Input, "secret-1"),
            Verdict::Blocked(_)
        ));
        let (text, _) = passed(filters.apply(Direction::Input, "jane@example.com"));
        assert_eq!(
            text, "jane@example.com",
            "the tenant's redaction is output only"
        );
        let (text, _) = passed(filters.apply(Direction::Output, "secret-1 jane@example.com"));
        assert_eq!(
            text, "secret-1 [EMAIL]",
            "the platform's rule is input only"
        );
        // No platform filters (the default settings apply both ways, but
        // hold nothing): the tenant's output-only filters stay output only.
        let alone = Filters::combine(&FilterSettings::default(), &tenant).unwrap();
        assert!(!alone.applies_to(Direction::Input));
        assert!(alone.applies_to(Direction::Output));
    }

    #[test]
    fn combine_names_whose_settings_are_at_fault() {
        let good = rules(&[("ok", "x")]);
        let bad = rules(&[("ok", "x"), ("broken", "(")]);
        let error = Filters::combine(&bad, &good).unwrap_err();
        let FilterError::Platform(inner) = &error else {
            panic!("{error:?}");
        };
        assert!(matches!(**inner, FilterError::BadPattern { index: 1, .. }));
        assert_eq!(error.field(), "platform.filters.block[1].pattern");
        assert!(
            error
                .to_string()
                .starts_with("platform filters.block[1].pattern")
        );
        let error = Filters::combine(&good, &bad).unwrap_err();
        assert_eq!(error.field(), "filters.block[1].pattern");
    }

    #[test]
    fn the_stream_hold_is_the_longest_match_plus_look_around() {
        let filters = Filters::compile(&rules(&[("a", "abc"), ("b", "[0-9]{1,20}")])).unwrap();
        assert_eq!(
            filters.stream_hold(Direction::Output),
            Some(20 + LOOK_AROUND)
        );
        let filters = compile(r#"{"pii": {"mode": "redact", "kinds": ["ssn"]}}"#);
        assert_eq!(
            filters.stream_hold(Direction::Output),
            Some(11 + LOOK_AROUND)
        );
        assert_eq!(compile(ISSUE_EXAMPLE).stream_hold(Direction::Output), None);
    }

    #[test]
    fn a_large_text_is_filtered_in_one_pass() {
        let filters = compile(
            r#"{"pii": {"mode": "redact", "kinds": ["email", "phone", "card", "iban", "ssn", "ip"]},
                "block": [{"name": "secret", "pattern": "secret-[0-9]{4}"}]}"#,
        );
        let unit =
            "mail jane@example.com or 555-123-4567 from 10.0.0.1 about 4111 1111 1111 1111; ";
        let count = 200 * 1024 / unit.len();
        let text = unit.repeat(count);
        let (redacted, findings) = passed(filters.apply(Direction::Output, &text));
        assert_eq!(
            redacted,
            "mail [EMAIL] or [PHONE] from [IP] about [CARD]; ".repeat(count)
        );
        assert!(findings.iter().all(|f| f.count as usize == count));
        let long_digits = "1".repeat(200 * 1024);
        assert!(matches!(
            filters.apply(Direction::Output, &long_digits),
            Verdict::Pass { .. }
        ));
    }
}
