use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::lock;
use crate::adapters::layout::{self, CallItem, IdempotencyItem, TaskItem, keys};
use crate::domain::{
    CallId, CallLease, CallResult, IdempotencyKey, LeaseOutcome, Task, TaskId, TaskPatch,
    TaskStatus, TenantId,
};
use crate::ports::task_store::fan_in_outcome;
use crate::ports::{FanIn, Page, StoreError, TaskRecord, TaskStore};

struct Entry {
    task: Task,
    calls: BTreeMap<CallId, CallResult>,
    done: BTreeSet<CallId>,
    leases: HashMap<CallId, CallLease>,
    /// The sweep index's entry, while the task is unfinished.
    sweep_at: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct State {
    // Keyed by tenant first, as the DynamoDB keys are.
    tasks: HashMap<(TenantId, TaskId), Entry>,
    idempotency: HashMap<(TenantId, IdempotencyKey), TaskId>,
    /// Finished tasks, oldest first: what retention evicts.
    finished: VecDeque<(TenantId, TaskId)>,
    /// The change stream, as the table's stream filtered by the announcer's
    /// trigger: each task's finishing, numbered, oldest first.
    stream: VecDeque<(u64, Task)>,
    next_sequence: u64,
    /// The last finishing announced (the announcer's checkpoint).
    announced: Option<u64>,
}

/// Tasks in process. Like the DynamoDB table's TTL, retention bounds what is
/// kept: past `max_finished` finished tasks, the oldest finished one goes
/// (unfinished tasks are never evicted), so a long `maof dev` run stays small.
pub struct MemoryTaskStore {
    state: Mutex<State>,
    max_finished: usize,
}

impl Default for MemoryTaskStore {
    fn default() -> Self {
        Self::with_retention(Self::DEFAULT_MAX_FINISHED)
    }
}

impl MemoryTaskStore {
    pub const DEFAULT_MAX_FINISHED: usize = 10_000;

    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_retention(max_finished: usize) -> Self {
        MemoryTaskStore {
            state: Mutex::default(),
            max_finished,
        }
    }
}

/// The size of `item` as DynamoDB counts it, plus `extra` bytes of
/// attributes it does not carry; refused past DynamoDB's item limit.
fn sized<T: serde::Serialize>(item: &T, extra: usize) -> Result<usize, StoreError> {
    let bytes = layout::item_size(item)
        .map_err(|e| StoreError::Backend(format!("cannot encode item: {e}")))?
        + extra;
    if bytes > layout::MAX_ITEM_BYTES {
        return Err(StoreError::ItemTooLarge { bytes });
    }
    Ok(bytes)
}

/// The stand-in for the TTL attribute's value (a ten-digit number, as the
/// real one is), so that sizes count it.
fn expires(at: DateTime<Utc>) -> i64 {
    at.timestamp()
}

fn call_size(tenant: &TenantId, task_id: TaskId, result: &CallResult) -> Result<usize, StoreError> {
    sized(
        &CallItem::new(tenant, task_id, result, expires(result.finished_at)),
        0,
    )
}

fn task_size(task: &Task, done_calls: usize) -> Result<usize, StoreError> {
    sized(
        &TaskItem::new(task, expires(task.created_at)),
        layout::done_calls_size(done_calls),
    )
}

impl State {
    /// Appends to the change stream, which keeps as many finishings as
    /// retention keeps finished tasks (DynamoDB's keeps a day of changes).
    fn record_finishing(&mut self, task: &Task, keep: usize) {
        self.next_sequence += 1;
        self.stream.push_back((self.next_sequence, task.clone()));
        while self.stream.len() > keep.max(1) {
            self.stream.pop_front();
        }
    }

