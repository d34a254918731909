use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
    Update,
};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_dynamo::{from_item, to_attribute_value, to_item};

use super::{DynamoAudit, DynamoHealth, describe};
use crate::adapters::layout;
use crate::adapters::layout::keys::{self, GSI1, GSI1_PK, GSI1_SK, PK, SK};
use crate::adapters::layout::{
    CallItem, DONE_CALLS, IdempotencyItem, LeaseItem, RequestItem, StateItem, TaskState,
    merge_newest,
};
use crate::domain::health::Observation;
use crate::domain::{
    AuditEntry, CallId, CallLease, CallResult, Hold, LeaseOutcome, Period, Spend, Task, TaskId,
    TaskPatch, TaskStatus, TenantId, TransitionError, Usd,
};
use crate::ports::task_store::fan_in_outcome;
use crate::ports::{FanIn, Page, SpendOn, StoreError, TaskRecord, TaskStore};

type Item = HashMap<String, AttributeValue>;

/// Tasks, call results and idempotency records in the context table.
#[derive(Clone)]
pub struct DynamoTaskStore {
    client: Client,
    table: String,
    /// How long items live after their task is created (the table's TTL).
    retention: Duration,
    /// The audit logs, in the same table: an action's entry goes into the
    /// action's own write.
    audit: DynamoAudit,
    /// Agents' health, in the same table: a result's counts go into the
    /// result's own write.
    health: DynamoHealth,
}

impl DynamoTaskStore {
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

    pub fn new(client: Client, table: impl Into<String>) -> Self {
        let table = table.into();
        DynamoTaskStore {
            audit: DynamoAudit::new(client.clone(), table.clone()),
            health: DynamoHealth::new(client.clone(), table.clone()),
            client,
            table,
            retention: Self::DEFAULT_RETENTION,
        }
    }

    /// Audit entries written with tasks go through `audit` (its retention).
    pub fn with_audit(mut self, audit: DynamoAudit) -> Self {
        self.audit = audit;
        self
    }

    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    fn expires_at(&self, created: DateTime<Utc>) -> i64 {
        created.timestamp() + self.retention.as_secs() as i64
    }

    fn key(pk: String, sk: &str) -> Item {
        HashMap::from([
            (PK.to_owned(), AttributeValue::S(pk)),
            (SK.to_owned(), AttributeValue::S(sk.to_owned())),
        ])
    }

