//! Route: picks agents for a task and sends one agent-call message per call.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::try_join_all;

use crate::domain::routing::{self, RoutingError, Selection, Signals};
use crate::domain::{
    Agent, AgentId, AuditEntry, BudgetExceeded, CallHold, CallId, Envelope, MessageKind,
    PlannedCall, Task, TaskError, TaskPatch, TaskSpec, TaskStatus, budget,
};
use crate::ports::{OutgoingMessage, QueueName, RotationKey, StoreError};

use super::health::{self, Admission};
use super::limits::{self, CallAdmission};
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
    let signals = Signals {
        turn: take_turn(svc, &task, now).await?,
        latency_ms: latencies(svc, &task, &agents).await?,
    };
    let selection = match routing::select_with(&task.spec, &agents, budgeted, &signals) {
        Ok(selection) => selection,
        Err(e) => return fail_task(svc, &task, routing_error(&e)).await,
    };
    // The candidates after the chosen, in order, for the fallback chain.
    tracing::debug!(
        strategy = task.spec.routing_strategy.as_str(),
        fallbacks = ?selection.fallbacks,
        "agents chosen"
    );
    let candidates = selection.fallbacks.clone();
    // Agents whose circuits are open are skipped, and agents at their own
    // rate limits passed over, for the next candidates; with none left,
    // the task waits in the queue for room, or fails naming the open ones.
    let panel = match admit_panel(svc, &task, &agents, selection, budgeted).await? {
        Panel::Ready(panel) => panel,
        Panel::Wait(after) if now + after < task.deadline() => {
            return Err(StageError::RetryLater {
                after,
                reason: "the task's agents are at their rate limits".into(),
            });
        }
        Panel::Open(open) => {
            let names: Vec<String> = open
                .iter()
                .map(|(id, until)| format!("{id} (until {})", until.format("%H:%M:%S UTC")))
                .collect();
            return fail_task(
                svc,
                &task,
                TaskError::new(
                    "circuit_open",
                    format!(
                        "not enough agents to serve the task: the circuits of {} are open after failures on the provider's side",
                        names.join(", ")
                    ),
                ),
            )
            .await;
        }
        Panel::Wait(_) | Panel::None => {
            return fail_task(
                svc,
                &task,
                TaskError::new(
                    "agents_rate_limited",
                    "every agent that could serve the task is at its rate limit until after its deadline, or the task alone is more tokens than an agent's minute allows",
                ),
            )
            .await;
        }
    };
    let chosen: Vec<Agent> = panel.iter().map(|m| m.agent.clone()).collect();
    // The whole panel is held against the budgets, and on the tenant's
    // counters in the same write as the plan: no panel is half paid and
    // then refused.
    let holds = match budget::hold_panel(&task.spec, &chosen, settings.budgets, now.date_naive()) {
        Ok(holds) => holds,
        Err(e) => {
            give_back(svc, &panel).await;
            return fail_over_budget(svc, &task, &e).await;
        }
    };
    let hold = holds.tenant;
    let fallbacks = deal_fallbacks(&task.spec, &agents, &candidates, &chosen, &holds.calls);
    let plan: Vec<PlannedCall> = chosen
        .iter()
        .zip(holds.calls)
        .zip(fallbacks)
        .zip(&panel)
        .map(|(((agent, hold), fallbacks), member)| PlannedCall {
            call_id: CallId::new(),
            agent_id: agent.id.clone(),
            hold,
            fallbacks,
            probe: member.probe,
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
        Err(StoreError::Transition(_)) => {
            give_back(svc, &panel).await;
            return Ok(());
        }
        // Only a hold is refused for a budget.
        Err(StoreError::OverBudget(period)) if let Some(hold) = hold => {
            give_back(svc, &panel).await;
            return fail_over_budget(svc, &task, &hold.exceeded(period)).await;
        }
        Err(e) => return Err(e.into()),
    };
    tracing::debug!(calls = task.plan.len(), "routed");
    send_calls(svc, envelope, &task).await
}

/// The task's turn on its tenant's shared counter, for `round_robin` and
/// `weighted` (one write, advancing it by the task's fanout); 0, with no
/// write, for the other strategies.
async fn take_turn(svc: &Services, task: &Task, now: DateTime<Utc>) -> Result<u64, StoreError> {
    if !routing::takes_turns(task.spec.routing_strategy) {
        return Ok(0);
    }
    let key = RotationKey {
        tenant: task.tenant.clone(),
        strategy: task.spec.routing_strategy,
        task_type: task.spec.task_type.clone(),
    };
    svc.rotation
        .next(&key, u64::from(task.spec.fanout), now)
        .await
}