    fn evict_beyond(&mut self, max_finished: usize) {
        while self.finished.len() > max_finished {
            let Some(key) = self.finished.pop_front() else {
                break;
            };
            if let Some(entry) = self.tasks.remove(&key)
                && let Some(idem) = entry.task.idempotency_key
            {
                self.idempotency.remove(&(key.0, idem));
            }
        }
    }
}

/// The memory change stream's side of the announcer (see `MemoryFeed`).
impl MemoryTaskStore {
    /// Up to `limit` finishings numbered after `after` (after the checkpoint
    /// when `None`). Numbers are one stream "shard"'s sequence.
    pub(super) fn finishings_after(&self, after: Option<u64>, limit: usize) -> Vec<(u64, Task)> {
        let state = lock(&self.state);
        let after = after.or(state.announced).unwrap_or(0);
        if let Some((oldest, _)) = state.stream.front()
            && *oldest > after + 1
        {
            tracing::error!(
                from = after + 1,
                oldest,
                "finishings were trimmed from the stream before they were announced"
            );
        }
        state
            .stream
            .iter()
            .filter(|(n, _)| *n > after)
            .take(limit)
            .cloned()
            .collect()
    }

    pub(super) fn set_announced(&self, through: u64) {
        let mut state = lock(&self.state);
        state.announced = Some(state.announced.map_or(through, |a| a.max(through)));
    }
}

#[async_trait]
impl TaskStore for MemoryTaskStore {
    async fn create(&self, task: &Task) -> Result<(), StoreError> {
        task_size(task, 0)?;
        if let Some(idem) = &task.idempotency_key {
            sized(
                &IdempotencyItem::new(&task.tenant, idem, task.task_id, expires(task.created_at)),
                0,
            )?;
        }
        let mut state = lock(&self.state);
        let key = (task.tenant.clone(), task.task_id);
        if state.tasks.contains_key(&key) {
            return Err(StoreError::AlreadyExists);
        }
        if let Some(idem) = &task.idempotency_key {
            let idem_key = (task.tenant.clone(), idem.clone());
            if let Some(existing) = state.idempotency.get(&idem_key) {
                return Err(StoreError::DuplicateIdempotencyKey(*existing));
            }
            state.idempotency.insert(idem_key, task.task_id);
        }
        state.tasks.insert(
            key,
            Entry {
                task: task.clone(),
                calls: BTreeMap::new(),
                done: BTreeSet::new(),
                leases: HashMap::new(),
                sweep_at: (!task.status.is_terminal()).then(|| task.first_sweep()),
            },
        );
        Ok(())
    }

    async fn get(&self, tenant: &TenantId, task_id: TaskId) -> Result<Option<Task>, StoreError> {
        let state = lock(&self.state);
        Ok(state
            .tasks
            .get(&(tenant.clone(), task_id))
            .map(|e| e.task.clone()))
    }

    async fn get_with_calls(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let state = lock(&self.state);
        Ok(state
            .tasks
            .get(&(tenant.clone(), task_id))
            .map(|e| TaskRecord {
                task: e.task.clone(),
                calls: e.calls.values().cloned().collect(),
            }))
    }

    async fn transition(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        to: TaskStatus,
        patch: TaskPatch,
        now: DateTime<Utc>,
    ) -> Result<Task, StoreError> {
        let mut state = lock(&self.state);
        let entry = state
            .tasks
            .get_mut(&(tenant.clone(), task_id))
            .ok_or(StoreError::NotFound)?;
        // Applied to a copy first: an update DynamoDB refuses changes nothing.
        let mut task = entry.task.clone();
        task.apply(to, patch, now)?;
        task_size(&task, entry.done.len())?;
        let before = entry.task.status;
        entry.task = task.clone();
        if to.is_terminal() {
            entry.sweep_at = None;
        }
        if TaskStatus::finishes(Some(before), to) {
            state.finished.push_back((tenant.clone(), task_id));
            state.evict_beyond(self.max_finished);
            state.record_finishing(&task, self.max_finished);
        }
        Ok(task)
    }

