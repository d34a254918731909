//! Tasks: the request as a client sends it, the validated spec it parses into,
//! and the status state machine every stage moves it through.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::call::Usage;
use super::ids::{AgentId, CallId, IdError, IdempotencyKey, TaskId, TenantId};
use super::money::{self, Usd};
use super::task_type::{TaskType, TaskTypeError};
use super::text;

/// Largest `content` accepted, in bytes; larger is refused (413), never truncated.
pub const MAX_CONTENT_BYTES: usize = 200 * 1024;
/// Largest `system` prompt accepted, in bytes.
pub const MAX_SYSTEM_BYTES: usize = 32 * 1024;
pub const MAX_FANOUT: u32 = 10;
/// How many other agents a failed call may fall back to, at most, and by
/// default.
pub const MAX_FALLBACK_DEPTH: u32 = 5;
pub const DEFAULT_FALLBACK_DEPTH: u32 = 2;
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
pub const MAX_TIMEOUT_MS: u64 = 15 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    /// Not written any more (routing plans a queued task in one write); a
    /// task stored by an earlier version may still be in it.
    Routing,
    Running,
    Aggregating,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Queued,
        TaskStatus::Routing,
        TaskStatus::Running,
        TaskStatus::Aggregating,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }

    /// The state machine: forward, or to `failed` / `cancelled` from any
    /// unfinished state. A finished task never moves. Routing takes a queued
    /// task straight to `running` with its plan (one write); `routing` is
    /// what earlier versions wrote first, and a task stored by one may still
    /// be in it. A running task whose results combine without further calls
    /// completes directly, skipping a write of `aggregating` that nobody
    /// could observe.
    pub fn can_become(self, next: TaskStatus) -> bool {
        use TaskStatus::*;
        match (self, next) {
            (Queued, Routing | Running) | (Routing, Running) | (Running, Aggregating) => true,
            (Running | Aggregating, Completed) => true,
            (from, Failed | Cancelled) => !from.is_terminal(),
            _ => false,
        }
    }

    /// Whether a write that took a task from `before` (`None`: no task) to
    /// `after` finished it: the one write whose change announces the task.
    /// Later writes to a finished task (costs of late calls) announce nothing.
    pub fn finishes(before: Option<TaskStatus>, after: TaskStatus) -> bool {
        after.is_terminal() && !before.is_some_and(TaskStatus::is_terminal)
    }

    /// Every status from which `next` may be reached: the condition a store
    /// checks atomically when it applies a transition.
    pub fn predecessors(next: TaskStatus) -> Vec<TaskStatus> {
        Self::ALL
            .into_iter()
            .filter(|s| s.can_become(next))
            .collect()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Routing => "routing",
            TaskStatus::Running => "running",
            TaskStatus::Aggregating => "aggregating",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {from} task cannot become {to}")]
pub struct TransitionError {
    pub from: TaskStatus,
    pub to: TaskStatus,
}

/// How route orders the agents that may serve a task (see `domain::routing`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RoutingStrategy {
    /// The agents `routing.agents` names, in order (implied by naming them).
    Explicit,
    /// Lowest expected cost for this input.
    Cheapest,
    /// Highest quality score; `best` is its older name.
    #[serde(alias = "best")]
    Quality,
    /// Lowest recent latency.
    Fastest,
    /// A blend of quality, expected cost and latency (`routing.weights`).
    #[default]
    Balanced,
    RoundRobin,
    Weighted,
    /// The cheapest agent of the lowest tier the task's estimated complexity
    /// needs, escalating to higher tiers (see `domain::complexity`).
    Tiered,
}

impl RoutingStrategy {
    /// The strategies a request may name (all of them), in the order the
    /// API document lists them.
    pub const OFFERED: [RoutingStrategy; 8] = [
        RoutingStrategy::Explicit,
        RoutingStrategy::Cheapest,
        RoutingStrategy::Quality,
        RoutingStrategy::Fastest,
        RoutingStrategy::Balanced,
        RoutingStrategy::RoundRobin,
        RoutingStrategy::Weighted,
        RoutingStrategy::Tiered,
    ];

    /// Names a request may use for a strategy besides its own (`best`).
    pub const ALIASES: [&str; 1] = ["best"];

