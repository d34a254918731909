use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use super::MemoryAudit;
use super::lock;
use crate::adapters::layout::capacity::{
    CapacityMeter, Consumed, INDEX_ENTRY_UNITS, read_halves, write_units,
};
use crate::adapters::layout::{
    self, AuditItem, CallItem, DEFAULT_AUDIT_RETENTION, IdempotencyItem, RequestItem, StateItem,
    keys,
};
use crate::domain::health::Observation;
use crate::domain::rate::Take;
use crate::domain::{
    AgentId, AuditEntry, CallId, CallLease, CallResult, Hold, IdempotencyKey, LeaseOutcome, Owner,
    Period, Settlement, Spend, Task, TaskId, TaskPatch, TaskStatus, TenantId,
};
use crate::ports::LocalHealth;
use crate::ports::limits::LocalLimiter;
use crate::ports::rotation::{LocalRotation, Rotation, RotationKey};
use crate::ports::task_store::fan_in_outcome;
use crate::ports::{
    Draw, FanIn, Holder, Page, RateLimiter, SpendOn, StoreError, TaskRecord, TaskStore,
};

struct Entry {
    task: Task,
    calls: BTreeMap<CallId, CallResult>,
    done: BTreeSet<CallId>,
    leases: HashMap<CallId, CallLease>,
    /// The sweep index's entry, while the task is unfinished.
    sweep_at: Option<DateTime<Utc>>,
    /// The items' sizes as stored, for the capacity their reads consume.
    request_bytes: usize,
    state_bytes: usize,
    other_bytes: usize,
}

impl Entry {
    /// The request and state items (what `get` reads).
    fn task_bytes(&self) -> usize {
        self.request_bytes + self.state_bytes
    }
}

#[derive(Default)]
struct State {
    // Keyed by tenant first, as the DynamoDB keys are.
    tasks: HashMap<(TenantId, TaskId), Entry>,
    idempotency: HashMap<(TenantId, IdempotencyKey), TaskId>,
    /// Finished tasks, oldest first, with their finishing's number in the
    /// stream: what retention evicts.
    finished: VecDeque<(TenantId, TaskId, u64)>,
    /// The change stream, as the table's stream filtered by the announcer's
    /// trigger: each task's finishing, numbered, oldest first.
    stream: VecDeque<(u64, TenantId, TaskId)>,
    next_sequence: u64,
    /// The last finishing announced (the announcer's checkpoint).
    announced: Option<u64>,
    /// Whether an announcer reads the stream: then, as on AWS (where items
    /// live 30 days and changes are announced within one), a finished task
    /// stays until it is announced.
    announcing: bool,
    /// The tenants' spend counters, by period key (`2026-11-26`, `2026-11`).
    spend: HashMap<(TenantId, String), Spend>,
}

impl State {
    fn spend_on(&self, tenant: &TenantId, period: Period, day: NaiveDate) -> Spend {
        self.spend
            .get(&(tenant.clone(), period.key(day)))
            .copied()
            .unwrap_or_default()
    }

    /// Adds `change` to the day's and the month's counters.
    fn count(&mut self, tenant: &TenantId, day: NaiveDate, change: Spend) {
        for period in Period::ALL {
            let counter = self
                .spend
                .entry((tenant.clone(), period.key(day)))
                .or_default();
            *counter = *counter + change;
        }
    }

    /// Whether `hold` fits under the tenant's budgets: the first period
    /// that refuses it.
    fn refuses(&self, tenant: &TenantId, hold: &Hold) -> Option<Period> {
        hold.refused_by(|period| self.spend_on(tenant, period, hold.day).committed())
    }
}

/// A spend counter item's write units: a few small numbers, under 1 KB.
const COUNTER_UNITS: u64 = 1;

/// The units of a transaction that writes an item of `units` and the two
/// spend counters: twice those of the writes.
/// The health items a result's write adds to its transaction: one bucket
/// per agent counted, one state per probe ended (as `DynamoHealth::writes`).
fn health_items(health: &[Observation]) -> u64 {
    let mut agents: Vec<(&Owner, &AgentId)> = health
        .iter()
        .filter(|o| o.counts().is_some())
        .map(|o| (&o.owner, &o.agent))
        .collect();
    agents.dedup();
    agents.len() as u64 + health.iter().filter(|o| o.probe.is_some()).count() as u64
}