    async fn lease_call(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        call_id: CallId,
        lease: &CallLease,
        now: DateTime<Utc>,
    ) -> Result<LeaseOutcome, StoreError> {
        let mut state = lock(&self.state);
        // Like an orphan DynamoDB item, a lease on a missing task is written
        // and never read: nothing to keep.
        let Some(entry) = state.tasks.get_mut(&(tenant.clone(), task_id)) else {
            return Ok(LeaseOutcome::Acquired);
        };
        match entry.leases.get(&call_id) {
            Some(existing) if !existing.may_be_taken_by(&lease.holder, now) => {
                Ok(LeaseOutcome::Held {
                    until: existing.until,
                })
            }
            _ => {
                entry.leases.insert(call_id, lease.clone());
                Ok(LeaseOutcome::Acquired)
            }
        }
    }

    async fn put_call(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        result: &CallResult,
    ) -> Result<CallResult, StoreError> {
        call_size(tenant, task_id, result)?;
        let mut state = lock(&self.state);
        // Like an orphan DynamoDB item, a result for a missing task is invisible.
        match state.tasks.get_mut(&(tenant.clone(), task_id)) {
            Some(entry) => Ok(entry
                .calls
                .entry(result.call_id)
                .or_insert_with(|| result.clone())
                .clone()),
            None => Ok(result.clone()),
        }
    }

    async fn record_call(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        result: &CallResult,
    ) -> Result<FanIn, StoreError> {
        call_size(tenant, task_id, result)?;
        let mut state = lock(&self.state);
        let entry = state
            .tasks
            .get_mut(&(tenant.clone(), task_id))
            .ok_or(StoreError::NotFound)?;
        entry
            .calls
            .entry(result.call_id)
            .or_insert_with(|| result.clone());
        let done_before = entry.done.len() as u32;
        let already_counted = !entry.done.insert(result.call_id);
        Ok(fan_in_outcome(
            done_before,
            already_counted,
            entry.task.expected_calls,
        ))
    }

    async fn due(
        &self,
        shard: u32,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(TenantId, TaskId)>, StoreError> {
        let partition = keys::sweep_partition(shard);
        let state = lock(&self.state);
        let mut due: Vec<(DateTime<Utc>, TenantId, TaskId)> = state
            .tasks
            .iter()
            .filter_map(|((tenant, id), e)| e.sweep_at.map(|at| (at, tenant, *id)))
            .filter(|(at, _, id)| *at <= now && keys::sweep_shard(*id) == partition)
            .map(|(at, tenant, id)| (at, tenant.clone(), id))
            .collect();
        due.sort();
        Ok(due
            .into_iter()
            .take(limit as usize)
            .map(|(_, tenant, id)| (tenant, id))
            .collect())
    }

    async fn postpone(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        if let Some(entry) = state.tasks.get_mut(&(tenant.clone(), task_id))
            && entry.sweep_at.is_some()
        {
            entry.sweep_at = Some(until);
        }
        Ok(())
    }

    async fn add_late_calls(&self, seen: &Task, calls: &[CallResult]) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        let Some(entry) = state.tasks.get_mut(&(seen.tenant.clone(), seen.task_id)) else {
            return Ok(());
        };
        if let Some((usage, cost, counted)) = entry.task.with_late_calls(calls) {
            let mut task = entry.task.clone();
            task.usage = usage;
            task.cost_usd = cost;
            task.counted_calls = counted;
            task_size(&task, entry.done.len())?;
            entry.task = task;
        }
        Ok(())
    }

