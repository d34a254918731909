//! What the API returns: domain types shaped for clients. Ids are strings and
//! money is a decimal string (`"0.0000198"`), exact as it is inside.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::call::Hop;
use crate::domain::health::{BreakerSettings, Circuit};
use crate::domain::{
    Agent, AgentId, AggregateResult, AggregationStrategy, Budgets, CallError, CallId, CallResult,
    CallStatus, Constraints, EffectiveSettings, FilterSettings, MockOptions, Period,
    PlatformAgents, Pricing, Provider, RateLimits, Spend, Task, TaskError, TaskId, TaskStatus,
    TaskType, Usage, Usd,
};
use crate::ports::TaskRecord;
use crate::stages::health::HealthReport;
use crate::stages::limits::LimitUse;

/// A task just accepted (or still under way when `?wait` ran out).
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub task_id: TaskId,
    pub status: TaskStatus,
}

impl From<&Task> for Accepted {
    fn from(task: &Task) -> Self {
        Accepted {
            task_id: task.task_id,
            status: task.status,
        }
    }
}

/// A task: its status, combined result, per-agent calls, usage, cost and error.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    pub task_id: TaskId,
    pub status: TaskStatus,
    pub task_type: TaskType,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[schema(required = true)]
    pub result: Option<ResultView>,
    /// The agent calls made; left out of task lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<Vec<CallView>>,
    /// Planned calls with no result yet. On an ended task (cancelled, timed
    /// out) these are calls still under way: their usage and cost are added
    /// to the task's when they land. Left out of task lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls_pending: Option<u32>,
    pub usage: Usage,
    /// US dollars; null when an agent has no prices (unknown, not free).
    #[schema(required = true)]
    pub cost_usd: Option<Usd>,
    #[schema(required = true)]
    pub error: Option<TaskError>,
    pub metadata: BTreeMap<String, serde_json::Value>,
}

impl TaskView {
    /// A task without its calls, as lists show it.
    pub fn summary(task: Task) -> Self {
        TaskView {
            task_id: task.task_id,
            status: task.status,
            task_type: task.spec.task_type,
            created_at: task.created_at,
            updated_at: task.updated_at,
            result: task.result.map(|r| ResultView::of(task.task_id, r)),
            calls: None,
            calls_pending: None,
            usage: task.usage,
            cost_usd: task.cost_usd,
            error: task.error,
            metadata: task.spec.metadata,
        }
    }
}

impl From<TaskRecord> for TaskView {
    fn from(record: TaskRecord) -> Self {
        let task_id = record.task.task_id;
        let pending = record
            .task
            .plan
            .iter()
            .filter(|p| !record.calls.iter().any(|c| c.call_id == p.call_id))
            .count() as u32;
        let calls = record
            .calls
            .into_iter()
            .map(|c| CallView::of(task_id, c))
            .collect();
        TaskView {
            calls: Some(calls),
            calls_pending: Some(pending),
            ..TaskView::summary(record.task)
        }
    }
}

/// The combined answer of a finished task. An answer larger than the
/// claim-check threshold (64 KiB by default) is not inline: `output` is null,
/// and `output_url` serves it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultView {
    pub strategy: AggregationStrategy,
    #[schema(required = true)]
    pub output: Option<String>,
    /// The answer's size in bytes, when it is served at `output_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    /// `/v1/tasks/{id}/output`, when the answer is not inline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_url: Option<String>,
    /// 0 to 1: `best` the answer's score, `consensus` the group's share,
    /// `vote` the winner's share, `merge` the share merged (JSON: times the
    /// share of undisputed keys), `first` 1, `all` the share that answered.
    pub confidence: f64,
    /// Every succeeded call's answer, in plan order, with its score; a
    /// large one has a null `output` and its `output_bytes` (its call
    /// serves it).
    #[schema(value_type = Vec<CandidateView>)]
    pub candidates: Vec<serde_json::Value>,
    /// Which agents disagreed and with what.
    #[schema(value_type = Vec<ConflictView>)]
    pub conflicts: Vec<serde_json::Value>,
}