    /// An update of a task's item (the caller adds the expressions).
    fn update_task(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(
                keys::task_pk(tenant, task_id),
                keys::TASK_SK,
            )))
    }

    async fn get_item(&self, pk: String, sk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?;
        Ok(out.item)
    }

    /// Explains a refused transition by the task's current status.
    async fn refused(&self, tenant: &TenantId, task_id: TaskId, to: TaskStatus) -> StoreError {
        match self.get(tenant, task_id).await {
            Err(e) => e,
            Ok(None) => StoreError::NotFound,
            Ok(Some(task)) => StoreError::Transition(TransitionError {
                from: task.status,
                to,
            }),
        }
    }

    fn request_item(&self, task: &Task) -> Result<Item, StoreError> {
        to_item(RequestItem::new(task, self.expires_at(task.created_at))).map_err(encode)
    }

    fn state_item(&self, task: &Task) -> Result<Item, StoreError> {
        to_item(StateItem::new(task, self.expires_at(task.created_at))).map_err(encode)
    }

    /// A conditional put of a new item; `AlreadyExists` when it exists.
    async fn put_new(&self, item: Item) -> Result<(), StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item.clone()))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::AlreadyExists)
            }
            Err(e) => Err(write_error(e, || sdk_item_size(&item))),
        }
    }

    /// An update adding `change` to the tenant's counter for `period` (of
    /// `day`); with `most`, only while what it has committed is at most that.
    fn count(
        &self,
        tenant: &TenantId,
        period: Period,
        day: NaiveDate,
        change: Spend,
        most: Option<Usd>,
    ) -> Result<TransactWriteItem, StoreError> {
        let number = |amount: Usd| AttributeValue::N(amount.amount().normalize().to_string());
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::key(
                keys::spend_pk(tenant),
                &keys::spend_sk(period, day),
            )))
            .update_expression(
                "ADD #spent :spent, #reserved :reserved, #committed :committed \
                 SET #expires = if_not_exists(#expires, :expires)",
            )
            .expression_attribute_names("#spent", SPENT)
            .expression_attribute_names("#reserved", RESERVED)
            .expression_attribute_names("#committed", COMMITTED)
            .expression_attribute_names("#expires", "expires_at")
            .expression_attribute_values(":spent", number(change.spent))
            .expression_attribute_values(":reserved", number(change.reserved))
            .expression_attribute_values(":committed", number(change.committed()))
            .expression_attribute_values(
                ":expires",
                AttributeValue::N(counter_expiry(period, day).to_string()),
            );
        if let Some(most) = most {
            update = update
                .condition_expression("attribute_not_exists(#committed) OR #committed <= :most")
                .expression_attribute_values(":most", number(most));
        }
        Ok(TransactWriteItem::builder()
            .update(update.build().map_err(backend)?)
            .build())
    }

    /// Writes `items` as one transaction; a transaction that lost to a
    /// concurrent one on the same item (hot counters) is tried again.
    /// Returns each item's cancellation reason when a condition failed.
    async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> Result<Result<(), Vec<Option<String>>>, StoreError> {
        let mut delay = Duration::from_millis(10);
        for _ in 0..TRANSACTION_TRIES {
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let cancelled = match result {
                Ok(_) => return Ok(Ok(())),
                Err(e) => match e.as_service_error() {
                    Some(TransactWriteItemsError::TransactionCanceledException(c)) => c
                        .cancellation_reasons()
                        .iter()
                        .map(|r| {
                            if let Some(message) = r.message() {
                                tracing::debug!(code = ?r.code(), message, "transaction item refused");
                            }
                            r.code().map(str::to_owned)
                        })
                        .collect::<Vec<_>>(),
                    Some(TransactWriteItemsError::TransactionInProgressException(_)) => {
                        vec![Some(CONFLICT.to_owned())]
                    }
                    _ => return Err(backend(e)),
                },
            };
            if !cancelled.iter().any(|c| c.as_deref() == Some(CONFLICT)) {
                return Ok(Err(cancelled));
            }
            let jitter = rand::random_range(0..=delay.as_millis() as u64);
            tokio::time::sleep(delay + Duration::from_millis(jitter)).await;
            delay *= 2;
        }
        Err(StoreError::Backend(format!(
            "a transaction kept conflicting with others on the same items; gave up after {TRANSACTION_TRIES} tries"
        )))
    }

    /// A transition's update with what goes with it, in one transaction:
    /// its hold on the day's and the month's counters, its audit entry; all
    /// of it, or nothing.
    async fn transition_transacted(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        to: TaskStatus,
        update: Update,
        hold: Option<&Hold>,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError> {
        if let Some(period) = hold.and_then(|h| h.refused_by(|_| Usd::ZERO)) {
            // The hold alone is above the budget: nothing to try.
            return Err(StoreError::OverBudget(period));
        }
        let mut items = vec![TransactWriteItem::builder().update(update).build()];
        if let Some(hold) = hold {
            for period in Period::ALL {
                items.push(self.count(
                    tenant,
                    period,
                    hold.day,
                    hold.change(),
                    hold.room_needed(period),
                )?);
            }
        }
        if let Some(entry) = audit {
            items.push(self.audit.put(entry)?);
        }
        let failed = match self.transact(items).await? {
            Ok(()) => return Ok(()),
            Err(reasons) => reasons,
        };
        if is_condition_failure(&failed, 0) {
            return Err(self.refused(tenant, task_id, to).await);
        }
        let over = Period::ALL
            .into_iter()
            .enumerate()
            .find(|(i, _)| hold.is_some() && is_condition_failure(&failed, i + 1));
        match over {
            Some((_, period)) => Err(StoreError::OverBudget(period)),
            None => Err(StoreError::Backend(format!(
                "the transition's transaction was cancelled: {failed:?}"
            ))),
        }
    }

    /// Writes a new item unless one is there: `Duplicate` with the one
    /// there when the store returns it.
    async fn put_first(&self, item: Item) -> Result<Written, StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item.clone()))
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match put {
            Ok(_) => Ok(Written::New),
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(first)) => {
                    Ok(Written::Duplicate(first.item().cloned()))
                }
                _ => Err(write_error(e, || sdk_item_size(&item))),
            },
        }
    }

    /// As `put_first`, in one transaction with `extra` (the settlement of
    /// the result's reservation, its agents' health counts): a duplicate
    /// writes none of them.
    async fn put_first_with(
        &self,
        item: Item,
        extra: Vec<TransactWriteItem>,
    ) -> Result<Written, StoreError> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(backend)?;
        let mut items = vec![TransactWriteItem::builder().put(put).build()];
        items.extend(extra);
        match self.transact(items).await? {
            Ok(()) => Ok(Written::New),
            Err(reasons)
                if reasons
                    .first()
                    .is_some_and(|c| c.as_deref() == Some("ConditionalCheckFailed")) =>
            {
                // A transaction returns no item.
                Ok(Written::Duplicate(None))
            }
            Err(reasons) => Err(StoreError::Backend(format!(
                "the result's transaction was cancelled: {reasons:?}"
            ))),
        }
    }

    /// Reads tasks by key (their request and state items), in `ids`' order;
    /// a task with no state item is left out.
    async fn read_tasks(&self, tenant: &TenantId, ids: &[TaskId]) -> Result<Vec<Task>, StoreError> {
        let mut items: HashMap<(String, String), Item> = HashMap::new();
        // BatchGetItem takes 100 keys a call: 50 tasks.
        for chunk in ids.chunks(50) {
            let mut keys_and_attributes =
                aws_sdk_dynamodb::types::KeysAndAttributes::builder().consistent_read(true);
            for id in chunk {
                let pk = keys::task_pk(tenant, *id);
                keys_and_attributes = keys_and_attributes
                    .keys(Self::key(pk.clone(), keys::REQUEST_SK))
                    .keys(Self::key(pk, keys::TASK_SK));
            }
            let mut request = HashMap::from([(
                self.table.clone(),
                keys_and_attributes.build().map_err(backend)?,
            )]);
            // Keys DynamoDB did not get to (past 16 MB, or throttled) come back
            // as unprocessed: asked again, with a pause.
            for attempt in 0..8 {
                let out = self
                    .client
                    .batch_get_item()
                    .set_request_items(Some(request))
                    .send()
                    .await
                    .map_err(backend)?;
                for item in out
                    .responses
                    .unwrap_or_default()
                    .remove(&self.table)
                    .unwrap_or_default()
                {
                    let key = |name: &str| {
                        item.get(name)
                            .and_then(|v| v.as_s().ok())
                            .cloned()
                            .unwrap_or_default()
                    };
                    items.insert((key(PK), key(SK)), item);
                }
                request = out.unprocessed_keys.unwrap_or_default();
                if request.values().all(|k| k.keys.is_empty()) {
                    break;
                }
                if attempt == 7 {
                    return Err(StoreError::Backend(
                        "list: keys still unprocessed after 8 tries".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(25 << attempt)).await;
            }
        }
        let mut tasks = Vec::with_capacity(ids.len());
        for id in ids {
            let pk = keys::task_pk(tenant, *id);
            let state = items.remove(&(pk.clone(), keys::TASK_SK.to_owned()));
            let request = items.remove(&(pk, keys::REQUEST_SK.to_owned()));
            if let (Some(state), Some(request)) = (state, request) {
                tasks.push(joined(state, request)?);
            }
        }
        Ok(tasks)
    }
}

/// What a conditional put of a new item did.
enum Written {
    New,
    /// The item was there already: the one there, when the store said.
    Duplicate(Option<Item>),
}

/// The spend counters' attributes; `committed` is `spent + reserved`, kept
/// apart because a condition cannot add.
const SPENT: &str = "spent";
const RESERVED: &str = "reserved";
const COMMITTED: &str = "committed";
/// Tries of a transaction that conflicts with concurrent ones.
const TRANSACTION_TRIES: u32 = 6;
const CONFLICT: &str = "TransactionConflict";

/// When a spend counter expires: a day's 40 days after it, a month's 400.
fn counter_expiry(period: Period, day: NaiveDate) -> i64 {
    let start = day.and_time(chrono::NaiveTime::MIN).and_utc().timestamp();
    let days = match period {
        Period::Day => 40,
        Period::Month => 400,
    };
    start + days * 24 * 3600
}

/// A counter's amount (DynamoDB numbers are exact decimals).
fn amount_of(item: &Item, name: &str) -> Result<Usd, StoreError> {
    let Some(value) = item.get(name) else {
        return Ok(Usd::ZERO);
    };
    let text = value
        .as_n()
        .map_err(|_| StoreError::Backend(format!("spend counter `{name}` is not a number")))?;
    text.parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(text))
        .map(Usd::new)
        .map_err(|e| StoreError::Backend(format!("spend counter `{name}`: {e}")))
}

