//! Agent-call: calls one agent for one task, records the result, and the call
//! that completes the fan-in hands the task to aggregation.
//!
//! One delivery reads as: [`prepare`] the call (agent, client, key, request),
//! then, under a [`Deadline`] and holding the call's lease, [`attempt`] it
//! until [`next_step`] says it is done; the [`CallRecord`] builds the result,
//! and [`conclude`] stores it and moves the task on.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;
use secrecy::SecretString;

use crate::domain::aggregation::combine;
use crate::domain::call::{Escalation, Hop};
use crate::domain::filters::Direction;
use crate::domain::health::Observation;
use crate::domain::{
    Agent, AgentId, AuditEntry, CallError, CallId, CallLease, CallResult, CallStatus, Envelope,
    ErrorClass, LeaseHolder, LeaseOutcome, MessageKind, ProviderKey, RoutingStrategy, Task,
    TaskError, Usage, Usd, Verdict,
};
use crate::domain::{budget, routing};
use crate::ports::{
    BlobError, ChatRequest, ChatResponse, FanIn, Message, ProviderClient, ProviderError, QueueName,
    Role, SecretError, SecretSource, StoreError,
};

use super::health::{self, Admission};
use super::limits::{self, CallAdmission};
use super::{Ended, Services, StageError, aggregate, claim_check, end_task, fail_task};

/// How long a lease outlives the attempt it covers: time to write the result.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// Time kept back from the invocation's deadline to store the result.
const WRITE_MARGIN: Duration = Duration::from_secs(2);
/// An attempt cut shorter than this by the invocation's deadline is not started.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);
/// Tries of a result write before the delivery gives up (and is redelivered).
const WRITE_TRIES: u32 = 3;

#[tracing::instrument(skip_all, fields(
    stage = "agent-call", tenant = %envelope.tenant, task_id = %envelope.task_id,
    call_id = tracing::field::Empty, agent_id = tracing::field::Empty,
))]
pub async fn handle(
    svc: &Services,
    envelope: &Envelope,
    invocation_deadline: Option<DateTime<Utc>>,
) -> Result<(), StageError> {
    let (call_id, agent_id) = call_of(envelope)?;
    let Some(record) = svc
        .tasks
        .get_with_calls(&envelope.tenant, envelope.task_id)
        .await?
    else {
        tracing::warn!("agent-call message for a task that does not exist");
        return Ok(());
    };
    let task = record.task;
    // A redelivery after the result was written: do not call (and pay) again.
    let stored = record.calls.into_iter().find(|c| c.call_id == call_id);
    if task.status.is_terminal() {
        return match stored {
            // Stored, but the delivery that stored it may have stopped before
            // adding it to the ended task: adding is idempotent (by call id),
            // and writes nothing once it is counted.
            Some(stored) => Ok(svc
                .tasks
                .add_late_calls(&task, std::slice::from_ref(&stored))
                .await?),
            // The task ended before this call was made: record it as not
            // made, so that the fan-in completes and no call shows pending.
            None => {
                let not_made = CallRecord::start(call_id, &agent_id).failed(
                    None,
                    ErrorClass::Unavailable,
                    "the task had ended; the call was not made",
                    svc.clock.now(),
                );
                conclude(svc, envelope, &task, not_made, &[]).await
            }
        };
    }
    if let Some(result) = stored {
        return conclude(svc, envelope, &task, result, &[]).await;
    }
    if svc.clock.now() > task.deadline() {
        // Recorded as not made (which fails the task as timed out), so that
        // the fan-in completes and the call's reservation is released.
        let not_made = CallRecord::start(call_id, &agent_id).failed(
            None,
            ErrorClass::Timeout,
            "the task timed out before the call was made",
            svc.clock.now(),
        );
        return conclude(svc, envelope, &task, not_made, &[]).await;
    }
    let deadline = Deadline {
        task: task.deadline(),
        invocation: invocation_deadline,
    };
    let lease = Lease {
        svc,
        task: &task,
        call_id,
        holder: LeaseHolder::new(),
    };
    let (result, probes) =
        call_with_fallbacks(svc, &task, call_id, &agent_id, deadline, &lease).await?;
    let result = filter_output(svc, &task, result).await?;
    let observed = health::observations(svc, &task, &result, &probes).await?;
    let concluded = conclude(svc, envelope, &task, result, &observed).await;
    if concluded.is_err() {
        // The answer could not be stored: let the redelivery call at once
        // rather than wait out this delivery's lease.
        lease.end_at(svc.clock.now()).await;
    }
    concluded
}