/// One answer a result was made from (the API document's shape of a
/// `candidates` entry).
#[derive(Debug, Serialize, ToSchema)]
pub struct CandidateView {
    pub agent_id: AgentId,
    pub call_id: CallId,
    #[schema(required = true)]
    pub output: Option<String>,
    /// The answer's size, when it is too large to be inline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    /// 0 to 1: completeness × (0.6 × the agent's quality + 0.4 × finish),
    /// finish 0 for an answer cut off at its output cap, else 1.
    pub score: f64,
}

/// Agents that disagreed (the API document's shape of a `conflicts` entry).
#[derive(Debug, Serialize, ToSchema)]
pub struct ConflictView {
    pub agents: Vec<AgentId>,
    /// What each of `agents` answered, in the same order: text, or (a
    /// disputed key of `merge`) the key's JSON value.
    pub outputs: Vec<serde_json::Value>,
    pub reason: String,
    /// `merge`: the disputed key, dotted (`home.city`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl ResultView {
    fn of(task_id: TaskId, result: AggregateResult) -> Self {
        let stored = result.output_ref.map(|r| r.bytes);
        ResultView {
            strategy: result.strategy,
            output: stored.is_none().then_some(result.output),
            output_bytes: stored,
            output_url: stored.map(|_| format!("/v1/tasks/{task_id}/output")),
            confidence: result.confidence,
            candidates: result.candidates,
            conflicts: result.conflicts,
        }
    }
}

/// One call of one agent for the task. An answer larger than the claim-check
/// threshold is not inline: `output` is null, and `output_url` serves it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallView {
    pub call_id: CallId,
    pub agent_id: AgentId,
    #[schema(required = true)]
    pub provider: Option<Provider>,
    pub status: CallStatus,
    #[schema(required = true)]
    pub output: Option<String>,
    /// The answer's size in bytes, when it is served at `output_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    /// `/v1/tasks/{id}/calls/{call_id}/output`, when the answer is not inline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_url: Option<String>,
    pub usage: Usage,
    /// US dollars; null when the agent has no prices.
    #[schema(required = true)]
    pub cost_usd: Option<Usd>,
    pub latency_ms: u64,
    pub attempts: u32,
    #[schema(required = true)]
    pub error: Option<CallError>,
    /// The errors of earlier attempts, oldest first.
    pub retried_errors: Vec<CallError>,
    /// The answer stopped at the agent's output cap (`max_tokens`): it is
    /// partial.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The agents tried before `agent_id`, oldest first: each failed for
    /// good on the provider's side (`error`; the fallback chain) or, for a
    /// `tiered` task, answered blank or cut off (`escalated`; the escalation
    /// to a higher tier); `usage` and `cost_usd` include theirs.
    pub fell_back_from: Vec<Hop>,
    pub finished_at: DateTime<Utc>,
}

