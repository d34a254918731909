//! Picking agents for a task: pure, so every rule is unit-tested.
//!
//! Route first keeps the agents that can serve the task (the capability
//! filter): enabled, listing the task type, priced when a budget applies,
//! and with a context window that holds the input plus the output the call
//! asks for. Then the strategy orders them:
//!
//! | strategy | order |
//! |---|---|
//! | `explicit` (implied by `routing.agents`) | the named agents, in order, whatever their task types |
//! | `cheapest` | lowest expected cost for this input (what a budget reserves: the input as the agent's tokenizer counts it, plus its output cap, at its prices); unpriced agents last |
//! | `quality` (`best`) | highest quality score, then lowest price |
//! | `fastest` | lowest recent latency (see `domain::health`); agents with none known last, by quality |
//! | `balanced` (the default) | highest weighted mean of quality, cost relative to the cheapest and latency relative to the fastest (see [`Signals`] and `score_balanced`) |
//! | `round_robin` | by id, starting at the shared counter's turn (see `rotation`) |
//! | `weighted` | by id, in the smooth weighted cycle of the agents' `weight`s, from the turn |
//! | `tiered` | the escalation ladder: from the tier the task needs up, lowest tier first, lowest expected cost within a tier (see below) |
//!
//! `tiered` estimates the tier the task needs from its content and task
//! type ([`Complexity`]) and starts at the lowest tier at or above it that
//! has a capable agent (with none at or above it, the highest tier there
//! is; with `fanout` N, low enough to have N agents). Agents of lower tiers
//! are left out: a tiered task never goes down a tier. The fallbacks are
//! the rest of the ladder in order, which agent-call climbs when an answer
//! fails, comes back empty or is cut off by `max_tokens`.
//!
//! The first `fanout` agents are called, preferring distinct providers so
//! one provider's outage hits one call (not for `round_robin` and
//! `weighted`: the next `fanout` in turn); the rest, in order, are the
//! fallbacks (for `explicit`: the named agents not called, then the other
//! capable agents by quality).

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use super::agent::Agent;
use super::budget;
use super::complexity::Complexity;
use super::ids::AgentId;
use super::money::Usd;
use super::rotation;
use super::task::{RoutingStrategy, RoutingWeights, TaskSpec};
use super::task_type::TaskType;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("no enabled agent can serve task_type `{0}`")]
    NoCapableAgent(TaskType),
    #[error(
        "no agent with prices can serve task_type `{0}`; under a budget only priced agents are called"
    )]
    NoPricedAgent(TaskType),
    #[error(
        "no agent for task_type `{task_type}` has a context window for this task: it needs {needed} tokens (input and output) and the largest window is {largest}"
    )]
    NoAgentWithRoom {
        task_type: TaskType,
        needed: u64,
        largest: u32,
    },
    #[error("routing.agents names `{0}`, which is unknown or disabled")]
    UnknownAgent(String),
    #[error(
        "routing.agents names `{0}`, which has no prices; under a budget only priced agents are called"
    )]
    UnpricedAgent(String),
    #[error(
        "routing.agents names `{agent}`, whose context window of {window} tokens cannot hold this task's {needed} (input and output)"
    )]
    AgentWithoutRoom {
        agent: String,
        needed: u64,
        window: u32,
    },
    #[error(
        "fanout {wanted} needs {wanted} agents for task_type `{task_type}`; {available} available"
    )]
    NotEnoughAgents {
        wanted: u32,
        available: usize,
        task_type: TaskType,
    },
}

impl RoutingError {
    pub fn code(&self) -> &'static str {
        match self {
            RoutingError::NoCapableAgent(_) => "no_capable_agent",
            RoutingError::NoPricedAgent(_) => "no_priced_agent",
            RoutingError::NoAgentWithRoom { .. } | RoutingError::AgentWithoutRoom { .. } => {
                "context_window_too_small"
            }
            RoutingError::UnknownAgent(_) => "unknown_agent",
            RoutingError::UnpricedAgent(_) => "unpriced_agent",
            RoutingError::NotEnoughAgents { .. } => "not_enough_agents",
        }
    }
}

/// The agents a task is sent to, and the ones to fall back on, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// One call each, `fanout` of them, in the strategy's order.
    pub calls: Vec<Agent>,
    /// The other candidates, best first; none when `routing.fallback` is off.
    pub fallbacks: Vec<AgentId>,
    /// Who may take a call's place when its agent cannot take it now (at
    /// its rate limit, its circuit open), best first: every other capable
    /// agent whose window holds the task, fallback or not; for `explicit`,
    /// the named agents not called, then the fallbacks.
    pub alternates: Vec<AgentId>,
}

/// An agent with what a call of it for this task would take.
struct Candidate<'a> {
    agent: &'a Agent,
    /// Input plus the output the call asks for.
    needed: u64,
    /// What a call is expected to cost at most; `None` without prices.
    expected_cost: Option<Usd>,
    /// The agent's recent mean latency; `None` without recent successes.
    latency_ms: Option<f64>,
    /// `balanced`'s score, 0 to 1 (higher first); 0 for the others.
    score: f64,
}

