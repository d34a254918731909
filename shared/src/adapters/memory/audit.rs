use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::lock;
use crate::adapters::layout::{
    AuditItem, DEFAULT_AUDIT_RETENTION, MAX_ITEM_BYTES, MAX_PAGE_BYTES, ShardPage, item_size, keys,
    merge_newest,
};
use crate::domain::{AuditEntry, AuditId, AuditQuery, Owner};
use crate::ports::{AuditLog, Page, StoreError};

/// Audit logs in process, kept as the context table keeps them: one
/// partition per shard of a log, entries by id, each measured as its item.
/// The memory task store and registry write into the same one, inside
/// their own writes.
#[derive(Default)]
pub struct MemoryAudit {
    partitions: Mutex<HashMap<String, BTreeMap<AuditId, AuditEntry>>>,
}

impl MemoryAudit {
    pub fn new() -> Self {
        Self::default()
    }

    /// Refused as DynamoDB would refuse the entry's item; checked before
    /// the write it belongs to changes anything.
    pub(crate) fn check(entry: &AuditEntry) -> Result<(), StoreError> {
        let bytes = item_size(&AuditItem::new(entry, DEFAULT_AUDIT_RETENTION))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        if bytes > MAX_ITEM_BYTES {
            return Err(StoreError::ItemTooLarge { bytes });
        }
        Ok(())
    }

    /// Appends a checked entry; one whose id is there already stays as it was.
    pub(crate) fn append(&self, entry: &AuditEntry) {
        lock(&self.partitions)
            .entry(keys::audit_pk(&entry.log(), entry.id))
            .or_default()
            .entry(entry.id)
            .or_insert_with(|| entry.clone());
    }

    /// One shard's ids in the query's range, newest first, as a DynamoDB
    /// query with `Limit` reads them: at most `limit + 1` items (or 1 MB),
    /// then the action filter; and where it stopped if before the end.
    fn query_shard(
        &self,
        pk: &str,
        query: &AuditQuery,
        low: AuditId,
        high: AuditId,
    ) -> ShardPage<AuditId> {
        let partitions = lock(&self.partitions);
        let Some(entries) = partitions.get(pk) else {
            return (Vec::new(), None);
        };
        let read_limit = query.limit as usize + 1;
        let (mut ids, mut read, mut bytes) = (Vec::new(), 0, 0);
        // As DynamoDB, a query that reaches its limit says where it stopped,
        // whether or not anything is left below.
        for (id, entry) in entries.range(low..=high).rev() {
            read += 1;
            bytes += item_size(&AuditItem::new(entry, DEFAULT_AUDIT_RETENTION)).unwrap_or(0);
            if query.wants(entry) {
                ids.push(*id);
            }
            if read >= read_limit || bytes >= MAX_PAGE_BYTES {
                return (ids, Some(*id));
            }
        }
        (ids, None)
    }
}

#[async_trait]
impl AuditLog for MemoryAudit {
    async fn record(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        Self::check(entry)?;
        self.append(entry);
        Ok(())
    }

    async fn list(&self, log: &Owner, query: &AuditQuery) -> Result<Page<AuditEntry>, StoreError> {
        let Some((low, high)) = query.id_range() else {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        };
        let shards = (0..keys::AUDIT_SHARDS)
            .map(|shard| self.query_shard(&keys::audit_shard(log, shard), query, low, high))
            .collect();
        let (ids, below) = merge_newest(shards, query.limit as usize);
        let partitions = lock(&self.partitions);
        let items = ids
            .iter()
            .filter_map(|id| partitions.get(&keys::audit_pk(log, *id))?.get(id).cloned())
            .collect();
        Ok(Page {
            items,
            next: below.map(|id| id.to_string()),
        })
    }
}