    pub fn as_str(self) -> &'static str {
        match self {
            RoutingStrategy::Explicit => "explicit",
            RoutingStrategy::Cheapest => "cheapest",
            RoutingStrategy::Quality => "quality",
            RoutingStrategy::Fastest => "fastest",
            RoutingStrategy::Balanced => "balanced",
            RoutingStrategy::RoundRobin => "round_robin",
            RoutingStrategy::Weighted => "weighted",
            RoutingStrategy::Tiered => "tiered",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AggregationStrategy {
    #[default]
    First,
    All,
    Best,
    Consensus,
    Vote,
    Merge,
    Judge,
}

impl AggregationStrategy {
    /// The strategies a request may name today; the others are refused (422).
    pub const OFFERED: [AggregationStrategy; 6] = [
        AggregationStrategy::First,
        AggregationStrategy::All,
        AggregationStrategy::Best,
        AggregationStrategy::Consensus,
        AggregationStrategy::Vote,
        AggregationStrategy::Merge,
    ];

    /// Whether `aggregation.threshold` tunes the strategy: those that
    /// compare answers by similarity (see `domain::aggregation`).
    pub fn uses_similarity(self) -> bool {
        matches!(
            self,
            AggregationStrategy::Best | AggregationStrategy::Consensus | AggregationStrategy::Merge
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AggregationStrategy::First => "first",
            AggregationStrategy::All => "all",
            AggregationStrategy::Best => "best",
            AggregationStrategy::Consensus => "consensus",
            AggregationStrategy::Vote => "vote",
            AggregationStrategy::Merge => "merge",
            AggregationStrategy::Judge => "judge",
        }
    }
}

/// A string enum of `values`, for request fields that take fewer values
/// than their type has.
fn enum_schema<'a>(
    values: impl IntoIterator<Item = &'a str>,
    description: &str,
) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .description(Some(description))
        .build()
}

fn content_schema() -> utoipa::openapi::schema::Object {
    text::not_blank_schema(
        Some(MAX_CONTENT_BYTES),
        "The text to work on: not blank, at most 204,800 bytes of UTF-8 (over is 413). \
         `maxLength` counts characters, so text of multi-byte characters can be over \
         the limit in fewer.",
    )
}

fn offered_routing() -> utoipa::openapi::schema::Object {
    enum_schema(
        RoutingStrategy::OFFERED
            .map(RoutingStrategy::as_str)
            .into_iter()
            .chain(RoutingStrategy::ALIASES),
        "How agents are picked: `explicit` (implied by `agents`, and only with them), \
         `cheapest` (lowest expected cost for this input), `quality` (highest quality \
         score; `best` is the same), `fastest` (lowest recent latency), `balanced` (a blend \
         of quality, expected cost and latency, tuned by `weights`), `round_robin` (the \
         capable agents in turn, a turn shared by every instance), `weighted` (likewise, \
         each agent in proportion to its registry `weight`; weight 0 only when too few \
         others), `tiered` (the cheapest agent of the lowest tier the task's estimated \
         complexity needs; an answer that fails, comes back empty or is cut off by \
         `max_tokens` escalates to the next higher tier among the call's fallbacks). \
         Default `balanced`, or `explicit` when `agents` is given",
    )
}

fn offered_aggregation() -> utoipa::openapi::schema::Object {
    enum_schema(
        AggregationStrategy::OFFERED.map(AggregationStrategy::as_str),
        "How answers are combined (default `first`): `first` (the first answer in plan \
         order), `all` (every answer, attributed), `best` (the highest-scoring answer: a \
         blend of the agent's quality, the finish reason and completeness), `consensus` (the \
         most central answer of the largest group of similar answers; `confidence` is the \
         group's share), `vote` (an exact vote over normalised answers; ties broken by the \
         voters' quality, then plan order), `merge` (JSON objects deep-merged with a conflict \
         per disputed key; text as sections attributed to their agents). `judge` is not \
         offered yet",
    )
}

fn default_fanout() -> u32 {
    1
}

fn default_true() -> bool {
    true
}

/// A spec stored before `fallback_depth` existed had fallback on (nothing
/// called it then) and the default depth.
fn default_fallback_depth() -> u32 {
    DEFAULT_FALLBACK_DEPTH
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutingRequest {
    /// None: `explicit` when `agents` names any, else the default.
    #[serde(default)]
    #[schema(schema_with = offered_routing)]
    pub strategy: Option<RoutingStrategy>,
    /// Exactly these agents, in order (at least `fanout` of them); none: any capable agent.
    #[serde(default)]
    #[schema(value_type = Vec<AgentId>)]
    pub agents: Vec<String>,
    /// How many agents are called (default 1).
    #[serde(default = "default_fanout")]
    #[schema(minimum = 1, maximum = 10)]
    pub fanout: u32,
    /// Whether a call that fails for good on the provider's side is tried
    /// with another capable agent (default true).
    #[serde(default = "default_true")]
    pub fallback: bool,
    /// How many other agents a call may fall back to (0 to 5, default 2);
    /// only with `fallback`.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 5)]
    pub fallback_depth: Option<u32>,
    /// How `balanced` weighs quality, expected cost and latency (each 0 to
    /// 1, at least one above 0; a weight not given is 0); only with
    /// `balanced`. Default `{"quality": 0.5, "cost": 0.3, "latency": 0.2}`.
    #[serde(default, deserialize_with = "text::optional_object")]
    pub weights: Option<RoutingWeights>,
}

/// What `balanced` routing weighs (see `domain::routing`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutingWeights {
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub quality: f64,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub cost: f64,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub latency: f64,
}