fn with_counters(units: u64) -> u64 {
    2 * (units + 2 * COUNTER_UNITS)
}

/// Tasks in process. Like the DynamoDB table's TTL, retention bounds what is
/// kept: past `max_finished` finished tasks, the oldest finished one goes
/// (unfinished tasks are never evicted), so a long `maof dev` run stays small.
pub struct MemoryTaskStore {
    state: Mutex<State>,
    max_finished: usize,
    meter: CapacityMeter,
    /// Rate-limit buckets, in the same table on AWS.
    limits: LocalLimiter,
    /// Rotation counters (`round_robin`, `weighted`), likewise.
    rotation: LocalRotation,
    /// The audit logs, in the same table on AWS: entries that go with a
    /// task's write are appended with it.
    audit: std::sync::Arc<MemoryAudit>,
    /// Agents' health, in the same table on AWS: a result's counts are
    /// added with it.
    health: std::sync::Arc<LocalHealth>,
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
            meter: CapacityMeter::default(),
            limits: LocalLimiter::default(),
            rotation: LocalRotation::default(),
            audit: std::sync::Arc::new(MemoryAudit::new()),
            health: std::sync::Arc::new(LocalHealth::default()),
        }
    }

    /// The audit logs this store appends to (the registry shares them, as
    /// the context table holds them on AWS).
    pub fn audit_log(&self) -> std::sync::Arc<MemoryAudit> {
        self.audit.clone()
    }

    /// Agents' health, which this store adds each result's counts to.
    pub fn health(&self) -> std::sync::Arc<LocalHealth> {
        self.health.clone()
    }

    /// The capacity the same operations would have consumed on DynamoDB
    /// (see `layout::capacity`).
    pub fn consumed(&self) -> Consumed {
        self.meter.consumed()
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

/// How far past retention finished tasks and their stream records are kept
/// while an announcer lags, before the oldest go anyway.
const HARD_LIMIT: usize = 10;

/// A lease item's size, about (keys, holder, times): under 1 KB.
const LEASE_BYTES: usize = 200;

/// Keeps the first result of a call; returns the one kept.
fn store_call<'e>(entry: &'e mut Entry, result: &CallResult, bytes: usize) -> &'e CallResult {
    if !entry.calls.contains_key(&result.call_id) {
        entry.other_bytes += bytes;
    }
    entry
        .calls
        .entry(result.call_id)
        .or_insert_with(|| result.clone())
}

fn audit_size(entry: &AuditEntry) -> Result<usize, StoreError> {
    sized(&AuditItem::new(entry, DEFAULT_AUDIT_RETENTION), 0)
}

fn state_size(task: &Task, done_calls: usize) -> Result<usize, StoreError> {
    sized(
        &StateItem::new(task, expires(task.created_at)),
        layout::done_calls_size(done_calls),
    )
}

impl State {
    /// Appends a task's finishing to the change stream and to the finished
    /// tasks retention evicts from. The stream keeps what is not announced
    /// yet (DynamoDB's keeps a day of changes), up to `HARD_LIMIT` times
    /// retention when nothing announces.
    fn record_finishing(&mut self, task: &Task, max_finished: usize) {
        self.next_sequence += 1;
        let n = self.next_sequence;
        self.stream
            .push_back((n, task.tenant.clone(), task.task_id));
        self.finished
            .push_back((task.tenant.clone(), task.task_id, n));
        let cap = max_finished.max(1) * HARD_LIMIT;
        while self.stream.len() > cap || (!self.announcing && self.stream.len() > max_finished) {
            self.stream.pop_front();
        }
        self.evict_beyond(max_finished);
    }

    /// Evicts the oldest finished tasks past `max_finished`: announced ones
    /// only while an announcer reads the stream, unless it falls
    /// `HARD_LIMIT` times behind.
    fn evict_beyond(&mut self, max_finished: usize) {
        let cap = max_finished.max(1) * HARD_LIMIT;
        while self.finished.len() > max_finished {
            let Some((_, _, n)) = self.finished.front() else {
                break;
            };
            let announced = self.announced.is_some_and(|a| *n <= a);
            if self.announcing && !announced && self.finished.len() <= cap {
                break;
            }
            let Some((tenant, task_id, _)) = self.finished.pop_front() else {
                break;
            };
            if let Some(entry) = self.tasks.remove(&(tenant.clone(), task_id))
                && let Some(idem) = entry.task.idempotency_key
            {
                self.idempotency.remove(&(tenant, idem));
            }
        }
    }
}