    async fn list(
        &self,
        tenant: &TenantId,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<Task>, StoreError> {
        let before = cursor
            .map(TaskId::parse)
            .transpose()
            .map_err(|_| StoreError::Backend("bad cursor".into()))?;
        let limit = limit.clamp(1, 1000);
        let state = lock(&self.state);
        let mut tasks: Vec<&Task> = state
            .tasks
            .iter()
            .filter(|((t, id), _)| t == tenant && before.is_none_or(|b| *id < b))
            .map(|(_, e)| &e.task)
            .collect();
        tasks.sort_by_key(|t| std::cmp::Reverse(t.task_id));
        // As a DynamoDB Query: up to `limit + 1` items (to know whether there
        // is another page), stopping early where the page would pass 1 MB.
        let mut items = Vec::new();
        let mut page_bytes = 0;
        let mut cut = false;
        for task in tasks.into_iter().take(limit as usize + 1) {
            let bytes = task_size(task, 0).unwrap_or(layout::MAX_ITEM_BYTES);
            if page_bytes + bytes > layout::MAX_PAGE_BYTES {
                cut = true;
                break;
            }
            page_bytes += bytes;
            items.push(task.clone());
        }
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next = if more || cut {
            items.last().map(|t| t.task_id.to_string())
        } else {
            None
        };
        Ok(Page { items, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AggregateResult, AggregationStrategy, TaskRequest};

    /// DynamoDB refuses an UpdateItem whose result would pass 400 KB (moto
    /// does not, so the contract suite cannot hold the AWS side to it).
    #[tokio::test]
    async fn an_update_past_400_kb_is_refused_and_changes_nothing() {
        let store = MemoryTaskStore::new();
        let request: TaskRequest = serde_json::from_value(
            serde_json::json!({"task_type": "text", "content": "x".repeat(190_000)}),
        )
        .unwrap();
        let (spec, _) = request.parse().unwrap();
        let task = Task::new(TenantId::parse("t").unwrap(), spec, None, "u", Utc::now());
        store.create(&task).await.unwrap();
        let patch = TaskPatch {
            result: Some(AggregateResult {
                strategy: AggregationStrategy::First,
                output: "r".repeat(250_000),
                output_ref: None,
                confidence: 1.0,
                candidates: Vec::new(),
                conflicts: Vec::new(),
            }),
            ..TaskPatch::default()
        };
        let refused = store
            .transition(
                &task.tenant,
                task.task_id,
                TaskStatus::Failed,
                patch,
                Utc::now(),
            )
            .await;
        assert!(
            matches!(refused, Err(StoreError::ItemTooLarge { bytes }) if bytes > 440_000),
            "{refused:?}"
        );
        let unchanged = store
            .get(&task.tenant, task.task_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(unchanged.status, TaskStatus::Queued);
        assert!(unchanged.result.is_none());
    }

    #[tokio::test]
    async fn retention_evicts_the_oldest_finished_tasks_only() {
        let store = MemoryTaskStore::with_retention(2);
        let tenant = TenantId::parse("t").unwrap();
        let mut ids = Vec::new();
        for i in 0..4 {
            let request: TaskRequest =
                serde_json::from_value(serde_json::json!({"task_type": "text", "content": "x",
                    "idempotency_key": format!("k{i}")}))
                .unwrap();
            let (spec, key) = request.parse().unwrap();
            let task = Task::new(tenant.clone(), spec, key, "u", Utc::now());
            store.create(&task).await.unwrap();
            ids.push(task.task_id);
        }
        for id in &ids[..3] {
            store
                .transition(
                    &tenant,
                    *id,
                    TaskStatus::Cancelled,
                    TaskPatch::default(),
                    Utc::now(),
                )
                .await
                .unwrap();
        }
        assert!(
            store.get(&tenant, ids[0]).await.unwrap().is_none(),
            "oldest finished evicted"
        );
        assert!(store.get(&tenant, ids[1]).await.unwrap().is_some());
        assert!(store.get(&tenant, ids[2]).await.unwrap().is_some());
        assert!(
            store.get(&tenant, ids[3]).await.unwrap().is_some(),
            "unfinished kept"
        );
        let state = lock(&store.state);
        assert_eq!(
            state.idempotency.len(),
            3,
            "the evicted task's key went with it"
        );
    }
}
