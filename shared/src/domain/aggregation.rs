//! Combining call results into a task's answer: pure.
//!
//! Every succeeded call becomes a [`Candidate`] with a score; the strategy
//! then picks, groups, votes or merges:
//!
//! - **Score** (0 to 1): `completeness × (0.6 × quality + 0.4 × finish)`,
//!   where `quality` is the agent's registry quality when it answered (0.5
//!   if unknown), `finish` is 1 for an answer that stopped on its own and 0 for
//!   one cut off at its output cap (`truncated`), and `completeness` is 1
//!   for a complete answer, 0.3 for malformed JSON (an answer that looks
//!   like JSON, an object, an array or a fenced `json` block, and does not
//!   parse), 0.2 for a refusal (one that opens with "I can't", "I cannot",
//!   "I'm sorry", "I am unable", "As an AI"...) and 0 for an empty one.
//! - **Similarity** (0 to 1) of two answers: JSON objects and arrays are
//!   compared canonically (1 if equal whatever their keys' order, else 0);
//!   short answers (at most 8 words) after normalisation (1 if equal, else
//!   0); any other pair by the cosine of their word counts (lowercased
//!   letters and digits). Two answers are the same when their similarity
//!   is at least the threshold (`aggregation.threshold`, default 0.8).
//! - **Normalisation**: trimmed, lowercased, whitespace collapsed, quotes
//!   and trailing `.`, `!`, `?` removed, numbers written canonically
//!   (`3.0` is `3`).
//! - **Groups**: answers, highest score first, each join the group whose
//!   members they are the most similar to on average, if that average
//!   reaches the threshold, or start a group. Groups rank by size, then
//!   summed score; a group's central answer is the one most similar to
//!   the others (then the higher score, then plan order). Empty answers
//!   join none.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::call::{CallResult, CallStatus, ErrorClass, Usage};
use super::ids::{AgentId, CallId};
use super::money::Usd;
use super::task::{
    AggregateResult, AggregationOptions, AggregationStrategy, Task, TaskError, TaskPatch,
    TaskStatus,
};

/// The similarity two answers need to be the same answer, unless
/// `aggregation.threshold` says otherwise.
pub const DEFAULT_THRESHOLD: f64 = 0.8;
/// An answer of at most this many words is short: compared exactly, after
/// normalisation.
pub const SHORT_WORDS: usize = 8;
/// How much of an answer is compared: a larger one is compared by its
/// first 256 KiB, as text (never parsed as JSON).
pub const COMPARED_BYTES: usize = 256 * 1024;
/// The quality of an agent no longer in the registry.
pub const UNKNOWN_QUALITY: f64 = 0.5;
const QUALITY_WEIGHT: f64 = 0.6;
const FINISH_WEIGHT: f64 = 0.4;
const REFUSALS: [&str; 10] = [
    "i can't",
    "i can’t",
    "i cannot",
    "i'm sorry",
    "i am sorry",
    "i'm unable",
    "i am unable",
    "i won't",
    "sorry, i",
    "as an ai",
];

/// The quality a call recorded for its agent (agent-call keeps it with the
/// answer, so combining reads no registry), [`UNKNOWN_QUALITY`] if none.
fn quality_of(call: &CallResult) -> f64 {
    call.quality
        .filter(|q| q.is_finite())
        .map_or(UNKNOWN_QUALITY, |q| q.clamp(0.0, 1.0))
}

/// How complete an answer is, for its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completeness {
    Complete,
    /// Looks like JSON and does not parse.
    Malformed,
    Refused,
    Empty,
}

impl Completeness {
    pub fn factor(self) -> f64 {
        match self {
            Completeness::Complete => 1.0,
            Completeness::Malformed => 0.3,
            Completeness::Refused => 0.2,
            Completeness::Empty => 0.0,
        }
    }
}

/// What an answer is, for comparing it with others.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Empty,
    Json(Value),
    Short,
    Long,
}

/// An answer's comparable forms.
#[derive(Debug, Clone, PartialEq)]
struct Shape {
    kind: Kind,
    /// The normalised answer (JSON: its canonical text): what a vote counts.
    key: String,
    words: BTreeMap<String, u32>,
}

/// A succeeded call's answer with its score: every result lists them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub agent_id: AgentId,
    pub call_id: CallId,
    pub output: String,
    pub score: f64,
    #[serde(skip)]
    pub quality: f64,
    #[serde(skip)]
    pub truncated: bool,
    #[serde(skip)]
    pub completeness: Completeness,
    #[serde(skip)]
    shape: Shape,
}

impl Candidate {
    pub fn of(call: &CallResult) -> Candidate {
        let output = call.output.clone().unwrap_or_default();
        let quality = quality_of(call);
        let (shape, completeness) = shape(&output);
        let finish = if call.truncated { 0.0 } else { 1.0 };
        let score = completeness.factor() * (QUALITY_WEIGHT * quality + FINISH_WEIGHT * finish);
        Candidate {
            agent_id: call.agent_id.clone(),
            call_id: call.call_id,
            output,
            score: round(score),
            quality,
            truncated: call.truncated,
            completeness,
            shape,
        }
    }

    fn to_json(&self) -> Value {
        json!({"agent_id": self.agent_id, "call_id": self.call_id,
               "output": self.output, "score": self.score})
    }

    fn is_empty(&self) -> bool {
        self.shape.kind == Kind::Empty
    }
}

