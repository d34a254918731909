//! Events other pipelines can follow: a finished task is announced (on AWS,
//! to an EventBridge bus as `maof.task.completed` / `maof.task.failed`).

use async_trait::async_trait;
use serde::Serialize;

use crate::domain::{Task, TaskError, TaskStatus, TaskType, Usage, Usd};

/// The detail of a task's finishing event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskFinished {
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