impl CallView {
    fn of(task_id: TaskId, call: CallResult) -> Self {
        let stored = call.output_ref.map(|r| r.bytes);
        CallView {
            output_bytes: stored,
            output_url: stored
                .map(|_| format!("/v1/tasks/{task_id}/calls/{}/output", call.call_id)),
            call_id: call.call_id,
            agent_id: call.agent_id,
            provider: call.provider,
            status: call.status,
            output: call.output,
            usage: call.usage,
            cost_usd: call.cost_usd,
            latency_ms: call.latency_ms,
            attempts: call.attempts,
            error: call.error,
            retried_errors: call.retried_errors,
            truncated: call.truncated,
            fell_back_from: call.fell_back_from,
            finished_at: call.finished_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskPage {
    /// Newest first.
    pub items: Vec<TaskView>,
    /// Pass as `cursor` for the next page; null on the last one.
    #[schema(required = true)]
    pub next: Option<String>,
}

/// Dollars per million tokens, per image and per minute of audio, as decimal
/// strings (a `PUT` takes them back as they are).
#[derive(Debug, Serialize, ToSchema)]
pub struct PricingView {
    pub input_per_mtok: Usd,
    pub output_per_mtok: Usd,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<Usd>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_write_per_mtok: Option<Usd>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_image: Option<Usd>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_audio_minute: Option<Usd>,
}

impl From<Pricing> for PricingView {
    fn from(p: Pricing) -> Self {
        PricingView {
            input_per_mtok: p.input_per_mtok,
            output_per_mtok: p.output_per_mtok,
            cached_input_per_mtok: p.cached_input_per_mtok,
            cache_write_per_mtok: p.cache_write_per_mtok,
            per_image: p.per_image,
            per_audio_minute: p.per_audio_minute,
        }
    }
}

/// A registry entry: the agent as written, its id and its version (also the
/// ETag). `base_url` and `secret` are shown only to whoever may change the
/// agent: the tenant's admins for its own agents, `platform_admin` for
/// platform agents.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentView {
    pub id: AgentId,
    /// A platform agent (shared, managed by `platform_admin`), not the tenant's own.
    pub platform: bool,
    pub name: String,
    pub provider: Provider,
    pub model: String,
    /// Absent when the agent has none, or when the caller may not change it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// The name of the secret holding the key, never the key itself; absent
    /// when the agent has none, or when the caller may not change it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub capabilities: Vec<TaskType>,
    #[schema(required = true)]
    pub pricing: Option<PricingView>,
    pub constraints: Constraints,
    pub quality: f64,
    pub tier: u8,
    pub weight: u32,
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockOptions>,
    pub breaker: BreakerSettings,
    /// Bumped by every write; the ETag is this number, quoted.
    pub version: u64,
    /// With `?health=true`: the agent's health now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<AgentHealthView>,
}

impl AgentHealthView {
    pub fn new(agent: &Agent, report: HealthReport) -> Self {
        let judged = report.assessment;
        AgentHealthView {
            agent_id: agent.id.clone(),
            circuit: judged.circuit,
            calls: judged.calls,
            failures: judged.failures,
            failure_rate: judged.failure_rate,
            window_s: agent.spec.breaker.window_s,
            latency_ms: judged.latency_ms.map(f64::round),
            rpm: report.rpm,
            tpm: report.tpm,
            retry_at: judged.retry_at,
            trips: report.trips,
        }
    }
}

/// An agent's health: its circuit, the failure rate behind it, its recent
/// latency, what its rate limits have in use, and when it is tried again.
/// A platform agent's figures count every tenant's calls of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentHealthView {
    pub agent_id: AgentId,
    /// `closed` (called), `open` (skipped until `retry_at`), or
    /// `half_open` (the next call is a probe, or one is in flight).
    pub circuit: Circuit,
    /// Calls judged within the breaker's window (successes and failures on
    /// the provider's side), and those failures.
    pub calls: u64,
    pub failures: u64,
    /// `failures / calls`; null without calls.
    #[schema(required = true)]
    pub failure_rate: Option<f64>,
    pub window_s: u32,
    /// The recent successes' mean latency, recent calls weighing more
    /// (half-life one minute, over ten); null without any.
    #[schema(required = true)]
    pub latency_ms: Option<f64>,
    /// The agent's own limits (`constraints.rpm`, `tpm`) and their use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<LimitUse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<LimitUse>,
    /// When the agent is next tried, if not now: the end of the open
    /// circuit's cooldown, of a probe in flight, or of a wait the provider
    /// asked for (a 429); null when it is called now.
    #[schema(required = true)]
    pub retry_at: Option<DateTime<Utc>>,
    /// How many times the circuit opened (since its state was last kept).
    pub trips: u64,
}

impl AgentView {
    /// The view of `agent`, with where it calls and with which key only if
    /// `manager` (the caller may change the agent).
    pub fn new(agent: Agent, manager: bool) -> Self {
        let spec = agent.spec;
        AgentView {
            id: agent.id,
            platform: agent.owner.is_platform(),
            name: spec.name,
            provider: spec.provider,
            model: spec.model,
            base_url: spec
                .base_url
                .filter(|_| manager)
                .map(|u| u.as_str().to_owned()),
            secret: spec
                .secret
                .filter(|_| manager)
                .map(|s| s.as_str().to_owned()),
            capabilities: spec.capabilities,
            pricing: spec.pricing.map(PricingView::from),
            constraints: spec.constraints,
            quality: spec.quality,
            tier: spec.tier,
            weight: spec.weight,
            enabled: spec.enabled,
            mock: spec.mock,
            breaker: spec.breaker,
            version: agent.version,
            health: None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentList {
    pub items: Vec<AgentView>,
}

/// The settings that apply to a tenant: what `platform_admin` set, the
/// tenant's own lower limits, and the deployment's defaults for the rest.
#[derive(Debug, Serialize, ToSchema)]
pub struct SettingsView {
    /// The platform agents the tenant may use: their ids, or `["*"]` for all.
    pub platform_agents: Vec<String>,
    /// The limits enforced: the tighter of the ceiling and the tenant's own.
    pub rate_limits: RateLimitsView,
    /// The budgets enforced: the tighter of the ceiling and the tenant's own.
    pub budgets: BudgetsView,
    /// What `platform_admin` allows; a tenant may set only lower limits and budgets.
    pub ceilings: CeilingsView,
    /// The content filters `platform_admin` applies to the tenant; its
    /// admins cannot turn them off.
    pub platform_filters: FilterSettings,
    /// The tenant's own content filters, applied with the platform's.
    pub filters: FilterSettings,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CeilingsView {
    pub rate_limits: RateLimitsView,
    pub budgets: BudgetsView,
}

/// Per UTC day and month, in US dollars; one left out is no budget.
#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetsView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<Usd>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<Usd>,
}

impl From<Budgets> for BudgetsView {
    fn from(b: Budgets) -> Self {
        BudgetsView {
            daily_usd: b.daily_usd,
            monthly_usd: b.monthly_usd,
        }
    }
}

/// Per-minute limits; one left out is no limit.
#[derive(Debug, Serialize, ToSchema)]
pub struct RatesView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitsView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    pub per_subject: RatesView,
}

impl From<RateLimits> for RateLimitsView {
    fn from(r: RateLimits) -> Self {
        RateLimitsView {
            rpm: r.tenant.rpm,
            tpm: r.tenant.tpm,
            per_subject: RatesView {
                rpm: r.per_subject.rpm,
                tpm: r.per_subject.tpm,
            },
        }
    }
}

impl From<EffectiveSettings> for SettingsView {
    fn from(settings: EffectiveSettings) -> Self {
        SettingsView {
            platform_agents: match settings.platform_agents {
                PlatformAgents::All => vec!["*".to_owned()],
                PlatformAgents::Only(ids) => ids.into_iter().map(|i| i.to_string()).collect(),
            },
            rate_limits: settings.rate_limits.into(),
            budgets: settings.budgets.into(),
            ceilings: CeilingsView {
                rate_limits: settings.ceilings.rate_limits.into(),
                budgets: settings.ceilings.budgets.into(),
            },
            platform_filters: settings.platform_filters,
            filters: settings.filters,
        }
    }
}

/// A tenant's spend for a UTC day and its month.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    pub day: PeriodUsageView,
    pub month: PeriodUsageView,
}

/// One period's spend. `spent_usd` is what settled calls cost;
/// `reserved_usd` what is held for calls under way. A budget refuses a
/// task whose expected cost does not fit in `remaining_usd`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeriodUsageView {
    /// `2026-11-26` for a day, `2026-11` for a month.
    pub period: String,
    pub spent_usd: Usd,
    pub reserved_usd: Usd,
    /// The budget that applies now; none: no budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<Usd>,
    /// The budget less what is spent and reserved (never below zero).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining_usd: Option<Usd>,
}

impl PeriodUsageView {
    pub fn of(period: Period, day: NaiveDate, spend: Spend, budgets: &Budgets) -> Self {
        let budget = budgets.limit(period);
        PeriodUsageView {
            period: period.key(day),
            spent_usd: spend.spent,
            reserved_usd: spend.reserved,
            budget_usd: budget,
            remaining_usd: budget.map(|b| (b - spend.committed()).max(Usd::ZERO)),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}
