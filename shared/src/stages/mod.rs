//! The four stages' logic, written against the ports only. The Lambda
//! binaries and `maof dev` build the adapters and hand events to these.

pub mod agent_call;
pub mod agents;
pub mod aggregate;
pub mod announce;
pub mod audit;
pub mod batch;
mod claim_check;
mod completions;
pub mod dead_letter;
pub mod health;
pub mod inbox;
pub mod intake;
pub mod limits;
pub mod route;
pub mod sweeper;

use std::sync::Arc;
use std::time::Duration;

pub use agents::AgentCache;
pub use completions::Completions;

use crate::domain::{
    AuditEntry, Envelope, MessageKind, PlatformAgents, Rates, Task, TaskError, TaskId, TaskPatch,
    TaskStatus, TenantDefaults, TenantId,
};
use crate::ports::{
    AgentHealth, AuditLog, BlobStore, CachedSecrets, Clock, EventPublisher, FinishedFeed,
    LocalHealth, LocalLimiter, LocalRotation, NoAuditLog, NoBlobs, NoEvents, OutgoingMessage,
    ProviderClients, Queue, QueueError, QueueName, RateLimiter, Registry, Rotation, StoreError,
    TaskStore,
};

/// Everything a stage talks to, built once per process.
#[derive(Clone)]
pub struct Services {
    pub tasks: Arc<dyn TaskStore>,
    pub registry: Arc<dyn Registry>,
    /// The registry's agents and tenants' settings, cached (a warm route
    /// Lambda reads a tenant's once per TTL).
    pub agents: Arc<AgentCache>,
    pub queue: Arc<dyn Queue>,
    pub secrets: Arc<CachedSecrets>,
    /// The client for each provider kind.
    pub providers: Arc<dyn ProviderClients>,
    pub clock: Arc<dyn Clock>,
    /// Wakes in-process waiters (`?wait=N`) when a task finishes.
    pub completions: Arc<Completions>,
    /// Where finished tasks are announced to other pipelines.
    pub events: Arc<dyn EventPublisher>,
    /// The task store's changes, for the local runner's announcer (on AWS the
    /// announcer Lambda gets them from its stream trigger instead).
    pub feed: Option<Arc<dyn FinishedFeed>>,
    /// The claim check: outputs above `settings.claim_check_bytes`.
    pub blobs: Arc<dyn BlobStore>,
    /// Rate-limit buckets, shared by every instance on AWS.
    pub limiter: Arc<dyn RateLimiter>,
    /// Agents' circuit breakers and latency, shared by every instance on AWS.
    pub health: Arc<dyn AgentHealth>,
    /// Agents' health records, cached for `settings.health_ttl`.
    pub health_cache: Arc<health::HealthCache>,
    /// Rotation counters (`round_robin`, `weighted` routing), shared by
    /// every instance on AWS.
    pub rotation: Arc<dyn Rotation>,
    /// The audit logs, for refusals (which write nothing else) and reading;
    /// an action that writes carries its entry into its own write.
    pub audit: Arc<dyn AuditLog>,
    /// Bounds what a flood of refusals writes to the audit log.
    pub refusals: Arc<audit::RefusalSampler>,
    pub settings: Settings,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// How long the registry list is cached.
    pub registry_ttl: Duration,
    /// How long an agent's health (breaker state, latency) is cached.
    pub health_ttl: Duration,
    /// A provider wait up to this long is slept in process; longer ones go
    /// back to the queue with that visibility.
    pub max_inline_wait: Duration,
    /// An output larger than this is kept in the blob store, and its item
    /// (and the task API) refers to it instead of holding it.
    pub claim_check_bytes: usize,
    /// Where provider keys live (`ProviderSecretPrefix`, e.g. `maof/`): a
    /// tenant's agents name only `{prefix}tenants/{tenant}/…`, platform
    /// agents the rest.
    pub secret_prefix: String,
    /// What applies to a tenant that has nothing set.
    pub tenant_defaults: TenantDefaults,
}

impl Settings {
    pub const DEFAULT_CLAIM_CHECK_BYTES: usize = 64 * 1024;

    pub const DEFAULT_SECRET_PREFIX: &str = "maof/";

    /// Short: an open circuit is seen by every instance within it.
    pub const DEFAULT_HEALTH_TTL: Duration = Duration::from_secs(2);

    /// A tenant's rate limits where nothing is set, on AWS: the ceiling
    /// `platform_admin` may raise or lower per tenant.
    pub const DEFAULT_RPM: u64 = 600;
    pub const DEFAULT_TPM: u64 = 200_000;