/// Calls the planned agent and, while the last agent failed for good on
/// the provider's side, the call's fallbacks in order, within the task's
/// deadline. A fallback must be usable now: known to the tenant, under its
/// own rate limit (a fallback does not wait for room), and after a context
/// length error, with a larger window. The result is the last agent's,
/// with the ones left behind in `fell_back_from` and their cost added.
/// A delivery that must wait in the queue (a provider's long retry-after)
/// starts over from the planned agent when it comes back.
///
/// A `tiered` task also escalates: an answer that comes back blank or cut
/// off by `max_tokens` goes on to the next fallback of a higher tier (the
/// fallbacks are its escalation ladder, see `domain::routing`); under a
/// budget, only to one whose expected cost fits what is left of the call's
/// hold after the answers already paid. With no such fallback left, the
/// last answer stands, blank or partial: it is still an answer, marked
/// `truncated` when cut off.
///
/// Returns the result, and the agents whose circuit probe the call held.
async fn call_with_fallbacks(
    svc: &Services,
    task: &Task,
    call_id: CallId,
    planned: &AgentId,
    deadline: Deadline,
    lease: &Lease<'_>,
) -> Result<(CallResult, Vec<AgentId>), StageError> {
    let planned_call = task.planned(call_id);
    let fallbacks = planned_call
        .map(|c| c.fallbacks.clone())
        .unwrap_or_default();
    let mut probes: Vec<AgentId> = match planned_call {
        Some(c) if c.probe => vec![planned.clone()],
        _ => Vec::new(),
    };
    let mut left = fallbacks.into_iter();
    let mut hops: Vec<Hop> = Vec::new();
    let mut agent_id = planned.clone();
    loop {
        let result = match prepare(svc, task, call_id, &agent_id).await? {
            Prepared::Ready(call) => call.run(svc, deadline, lease).await?,
            Prepared::Failed(result) => *result,
        };
        // A failure of the provider's side (or a tiered answer to escalate),
        // with time left: the next fallback that can take the call, if any.
        let fell = match leaves(task, &result) {
            Some(leave) if svc.clock.now() < task.deadline() => {
                let paid = paid(&hops, &result);
                next_fallback(svc, task, &result, &leave, paid, &mut left)
                    .await?
                    .map(|next| (next, leave))
            }
            _ => None,
        };
        let Some(((next, probe), leave)) = fell else {
            return Ok((after_hops(result, hops), probes));
        };
        if probe {
            probes.push(next.clone());
        }
        tracing::info!(from = %result.agent_id, to = %next, ?leave, "falling back");
        let (error, escalated) = match leave {
            Leave::Failed(error) => (Some(error), None),
            Leave::Escalated(why) => (None, Some(why)),
        };
        hops.push(Hop {
            agent_id: result.agent_id,
            error,
            escalated,
            attempts: result.attempts,
            latency_ms: result.latency_ms,
            usage: result.usage,
            cost_usd: result.cost_usd,
        });
        agent_id = next;
    }
}

/// Why a call leaves its agent for the next.
#[derive(Debug)]
enum Leave {
    /// It failed for good on the provider's side ([`falls_back`]).
    Failed(CallError),
    /// A `tiered` task's answer, blank or cut off.
    Escalated(Escalation),
}

/// Whether, and why, `result` goes on to the call's next fallback.
fn leaves(task: &Task, result: &CallResult) -> Option<Leave> {
    match (&result.status, &result.error) {
        (CallStatus::Failed, Some(error)) if falls_back(error.class) => {
            Some(Leave::Failed(error.clone()))
        }
        (CallStatus::Succeeded, _) if task.spec.routing_strategy == RoutingStrategy::Tiered => {
            Escalation::of(result).map(Leave::Escalated)
        }
        _ => None,
    }
}

/// What the call has cost so far (unknown if any part is).
fn paid(hops: &[Hop], last: &CallResult) -> Option<Usd> {
    hops.iter()
        .map(|h| h.cost_usd)
        .chain([last.cost_usd])
        .try_fold(Usd::ZERO, |sum, cost| cost.map(|c| sum + c))
}

/// Whether a call that failed for good with `class` goes on to a fallback:
/// failures of the provider's side (a caller's bad request would fail on
/// any agent; a refusal of the content is the content's).
fn falls_back(class: ErrorClass) -> bool {
    matches!(
        class,
        ErrorClass::RateLimited
            | ErrorClass::Overloaded
            | ErrorClass::Server
            | ErrorClass::Timeout
            | ErrorClass::Network
            | ErrorClass::Auth
            | ErrorClass::ContextLengthExceeded
    )
}

