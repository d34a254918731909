//! Rate-limit buckets in the context table: one item per holder, one
//! attribute per bucket (its TAT, in microseconds), each take one
//! conditional `UpdateItem` that moves every bucket or none.
//!
//! A bucket behind now (full) is set to `now + increment`; one ahead of now
//! is moved by `+ increment`, on condition that it stays within the limit.
//! Concurrent takes of a busy bucket then all succeed or fail on the same
//! condition without reading first, rather than racing on a read value. A
//! failed condition returns the item as it is, which tells the next try
//! which form each bucket needs, or that the take does not fit.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use chrono::{DateTime, Utc};

use super::describe;
use crate::adapters::layout::keys::{self, PK, SK};
use crate::domain::rate::{self, Charge, Refused, Take};
use crate::ports::limits::micros;
use crate::ports::{Draw, Holder, RateLimiter, StoreError};

/// Tries before a take under heavy contention gives up as refused for now.
const TRIES: usize = 6;

#[derive(Clone)]
pub struct DynamoLimiter {
    client: Client,
    table: String,
}

impl DynamoLimiter {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoLimiter {
            client,
            table: table.into(),
        }
    }
}

type Item = HashMap<String, AttributeValue>;

impl DynamoLimiter {
    async fn read(&self, holder: &Holder) -> Result<Item, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(keys::limits_pk(holder)))
            .key(SK, AttributeValue::S(keys::LIMITS_SK.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| StoreError::Backend(describe(e)))?;
        Ok(out.item.unwrap_or_default())
    }
}

/// Each bucket's TAT in `item` (none: full).
fn tats(item: &Item, draws: &[Draw]) -> Vec<Option<i64>> {
    draws
        .iter()
        .map(|d| {
            item.get(d.bucket)
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse().ok())
        })
        .collect()
}

fn number(n: i64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

#[async_trait]
impl RateLimiter for DynamoLimiter {
    #[tracing::instrument(skip_all, fields(buckets = draws.len()))]
    async fn give_back(
        &self,
        holder: &Holder,
        draws: &[Draw],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let now_us = micros(now);
        let mut update = Vec::new();
        let mut conditions = Vec::new();
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        for (i, draw) in draws.iter().enumerate() {
            let back = draw.charge.rate.increment(draw.charge.cost);
            names.insert(format!("#b{i}"), draw.bucket.to_owned());
            update.push(format!("#b{i} = #b{i} - :back{i}"));
            conditions.push(format!("#b{i} >= :min{i}"));
            values.insert(format!(":back{i}"), number(back));
            values.insert(format!(":min{i}"), number(now_us + back));
        }
        if update.is_empty() {
            return Ok(());
        }
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(keys::limits_pk(holder)))
            .key(SK, AttributeValue::S(keys::LIMITS_SK.to_owned()))
            .update_expression(format!("SET {}", update.join(", ")))
            .condition_expression(conditions.join(" AND "))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            // A bucket within a draw of full: it is full by then anyway.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(StoreError::Backend(describe(e))),
        }
    }

    #[tracing::instrument(skip_all, fields(buckets = buckets.len()))]
    async fn peek(
        &self,
        holder: &Holder,
        buckets: &[&'static str],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        let item = self.read(holder).await?;
        Ok(buckets
            .iter()
            .map(|b| item.get(*b)?.as_n().ok()?.parse().ok())
            .collect())
    }

    #[tracing::instrument(skip_all, fields(buckets = draws.len()))]
    async fn take(
        &self,
        holder: &Holder,
        draws: &[Draw],
        now: DateTime<Utc>,
    ) -> Result<Take, StoreError> {
        let now_us = micros(now);
        let charges: Vec<Charge> = draws.iter().map(|d| d.charge).collect();
        // What the item is believed to hold: nothing (full buckets) at first.
        let mut known: Vec<Option<i64>> = vec![None; draws.len()];
        for _ in 0..TRIES {
            if let Err(refused) = rate::decide(&charges, &known, now_us) {
                return Ok(refused);
            }
            let mut update = Vec::new();
            let mut conditions = Vec::new();
            let mut names = HashMap::new();
            let mut values = HashMap::from([(":now".to_owned(), number(now_us))]);
            for (i, (draw, tat)) in draws.iter().zip(&known).enumerate() {
                names.insert(format!("#b{i}"), draw.bucket.to_owned());
                let increment = draw.charge.rate.increment(draw.charge.cost);
                match tat {
                    Some(tat) if *tat > now_us => {
                        update.push(format!("#b{i} = #b{i} + :inc{i}"));
                        conditions.push(format!("(#b{i} > :now AND #b{i} <= :max{i})"));
                        values.insert(format!(":inc{i}"), number(increment));
                        values.insert(
                            format!(":max{i}"),
                            number(draw.charge.latest_allowed_tat(now_us)),
                        );
                    }
                    _ => {
                        update.push(format!("#b{i} = :new{i}"));
                        conditions.push(format!("(attribute_not_exists(#b{i}) OR #b{i} <= :now)"));
                        values.insert(format!(":new{i}"), number(now_us + increment));
                    }
                }
            }
            // The item lives a day past its last take: longer than any
            // bucket needs to refill, and the table's TTL drops it.
            update.push("expires_at = :expires".to_owned());
            values.insert(":expires".to_owned(), number(now.timestamp() + 24 * 3600));
            let out = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(PK, AttributeValue::S(keys::limits_pk(holder)))
                .key(SK, AttributeValue::S(keys::LIMITS_SK.to_owned()))
                .update_expression(format!("SET {}", update.join(", ")))
                .condition_expression(conditions.join(" AND "))
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(Some(values))
                .return_values(ReturnValue::UpdatedNew)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            match out {
                Ok(out) => {
                    let item = out.attributes.unwrap_or_default();
                    let next: Vec<i64> = tats(&item, draws)
                        .into_iter()
                        .map(|t| t.unwrap_or(now_us))
                        .collect();
                    return Ok(Take::Allowed(rate::states(&charges, &next, now_us)));
                }
                Err(e) => {
                    let Some(failed) = e.as_service_error().and_then(|e| match e {
                        UpdateItemError::ConditionalCheckFailedException(c) => Some(c.item.clone()),
                        _ => None,
                    }) else {
                        return Err(StoreError::Backend(describe(e)));
                    };
                    // The item as the condition saw it; read it where the
                    // store did not return it.
                    let item = match failed {
                        Some(item) => item,
                        None => self.read(holder).await?,
                    };
                    known = tats(&item, draws);
                }
            }
        }
        tracing::warn!("rate-limit buckets too contended; refusing this take for now");
        Ok(Take::Refused {
            bucket: 0,
            refused: Refused {
                retry_after_us: 1_000_000,
            },
        })
    }
}
