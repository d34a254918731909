//! The claim check: an output above `settings.claim_check_bytes` is put in
//! the blob store and its item keeps a reference, so no item nears
//! DynamoDB's 400 KB whatever a provider answers (base64 images are the
//! common case). Aggregation reads outputs back before combining them.

use crate::domain::{AggregateResult, BlobRef, CallResult, Task};
use crate::ports::{BlobError, BlobKey};

use super::Services;

/// Moves a call's output to the blob store when it is too large for its
/// item. Retried by the caller like any write: the key is the call's, so a
/// second put writes the same bytes.
pub(crate) async fn offload_call(
    svc: &Services,
    task: &Task,
    mut result: CallResult,
) -> Result<CallResult, BlobError> {
    let Some(output) = result
        .output
        .take_if(|o| o.len() > svc.settings.claim_check_bytes)
    else {
        return Ok(result);
    };
    let key = BlobKey::call_output(&task.tenant, task.task_id, result.call_id);
    let bytes = output.len() as u64;
    svc.blobs.put(&key, output.into_bytes()).await?;
    result.output_ref = Some(BlobRef {
        key: key.as_str().to_owned(),
        bytes,
    });
    Ok(result)
}

/// The calls with their outputs in hand, read back from the blob store
/// where they were claim-checked.
pub(crate) async fn hydrate(
    svc: &Services,
    task: &Task,
    calls: &[CallResult],
) -> Result<Vec<CallResult>, BlobError> {
    let mut hydrated = Vec::with_capacity(calls.len());
    for call in calls {
        let mut call = call.clone();
        if let Some(reference) = &call.output_ref {
            call.output = Some(read(svc, task, reference).await?);
        }
        hydrated.push(call);
    }
    Ok(hydrated)
}

/// A claim-checked output, read back.
pub(crate) async fn read(
    svc: &Services,
    task: &Task,
    reference: &BlobRef,
) -> Result<String, BlobError> {
    read_if_kept(svc, task, reference)
        .await?
        .ok_or_else(|| BlobError::Backend(format!("blob {} is missing", reference.key)))
}

/// A claim-checked output, or `None` once the bucket's lifecycle expired it.
pub(crate) async fn read_if_kept(
    svc: &Services,
    task: &Task,
    reference: &BlobRef,
) -> Result<Option<String>, BlobError> {
    let key = BlobKey::stored(&task.tenant, &reference.key).ok_or_else(|| {
        BlobError::Backend(format!(
            "blob {} does not belong to the task's tenant",
            reference.key
        ))
    })?;
    let Some(body) = svc.blobs.get(&key).await? else {
        return Ok(None);
    };
    String::from_utf8(body)
        .map(Some)
        .map_err(|_| BlobError::Backend(format!("blob {} is not UTF-8", reference.key)))
}

/// Moves a combined output to the blob store when it is too large for the
/// task's item. When it is one call's claim-checked output (`first`), the
/// task refers to that blob rather than storing it twice.
pub(crate) async fn offload_result(
    svc: &Services,
    task: &Task,
    calls: &[CallResult],
    result: &mut AggregateResult,
) -> Result<(), BlobError> {
    // Candidates quote their calls' outputs: a large one is left to its
    // call (the task API links to it), not copied into the task's item.
    for candidate in &mut result.candidates {
        let large = candidate
            .get("output")
            .and_then(|o| o.as_str())
            .map(str::len)
            .filter(|n| *n > svc.settings.claim_check_bytes);
        if let (Some(bytes), Some(fields)) = (large, candidate.as_object_mut()) {
            fields.insert("output".into(), serde_json::Value::Null);
            fields.insert("output_bytes".into(), bytes.into());
        }
    }
    if result.output.len() <= svc.settings.claim_check_bytes {
        return Ok(());
    }
    let output = std::mem::take(&mut result.output);
    let bytes = output.len() as u64;
    let same_as_a_call = calls.iter().find_map(|c| {
        c.output_ref
            .as_ref()
            .filter(|r| r.bytes == bytes && c.output.as_deref() == Some(output.as_str()))
    });
    if let Some(reference) = same_as_a_call {
        result.output_ref = Some(reference.clone());
        return Ok(());
    }
    let key = BlobKey::task_output(&task.tenant, task.task_id);
    svc.blobs.put(&key, output.into_bytes()).await?;
    result.output_ref = Some(BlobRef {
        key: key.as_str().to_owned(),
        bytes,
    });
    Ok(())
}