impl MemoryTaskStore {
    /// Keeps the first result of a call, and settles its reservation with
    /// it (as one transaction on AWS); returns the result kept.
    fn put_call_locked(
        &self,
        state: &mut State,
        tenant: &TenantId,
        task_id: TaskId,
        result: &CallResult,
        health: &[Observation],
        bytes: usize,
    ) -> CallResult {
        let settles: Option<Settlement> = result.settles;
        // The health items are small: a unit each, in the same transaction.
        let health_units = health_items(health);
        self.meter.write(match (settles, health_units) {
            (Some(_), _) => with_counters(write_units(bytes) + health_units),
            (None, 0) => write_units(bytes),
            (None, _) => 2 * (write_units(bytes) + health_units),
        });
        // Like an orphan DynamoDB item, a result for a missing task is
        // invisible (but, written, it settles).
        let first = match state.tasks.get_mut(&(tenant.clone(), task_id)) {
            Some(entry) => {
                let first = !entry.calls.contains_key(&result.call_id);
                (first, store_call(entry, result, bytes).clone())
            }
            None => (true, result.clone()),
        };
        if let (true, Some(settle)) = (first.0, settles) {
            state.count(
                tenant,
                settle.day,
                settle.change(result.cost_usd, &result.usage),
            );
        }
        if first.0 {
            self.health.observe(health);
        }
        first.1
    }
}

/// The memory change stream's side of the announcer (see `MemoryFeed`).
impl MemoryTaskStore {
    /// Up to `limit` finishings numbered after `after` (after the checkpoint
    /// when `None`). Numbers are one stream "shard"'s sequence.
    pub(super) fn finishings_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Vec<(u64, TenantId, TaskId)> {
        let state = lock(&self.state);
        let after = after.or(state.announced).unwrap_or(0);
        if let Some((oldest, _, _)) = state.stream.front()
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
            .filter(|(n, _, _)| *n > after)
            .take(limit)
            .cloned()
            .collect()
    }

    pub(super) fn set_announced(&self, through: u64) {
        let mut state = lock(&self.state);
        state.announced = Some(state.announced.map_or(through, |a| a.max(through)));
        // Nothing reads before the checkpoint again.
        while state.stream.front().is_some_and(|(n, _, _)| *n <= through) {
            state.stream.pop_front();
        }
        state.evict_beyond(self.max_finished);
    }

    /// An announcer reads the stream from now on (see `State::announcing`).
    pub(super) fn announced_by_a_reader(&self) {
        lock(&self.state).announcing = true;
    }
}

