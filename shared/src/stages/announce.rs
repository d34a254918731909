//! Announces finished tasks to other pipelines. The announcements are read
//! from the task store's change stream, not made by the stage that finished
//! the task: a crash between the final write and the publish then loses
//! nothing, since the stream keeps the change until it is announced. On AWS
//! the announcer Lambda's trigger reads the stream and keeps its checkpoint;
//! locally the runner's relay reads the store's `FinishedFeed`.

use std::time::Duration;

use futures::future::join_all;

use super::Services;
use crate::domain::Task;
use crate::ports::{FinishedFeed, StoreError, TaskFinished};

/// Publishes the events of `finished` (in stream order) concurrently, and
/// returns how many of them, from the front, were published. The rest are
/// read again; those of them published now go out twice, with the same
/// event id.
pub async fn announce(svc: &Services, finished: &[&Task]) -> usize {
    let events: Vec<TaskFinished> = finished.iter().map(|t| TaskFinished::of(t)).collect();
    let results = join_all(events.iter().map(|e| svc.events.task_finished(e))).await;
    let mut published = 0;
    for (event, result) in events.iter().zip(&results) {
        match result {
            Ok(()) => published += 1,
            Err(e) => {
                tracing::warn!(event_id = %event.event_id, error = %e, "could not announce a finished task; it is read again");
                break;
            }
        }
    }
    published
}

/// What one pass of the relay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Relayed {
    /// Stream records read (finishing or not).
    pub records: usize,
    pub announced: usize,
}

/// One pass of the local relay: reads the feed, announces what finished,
/// and checkpoints the last finishing announced. When an announcement
/// fails, the feed is rewound to the checkpoint, so the next pass reads it
/// (and what followed it) again.
pub async fn relay(
    svc: &Services,
    feed: &dyn FinishedFeed,
    limit: usize,
) -> Result<Relayed, StoreError> {
    let batch = feed.read(limit).await?;
    let tasks: Vec<&Task> = batch.finished.iter().map(|(_, t)| t).collect();
    let announced = announce(svc, &tasks).await;
    if announced < batch.finished.len() {
        feed.rewind().await;
    }
    if let Some(last) = announced.checked_sub(1)
        && let Err(e) = feed.checkpoint(&batch.finished[last].0).await
    {
        // Read again from the old checkpoint: announced twice, never lost.
        feed.rewind().await;
        return Err(e);
    }
    Ok(Relayed {
        records: batch.records,
        announced,
    })
}

/// How long the relay waits when the feed had nothing, or failed.
pub const IDLE: Duration = Duration::from_millis(250);
pub const BACKOFF: Duration = Duration::from_secs(1);