fn round(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// The text inside a fenced block (```json ... ```), or the text.
fn unfenced(text: &str) -> (&str, bool) {
    let trimmed = text.trim();
    if let Some(rest) = trimmed.strip_prefix("```")
        && let Some(body) = rest.strip_suffix("```")
    {
        let lang_end = body.find('\n').unwrap_or(0);
        let lang = body[..lang_end].trim();
        if lang.is_empty() || lang.eq_ignore_ascii_case("json") {
            return (body[lang_end..].trim(), lang.eq_ignore_ascii_case("json"));
        }
    }
    (trimmed, false)
}

fn shape(output: &str) -> (Shape, Completeness) {
    // A large answer (a base64 image) is compared by its start, as text.
    let compared = &output[..output.floor_char_boundary(COMPARED_BYTES)];
    let large = compared.len() < output.len();
    let trimmed = compared.trim();
    if trimmed.is_empty() {
        let shape = Shape {
            kind: Kind::Empty,
            key: String::new(),
            words: BTreeMap::new(),
        };
        return (shape, Completeness::Empty);
    }
    let (body, fenced_json) = unfenced(trimmed);
    let looks_like_json = !large
        && (fenced_json || body.starts_with('{') || (body.starts_with('[') && body.ends_with(']')));
    let words = word_counts(trimmed);
    if looks_like_json {
        return match serde_json::from_str::<Value>(body) {
            Ok(value @ (Value::Object(_) | Value::Array(_))) => {
                let value = canonical(value);
                let key = value.to_string();
                let shape = Shape {
                    kind: Kind::Json(value),
                    key,
                    words,
                };
                (shape, Completeness::Complete)
            }
            _ => {
                let shape = text_shape(trimmed, words);
                (shape, Completeness::Malformed)
            }
        };
    }
    let lower = trimmed.to_lowercase();
    let completeness = if REFUSALS.iter().any(|r| lower.starts_with(r)) {
        Completeness::Refused
    } else {
        Completeness::Complete
    };
    (text_shape(trimmed, words), completeness)
}

fn text_shape(text: &str, words: BTreeMap<String, u32>) -> Shape {
    let short = text.split_whitespace().count() <= SHORT_WORDS;
    Shape {
        kind: if short { Kind::Short } else { Kind::Long },
        key: normalise(text),
        words,
    }
}

/// JSON with every object's keys in order, so equal values print the same.
fn canonical(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// Trimmed, lowercased, whitespace collapsed, quotes and trailing `.!?`
/// removed, a number written canonically.
pub fn normalise(text: &str) -> String {
    let collapsed = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    let stripped = collapsed
        .trim_matches(|c: char| matches!(c, '"' | '\'' | '`' | '“' | '”' | '‘' | '’'))
        .trim_end_matches(['.', '!', '?'])
        .trim();
    match stripped.parse::<f64>() {
        Ok(n) if n.is_finite() => format!("{n}"),
        _ => stripped.to_owned(),
    }
}

fn word_counts(text: &str) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
    counts
}

fn cosine(a: &BTreeMap<String, u32>, b: &BTreeMap<String, u32>) -> f64 {
    let dot: f64 = a
        .iter()
        .filter_map(|(w, n)| b.get(w).map(|m| f64::from(*n) * f64::from(*m)))
        .sum();
    let norm = |v: &BTreeMap<String, u32>| {
        v.values()
            .map(|n| f64::from(*n).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 {
        0.0
    } else {
        dot / denominator
    }
}

/// How similar two answers are, 0 to 1 (see the module's notes).
fn similarity(a: &Shape, b: &Shape) -> f64 {
    match (&a.kind, &b.kind) {
        (Kind::Empty, _) | (_, Kind::Empty) => 0.0,
        (Kind::Json(x), Kind::Json(y)) => f64::from(u8::from(x == y)),
        (Kind::Short, Kind::Short) => f64::from(u8::from(a.key == b.key)),
        _ => round(cosine(&a.words, &b.words)),
    }
}

/// Answers that are the same answer, by the candidates' indexes: the
/// highest-scoring first.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub members: Vec<usize>,
    /// The member most similar to the others.
    pub central: usize,
    pub score: f64,
}

/// The candidates' indexes, highest score first, then plan order.
fn by_score(candidates: &[Candidate]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|a, b| {
        candidates[*b]
            .score
            .total_cmp(&candidates[*a].score)
            .then(a.cmp(b))
    });
    order
}

/// The candidates grouped by similarity, the largest group first.
pub fn groups(candidates: &[Candidate], threshold: f64) -> Vec<Group> {
    let sim = |a: usize, b: usize| similarity(&candidates[a].shape, &candidates[b].shape);
    let mut formed: Vec<Vec<usize>> = Vec::new();
    for i in by_score(candidates) {
        if candidates[i].is_empty() {
            continue;
        }
        let mut joined: Option<(usize, f64)> = None;
        for (g, members) in formed.iter().enumerate() {
            let mean = members.iter().map(|m| sim(i, *m)).sum::<f64>() / members.len() as f64;
            if mean >= threshold && joined.is_none_or(|(_, best)| mean > best) {
                joined = Some((g, mean));
            }
        }
        match joined {
            Some((g, _)) => formed[g].push(i),
            None => formed.push(vec![i]),
        }
    }
    let mut groups: Vec<Group> = formed
        .into_iter()
        .map(|members| {
            let mean_to_others = |m: usize| {
                if members.len() == 1 {
                    1.0
                } else {
                    members
                        .iter()
                        .filter(|o| **o != m)
                        .map(|o| sim(m, *o))
                        .sum::<f64>()
                        / (members.len() - 1) as f64
                }
            };
            // Members are in score order: the first of equals wins.
            let mut central = members[0];
            let mut best = mean_to_others(central);
            for m in members.iter().skip(1) {
                let mean = mean_to_others(*m);
                if mean > best {
                    (central, best) = (*m, mean);
                }
            }
            let score = round(members.iter().map(|m| candidates[*m].score).sum());
            Group {
                members,
                central,
                score,
            }
        })
        .collect();
    // Stable: groups formed earlier (a higher-scoring first member) win ties.
    groups.sort_by(|a, b| {
        b.members
            .len()
            .cmp(&a.members.len())
            .then(b.score.total_cmp(&a.score))
    });
    groups
}

/// One conflict entry: which agents said what, and why it is a conflict.
fn conflict(candidates: &[Candidate], members: &[usize], reason: String) -> Value {
    json!({
        "agents": members.iter().map(|m| &candidates[*m].agent_id).collect::<Vec<_>>(),
        "outputs": members.iter().map(|m| &candidates[*m].output).collect::<Vec<_>>(),
        "reason": reason,
    })
}

/// The groups after the first as conflicts with `chosen`, the answer taken.
fn group_conflicts(
    candidates: &[Candidate],
    groups: &[Group],
    chosen: usize,
    threshold: f64,
    taken: &str,
) -> Vec<Value> {
    groups
        .iter()
        .filter(|g| !g.members.contains(&chosen))
        .map(|g| {
            let s = similarity(&candidates[g.central].shape, &candidates[chosen].shape);
            conflict(
                candidates,
                &g.members,
                format!(
                    "differs from the {taken} answer of {} (similarity {s:.2}, below the threshold {threshold:.2})",
                    candidates[chosen].agent_id
                ),
            )
        })
        .collect()
}

/// A combined answer, before it is a task's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Combined {
    pub output: String,
    pub confidence: f64,
    pub conflicts: Vec<Value>,
}

