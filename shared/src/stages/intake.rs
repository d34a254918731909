//! Intake: what the HTTP API (and event sources) do with a request, against
//! the ports. Authentication and roles are checked by the caller.

use std::time::Duration;

use crate::domain::filters::Direction;
use crate::domain::rate::BucketState;
use crate::domain::tokens;
use crate::domain::{
    AggregationStrategy, AuditEntry, CallId, Filters, IdempotencyKey, MessageKind, Origin,
    Principal, RequestError, Role, Task, TaskError, TaskId, TaskPatch, TaskRequest, TaskSpec,
    TaskStatus, TenantId, Verdict,
};
use crate::ports::{Page, QueueError, QueueName, StoreError, TaskRecord};

use super::Services;
use super::audit::record_refusal;
use super::limits::{self, LimitError};

/// A task accepted by intake. `created` is false when an idempotency key
/// matched an earlier task, which is returned instead.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub task: Task,
    pub created: bool,
    /// The rate-limit bucket with the least room left after this request
    /// (none when no limit applies), for the `RateLimit-*` headers.
    pub rate_limit: Option<BucketState>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Invalid(#[from] RequestError),
    #[error("the Idempotency-Key header and the body's idempotency_key differ")]
    KeyMismatch,
    /// A strategy the request may name but this deployment does not offer yet.
    #[error("{0}")]
    NotOffered(String),
    /// The tenant's content filter refused the input, by `rule`'s name
    /// (never the text).
    #[error("{field} was blocked by content filter {rule}")]
    ContentBlocked { field: &'static str, rule: String },
    #[error(transparent)]
    Limited(#[from] LimitError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the task could not be queued: {0}")]
    Queue(#[from] QueueError),
}

/// The request's text as the tenant's input filters leave it (redacted),
/// before it is stored or any provider sees it; or refused, naming the rule.
async fn filter_input(
    svc: &Services,
    tenant: &TenantId,
    mut spec: TaskSpec,
) -> Result<TaskSpec, SubmitError> {
    let filters = svc.agents.filters(tenant).await?;
    if !filters.applies_to(Direction::Input) {
        return Ok(spec);
    }
    spec.content = filtered(&filters, "content", &spec.content)?;
    if let Some(system) = &spec.system {
        spec.system = Some(filtered(&filters, "system", system)?);
    }
    Ok(spec)
}

fn filtered(filters: &Filters, field: &'static str, text: &str) -> Result<String, SubmitError> {
    match filters.apply(Direction::Input, text) {
        Verdict::Pass { text, findings } => {
            if !findings.is_empty() {
                // Kinds and counts only, never the text.
                tracing::info!(field, ?findings, "input filtered");
            }
            Ok(text.into_owned())
        }
        Verdict::Blocked(blocked) => {
            tracing::info!(field, rule = %blocked.rule, "input blocked");
            Err(SubmitError::ContentBlocked {
                field,
                rule: blocked.rule,
            })
        }
    }
}

/// Every routing strategy is offered; aggregation strategies not built yet
/// are refused rather than ignored.
fn check_offered(aggregation: AggregationStrategy) -> Result<(), SubmitError> {
    if !AggregationStrategy::OFFERED.contains(&aggregation) {
        return Err(SubmitError::NotOffered(format!(
            "aggregation.strategy {} is not offered yet; use first, all, best, consensus, vote or merge",
            aggregation.as_str()
        )));
    }
    Ok(())
}

/// Validates, stores and enqueues a task. Safe to retry with the same
/// idempotency key: the first task is returned, and re-queued if it never
/// left the queue (a crash between store and send loses nothing). The
/// task's creation is audited with it; a refusal by a filter or a rate
/// limit is audited on its own.
#[tracing::instrument(skip_all, fields(tenant = %principal.tenant, stage = "intake", task_id))]
pub async fn submit(
    svc: &Services,
    principal: &Principal,
    origin: &Origin,
    request: TaskRequest,
    header_key: Option<&str>,
) -> Result<Submitted, SubmitError> {
    let submitted = admit_and_create(svc, principal, origin, request, header_key).await;
    let refusal = match &submitted {
        Err(SubmitError::ContentBlocked { field, rule }) => Some(AuditEntry::input_blocked(
            principal,
            origin,
            field,
            rule,
            svc.clock.now(),
        )),
        Err(SubmitError::Limited(LimitError::Limited { limit, .. })) => Some(
            AuditEntry::rate_limited(principal, origin, limit, svc.clock.now()),
        ),
        _ => None,
    };
    if let Some(entry) = refusal {
        record_refusal(svc, entry).await;
    }
    submitted
}

async fn admit_and_create(
    svc: &Services,
    principal: &Principal,
    origin: &Origin,
    request: TaskRequest,
    header_key: Option<&str>,
) -> Result<Submitted, SubmitError> {
    let (spec, body_key) = request.parse()?;
    let header_key = header_key
        .map(IdempotencyKey::parse)
        .transpose()
        .map_err(RequestError::BadIdempotencyKey)?;
    let key = match (header_key, body_key) {
        (Some(h), Some(b)) if h != b => return Err(SubmitError::KeyMismatch),
        (h, b) => h.or(b),
    };
    check_offered(spec.aggregation)?;
    let spec = filter_input(svc, &principal.tenant, spec).await?;
    let tokens = tokens::task_input(&spec.content, spec.system.as_deref(), spec.fanout);
    let rate_limit = limits::admit(svc, principal, tokens).await?;

    let task = Task::new(
        principal.tenant.clone(),
        spec,
        key,
        principal.sub.clone(),
        svc.clock.now(),
    );
    tracing::Span::current().record("task_id", tracing::field::display(task.task_id));
    let created = AuditEntry::task_created(&task, principal, origin);
    match svc.tasks.create(&task, &created).await {
        Ok(()) => {}
        Err(StoreError::DuplicateIdempotencyKey(existing)) => {
            let task = svc
                .tasks
                .get(&principal.tenant, existing)
                .await?
                .ok_or(StoreError::NotFound)?;
            if task.status == TaskStatus::Queued {
                enqueue(svc, &task).await?;
            }
            return Ok(Submitted {
                task,
                created: false,
                rate_limit,
            });
        }
        Err(e) => return Err(e.into()),
    }
    if let Err(e) = enqueue(svc, &task).await {
        if task.idempotency_key.is_none() {
            // Nobody can retry this task into the queue: end it now, with the reason.
            let failed = TaskPatch {
                error: Some(TaskError::new(
                    "enqueue_failed",
                    "the task could not be queued",
                )),
                ..TaskPatch::default()
            };
            let _ = svc
                .tasks
                .transition(&task, TaskStatus::Failed, failed, svc.clock.now())
                .await;
        }
        return Err(e);
    }
    Ok(Submitted {
        task,
        created: true,
        rate_limit,
    })
}

async fn enqueue(svc: &Services, task: &Task) -> Result<(), SubmitError> {
    svc.send(
        QueueName::Route,
        MessageKind::Route,
        &task.tenant,
        task.task_id,
        None,
    )
    .await?;
    Ok(())
}

pub async fn get(
    svc: &Services,
    tenant: &TenantId,
    task_id: TaskId,
) -> Result<Option<TaskRecord>, StoreError> {
    svc.tasks.get_with_calls(tenant, task_id).await
}

pub async fn list(
    svc: &Services,
    tenant: &TenantId,
    limit: u32,
    cursor: Option<&str>,
) -> Result<Page<Task>, StoreError> {
    svc.tasks.list(tenant, limit.clamp(1, 100), cursor).await
}

/// Waits until the task is finished or `timeout` passes, and returns it
/// either way. In one process a finishing stage wakes the waiter at once;
/// otherwise the store is polled with a growing interval.
pub async fn wait(
    svc: &Services,
    tenant: &TenantId,
    task_id: TaskId,
    timeout: Duration,
) -> Result<Option<TaskRecord>, StoreError> {
    let deadline = tokio::time::Instant::now() + timeout;
    // Dropped with this future, also when the client goes away mid-wait.
    let watch = svc.completions.watch(tenant, task_id);
    let mut poll = Duration::from_millis(50);
    loop {
        let notified = watch.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let record = svc.tasks.get_with_calls(tenant, task_id).await?;
        let done = record.as_ref().is_none_or(|r| r.task.status.is_terminal());
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if done || remaining.is_zero() {
            return Ok(record);
        }
        let _ = tokio::time::timeout(poll.min(remaining), notified).await;
        poll = (poll * 2).min(Duration::from_millis(500));
    }
}

/// Whose answer: the task's combined one, or one call's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputOf {
    Task,
    Call(CallId),
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("no such task")]
    TaskNotFound,
    /// No such call, no answer (yet), or an answer the blob store expired.
    #[error("no such output")]
    NoOutput,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] crate::ports::BlobError),
}