impl RoutingWeights {
    pub const BALANCED: RoutingWeights = RoutingWeights {
        quality: 0.5,
        cost: 0.3,
        latency: 0.2,
    };

    fn check(&self) -> Result<(), RequestError> {
        let all = [self.quality, self.cost, self.latency];
        if all.iter().all(|w| (0.0..=1.0).contains(w)) && all.iter().any(|w| *w > 0.0) {
            Ok(())
        } else {
            Err(RequestError::BadWeights)
        }
    }
}

impl Default for RoutingRequest {
    fn default() -> Self {
        RoutingRequest {
            strategy: None,
            agents: Vec::new(),
            fanout: 1,
            fallback: true,
            fallback_depth: None,
            weights: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregationRequest {
    #[serde(default)]
    #[schema(schema_with = offered_aggregation)]
    pub strategy: AggregationStrategy,
    /// How similar two answers must be (0 to 1) to count as the same
    /// answer; default 0.8. Only with `best`, `consensus` and `merge` (the
    /// strategies that compare answers); with another it is refused.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub threshold: Option<f64>,
    /// How many calls must succeed (1 to 10, at most `routing.fanout`;
    /// default 1): with fewer the task fails `not_enough_answers`, every
    /// call's result and cost kept.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10)]
    pub min_success: Option<u32>,
}

/// How a strategy is tuned, as stored in a task's spec. A spec stored
/// before these existed has the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AggregationOptions {
    /// The similarity two answers need to be the same answer; `None` is
    /// the default (`domain::aggregation::DEFAULT_THRESHOLD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Fewer succeeded calls fail the task `not_enough_answers`.
    #[serde(default = "default_min_success")]
    pub min_success: u32,
}

fn default_min_success() -> u32 {
    1
}

impl Default for AggregationOptions {
    fn default() -> Self {
        AggregationOptions {
            threshold: None,
            min_success: default_min_success(),
        }
    }
}

impl AggregationOptions {
    pub fn is_default(&self) -> bool {
        *self == AggregationOptions::default()
    }
}

impl AggregationRequest {
    /// The tuning, every rule checked: `threshold` 0 to 1 and only with a
    /// strategy that compares answers, `min_success` 1 to 10 and at most
    /// the fanout.
    fn options(&self, fanout: u32) -> Result<AggregationOptions, RequestError> {
        if let Some(threshold) = self.threshold {
            if !(0.0..=1.0).contains(&threshold) {
                return Err(RequestError::ThresholdOutOfRange);
            }
            if !self.strategy.uses_similarity() {
                return Err(RequestError::ThresholdWithoutSimilarity(
                    self.strategy.as_str(),
                ));
            }
        }
        let min_success = self.min_success.unwrap_or(1);
        if !(1..=MAX_FANOUT).contains(&min_success) {
            return Err(RequestError::MinSuccessOutOfRange { max: MAX_FANOUT });
        }
        if min_success > fanout {
            return Err(RequestError::MinSuccessExceedsFanout {
                min_success,
                fanout,
            });
        }
        Ok(AggregationOptions {
            threshold: self.threshold,
            min_success,
        })
    }
}

/// A task as a client sends it. Unknown fields are refused, not ignored.
///
/// A field that breaks its rule is refused with 422 (413 for `content` and
/// `system` over their limit), and the problem's `field` names it.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// The capability asked for; only agents that list it serve the task.
    #[schema(value_type = TaskType)]
    pub task_type: String,
    #[schema(schema_with = content_schema)]
    pub content: String,
    /// At most 32,768 bytes of UTF-8 (over is 413).
    #[serde(default)]
    #[schema(max_length = 32768)]
    pub system: Option<String>,
    #[serde(default, deserialize_with = "super::text::object")]
    pub routing: RoutingRequest,
    #[serde(default, deserialize_with = "super::text::object")]
    pub aggregation: AggregationRequest,
    /// The most the task may cost, in US dollars: a number or a decimal string, not negative.
    /// The panel's expected cost (each call's estimated input, and its
    /// output cap at the output price) must fit, or the task fails
    /// `budget_exceeded` before any call; only priced agents are chosen.
    #[serde(default)]
    #[schema(schema_with = money::nullable_amount_in)]
    pub budget_usd: Option<Usd>,
    /// How long the task may take, 1 to 900,000 (default 60,000).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 900000)]
    pub timeout_ms: Option<u64>,
    /// The `Idempotency-Key` header works too; if both are sent they must be equal.
    #[serde(default)]
    #[schema(value_type = Option<IdempotencyKey>)]
    pub idempotency_key: Option<String>,
    /// Returned with the task as sent.
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// Why a request is refused, one variant per field rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("task_type {0}")]
    BadTaskType(TaskTypeError),
    #[error("content must not be empty")]
    EmptyContent,
    #[error("content is {size} bytes; the limit is {limit}")]
    ContentTooLarge { size: usize, limit: usize },
    #[error("system is {size} bytes; the limit is {limit}")]
    SystemTooLarge { size: usize, limit: usize },
    #[error("routing.fanout must be between 1 and {max}")]
    FanoutOutOfRange { max: u32 },
    #[error("routing.agents: {0}")]
    BadAgent(IdError),
    #[error("routing.fanout ({fanout}) exceeds the {named} agents named in routing.agents")]
    FanoutExceedsAgents { fanout: u32, named: usize },
    #[error("routing.strategy explicit calls the agents routing.agents names, and it names none")]
    ExplicitWithoutAgents,
    #[error(
        "routing.agents names the agents to call (strategy explicit); routing.strategy {0} cannot apply to them"
    )]
    StrategyWithAgents(&'static str),
    #[error("routing.fallback_depth must be between 0 and {max}")]
    FallbackDepthOutOfRange { max: u32 },
    #[error("routing.fallback_depth needs routing.fallback, which is false")]
    FallbackDepthWithoutFallback,
    #[error("routing.weights tunes strategy balanced; this task's strategy is {0}")]
    WeightsWithoutBalanced(&'static str),
    #[error("routing.weights must each be between 0 and 1, and at least one above 0")]
    BadWeights,
    #[error("aggregation.threshold must be between 0 and 1")]
    ThresholdOutOfRange,
    #[error("aggregation.threshold tunes best, consensus and merge; this task's strategy is {0}")]
    ThresholdWithoutSimilarity(&'static str),
    #[error("aggregation.min_success must be between 1 and {max}")]
    MinSuccessOutOfRange { max: u32 },
    #[error("aggregation.min_success ({min_success}) exceeds routing.fanout ({fanout})")]
    MinSuccessExceedsFanout { min_success: u32, fanout: u32 },
    #[error("budget_usd must not be negative")]
    NegativeBudget,
    #[error("timeout_ms must be between 1 and {max}")]
    TimeoutOutOfRange { max: u64 },
    #[error("idempotency_key: {0}")]
    BadIdempotencyKey(IdError),
}

impl RequestError {
    /// Size errors are 413 at the edge; every other rule is 422.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            RequestError::ContentTooLarge { .. } | RequestError::SystemTooLarge { .. }
        )
    }

    /// The request field the error is about, for problem details.
    pub fn field(&self) -> &'static str {
        match self {
            RequestError::BadTaskType(_) => "task_type",
            RequestError::EmptyContent | RequestError::ContentTooLarge { .. } => "content",
            RequestError::SystemTooLarge { .. } => "system",
            RequestError::FanoutOutOfRange { .. } | RequestError::FanoutExceedsAgents { .. } => {
                "routing.fanout"
            }
            RequestError::BadAgent(_) | RequestError::ExplicitWithoutAgents => "routing.agents",
            RequestError::StrategyWithAgents(_) => "routing.strategy",
            RequestError::FallbackDepthOutOfRange { .. }
            | RequestError::FallbackDepthWithoutFallback => "routing.fallback_depth",
            RequestError::WeightsWithoutBalanced(_) | RequestError::BadWeights => "routing.weights",
            RequestError::ThresholdOutOfRange | RequestError::ThresholdWithoutSimilarity(_) => {
                "aggregation.threshold"
            }
            RequestError::MinSuccessOutOfRange { .. }
            | RequestError::MinSuccessExceedsFanout { .. } => "aggregation.min_success",
            RequestError::NegativeBudget => "budget_usd",
            RequestError::TimeoutOutOfRange { .. } => "timeout_ms",
            RequestError::BadIdempotencyKey(_) => "idempotency_key",
        }
    }
}

