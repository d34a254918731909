//! Aggregate: combines a task's call results and finishes it.

use crate::domain::aggregation::combine;
use crate::domain::{CallResult, Envelope, Task};
use crate::ports::StoreError;

use super::{Ended, Services, StageError, claim_check};

#[tracing::instrument(skip_all, fields(stage = "aggregate", tenant = %envelope.tenant, task_id = %envelope.task_id))]
pub async fn handle(svc: &Services, envelope: &Envelope) -> Result<(), StageError> {
    let Some(record) = svc
        .tasks
        .get_with_calls(&envelope.tenant, envelope.task_id)
        .await?
    else {
        tracing::warn!("aggregate message for a task that does not exist");
        return Ok(());
    };
    if record.task.status.is_terminal() {
        // A duplicate, or the fan-in of a task that ended before its calls
        // did (cancelled, timed out): those calls are still owed.
        svc.tasks
            .add_late_calls(&record.task, &record.calls)
            .await?;
        return Ok(());
    }
    finish(svc, &record.task, &record.calls).await.map(|_| ())
}

/// Writes the combined result. Conditional on the task being unfinished, so
/// a duplicate or a racing cancel leaves exactly one final result.
pub(crate) async fn finish(
    svc: &Services,
    task: &Task,
    calls: &[CallResult],
) -> Result<Ended, StageError> {
    // Outputs kept in the blob store are read back to be combined, and a
    // combined output too large for the task's item goes there in turn.
    let calls = claim_check::hydrate(svc, task, calls).await?;
    let (status, mut patch) = combine(task, &calls);
    if let Some(result) = patch.result.as_mut() {
        claim_check::offload_result(svc, task, &calls, result).await?;
    }
    match svc
        .tasks
        .transition(task, status, patch, svc.clock.now())
        .await
    {
        Ok(finished) => {
            svc.finished(&finished);
            Ok(Ended::Now)
        }
        // Finished meanwhile (a duplicate, a cancel or a timeout won).
        Err(StoreError::Transition(_)) | Err(StoreError::NotFound) => Ok(Ended::Before),
        Err(e) => Err(e.into()),
    }
}