impl<'a> Candidate<'a> {
    fn new(agent: &'a Agent, spec: &TaskSpec, budgeted: bool) -> Self {
        let input = budget::input_tokens(agent, spec);
        let expected_cost = agent.cost(&budget::usage_for_input(
            spec,
            input,
            budget::output_cap(agent),
        ));
        Candidate {
            agent,
            needed: input + u64::from(output_asked(agent, budgeted).unwrap_or(0)),
            expected_cost,
            latency_ms: None,
            score: 0.0,
        }
    }

    /// Whether the agent's context window holds the call; an agent that
    /// states none is taken to.
    fn fits(&self) -> bool {
        self.agent
            .spec
            .constraints
            .context_window
            .is_none_or(|window| self.needed <= u64::from(window))
    }
}

/// The output a call of `agent` asks for: under a budget what is reserved
/// (agent-call caps the answer at it), else the agent's own cap; without
/// one the provider's default applies, which is not known.
fn output_asked(agent: &Agent, budgeted: bool) -> Option<u32> {
    if budgeted {
        Some(budget::output_cap(agent))
    } else {
        agent.spec.constraints.max_tokens
    }
}

/// The tokens a call of `agent` for `spec` takes from a window or a
/// tokens-per-minute limit: its input, as the agent's tokenizer counts it,
/// plus the output it asks for.
pub fn call_tokens(agent: &Agent, spec: &TaskSpec, budgeted: bool) -> u64 {
    budget::input_tokens(agent, spec) + u64::from(output_asked(agent, budgeted).unwrap_or(0))
}

/// Input plus output price per million tokens: the price to compare agents by.
/// An agent without prices sorts after every priced one.
fn blended_price(agent: &Agent) -> Option<Usd> {
    agent
        .spec
        .pricing
        .as_ref()
        .map(|p| p.input_per_mtok + p.output_per_mtok)
}

/// Known amounts first, lowest first.
fn lowest_known(a: Option<Usd>, b: Option<Usd>) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// Known latencies first, lowest first.
fn lowest_latency(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// What an unknown latency counts as in `balanced`: halfway, so that an
/// agent not called lately is neither shunned nor preferred.
const UNKNOWN_LATENCY_SCORE: f64 = 0.5;

/// `balanced`'s score of each candidate: the weighted mean of its quality
/// (0 to 1), its cost relative to the cheapest (cheapest / its expected
/// cost: 1 for the cheapest, 0 when unknown) and its latency relative to
/// the fastest ((fastest + 1 ms) / (its latency + 1 ms): 1 for the
/// fastest, one half when unknown).
fn score_balanced(candidates: &mut [Candidate], weights: RoutingWeights) {
    let cheapest = candidates.iter().filter_map(|c| c.expected_cost).min();
    let fastest = candidates
        .iter()
        .filter_map(|c| c.latency_ms)
        .min_by(f64::total_cmp);
    let total = weights.quality + weights.cost + weights.latency;
    for c in candidates.iter_mut() {
        let cost = match (cheapest, c.expected_cost) {
            (Some(low), Some(cost)) if cost > Usd::ZERO => low.ratio_to(cost),
            (Some(_), Some(_)) => 1.0,
            _ => 0.0,
        };
        let latency = match (fastest, c.latency_ms) {
            (Some(low), Some(ms)) => (low + 1.0) / (ms + 1.0),
            _ => UNKNOWN_LATENCY_SCORE,
        };
        c.score = (weights.quality * c.agent.spec.quality.clamp(0.0, 1.0)
            + weights.cost * cost
            + weights.latency * latency)
            / total;
    }
}

fn by_quality(a: &Agent, b: &Agent) -> Ordering {
    b.spec.quality.total_cmp(&a.spec.quality)
}

/// The strategy's order; ties end on the id, so the order is total.
fn order(strategy: RoutingStrategy, a: &Candidate, b: &Candidate) -> Ordering {
    let primary = match strategy {
        RoutingStrategy::Cheapest => lowest_known(a.expected_cost, b.expected_cost)
            .then_with(|| by_quality(a.agent, b.agent)),
        // Explicit orders only the fallbacks beyond the named agents;
        // round_robin and weighted take their candidates by id
        // (`in_turn`), not this order.
        RoutingStrategy::Fastest => {
            lowest_latency(a.latency_ms, b.latency_ms).then_with(|| by_quality(a.agent, b.agent))
        }
        RoutingStrategy::Balanced => b
            .score
            .total_cmp(&a.score)
            .then_with(|| by_quality(a.agent, b.agent)),
        RoutingStrategy::Quality
        | RoutingStrategy::Explicit
        | RoutingStrategy::RoundRobin
        | RoutingStrategy::Weighted => by_quality(a.agent, b.agent)
            .then_with(|| lowest_known(blended_price(a.agent), blended_price(b.agent))),
        RoutingStrategy::Tiered => a
            .agent
            .spec
            .tier
            .cmp(&b.agent.spec.tier)
            .then_with(|| lowest_known(a.expected_cost, b.expected_cost))
            .then_with(|| by_quality(a.agent, b.agent)),
    };
    primary.then_with(|| a.agent.id.cmp(&b.agent.id))
}

/// Chooses the agents for a task (see the module's documentation). Under a
/// budget (`budgeted`), an agent without prices is not chosen: what it
/// costs could not be reserved. `round_robin` and `weighted` take turn 0:
/// route passes the shared counter's turn to [`select_in_turn`].
pub fn select(
    spec: &TaskSpec,
    agents: &[Agent],
    budgeted: bool,
) -> Result<Selection, RoutingError> {
    select_with(spec, agents, budgeted, &Signals::default())
}

/// What route knows of the agents beyond the registry, shared by every
/// instance: the statistics some strategies order by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    /// The task's turn on the shared counter (`round_robin`, `weighted`;
    /// see `domain::rotation`).
    pub turn: u64,
    /// Agents' recent mean latency (`fastest`, `balanced`); an agent not
    /// here has none known.
    pub latency_ms: HashMap<AgentId, f64>,
}