/// `best`: the highest score, then plan order; `confidence` is its score.
pub fn best(candidates: &[Candidate], threshold: f64) -> Combined {
    let Some(&winner) = by_score(candidates).first() else {
        return nothing();
    };
    let groups = groups(candidates, threshold);
    Combined {
        output: candidates[winner].output.clone(),
        confidence: candidates[winner].score,
        conflicts: group_conflicts(candidates, &groups, winner, threshold, "best"),
    }
}

fn nothing() -> Combined {
    Combined {
        output: String::new(),
        confidence: 0.0,
        conflicts: Vec::new(),
    }
}

/// `consensus`: the central answer of the largest group; `confidence` is
/// the group's share of the answers.
pub fn consensus(candidates: &[Candidate], threshold: f64) -> Combined {
    let groups = groups(candidates, threshold);
    let Some(winner) = groups.first() else {
        return nothing();
    };
    let mut conflicts =
        group_conflicts(candidates, &groups, winner.central, threshold, "consensus");
    if let Some(second) = groups.get(1)
        && second.members.len() == winner.members.len()
        && let Some(first) = conflicts.first_mut()
        && let Some(fields) = first.as_object_mut()
    {
        fields.insert(
            "reason".into(),
            format!(
                "tied with the consensus at {} answers each; the tie went to the higher summed score ({:.2} against {:.2})",
                winner.members.len(),
                winner.score,
                second.score
            )
            .into(),
        );
    }
    Combined {
        output: candidates[winner.central].output.trim().to_owned(),
        confidence: round(winner.members.len() as f64 / candidates.len() as f64),
        conflicts,
    }
}

/// `vote`: the normalised answer most agents gave; ties go to the higher
/// summed quality of its voters, then to the one given first in plan
/// order. `confidence` is its share of the answers; empty answers abstain.
pub fn vote(candidates: &[Candidate]) -> Combined {
    // Options in the order first given (plan order).
    let mut options: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        if c.is_empty() {
            continue;
        }
        match options.iter_mut().find(|(key, _)| *key == c.shape.key) {
            Some((_, voters)) => voters.push(i),
            None => options.push((&c.shape.key, vec![i])),
        }
    }
    let quality = |voters: &[usize]| round(voters.iter().map(|v| candidates[*v].quality).sum());
    // Stable: the option given first wins what is left of a tie.
    options.sort_by(|(_, a), (_, b)| {
        b.len()
            .cmp(&a.len())
            .then(quality(b).total_cmp(&quality(a)))
    });
    let Some((winner, voters)) = options.first() else {
        return nothing();
    };
    let conflicts = options
        .iter()
        .skip(1)
        .map(|(key, others)| {
            let reason = if others.len() < voters.len() {
                format!(
                    "voted \"{key}\" ({} of {}) against \"{winner}\" ({})",
                    others.len(),
                    candidates.len(),
                    voters.len()
                )
            } else if quality(others) < quality(voters) {
                format!(
                    "tied at {} votes with \"{winner}\"; the tie went to its voters' higher quality ({:.2} against {:.2})",
                    voters.len(),
                    quality(voters),
                    quality(others)
                )
            } else {
                format!(
                    "tied at {} votes with \"{winner}\", at equal quality; the tie went to the answer given first in plan order",
                    voters.len()
                )
            };
            conflict(candidates, others, reason)
        })
        .collect();
    Combined {
        output: candidates[voters[0]].output.trim().to_owned(),
        confidence: round(voters.len() as f64 / candidates.len() as f64),
        conflicts,
    }
}