    /// The defaults, with what the environment sets: `MAOF_CLAIM_CHECK_BYTES`,
    /// `MAOF_SECRET_PREFIX`, `MAOF_DEFAULT_PLATFORM_AGENTS` (`*`, or ids
    /// separated by commas: the platform agents a tenant with no settings
    /// may use; none when unset), and `MAOF_DEFAULT_RPM` / `MAOF_DEFAULT_TPM`
    /// (a tenant's rate limits where nothing is set; `none` for no limit;
    /// 600 and 200,000 when unset), `MAOF_REGISTRY_TTL_MS` and
    /// `MAOF_HEALTH_TTL_MS` (how long the registry and agents' health are
    /// cached; 30,000 and 2,000 when unset). A malformed value is an error,
    /// not a silent default.
    pub fn from_env() -> Result<Self, String> {
        let mut settings = Settings::default();
        let limit = |var: &str, default: u64| -> Result<Option<u64>, String> {
            match std::env::var(var) {
                Err(_) => Ok(Some(default)),
                Ok(v) if v.trim().eq_ignore_ascii_case("none") => Ok(None),
                Ok(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n >= 1 => Ok(Some(n)),
                    _ => Err(format!(
                        "{var} must be a number of at least 1, or none: {v}"
                    )),
                },
            }
        };
        settings.tenant_defaults.rate_limits.tenant = Rates {
            rpm: limit("MAOF_DEFAULT_RPM", Self::DEFAULT_RPM)?,
            tpm: limit("MAOF_DEFAULT_TPM", Self::DEFAULT_TPM)?,
        };
        let millis = |var: &str| -> Result<Option<Duration>, String> {
            std::env::var(var)
                .ok()
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map(Duration::from_millis)
                        .map_err(|_| format!("{var} must be a number of milliseconds: {v}"))
                })
                .transpose()
        };
        if let Some(ttl) = millis("MAOF_REGISTRY_TTL_MS")? {
            settings.registry_ttl = ttl;
        }
        if let Some(ttl) = millis("MAOF_HEALTH_TTL_MS")? {
            settings.health_ttl = ttl;
        }
        if let Ok(bytes) = std::env::var("MAOF_CLAIM_CHECK_BYTES") {
            settings.claim_check_bytes = bytes
                .parse()
                .map_err(|_| format!("MAOF_CLAIM_CHECK_BYTES is not a number: {bytes}"))?;
        }
        if let Ok(prefix) = std::env::var("MAOF_SECRET_PREFIX")
            && !prefix.is_empty()
        {
            settings.secret_prefix = prefix;
        }
        if let Ok(list) = std::env::var("MAOF_DEFAULT_PLATFORM_AGENTS") {
            let items: Vec<&str> = list
                .split(',')
                .map(str::trim)
                .filter(|i| !i.is_empty())
                .collect();
            settings.tenant_defaults.platform_agents = PlatformAgents::parse(&items)
                .map_err(|e| format!("MAOF_DEFAULT_PLATFORM_AGENTS{e}"))?;
        }
        Ok(settings)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            registry_ttl: Duration::from_secs(30),
            health_ttl: Self::DEFAULT_HEALTH_TTL,
            max_inline_wait: Duration::from_secs(2),
            claim_check_bytes: Self::DEFAULT_CLAIM_CHECK_BYTES,
            secret_prefix: Self::DEFAULT_SECRET_PREFIX.to_owned(),
            tenant_defaults: TenantDefaults::default(),
        }
    }
}