/// A validated task request: every field is within its rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task_type: TaskType,
    pub content: String,
    pub system: Option<String>,
    pub routing_strategy: RoutingStrategy,
    pub agents: Vec<AgentId>,
    pub fanout: u32,
    pub fallback: bool,
    /// How many other agents each call may fall back to (0 without fallback).
    #[serde(default = "default_fallback_depth")]
    pub fallback_depth: u32,
    /// `balanced`'s weights, when the request set them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<RoutingWeights>,
    pub aggregation: AggregationStrategy,
    /// How the strategy is tuned (`aggregation.threshold`, `min_success`).
    #[serde(default, skip_serializing_if = "AggregationOptions::is_default")]
    pub aggregation_options: AggregationOptions,
    pub budget_usd: Option<Usd>,
    pub timeout_ms: u64,
    pub metadata: BTreeMap<String, serde_json::Value>,
}

impl TaskRequest {
    /// Parses the request into a spec and its idempotency key (the body's, if any).
    pub fn parse(self) -> Result<(TaskSpec, Option<IdempotencyKey>), RequestError> {
        let task_type = TaskType::parse(self.task_type).map_err(RequestError::BadTaskType)?;
        if text::is_blank(&self.content) {
            return Err(RequestError::EmptyContent);
        }
        if self.content.len() > MAX_CONTENT_BYTES {
            return Err(RequestError::ContentTooLarge {
                size: self.content.len(),
                limit: MAX_CONTENT_BYTES,
            });
        }
        if let Some(system) = &self.system
            && system.len() > MAX_SYSTEM_BYTES
        {
            return Err(RequestError::SystemTooLarge {
                size: system.len(),
                limit: MAX_SYSTEM_BYTES,
            });
        }
        let routing = self.routing;
        if !(1..=MAX_FANOUT).contains(&routing.fanout) {
            return Err(RequestError::FanoutOutOfRange { max: MAX_FANOUT });
        }
        let agents = routing
            .agents
            .into_iter()
            .map(AgentId::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(RequestError::BadAgent)?;
        if !agents.is_empty() && routing.fanout as usize > agents.len() {
            return Err(RequestError::FanoutExceedsAgents {
                fanout: routing.fanout,
                named: agents.len(),
            });
        }
        let routing_strategy = match (routing.strategy, agents.is_empty()) {
            (None, true) => RoutingStrategy::default(),
            (None | Some(RoutingStrategy::Explicit), false) => RoutingStrategy::Explicit,
            (Some(RoutingStrategy::Explicit), true) => {
                return Err(RequestError::ExplicitWithoutAgents);
            }
            (Some(strategy), false) => {
                return Err(RequestError::StrategyWithAgents(strategy.as_str()));
            }
            (Some(strategy), true) => strategy,
        };
        if let Some(weights) = &routing.weights {
            if routing_strategy != RoutingStrategy::Balanced {
                return Err(RequestError::WeightsWithoutBalanced(
                    routing_strategy.as_str(),
                ));
            }
            weights.check()?;
        }
        let fallback_depth = match (routing.fallback, routing.fallback_depth) {
            (false, Some(_)) => return Err(RequestError::FallbackDepthWithoutFallback),
            (false, None) => 0,
            (true, Some(depth)) if depth > MAX_FALLBACK_DEPTH => {
                return Err(RequestError::FallbackDepthOutOfRange {
                    max: MAX_FALLBACK_DEPTH,
                });
            }
            (true, depth) => depth.unwrap_or(DEFAULT_FALLBACK_DEPTH),
        };
        let aggregation_options = self.aggregation.options(routing.fanout)?;
        if self.budget_usd.is_some_and(Usd::is_negative) {
            return Err(RequestError::NegativeBudget);
        }
        let timeout_ms = self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(RequestError::TimeoutOutOfRange {
                max: MAX_TIMEOUT_MS,
            });
        }
        let key = self
            .idempotency_key
            .map(IdempotencyKey::parse)
            .transpose()
            .map_err(RequestError::BadIdempotencyKey)?;
        let spec = TaskSpec {
            task_type,
            content: self.content,
            system: self.system,
            routing_strategy,
            agents,
            fanout: routing.fanout,
            fallback: routing.fallback,
            fallback_depth,
            weights: routing.weights,
            aggregation: self.aggregation.strategy,
            aggregation_options,
            budget_usd: self.budget_usd,
            timeout_ms,
            metadata: self.metadata,
        };
        Ok((spec, key))
    }
}

