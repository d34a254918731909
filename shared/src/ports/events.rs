//! Events other pipelines can follow: a finished task is announced (on AWS,
//! to an EventBridge bus as `maof.task.completed` / `failed` / `cancelled`).
//!
//! Announcements come from the task store's change stream, not from the
//! stage that finished the task, so a crash between the two loses none:
//! the stream keeps the change until it is announced. Delivery is at least
//! once; each event's id is stable, for consumers to drop duplicates.

use async_trait::async_trait;
use serde::Serialize;

use super::StoreError;
use crate::domain::{Task, TaskError, TaskId, TaskStatus, TaskType, TenantId, Usage, Usd};

/// The detail of a task's finishing event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskFinished {
    /// The same on every delivery of this event: a task finishes once, so
    /// its id and final status name the event.
    pub event_id: String,
    pub tenant: String,
    pub task_id: String,
    pub status: TaskStatus,
    pub task_type: TaskType,
    pub usage: Usage,
    /// A decimal string, as everywhere money leaves the system.
    pub cost_usd: Option<Usd>,
    pub error: Option<TaskError>,
    pub metadata: std::collections::BTreeMap<String, serde_json::Value>,
}

impl TaskFinished {
    pub fn of(task: &Task) -> Self {
        TaskFinished {
            event_id: format!("{}.{}", task.task_id, task.status.as_str()),
            tenant: task.tenant.to_string(),
            task_id: task.task_id.to_string(),
            status: task.status,
            task_type: task.spec.task_type.clone(),
            usage: task.usage,
            cost_usd: task.cost_usd,
            error: task.error.clone(),
            metadata: task.spec.metadata.clone(),
        }
    }

    /// `maof.task.completed`, `maof.task.failed` or `maof.task.cancelled`.
    pub fn detail_type(&self) -> String {
        format!("maof.task.{}", self.status.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("event publishing failed: {0}")]
pub struct EventError(pub String);

#[async_trait]
pub trait EventPublisher: Send + Sync {
    async fn task_finished(&self, event: &TaskFinished) -> Result<(), EventError>;
}

/// For deployments without a bus: events go nowhere.
pub struct NoEvents;

#[async_trait]
impl EventPublisher for NoEvents {
    async fn task_finished(&self, _event: &TaskFinished) -> Result<(), EventError> {
        Ok(())
    }
}

/// A place in the store's change stream: a shard, and a record in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPosition {
    pub shard: String,
    pub sequence: String,
}

/// A task's finishing, as a stream record shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finishing {
    pub position: FeedPosition,
    pub tenant: TenantId,
    pub task_id: TaskId,
}

/// What one read of the feed found.
#[derive(Debug, Clone, Default)]
pub struct FeedBatch {
    /// The tasks that finished in the records read, in stream order.
    pub finished: Vec<Finishing>,
    /// How many records were read, finishing or not.
    pub records: usize,
}

/// The task store's change stream, filtered to tasks finishing, read from a
/// checkpoint the feed keeps. On AWS the announcer Lambda's trigger does this
/// reading; the local runner reads this port instead.
#[async_trait]
pub trait FinishedFeed: Send + Sync {
    /// The next records after the last read (after the checkpoint, on the
    /// first read and after `rewind`), at most `limit`.
    async fn read(&self, limit: usize) -> Result<FeedBatch, StoreError>;

    /// Everything up to and including `position` is announced: a reader that
    /// starts again starts after it. Only finishings are checkpointed: a
    /// checkpoint is itself a change to the table, so checkpointing past
    /// every record read would never run out of records.
    async fn checkpoint(&self, position: &FeedPosition) -> Result<(), StoreError>;

    /// The next read starts again from the checkpoint (after records were
    /// read but not all announced).
    async fn rewind(&self);
}
