//! Route: picks agents for a task and sends one agent-call message per call.

use crate::domain::routing::{self, RoutingError};
use crate::domain::{
    AuditEntry, BudgetExceeded, CallId, Envelope, MessageKind, PlannedCall, Task, TaskError,
    TaskPatch, TaskStatus, budget,
};
use crate::ports::{OutgoingMessage, QueueName, StoreError};

use super::{Services, StageError, end_task, fail_task};

#[tracing::instrument(skip_all, fields(stage = "route", tenant = %envelope.tenant, task_id = %envelope.task_id))]
pub async fn handle(svc: &Services, envelope: &Envelope) -> Result<(), StageError> {
    let Some(task) = svc.tasks.get(&envelope.tenant, envelope.task_id).await? else {
        tracing::warn!("route message for a task that does not exist");
        return Ok(());
    };
    match task.status {
        // `routing` is the claim earlier versions wrote before planning.
        TaskStatus::Queued | TaskStatus::Routing => plan_and_send(svc, envelope, task).await,
        // A redelivery after planning, maybe before sending: send again;
        // agent-call skips a call whose result is already recorded.
        TaskStatus::Running => send_calls(svc, envelope, &task).await,
        // Ended (cancelled, timed out) before its calls were sent: they are
        // still sent, each to be recorded as not made, which releases what
        // was reserved for it.
        _ if task
            .plan
            .iter()
            .any(|c| task.settlement(c.call_id).is_some()) =>
        {
            send_calls(svc, envelope, &task).await
        }
        _ => Ok(()),
    }
}

async fn plan_and_send(svc: &Services, envelope: &Envelope, task: Task) -> Result<(), StageError> {
    let now = svc.clock.now();
    if now > task.deadline() {
        return fail_task(
            svc,
            &task,
            TaskError::new("timeout", "the task timed out before routing"),
        )
        .await;
    }
    let (agents, settings) = tokio::try_join!(
        svc.agents.usable(&task.tenant),
        svc.agents.settings(&task.tenant)
    )?;
    let budgeted = budget::applies(settings.budgets, &task.spec);
    let selection = match routing::select(&task.spec, &agents, budgeted) {
        Ok(selection) => selection,
        Err(e) => return fail_task(svc, &task, routing_error(&e)).await,
    };
    // The candidates after the chosen, in order, for the fallback chain.
    tracing::debug!(
        strategy = task.spec.routing_strategy.as_str(),
        fallbacks = ?selection.fallbacks,
        "agents chosen"
    );
    let chosen = selection.calls;
    // The whole panel is held against the budgets, and on the tenant's
    // counters in the same write as the plan: no panel is half paid and
    // then refused.
    let holds = match budget::hold_panel(&task.spec, &chosen, settings.budgets, now.date_naive()) {
        Ok(holds) => holds,
        Err(e) => return fail_over_budget(svc, &task, &e).await,
    };
    let hold = holds.tenant;
    let plan: Vec<PlannedCall> = chosen
        .iter()
        .zip(holds.calls)
        .map(|(agent, hold)| PlannedCall {
            call_id: CallId::new(),
            agent_id: agent.id.clone(),
            hold,
        })
        .collect();
    let patch = TaskPatch {
        expected_calls: Some(plan.len() as u32),
        plan: Some(plan),
        hold,
        ..TaskPatch::default()
    };
    // Writing the plan is the claim: of two deliveries planning at once,
    // one writes it and sends its calls; the other finds the task running
    // (or cancelled meanwhile) and has nothing to send.
    let task = match svc
        .tasks
        .transition(&task, TaskStatus::Running, patch, now)
        .await
    {
        Ok(task) => task,
        Err(StoreError::Transition(_)) => return Ok(()),
        // Only a hold is refused for a budget.
        Err(StoreError::OverBudget(period)) if let Some(hold) = hold => {
            return fail_over_budget(svc, &task, &hold.exceeded(period)).await;
        }
        Err(e) => return Err(e.into()),
    };
    tracing::debug!(calls = task.plan.len(), "routed");
    send_calls(svc, envelope, &task).await
}

fn routing_error(e: &RoutingError) -> TaskError {
    TaskError::new(e.code(), e.to_string())
}

/// Fails a task a budget refused, with the refusal's audit entry.
async fn fail_over_budget(
    svc: &Services,
    task: &Task,
    e: &BudgetExceeded,
) -> Result<(), StageError> {
    let entry = AuditEntry::budget_exceeded(task, e.code(), svc.clock.now());
    let error = TaskError::new(e.code(), e.to_string());
    end_task(svc, task, error, Some(entry)).await.map(|_| ())
}

async fn send_calls(svc: &Services, envelope: &Envelope, task: &Task) -> Result<(), StageError> {
    let messages = task
        .plan
        .iter()
        .map(|call| {
            let mut message =
                Envelope::new(MessageKind::AgentCall, task.tenant.clone(), task.task_id);
            message.call_id = Some(call.call_id);
            message.agent_id = Some(call.agent_id.clone());
            message.trace = envelope.trace.clone();
            OutgoingMessage::now(message.to_body())
        })
        .collect();
    svc.queue.send_batch(QueueName::AgentCall, messages).await?;
    Ok(())
}
