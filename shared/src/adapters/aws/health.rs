//! Agents' health in the context table (keys in `layout::keys::health_pk`):
//! one query reads an agent's state and recent buckets; the breaker's
//! changes are conditional updates of the state item's version; a call's
//! counts are `ADD`s the task store puts into the result's transaction
//! ([`DynamoHealth::writes`]).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use chrono::{DateTime, Utc};

use super::describe;
use crate::adapters::layout::keys::{self, PK, SK};
use crate::domain::health::{
    BreakerState, Bucket, HealthRecord, Observation, ProbeEnd, STATE_RETENTION_MS, StateChange,
    bucket_expiry_ms, oldest_bucket_read,
};
use crate::domain::{AgentId, Owner};
use crate::ports::{AgentHealth, StoreError};

#[derive(Clone)]
pub struct DynamoHealth {
    client: Client,
    table: String,
}

type Item = HashMap<String, AttributeValue>;

fn number(n: impl ToString) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn int(item: &Item, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn state_of(item: &Item) -> BreakerState {
    BreakerState {
        version: int(item, "version").unwrap_or(0) as u64,
        open_until_ms: int(item, "open_until_ms"),
        opened_at_ms: int(item, "opened_at_ms"),
        probe_until_ms: int(item, "probe_until_ms"),
        counted_from_ms: int(item, "counted_from_ms"),
        cooldown_until_ms: int(item, "cooldown_until_ms"),
        trips: int(item, "trips").unwrap_or(0) as u64,
    }
}

fn bucket_of(index: i64, item: &Item) -> Bucket {
    let count = |name| int(item, name).unwrap_or(0) as u64;
    Bucket {
        index,
        calls: count("calls"),
        failures: count("failures"),
        latency_count: count("latency_count"),
        latency_sum_ms: count("latency_sum_ms"),
    }
}

/// The state item's TTL after a change at `now_ms`, in seconds.
fn state_expiry(now_ms: i64) -> AttributeValue {
    number((now_ms + STATE_RETENTION_MS) / 1000)
}

impl DynamoHealth {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoHealth {
            client,
            table: table.into(),
        }
    }

    fn key(pk: String, sk: String) -> Item {
        HashMap::from([
            (PK.to_owned(), AttributeValue::S(pk)),
            (SK.to_owned(), AttributeValue::S(sk)),
        ])
    }

    /// A result's observations as items of its transaction: an `ADD` to a
    /// shard of the agent's bucket, and a probe's end on its state. Neither
    /// has a condition: they never cancel the result's write.
    pub fn writes(
        &self,
        observations: &[Observation],
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let mut items = Vec::new();
        // A transaction may not name an item twice: one agent's counts are
        // added up first.
        let mut counted: Vec<(String, Bucket)> = Vec::new();
        for o in observations {
            let pk = keys::health_pk(&o.owner, &o.agent);
            if let Some(counts) = o.counts() {
                match counted
                    .iter_mut()
                    .find(|(p, b)| *p == pk && b.index == counts.index)
                {
                    Some((_, bucket)) => bucket.add(&counts),
                    None => counted.push((pk.clone(), counts)),
                }
            }
        }
        for (pk, counts) in counted {
            {
                let shard = rand::random_range(0..keys::HEALTH_SHARDS);
                let update = Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(Self::key(
                        pk.clone(),
                        keys::health_bucket_sk(counts.index, shard),
                    )))
                    .update_expression(
                        "ADD calls :calls, failures :failures, latency_count :lc, \
                         latency_sum_ms :ls SET expires_at = :expires",
                    )
                    .expression_attribute_values(":calls", number(counts.calls))
                    .expression_attribute_values(":failures", number(counts.failures))
                    .expression_attribute_values(":lc", number(counts.latency_count))
                    .expression_attribute_values(":ls", number(counts.latency_sum_ms))
                    .expression_attribute_values(
                        ":expires",
                        number(bucket_expiry_ms(counts.index) / 1000 + 1),
                    )
                    .build()
                    .map_err(backend)?;
                items.push(TransactWriteItem::builder().update(update).build());
            }
        }
        for o in observations {
            let pk = keys::health_pk(&o.owner, &o.agent);
            if let Some(end) = o.probe {
                let now_ms = o.bucket * crate::domain::health::BUCKET_MS;
                let (expression, values): (&str, Vec<(&str, AttributeValue)>) = match end {
                    ProbeEnd::Close { at_ms } => (
                        "SET version = if_not_exists(version, :zero) + :one, \
                         counted_from_ms = :at, expires_at = :expires \
                         REMOVE open_until_ms, opened_at_ms, probe_until_ms",
                        vec![(":at", number(at_ms))],
                    ),
                    ProbeEnd::Reopen { until_ms } => (
                        "SET version = if_not_exists(version, :zero) + :one, \
                         open_until_ms = :until, expires_at = :expires REMOVE probe_until_ms",
                        vec![(":until", number(until_ms))],
                    ),
                    ProbeEnd::Release => (
                        "SET version = if_not_exists(version, :zero) + :one, \
                         expires_at = :expires REMOVE probe_until_ms",
                        vec![],
                    ),
                };
                let mut update = Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(Self::key(pk, keys::HEALTH_STATE_SK.to_owned())))
                    .update_expression(expression)
                    .expression_attribute_values(":zero", number(0))
                    .expression_attribute_values(":one", number(1))
                    .expression_attribute_values(":expires", state_expiry(now_ms));
                for (name, value) in values {
                    update = update.expression_attribute_values(name, value);
                }
                items.push(
                    TransactWriteItem::builder()
                        .update(update.build().map_err(backend)?)
                        .build(),
                );
            }
        }
        Ok(items)
    }
}