/// Whether a strategy orders by agents' latency.
pub fn reads_latency(strategy: RoutingStrategy) -> bool {
    matches!(
        strategy,
        RoutingStrategy::Fastest | RoutingStrategy::Balanced
    )
}

/// As [`select`], with what route read of the shared statistics.
pub fn select_with(
    spec: &TaskSpec,
    agents: &[Agent],
    budgeted: bool,
    signals: &Signals,
) -> Result<Selection, RoutingError> {
    choose(spec, agents, budgeted, signals)
}

/// Whether a strategy takes turns from the shared counter.
pub fn takes_turns(strategy: RoutingStrategy) -> bool {
    matches!(
        strategy,
        RoutingStrategy::RoundRobin | RoutingStrategy::Weighted
    )
}

fn choose(
    spec: &TaskSpec,
    agents: &[Agent],
    budgeted: bool,
    signals: &Signals,
) -> Result<Selection, RoutingError> {
    let mut capable: Vec<Candidate> = agents
        .iter()
        .filter(|a| a.can_serve(&spec.task_type))
        .filter(|a| !budgeted || a.spec.pricing.is_some())
        .map(|a| Candidate {
            latency_ms: signals.latency_ms.get(&a.id).copied(),
            ..Candidate::new(a, spec, budgeted)
        })
        .collect();
    if spec.routing_strategy == RoutingStrategy::Balanced {
        score_balanced(
            &mut capable,
            spec.weights.unwrap_or(RoutingWeights::BALANCED),
        );
    }
    capable.sort_by(|a, b| order(spec.routing_strategy, a, b));
    let turn = signals.turn;
    let (calls, candidates) = if spec.routing_strategy == RoutingStrategy::Explicit {
        let (calls, named) = named(spec, agents, budgeted)?;
        // The named agents not called, then every other capable agent.
        (calls, named.into_iter().chain(capable).collect())
    } else {
        let fit = fitting(spec, agents, capable)?;
        if takes_turns(spec.routing_strategy) {
            in_turn(spec, fit, turn)
        } else {
            let fit = match spec.routing_strategy {
                RoutingStrategy::Tiered => {
                    ladder(Complexity::of_task(spec).tier(), fit, spec.fanout)
                }
                _ => fit,
            };
            (spread(&fit, spec.fanout as usize), fit)
        }
    };
    let not_called = |limit: usize| {
        let mut ids: Vec<AgentId> = Vec::new();
        for c in candidates.iter().take(limit).filter(|c| c.fits()) {
            let id = &c.agent.id;
            if !calls.iter().any(|a| &a.id == id) && !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        ids
    };
    let fallbacks = match spec.fallback {
        true => not_called(usize::MAX),
        false => Vec::new(),
    };
    let alternates = match (spec.routing_strategy, spec.fallback) {
        (RoutingStrategy::Explicit, false) => not_called(spec.agents.len()),
        _ => not_called(usize::MAX),
    };
    Ok(Selection {
        calls,
        fallbacks,
        alternates,
    })
}

/// The named agents: the first `fanout` are called, the others come first
/// among the fallbacks. Each must exist, be enabled, be priced under a
/// budget, and have room for the task.
fn named<'a>(
    spec: &TaskSpec,
    agents: &'a [Agent],
    budgeted: bool,
) -> Result<(Vec<Agent>, Vec<Candidate<'a>>), RoutingError> {
    let named = spec
        .agents
        .iter()
        .map(|id| {
            let agent = agents
                .iter()
                .find(|a| &a.id == id && a.spec.enabled)
                .ok_or_else(|| RoutingError::UnknownAgent(id.to_string()))?;
            if budgeted && agent.spec.pricing.is_none() {
                return Err(RoutingError::UnpricedAgent(id.to_string()));
            }
            let candidate = Candidate::new(agent, spec, budgeted);
            match agent.spec.constraints.context_window {
                Some(window) if !candidate.fits() => Err(RoutingError::AgentWithoutRoom {
                    agent: id.to_string(),
                    needed: candidate.needed,
                    window,
                }),
                _ => Ok(candidate),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let calls = named
        .iter()
        .take(spec.fanout as usize)
        .map(|c| c.agent.clone())
        .collect();
    Ok((calls, named))
}

/// The capable agents whose context window holds the task, in order; at
/// least `fanout` of them, or the reason there are not.
fn fitting<'a>(
    spec: &TaskSpec,
    agents: &[Agent],
    capable: Vec<Candidate<'a>>,
) -> Result<Vec<Candidate<'a>>, RoutingError> {
    if capable.is_empty() {
        return Err(if agents.iter().any(|a| a.can_serve(&spec.task_type)) {
            RoutingError::NoPricedAgent(spec.task_type.clone())
        } else {
            RoutingError::NoCapableAgent(spec.task_type.clone())
        });
    }
    let (fit, unfit): (Vec<_>, Vec<_>) = capable.into_iter().partition(Candidate::fits);
    if fit.is_empty() {
        return Err(RoutingError::NoAgentWithRoom {
            task_type: spec.task_type.clone(),
            needed: unfit.iter().map(|c| c.needed).min().unwrap_or_default(),
            largest: unfit
                .iter()
                .filter_map(|c| c.agent.spec.constraints.context_window)
                .max()
                .unwrap_or_default(),
        });
    }
    if fit.len() < spec.fanout as usize {
        return Err(RoutingError::NotEnoughAgents {
            wanted: spec.fanout,
            available: fit.len(),
            task_type: spec.task_type.clone(),
        });
    }
    Ok(fit)
}

/// The escalation ladder of a `tiered` task: of `fit` (in tier order), the
/// agents from the start tier up. The start tier is the lowest at or above
/// `needed` with an agent, else the highest there is; then lower while the
/// ladder has fewer than `fanout` agents (`fit` has that many).
fn ladder(needed: u8, fit: Vec<Candidate<'_>>, fanout: u32) -> Vec<Candidate<'_>> {
    let mut tiers: Vec<u8> = fit.iter().map(|c| c.agent.spec.tier).collect();
    tiers.dedup();
    let mut start = tiers
        .iter()
        .copied()
        .find(|&t| t >= needed)
        .or_else(|| tiers.last().copied())
        .unwrap_or(needed);
    let from = |start: u8| fit.iter().filter(|c| c.agent.spec.tier >= start).count();
    while from(start) < fanout as usize
        && let Some(&lower) = tiers.iter().rev().find(|&&t| t < start)
    {
        start = lower;
    }
    fit.into_iter()
        .filter(|c| c.agent.spec.tier >= start)
        .collect()
}

/// The first `wanted` of `ordered`, preferring distinct providers, kept in
/// `ordered`'s order.
fn spread(ordered: &[Candidate], wanted: usize) -> Vec<Agent> {
    let mut chosen: Vec<&Agent> = Vec::with_capacity(wanted);
    let mut providers = HashSet::new();
    for c in ordered {
        if chosen.len() < wanted && providers.insert(c.agent.spec.provider) {
            chosen.push(c.agent);
        }
    }
    for c in ordered {
        if chosen.len() < wanted && !chosen.iter().any(|a| a.id == c.agent.id) {
            chosen.push(c.agent);
        }
    }
    chosen.sort_by_key(|a| ordered.iter().position(|c| c.agent.id == a.id));
    chosen.into_iter().cloned().collect()
}

/// `round_robin` and `weighted`: the candidates that fit, by id, in the
/// order of the turn (see `domain::rotation`); the first `fanout` are
/// called, distinct providers not preferred (every candidate gets its
/// share), and the rest, in that order, are the fallbacks.
fn in_turn<'a>(
    spec: &TaskSpec,
    mut fit: Vec<Candidate<'a>>,
    turn: u64,
) -> (Vec<Agent>, Vec<Candidate<'a>>) {
    fit.sort_by(|a, b| a.agent.id.cmp(&b.agent.id));
    let order = if spec.routing_strategy == RoutingStrategy::Weighted {
        let weights: Vec<u32> = fit.iter().map(|c| c.agent.spec.weight).collect();
        rotation::weighted(&weights, turn)
    } else {
        rotation::round_robin(fit.len(), turn)
    };
    let mut slots: Vec<Option<Candidate<'a>>> = fit.into_iter().map(Some).collect();
    let ordered: Vec<Candidate<'a>> = order
        .into_iter()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect();
    let calls = ordered
        .iter()
        .take(spec.fanout as usize)
        .map(|c| c.agent.clone())
        .collect();
    (calls, ordered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AgentSpec, Pricing, TaskRequest};
    use serde_json::json;

    fn agent(id: &str, provider: &str, quality: f64, price: Option<f64>, caps: &[&str]) -> Agent {
        let mut spec = json!({
            "name": id, "provider": provider, "model": "m", "capabilities": caps,
            "quality": quality, "secret": "s", "base_url": "http://x"
        });
        if let Some(p) = price {
            spec["pricing"] = json!({"input_per_mtok": p, "output_per_mtok": p});
        }
        Agent {
            id: AgentId::parse(id).unwrap(),
            owner: crate::domain::Owner::Platform,
            spec: serde_json::from_value::<AgentSpec>(spec).unwrap(),
            version: 1,
        }
    }

    /// `agent` with a context window and an output cap.
    fn windowed(mut agent: Agent, window: u32, max_tokens: Option<u32>) -> Agent {
        agent.spec.constraints.context_window = Some(window);
        agent.spec.constraints.max_tokens = max_tokens;
        agent
    }

    fn spec(v: serde_json::Value) -> TaskSpec {
        serde_json::from_value::<TaskRequest>(v)
            .unwrap()
            .parse()
            .unwrap()
            .0
    }

    fn ids(agents: &[Agent]) -> Vec<&str> {
        agents.iter().map(|a| a.id.as_str()).collect()
    }

    fn calls(s: &TaskSpec, registry: &[Agent], budgeted: bool) -> Vec<String> {
        let selection = select(s, registry, budgeted).unwrap();
        ids(&selection.calls)
            .into_iter()
            .map(String::from)
            .collect()
    }

    fn with_latency(s: &TaskSpec, registry: &[Agent], latency: &[(&str, f64)]) -> Vec<String> {
        let signals = Signals {
            latency_ms: latency
                .iter()
                .map(|(id, ms)| (AgentId::parse(*id).unwrap(), *ms))
                .collect(),
            ..Signals::default()
        };
        let selection = select_with(s, registry, false, &signals).unwrap();
        ids(&selection.calls)
            .into_iter()
            .map(String::from)
            .chain(selection.fallbacks.iter().map(|id| id.as_str().to_owned()))
            .collect()
    }

    #[test]
    fn fastest_orders_by_recent_latency_unknown_last_by_quality() {
        let s =
            spec(json!({"task_type": "text", "content": "x", "routing": {"strategy": "fastest"}}));
        let latency = [("cheap", 800.0), ("good", 2500.0), ("free", 300.0)];
        // good-too has no latency known: after every agent that has.
        assert_eq!(
            with_latency(&s, &registry(), &latency),
            ["free", "cheap", "good", "good-too"]
        );
        // With none known, by quality.
        assert_eq!(
            with_latency(&s, &registry(), &[]),
            ["good", "good-too", "free", "cheap"]
        );
    }

    #[test]
    fn balanced_blends_quality_cost_and_latency_by_the_weights() {
        let registry = vec![
            agent("dear-slow-best", "anthropic", 0.95, Some(15.0), &["text"]),
            agent("cheap-quick", "openai", 0.6, Some(0.15), &["text"]),
            agent("mid", "gemini", 0.8, Some(1.0), &["text"]),
        ];
        let latency = [
            ("dear-slow-best", 4000.0),
            ("cheap-quick", 400.0),
            ("mid", 900.0),
        ];
        let balanced = |weights: serde_json::Value| {
            let mut routing = json!({"strategy": "balanced"});
            if !weights.is_null() {
                routing["weights"] = weights;
            }
            let s = spec(json!({"task_type": "text", "content": "x", "routing": routing}));
            with_latency(&s, &registry, &latency)
        };
        // The defaults (0.5, 0.3, 0.2): cheap-quick 0.5·0.6 + 0.3 + 0.2 = 0.80,
        // mid 0.40 + 0.3·0.15 + 0.2·0.445 = 0.534, dear-slow-best 0.475 + 0.003 + 0.02 = 0.498.
        assert_eq!(
            balanced(json!(null)),
            ["cheap-quick", "mid", "dear-slow-best"]
        );
        // Quality alone: the best first; latency alone: the quickest.
        assert_eq!(
            balanced(json!({"quality": 1})),
            ["dear-slow-best", "mid", "cheap-quick"]
        );
        assert_eq!(balanced(json!({"latency": 1}))[0], "cheap-quick");
        // The default strategy is balanced.
        let s = spec(json!({"task_type": "text", "content": "x"}));
        assert_eq!(s.routing_strategy, RoutingStrategy::Balanced);
        // An unknown latency counts as halfway, not as the worst.
        let unknown = with_latency(
            &spec(json!({"task_type": "text", "content": "x",
                "routing": {"strategy": "balanced", "weights": {"latency": 1}}})),
            &registry,
            &[("cheap-quick", 400.0), ("mid", 4000.0)],
        );
        assert_eq!(unknown, ["cheap-quick", "dear-slow-best", "mid"]);
    }

    fn registry() -> Vec<Agent> {
        vec![
            agent("cheap", "openai", 0.5, Some(0.1), &["text"]),
            agent("good", "anthropic", 0.9, Some(3.0), &["text"]),
            agent("good-too", "anthropic", 0.85, Some(1.0), &["text"]),
            agent("coder", "openai_compatible", 0.7, Some(0.2), &["code"]),
            agent("free", "gemini", 0.6, None, &["text"]),
        ]
    }

    #[test]
    fn each_strategy_picks_what_it_should() {
        // (routing section, the agents called, the fallbacks in order)
        let table = [
            // The default, balanced: no latency known (one half each), so
            // quality and cost: cheap 0.25 + 0.3 + 0.1, good 0.45 + 0.01 +
            // 0.1, good-too 0.425 + 0.03 + 0.1, free (unpriced) 0.3 + 0.1.
            (json!({}), vec!["cheap"], vec!["good", "good-too", "free"]),
            (
                json!({"strategy": "quality"}),
                vec!["good"],
                vec!["good-too", "free", "cheap"],
            ),
            (
                json!({"strategy": "best"}),
                vec!["good"],
                vec!["good-too", "free", "cheap"],
            ),
            (
                json!({"strategy": "cheapest"}),
                vec!["cheap"],
                vec!["good-too", "good", "free"],
            ),
            // Named: exactly those, in order, whatever their task types; the
            // named ones not called, then the other capable agents by quality.
            (
                json!({"agents": ["coder", "cheap"]}),
                vec!["coder"],
                vec!["cheap", "good", "good-too", "free"],
            ),
            (
                json!({"strategy": "explicit", "agents": ["coder", "cheap"], "fanout": 2}),
                vec!["coder", "cheap"],
                vec!["good", "good-too", "free"],
            ),
            (
                json!({"strategy": "quality", "fallback": false}),
                vec!["good"],
                vec![],
            ),
        ];
        for (routing, called, fallbacks) in table {
            let s = spec(json!({"task_type": "text", "content": "x", "routing": routing}));
            let selection = select(&s, &registry(), false).unwrap();
            assert_eq!(ids(&selection.calls), called, "{routing}");
            let fell_back: Vec<&str> = selection.fallbacks.iter().map(|id| id.as_str()).collect();
            assert_eq!(fell_back, fallbacks, "{routing}");
        }
    }

    #[test]
    fn fanout_prefers_distinct_providers_in_the_strategys_order() {
        let two = spec(
            json!({"task_type": "text", "content": "x", "routing": {"strategy": "quality", "fanout": 2}}),
        );
        // good-too (0.85) is skipped: good already calls anthropic.
        assert_eq!(calls(&two, &registry(), false), ["good", "free"]);
        let three = spec(
            json!({"task_type": "text", "content": "x", "routing": {"strategy": "quality", "fanout": 3}}),
        );
        let selection = select(&three, &registry(), false).unwrap();
        assert_eq!(ids(&selection.calls), ["good", "free", "cheap"]);
        assert_eq!(selection.fallbacks, [AgentId::parse("good-too").unwrap()]);
        // Four text agents on three providers: the fourth repeats one.
        let s = spec(
            json!({"task_type": "text", "content": "x", "routing": {"strategy": "cheapest", "fanout": 4}}),
        );
        assert_eq!(
            calls(&s, &registry(), false),
            ["cheap", "good-too", "good", "free"]
        );
    }

    #[test]
    fn cheapest_is_the_lowest_expected_cost_for_this_input() {
        let priced = |id: &str, input: f64, output: f64| {
            let mut a = agent(id, "mock", 0.5, None, &["text"]);
            a.spec.pricing = Some(
                serde_json::from_value::<Pricing>(
                    json!({"input_per_mtok": input, "output_per_mtok": output}),
                )
                .unwrap(),
            );
            a.spec.constraints.max_tokens = Some(100);
            a
        };
        // Dear input, cheap output; and the other way round.
        let registry = [
            priced("reader", 10.0, 0.1),
            priced("writer", 0.1, 10.0),
            agent("unpriced", "gemini", 0.9, None, &["text"]),
        ];
        let cheapest = |content: String| {
            spec(json!({"task_type": "text", "content": content,
                "routing": {"strategy": "cheapest", "fanout": 3}}))
        };
        // A short question costs its 100 answer tokens: writer's are dear.
        assert_eq!(
            calls(&cheapest("x".into()), &registry, false),
            ["reader", "writer", "unpriced"]
        );
        // 10,000 input tokens outweigh them: reader's input is dear.
        assert_eq!(
            calls(&cheapest("x".repeat(40_000)), &registry, false),
            ["writer", "reader", "unpriced"]
        );
    }

    #[test]
    fn an_agent_whose_context_window_is_too_small_is_skipped() {
        // 1,000 characters: 250 input tokens by the ratio.
        let content = "x".repeat(1_000);
        let registry = vec![
            // Too small for the input.
            windowed(
                agent("tiny", "openai", 0.1, Some(0.01), &["text"]),
                200,
                None,
            ),
            // Room for the input, not for the 4,000 tokens it asks for.
            windowed(
                agent("capped", "gemini", 0.2, Some(0.02), &["text"]),
                4_000,
                Some(4_000),
            ),
            // Room for both, just: 250 + 3,750.
            windowed(
                agent("roomy", "anthropic", 0.3, Some(0.5), &["text"]),
                4_000,
                Some(3_750),
            ),
            // States no window: taken to have room.
            agent("unstated", "mock", 0.4, Some(5.0), &["text"]),
        ];
        let cheapest = spec(json!({"task_type": "text", "content": content,
            "routing": {"strategy": "cheapest", "fanout": 2}}));
        let selection = select(&cheapest, &registry, false).unwrap();
        assert_eq!(ids(&selection.calls), ["roomy", "unstated"]);
        assert!(selection.fallbacks.is_empty(), "{:?}", selection.fallbacks);

        // Under a budget, a call without max_tokens asks for (and reserves)
        // 4,096 output tokens: the window must hold them too.
        let open = vec![windowed(
            agent("open", "openai", 0.5, Some(0.1), &["text"]),
            4_000,
            None,
        )];
        let s = spec(json!({"task_type": "text", "content": "x"}));
        assert_eq!(calls(&s, &open, false), ["open"]);
        let refused = select(&s, &open, true).unwrap_err();
        assert_eq!(refused.code(), "context_window_too_small");
        assert_eq!(
            refused,
            RoutingError::NoAgentWithRoom {
                task_type: TaskType::parse("text").unwrap(),
                needed: 1 + u64::from(budget::RESERVED_OUTPUT_TOKENS),
                largest: 4_000,
            }
        );

        // A named agent is called only if the task fits it.
        let named = spec(json!({"task_type": "text", "content": content,
            "routing": {"agents": ["tiny"]}}));
        assert_eq!(
            select(&named, &registry, false).unwrap_err(),
            RoutingError::AgentWithoutRoom {
                agent: "tiny".into(),
                needed: 250,
                window: 200,
            }
        );
    }

    #[test]
    fn under_a_budget_an_agent_without_prices_is_not_chosen() {
        let two = spec(
            json!({"task_type": "text", "content": "x", "routing": {"strategy": "quality", "fanout": 2}}),
        );
        assert_eq!(calls(&two, &registry(), true), ["good", "cheap"]);
        let named =
            spec(json!({"task_type": "text", "content": "x", "routing": {"agents": ["free"]}}));
        assert_eq!(
            select(&named, &registry(), true).unwrap_err().code(),
            "unpriced_agent"
        );
        let unpriced = vec![agent("free", "gemini", 0.6, None, &["text"])];
        assert_eq!(
            select(&two, &unpriced, true).unwrap_err().code(),
            "no_priced_agent"
        );
    }

    /// `agent` at `tier`.
    fn tiered(mut agent: Agent, tier: u8) -> Agent {
        agent.spec.tier = tier;
        agent
    }

    /// Two tier-1 agents, one tier 2, one tier 3; quality rises with the
    /// tier, and a code-only tier-1 agent.
    fn tiers() -> Vec<Agent> {
        vec![
            tiered(agent("t3", "anthropic", 0.95, Some(45.0), &["text"]), 3),
            tiered(agent("t2", "anthropic", 0.9, Some(9.0), &["text"]), 2),
            tiered(agent("t1-dear", "gemini", 0.7, Some(1.0), &["text"]), 1),
            tiered(agent("t1", "openai", 0.6, Some(0.4), &["text"]), 1),
            tiered(agent("t1-coder", "openai", 0.6, Some(0.1), &["code"]), 1),
        ]
    }

    #[test]
    fn tiered_starts_at_the_tier_the_task_needs_and_climbs() {
        let simple = "Translate 'good morning' into French.";
        let two = "Prove step by step that the square root of 2 is irrational.";
        let three = "Derive the algorithm's cost and compare it with a heap. Why? How? When?";
        let without = |gone: &[&str]| -> Vec<Agent> {
            tiers()
                .into_iter()
                .filter(|a| !gone.contains(&a.id.as_str()))
                .collect()
        };
        // (registry, content, fanout, the agents called, the fallbacks in order)
        type Case<'a> = (Vec<Agent>, &'a str, u32, Vec<&'a str>, Vec<&'a str>);
        let table: [Case; 8] = [
            // Tier 1: its cheapest first, the rest of the tier, then up.
            (tiers(), simple, 1, vec!["t1"], vec!["t1-dear", "t2", "t3"]),
            // Tier 2 and 3: the tiers below are left out.
            (tiers(), two, 1, vec!["t2"], vec!["t3"]),
            (tiers(), three, 1, vec!["t3"], vec![]),
            // No agent at the tier needed: the next one up...
            (
                without(&["t1", "t1-dear"]),
                simple,
                1,
                vec!["t2"],
                vec!["t3"],
            ),
            (without(&["t2"]), two, 1, vec!["t3"], vec![]),
            // ...or, with none above, the highest there is.
            (without(&["t3"]), three, 1, vec!["t2"], vec![]),
            // Fanout 2 at tier 3, which has one agent: from tier 2.
            (tiers(), three, 2, vec!["t2", "t3"], vec![]),
            // Fanout 2 at tier 1: two agents of the tier, distinct providers.
            (tiers(), simple, 2, vec!["t1", "t1-dear"], vec!["t2", "t3"]),
        ];
        for (registry, content, fanout, called, fallbacks) in table {
            let s = spec(json!({"task_type": "text", "content": content,
                "routing": {"strategy": "tiered", "fanout": fanout}}));
            let selection = select(&s, &registry, false).unwrap();
            assert_eq!(ids(&selection.calls), called, "{content} x{fanout}");
            let ladder: Vec<&str> = selection.fallbacks.iter().map(|id| id.as_str()).collect();
            assert_eq!(ladder, fallbacks, "{content} x{fanout}");
        }
        // Only capable agents: a code task takes the code agent.
        let s = spec(json!({"task_type": "code", "content": "Write hello world.",
            "routing": {"strategy": "tiered"}}));
        assert_eq!(calls(&s, &tiers(), false), ["t1-coder"]);
    }

    #[test]
    fn named_agents_must_exist() {
        let s =
            spec(json!({"task_type": "text", "content": "x", "routing": {"agents": ["ghost"]}}));
        assert_eq!(
            select(&s, &registry(), false),
            Err(RoutingError::UnknownAgent("ghost".into()))
        );
        // Every named agent, called or not.
        let s = spec(
            json!({"task_type": "text", "content": "x", "routing": {"agents": ["cheap", "ghost"]}}),
        );
        assert_eq!(
            select(&s, &registry(), false),
            Err(RoutingError::UnknownAgent("ghost".into()))
        );
    }

    #[test]
    fn no_or_too_few_capable_agents_is_a_clear_error() {
        let s = spec(json!({"task_type": "image", "content": "x"}));
        assert_eq!(
            select(&s, &registry(), false).unwrap_err().code(),
            "no_capable_agent"
        );
        let s = spec(json!({"task_type": "code", "content": "x", "routing": {"fanout": 2}}));
        assert_eq!(
            select(&s, &registry(), false).unwrap_err().code(),
            "not_enough_agents"
        );
        let mut disabled = registry();
        for a in &mut disabled {
            a.spec.enabled = false;
        }
        let s = spec(json!({"task_type": "text", "content": "x"}));
        assert_eq!(
            select(&s, &disabled, false).unwrap_err().code(),
            "no_capable_agent"
        );
    }

    fn in_turn_of(s: &TaskSpec, registry: &[Agent], turn: u64) -> (Vec<String>, Vec<String>) {
        let selection = select_with(
            s,
            registry,
            false,
            &Signals {
                turn,
                ..Signals::default()
            },
        )
        .unwrap();
        (
            ids(&selection.calls)
                .into_iter()
                .map(String::from)
                .collect(),
            selection
                .fallbacks
                .iter()
                .map(|id| id.as_str().to_owned())
                .collect(),
        )
    }

    #[test]
    fn round_robin_takes_the_capable_agents_in_turn_by_id() {
        // The text agents by id: cheap, free, good, good-too.
        let s = spec(json!({"task_type": "text", "content": "x",
            "routing": {"strategy": "round_robin"}}));
        let firsts: Vec<String> = (0..8)
            .map(|turn| in_turn_of(&s, &registry(), turn).0[0].clone())
            .collect();
        assert_eq!(
            firsts,
            [
                "cheap", "free", "good", "good-too", "cheap", "free", "good", "good-too"
            ]
        );
        // The others, in turn after it, are the fallbacks.
        let (calls, fallbacks) = in_turn_of(&s, &registry(), 2);
        assert_eq!(calls, ["good"]);
        assert_eq!(fallbacks, ["good-too", "cheap", "free"]);
        // Fan-out: the next N, distinct, whatever their providers (good
        // and good-too are both anthropic).
        let two = spec(json!({"task_type": "text", "content": "x",
            "routing": {"strategy": "round_robin", "fanout": 2}}));
        let (calls, fallbacks) = in_turn_of(&two, &registry(), 2);
        assert_eq!(calls, ["good", "good-too"]);
        assert_eq!(fallbacks, ["cheap", "free"]);
        let (calls, _) = in_turn_of(&two, &registry(), 3);
        assert_eq!(calls, ["good-too", "cheap"]);
        // The same filters as every strategy: under a budget the unpriced
        // agent is out of the turn.
        let budgeted = select_with(
            &s,
            &registry(),
            true,
            &Signals {
                turn: 1,
                ..Signals::default()
            },
        )
        .unwrap();
        assert_eq!(ids(&budgeted.calls), ["good"]);
        // Without a turn (select), turn 0.
        assert_eq!(calls_of(&s), ["cheap"]);
    }

    fn calls_of(s: &TaskSpec) -> Vec<String> {
        calls(s, &registry(), false)
    }

    #[test]
    fn weighted_gives_each_agent_its_weight_of_every_cycle() {
        let mut registry = registry();
        // By id: cheap 3, free 0, good 1, good-too 2 (a cycle of 6).
        for a in &mut registry {
            a.spec.weight = match a.id.as_str() {
                "cheap" => 3,
                "free" => 0,
                "good-too" => 2,
                _ => 1,
            };
        }
        let s = spec(json!({"task_type": "text", "content": "x",
            "routing": {"strategy": "weighted"}}));
        let mut counts = std::collections::BTreeMap::<String, u32>::new();
        for turn in 0..60 {
            let (calls, fallbacks) = in_turn_of(&s, &registry, turn);
            *counts.entry(calls[0].clone()).or_default() += 1;
            // Weight 0 is only ever a fallback, and the last one.
            assert_eq!(fallbacks.last().map(String::as_str), Some("free"));
        }
        let counts: Vec<(&str, u32)> = counts.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(counts, [("cheap", 30), ("good", 10), ("good-too", 20)]);
        // Interleaved, not in runs: cheap good-too cheap good good-too cheap.
        let firsts: Vec<String> = (0..6)
            .map(|turn| in_turn_of(&s, &registry, turn).0[0].clone())
            .collect();
        assert_eq!(
            firsts,
            ["cheap", "good-too", "cheap", "good", "good-too", "cheap"]
        );
        // Fan-out of 3: three distinct agents with a weight, never free.
        let three = spec(json!({"task_type": "text", "content": "x",
            "routing": {"strategy": "weighted", "fanout": 3}}));
        for turn in 0..6 {
            let (mut calls, _) = in_turn_of(&three, &registry, turn);
            calls.sort();
            assert_eq!(calls, ["cheap", "good", "good-too"], "{turn}");
        }
        // Fan-out of 4 needs free, the only agent left.
        let four = spec(json!({"task_type": "text", "content": "x",
            "routing": {"strategy": "weighted", "fanout": 4}}));
        let (calls, _) = in_turn_of(&four, &registry, 0);
        assert_eq!(calls.last().map(String::as_str), Some("free"));
    }
}