fn spend_of(item: Option<Item>) -> Result<Spend, StoreError> {
    let item = item.unwrap_or_default();
    Ok(Spend {
        spent: amount_of(&item, SPENT)?,
        reserved: amount_of(&item, RESERVED)?,
    })
}

fn encode(err: serde_dynamo::Error) -> StoreError {
    StoreError::Backend(format!("cannot encode item: {err}"))
}

fn decode(err: serde_dynamo::Error) -> StoreError {
    StoreError::Backend(format!("cannot decode item: {err}"))
}

fn backend<E: std::error::Error>(err: E) -> StoreError {
    StoreError::Backend(describe(err))
}

/// A write DynamoDB refused for the item's size becomes `ItemTooLarge`,
/// with `size` (what was written, as DynamoDB counts it); anything else is
/// a backend error.
fn write_error<E, R>(err: SdkError<E, R>, size: impl FnOnce() -> usize) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let too_large = err.as_service_error().is_some_and(|e| {
        e.code() == Some("ValidationException")
            && e.message().is_some_and(|m| m.contains("Item size"))
    });
    if too_large {
        return StoreError::ItemTooLarge { bytes: size() };
    }
    backend(err)
}

/// `layout::item_size` for an item already in the SDK's form.
fn sdk_item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + sdk_value_size(v)).sum()
}