/// The combined answer of a finished task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AggregateResult {
    pub strategy: AggregationStrategy,
    /// The combined answer; empty when it is in the blob store at `output_ref`.
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub output_ref: Option<super::call::BlobRef>,
    pub confidence: f64,
    #[serde(default)]
    pub candidates: Vec<serde_json::Value>,
    #[serde(default)]
    pub conflicts: Vec<serde_json::Value>,
}

/// Why a task failed (or was cancelled), in words fit for its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskError {
    pub code: String,
    pub message: String,
}

impl TaskError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        TaskError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// A call the router planned for a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedCall {
    pub call_id: CallId,
    pub agent_id: AgentId,
    /// What was reserved for the call when a budget applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<super::budget::CallHold>,
    /// The agents to try, in order, if this one fails for good on the
    /// provider's side: this call's own (no two calls of a fan-out share one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<AgentId>,
    /// The call is its agent's circuit probe (route won the claim): its
    /// outcome closes the circuit or opens it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub probe: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub tenant: TenantId,
    pub task_id: TaskId,
    pub status: TaskStatus,
    pub spec: TaskSpec,
    pub idempotency_key: Option<IdempotencyKey>,
    /// The `sub` of whoever submitted it.
    pub submitted_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub plan: Vec<PlannedCall>,
    /// How many call results the fan-in waits for; set by routing.
    #[serde(default)]
    pub expected_calls: Option<u32>,
    #[serde(default)]
    pub result: Option<AggregateResult>,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default)]
    pub cost_usd: Option<Usd>,
    /// The calls whose usage and cost `usage` and `cost_usd` include; a call
    /// that lands after the task ended is added once, by its id.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub counted_calls: BTreeSet<CallId>,
    #[serde(default)]
    pub error: Option<TaskError>,
}