/// `merge`. When any answer is a JSON object, the objects are deep-merged:
/// a key in some answers only is taken, objects under the same key are
/// merged in turn, and a key whose values differ (arrays and numbers are
/// values) is disputed: the highest-scoring answer's value is taken, with
/// a conflict entry naming the key. Answers that are not JSON objects are
/// left out, each with a conflict. `confidence` is the share of answers
/// merged times the share of undisputed keys. Otherwise (text), one section
/// per group of similar answers, its central answer under the names of the
/// agents who gave it, the largest group first; `confidence` is its share.
pub fn merge(candidates: &[Candidate], threshold: f64) -> Combined {
    let objects: Vec<(usize, &Map<String, Value>)> = by_score(candidates)
        .into_iter()
        .filter_map(|i| match &candidates[i].shape.kind {
            Kind::Json(Value::Object(map)) => Some((i, map)),
            _ => None,
        })
        .collect();
    if objects.is_empty() {
        return merge_text(candidates, threshold);
    }
    let mut conflicts: Vec<Value> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| !matches!(c.shape.kind, Kind::Json(Value::Object(_))))
        .map(|(i, c)| {
            let why = match c.completeness {
                Completeness::Empty => "empty",
                Completeness::Malformed => "malformed JSON",
                _ => "not a JSON object",
            };
            conflict(candidates, &[i], format!("{why}; left out of the merge"))
        })
        .collect();
    let mut keys = Keys::default();
    let merged = merge_objects(candidates, &objects, "", &mut conflicts, &mut keys);
    let undisputed = if keys.leaves == 0 {
        1.0
    } else {
        1.0 - keys.disputed as f64 / keys.leaves as f64
    };
    Combined {
        output: Value::Object(merged).to_string(),
        confidence: round(objects.len() as f64 / candidates.len() as f64 * undisputed),
        conflicts,
    }
}

#[derive(Default)]
struct Keys {
    leaves: usize,
    disputed: usize,
}

fn merge_objects(
    candidates: &[Candidate],
    sources: &[(usize, &Map<String, Value>)],
    path: &str,
    conflicts: &mut Vec<Value>,
    keys: &mut Keys,
) -> Map<String, Value> {
    let mut names: Vec<&String> = sources.iter().flat_map(|(_, m)| m.keys()).collect();
    names.sort();
    names.dedup();
    let mut merged = Map::new();
    for name in names {
        let key = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        let values: Vec<(usize, &Value)> = sources
            .iter()
            .filter_map(|(i, m)| m.get(name).map(|v| (*i, v)))
            .collect();
        let objects: Vec<(usize, &Map<String, Value>)> = values
            .iter()
            .filter_map(|(i, v)| v.as_object().map(|m| (*i, m)))
            .collect();
        if objects.len() == values.len() {
            let inner = merge_objects(candidates, &objects, &key, conflicts, keys);
            merged.insert(name.clone(), Value::Object(inner));
            continue;
        }
        keys.leaves += 1;
        let Some((_, taken)) = values.first() else {
            continue;
        };
        if values.iter().any(|(_, v)| v != taken) {
            keys.disputed += 1;
            conflicts.push(json!({
                "agents": values.iter().map(|(i, _)| &candidates[*i].agent_id).collect::<Vec<_>>(),
                "outputs": values.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
                "reason": format!("disputed key {key}: the highest-scoring answer's value is taken"),
                "key": key,
            }));
        }
        merged.insert(name.clone(), (*taken).clone());
    }
    merged
}

fn merge_text(candidates: &[Candidate], threshold: f64) -> Combined {
    let groups = groups(candidates, threshold);
    let Some(largest) = groups.first() else {
        return nothing();
    };
    let output = groups
        .iter()
        .map(|g| {
            let mut agents: Vec<usize> = g.members.clone();
            agents.sort();
            let names: Vec<&str> = agents
                .iter()
                .map(|m| candidates[*m].agent_id.as_str())
                .collect();
            format!(
                "## {}\n\n{}",
                names.join(", "),
                candidates[g.central].output.trim()
            )
        })
        .collect::<Vec<_>>()
        .join("\n\n");
    Combined {
        output,
        confidence: round(largest.members.len() as f64 / candidates.len() as f64),
        conflicts: group_conflicts(candidates, &groups, largest.central, threshold, "largest"),
    }
}

/// What a task's calls used and cost, in all: the cost is unknown (`None`)
/// if any call's is, never a silent zero.
pub fn totals(calls: &[CallResult]) -> (Usage, Option<Usd>) {
    let usage: Usage = calls.iter().map(|c| c.usage).sum();
    let cost: Option<Usd> = calls.iter().map(|c| c.cost_usd).sum();
    (usage, cost)
}