fn sdk_value_size(value: &AttributeValue) -> usize {
    layout::value_size(&serde_dynamo::AttributeValue::from(value.clone()))
}

/// Whether a cancelled transaction's item `i` failed its condition.
fn is_condition_failure(reasons: &[Option<String>], i: usize) -> bool {
    reasons
        .get(i)
        .is_some_and(|c| c.as_deref() == Some("ConditionalCheckFailed"))
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn state_from(item: Item) -> Result<TaskState, StoreError> {
    from_item::<_, StateItem>(item)
        .map(|i| i.state)
        .map_err(decode)
}

fn joined(state: Item, request: Item) -> Result<Task, StoreError> {
    let request: RequestItem = from_item(request).map_err(decode)?;
    Ok(state_from(state)?.joined(&request))
}

#[async_trait]
impl TaskStore for DynamoTaskStore {
    #[tracing::instrument(skip_all, fields(tenant = %task.tenant, task_id = %task.task_id))]
    async fn create(&self, task: &Task, audit: &AuditEntry) -> Result<(), StoreError> {
        let request = self.request_item(task)?;
        let state = self.state_item(task)?;
        let put = |item: Item| -> Result<TransactWriteItem, StoreError> {
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(backend)?;
            Ok(TransactWriteItem::builder().put(put).build())
        };
        let Some(idem) = &task.idempotency_key else {
            // The request first, in its own put: a transaction costs twice
            // its items' units, and the request is the large one. The state
            // item is what makes the task exist (a request left alone by a
            // crash is never read, and expires), and it is written with the
            // audit entry, so that neither is kept without the other.
            self.put_new(request).await?;
            return match self
                .transact(vec![put(state)?, self.audit.put(audit)?])
                .await?
            {
                Ok(()) => Ok(()),
                Err(reasons) if is_condition_failure(&reasons, 0) => Err(StoreError::AlreadyExists),
                Err(reasons) => Err(StoreError::Backend(format!(
                    "the task's creation was cancelled: {reasons:?}"
                ))),
            };
        };
        // The task, its idempotency record and its audit entry are written
        // together or not at all: a retry with a used key leaves nothing.
        let idem_pk = keys::idempotency_pk(&task.tenant, idem);
        let idem_item = to_item(IdempotencyItem::new(
            &task.tenant,
            idem,
            task.task_id,
            self.expires_at(task.created_at),
        ))
        .map_err(encode)?;
        let items = vec![
            put(request)?,
            put(state)?,
            put(idem_item)?,
            self.audit.put(audit)?,
        ];
        match self.transact(items).await? {
            Ok(()) => Ok(()),
            Err(reasons) if is_condition_failure(&reasons, 2) => {
                // The key was used: by which task?
                let existing = self
                    .client
                    .get_item()
                    .table_name(&self.table)
                    .set_key(Some(Self::key(idem_pk, keys::IDEM_SK)))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(backend)?;
                match existing.item {
                    Some(item) => {
                        let idem: IdempotencyItem = from_item(item).map_err(decode)?;
                        Err(StoreError::DuplicateIdempotencyKey(idem.task_id))
                    }
                    None => Err(StoreError::AlreadyExists),
                }
            }
            Err(reasons)
                if is_condition_failure(&reasons, 0) || is_condition_failure(&reasons, 1) =>
            {
                Err(StoreError::AlreadyExists)
            }
            Err(reasons) => Err(StoreError::Backend(format!(
                "the task's creation was cancelled: {reasons:?}"
            ))),
        }
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant, task_id = %task_id))]
    async fn get(&self, tenant: &TenantId, task_id: TaskId) -> Result<Option<Task>, StoreError> {
        // The request and the state, which sort last in the task's partition.
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk >= :req")
            .expression_attribute_values(":pk", s(keys::task_pk(tenant, task_id)))
            .expression_attribute_values(":req", s(keys::REQUEST_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?;
        let (mut request, mut state) = (None, None);
        for item in out.items.unwrap_or_default() {
            match item.get(SK).and_then(|v| v.as_s().ok()).map(String::as_str) {
                Some(keys::REQUEST_SK) => request = Some(item),
                Some(keys::TASK_SK) => state = Some(item),
                _ => {}
            }
        }
        match (state, request) {
            (Some(state), Some(request)) => joined(state, request).map(Some),
            _ => Ok(None),
        }
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant, task_id = %task_id))]
    async fn get_with_calls(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let (mut request, mut state) = (None, None);
        let mut calls = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(keys::task_pk(tenant, task_id)))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(backend)?;
            for item in out.items.unwrap_or_default() {
                let sk = item
                    .get(SK)
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default();
                if sk == keys::TASK_SK {
                    state = Some(item);
                } else if sk == keys::REQUEST_SK {
                    request = Some(item);
                } else if sk.starts_with(keys::CALL_SK_PREFIX) {
                    let call: CallItem = from_item(item).map_err(decode)?;
                    calls.push(call.result);
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        match (state, request) {
            (Some(state), Some(request)) => Ok(Some(TaskRecord {
                task: joined(state, request)?,
                calls,
            })),
            _ => Ok(None),
        }
    }

    #[tracing::instrument(skip_all, fields(tenant = %seen.tenant, task_id = %seen.task_id, to = %to))]
    async fn transition(
        &self,
        seen: &Task,
        to: TaskStatus,
        patch: TaskPatch,
        now: DateTime<Utc>,
    ) -> Result<Task, StoreError> {
        let (tenant, task_id) = (&seen.tenant, seen.task_id);
        let allowed = TaskStatus::predecessors(to);
        if allowed.is_empty() {
            return Err(self.refused(tenant, task_id, to).await);
        }
        let hold = patch.hold;
        let audit = patch.audit.clone();
        let transacted = hold.is_some() || audit.is_some();
        // A transaction returns no item: the task as written is `seen` with
        // the patch applied (the condition checked that `seen`'s status may
        // become `to`; the plan is written only from queued).
        let applied = match transacted {
            true => {
                let mut task = seen.clone();
                task.apply(to, patch.clone(), now)?;
                Some(task)
            }
            false => None,
        };
        let StateUpdate {
            expression: update_expression,
            condition,
            names,
            values,
            written,
        } = state_update(to, &allowed, patch, now)?;
        if transacted {
            let update = Update::builder()
                .table_name(&self.table)
                .set_key(Some(Self::key(
                    keys::task_pk(tenant, task_id),
                    keys::TASK_SK,
                )))
                .update_expression(update_expression)
                .condition_expression(condition)
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(Some(values))
                .build()
                .map_err(backend)?;
            self.transition_transacted(tenant, task_id, to, update, hold.as_ref(), audit.as_ref())
                .await?;
            return Ok(applied.unwrap_or_else(|| seen.clone()));
        }
        let result = self
            .update_task(tenant, task_id)
            .update_expression(update_expression)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => Ok(state_from(out.attributes.unwrap_or_default())?.applied_to(seen)),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(self.refused(tenant, task_id, to).await)
            }
            Err(e) => Err(write_error(e, || written)),
        }
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant, task_id = %task_id, call_id = %call_id))]
    async fn lease_call(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        call_id: CallId,
        lease: &CallLease,
        now: DateTime<Utc>,
    ) -> Result<LeaseOutcome, StoreError> {
        let item = to_item(LeaseItem::new(
            tenant,
            task_id,
            call_id,
            lease,
            self.expires_at(now),
        ))
        .map_err(encode)?;
        // The same rule as `CallLease::may_be_taken_by`, checked atomically.
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR until_ms <= :now OR holder = :me")
            .expression_attribute_values(
                ":now",
                AttributeValue::N(now.timestamp_millis().to_string()),
            )
            .expression_attribute_values(":me", s(lease.holder.as_str()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let existing = match put {
            Ok(_) => return Ok(LeaseOutcome::Acquired),
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(held)) => {
                    held.item().cloned()
                }
                _ => return Err(backend(e)),
            },
        };
        let existing = match existing {
            Some(item) => item,
            None => self
                .get_item(keys::task_pk(tenant, task_id), &keys::lease_sk(call_id))
                .await?
                .unwrap_or_default(),
        };
        let held: LeaseItem = from_item(existing).map_err(decode)?;
        let until = DateTime::from_timestamp_millis(held.until_ms).unwrap_or(now);
        Ok(LeaseOutcome::Held { until })
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant, task_id = %task_id, call_id = %result.call_id))]
    async fn put_call(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        result: &CallResult,
        health: &[Observation],
    ) -> Result<CallResult, StoreError> {
        let item: Item = to_item(CallItem::new(
            tenant,
            task_id,
            result,
            self.expires_at(result.finished_at),
        ))
        .map_err(encode)?;
        let mut extra = Vec::new();
        if let Some(settle) = result.settles {
            let change = settle.change(result.cost_usd, &result.usage);
            for period in Period::ALL {
                extra.push(self.count(tenant, period, settle.day, change, None)?);
            }
        }
        extra.extend(self.health.writes(health)?);
        let written = match extra.is_empty() {
            true => self.put_first(item).await?,
            false => self.put_first_with(item, extra).await?,
        };
        // A duplicate: the first result stands, and is what the caller goes on with.
        let first = match written {
            Written::New => return Ok(result.clone()),
            Written::Duplicate(Some(item)) => item,
            Written::Duplicate(None) => match self
                .get_item(
                    keys::task_pk(tenant, task_id),
                    &keys::call_sk(result.call_id),
                )
                .await?
            {
                Some(item) => item,
                None => return Ok(result.clone()),
            },
        };
        Ok(from_item::<_, CallItem>(first).map_err(decode)?.result)
    }

    #[tracing::instrument(skip_all, fields(tenant = %seen.tenant, task_id = %seen.task_id, call_id = %result.call_id))]
    async fn finish_with_call(
        &self,
        seen: &Task,
        to: TaskStatus,
        patch: TaskPatch,
        result: &CallResult,
        health: &[Observation],
        now: DateTime<Utc>,
    ) -> Result<Option<Task>, StoreError> {
        let (tenant, task_id) = (&seen.tenant, seen.task_id);
        let allowed = TaskStatus::predecessors(to);
        if allowed.is_empty() || patch.hold.is_some() || patch.audit.is_some() {
            return Ok(None);
        }
        // A transaction returns no item: the task as written is `seen` with
        // the patch applied, which the condition checks may be.
        let mut finished = seen.clone();
        if finished.apply(to, patch.clone(), now).is_err() {
            return Ok(None);
        }
        let item: Item = to_item(CallItem::new(
            tenant,
            task_id,
            result,
            self.expires_at(result.finished_at),
        ))
        .map_err(encode)?;
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(backend)?;
        let state = state_update(to, &allowed, patch, now)?;
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::key(
                keys::task_pk(tenant, task_id),
                keys::TASK_SK,
            )))
            .update_expression(state.expression)
            .condition_expression(state.condition)
            .set_expression_attribute_names(Some(state.names))
            .set_expression_attribute_values(Some(state.values))
            .build()
            .map_err(backend)?;
        let mut items = vec![
            TransactWriteItem::builder().put(put).build(),
            TransactWriteItem::builder().update(update).build(),
        ];
        if let Some(settle) = result.settles {
            let change = settle.change(result.cost_usd, &result.usage);
            for period in Period::ALL {
                items.push(self.count(tenant, period, settle.day, change, None)?);
            }
        }
        items.extend(self.health.writes(health)?);
        match self.transact(items).await? {
            Ok(()) => Ok(Some(finished)),
            // The result is there already, or the task moved on.
            Err(reasons)
                if is_condition_failure(&reasons, 0) || is_condition_failure(&reasons, 1) =>
            {
                Ok(None)
            }
            Err(reasons) => Err(StoreError::Backend(format!(
                "the finishing transaction was cancelled: {reasons:?}"
            ))),
        }
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant, task_id = %task_id, call_id = %result.call_id))]
    async fn record_call(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        result: &CallResult,
        health: &[Observation],
    ) -> Result<FanIn, StoreError> {
        // The result first, so that the call completing the fan-in finds
        // every counted call's result in place.
        self.put_call(tenant, task_id, result, health).await?;
        // Count the call: adding to a string set is idempotent, and updates
        // of one item are serialized, so exactly one call sees the set go
        // from expected - 1 to expected.
        let me = result.call_id.to_string();
        let counted = self
            .update_task(tenant, task_id)
            .update_expression("ADD #done :me")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#done", DONE_CALLS)
            .expression_attribute_values(":me", AttributeValue::Ss(vec![me.clone()]))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        let before = match counted {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                return Err(StoreError::NotFound);
            }
            Err(e) => return Err(backend(e)),
        };
        let done_before = before.get(DONE_CALLS).and_then(|v| v.as_ss().ok());
        let already_counted = done_before.is_some_and(|set| set.contains(&me));
        let expected = before
            .get("expected_calls")
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok());
        Ok(fan_in_outcome(
            done_before.map_or(0, |set| set.len() as u32),
            already_counted,
            expected,
        ))
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant, %day))]
    async fn spend(&self, tenant: &TenantId, day: NaiveDate) -> Result<SpendOn, StoreError> {
        let pk = keys::spend_pk(tenant);
        let (day_sk, month_sk) = (
            keys::spend_sk(Period::Day, day),
            keys::spend_sk(Period::Month, day),
        );
        let (daily, monthly) = tokio::try_join!(
            self.get_item(pk.clone(), &day_sk),
            self.get_item(pk.clone(), &month_sk),
        )?;
        Ok(SpendOn {
            day: spend_of(daily)?,
            month: spend_of(monthly)?,
        })
    }

    #[tracing::instrument(skip_all, fields(shard))]
    async fn due(
        &self,
        shard: u32,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(TenantId, TaskId)>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(keys::SWEEP_INDEX)
            .key_condition_expression("#shard = :shard AND #at <= :now")
            .expression_attribute_names("#shard", keys::SWEEP_SHARD)
            .expression_attribute_names("#at", keys::SWEEP_AT)
            .expression_attribute_values(":shard", s(keys::sweep_partition(shard)))
            .expression_attribute_values(
                ":now",
                AttributeValue::N(now.timestamp_millis().to_string()),
            )
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(backend)?;
        Ok(out
            .items
            .unwrap_or_default()
            .iter()
            .filter_map(|item| item.get(PK)?.as_s().ok())
            .filter_map(|pk| keys::parse_task_pk(pk))
            .collect())
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant, task_id = %task_id))]
    async fn postpone(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let result = self
            .update_task(tenant, task_id)
            .update_expression("SET #at = :at")
            // Only while it is in the index: a finished task stays out.
            .condition_expression("attribute_exists(#at)")
            .expression_attribute_names("#at", keys::SWEEP_AT)
            .expression_attribute_values(
                ":at",
                AttributeValue::N(until.timestamp_millis().to_string()),
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(backend(e)),
        }
    }

    #[tracing::instrument(skip_all, fields(tenant = %seen.tenant, task_id = %seen.task_id))]
    async fn add_late_calls(&self, seen: &Task, calls: &[CallResult]) -> Result<(), StoreError> {
        let mut task = seen.clone();
        if !task.status.is_terminal() {
            // Read before it ended: what it counts now is in the store.
            match self.get(&seen.tenant, seen.task_id).await? {
                Some(current) => task = current,
                None => return Ok(()),
            }
        }
        // Each try is conditional on the counted set the totals were computed
        // from (it only grows), so concurrent late calls are each added once.
        for _ in 0..5 {
            let Some((usage, cost, counted)) = task.with_late_calls(calls) else {
                return Ok(());
            };
            let terminal: Vec<TaskStatus> = TaskStatus::ALL
                .into_iter()
                .filter(|s| s.is_terminal())
                .collect();
            let mut update = self
                .update_task(&task.tenant, task.task_id)
                .expression_attribute_names("#status", "status")
                .expression_attribute_names("#usage", "usage")
                .expression_attribute_names("#counted", "counted_calls")
                .expression_attribute_names("#cost", "cost_usd")
                .expression_attribute_values(":usage", to_attribute_value(usage).map_err(encode)?)
                .expression_attribute_values(
                    ":counted",
                    to_attribute_value(&counted).map_err(encode)?,
                );
            let mut placeholders = Vec::new();
            for (i, status) in terminal.iter().enumerate() {
                let name = format!(":end{i}");
                update = update.expression_attribute_values(
                    &name,
                    to_attribute_value(status).map_err(encode)?,
                );
                placeholders.push(name);
            }
            let unchanged = if task.counted_calls.is_empty() {
                "attribute_not_exists(#counted)".to_owned()
            } else {
                update = update.expression_attribute_values(
                    ":n",
                    AttributeValue::N(task.counted_calls.len().to_string()),
                );
                "size(#counted) = :n".to_owned()
            };
            let set = match cost {
                Some(cost) => {
                    update = update.expression_attribute_values(
                        ":cost",
                        to_attribute_value(cost).map_err(encode)?,
                    );
                    "SET #usage = :usage, #counted = :counted, #cost = :cost".to_owned()
                }
                None => "SET #usage = :usage, #counted = :counted REMOVE #cost".to_owned(),
            };
            let result = update
                .update_expression(set)
                .condition_expression(format!(
                    "#status IN ({}) AND {unchanged}",
                    placeholders.join(", ")
                ))
                .send()
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
                {
                    match self.get(&task.tenant, task.task_id).await? {
                        Some(current) => task = current,
                        None => return Ok(()),
                    }
                }
                Err(e) => return Err(backend(e)),
            }
        }
        Err(StoreError::Backend(
            "late calls: the task kept changing; gave up after 5 tries".into(),
        ))
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant))]
    async fn list(
        &self,
        tenant: &TenantId,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<Task>, StoreError> {
        let limit = limit.clamp(1, 1000);
        let before = cursor
            .map(TaskId::parse)
            .transpose()
            .map_err(|_| StoreError::Backend("bad cursor".into()))?;
        // The tenant's tasks are spread over the index's shards: the newest
        // of each, merged.
        let shards = futures::future::join_all(
            (0..keys::LIST_SHARDS).map(|shard| self.list_shard(tenant, shard, before, limit)),
        )
        .await;
        let shards = shards.into_iter().collect::<Result<Vec<_>, _>>()?;
        let (ids, below) = merge_newest(shards, limit as usize);
        let items = self.read_tasks(tenant, &ids).await?;
        Ok(Page {
            items,
            next: below.map(|id| id.to_string()),
        })
    }
}