/// The first of the call's fallbacks `left` that may take it now, after it
/// left `from` for `leave` (its circuit closed, or its probe's claim won:
/// then with `true`); `paid` is what the call has cost so far.
async fn next_fallback(
    svc: &Services,
    task: &Task,
    from: &CallResult,
    leave: &Leave,
    paid: Option<Usd>,
    left: &mut impl Iterator<Item = AgentId>,
) -> Result<Option<(AgentId, bool)>, StageError> {
    let class = match leave {
        Leave::Failed(error) => Some(error.class),
        Leave::Escalated(_) => None,
    };
    let escalating = matches!(leave, Leave::Escalated(_));
    let from_agent = if escalating || class == Some(ErrorClass::ContextLengthExceeded) {
        svc.agents.find(&task.tenant, &from.agent_id).await?
    } else {
        None
    };
    let failed_window = match class {
        Some(ErrorClass::ContextLengthExceeded) => from_agent
            .as_ref()
            .and_then(|a| a.spec.constraints.context_window),
        _ => None,
    };
    // An escalation goes up a tier, from the tier of the agent left.
    let above = from_agent
        .as_ref()
        .filter(|_| escalating)
        .map(|a| a.spec.tier);
    let hold = task.planned(from.call_id).and_then(|c| c.hold);
    let budgeted = hold.is_some();
    for id in left.by_ref() {
        let Some(agent) = svc.agents.find(&task.tenant, &id).await? else {
            continue;
        };
        if !agent.spec.enabled || !agent.can_serve(&task.spec.task_type) {
            continue;
        }
        // An agent that states no window, or after one that stated none,
        // is given the chance.
        let roomier = match (agent.spec.constraints.context_window, failed_window) {
            (Some(window), Some(failed)) => window > failed,
            _ => true,
        };
        if class == Some(ErrorClass::ContextLengthExceeded) && !roomier {
            continue;
        }
        if above.is_some_and(|tier| agent.spec.tier <= tier) {
            continue;
        }
        // An escalation pays for a second answer: it must fit the hold.
        if let Some(hold) = hold.filter(|_| escalating) {
            let expected = agent.cost(&budget::expected_usage(&agent, &task.spec, hold.max_tokens));
            let fits = paid
                .zip(expected)
                .is_some_and(|(paid, expected)| paid + expected <= hold.amount);
            if !fits {
                continue;
            }
        }
        let probe = match health::admission(svc, &agent).await? {
            Admission::Call => None,
            Admission::Probe(seen) => Some(seen),
            Admission::Open(_) | Admission::Wait(_) => continue,
        };
        let tokens = routing::call_tokens(&agent, &task.spec, budgeted);
        if limits::admit_call(svc, &agent, tokens).await? != CallAdmission::Admitted {
            continue;
        }
        match probe {
            None => return Ok(Some((id, false))),
            Some(seen) => {
                let lease = health::probe_lease(&agent);
                if health::claim_probe(svc, &agent, &seen, lease).await? {
                    return Ok(Some((id, true)));
                }
                limits::give_back_call(svc, &agent, tokens).await;
            }
        }
    }
    Ok(None)
}

/// The last agent's result with the agents it fell back from: their
/// attempts' use and cost are the call's too (the cost unknown if any is).
fn after_hops(mut result: CallResult, hops: Vec<Hop>) -> CallResult {
    if hops.is_empty() {
        return result;
    }
    result.cost_usd = paid(&hops, &result);
    result.usage = hops.iter().map(|h| h.usage).sum::<Usage>() + result.usage;
    result.fell_back_from = hops;
    result
}

/// A fresh answer as the tenant's output filters leave it, before it is
/// stored: redacted, or the call failed `content_blocked` naming the rule
/// (what it used and cost stays: the provider was paid).
async fn filter_output(
    svc: &Services,
    task: &Task,
    mut result: CallResult,
) -> Result<CallResult, StageError> {
    let Some(output) = result.output.as_deref() else {
        return Ok(result);
    };
    let filters = svc.agents.filters(&task.tenant).await?;
    if !filters.applies_to(Direction::Output) {
        return Ok(result);
    }
    let filtered = match filters.apply(Direction::Output, output) {
        Verdict::Pass { text, findings } => {
            if !findings.is_empty() {
                // Kinds and counts only, never the text.
                tracing::info!(?findings, "answer filtered");
            }
            Ok(match text {
                Cow::Owned(redacted) => Some(redacted),
                Cow::Borrowed(_) => None,
            })
        }
        Verdict::Blocked(blocked) => Err(blocked),
    };
    match filtered {
        Ok(Some(redacted)) => result.output = Some(redacted),
        Ok(None) => {}
        Err(blocked) => {
            tracing::info!(rule = %blocked.rule, "answer blocked");
            // Its id is the call's: a redelivery records it once. The
            // provider was paid, so a store fault must not fail the call.
            let entry =
                AuditEntry::output_blocked(task, result.call_id, &blocked.rule, svc.clock.now());
            if let Err(e) = persist(|| svc.audit.record(&entry)).await {
                tracing::error!(error = %e, "the output block's audit entry was not recorded");
            }
            result.status = CallStatus::Failed;
            result.output = None;
            result.error = Some(CallError {
                class: ErrorClass::ContentBlocked,
                message: format!("the answer was {blocked}"),
            });
        }
    }
    Ok(result)
}

/// The call and agent an agent-call envelope names.
pub(crate) fn call_of(envelope: &Envelope) -> Result<(CallId, AgentId), StageError> {
    let (Some(call_id), Some(agent_id)) = (envelope.call_id, envelope.agent_id.clone()) else {
        return Err(StageError::Malformed(
            "agent-call message without call_id or agent_id".into(),
        ));
    };
    let span = tracing::Span::current();
    span.record("call_id", tracing::field::display(call_id));
    span.record("agent_id", tracing::field::display(&agent_id));
    Ok((call_id, agent_id))
}

fn timed_out() -> TaskError {
    TaskError::new("timeout", "the task timed out while calling agents")
}