/// An answer in full, from its item or from the blob store (the claim
/// check), within the tenant.
pub async fn output(
    svc: &Services,
    tenant: &TenantId,
    task_id: TaskId,
    of: OutputOf,
) -> Result<String, OutputError> {
    let record = svc
        .tasks
        .get_with_calls(tenant, task_id)
        .await?
        .ok_or(OutputError::TaskNotFound)?;
    let (inline, reference) = match of {
        OutputOf::Task => {
            let result = record.task.result.clone().ok_or(OutputError::NoOutput)?;
            (Some(result.output), result.output_ref)
        }
        OutputOf::Call(call_id) => {
            let call = record
                .calls
                .into_iter()
                .find(|c| c.call_id == call_id)
                .ok_or(OutputError::NoOutput)?;
            (call.output, call.output_ref)
        }
    };
    match reference {
        Some(reference) => super::claim_check::read_if_kept(svc, &record.task, &reference)
            .await?
            .ok_or(OutputError::NoOutput),
        None => inline.ok_or(OutputError::NoOutput),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("task not found")]
    NotFound,
    #[error("the task is already {0}")]
    AlreadyFinished(TaskStatus),
    /// A submitter may cancel only the tasks it submitted.
    #[error("only the task's submitter or an operator may cancel it")]
    NotOwn,
    #[error(transparent)]
    Store(StoreError),
}