impl DynamoTaskStore {
    /// One list shard's newest task ids below `before`, at most `limit + 1`,
    /// and where the query stopped if before the shard's end.
    async fn list_shard(
        &self,
        tenant: &TenantId,
        shard: u32,
        before: Option<TaskId>,
        limit: u32,
    ) -> Result<layout::ShardPage<TaskId>, StoreError> {
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(GSI1)
            .expression_attribute_names("#p", GSI1_PK)
            .expression_attribute_values(":p", s(keys::tenant_tasks_shard(tenant, shard)))
            .scan_index_forward(false)
            .limit(limit as i32 + 1);
        query = match before {
            Some(before) => query
                .key_condition_expression("#p = :p AND #s < :c")
                .expression_attribute_names("#s", GSI1_SK)
                .expression_attribute_values(":c", s(before.to_string())),
            None => query.key_condition_expression("#p = :p"),
        };
        let out = query.send().await.map_err(backend)?;
        let ids = out
            .items
            .unwrap_or_default()
            .iter()
            .filter_map(|item| item.get(GSI1_SK)?.as_s().ok())
            .filter_map(|id| TaskId::parse(id).ok())
            .collect::<Vec<_>>();
        let stopped_at = out
            .last_evaluated_key
            .as_ref()
            .and_then(|key| key.get(GSI1_SK)?.as_s().ok())
            .and_then(|id| TaskId::parse(id).ok());
        Ok((ids, stopped_at))
    }
}