/// Stores a call's result and moves the task on: finishes a single-call task
/// from the result as stored (the first written, whichever delivery wrote
/// it), or counts the call toward the fan-in.
///
/// `health` is what the call tells of its agents' health, written with the
/// result (and only by the delivery whose result is the first written).
pub(crate) async fn conclude(
    svc: &Services,
    envelope: &Envelope,
    task: &Task,
    mut result: CallResult,
    health: &[Observation],
) -> Result<(), StageError> {
    // Whichever result is written first settles the call's reservation.
    result.settles = task.settlement(result.call_id);
    // The answer as given, before the claim check may move it out.
    let answer = result.output.clone();
    let result = persist(|| claim_check::offload_call(svc, task, result.clone())).await?;
    let in_time = svc.clock.now() <= task.deadline();
    if task.expected_calls == Some(1)
        && in_time
        && !task.status.is_terminal()
        && finish_single(svc, task, &result, answer, health).await?
    {
        return Ok(());
    }
    if task.expected_calls == Some(1) || !in_time {
        // The only call, or one too late to count: finish the task here
        // (rather than pay for a fan-in count and another hop), from the
        // result as stored.
        let stored = persist(|| {
            svc.tasks
                .put_call(&task.tenant, task.task_id, &result, health)
        })
        .await?;
        let ended = if svc.clock.now() > task.deadline() {
            end_task(svc, task, timed_out(), None).await?
        } else {
            aggregate::finish(svc, task, std::slice::from_ref(&stored)).await?
        };
        if ended == Ended::Before {
            // It ended while this call ran (cancelled, or timed out by
            // another call): what this call cost is still owed.
            svc.tasks
                .add_late_calls(task, std::slice::from_ref(&stored))
                .await?;
        }
        return Ok(());
    }
    match persist(|| {
        svc.tasks
            .record_call(&task.tenant, task.task_id, &result, health)
    })
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

/// The short way for a task's only call: its result stored and the task
/// finished from it in one write (`TaskStore::finish_with_call`). Whether
/// it was taken; if not (the result was stored by another delivery, the
/// task moved on), nothing was written and the caller goes the long way.
async fn finish_single(
    svc: &Services,
    task: &Task,
    result: &CallResult,
    answer: Option<String>,
    health: &[Observation],
) -> Result<bool, StageError> {
    // Combined from the answer itself, which the claim check may have
    // moved out of the result (no read back from the blob store).
    let whole = CallResult {
        output: answer,
        ..result.clone()
    };
    let whole = std::slice::from_ref(&whole);
    let (status, mut patch) = combine(task, whole);
    if let Some(combined) = patch.result.as_mut() {
        claim_check::offload_result(svc, task, whole, combined).await?;
    }
    let finished = persist(|| {
        svc.tasks
            .finish_with_call(task, status, patch.clone(), result, health, svc.clock.now())
    })
    .await?;
    Ok(match finished {
        Some(finished) => {
            svc.finished(&finished);
            true
        }
        None => false,
    })
}

/// A write that may work when tried again.
trait Transient: std::fmt::Display {
    fn is_transient(&self) -> bool;
}

impl Transient for StoreError {
    fn is_transient(&self) -> bool {
        matches!(self, StoreError::Backend(_))
    }
}

impl Transient for BlobError {
    fn is_transient(&self) -> bool {
        matches!(self, BlobError::Backend(_))
    }
}

/// How long the dead-letter consumer holds a call's lease while it records
/// the call as failed.
const DEAD_LETTER_LEASE: Duration = Duration::from_secs(60);

/// Records a dead call as failed, unless a delivery is still calling it (its
/// lease is live): then the message comes back when the lease ends.
pub(crate) async fn dead_lettered(
    svc: &Services,
    envelope: &Envelope,
    task: &Task,
) -> Result<(), StageError> {
    let (call_id, agent_id) = call_of(envelope)?;
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
    let agent = svc
        .agents
        .find(&task.tenant, &agent_id)
        .await
        .ok()
        .flatten();
    let result = CallRecord::start(call_id, &agent_id).failed(
        agent.as_ref(),
        ErrorClass::DeadLetter,
        "the call's message kept failing; no answer was recorded",
        now,
    );
    match conclude(svc, envelope, task, result, &[]).await {
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

/// A result write, tried a few times before the delivery gives up: a paid
/// answer is worth a short wait for the store.
async fn persist<T, E, F, Fut>(op: F) -> Result<T, E>
where
    E: Transient,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match op().await {
            Err(e) if e.is_transient() && tries < WRITE_TRIES => {
                tracing::warn!(error = %e, tries, "storing the call's result failed; trying again");
                tokio::time::sleep(Duration::from_millis(50 << (2 * (tries - 1)))).await;
            }
            outcome => return outcome,
        }
    }
}

/// Everything an attempt needs, or the result of a call that cannot be made.
enum Prepared {
    Ready(Box<Call>),
    Failed(Box<CallResult>),
}

struct Call {
    agent: Agent,
    client: Arc<dyn ProviderClient>,
    key: Option<SecretString>,
    request: ChatRequest,
    record: CallRecord,
}

async fn prepare(
    svc: &Services,
    task: &Task,
    call_id: CallId,
    agent_id: &AgentId,
) -> Result<Prepared, StageError> {
    let record = CallRecord::start(call_id, agent_id);
    let now = svc.clock.now();
    let Some(agent) = svc.agents.find(&task.tenant, agent_id).await? else {
        return Ok(Prepared::Failed(Box::new(record.failed(
            None,
            ErrorClass::Unavailable,
            "the agent no longer exists, or this tenant may no longer use it",
            now,
        ))));
    };
    let Some(client) = svc.providers.client(agent.spec.provider) else {
        let message = format!(
            "provider {:?} is not available in this deployment",
            agent.spec.provider
        );
        return Ok(Prepared::Failed(Box::new(record.failed(
            Some(&agent),
            ErrorClass::Unavailable,
            &message,
            now,
        ))));
    };
    let key = match key_for(svc, &agent).await {
        Ok(key) => key,
        Err(KeyFailure::Secret(SecretError::NotFound(_))) => {
            return Ok(Prepared::Failed(Box::new(record.failed(
                Some(&agent),
                ErrorClass::Auth,
                "no API key is configured for this agent",
                now,
            ))));
        }
        Err(KeyFailure::Refused(why)) => {
            tracing::warn!(reason = %why, "the agent's key may not be used for this call");
            return Ok(Prepared::Failed(Box::new(record.failed(
                Some(&agent),
                ErrorClass::Auth,
                &format!("the agent's key may not be used: {why}"),
                now,
            ))));
        }
        Err(KeyFailure::Secret(e)) => {
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
        // Under a budget, what was reserved caps the answer.
        max_tokens: task
            .planned(call_id)
            .and_then(|c| c.hold)
            .map(|hold| hold.max_tokens)
            .or(agent.spec.constraints.max_tokens),
        temperature: None,
        stop: Vec::new(),
    };
    Ok(Prepared::Ready(Box::new(Call {
        agent,
        client,
        key,
        request,
        record,
    })))
}

impl Call {
    /// Attempts the call until it succeeds, fails for good, or must wait in
    /// the queue: each attempt is cleared by the deadline and the lease
    /// ([`Call::clearance`]), made ([`Call::attempt`]), and its failure
    /// judged by the retry policy ([`next_step`]).
    async fn run(
        mut self,
        svc: &Services,
        deadline: Deadline,
        lease: &Lease<'_>,
    ) -> Result<CallResult, StageError> {
        let mut key_refreshed = false;
        loop {
            let budget = match self.clearance(svc, deadline, lease).await? {
                Clearance::Attempt(budget) => budget,
                Clearance::TaskOver(error) => {
                    return Ok(self.record.failed_with(&self.agent, error, svc.clock.now()));
                }
            };
            self.record.requests += 1;
            let error = match self.attempt(budget).await {
                Ok(response) => {
                    return Ok(self
                        .record
                        .succeeded(&self.agent, response, svc.clock.now()));
                }
                Err(error) => error,
            };
            let attempts = self.record.attempts();
            tracing::warn!(attempt = attempts, class = ?error.class, status = error.status, "provider call failed");
            if let (ErrorClass::RateLimited, Some(wait)) = (error.class, error.retry_after) {
                // Every instance holds the agent back as long as asked.
                health::cool_down(svc, &self.agent, wait).await;
            }
            let tries = Tries {
                attempts,
                max_attempts: self.agent.spec.constraints.max_attempts(),
                key_refreshed,
                has_key: self.key.is_some(),
            };
            match next_step(
                &error,
                tries,
                backoff(attempts),
                svc.settings.max_inline_wait,
            ) {
                Next::RefreshKey => {
                    key_refreshed = true;
                    if !self.rotate_key(svc).await {
                        return Ok(self.record.failed_with(&self.agent, error, svc.clock.now()));
                    }
                }
                Next::Sleep(wait) => {
                    self.record.retry(&error);
                    tokio::time::sleep(wait).await;
                }
                Next::Requeue(wait) => {
                    // Too long to sleep in a Lambda: the queue brings the
                    // message back, and the lease keeps every delivery
                    // waiting as long as the provider asked.
                    self.record.retry(&error);
                    let now = svc.clock.now();
                    let wait = deadline.cap(wait, now);
                    lease.end_at(now + wait).await;
                    return Err(StageError::RetryLater {
                        after: wait,
                        reason: error.message,
                    });
                }
                Next::GiveUp => {
                    return Ok(self.record.failed_with(&self.agent, error, svc.clock.now()));
                }
            }
        }
    }

    /// Whether the next attempt may start, and how long it may take: as long
    /// as the deadline leaves, and only holding the call's lease, so that no
    /// other delivery calls (and pays) at the same time. A delivery that may
    /// not go on returns the error that puts the message back in the queue.
    async fn clearance(
        &self,
        svc: &Services,
        deadline: Deadline,
        lease: &Lease<'_>,
    ) -> Result<Clearance, StageError> {
        let now = svc.clock.now();
        let agent_timeout = Duration::from_millis(self.agent.spec.constraints.timeout_ms());
        let budget = match deadline.attempt_budget(now, agent_timeout, self.record.attempts()) {
            Budget::Attempt(budget) => budget,
            Budget::TaskOver => {
                lease.end_at(now).await;
                return Ok(Clearance::TaskOver(ProviderError::new(
                    ErrorClass::Timeout,
                    "the task's deadline passed before the call could be made",
                )));
            }
            Budget::InvocationOver => {
                // Another invocation has the time this one lacks.
                lease.end_at(now).await;
                return Err(StageError::RetryLater {
                    after: Duration::ZERO,
                    reason: "the invocation's deadline is too near for another attempt".into(),
                });
            }
        };
        match lease.hold_until(now + budget + LEASE_MARGIN).await? {
            LeaseOutcome::Held { until } => Err(StageError::RetryLater {
                after: deadline.cap(LeaseOutcome::remaining(until, now), now),
                reason: "another delivery is calling the agent".into(),
            }),
            LeaseOutcome::Acquired => Ok(Clearance::Attempt(budget)),
        }
    }

    /// Key rotation: the provider refused the key, which may have been
    /// rotated since it was cached. Fetches it again; whether there is one.
    /// The request the stale key made is then not counted as an attempt.
    async fn rotate_key(&mut self, svc: &Services) -> bool {
        if let Some(name) = self.agent.spec.secret.as_deref() {
            svc.secrets.invalidate(name);
        }
        self.key = key_for(svc, &self.agent).await.ok().flatten();
        if self.key.is_some() {
            self.record.stale_key_requests += 1;
        }
        self.key.is_some()
    }

    /// One provider request, cut off at `budget`.
    async fn attempt(&self, budget: Duration) -> Result<ChatResponse, ProviderError> {
        let call = self
            .client
            .complete(&self.agent, self.key.as_ref(), &self.request);
        tokio::time::timeout(budget, call)
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::new(
                    ErrorClass::Timeout,
                    "the task's deadline passed during the call",
                ))
            })
    }
}

