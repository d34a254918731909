use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use serde_dynamo::{from_item, to_item};

use super::describe;
use crate::adapters::layout::keys::{self, SK};
use crate::adapters::layout::{AuditItem, DEFAULT_AUDIT_RETENTION, ShardPage, merge_newest};
use crate::domain::{AuditEntry, AuditId, AuditQuery, Owner};
use crate::ports::{AuditLog, Page, StoreError};

/// The audit logs in the context table: each log over `AUDIT_SHARDS`
/// partitions, entries by id (so by time), each expiring after the
/// retention. The task store and the registry put an action's entry into
/// the action's own transaction with [`DynamoAudit::put`].
#[derive(Clone)]
pub struct DynamoAudit {
    client: Client,
    table: String,
    retention: Duration,
}

impl DynamoAudit {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoAudit {
            client,
            table: table.into(),
            retention: DEFAULT_AUDIT_RETENTION,
        }
    }

    /// Entries written from now on expire after `retention`.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    fn item(&self, entry: &AuditEntry) -> Result<HashMap<String, AttributeValue>, StoreError> {
        to_item(AuditItem::new(entry, self.retention))
            .map_err(|e| StoreError::Backend(format!("cannot encode an audit entry: {e}")))
    }

    /// The entry as one item of a transaction: a put that never replaces
    /// (an id is written once).
    pub fn put(&self, entry: &AuditEntry) -> Result<TransactWriteItem, StoreError> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(self.item(entry)?))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(backend)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// One shard's newest entries in `[low, high]`, as the query reads them.
    async fn query_shard(
        &self,
        log: &Owner,
        shard: u32,
        query: &AuditQuery,
        (low, high): (AuditId, AuditId),
    ) -> Result<(ShardPage<AuditId>, Vec<AuditEntry>), StoreError> {
        let mut request = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :low AND :high")
            .expression_attribute_values(":pk", s(keys::audit_shard(log, shard)))
            .expression_attribute_values(":low", s(low.to_string()))
            .expression_attribute_values(":high", s(high.to_string()))
            .scan_index_forward(false)
            .limit(
                i32::try_from(query.limit)
                    .unwrap_or(i32::MAX)
                    .saturating_add(1),
            );
        if let Some(action) = query.action {
            request = request
                .filter_expression("#action = :action")
                .expression_attribute_names("#action", "action")
                .expression_attribute_values(":action", s(action.name()));
        }
        let out = request.send().await.map_err(backend)?;
        let entries = out
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|item| {
                from_item::<_, AuditItem>(item)
                    .map(|i| i.entry)
                    .map_err(|e| StoreError::Backend(format!("cannot decode an audit entry: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let stopped_at = out
            .last_evaluated_key
            .as_ref()
            .and_then(|key| key.get(SK)?.as_s().ok())
            .and_then(|id| AuditId::parse(id).ok());
        Ok((
            (entries.iter().map(|e| e.id).collect(), stopped_at),
            entries,
        ))
    }
}

#[async_trait]
impl AuditLog for DynamoAudit {
    #[tracing::instrument(skip_all, fields(action = entry.action.name()))]
    async fn record(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.item(entry)?))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            // Written before, by an earlier delivery of the same action.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(backend(e)),
        }
    }

    #[tracing::instrument(skip_all, fields(log = %log))]
    async fn list(&self, log: &Owner, query: &AuditQuery) -> Result<Page<AuditEntry>, StoreError> {
        let Some(range) = query.id_range() else {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        };
        // A log is spread over its shards: the newest of each, merged.
        let shards = futures::future::join_all(
            (0..keys::AUDIT_SHARDS).map(|shard| self.query_shard(log, shard, query, range)),
        )
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
        let mut read: HashMap<AuditId, AuditEntry> = HashMap::new();
        let mut pages = Vec::with_capacity(shards.len());
        for (page, entries) in shards {
            pages.push(page);
            read.extend(entries.into_iter().map(|e| (e.id, e)));
        }
        let (ids, below) = merge_newest(pages, query.limit as usize);
        Ok(Page {
            items: ids.iter().filter_map(|id| read.remove(id)).collect(),
            next: below.map(|id| id.to_string()),
        })
    }
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn backend<E: std::error::Error>(err: E) -> StoreError {
    StoreError::Backend(describe(err))
}
