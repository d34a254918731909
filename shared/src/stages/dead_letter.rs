//! Dead letters: a message that exhausted its receives fails its task, with
//! the reason, so no task is left hanging.

use crate::domain::{Envelope, TaskError};
use crate::ports::QueueName;

use super::{Services, StageError, fail_task};

#[tracing::instrument(skip_all, fields(stage = "dead-letter", tenant = %envelope.tenant, task_id = %envelope.task_id))]
pub async fn handle(
    svc: &Services,
    dead_letter_queue: QueueName,
    envelope: &Envelope,
    receive_count: u32,
) -> Result<(), StageError> {
    let Some(task) = svc.tasks.get(&envelope.tenant, envelope.task_id).await? else {
        return Ok(());
    };
    let stage = match dead_letter_queue {
        QueueName::RouteDlq => "route",
        QueueName::AgentCallDlq => "agent-call",
        _ => "aggregate",
    };
    tracing::error!(
        stage,
        receive_count,
        "message dead-lettered; failing its task"
    );
    let reason = match envelope.agent_id.as_ref() {
        Some(agent) => format!(
            "the {stage} stage kept failing for agent {agent}; gave up after repeated attempts"
        ),
        None => format!("the {stage} stage kept failing; gave up after repeated attempts"),
    };
    fail_task(svc, &task, TaskError::new("stage_failed", reason)).await
}