/// What the deadline and the lease allow the next attempt.
enum Clearance {
    /// Attempt, cut off after this long.
    Attempt(Duration),
    /// The task's deadline passed: the call fails with this error.
    TaskOver(ProviderError),
}

/// The lease one delivery holds on its call.
struct Lease<'a> {
    svc: &'a Services,
    task: &'a Task,
    call_id: CallId,
    holder: LeaseHolder,
}

impl Lease<'_> {
    async fn hold_until(&self, until: DateTime<Utc>) -> Result<LeaseOutcome, StoreError> {
        let lease = CallLease {
            holder: self.holder.clone(),
            until,
        };
        self.svc
            .tasks
            .lease_call(
                &self.task.tenant,
                self.task.task_id,
                self.call_id,
                &lease,
                self.svc.clock.now(),
            )
            .await
    }

    /// Shortens the lease to `until` (now, to let another delivery call at
    /// once). Best effort: a lease left longer only delays a redelivery.
    async fn end_at(&self, until: DateTime<Utc>) {
        if let Err(e) = self.hold_until(until).await {
            tracing::warn!(error = %e, "could not shorten the call's lease");
        }
    }
}

/// The moments a call must respect: the task's deadline, and the deadline of
/// the Lambda invocation running it (none in the local runner, whose
/// heartbeat keeps the message hidden however long the call takes).
#[derive(Debug, Clone, Copy)]
struct Deadline {
    task: DateTime<Utc>,
    invocation: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    /// Start an attempt, cut off after this long.
    Attempt(Duration),
    /// The task's deadline has passed.
    TaskOver,
    /// Too little of the invocation is left: requeue rather than start.
    InvocationOver,
}