pub async fn cancel(
    svc: &Services,
    principal: &Principal,
    origin: &Origin,
    task_id: TaskId,
) -> Result<Task, CancelError> {
    // A cancelled task owes what its finished calls cost.
    let task = match svc.tasks.get(&principal.tenant, task_id).await {
        Ok(Some(task)) => task,
        Ok(None) => return Err(CancelError::NotFound),
        Err(e) => return Err(CancelError::Store(e)),
    };
    // A submitter cancels what it submitted; an operator anything of its tenant.
    if !principal.may(Role::Operator) && task.submitted_by != principal.sub {
        return Err(CancelError::NotOwn);
    }
    let spent = super::spent(svc, &task).await.map_err(CancelError::Store)?;
    let now = svc.clock.now();
    let patch = TaskPatch {
        error: Some(TaskError::new(
            "cancelled",
            format!("cancelled by {}", principal.sub),
        )),
        audit: Some(AuditEntry::task_cancelled(&task, principal, origin, now)),
        ..spent
    };
    match svc
        .tasks
        .transition(&task, TaskStatus::Cancelled, patch, now)
        .await
    {
        Ok(task) => {
            svc.finished(&task);
            Ok(task)
        }
        Err(StoreError::NotFound) => Err(CancelError::NotFound),
        Err(StoreError::Transition(e)) => Err(CancelError::AlreadyFinished(e.from)),
        Err(e) => Err(CancelError::Store(e)),
    }
}