#[async_trait]
impl AgentHealth for DynamoHealth {
    #[tracing::instrument(skip_all, fields(agent = %agent))]
    async fn read(
        &self,
        owner: &Owner,
        agent: &AgentId,
        now: DateTime<Utc>,
    ) -> Result<HealthRecord, StoreError> {
        let mut record = HealthRecord::default();
        let mut buckets: HashMap<i64, Bucket> = HashMap::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk AND #sk BETWEEN :low AND :high")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#sk", SK)
                .expression_attribute_values(
                    ":pk",
                    AttributeValue::S(keys::health_pk(owner, agent)),
                )
                .expression_attribute_values(
                    ":low",
                    AttributeValue::S(keys::health_bucket_sk(oldest_bucket_read(now), 0)),
                )
                .expression_attribute_values(
                    ":high",
                    AttributeValue::S(keys::HEALTH_STATE_SK.to_owned()),
                )
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| StoreError::Backend(describe(e)))?;
            for item in out.items() {
                let Some(sk) = item.get(SK).and_then(|v| v.as_s().ok()) else {
                    continue;
                };
                if sk == keys::HEALTH_STATE_SK {
                    record.state = state_of(item);
                } else if let Some(index) = keys::health_bucket_of(sk) {
                    buckets
                        .entry(index)
                        .or_insert(Bucket {
                            index,
                            ..Bucket::default()
                        })
                        .add(&bucket_of(index, item));
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        record.buckets = buckets.into_values().collect();
        Ok(record)
    }

    #[tracing::instrument(skip_all, fields(agent = %agent))]
    async fn change(
        &self,
        owner: &Owner,
        agent: &AgentId,
        seen: &BreakerState,
        change: StateChange,
    ) -> Result<bool, StoreError> {
        let next = change.applied(seen);
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(keys::health_pk(owner, agent)))
            .key(SK, AttributeValue::S(keys::HEALTH_STATE_SK.to_owned()))
            .expression_attribute_values(":next", number(next.version));
        let now_ms = match change {
            StateChange::Trip { at_ms, until_ms } => {
                update = update
                    .update_expression(
                        "SET version = :next, open_until_ms = :until, opened_at_ms = :at, \
                         trips = if_not_exists(trips, :zero) + :one, expires_at = :expires \
                         REMOVE probe_until_ms",
                    )
                    .expression_attribute_values(":until", number(until_ms))
                    .expression_attribute_values(":at", number(at_ms))
                    .expression_attribute_values(":zero", number(0))
                    .expression_attribute_values(":one", number(1));
                at_ms
            }
            StateChange::ClaimProbe { until_ms } => {
                update = update
                    .update_expression(
                        "SET version = :next, probe_until_ms = :until, expires_at = :expires",
                    )
                    .expression_attribute_values(":until", number(until_ms));
                until_ms
            }
        };
        update = update.expression_attribute_values(":expires", state_expiry(now_ms));
        update = match seen.version {
            0 => update.condition_expression("attribute_not_exists(version) OR version = :seen"),
            _ => update.condition_expression("version = :seen"),
        }
        .expression_attribute_values(":seen", number(seen.version));
        match update.send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(StoreError::Backend(describe(e))),
        }
    }

    #[tracing::instrument(skip_all, fields(agent = %agent))]
    async fn cool_down(
        &self,
        owner: &Owner,
        agent: &AgentId,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let until_ms = until.timestamp_millis();
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(keys::health_pk(owner, agent)))
            .key(SK, AttributeValue::S(keys::HEALTH_STATE_SK.to_owned()))
            .update_expression("SET cooldown_until_ms = :until, expires_at = :expires")
            .condition_expression(
                "attribute_not_exists(cooldown_until_ms) OR cooldown_until_ms < :until",
            )
            .expression_attribute_values(":until", number(until_ms))
            .expression_attribute_values(":expires", state_expiry(until_ms))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            // A later wait is held already.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(StoreError::Backend(describe(e))),
        }
    }
}