/// The final status and fields of a task whose calls are all done.
pub fn combine(task: &Task, calls: &[CallResult]) -> (TaskStatus, TaskPatch) {
    // Call order is the plan's order, whatever order results arrived in.
    let mut ordered: Vec<&CallResult> = calls.iter().collect();
    ordered.sort_by_key(|c| {
        task.plan
            .iter()
            .position(|p| p.call_id == c.call_id)
            .unwrap_or(usize::MAX)
    });
    let (usage, cost) = totals(calls);
    let succeeded: Vec<&CallResult> = ordered
        .iter()
        .copied()
        .filter(|c| c.status == CallStatus::Succeeded)
        .collect();
    let mut patch = TaskPatch {
        usage: Some(usage),
        cost_usd: cost,
        counted_calls: Some(calls.iter().map(|c| c.call_id).collect()),
        ..TaskPatch::default()
    };
    if succeeded.is_empty() {
        patch.error = Some(none_succeeded(&ordered));
        return (TaskStatus::Failed, patch);
    }
    let options: AggregationOptions = task.spec.aggregation_options;
    if (succeeded.len() as u64) < u64::from(options.min_success) {
        patch.error = Some(TaskError::new(
            "not_enough_answers",
            format!(
                "{} of {} calls answered; aggregation.min_success is {}",
                succeeded.len(),
                ordered.len(),
                options.min_success
            ),
        ));
        return (TaskStatus::Failed, patch);
    }
    let candidates: Vec<Candidate> = succeeded.iter().map(|c| Candidate::of(c)).collect();
    let threshold = options.threshold.unwrap_or(DEFAULT_THRESHOLD);
    let strategy = task.spec.aggregation;
    let combined = match strategy {
        AggregationStrategy::All => Combined {
            output: candidates
                .iter()
                .map(|c| format!("[{}] {}", c.agent_id, c.output))
                .collect::<Vec<_>>()
                .join("\n\n"),
            confidence: succeeded.len() as f64 / ordered.len() as f64,
            conflicts: Vec::new(),
        },
        AggregationStrategy::Best => best(&candidates, threshold),
        AggregationStrategy::Consensus => consensus(&candidates, threshold),
        AggregationStrategy::Vote => vote(&candidates),
        AggregationStrategy::Merge => merge(&candidates, threshold),
        // Judge is refused at intake until offered: a stored one takes the first.
        AggregationStrategy::First | AggregationStrategy::Judge => Combined {
            output: candidates[0].output.clone(),
            confidence: 1.0,
            conflicts: Vec::new(),
        },
    };
    let strategy = match strategy {
        AggregationStrategy::Judge => AggregationStrategy::First,
        other => other,
    };
    patch.result = Some(AggregateResult {
        strategy,
        output: combined.output,
        output_ref: None,
        confidence: combined.confidence,
        candidates: candidates.iter().map(Candidate::to_json).collect(),
        conflicts: combined.conflicts,
    });
    (TaskStatus::Completed, patch)
}

