//! The task store: tasks, their call results and the fan-in, tenant-scoped.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    CallId, CallResult, Task, TaskId, TaskPatch, TaskStatus, TenantId, TransitionError,
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
    /// An optimistic write lost: the item changed since it was read.
    #[error("version conflict: the item is now at version {current:?}")]
    VersionConflict { current: Option<u64> },
    /// The backend failed; the message is for operators' logs, not for clients.
    #[error("storage backend error: {0}")]
    Backend(String),
}

/// What recording a call result meant for the task's fan-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanIn {
    /// Other calls are still outstanding.
    Waiting { done: u32, expected: u32 },
    /// Every call is done and this call holds the claim: it sends the aggregate
    /// message. A redelivery of the same call wins again (so a crash between
    /// the claim and the send loses nothing); no other call ever does.
    Won,
    /// Every call is done and another call holds the claim.
    Lost,
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
    /// Stores a new task, with its idempotency key if it has one, atomically.
    /// Refused with `AlreadyExists` for a known id and with
    /// `DuplicateIdempotencyKey` for a key the tenant used before.
    async fn create(&self, task: &Task) -> Result<(), StoreError>;

    async fn get(&self, tenant: &TenantId, task_id: TaskId) -> Result<Option<Task>, StoreError>;

    async fn get_with_calls(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
    ) -> Result<Option<TaskRecord>, StoreError>;

    /// Moves a task to `to` if, at the moment of writing, its status may
    /// become `to` (see `TaskStatus::can_become`); applies `patch` with it.
    /// Returns the task as written.
    async fn transition(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        to: TaskStatus,
        patch: TaskPatch,
        now: DateTime<Utc>,
    ) -> Result<Task, StoreError>;

    /// Records a call's final result (the first write for a call id wins; a
    /// duplicate changes nothing) and counts the call toward the fan-in.
    async fn record_call(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        result: &CallResult,
    ) -> Result<FanIn, StoreError>;

    /// A tenant's tasks, newest first. `cursor` is a previous page's `next`.
    async fn list(
        &self,
        tenant: &TenantId,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<Task>, StoreError>;
}

/// Decides the fan-in from the set of done calls, the expected count and the
/// current claim holder; shared by every backend so they cannot disagree.
pub fn fan_in_outcome(
    done: u32,
    expected: Option<u32>,
    claim_holder: Option<CallId>,
    me: CallId,
) -> FanIn {
    match expected {
        Some(expected) if done >= expected => match claim_holder {
            None => FanIn::Won,
            Some(holder) if holder == me => FanIn::Won,
            Some(_) => FanIn::Lost,
        },
        expected => FanIn::Waiting {
            done,
            expected: expected.unwrap_or(0),
        },
    }
}