impl Deadline {
    /// How long the next attempt may take. An attempt the invocation cannot
    /// see through is not started once this delivery has made one: the
    /// message goes back to the queue for a fresh invocation. The first
    /// attempt is cut to fit, since requeueing would not give it more time.
    fn attempt_budget(&self, now: DateTime<Utc>, agent_timeout: Duration, made: u32) -> Budget {
        let task_left = LeaseOutcome::remaining(self.task, now);
        if task_left.is_zero() {
            return Budget::TaskOver;
        }
        let budget = agent_timeout.min(task_left);
        let Some(invocation) = self.invocation else {
            return Budget::Attempt(budget);
        };
        let invocation_left = LeaseOutcome::remaining(invocation, now).saturating_sub(WRITE_MARGIN);
        if invocation_left >= budget {
            Budget::Attempt(budget)
        } else if made == 0 && invocation_left >= MIN_ATTEMPT {
            Budget::Attempt(invocation_left)
        } else {
            Budget::InvocationOver
        }
    }

    /// A requeue delay no longer than the task has left (plus a moment, so
    /// that the redelivery finds it past its deadline and ends it).
    fn cap(&self, wait: Duration, now: DateTime<Utc>) -> Duration {
        wait.min(LeaseOutcome::remaining(self.task, now) + Duration::from_secs(1))
    }
}