impl Services {
    pub fn new(
        tasks: Arc<dyn TaskStore>,
        registry: Arc<dyn Registry>,
        queue: Arc<dyn Queue>,
        secrets: Arc<CachedSecrets>,
        providers: Arc<dyn ProviderClients>,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Self {
        Services {
            agents: Arc::new(AgentCache::new(
                registry.clone(),
                settings.registry_ttl,
                settings.tenant_defaults.clone(),
            )),
            tasks,
            registry,
            queue,
            secrets,
            providers,
            clock,
            completions: Arc::new(Completions::default()),
            events: Arc::new(NoEvents),
            feed: None,
            blobs: Arc::new(NoBlobs),
            // Exact for this process; the backends' setup shares them.
            limiter: Arc::new(LocalLimiter::default()),
            health: Arc::new(LocalHealth::default()),
            health_cache: Arc::new(health::HealthCache::new(settings.health_ttl)),
            rotation: Arc::new(LocalRotation::default()),
            audit: Arc::new(NoAuditLog),
            refusals: Arc::new(audit::RefusalSampler::default()),
            settings,
        }
    }

    /// These services under other settings (the agent cache follows them).
    pub fn with_settings(mut self, settings: Settings) -> Self {
        self.agents = Arc::new(AgentCache::new(
            self.registry.clone(),
            settings.registry_ttl,
            settings.tenant_defaults.clone(),
        ));
        self.health_cache = Arc::new(health::HealthCache::new(settings.health_ttl));
        self.settings = settings;
        self
    }

    pub fn with_health(mut self, health: Arc<dyn AgentHealth>) -> Self {
        self.health = health;
        self
    }

    pub fn with_limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Self {
        self.limiter = limiter;
        self
    }

    pub fn with_rotation(mut self, rotation: Arc<dyn Rotation>) -> Self {
        self.rotation = rotation;
        self
    }

    pub fn with_audit(mut self, audit: Arc<dyn AuditLog>) -> Self {
        self.audit = audit;
        self
    }

    pub fn with_blobs(mut self, blobs: Arc<dyn BlobStore>) -> Self {
        self.blobs = blobs;
        self
    }

    pub fn with_events(mut self, events: Arc<dyn EventPublisher>) -> Self {
        self.events = events;
        self
    }

    pub fn with_feed(mut self, feed: Arc<dyn FinishedFeed>) -> Self {
        self.feed = Some(feed);
        self
    }

    /// Wakes local waiters on a task that just finished. Its announcement
    /// comes from the store's change stream (`announce`), not from here.
    pub(crate) fn finished(&self, task: &Task) {
        self.completions.finished(&task.tenant, task.task_id);
    }

    pub(crate) async fn send(
        &self,
        queue: QueueName,
        kind: MessageKind,
        tenant: &TenantId,
        task_id: TaskId,
        trace: Option<String>,
    ) -> Result<(), QueueError> {
        let mut envelope = Envelope::new(kind, tenant.clone(), task_id);
        envelope.trace = trace;
        self.queue
            .send(queue, OutgoingMessage::now(envelope.to_body()))
            .await
    }
}

/// The usage and cost of the calls a task has made so far, as a patch: what
/// a task that ends before aggregation still owes.
pub(crate) async fn spent(svc: &Services, task: &Task) -> Result<TaskPatch, StoreError> {
    if task.plan.is_empty() {
        // Not routed: no call was made.
        return Ok(TaskPatch::default());
    }
    let calls = svc
        .tasks
        .get_with_calls(&task.tenant, task.task_id)
        .await?
        .map(|r| r.calls)
        .unwrap_or_default();
    let (usage, cost) = crate::domain::aggregation::totals(&calls);
    Ok(TaskPatch {
        usage: Some(usage),
        cost_usd: cost,
        counted_calls: Some(calls.iter().map(|c| c.call_id).collect()),
        ..TaskPatch::default()
    })
}

/// Why a stage could not finish a message. Every variant leaves the message
/// for redelivery; after the queue's maximum receives it is dead-lettered
/// and its task marked failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Blob(#[from] crate::ports::BlobError),
    /// Try again after `after` (a provider asked us to wait).
    #[error("retry after {after:?}: {reason}")]
    RetryLater { after: Duration, reason: String },
}

/// Whether a write that ends a task ended it, or found it ended before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Now,
    Before,
}

/// Ends an unfinished task as failed with `error`, with the usage and cost
/// of the calls it made. A task that finished meanwhile keeps its outcome.
pub(crate) async fn fail_task(
    svc: &Services,
    task: &Task,
    error: TaskError,
) -> Result<(), StageError> {
    end_task(svc, task, error, None).await.map(|_| ())
}

/// `fail_task`, with `audit` written with the failure (both or neither),
/// saying whether this write ended the task.
pub(crate) async fn end_task(
    svc: &Services,
    task: &Task,
    error: TaskError,
    audit: Option<AuditEntry>,
) -> Result<Ended, StageError> {
    tracing::info!(code = %error.code, reason = %error.message, "task failed");
    let patch = TaskPatch {
        error: Some(error),
        audit,
        ..spent(svc, task).await?
    };
    match svc
        .tasks
        .transition(task, TaskStatus::Failed, patch, svc.clock.now())
        .await
    {
        Ok(failed) => {
            svc.finished(&failed);
            Ok(Ended::Now)
        }
        Err(StoreError::Transition(_)) | Err(StoreError::NotFound) => Ok(Ended::Before),
        Err(e) => Err(e.into()),
    }
}
