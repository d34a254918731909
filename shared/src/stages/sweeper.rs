//! The sweeper: run every minute (a scheduled Lambda; every few seconds in
//! the local runner), it looks at the unfinished tasks whose time has come
//! in the sparse, sharded sweep index, never by a scan. A task past its
//! deadline fails (`timeout`, with what its calls cost); one that sat in a
//! stage past that stage's grace has the stage's message sent again (every
//! stage takes a duplicate in its stride, and agent-call's lease keeps a
//! provider from being called twice). Then it is looked at again later.

use crate::domain::sweep::{SWEEP_SHARDS, Sweep};
use crate::domain::{Envelope, MessageKind, PlannedCall, TaskError, TaskStatus};
use crate::ports::{OutgoingMessage, QueueName};

use super::{Services, StageError, fail_task};

/// Tasks read per shard per pass; the rest wait for the next pass.
const PER_SHARD: u32 = 100;

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: u32,
    pub redriven: u32,
}

#[tracing::instrument(skip_all, fields(stage = "sweeper"))]
pub async fn sweep(svc: &Services) -> Result<SweepReport, StageError> {
    let mut report = SweepReport::default();
    let now = svc.clock.now();
    for shard in 0..SWEEP_SHARDS {
        for (tenant, task_id) in svc.tasks.due(shard, now, PER_SHARD).await? {
            let Some(record) = svc.tasks.get_with_calls(&tenant, task_id).await? else {
                continue;
            };
            let task = record.task;
            match task.sweep(now) {
                Sweep::Nothing => continue,
                Sweep::Expire => {
                    tracing::info!(%tenant, %task_id, status = %task.status, "sweeper: past its deadline");
                    fail_task(
                        svc,
                        &task,
                        TaskError::new(
                            "timeout",
                            format!("the task passed its deadline while {}", task.status),
                        ),
                    )
                    .await?;
                    report.expired += 1;
                }
                Sweep::Redrive(status) => {
                    tracing::warn!(%tenant, %task_id, %status, "sweeper: re-driving a task stuck in its stage");
                    let messages: Vec<(QueueName, Envelope)> = match status {
                        TaskStatus::Queued | TaskStatus::Routing => vec![(
                            QueueName::Route,
                            Envelope::new(MessageKind::Route, tenant.clone(), task_id),
                        )],
                        TaskStatus::Running => {
                            let stored = |p: &&PlannedCall| {
                                record.calls.iter().any(|c| c.call_id == p.call_id)
                            };
                            let missing = task.plan.iter().filter(|p| !stored(p)).count();
                            // Calls without a result are made (a delivery that
                            // finds a live lease waits it out). When every call
                            // has its result, the hand-on after them was lost:
                            // each call's delivery then finds its result, counts
                            // it (idempotently) and the fan-in's winner, or the
                            // single call, finishes the task. No provider is
                            // called again.
                            task.plan
                                .iter()
                                .filter(|p| missing == 0 || !stored(p))
                                .map(|p| {
                                    let mut e = Envelope::new(
                                        MessageKind::AgentCall,
                                        tenant.clone(),
                                        task_id,
                                    );
                                    e.call_id = Some(p.call_id);
                                    e.agent_id = Some(p.agent_id.clone());
                                    (QueueName::AgentCall, e)
                                })
                                .collect()
                        }
                        TaskStatus::Aggregating => vec![(
                            QueueName::Aggregate,
                            Envelope::new(MessageKind::Aggregate, tenant.clone(), task_id),
                        )],
                        TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled => {
                            Vec::new()
                        }
                    };
                    for (queue, envelope) in messages {
                        svc.queue
                            .send(queue, OutgoingMessage::now(envelope.to_body()))
                            .await?;
                    }
                    report.redriven += 1;
                }
            }
            svc.tasks
                .postpone(&tenant, task_id, task.next_sweep(now))
                .await?;
        }
    }
    Ok(report)
}
