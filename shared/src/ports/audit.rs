//! The audit log: append-only, one per tenant and one for the platform.
//!
//! An action that writes (a task created or cancelled, an agent or the
//! settings written) carries its entry into its own store write, so that
//! a crash keeps both or neither (`TaskStore::create`, `TaskPatch::audit`,
//! the `Registry` writes). A refusal writes nothing else, and records its
//! entry here.

use async_trait::async_trait;

use super::task_store::{Page, StoreError};
use crate::domain::{AuditEntry, AuditQuery, Owner};

#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends `entry` to its log. An entry whose id the log holds already
    /// (a redelivered action's) is not written again.
    async fn record(&self, entry: &AuditEntry) -> Result<(), StoreError>;

    /// One page of `log`'s entries that `query` asks for, newest first. A
    /// page may hold fewer than `query.limit` entries (an action filter is
    /// applied after reading, as DynamoDB's filters are) and still have a
    /// `next`: follow it until it is none.
    async fn list(&self, log: &Owner, query: &AuditQuery) -> Result<Page<AuditEntry>, StoreError>;
}

/// The audit log of services built without one: it refuses to record (a
/// deployment that audits nothing must not look as if it did) and holds
/// nothing.
pub struct NoAuditLog;

#[async_trait]
impl AuditLog for NoAuditLog {
    async fn record(&self, _entry: &AuditEntry) -> Result<(), StoreError> {
        Err(StoreError::Backend("no audit log is configured".into()))
    }

    async fn list(
        &self,
        _log: &Owner,
        _query: &AuditQuery,
    ) -> Result<Page<AuditEntry>, StoreError> {
        Ok(Page {
            items: Vec::new(),
            next: None,
        })
    }
}
