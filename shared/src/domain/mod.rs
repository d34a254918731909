//! Pure types and rules: no I/O, no AWS types.

pub mod agent;
pub mod aggregation;
pub mod audit;
pub mod budget;
pub mod call;
pub mod complexity;
pub mod envelope;
pub mod filters;
pub mod health;
pub mod ids;
pub mod lease;
pub mod money;
pub mod principal;
pub mod rate;
pub mod rotation;
pub mod routing;
pub mod secret;
pub mod sweep;
pub mod task;
pub mod task_type;
pub mod tenant;
pub mod text;
pub mod tokens;
pub mod workflow;

pub use agent::{
    Agent, AgentRequest, AgentSpec, AgentSpecError, BaseUrl, Constraints, MockFault, MockOptions,
    Pricing, Provider, ScriptedAnswer,
};
pub use audit::{Action, Actor, AuditEntry, AuditId, AuditQuery, Origin, Outcome};
pub use budget::{BudgetExceeded, Budgets, CallHold, Hold, PanelHolds, Period, Settlement, Spend};
pub use call::{BlobRef, CallError, CallResult, CallStatus, ErrorClass, Usage};
pub use envelope::{Envelope, MessageKind};
pub use filters::{
    BlockRule, Blocked, FilterError, FilterSettings, Filters, PiiKind, PiiSettings, StreamFilter,
    Verdict,
};
pub use ids::{AgentId, CallId, IdError, IdempotencyKey, TaskId, TenantId, WorkflowId};
pub use lease::{CallLease, LeaseHolder, LeaseOutcome};
pub use money::{MoneyError, Usd};
pub use principal::{Principal, Role};
pub use secret::{KeyError, Owner, ProviderKey, SecretName, SecretNameError};
pub use task::{
    AggregateResult, AggregationStrategy, PlannedCall, RequestError, RoutingStrategy,
    RoutingWeights, Task, TaskError, TaskPatch, TaskRequest, TaskSpec, TaskStatus, TransitionError,
};
pub use task_type::{TaskType, TaskTypeError};
pub use tenant::{
    Ceilings, EffectiveSettings, OwnSettings, PlatformAgents, RateLimits, Rates, TenantDefaults,
    TenantSettings,
};
pub use workflow::{Step, Workflow, WorkflowError};