impl Task {
    pub fn new(
        tenant: TenantId,
        spec: TaskSpec,
        idempotency_key: Option<IdempotencyKey>,
        submitted_by: impl Into<String>,
        now: DateTime<Utc>,
    ) -> Self {
        Task {
            tenant,
            task_id: TaskId::new(),
            status: TaskStatus::Queued,
            spec,
            idempotency_key,
            submitted_by: submitted_by.into(),
            created_at: now,
            updated_at: now,
            plan: Vec::new(),
            expected_calls: None,
            result: None,
            usage: Usage::default(),
            cost_usd: None,
            counted_calls: BTreeSet::new(),
            error: None,
        }
    }

    /// What an ended task owes once `calls` that landed after it ended are
    /// counted: its usage, its cost (unknown if any call's is) and the calls
    /// it counts. `None` when the task has not ended, or counts them all.
    pub fn with_late_calls(
        &self,
        calls: &[super::call::CallResult],
    ) -> Option<(Usage, Option<Usd>, BTreeSet<CallId>)> {
        if !self.status.is_terminal() {
            return None;
        }
        let late: Vec<_> = calls
            .iter()
            .filter(|c| !self.counted_calls.contains(&c.call_id))
            .collect();
        if late.is_empty() {
            return None;
        }
        let usage = late.iter().fold(self.usage, |sum, c| sum + c.usage);
        // A task that counted no call owes nothing yet, whatever its cost says.
        let before = if self.counted_calls.is_empty() {
            Some(Usd::ZERO)
        } else {
            self.cost_usd
        };
        let cost = late.iter().fold(before, |sum, c| Some(sum? + c.cost_usd?));
        let mut counted = self.counted_calls.clone();
        counted.extend(late.iter().map(|c| c.call_id));
        Some((usage, cost, counted))
    }

    /// What a call's result settles: its reservation on the tenant's
    /// counters, if the plan made one.
    pub fn settlement(&self, call_id: CallId) -> Option<super::budget::Settlement> {
        self.planned(call_id)
            .and_then(|c| c.hold)
            .and_then(|hold| hold.settlement())
    }

    pub fn planned(&self, call_id: CallId) -> Option<&PlannedCall> {
        self.plan.iter().find(|c| c.call_id == call_id)
    }

    /// When the task must have finished; past it, whatever stage holds it fails it.
    pub fn deadline(&self) -> DateTime<Utc> {
        self.created_at + chrono::Duration::milliseconds(self.spec.timeout_ms as i64)
    }

    /// Applies a transition in memory, checking the state machine. Stores use
    /// the same rule as an atomic condition.
    pub fn apply(
        &mut self,
        to: TaskStatus,
        patch: TaskPatch,
        now: DateTime<Utc>,
    ) -> Result<(), TransitionError> {
        if !self.status.can_become(to) {
            return Err(TransitionError {
                from: self.status,
                to,
            });
        }
        self.status = to;
        self.updated_at = now;
        patch.apply_to(self);
        Ok(())
    }
}

/// Fields a transition may set alongside the new status.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskPatch {
    pub plan: Option<Vec<PlannedCall>>,
    pub expected_calls: Option<u32>,
    pub result: Option<AggregateResult>,
    pub usage: Option<Usage>,
    pub cost_usd: Option<Usd>,
    pub counted_calls: Option<BTreeSet<CallId>>,
    pub error: Option<TaskError>,
    /// Reserved against the tenant's budgets in the same atomic write, or
    /// the transition is refused (`StoreError::OverBudget`). Not a field of
    /// the task: its calls' holds say what each reserved.
    pub hold: Option<super::budget::Hold>,
    /// An audit entry written in the same atomic write (a cancellation, a
    /// budget refusal): both or neither. Not a field of the task.
    pub audit: Option<super::audit::AuditEntry>,
}