/// What the delivery has done so far, as the retry policy needs it.
#[derive(Debug, Clone, Copy)]
struct Tries {
    attempts: u32,
    max_attempts: u32,
    key_refreshed: bool,
    has_key: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// The key may have been rotated: fetch it again (once) and retry.
    RefreshKey,
    /// Retry after this wait, in process.
    Sleep(Duration),
    /// Retry after this wait, by the queue's visibility.
    Requeue(Duration),
    /// The error is final.
    GiveUp,
}

/// The retry policy: after `error`, what next. `backoff` is this attempt's
/// jittered backoff, used when the provider asked for no particular wait.
fn next_step(
    error: &ProviderError,
    tries: Tries,
    backoff: Duration,
    max_inline_wait: Duration,
) -> Next {
    if error.class == ErrorClass::Auth && !tries.key_refreshed && tries.has_key {
        return Next::RefreshKey;
    }
    if !error.class.is_retryable() || tries.attempts >= tries.max_attempts {
        return Next::GiveUp;
    }
    let wait = error.retry_after.unwrap_or(backoff);
    if wait > max_inline_wait {
        Next::Requeue(wait)
    } else {
        Next::Sleep(wait)
    }
}

/// Exponential backoff with full jitter: uniform in [0, 100 ms × 2^attempt], capped at 2 s.
fn backoff(attempt: u32) -> Duration {
    let cap = (100u64 << attempt.min(5)).min(2_000);
    Duration::from_millis(rand::rng().random_range(0..=cap))
}

/// Why an agent's key cannot be had.
enum KeyFailure {
    Secret(SecretError),
    /// The key exists but may not go where this agent sends it (or the
    /// agent names a secret outside its owner's keys).
    Refused(String),
}

/// The agent's key, if the agent's provider takes one and the key's binding
/// lets it go to the agent's host. Only this function hands a key to a call.
async fn key_for(svc: &Services, agent: &Agent) -> Result<Option<SecretString>, KeyFailure> {
    let Some(name) = agent.spec.secret.as_ref() else {
        return Ok(None);
    };
    if !agent.spec.provider.needs_secret() {
        return Ok(None);
    }
    // Checked when the agent was written; again here, for agents written
    // before the rule or by other means.
    name.usable_by(&agent.owner, &svc.settings.secret_prefix)
        .map_err(|e| KeyFailure::Refused(format!("secret {e}")))?;
    let value = svc.secrets.get(name).await.map_err(KeyFailure::Secret)?;
    let key = ProviderKey::bind(
        &value,
        agent.spec.provider,
        &svc.secrets.implied_hosts(name),
    )
    .map_err(|e| KeyFailure::Refused(e.to_string()))?;
    let host = agent
        .host()
        .ok_or_else(|| KeyFailure::Refused("the agent has no host to send a key to".into()))?;
    key.for_host(host)
        .cloned()
        .map(Some)
        .map_err(|e| KeyFailure::Refused(e.to_string()))
}

/// Builds a call's result as the delivery goes: attempts made, the errors
/// retried, the time taken.
pub(crate) struct CallRecord {
    call_id: CallId,
    agent_id: AgentId,
    started: Instant,
    /// Provider requests made.
    requests: u32,
    /// Requests refused for a key that was then rotated: not attempts.
    stale_key_requests: u32,
    retried_errors: Vec<CallError>,
}

impl CallRecord {
    pub(crate) fn start(call_id: CallId, agent_id: &AgentId) -> Self {
        CallRecord {
            call_id,
            agent_id: agent_id.clone(),
            started: Instant::now(),
            requests: 0,
            stale_key_requests: 0,
            retried_errors: Vec::new(),
        }
    }

    /// The attempts made: every request but those a rotated key retried.
    fn attempts(&self) -> u32 {
        self.requests - self.stale_key_requests
    }

    fn retry(&mut self, error: &ProviderError) {
        self.retried_errors.push(CallError {
            class: error.class,
            message: error.message.clone(),
        });
    }

    fn succeeded(self, agent: &Agent, response: ChatResponse, now: DateTime<Utc>) -> CallResult {
        if agent.spec.pricing.is_none() {
            tracing::warn!("the agent has no prices: this call's cost is unknown (null), not zero");
        }
        let attempts = self.attempts();
        CallResult {
            call_id: self.call_id,
            agent_id: self.agent_id,
            provider: Some(agent.spec.provider),
            status: CallStatus::Succeeded,
            output: Some(response.output),
            output_ref: None,
            cost_usd: agent.cost(&response.usage),
            usage: response.usage,
            latency_ms: self.started.elapsed().as_millis() as u64,
            attempts,
            error: None,
            retried_errors: self.retried_errors,
            finished_at: now,
            truncated: response
                .finish_reason
                .as_deref()
                .is_some_and(crate::domain::call::is_cut_off),
            quality: Some(agent.spec.quality),
            fell_back_from: Vec::new(),
            settles: None,
        }
    }