#[async_trait]
impl TaskStore for MemoryTaskStore {
    async fn create(&self, task: &Task, audit: &AuditEntry) -> Result<(), StoreError> {
        let request_bytes = sized(&RequestItem::new(task, expires(task.created_at)), 0)?;
        let state_bytes = state_size(task, 0)?;
        let idem_bytes = match &task.idempotency_key {
            Some(idem) => Some(sized(
                &IdempotencyItem::new(&task.tenant, idem, task.task_id, expires(task.created_at)),
                0,
            )?),
            None => None,
        };
        let audit_units = write_units(audit_size(audit)?);
        // The request's put, then a transaction of the state and the audit
        // entry; with a key, one transaction of the four. A transaction
        // costs twice its items' units. The new state item enters the list
        // and sweep indexes.
        let (request_units, state_units) = (write_units(request_bytes), write_units(state_bytes));
        self.meter.write(match idem_bytes {
            Some(idem) => 2 * (request_units + state_units + write_units(idem) + audit_units),
            None => request_units + 2 * (state_units + audit_units),
        });
        self.meter.write(2 * INDEX_ENTRY_UNITS);
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
                request_bytes,
                state_bytes,
                other_bytes: 0,
            },
        );
        self.audit.append(audit);
        Ok(())
    }

    async fn get(&self, tenant: &TenantId, task_id: TaskId) -> Result<Option<Task>, StoreError> {
        let state = lock(&self.state);
        let entry = state.tasks.get(&(tenant.clone(), task_id));
        // One strongly consistent query of the request and state items.
        self.meter
            .read(read_halves(entry.map_or(0, Entry::task_bytes), true));
        Ok(entry.map(|e| e.task.clone()))
    }

    async fn get_with_calls(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let state = lock(&self.state);
        let entry = state.tasks.get(&(tenant.clone(), task_id));
        // One query of the task's whole partition.
        self.meter.read(read_halves(
            entry.map_or(0, |e| e.task_bytes() + e.other_bytes),
            true,
        ));
        Ok(entry.map(|e| TaskRecord {
            task: e.task.clone(),
            calls: e.calls.values().cloned().collect(),
        }))
    }

    async fn transition(
        &self,
        seen: &Task,
        to: TaskStatus,
        patch: TaskPatch,
        now: DateTime<Utc>,
    ) -> Result<Task, StoreError> {
        let (tenant, task_id) = (&seen.tenant, seen.task_id);
        let mut state = lock(&self.state);
        let entry = state
            .tasks
            .get_mut(&(tenant.clone(), task_id))
            .ok_or(StoreError::NotFound)?;
        // Applied to a copy first: an update DynamoDB refuses changes nothing
        // (and a refused condition still costs the item's write units, and
        // the read that says why).
        let mut task = entry.task.clone();
        let hold = patch.hold;
        let audit = patch.audit.clone();
        let audit_units = audit.as_ref().map(audit_size).transpose()?.map(write_units);
        // With a hold, the update is a transaction with the two counters;
        // with an audit entry, with its put (twice the units, as any
        // transaction).
        let units = |item: u64| match (hold, audit_units) {
            (Some(_), audit) => with_counters(item) + 2 * audit.unwrap_or(0),
            (None, Some(audit)) => 2 * (item + audit),
            (None, None) => item,
        };
        if let Err(e) = task.apply(to, patch, now) {
            self.meter.write(units(write_units(entry.state_bytes)));
            self.meter.read(read_halves(entry.task_bytes(), true));
            return Err(e.into());
        }
        let bytes = state_size(&task, entry.done.len())?;
        self.meter
            .write(units(write_units(bytes.max(entry.state_bytes))));
        if let Some(hold) = &hold {
            if let Some(period) = state.refuses(tenant, hold) {
                return Err(StoreError::OverBudget(period));
            }
            state.count(tenant, hold.day, hold.change());
        }
        let entry = state
            .tasks
            .get_mut(&(tenant.clone(), task_id))
            .ok_or(StoreError::NotFound)?;
        entry.state_bytes = bytes;
        let before = entry.task.status;
        entry.task = task.clone();
        if to.is_terminal() && entry.sweep_at.take().is_some() {
            // It leaves the sweep index.
            self.meter.write(INDEX_ENTRY_UNITS);
        }
        if TaskStatus::finishes(Some(before), to) {
            state.record_finishing(&task, self.max_finished);
        }
        if let Some(audit) = &audit {
            self.audit.append(audit);
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
        // A lease item is well under 1 KB, written or refused.
        self.meter.write(1);
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
                if entry.leases.insert(call_id, lease.clone()).is_none() {
                    entry.other_bytes += LEASE_BYTES;
                }
                Ok(LeaseOutcome::Acquired)
            }
        }
    }

    async fn put_call(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        result: &CallResult,
        health: &[Observation],
    ) -> Result<CallResult, StoreError> {
        let bytes = call_size(tenant, task_id, result)?;
        let mut state = lock(&self.state);
        Ok(self.put_call_locked(&mut state, tenant, task_id, result, health, bytes))
    }

    async fn finish_with_call(
        &self,
        seen: &Task,
        to: TaskStatus,
        patch: TaskPatch,
        result: &CallResult,
        health: &[Observation],
        now: DateTime<Utc>,
    ) -> Result<Option<Task>, StoreError> {
        if patch.hold.is_some() || patch.audit.is_some() {
            return Ok(None);
        }
        let (tenant, task_id) = (&seen.tenant, seen.task_id);
        let call_bytes = call_size(tenant, task_id, result)?;
        let counters = match result.settles {
            Some(_) => 2 * COUNTER_UNITS,
            None => 0,
        };
        // One transaction of the result, the state, the counters and the
        // health items: each item's units, twice, written or refused.
        let units = |state_bytes: usize| {
            2 * (write_units(call_bytes)
                + write_units(state_bytes)
                + counters
                + health_items(health))
        };
        let mut state = lock(&self.state);
        let Some(entry) = state.tasks.get_mut(&(tenant.clone(), task_id)) else {
            return Ok(None);
        };
        let mut task = entry.task.clone();
        if entry.calls.contains_key(&result.call_id) || task.apply(to, patch, now).is_err() {
            self.meter.write(units(entry.state_bytes));
            return Ok(None);
        }
        let bytes = state_size(&task, entry.done.len())?;
        self.meter.write(units(bytes.max(entry.state_bytes)));
        store_call(entry, result, call_bytes);
        entry.state_bytes = bytes;
        let before = entry.task.status;
        entry.task = task.clone();
        if to.is_terminal() && entry.sweep_at.take().is_some() {
            // It leaves the sweep index.
            self.meter.write(INDEX_ENTRY_UNITS);
        }
        if let Some(settle) = result.settles {
            state.count(
                tenant,
                settle.day,
                settle.change(result.cost_usd, &result.usage),
            );
        }
        self.health.observe(health);
        if TaskStatus::finishes(Some(before), to) {
            state.record_finishing(&task, self.max_finished);
        }
        Ok(Some(task))
    }

    async fn record_call(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        result: &CallResult,
        health: &[Observation],
    ) -> Result<FanIn, StoreError> {
        let bytes = call_size(tenant, task_id, result)?;
        let mut state = lock(&self.state);
        self.put_call_locked(&mut state, tenant, task_id, result, health, bytes);
        let Some(entry) = state.tasks.get_mut(&(tenant.clone(), task_id)) else {
            // The refused update of the missing state item.
            self.meter.write(1);
            return Err(StoreError::NotFound);
        };
        let done_before = entry.done.len() as u32;
        let already_counted = !entry.done.insert(result.call_id);
        // Adding the call id to the state item's set.
        let grown = entry.state_bytes
            + if already_counted {
                0
            } else {
                layout::done_calls_size(1)
            };
        self.meter.write(write_units(grown));
        entry.state_bytes = grown;
        Ok(fan_in_outcome(
            done_before,
            already_counted,
            entry.task.expected_calls,
        ))
    }

    async fn spend(&self, tenant: &TenantId, day: NaiveDate) -> Result<SpendOn, StoreError> {
        // Two strongly consistent gets of small items.
        self.meter.read(2 * read_halves(0, true));
        let state = lock(&self.state);
        Ok(SpendOn {
            day: state.spend_on(tenant, Period::Day, day),
            month: state.spend_on(tenant, Period::Month, day),
        })
    }

    async fn due(
        &self,
        shard: u32,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(TenantId, TaskId)>, StoreError> {
        let partition = keys::sweep_partition(shard);
        // One query of the keys-only sweep index (eventually consistent).
        self.meter.read(read_halves(0, false));
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
        match state.tasks.get_mut(&(tenant.clone(), task_id)) {
            Some(entry) if entry.sweep_at.is_some() => {
                entry.sweep_at = Some(until);
                // The state item, and its sweep index entry moved (a delete and a put).
                self.meter
                    .write(write_units(entry.state_bytes) + 2 * INDEX_ENTRY_UNITS);
            }
            Some(entry) => self.meter.write(write_units(entry.state_bytes)),
            None => self.meter.write(1),
        }
        Ok(())
    }

    async fn add_late_calls(&self, seen: &Task, calls: &[CallResult]) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        let Some(entry) = state.tasks.get_mut(&(seen.tenant.clone(), seen.task_id)) else {
            return Ok(());
        };
        if !seen.status.is_terminal() {
            // Read again, as the AWS backend does, for what it counts now.
            self.meter.read(read_halves(entry.task_bytes(), true));
        }
        if let Some((usage, cost, counted)) = entry.task.with_late_calls(calls) {
            let mut task = entry.task.clone();
            task.usage = usage;
            task.cost_usd = cost;
            task.counted_calls = counted;
            let bytes = state_size(&task, entry.done.len())?;
            self.meter.write(write_units(bytes.max(entry.state_bytes)));
            entry.state_bytes = bytes;
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
        // As the AWS backend: the list index holds keys only (a 1 MB index
        // page holds thousands of them, so no page stops short at these
        // limits), and the tasks are then read by key.
        let more = tasks.len() > limit as usize;
        let items: Vec<Task> = tasks.into_iter().take(limit as usize).cloned().collect();
        // A keys-only query per list shard, then each task's two items by key.
        self.meter
            .read(u64::from(keys::LIST_SHARDS) * read_halves(0, false));
        for task in &items {
            if let Some(entry) = state.tasks.get(&(task.tenant.clone(), task.task_id)) {
                self.meter.read(read_halves(entry.request_bytes, true));
                self.meter.read(read_halves(entry.state_bytes, true));
            }
        }
        let next = if more {
            items.last().map(|t| t.task_id.to_string())
        } else {
            None
        };
        Ok(Page { items, next })
    }
}

