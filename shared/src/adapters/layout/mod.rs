//! The context table's item layout, and what DynamoDB allows of it. Both
//! backends use it: the AWS one writes these items; the memory one keeps the
//! same data and measures it as these items, so that whatever DynamoDB would
//! refuse for its size, the memory backend refuses too.

pub mod capacity;
pub mod keys;
mod size;

pub use size::{SizeError, item_size};

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_dynamo::AttributeValue;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::domain::{
    AggregateResult, AuditEntry, CallId, CallLease, CallResult, IdempotencyKey, LeaseHolder,
    PlannedCall, Task, TaskError, TaskId, TaskSpec, TaskStatus, TenantId, Usage, Usd,
};

/// DynamoDB's largest item: 400 KB, counting attribute names and values.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// The most a Query reads before it stops and returns a `LastEvaluatedKey`.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// The set of call ids counted toward the fan-in (a DynamoDB string set, so a
/// duplicate `ADD` adds nothing).
pub const DONE_CALLS: &str = "done_calls";

/// A task's request (`REQ`): written once when the task is stored and never
/// again, so that the content's size is paid for once, not on every
/// transition.
#[derive(Serialize, Deserialize)]
pub struct RequestItem {
    pub pk: String,
    pub sk: String,
    pub expires_at: i64,
    pub spec: TaskSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdempotencyKey>,
    pub submitted_by: String,
}

/// A task's state (`TASK`): small, updated in place on each transition. It
/// carries the list index's keys (set once, so the index is written once)
/// and, while the task is unfinished, the sweep index's.
#[derive(Serialize, Deserialize)]
pub struct StateItem {
    pub pk: String,
    pub sk: String,
    pub gsi1pk: String,
    pub gsi1sk: String,
    pub expires_at: i64,
    /// The sweep index's keys, while the task is unfinished (a sparse
    /// index: a finished task's are removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep_shard: Option<String>,
    /// Epoch milliseconds: when the sweeper should look at the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep_at: Option<i64>,
    #[serde(flatten)]
    pub state: TaskState,
}

/// What changes in a task: everything but its request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskState {
    pub tenant: TenantId,
    pub task_id: TaskId,
    pub status: TaskStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub plan: Vec<PlannedCall>,
    #[serde(default)]
    pub expected_calls: Option<u32>,
    #[serde(default)]
    pub result: Option<AggregateResult>,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default)]
    pub cost_usd: Option<Usd>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub counted_calls: BTreeSet<CallId>,
    #[serde(default)]
    pub error: Option<TaskError>,
}

impl TaskState {
    pub fn of(task: &Task) -> Self {
        TaskState {
            tenant: task.tenant.clone(),
            task_id: task.task_id,
            status: task.status,
            created_at: task.created_at,
            updated_at: task.updated_at,
            plan: task.plan.clone(),
            expected_calls: task.expected_calls,
            result: task.result.clone(),
            usage: task.usage,
            cost_usd: task.cost_usd,
            counted_calls: task.counted_calls.clone(),
            error: task.error.clone(),
        }
    }

    /// The task with this state and `request`'s immutable part.
    pub fn joined(self, request: &RequestItem) -> Task {
        self.with_request(
            request.spec.clone(),
            request.idempotency_key.clone(),
            request.submitted_by.clone(),
        )
    }

    /// `seen` (the task as read before a write) with this state.
    pub fn applied_to(self, seen: &Task) -> Task {
        self.with_request(
            seen.spec.clone(),
            seen.idempotency_key.clone(),
            seen.submitted_by.clone(),
        )
    }

    fn with_request(
        self,
        spec: TaskSpec,
        idempotency_key: Option<IdempotencyKey>,
        submitted_by: String,
    ) -> Task {
        Task {
            tenant: self.tenant,
            task_id: self.task_id,
            status: self.status,
            spec,
            idempotency_key,
            submitted_by,
            created_at: self.created_at,
            updated_at: self.updated_at,
            plan: self.plan,
            expected_calls: self.expected_calls,
            result: self.result,
            usage: self.usage,
            cost_usd: self.cost_usd,
            counted_calls: self.counted_calls,
            error: self.error,
        }
    }
}