/// A transition's update of the state item: its expression, its condition
/// (the status is one that may become `to`), and the bytes it writes.
struct StateUpdate {
    expression: String,
    condition: String,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    written: usize,
}

fn state_update(
    to: TaskStatus,
    allowed: &[TaskStatus],
    patch: TaskPatch,
    now: DateTime<Utc>,
) -> Result<StateUpdate, StoreError> {
    let mut names = HashMap::from([
        ("#status".to_owned(), "status".to_owned()),
        ("#updated_at".to_owned(), "updated_at".to_owned()),
    ]);
    let mut values = HashMap::from([
        (":to".to_owned(), to_attribute_value(to).map_err(encode)?),
        (":now".to_owned(), to_attribute_value(now).map_err(encode)?),
    ]);
    let mut sets = vec!["#status = :to".to_owned(), "#updated_at = :now".to_owned()];
    let fields: [(&str, Option<AttributeValue>); 7] = [
        (
            "plan",
            patch
                .plan
                .map(to_attribute_value)
                .transpose()
                .map_err(encode)?,
        ),
        (
            "expected_calls",
            patch
                .expected_calls
                .map(to_attribute_value)
                .transpose()
                .map_err(encode)?,
        ),
        (
            "result",
            patch
                .result
                .map(to_attribute_value)
                .transpose()
                .map_err(encode)?,
        ),
        (
            "usage",
            patch
                .usage
                .map(to_attribute_value)
                .transpose()
                .map_err(encode)?,
        ),
        (
            "cost_usd",
            patch
                .cost_usd
                .map(to_attribute_value)
                .transpose()
                .map_err(encode)?,
        ),
        (
            "counted_calls",
            patch
                .counted_calls
                .filter(|set| !set.is_empty())
                .map(to_attribute_value)
                .transpose()
                .map_err(encode)?,
        ),
        (
            "error",
            patch
                .error
                .map(to_attribute_value)
                .transpose()
                .map_err(encode)?,
        ),
    ];
    let mut written = 0;
    for (field, value) in fields {
        if let Some(value) = value {
            written += field.len() + sdk_value_size(&value);
            sets.push(format!("#{field} = :{field}"));
            names.insert(format!("#{field}"), field.to_owned());
            values.insert(format!(":{field}"), value);
        }
    }
    let mut placeholders = Vec::with_capacity(allowed.len());
    for (i, status) in allowed.iter().enumerate() {
        let name = format!(":from{i}");
        values.insert(name.clone(), to_attribute_value(status).map_err(encode)?);
        placeholders.push(name);
    }
    // A finished task leaves the sweeper's sparse index.
    let remove = if to.is_terminal() {
        names.insert("#sweep_shard".to_owned(), keys::SWEEP_SHARD.to_owned());
        names.insert("#sweep_at".to_owned(), keys::SWEEP_AT.to_owned());
        " REMOVE #sweep_shard, #sweep_at"
    } else {
        ""
    };
    let update_expression = format!("SET {}{remove}", sets.join(", "));
    let condition = format!(
        "attribute_exists(pk) AND #status IN ({})",
        placeholders.join(", ")
    );
    Ok(StateUpdate {
        expression: update_expression,
        condition,
        names,
        values,
        written,
    })
}