/// Agents' health reads in flight at once on a cache miss.
const HEALTH_READS_AT_ONCE: usize = 16;

/// The recent mean latency of each agent that may serve the task, for
/// the strategies that order by it (one cached read of each agent's
/// health); none for the others.
async fn latencies(
    svc: &Services,
    task: &Task,
    agents: &[Agent],
) -> Result<HashMap<AgentId, f64>, StoreError> {
    if !routing::reads_latency(task.spec.routing_strategy) {
        return Ok(HashMap::new());
    }
    let capable: Vec<&Agent> = agents
        .iter()
        .filter(|a| a.can_serve(&task.spec.task_type))
        .collect();
    // Cached; on a miss, a few reads at a time.
    let mut read = Vec::with_capacity(capable.len());
    for chunk in capable.chunks(HEALTH_READS_AT_ONCE) {
        read.extend(try_join_all(chunk.iter().map(|a| health::latency(svc, a))).await?);
    }
    Ok(capable
        .into_iter()
        .zip(read)
        .filter_map(|(agent, ms)| Some((agent.id.clone(), ms?)))
        .collect())
}

/// The panel, every member admitted by its health and its own rate limits;
/// or how long until one would be; or the agents whose open circuits left
/// it short; or none ever.
enum Panel {
    Ready(Vec<Member>),
    Wait(Duration),
    Open(Vec<(AgentId, DateTime<Utc>)>),
    None,
}

/// An agent admitted to the panel; `probe` when its call is the probe of
/// its half-open circuit; `tokens` what its limits were charged.
struct Member {
    agent: Agent,
    probe: bool,
    tokens: u64,
}

/// Gives back the rate-limit takes of a panel whose calls will not be
/// made (it waits, or another delivery planned the task, or a budget
/// refused it), so that a lost race costs the agent's limit nothing.
async fn give_back(svc: &Services, panel: &[Member]) {
    for member in panel {
        limits::give_back_call(svc, &member.agent, member.tokens).await;
    }
}

/// Admits the chosen agents, passing over one whose circuit is open (or
/// whose provider asked for a wait) or that is at its rate limit for the
/// next alternate, until `fanout` are admitted. An agent whose circuit is
/// half-open is admitted only with its probe's claim. Takes made for a
/// panel that then waits, or for a probe whose claim is lost, are given
/// back.
async fn admit_panel(
    svc: &Services,
    task: &Task,
    agents: &[Agent],
    selection: Selection,
    budgeted: bool,
) -> Result<Panel, StageError> {
    let wanted = selection.calls.len();
    let candidates = selection.calls.into_iter().chain(
        selection
            .alternates
            .iter()
            .filter_map(|id| agents.iter().find(|a| &a.id == id).cloned()),
    );
    let now = svc.clock.now();
    let (mut admitted, mut soonest, mut open) = (Vec::with_capacity(wanted), None, Vec::new());
    let mut wait_until = |after: Duration| {
        soonest = Some(soonest.map_or(after, |s: Duration| s.min(after)));
    };
    for agent in candidates {
        if admitted.len() == wanted {
            break;
        }
        let probe = match health::admission(svc, &agent).await? {
            Admission::Call => None,
            Admission::Probe(seen) => Some(seen),
            Admission::Open(until) => {
                open.push((agent.id.clone(), until));
                continue;
            }
            Admission::Wait(until) => {
                wait_until((until - now).to_std().unwrap_or_default());
                continue;
            }
        };
        let tokens = routing::call_tokens(&agent, &task.spec, budgeted);
        match (limits::admit_call(svc, &agent, tokens).await?, probe) {
            (CallAdmission::Admitted, None) => admitted.push(Member {
                agent,
                probe: false,
                tokens,
            }),
            (CallAdmission::Admitted, Some(seen)) => {
                let lease = health::probe_lease(&agent);
                if health::claim_probe(svc, &agent, &seen, lease).await? {
                    admitted.push(Member {
                        agent,
                        probe: true,
                        tokens,
                    });
                } else {
                    limits::give_back_call(svc, &agent, tokens).await;
                    // Another delivery's probe is in flight.
                    open.push((agent.id.clone(), now));
                }
            }
            (CallAdmission::Wait(after), _) => wait_until(after),
            (CallAdmission::Never, _) => {}
        }
    }
    if admitted.len() < wanted {
        give_back(svc, &admitted).await;
    }
    Ok(match (admitted.len() == wanted, soonest, open.is_empty()) {
        (true, _, _) => Panel::Ready(admitted),
        (false, Some(after), _) => Panel::Wait(after),
        (false, None, false) => Panel::Open(open),
        (false, None, true) => Panel::None,
    })
}

