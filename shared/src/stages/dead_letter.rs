//! Dead letters: a message that exhausted its receives ends what it was
//! for, with the reason, so no task is left hanging. A dead agent-call
//! becomes that call's failed result (class `dead_letter`), counted into the
//! fan-in like any other, so one poison call does not fail a fan-out whose
//! other calls succeeded.

use crate::domain::{Envelope, TaskError};
use crate::ports::QueueName;

use super::{Services, StageError, agent_call, fail_task};

/// The stage whose messages a dead-letter queue holds; `None` for a work queue.
fn stage_of(queue: QueueName) -> Option<&'static str> {
    match queue {
        QueueName::RouteDlq => Some("route"),
        QueueName::AgentCallDlq => Some("agent-call"),
        QueueName::AggregateDlq => Some("aggregate"),
        QueueName::Route | QueueName::AgentCall | QueueName::Aggregate => None,
    }
}

#[tracing::instrument(skip_all, fields(stage = "dead-letter", tenant = %envelope.tenant, task_id = %envelope.task_id))]
pub async fn handle(
    svc: &Services,
    dead_letter_queue: QueueName,
    envelope: &Envelope,
    receive_count: u32,
) -> Result<(), StageError> {
    let Some(stage) = stage_of(dead_letter_queue) else {
        return Err(StageError::Malformed(format!(
            "{} is not a dead-letter queue",
            dead_letter_queue.as_str()
        )));
    };
    let Some(task) = svc.tasks.get(&envelope.tenant, envelope.task_id).await? else {
        return Ok(());
    };
    if task.status.is_terminal() {
        return Ok(());
    }
    tracing::error!(stage, receive_count, "message dead-lettered");
    if dead_letter_queue == QueueName::AgentCallDlq
        && envelope.call_id.is_some()
        && envelope.agent_id.is_some()
    {
        return agent_call::dead_lettered(svc, envelope, &task).await;
    }
    let reason = match envelope.agent_id.as_ref() {
        Some(agent) => format!(
            "the {stage} stage kept failing for agent {agent}; gave up after repeated attempts"
        ),
        None => format!("the {stage} stage kept failing; gave up after repeated attempts"),
    };
    fail_task(svc, &task, TaskError::new("stage_failed", reason)).await
}
