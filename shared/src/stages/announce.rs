//! Announces finished tasks to other pipelines. The announcements are read
//! from the task store's change stream, not made by the stage that finished
//! the task: a crash between the final write and the publish then loses
//! nothing, since the stream keeps the change until it is announced. On AWS
//! the announcer Lambda's trigger reads the stream and keeps its checkpoint;
//! locally the runner's relay reads the store's `FinishedFeed`.

use std::time::Duration;

use futures::future::join_all;

use super::Services;
use crate::domain::{TaskId, TenantId};
use crate::ports::{FinishedFeed, StoreError, TaskFinished};

/// Publishes the events of the tasks `finished` names (in stream order),
/// reading each task for its request's fields, concurrently; returns how many
/// of them, from the front, were published. The rest are read again; those
/// of them published now go out twice, with the same event id. A task gone
/// from the store (past its retention) has nothing left to announce.
pub async fn announce(svc: &Services, finished: &[(TenantId, TaskId)]) -> usize {
    let outcomes = join_all(finished.iter().map(|(tenant, task_id)| async move {
        let task = match svc.tasks.get(tenant, *task_id).await {
            Ok(Some(task)) => task,
            Ok(None) => {
                tracing::warn!(%task_id, "a finished task is gone before it was announced");
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        };
        let event = TaskFinished::of(&task);
        svc.events
            .task_finished(&event)
            .await
            .map_err(|e| format!("{} ({})", e, event.event_id))
    }))
    .await;
    let mut published = 0;
    for outcome in outcomes {
        match outcome {
            Ok(()) => published += 1,
            Err(e) => {
                tracing::warn!(error = %e, "could not announce a finished task; it is read again");
                break;
            }
        }
    }
    published
}

/// One pass of the local relay: reads the feed, announces what finished,
/// and checkpoints the last finishing announced. Returns how many stream
/// records it read (none: the relay may rest). When an announcement
/// fails, the feed is rewound to the checkpoint, so the next pass reads it
/// (and what followed it) again.
pub async fn relay(
    svc: &Services,
    feed: &dyn FinishedFeed,
    limit: usize,
) -> Result<usize, StoreError> {
    let batch = feed.read(limit).await?;
    let tasks: Vec<(TenantId, TaskId)> = batch
        .finished
        .iter()
        .map(|f| (f.tenant.clone(), f.task_id))
        .collect();
    let announced = announce(svc, &tasks).await;
    if announced < batch.finished.len() {
        feed.rewind().await;
    }
    if let Some(last) = announced.checked_sub(1)
        && let Err(e) = feed.checkpoint(&batch.finished[last].position).await
    {
        // Read again from the old checkpoint: announced twice, never lost.
        feed.rewind().await;
        return Err(e);
    }
    Ok(batch.records)
}

/// How long the relay waits when the feed had nothing, or failed.
pub const IDLE: Duration = Duration::from_millis(250);
pub const BACKOFF: Duration = Duration::from_secs(1);
