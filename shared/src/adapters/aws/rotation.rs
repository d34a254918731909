//! Rotation counters in the context table: one item per tenant, strategy
//! and task type (`T#{tenant}#ROTATION#{strategy}#{task_type}`), each turn
//! one `UpdateItem` that `ADD`s to its number and returns the new value.
//! DynamoDB applies concurrent `ADD`s one after the other, so no two turns
//! get the same value. The item expires a day after its last turn.

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use chrono::{DateTime, Utc};

use super::describe;
use crate::adapters::layout::keys::{self, PK, SK};
use crate::ports::{Rotation, RotationKey, StoreError};

/// The counter's attribute.
const TURNS: &str = "turns";

#[derive(Clone)]
pub struct DynamoRotation {
    client: Client,
    table: String,
}

impl DynamoRotation {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoRotation {
            client,
            table: table.into(),
        }
    }
}

#[async_trait]
impl Rotation for DynamoRotation {
    #[tracing::instrument(skip_all, fields(strategy = key.strategy.as_str()))]
    async fn next(
        &self,
        key: &RotationKey,
        by: u64,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(keys::rotation_pk(key)))
            .key(SK, AttributeValue::S(keys::ROTATION_SK.to_owned()))
            .update_expression("ADD #turns :by SET expires_at = :expires")
            .expression_attribute_names("#turns", TURNS)
            .expression_attribute_values(":by", AttributeValue::N(by.to_string()))
            .expression_attribute_values(
                ":expires",
                AttributeValue::N((now.timestamp() + 24 * 3600).to_string()),
            )
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| StoreError::Backend(describe(e)))?;
        let after = out
            .attributes
            .as_ref()
            .and_then(|item| item.get(TURNS))
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| {
                StoreError::Backend("the rotation counter's update returned no number".into())
            })?;
        Ok(after.wrapping_sub(by))
    }
}
