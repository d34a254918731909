//! Agent-call: calls one agent for one task, records the result, and the call
//! that completes the fan-in hands the task to aggregation.

use std::time::{Duration, Instant};

use rand::Rng;
use secrecy::SecretString;

use crate::domain::{
    Agent, AgentId, CallError, CallId, CallResult, CallStatus, Envelope, ErrorClass, MessageKind,
    Task, TaskError, Usage,
};
use crate::ports::{FanIn, QueueName, SecretError, SecretSource};
use crate::providers::{ChatRequest, Message, ProviderError, Role};

use super::{Services, StageError, aggregate, fail_task};

#[tracing::instrument(skip_all, fields(
    stage = "agent-call", tenant = %envelope.tenant, task_id = %envelope.task_id,
    call_id = tracing::field::Empty, agent_id = tracing::field::Empty,
))]
pub async fn handle(svc: &Services, envelope: &Envelope) -> Result<(), StageError> {
    let (Some(call_id), Some(agent_id)) = (envelope.call_id, envelope.agent_id.clone()) else {
        return Err(StageError::Malformed(
            "agent-call message without call_id or agent_id".into(),
        ));
    };
    let span = tracing::Span::current();
    span.record("call_id", tracing::field::display(call_id));
    span.record("agent_id", tracing::field::display(&agent_id));

    let Some(record) = svc
        .tasks
        .get_with_calls(&envelope.tenant, envelope.task_id)
        .await?
    else {
        tracing::warn!("agent-call message for a task that does not exist");
        return Ok(());
    };
    let task = record.task;
    if task.status.is_terminal() {
        return Ok(());
    }
    // A redelivery after the result was written: do not call (and pay) again.
    let result = match record.calls.into_iter().find(|c| c.call_id == call_id) {
        Some(result) => result,
        None => {
            if svc.clock.now() > task.deadline() {
                return fail_task(
                    svc,
                    &task,
                    TaskError::new("timeout", "the task timed out while calling agents"),
                )
                .await;
            }
            call(svc, &task, call_id, &agent_id).await?
        }
    };
    if svc.clock.now() > task.deadline() {
        // Too late to count: keep the call for the record, fail the task.
        svc.tasks
            .put_call(&task.tenant, task.task_id, &result)
            .await?;
        return fail_task(
            svc,
            &task,
            TaskError::new("timeout", "the task timed out while calling agents"),
        )
        .await;
    }
    if task.expected_calls == Some(1) {
        // The only call: store its result and finish the task here, rather
        // than pay for a fan-in count and another hop.
        svc.tasks
            .put_call(&task.tenant, task.task_id, &result)
            .await?;
        return aggregate::finish(svc, &task, std::slice::from_ref(&result)).await;
    }
    match svc
        .tasks
        .record_call(&task.tenant, task.task_id, &result)
        .await?
    {
        FanIn::Won | FanIn::AlreadyComplete => {
            svc.send(
                QueueName::Aggregate,
                MessageKind::Aggregate,
                &task.tenant,
                task.task_id,
                envelope.trace.clone(),
            )
            .await?;
            Ok(())
        }
        FanIn::Waiting { .. } => Ok(()),
    }
}