impl RequestItem {
    pub fn new(task: &Task, expires_at: i64) -> Self {
        RequestItem {
            pk: keys::task_pk(&task.tenant, task.task_id),
            sk: keys::REQUEST_SK.to_owned(),
            expires_at,
            spec: task.spec.clone(),
            idempotency_key: task.idempotency_key.clone(),
            submitted_by: task.submitted_by.clone(),
        }
    }
}

impl StateItem {
    pub fn new(task: &Task, expires_at: i64) -> Self {
        let unfinished = !task.status.is_terminal();
        StateItem {
            pk: keys::task_pk(&task.tenant, task.task_id),
            sk: keys::TASK_SK.to_owned(),
            gsi1pk: keys::tenant_tasks(&task.tenant, task.task_id),
            gsi1sk: task.task_id.to_string(),
            expires_at,
            sweep_shard: unfinished.then(|| keys::sweep_shard(task.task_id)),
            sweep_at: unfinished.then(|| task.first_sweep().timestamp_millis()),
            state: TaskState::of(task),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct CallItem {
    pub pk: String,
    pub sk: String,
    pub expires_at: i64,
    #[serde(flatten)]
    pub result: CallResult,
}

impl CallItem {
    pub fn new(tenant: &TenantId, task_id: TaskId, result: &CallResult, expires_at: i64) -> Self {
        CallItem {
            pk: keys::task_pk(tenant, task_id),
            sk: keys::call_sk(result.call_id),
            expires_at,
            result: result.clone(),
        }
    }
}

/// A call's lease. `until_ms` is epoch milliseconds: a number, so that the
/// condition compares it numerically.
#[derive(Serialize, Deserialize)]
pub struct LeaseItem {
    pub pk: String,
    pub sk: String,
    pub holder: LeaseHolder,
    pub until_ms: i64,
    pub expires_at: i64,
}

impl LeaseItem {
    pub fn new(
        tenant: &TenantId,
        task_id: TaskId,
        call_id: CallId,
        lease: &CallLease,
        expires_at: i64,
    ) -> Self {
        LeaseItem {
            pk: keys::task_pk(tenant, task_id),
            sk: keys::lease_sk(call_id),
            holder: lease.holder.clone(),
            until_ms: lease.until.timestamp_millis(),
            expires_at,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct IdempotencyItem {
    pub pk: String,
    pub sk: String,
    pub task_id: TaskId,
    pub expires_at: i64,
}

impl IdempotencyItem {
    pub fn new(tenant: &TenantId, key: &IdempotencyKey, task_id: TaskId, expires_at: i64) -> Self {
        IdempotencyItem {
            pk: keys::idempotency_pk(tenant, key),
            sk: keys::IDEM_SK.to_owned(),
            task_id,
            expires_at,
        }
    }
}

/// An audit entry (sort key: its id). It expires by the audit retention,
/// not the tasks'.
#[derive(Serialize, Deserialize)]
pub struct AuditItem {
    pub pk: String,
    pub sk: String,
    pub expires_at: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

impl AuditItem {
    pub fn new(entry: &AuditEntry, retention: std::time::Duration) -> Self {
        AuditItem {
            pk: keys::audit_pk(&entry.log(), entry.id),
            sk: entry.id.to_string(),
            expires_at: entry.at.timestamp()
                + i64::try_from(retention.as_secs()).unwrap_or(i64::MAX / 2),
            entry: entry.clone(),
        }
    }
}

/// How long audit entries are kept when `MAOF_AUDIT_RETENTION_DAYS` is unset.
pub const DEFAULT_AUDIT_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(400 * 24 * 3600);

/// The audit retention `MAOF_AUDIT_RETENTION_DAYS` sets (whole days, at
/// least one); the default when unset.
pub fn audit_retention_from_env() -> Result<std::time::Duration, String> {
    match std::env::var("MAOF_AUDIT_RETENTION_DAYS") {
        Err(_) => Ok(DEFAULT_AUDIT_RETENTION),
        Ok(days) => match days.trim().parse::<u64>() {
            Ok(n) if (1..=36_500).contains(&n) => Ok(std::time::Duration::from_secs(n * 24 * 3600)),
            _ => Err(format!(
                "MAOF_AUDIT_RETENTION_DAYS must be a number of days from 1 to 36500: {days}"
            )),
        },
    }
}

/// One shard's answer to a newest-first query: the keys that matched, and
/// where it stopped reading if it stopped before the shard's end (DynamoDB's
/// `LastEvaluatedKey`, which a filter can leave below every matched key).
pub type ShardPage<K> = (Vec<K>, Option<K>);

/// Merges the newest keys of a partition's shards into the newest `limit`,
/// and the cursor to read below for the next page (none when all was read).
/// A shard that stopped early may hold more keys below where it stopped:
/// the merge is complete only down to the highest such point, and stops
/// there.
pub fn merge_newest<K: Ord + Copy>(shards: Vec<ShardPage<K>>, limit: usize) -> (Vec<K>, Option<K>) {
    let mut complete_down_to: Option<K> = None;
    let mut keys = Vec::new();
    for (shard_keys, stopped_at) in shards {
        complete_down_to = complete_down_to.max(stopped_at);
        keys.extend(shard_keys);
    }
    keys.sort_by_key(|key| std::cmp::Reverse(*key));
    if let Some(floor) = complete_down_to {
        keys.retain(|key| *key >= floor);
    }
    if keys.len() > limit {
        keys.truncate(limit);
        let last = keys.last().copied();
        return (keys, last);
    }
    // Everything above the floor is here; what is below it is unread.
    (keys, complete_down_to)
}

/// The task that a change to an item finished, if it did: a task's state
/// item whose status became terminal with this write (`TaskStatus::finishes`).
/// Every other change (other items, later writes to a finished task) is
/// `None`. `old` and `new` are the stream record's images, empty when absent.
pub fn finished_task(
    old: &HashMap<String, AttributeValue>,
    new: serde_dynamo::Item,
) -> Result<Option<(TenantId, TaskId)>, serde_dynamo::Error> {
    let status = |image: &HashMap<String, AttributeValue>| match image.get("status") {
        Some(AttributeValue::S(s)) => serde_json::from_value::<TaskStatus>(s.as_str().into()).ok(),
        _ => None,
    };
    let is_task = matches!(new.get(keys::SK), Some(AttributeValue::S(sk)) if sk == keys::TASK_SK);
    match status(&new) {
        Some(after) if is_task && TaskStatus::finishes(status(old), after) => {
            let item: StateItem = serde_dynamo::from_item(new)?;
            Ok(Some((item.state.tenant, item.state.task_id)))
        }
        _ => Ok(None),
    }
}

/// The size of the fan-in's string set of `n` call ids, with its name.
pub fn done_calls_size(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    // A call id is a 26-character ULID.
    DONE_CALLS.len() + n * 26
}

/// A value's size by DynamoDB's rules: strings and binaries by their bytes;
/// numbers about one byte per two significant digits, plus one; booleans and
/// nulls one byte; lists and maps three bytes plus their elements (a map's
/// with their names, a list's with a byte each); sets their elements.
pub fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => number_size(n),
        AttributeValue::B(b) => b.len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, v)| k.len() + value_size(v))
                .sum::<usize>()
        }
        AttributeValue::L(l) => 3 + l.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        AttributeValue::Ss(set) => set.iter().map(String::len).sum(),
        AttributeValue::Ns(set) => set.iter().map(|n| number_size(n)).sum(),
        AttributeValue::Bs(set) => set.iter().map(Vec::len).sum(),
    }
}

use size::number_size;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_list_shards_never_skips_what_a_short_page_left_unread() {
        let ids: Vec<TaskId> = {
            let mut v: Vec<TaskId> = (0..9).map(|_| TaskId::new()).collect();
            v.sort();
            v.reverse(); // newest first
            v
        };
        // Shard a has ids 0, 2, 4, 6, 8; shard b 1, 3, 5, 7 (0 newest).
        let a: Vec<TaskId> = ids.iter().step_by(2).copied().collect();
        let b: Vec<TaskId> = ids.iter().skip(1).step_by(2).copied().collect();
        let (page, next) = merge_newest(vec![(a.clone(), None), (b.clone(), None)], 4);
        assert_eq!(page, ids[..4]);
        assert_eq!(next, Some(ids[3]));
        let (page, next) = merge_newest(vec![(a.clone(), None), (b.clone(), None)], 20);
        assert_eq!(page, ids);
        assert_eq!(next, None);
        // Shard b's page stopped at 1 MB after id 3: ids below it may be
        // unread there, so the page ends at 3 and says there is more.
        let (page, next) = merge_newest(vec![(a.clone(), None), (b[..2].to_vec(), Some(b[1]))], 20);
        assert_eq!(page, ids[..4]);
        assert_eq!(next, Some(ids[3]));
        // A filter left shard b's page empty, but it read down to id 5:
        // the page ends there, with nothing of b, and goes on below 5.
        let (page, next) = merge_newest(vec![(a, None), (Vec::new(), Some(ids[5]))], 20);
        assert_eq!(page, [ids[0], ids[2], ids[4]]);
        assert_eq!(next, Some(ids[5]));
    }

    #[test]
    fn sizes_count_names_and_values_as_dynamodb_does() {
        #[derive(Serialize)]
        struct Item {
            pk: String,
            n: u64,
            ok: bool,
            tags: Vec<String>,
        }
        let item = Item {
            pk: "abc".into(),
            n: 12_300,
            ok: true,
            tags: vec!["xy".into(), "z".into()],
        };
        // pk: 2 + 3; n: 1 + (3 significant digits → 2 + 1); ok: 2 + 1;
        // tags: 4 + 3 + (1 + 2) + (1 + 1).
        assert_eq!(item_size(&item).unwrap(), 5 + 4 + 3 + 12);
        assert_eq!(reference_size(&item), 5 + 4 + 3 + 12);
        assert_eq!(number_size("0.000059"), 2);
        assert_eq!(number_size("-123456789"), 6);
        assert_eq!(number_size("0"), 1);
        assert_eq!(number_size("120.50"), 3);
    }

    /// The size from the attribute values `serde_dynamo` builds.
    fn reference_size<T: Serialize>(item: &T) -> usize {
        let item: serde_dynamo::Item = serde_dynamo::to_item(item).unwrap();
        item.iter()
            .map(|(name, value)| name.len() + value_size(value))
            .sum()
    }

    #[test]
    fn sizing_while_serializing_matches_the_attribute_values_serde_dynamo_builds() {
        use crate::domain::{
            AgentId, CallId, CallStatus, ErrorClass, Provider, TaskError, TaskRequest, Usd,
        };
        let request: TaskRequest = serde_json::from_value(serde_json::json!({
            "task_type": "text", "content": "Grüße ✓ ".repeat(40), "system": "be brief",
            "routing": {"strategy": "explicit", "fanout": 2, "agents": ["a-1", "b-2"]},
            "aggregation": {"strategy": "all"}, "budget_usd": 0.05, "timeout_ms": 120_000,
            "metadata": {"n": 3, "f": 0.000_125, "neg": -40, "big": 12_300_000u64,
                         "list": [1, "x", null, true, {"k": []}], "none": null}
        }))
        .unwrap();
        let (spec, _) = request.parse().unwrap();
        let now = chrono::Utc::now();
        let mut task = Task::new(TenantId::parse("acme").unwrap(), spec, None, "u", now);
        let request = RequestItem::new(&task, 1_795_000_000);
        assert_eq!(item_size(&request).unwrap(), reference_size(&request));
        task.status = crate::domain::TaskStatus::Failed;
        task.error = Some(TaskError::new("timeout", "past its deadline"));
        task.cost_usd = Some(Usd::parse("0.0000198").unwrap());
        task.counted_calls = [CallId::new(), CallId::new()].into();
        let item = StateItem::new(&task, 1_795_000_000);
        assert_eq!(item_size(&item).unwrap(), reference_size(&item));

        let call = CallResult {
            call_id: CallId::new(),
            agent_id: AgentId::parse("mock-a").unwrap(),
            provider: Some(Provider::Mock),
            status: CallStatus::Failed,
            output: None,
            output_ref: None,
            usage: crate::domain::Usage {
                input_tokens: 1200,
                output_tokens: 30,
                cache_write_input_tokens: 7,
                ..crate::domain::Usage::default()
            },
            cost_usd: Some(Usd::parse("1.5").unwrap()),
            latency_ms: 100,
            attempts: 3,
            error: Some(crate::domain::CallError {
                class: ErrorClass::RateLimited,
                message: "slow down".into(),
            }),
            retried_errors: vec![crate::domain::CallError {
                class: ErrorClass::Server,
                message: "upstream 502".into(),
            }],
            finished_at: now,
            truncated: false,
            quality: None,
            fell_back_from: Vec::new(),
            settles: None,
        };
        let item = CallItem::new(&task.tenant, task.task_id, &call, 0);
        assert_eq!(item_size(&item).unwrap(), reference_size(&item));
    }
}
