//! The task store: tasks, their call results and the fan-in, tenant-scoped.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::health::Observation;
use crate::domain::{
    AuditEntry, CallId, CallLease, CallResult, LeaseOutcome, Period, Spend, Task, TaskId,
    TaskPatch, TaskStatus, TenantId, TransitionError,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the item already exists")]
    AlreadyExists,
    /// The idempotency key was used before; the task it created is returned.
    #[error("idempotency key already used by task {0}")]
    DuplicateIdempotencyKey(TaskId),
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The transition's hold does not fit under the tenant's budget for the
    /// period; nothing was written.
    #[error("the {0:?} budget has no room for the hold")]
    OverBudget(Period),
    /// The item would be larger than DynamoDB's 400 KB.
    #[error("the item is too large to store ({bytes} bytes; the limit is 400 KB)")]
    ItemTooLarge { bytes: usize },
    /// An optimistic write lost: the item changed since it was read.
    #[error("version conflict: the item is now at version {current:?}")]
    VersionConflict { current: Option<u64> },
    /// The backend failed; the message is for operators' logs, not for clients.
    #[error("storage backend error: {0}")]
    Backend(String),
}

/// What counting a call meant for the task's fan-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanIn {
    /// Other calls are still outstanding.
    Waiting { done: u32, expected: u32 },
    /// This call completed the set: exactly one call ever gets this, and it
    /// hands the task to aggregation.
    Won,
    /// The set was complete before this delivery (a duplicate). If the task
    /// is still unfinished, the winner may have crashed before handing it on:
    /// hand it on again (aggregation is idempotent).
    AlreadyComplete,
}

/// A tenant's spend counters for a day and its month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpendOn {
    pub day: Spend,
    pub month: Spend,
}

/// A task with the results of its calls, in call-id order.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub task: Task,
    pub calls: Vec<CallResult>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back to get the next page; `None` on the last one.
    pub next: Option<String>,
}

#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Stores a new task, with its idempotency key if it has one and its
    /// `task.created` audit entry, atomically. Refused with `AlreadyExists`
    /// for a known id and with `DuplicateIdempotencyKey` for a key the
    /// tenant used before (then no entry is written either).
    async fn create(&self, task: &Task, audit: &AuditEntry) -> Result<(), StoreError>;

    async fn get(&self, tenant: &TenantId, task_id: TaskId) -> Result<Option<Task>, StoreError>;

    async fn get_with_calls(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
    ) -> Result<Option<TaskRecord>, StoreError>;

    /// Moves the task `seen` (as the caller read it) to `to` if, at the
    /// moment of writing, its status may become `to` (see
    /// `TaskStatus::can_become`); applies `patch` with it. Only the task's
    /// state is written; its request never changes. Returns the task as
    /// written.
    ///
    /// A `patch.audit` entry is appended to its log in the same atomic write.
    /// A `patch.hold` is reserved on the tenant's day and month counters in
    /// the same atomic write, each only if what it has committed leaves room
    /// for it under its budget; else nothing is written (`OverBudget`).
    async fn transition(
        &self,
        seen: &Task,
        to: TaskStatus,
        patch: TaskPatch,
        now: DateTime<Utc>,
    ) -> Result<Task, StoreError>;

    /// Takes, renews or ends the lease on a call, atomically: written when
    /// the call has no lease, its lease has ended, or `lease.holder` already
    /// holds it (a holder ends its lease by writing `until = now`). Otherwise
    /// the call is `Held` by another delivery, and nothing is written.
    async fn lease_call(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        call_id: CallId,
        lease: &CallLease,
        now: DateTime<Utc>,
    ) -> Result<LeaseOutcome, StoreError>;

    /// Stores a call's final result; the first write for a call id wins and a
    /// duplicate changes nothing. Does not count it toward the fan-in.
    /// Returns the result as stored: the first one written, which is this
    /// one unless another delivery's result got there first.
    ///
    /// The first write applies the result's `settles` to the tenant's
    /// counters, and `health` to its agents' health, in the same atomic
    /// write; a duplicate settles and counts nothing.
    async fn put_call(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        result: &CallResult,
        health: &[Observation],
    ) -> Result<CallResult, StoreError>;

    /// Stores the result of a task's only call and finishes the task from
    /// it, in one atomic write: the result as `put_call` writes it (with
    /// its settlement and `health`), and the task moved to `to` with `patch`
    /// as `transition` moves it. `None`, writing nothing, when the call's
    /// result is stored already, the task may no longer become `to`, or the
    /// patch needs a write of its own (a hold, an audit entry): then the
    /// caller goes the long way (`put_call`, then `transition`).
    async fn finish_with_call(
        &self,
        seen: &Task,
        to: TaskStatus,
        patch: TaskPatch,
        result: &CallResult,
        health: &[Observation],
        now: DateTime<Utc>,
    ) -> Result<Option<Task>, StoreError>;

    /// Stores a call's result (as `put_call`) and counts the call toward the
    /// fan-in, idempotently.
    async fn record_call(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        result: &CallResult,
        health: &[Observation],
    ) -> Result<FanIn, StoreError>;

    /// Adds to an ended task's usage and cost those of `calls` that it does
    /// not count yet (calls that landed after it ended), each once; never
    /// changes its status. `seen` is the task as the caller last read it; a
    /// store that finds it changed reads it again.
    async fn add_late_calls(&self, seen: &Task, calls: &[CallResult]) -> Result<(), StoreError>;

    /// Unfinished tasks of the sweep index's partition `shard` whose time to
    /// be looked at has come by `now`, soonest first, at most `limit`.
    async fn due(
        &self,
        shard: u32,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(TenantId, TaskId)>, StoreError>;

    /// When the sweeper next looks at an unfinished task. A task that has
    /// finished stays out of the index (and this is no error).
    async fn postpone(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// What the tenant's counters hold for `day` and its month (zero where
    /// nothing was counted).
    async fn spend(&self, tenant: &TenantId, day: NaiveDate) -> Result<SpendOn, StoreError>;

    /// A tenant's tasks, newest first. `cursor` is a previous page's `next`.
    async fn list(
        &self,
        tenant: &TenantId,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<Task>, StoreError>;
}

/// Decides the fan-in from the number of calls counted before this one,
/// whether this call was among them, and the expected count; shared by every
/// backend so they cannot disagree.
pub fn fan_in_outcome(done_before: u32, already_counted: bool, expected: Option<u32>) -> FanIn {
    let expected = expected.unwrap_or(u32::MAX);
    let done = if already_counted {
        done_before
    } else {
        done_before + 1
    };
    if done < expected {
        FanIn::Waiting { done, expected }
    } else if already_counted {
        FanIn::AlreadyComplete
    } else {
        FanIn::Won
    }
}