/// Calls the agent with retries; returns the call's final result, succeeded
/// or failed. Errors only when the message should be retried later.
async fn call(
    svc: &Services,
    task: &Task,
    call_id: CallId,
    agent_id: &AgentId,
) -> Result<CallResult, StageError> {
    let started = Instant::now();
    let Some(agent) = svc.agents.get(agent_id).await? else {
        return Ok(failed(
            svc,
            call_id,
            agent_id,
            None,
            ErrorClass::Unavailable,
            "the agent no longer exists",
            started,
            0,
        ));
    };
    let Some(client) = svc.providers.get(agent.spec.provider).cloned() else {
        let message = format!(
            "provider {:?} is not available in this deployment",
            agent.spec.provider
        );
        return Ok(failed(
            svc,
            call_id,
            agent_id,
            Some(&agent),
            ErrorClass::Unavailable,
            &message,
            started,
            0,
        ));
    };
    let mut key = match key_for(svc, &agent).await {
        Ok(key) => key,
        Err(SecretError::NotFound(_)) => {
            return Ok(failed(
                svc,
                call_id,
                agent_id,
                Some(&agent),
                ErrorClass::Auth,
                "no API key is configured for this agent",
                started,
                0,
            ));
        }
        Err(e) => {
            return Err(StageError::RetryLater {
                after: Duration::from_secs(5),
                reason: e.to_string(),
            });
        }
    };
    let request = ChatRequest {
        task_type: task.spec.task_type.clone(),
        system: task.spec.system.clone(),
        messages: vec![Message {
            role: Role::User,
            content: task.spec.content.clone(),
        }],
        max_tokens: agent.spec.constraints.max_tokens,
        temperature: None,
        stop: Vec::new(),
    };
    let max_attempts = agent.spec.constraints.max_attempts();
    let mut refreshed_key = false;
    let mut attempt = 0;
    let mut retried_errors = Vec::new();
    loop {
        attempt += 1;
        // No attempt outlives the task's deadline.
        let remaining = (task.deadline() - svc.clock.now())
            .to_std()
            .unwrap_or_default();
        let answer =
            tokio::time::timeout(remaining, client.complete(&agent, key.as_ref(), &request))
                .await
                .unwrap_or_else(|_| {
                    Err(ProviderError::new(
                        ErrorClass::Timeout,
                        "the task's deadline passed during the call",
                    ))
                });
        let error: ProviderError = match answer {
            Ok(response) => {
                if agent.spec.pricing.is_none() {
                    tracing::warn!(
                        "the agent has no prices: this call's cost is unknown (null), not zero"
                    );
                }
                return Ok(CallResult {
                    call_id,
                    agent_id: agent_id.clone(),
                    provider: Some(agent.spec.provider),
                    status: CallStatus::Succeeded,
                    output: Some(response.output),
                    cost_usd: agent.cost(&response.usage),
                    usage: response.usage,
                    latency_ms: started.elapsed().as_millis() as u64,
                    attempts: attempt,
                    error: None,
                    retried_errors,
                    finished_at: svc.clock.now(),
                });
            }
            Err(error) => error,
        };
        tracing::warn!(attempt, class = ?error.class, status = error.status, "provider call failed");
        // A rotated key: fetch it again once.
        if error.class == ErrorClass::Auth && !refreshed_key && key.is_some() {
            refreshed_key = true;
            if let Some(name) = agent.spec.secret.as_deref() {
                svc.secrets.invalidate(name);
            }
            key = key_for(svc, &agent).await.ok().flatten();
            if key.is_some() {
                attempt -= 1;
                continue;
            }
        }
        if !error.class.is_retryable() || attempt >= max_attempts {
            return Ok(failed_with(
                svc, call_id, agent_id, &agent, error, started, attempt,
            ));
        }
        let wait = error.retry_after.unwrap_or_else(|| backoff(attempt));
        retried_errors.push(CallError {
            class: error.class,
            message: error.message.clone(),
        });
        if wait > svc.settings.max_inline_wait {
            // Too long to sleep in a Lambda: the queue brings the message back.
            return Err(StageError::RetryLater {
                after: wait,
                reason: error.message,
            });
        }
        tokio::time::sleep(wait).await;
    }
}

/// Exponential backoff with full jitter: uniform in [0, 100 ms × 2^attempt], capped at 2 s.
fn backoff(attempt: u32) -> Duration {
    let cap = (100u64 << attempt.min(5)).min(2_000);
    Duration::from_millis(rand::rng().random_range(0..=cap))
}

async fn key_for(svc: &Services, agent: &Agent) -> Result<Option<SecretString>, SecretError> {
    match agent.spec.secret.as_deref() {
        Some(name) if agent.spec.provider.needs_secret() => svc.secrets.get(name).await.map(Some),
        _ => Ok(None),
    }
}

#[allow(clippy::too_many_arguments)]
fn failed(
    svc: &Services,
    call_id: CallId,
    agent_id: &AgentId,
    agent: Option<&Agent>,
    class: ErrorClass,
    message: &str,
    started: Instant,
    attempts: u32,
) -> CallResult {
    CallResult {
        call_id,
        agent_id: agent_id.clone(),
        provider: agent.map(|a| a.spec.provider),
        status: CallStatus::Failed,
        output: None,
        usage: Usage::default(),
        cost_usd: agent.and_then(|a| a.cost(&Usage::default())),
        latency_ms: started.elapsed().as_millis() as u64,
        attempts,
        error: Some(CallError {
            class,
            message: message.to_owned(),
        }),
        retried_errors: Vec::new(),
        finished_at: svc.clock.now(),
    }
}

fn failed_with(
    svc: &Services,
    call_id: CallId,
    agent_id: &AgentId,
    agent: &Agent,
    error: ProviderError,
    started: Instant,
    attempts: u32,
) -> CallResult {
    failed(
        svc,
        call_id,
        agent_id,
        Some(agent),
        error.class,
        &error.message,
        started,
        attempts,
    )
}