#[async_trait]
impl RateLimiter for MemoryTaskStore {
    async fn take(
        &self,
        holder: &Holder,
        draws: &[Draw],
        now: DateTime<Utc>,
    ) -> Result<Take, StoreError> {
        // One small item, written (or its condition failing) once.
        self.meter.write(1);
        self.limits.take(holder, draws, now).await
    }

    async fn give_back(
        &self,
        holder: &Holder,
        draws: &[Draw],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.meter.write(1);
        self.limits.give_back(holder, draws, now).await
    }

    async fn peek(
        &self,
        holder: &Holder,
        buckets: &[&'static str],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        self.limits.peek(holder, buckets).await
    }
}

#[async_trait]
impl Rotation for MemoryTaskStore {
    async fn next(
        &self,
        key: &RotationKey,
        by: u64,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        // One small item, updated once.
        self.meter.write(1);
        self.rotation.next(key, by, now).await
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
        store
            .create(&task, &AuditEntry::task_created_by_submitter(&task))
            .await
            .unwrap();
        let patch = TaskPatch {
            result: Some(AggregateResult {
                strategy: AggregationStrategy::First,
                output: "r".repeat(410_000),
                output_ref: None,
                confidence: 1.0,
                candidates: Vec::new(),
                conflicts: Vec::new(),
            }),
            ..TaskPatch::default()
        };
        let refused = store
            .transition(&task, TaskStatus::Failed, patch, Utc::now())
            .await;
        assert!(
            matches!(refused, Err(StoreError::ItemTooLarge { bytes }) if bytes > 410_000),
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
    async fn with_an_announcer_a_finished_task_stays_until_it_is_announced() {
        let store = MemoryTaskStore::with_retention(1);
        store.announced_by_a_reader();
        let tenant = TenantId::parse("t").unwrap();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let request: TaskRequest =
                serde_json::from_value(serde_json::json!({"task_type": "text", "content": "x"}))
                    .unwrap();
            let (spec, key) = request.parse().unwrap();
            let task = Task::new(tenant.clone(), spec, key, "u", Utc::now());
            store
                .create(&task, &AuditEntry::task_created_by_submitter(&task))
                .await
                .unwrap();
            store
                .transition(
                    &task,
                    TaskStatus::Cancelled,
                    TaskPatch::default(),
                    Utc::now(),
                )
                .await
                .unwrap();
            ids.push(task.task_id);
        }
        for id in &ids {
            assert!(
                store.get(&tenant, *id).await.unwrap().is_some(),
                "not announced yet"
            );
        }
        assert_eq!(store.finishings_after(None, 10).len(), 3);
        store.set_announced(2);
        assert!(
            store.get(&tenant, ids[0]).await.unwrap().is_none(),
            "announced, evicted"
        );
        assert!(store.get(&tenant, ids[1]).await.unwrap().is_none());
        assert!(
            store.get(&tenant, ids[2]).await.unwrap().is_some(),
            "not announced"
        );
        let left: Vec<TaskId> = store
            .finishings_after(None, 10)
            .into_iter()
            .map(|(_, _, id)| id)
            .collect();
        assert_eq!(left, [ids[2]], "the stream keeps what is not announced");
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
            store
                .create(&task, &AuditEntry::task_created_by_submitter(&task))
                .await
                .unwrap();
            ids.push(task.task_id);
        }
        for id in &ids[..3] {
            let task = store.get(&tenant, *id).await.unwrap().unwrap();
            store
                .transition(
                    &task,
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
