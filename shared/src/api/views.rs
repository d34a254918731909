//! What the API returns: domain types shaped for clients. Ids are strings and
//! money is a decimal string (`"0.0000198"`), exact as it is inside.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{
    Agent, AgentId, AggregateResult, CallError, CallId, CallResult, CallStatus, Constraints,
    MockOptions, Pricing, Provider, Task, TaskError, TaskId, TaskStatus, TaskType, Usage, Usd,
};
use crate::ports::TaskRecord;

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
    pub result: Option<AggregateResult>,
    /// The agent calls made; left out of task lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<Vec<CallView>>,
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
            result: task.result,
            calls: None,
            usage: task.usage,
            cost_usd: task.cost_usd,
            error: task.error,
            metadata: task.spec.metadata,
        }
    }
}

impl From<TaskRecord> for TaskView {
    fn from(record: TaskRecord) -> Self {
        let calls = record.calls.into_iter().map(CallView::from).collect();
        TaskView {
            calls: Some(calls),
            ..TaskView::summary(record.task)
        }
    }
}

/// One call of one agent for the task.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallView {
    pub call_id: CallId,
    pub agent_id: AgentId,
    #[schema(required = true)]
    pub provider: Option<Provider>,
    pub status: CallStatus,
    #[schema(required = true)]
    pub output: Option<String>,
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
    pub finished_at: DateTime<Utc>,
}

impl From<CallResult> for CallView {
    fn from(call: CallResult) -> Self {
        CallView {
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

/// Dollars per million tokens, as decimal strings (a `PUT` takes them back as they are).
#[derive(Debug, Serialize, ToSchema)]
pub struct PricingView {
    pub input_per_mtok: Usd,
    pub output_per_mtok: Usd,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<Usd>,
}

impl From<Pricing> for PricingView {
    fn from(p: Pricing) -> Self {
        PricingView {
            input_per_mtok: p.input_per_mtok,
            output_per_mtok: p.output_per_mtok,
            cached_input_per_mtok: p.cached_input_per_mtok,
        }
    }
}

/// A registry entry: the agent as written, its id and its version (also the ETag).
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentView {
    pub id: AgentId,
    pub name: String,
    pub provider: Provider,
    pub model: String,
    #[schema(required = true)]
    pub base_url: Option<String>,
    /// The name of the secret holding the key, never the key itself.
    #[schema(required = true)]
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
    /// Bumped by every write; the ETag is this number, quoted.
    pub version: u64,
}

impl From<Agent> for AgentView {
    fn from(agent: Agent) -> Self {
        let spec = agent.spec;
        AgentView {
            id: agent.id,
            name: spec.name,
            provider: spec.provider,
            model: spec.model,
            base_url: spec.base_url,
            secret: spec.secret,
            capabilities: spec.capabilities,
            pricing: spec.pricing.map(PricingView::from),
            constraints: spec.constraints,
            quality: spec.quality,
            tier: spec.tier,
            weight: spec.weight,
            enabled: spec.enabled,
            mock: spec.mock,
            version: agent.version,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentList {
    pub items: Vec<AgentView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}
