//! Dead letters: a message that exhausted its receives ends what it was
//! for, with the reason, so no task is left hanging. A dead agent-call
//! becomes that call's failed result (class `dead_letter`), counted into the
//! fan-in like any other, so one poison call does not fail a fan-out whose
//! other calls succeeded.

use std::time::Duration;

use crate::domain::{CallLease, Envelope, ErrorClass, LeaseHolder, LeaseOutcome, TaskError};
use crate::ports::QueueName;

use super::agent_call::{self, CallRecord};
use super::{Services, StageError, fail_task};

/// How long the dead-letter consumer holds a call's lease while it records
/// the call as failed.
const DEAD_LETTER_LEASE: Duration = Duration::from_secs(60);

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
        return dead_call(svc, envelope, &task).await;
    }
    let reason = match envelope.agent_id.as_ref() {
        Some(agent) => format!(
            "the {stage} stage kept failing for agent {agent}; gave up after repeated attempts"
        ),
        None => format!("the {stage} stage kept failing; gave up after repeated attempts"),
    };
    fail_task(svc, &task, TaskError::new("stage_failed", reason)).await
}

/// Records a dead call as failed, unless a delivery is still calling it (its
/// lease is live): then the message comes back when the lease ends.
async fn dead_call(
    svc: &Services,
    envelope: &Envelope,
    task: &crate::domain::Task,
) -> Result<(), StageError> {
    let (call_id, agent_id) = agent_call::call_of(envelope)?;
    let now = svc.clock.now();
    let lease = CallLease {
        holder: LeaseHolder::new(),
        until: now + DEAD_LETTER_LEASE,
    };
    if let LeaseOutcome::Held { until } = svc
        .tasks
        .lease_call(&task.tenant, task.task_id, call_id, &lease, now)
        .await?
    {
        return Err(StageError::RetryLater {
            after: LeaseOutcome::remaining(until, now),
            reason: "a delivery of this call is still calling the agent".into(),
        });
    }
    let agent = svc.agents.get(&agent_id).await.ok().flatten();
    let result = CallRecord::start(call_id, &agent_id).failed(
        agent.as_ref(),
        ErrorClass::DeadLetter,
        "the call's message kept failing; no answer was recorded",
        now,
    );
    match agent_call::conclude(svc, envelope, task, result).await {
        Ok(()) => Ok(()),
        Err(StageError::Store(e)) => {
            // The call cannot even be recorded: end the task rather than leave it hanging.
            tracing::error!(error = %e, "could not record the dead call; failing its task");
            let reason = format!(
                "the agent-call stage kept failing for agent {agent_id}; gave up after repeated attempts"
            );
            fail_task(svc, task, TaskError::new("stage_failed", reason)).await
        }
        Err(e) => Err(e),
    }
}