/// Each call's own fallbacks: the candidates not called that can serve the
/// task, dealt to the calls in turn (so no two calls of a fan-out fall back
/// to one agent), at most `fallback_depth` each. Under a budget, only an
/// agent whose expected cost fits what the call reserved, asking for the
/// output reserved (a fallback adds nothing to the hold).
fn deal_fallbacks(
    spec: &TaskSpec,
    agents: &[Agent],
    candidates: &[AgentId],
    chosen: &[Agent],
    holds: &[Option<CallHold>],
) -> Vec<Vec<AgentId>> {
    let mut dealt = vec![Vec::new(); chosen.len()];
    if chosen.is_empty() || spec.fallback_depth == 0 {
        return dealt;
    }
    let spare = candidates
        .iter()
        .filter(|id| !chosen.iter().any(|a| &a.id == *id))
        .filter_map(|id| agents.iter().find(|a| &a.id == id))
        .filter(|a| a.can_serve(&spec.task_type));
    let mut next = 0;
    for agent in spare {
        // The next call, in turn, with room and a hold the agent fits.
        let taker = (0..chosen.len())
            .map(|i| (next + i) % chosen.len())
            .find(|&i| {
                dealt[i].len() < spec.fallback_depth as usize
                    && holds[i].is_none_or(|hold| {
                        agent
                            .cost(&budget::expected_usage(agent, spec, hold.max_tokens))
                            .is_some_and(|cost| cost <= hold.amount)
                    })
            });
        if let Some(i) = taker {
            dealt[i].push(agent.id.clone());
            next = (i + 1) % chosen.len();
        }
    }
    dealt
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::{AgentSpec, TaskRequest, Usd};

    fn agent(id: &str, price: f64, caps: &[&str]) -> Agent {
        let spec = json!({"name": id, "provider": "mock", "model": "m", "capabilities": caps,
            "pricing": {"input_per_mtok": price, "output_per_mtok": price}});
        Agent {
            id: AgentId::parse(id).unwrap(),
            owner: crate::domain::Owner::Platform,
            spec: serde_json::from_value::<AgentSpec>(spec).unwrap(),
            version: 1,
        }
    }

    fn spec(routing: serde_json::Value) -> TaskSpec {
        let request: TaskRequest = serde_json::from_value(
            json!({"task_type": "text", "content": "hello", "routing": routing}),
        )
        .unwrap();
        request.parse().unwrap().0
    }

    fn ids(dealt: &[Vec<AgentId>]) -> Vec<Vec<&str>> {
        dealt
            .iter()
            .map(|d| d.iter().map(AgentId::as_str).collect())
            .collect()
    }

    #[test]
    fn fallbacks_are_dealt_in_turn_capable_within_depth_and_the_hold() {
        let agents: Vec<Agent> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|id| agent(id, 1.0, &["text"]))
            .chain([
                agent("img", 1.0, &["image"]),
                agent("dear", 1000.0, &["text"]),
            ])
            .collect();
        let candidates: Vec<AgentId> = ["c", "img", "dear", "d", "e", "f"]
            .into_iter()
            .map(|id| AgentId::parse(id).unwrap())
            .collect();
        let chosen = vec![agents[0].clone(), agents[1].clone()];
        // Two calls, depth 2: each its own, never one that cannot serve.
        let two = spec(json!({"fanout": 2}));
        let dealt = deal_fallbacks(&two, &agents, &candidates, &chosen, &[None, None]);
        assert_eq!(ids(&dealt), [vec!["c", "d"], vec!["dear", "e"]]);
        // Under a budget, only those whose expected cost fits the call's hold.
        let hold = CallHold {
            amount: Usd::parse("0.01").unwrap(),
            max_tokens: 100,
            day: None,
        };
        let dealt = deal_fallbacks(&two, &agents, &candidates, &chosen, &[Some(hold); 2]);
        assert_eq!(ids(&dealt), [vec!["c", "e"], vec!["d", "f"]]);
        // Depth 0, or no fallback: none.
        let none = spec(json!({"fallback": false}));
        let dealt = deal_fallbacks(&none, &agents, &candidates, &chosen[..1], &[None]);
        assert_eq!(ids(&dealt), [Vec::<&str>::new()]);
    }
}