    fn failed_with(self, agent: &Agent, error: ProviderError, now: DateTime<Utc>) -> CallResult {
        self.failed(Some(agent), error.class, &error.message, now)
    }

    /// A failed call: nothing answered, so nothing used; the cost is zero at
    /// the agent's prices (unknown without them).
    pub(crate) fn failed(
        self,
        agent: Option<&Agent>,
        class: ErrorClass,
        message: &str,
        now: DateTime<Utc>,
    ) -> CallResult {
        let attempts = self.attempts();
        // A call that sent nothing cost nothing, whoever its agent; one that
        // did and failed is priced at no usage (unknown without prices).
        let cost_usd = match self.requests {
            0 => Some(Usd::ZERO),
            _ => agent.and_then(|a| a.cost(&Usage::default())),
        };
        CallResult {
            call_id: self.call_id,
            agent_id: self.agent_id,
            provider: agent.map(|a| a.spec.provider),
            status: CallStatus::Failed,
            output: None,
            output_ref: None,
            usage: Usage::default(),
            cost_usd,
            latency_ms: self.started.elapsed().as_millis() as u64,
            attempts,
            error: Some(CallError {
                class,
                message: message.to_owned(),
            }),
            retried_errors: self.retried_errors,
            finished_at: now,
            truncated: false,
            quality: None,
            fell_back_from: Vec::new(),
            settles: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(class: ErrorClass, retry_after: Option<u64>) -> ProviderError {
        ProviderError {
            retry_after: retry_after.map(Duration::from_secs),
            ..ProviderError::new(class, "x")
        }
    }

    const TRIES: Tries = Tries {
        attempts: 1,
        max_attempts: 3,
        key_refreshed: false,
        has_key: true,
    };
    const BACKOFF: Duration = Duration::from_millis(150);
    const INLINE: Duration = Duration::from_secs(2);

    #[test]
    fn the_retry_policy() {
        let step = |e: &ProviderError, tries: Tries| next_step(e, tries, BACKOFF, INLINE);
        assert_eq!(
            step(&error(ErrorClass::Auth, None), TRIES),
            Next::RefreshKey
        );
        let refreshed = Tries {
            key_refreshed: true,
            ..TRIES
        };
        assert_eq!(
            step(&error(ErrorClass::Auth, None), refreshed),
            Next::GiveUp
        );
        let keyless = Tries {
            has_key: false,
            ..TRIES
        };
        assert_eq!(step(&error(ErrorClass::Auth, None), keyless), Next::GiveUp);
        assert_eq!(
            step(&error(ErrorClass::Server, None), TRIES),
            Next::Sleep(BACKOFF)
        );
        assert_eq!(
            step(&error(ErrorClass::RateLimited, Some(1)), TRIES),
            Next::Sleep(Duration::from_secs(1))
        );
        assert_eq!(
            step(&error(ErrorClass::RateLimited, Some(30)), TRIES),
            Next::Requeue(Duration::from_secs(30))
        );
        let last = Tries {
            attempts: 3,
            ..TRIES
        };
        assert_eq!(step(&error(ErrorClass::Server, None), last), Next::GiveUp);
        for final_class in [
            ErrorClass::BadRequest,
            ErrorClass::ContextLengthExceeded,
            ErrorClass::ResponseTooLarge,
        ] {
            assert_eq!(step(&error(final_class, None), TRIES), Next::GiveUp);
        }
    }

    #[test]
    fn attempts_fit_the_task_and_the_invocation() {
        let now = Utc::now();
        let secs = |s: i64| now + chrono::Duration::seconds(s);
        let agent = Duration::from_secs(30);
        let local = Deadline {
            task: secs(60),
            invocation: None,
        };
        assert_eq!(local.attempt_budget(now, agent, 3), Budget::Attempt(agent));
        let short_task = Deadline {
            task: secs(10),
            invocation: None,
        };
        assert_eq!(
            short_task.attempt_budget(now, agent, 0),
            Budget::Attempt(Duration::from_secs(10))
        );
        assert_eq!(
            short_task.attempt_budget(secs(11), agent, 0),
            Budget::TaskOver
        );
        let lambda = Deadline {
            task: secs(600),
            invocation: Some(secs(20)),
        };
        // The first attempt is cut to what the invocation has (less the write margin)...
        assert_eq!(
            lambda.attempt_budget(now, agent, 0),
            Budget::Attempt(Duration::from_secs(18))
        );
        // ...a later one goes back to the queue.
        assert_eq!(lambda.attempt_budget(now, agent, 1), Budget::InvocationOver);
        assert_eq!(
            lambda.attempt_budget(secs(19), agent, 0),
            Budget::InvocationOver
        );
        let roomy = Deadline {
            task: secs(600),
            invocation: Some(secs(300)),
        };
        assert_eq!(roomy.attempt_budget(now, agent, 2), Budget::Attempt(agent));
        assert_eq!(
            roomy.cap(Duration::from_secs(3600), now),
            Duration::from_secs(601),
            "a requeue never outlasts the task"
        );
    }
}