impl TaskPatch {
    pub fn apply_to(self, task: &mut Task) {
        if let Some(plan) = self.plan {
            task.plan = plan;
        }
        if let Some(n) = self.expected_calls {
            task.expected_calls = Some(n);
        }
        if let Some(result) = self.result {
            task.result = Some(result);
        }
        if let Some(usage) = self.usage {
            task.usage = usage;
        }
        if let Some(cost) = self.cost_usd {
            task.cost_usd = Some(cost);
        }
        if let Some(counted) = self.counted_calls {
            task.counted_calls = counted;
        }
        if let Some(error) = self.error {
            task.error = Some(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(v: serde_json::Value) -> Result<TaskRequest, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn aggregation_tuning_is_checked_and_named() {
        let parse = |aggregation: serde_json::Value, fanout: u32| {
            request(json!({"task_type": "text", "content": "x",
                "routing": {"fanout": fanout}, "aggregation": aggregation}))
            .unwrap()
            .parse()
        };
        let (spec, _) = parse(
            json!({"strategy": "consensus", "threshold": 0.6, "min_success": 2}),
            3,
        )
        .unwrap();
        assert_eq!(spec.aggregation, AggregationStrategy::Consensus);
        assert_eq!(
            spec.aggregation_options,
            AggregationOptions {
                threshold: Some(0.6),
                min_success: 2
            }
        );
        let field = |aggregation, fanout| parse(aggregation, fanout).unwrap_err().field();
        assert_eq!(
            field(json!({"strategy": "consensus", "threshold": 1.5}), 1),
            "aggregation.threshold"
        );
        assert_eq!(
            field(json!({"strategy": "merge", "threshold": -0.1}), 1),
            "aggregation.threshold"
        );
        assert_eq!(
            field(json!({"strategy": "vote", "threshold": 0.5}), 1),
            "aggregation.threshold"
        );
        assert_eq!(
            field(json!({"min_success": 0}), 1),
            "aggregation.min_success"
        );
        assert_eq!(
            field(json!({"min_success": 11}), 10),
            "aggregation.min_success"
        );
        assert_eq!(
            parse(json!({"strategy": "vote", "min_success": 3}), 2).unwrap_err(),
            RequestError::MinSuccessExceedsFanout {
                min_success: 3,
                fanout: 2
            }
        );
        assert!(
            request(json!({"task_type": "text", "content": "x",
            "aggregation": {"strategy": "vote", "quorum": 2}}))
            .is_err(),
            "not offered: unknown"
        );
    }

    #[test]
    fn a_spec_stored_before_the_aggregation_options_has_the_defaults() {
        let (spec, _) = request(json!({"task_type": "text", "content": "x"}))
            .unwrap()
            .parse()
            .unwrap();
        let mut stored = serde_json::to_value(&spec).unwrap();
        assert!(
            stored.get("aggregation_options").is_none(),
            "defaults are not stored"
        );
        stored
            .as_object_mut()
            .unwrap()
            .remove("aggregation_options");
        let read: TaskSpec = serde_json::from_value(stored).unwrap();
        assert_eq!(read.aggregation_options, AggregationOptions::default());
        assert_eq!(read.aggregation_options.min_success, 1);
    }

    #[test]
    fn a_minimal_request_gets_defaults() {
        let (spec, key) = request(json!({"task_type": "text", "content": "hi"}))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(spec.fanout, 1);
        assert!(spec.fallback);
        assert_eq!(spec.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(spec.aggregation, AggregationStrategy::First);
        assert_eq!(spec.routing_strategy, RoutingStrategy::Balanced);
        assert!(key.is_none());
    }

    #[test]
    fn naming_agents_is_the_explicit_strategy_and_best_is_quality() {
        let strategy = |routing| {
            request(json!({"task_type": "text", "content": "x", "routing": routing}))
                .unwrap()
                .parse()
                .map(|(spec, _)| spec.routing_strategy)
        };
        assert_eq!(
            strategy(json!({"agents": ["a"]})),
            Ok(RoutingStrategy::Explicit)
        );
        assert_eq!(
            strategy(json!({"strategy": "explicit", "agents": ["a"]})),
            Ok(RoutingStrategy::Explicit)
        );
        assert_eq!(
            strategy(json!({"strategy": "best"})),
            Ok(RoutingStrategy::Quality)
        );
        assert_eq!(
            strategy(json!({"strategy": "cheapest"})),
            Ok(RoutingStrategy::Cheapest)
        );
        assert_eq!(
            strategy(json!({"strategy": "explicit"})),
            Err(RequestError::ExplicitWithoutAgents)
        );
        let refused = strategy(json!({"strategy": "cheapest", "agents": ["a"]})).unwrap_err();
        assert_eq!(refused, RequestError::StrategyWithAgents("cheapest"));
        assert_eq!(refused.field(), "routing.strategy");
        // A task stored before `quality` was named reads back the same.
        assert_eq!(
            serde_json::from_value::<RoutingStrategy>(json!("best")).unwrap(),
            RoutingStrategy::Quality
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(request(json!({"task_type": "text", "content": "hi", "extra": 1})).is_err());
        assert!(
            request(json!({"task_type": "text", "content": "hi", "routing": {"fanot": 2}}))
                .is_err()
        );
    }

    #[test]
    fn each_field_rule_has_its_error() {
        let parse = |v| request(v).unwrap().parse().unwrap_err();
        assert_eq!(
            parse(json!({"task_type": "Text!", "content": "x"})),
            RequestError::BadTaskType(TaskTypeError::BadCharacter)
        );
        // The rule is exact: no trimming on the way in.
        assert_eq!(
            parse(json!({"task_type": " text", "content": "x"})).field(),
            "task_type"
        );
        assert_eq!(
            parse(json!({"task_type": "text", "content": "  "})),
            RequestError::EmptyContent
        );
        let big = "x".repeat(MAX_CONTENT_BYTES + 1);
        let err = parse(json!({"task_type": "text", "content": big}));
        assert!(err.is_too_large());
        assert_eq!(
            parse(json!({"task_type": "text", "content": "x", "routing": {"fanout": 0}})),
            RequestError::FanoutOutOfRange { max: MAX_FANOUT }
        );
        assert_eq!(
            parse(
                json!({"task_type": "text", "content": "x", "routing": {"fanout": 2, "agents": ["a"]}})
            ),
            RequestError::FanoutExceedsAgents {
                fanout: 2,
                named: 1
            }
        );
        assert_eq!(
            parse(json!({"task_type": "text", "content": "x", "budget_usd": -1})),
            RequestError::NegativeBudget
        );
        assert_eq!(
            parse(json!({"task_type": "text", "content": "x", "timeout_ms": 0})).field(),
            "timeout_ms"
        );
    }

    #[test]
    fn state_machine_moves_forward_or_ends() {
        use TaskStatus::*;
        assert!(Queued.can_become(Routing));
        assert!(!Queued.can_become(Aggregating));
        assert!(!Completed.can_become(Failed));
        assert!(Running.can_become(Cancelled));
        assert_eq!(TaskStatus::predecessors(Routing), vec![Queued]);
        assert_eq!(
            TaskStatus::predecessors(Failed),
            vec![Queued, Routing, Running, Aggregating]
        );
        for s in TaskStatus::ALL {
            if s.is_terminal() {
                assert!(TaskStatus::ALL.iter().all(|n| !s.can_become(*n)));
            }
        }
    }

    #[test]
    fn apply_refuses_a_wrong_transition() {
        let (spec, _) = request(json!({"task_type": "text", "content": "hi"}))
            .unwrap()
            .parse()
            .unwrap();
        let now = Utc::now();
        let mut task = Task::new(TenantId::parse("t").unwrap(), spec, None, "u", now);
        let err = task
            .apply(TaskStatus::Completed, TaskPatch::default(), now)
            .unwrap_err();
        assert_eq!(err.from, TaskStatus::Queued);
        task.apply(TaskStatus::Routing, TaskPatch::default(), now)
            .unwrap();
        assert_eq!(task.status, TaskStatus::Routing);
    }

    #[test]
    fn weights_tune_only_balanced_and_are_checked() {
        let parse = |routing: serde_json::Value| {
            serde_json::from_value::<TaskRequest>(
                json!({"task_type": "text", "content": "x", "routing": routing}),
            )
            .unwrap()
            .parse()
            .map(|(spec, _)| spec)
            .map_err(|e| e.field())
        };
        let spec = parse(json!({"weights": {"cost": 1}})).unwrap();
        assert_eq!(spec.routing_strategy, RoutingStrategy::Balanced);
        assert_eq!(
            spec.weights,
            Some(RoutingWeights {
                quality: 0.0,
                cost: 1.0,
                latency: 0.0
            })
        );
        for bad in [
            json!({"strategy": "quality", "weights": {"cost": 1}}),
            json!({"weights": {"cost": 1.5}}),
            json!({"weights": {"cost": -0.1}}),
            json!({"weights": {}}),
        ] {
            assert_eq!(parse(bad.clone()).err(), Some("routing.weights"), "{bad}");
        }
        // A weight by another name is not taken silently.
        assert!(
            serde_json::from_value::<TaskRequest>(json!({"task_type": "text", "content": "x",
                "routing": {"weights": {"speed": 1}}}))
            .is_err()
        );
    }
}