/// Why a task none of whose calls succeeded failed.
fn none_succeeded(ordered: &[&CallResult]) -> TaskError {
    let blocked: Vec<&str> = ordered
        .iter()
        .filter_map(|c| c.error.as_ref())
        .filter(|e| e.class == ErrorClass::ContentBlocked)
        .map(|e| e.message.as_str())
        .collect();
    if blocked.len() == ordered.len() {
        // Every answer was blocked: the task is, with the rules' names
        // (the messages hold the names only, never the text).
        return TaskError::new(
            "content_blocked",
            format!("every answer was blocked: {}", blocked.join("; ")),
        );
    }
    let reasons: Vec<String> = ordered
        .iter()
        .map(|c| match &c.error {
            Some(e) => format!("{}: {:?}: {}", c.agent_id, e.class, e.message),
            None => format!("{}: failed", c.agent_id),
        })
        .collect();
    TaskError::new(
        "all_calls_failed",
        format!("every call failed: {}", reasons.join("; ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CallError, ErrorClass, PlannedCall, Provider, TaskRequest, TenantId};
    use chrono::Utc;

    fn task_with(aggregation: Value, n: usize) -> (Task, Vec<CallId>) {
        let req: TaskRequest = serde_json::from_value(json!({"task_type": "text", "content": "x",
            "routing": {"fanout": n}, "aggregation": aggregation}))
        .unwrap();
        let mut task = Task::new(
            TenantId::parse("t").unwrap(),
            req.parse().unwrap().0,
            None,
            "u",
            Utc::now(),
        );
        let calls: Vec<CallId> = (0..n).map(|_| CallId::new()).collect();
        task.plan = calls
            .iter()
            .enumerate()
            .map(|(i, c)| PlannedCall {
                call_id: *c,
                agent_id: AgentId::parse(format!("a{i}")).unwrap(),
                hold: None,
                fallbacks: Vec::new(),
                probe: false,
            })
            .collect();
        (task, calls)
    }

    fn task(aggregation: &str, n: usize) -> (Task, Vec<CallId>) {
        task_with(json!({"strategy": aggregation}), n)
    }

    fn result(call: CallId, i: usize, ok: bool, cost: Option<&str>) -> CallResult {
        CallResult {
            call_id: call,
            agent_id: AgentId::parse(format!("a{i}")).unwrap(),
            provider: Some(Provider::Mock),
            status: if ok {
                CallStatus::Succeeded
            } else {
                CallStatus::Failed
            },
            output: ok.then(|| format!("out{i}")),
            output_ref: None,
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
                ..Usage::default()
            },
            cost_usd: cost.map(|c| Usd::parse(c).unwrap()),
            latency_ms: 1,
            attempts: 1,
            error: (!ok).then(|| CallError {
                class: ErrorClass::Server,
                message: "boom".into(),
            }),
            retried_errors: Vec::new(),
            finished_at: Utc::now(),
            truncated: false,
            quality: None,
            fell_back_from: Vec::new(),
            settles: None,
        }
    }

    /// A fixed candidate set: each answer from agent `a{i}`, in plan order.
    fn answered(calls: &[CallId], answers: &[&str]) -> Vec<CallResult> {
        answers
            .iter()
            .enumerate()
            .map(|(i, a)| CallResult {
                output: Some((*a).to_owned()),
                ..result(calls[i], i, true, Some("0.01"))
            })
            .collect()
    }

    /// `results` with each call's agent quality recorded, in order.
    fn with_qualities(mut results: Vec<CallResult>, qualities: &[f64]) -> Vec<CallResult> {
        for (result, q) in results.iter_mut().zip(qualities) {
            result.quality = Some(*q);
        }
        results
    }

    fn run(aggregation: Value, answers: &[&str], qualities: &[f64]) -> AggregateResult {
        let (task, calls) = task_with(aggregation, answers.len());
        let (status, patch) = combine(&task, &with_qualities(answered(&calls, answers), qualities));
        assert_eq!(status, TaskStatus::Completed, "{patch:?}");
        patch.result.unwrap()
    }

    fn agents(conflict: &Value) -> Vec<&str> {
        conflict["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect()
    }

    #[test]
    fn first_takes_the_first_success_in_plan_order() {
        let (task, calls) = task("first", 3);
        // Arrival order differs from plan order; call 0 failed.
        let results = vec![
            result(calls[2], 2, true, Some("0.3")),
            result(calls[0], 0, false, Some("0")),
            result(calls[1], 1, true, Some("0.1")),
        ];
        let (status, patch) = combine(&task, &results);
        assert_eq!(status, TaskStatus::Completed);
        let r = patch.result.unwrap();
        assert_eq!(r.output, "out1");
        assert_eq!(r.candidates.len(), 2, "every succeeded call is a candidate");
        assert_eq!(r.candidates[0]["agent_id"], "a1");
        assert_eq!(
            r.candidates[0]["score"], 0.7,
            "unknown quality 0.5: 0.6×0.5 + 0.4"
        );
        assert_eq!(patch.usage.unwrap().input_tokens, 30);
        assert_eq!(patch.cost_usd, Some(Usd::parse("0.4").unwrap()));
    }

    #[test]
    fn all_attributes_every_success() {
        let (task, calls) = task("all", 2);
        let results = vec![
            result(calls[0], 0, true, Some("0.1")),
            result(calls[1], 1, true, None),
        ];
        let (status, patch) = combine(&task, &results);
        assert_eq!(status, TaskStatus::Completed);
        let r = patch.result.unwrap();
        assert_eq!(r.output, "[a0] out0\n\n[a1] out1");
        assert_eq!(r.candidates.len(), 2);
        assert_eq!(
            patch.cost_usd, None,
            "one unknown cost makes the total unknown"
        );
    }

    #[test]
    fn every_call_failing_fails_the_task_with_reasons_whatever_the_strategy() {
        for strategy in ["first", "best", "consensus", "vote", "merge"] {
            let (task, calls) = task(strategy, 2);
            let results = vec![
                result(calls[0], 0, false, None),
                result(calls[1], 1, false, None),
            ];
            let (status, patch) = combine(&task, &results);
            assert_eq!(status, TaskStatus::Failed);
            let error = patch.error.unwrap();
            assert_eq!(error.code, "all_calls_failed");
            assert!(error.message.contains("a0: Server: boom"));
            assert!(patch.result.is_none());
        }
    }

    #[test]
    fn the_score_blends_quality_finish_and_completeness() {
        let call = |output: &str, truncated: bool| CallResult {
            output: Some(output.into()),
            truncated,
            quality: Some(0.9),
            ..result(CallId::new(), 0, true, None)
        };
        let score = |output: &str, truncated: bool| Candidate::of(&call(output, truncated)).score;
        assert_eq!(score("Paris", false), 0.94);
        assert_eq!(
            score("Paris", true),
            0.54,
            "a truncated answer scores lower"
        );
        assert_eq!(score("   ", false), 0.0, "an empty answer scores lowest");
        assert_eq!(score("I'm sorry, I can't help with that.", false), 0.188);
        assert_eq!(score("{\"city\": \"Par", false), 0.282, "malformed JSON");
        assert_eq!(score("```json\n{\"city\": \"Paris\"}\n```", false), 0.94);
        assert_eq!(score("[gpt] 3 words; digest 01", false), 0.94, "not JSON");
    }

    #[test]
    fn best_takes_the_highest_score_and_a_truncated_answer_loses() {
        let r = run(
            json!({"strategy": "best"}),
            &["Lyon", "Paris", "Marseille"],
            &[0.5, 0.9, 0.7],
        );
        assert_eq!(r.strategy, AggregationStrategy::Best);
        assert_eq!(r.output, "Paris");
        assert_eq!(r.confidence, 0.94);
        assert_eq!(r.candidates.len(), 3);
        assert_eq!(
            r.conflicts.len(),
            2,
            "the other answers disagree: {:?}",
            r.conflicts
        );

        let (task, calls) = task("best", 3);
        let mut results = answered(&calls, &["Lyon", "Paris", "Marseille"]);
        results[1].truncated = true;
        let (_, patch) = combine(&task, &with_qualities(results, &[0.5, 0.9, 0.7]));
        let r = patch.result.unwrap();
        assert_eq!(r.output, "Marseille", "0.82 beats the truncated 0.54");
        assert_eq!(r.candidates[1]["score"], 0.54);
    }

    #[test]
    fn best_ties_go_to_plan_order_and_empty_refused_or_malformed_answers_lose() {
        let r = run(json!({"strategy": "best"}), &["Lyon", "Paris"], &[0.8, 0.8]);
        assert_eq!(r.output, "Lyon");
        let r = run(
            json!({"strategy": "best"}),
            &["", "I cannot answer that.", "{\"a\": ", "Paris"],
            &[1.0, 1.0, 1.0, 0.1],
        );
        assert_eq!(r.output, "Paris", "0.46 beats every incomplete answer");
        let r = run(json!({"strategy": "best"}), &["", " "], &[0.9, 0.9]);
        assert_eq!((r.output.as_str(), r.confidence), ("", 0.0));
        assert!(r.conflicts.is_empty(), "empty answers are in no group");
    }

    #[test]
    fn consensus_takes_the_largest_group_and_reports_the_others() {
        let r = run(
            json!({"strategy": "consensus"}),
            &["Paris", "Lyon", "paris.", "\"Paris\""],
            &[0.5, 0.9, 0.5, 0.5],
        );
        assert_eq!(r.strategy, AggregationStrategy::Consensus);
        assert_eq!(r.output, "Paris");
        assert_eq!(r.confidence, 0.75);
        assert_eq!(r.conflicts.len(), 1);
        assert_eq!(agents(&r.conflicts[0]), ["a1"]);
        assert_eq!(r.conflicts[0]["outputs"], json!(["Lyon"]));
        assert!(r.conflicts[0]["reason"].as_str().unwrap().contains("a0"));
    }

    #[test]
    fn consensus_compares_json_canonically_and_long_text_by_the_threshold() {
        let r = run(
            json!({"strategy": "consensus"}),
            &[
                "{\"a\": 1, \"b\": [1, 2]}",
                "{\"b\":[1,2],\"a\":1}",
                "{\"a\": 2}",
            ],
            &[0.5, 0.5, 0.9],
        );
        assert_eq!(r.output, "{\"a\": 1, \"b\": [1, 2]}");
        assert_eq!(r.confidence, 0.6667);

        let long = [
            "The capital of France is Paris, a city on the Seine river.",
            "Paris is the capital of France, on the river Seine.",
            "France has no capital city at all according to this odd answer.",
        ];
        let r = run(json!({"strategy": "consensus"}), &long, &[0.5, 0.5, 0.5]);
        assert_eq!(r.confidence, 0.6667, "{r:?}");
        assert_eq!(r.output, long[0]);
        assert_eq!(agents(&r.conflicts[0]), ["a2"]);
        // Asking for identical word counts splits the first two (0.93).
        let r = run(
            json!({"strategy": "consensus", "threshold": 1.0}),
            &long,
            &[0.5, 0.5, 0.5],
        );
        assert_eq!(r.confidence, 0.3333);
        assert_eq!(r.conflicts.len(), 2);
        // And a low threshold puts all three together.
        let r = run(
            json!({"strategy": "consensus", "threshold": 0.1}),
            &long,
            &[0.5, 0.5, 0.5],
        );
        assert_eq!(r.confidence, 1.0);
        assert!(r.conflicts.is_empty());
    }

    #[test]
    fn a_consensus_tie_goes_to_the_higher_score_and_is_reported() {
        let r = run(
            json!({"strategy": "consensus"}),
            &["yes", "no"],
            &[0.5, 0.9],
        );
        assert_eq!(r.output, "no");
        assert_eq!(r.confidence, 0.5);
        let reason = r.conflicts[0]["reason"].as_str().unwrap();
        assert!(reason.starts_with("tied with the consensus"), "{reason}");
        assert_eq!(agents(&r.conflicts[0]), ["a0"]);
    }

    #[test]
    fn consensus_of_empty_answers_is_empty_with_no_confidence() {
        let r = run(json!({"strategy": "consensus"}), &["", "  "], &[0.5, 0.5]);
        assert_eq!((r.output.as_str(), r.confidence), ("", 0.0));
        assert_eq!(r.candidates.len(), 2);
    }

    #[test]
    fn vote_counts_normalised_answers() {
        let r = run(
            json!({"strategy": "vote"}),
            &["Yes", "yes.", "No", "  YES  ", ""],
            &[0.5, 0.5, 0.9, 0.5, 0.9],
        );
        assert_eq!(r.strategy, AggregationStrategy::Vote);
        assert_eq!(r.output, "Yes");
        assert_eq!(
            r.confidence, 0.6,
            "3 of the 5 answers; the empty one abstains"
        );
        assert_eq!(r.conflicts.len(), 1);
        assert_eq!(agents(&r.conflicts[0]), ["a2"]);
        let r = run(
            json!({"strategy": "vote"}),
            &["3.0", "3", "4"],
            &[0.5, 0.5, 0.5],
        );
        assert_eq!((r.output.as_str(), r.confidence), ("3.0", 0.6667));
    }

    #[test]
    fn a_vote_tie_goes_to_quality_then_to_plan_order_and_is_reported() {
        let r = run(
            json!({"strategy": "vote"}),
            &["positive", "negative"],
            &[0.5, 0.9],
        );
        assert_eq!(r.output, "negative");
        assert_eq!(r.confidence, 0.5);
        let reason = r.conflicts[0]["reason"].as_str().unwrap();
        assert!(reason.contains("higher quality"), "{reason}");
        let r = run(
            json!({"strategy": "vote"}),
            &["positive", "negative"],
            &[0.7, 0.7],
        );
        assert_eq!(r.output, "positive");
        let reason = r.conflicts[0]["reason"].as_str().unwrap();
        assert!(reason.contains("plan order"), "{reason}");
        assert_eq!(agents(&r.conflicts[0]), ["a1"]);
    }

    #[test]
    fn merge_deep_merges_json_with_a_conflict_per_disputed_key() {
        let r = run(
            json!({"strategy": "merge"}),
            &[
                "{\"name\": \"Ada\", \"born\": 1815, \"place\": {\"city\": \"London\"}}",
                "{\"name\": \"Ada\", \"place\": {\"city\": \"Paris\", \"country\": \"UK\"}, \"field\": \"maths\"}",
                "{\"name\": \"Ada\", \"born\": 1816",
            ],
            &[0.9, 0.5, 0.9],
        );
        assert_eq!(r.strategy, AggregationStrategy::Merge);
        let merged: Value = serde_json::from_str(&r.output).unwrap();
        assert_eq!(
            merged,
            json!({"name": "Ada", "born": 1815, "field": "maths",
                   "place": {"city": "London", "country": "UK"}})
        );
        assert_eq!(r.conflicts.len(), 2, "{:?}", r.conflicts);
        let malformed = &r.conflicts[0];
        assert_eq!(agents(malformed), ["a2"]);
        assert!(
            malformed["reason"]
                .as_str()
                .unwrap()
                .starts_with("malformed JSON")
        );
        let disputed = &r.conflicts[1];
        assert_eq!(disputed["key"], "place.city");
        assert_eq!(agents(disputed), ["a0", "a1"]);
        assert_eq!(disputed["outputs"], json!(["London", "Paris"]));
        // 2 of 3 answers merged, 1 of 5 keys disputed.
        assert_eq!(r.confidence, 0.5333);
    }

    #[test]
    fn merge_of_text_gives_each_group_a_section_under_its_agents() {
        let r = run(
            json!({"strategy": "merge"}),
            &["Use a hash map.", "Sort the list first.", "use a hash map"],
            &[0.5, 0.9, 0.5],
        );
        assert_eq!(
            r.output,
            "## a0, a2\n\nUse a hash map.\n\n## a1\n\nSort the list first."
        );
        assert_eq!(r.confidence, 0.6667);
        assert_eq!(agents(&r.conflicts[0]), ["a1"]);
    }

    #[test]
    fn fewer_successes_than_min_success_fail_with_every_cost_kept() {
        let (task, calls) = task_with(json!({"strategy": "consensus", "min_success": 2}), 3);
        let results = vec![
            result(calls[0], 0, true, Some("0.1")),
            result(calls[1], 1, false, Some("0.2")),
            result(calls[2], 2, false, Some("0.3")),
        ];
        let (status, patch) = combine(&task, &results);
        assert_eq!(status, TaskStatus::Failed);
        let error = patch.error.unwrap();
        assert_eq!(error.code, "not_enough_answers");
        assert_eq!(
            error.message,
            "1 of 3 calls answered; aggregation.min_success is 2"
        );
        assert_eq!(patch.cost_usd, Some(Usd::parse("0.6").unwrap()));
        assert_eq!(patch.counted_calls.unwrap().len(), 3);
        // Two answers are enough.
        let results = vec![
            result(calls[0], 0, true, None),
            result(calls[1], 1, true, None),
            result(calls[2], 2, false, None),
        ];
        let (status, _) = combine(&task, &results);
        assert_eq!(status, TaskStatus::Completed);
    }

    #[test]
    fn the_score_takes_the_quality_each_call_recorded() {
        let (task, calls) = task("best", 3);
        let mut results = answered(&calls, &["Lyon", "Paris", "Nice"]);
        results[0].quality = Some(0.2);
        results[1].quality = Some(0.9);
        let (_, patch) = combine(&task, &results);
        let r = patch.result.unwrap();
        assert_eq!(r.output, "Paris");
        let scores: Vec<&Value> = r.candidates.iter().map(|c| &c["score"]).collect();
        assert_eq!(
            scores,
            [&json!(0.52), &json!(0.94), &json!(0.7)],
            "none recorded: 0.5"
        );
    }

    #[test]
    fn a_large_answer_is_compared_by_its_start_as_text() {
        let big = format!("{{\"a\": \"{}\"}}", "x".repeat(COMPARED_BYTES));
        let (shape, completeness) = shape(&big);
        assert_eq!(
            completeness,
            Completeness::Complete,
            "not parsed, so not malformed"
        );
        assert_eq!(shape.kind, Kind::Short, "one word of its first 256 KiB");
        assert!(shape.key.len() <= COMPARED_BYTES);
    }

    #[test]
    fn normalisation_folds_case_space_quotes_punctuation_and_numbers() {
        assert_eq!(normalise("  \"Yes.\" "), "yes");
        assert_eq!(normalise("New   York!"), "new york");
        assert_eq!(normalise("3.50"), "3.5");
        assert_eq!(normalise("-0.0"), "-0");
    }
}
