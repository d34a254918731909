//! The claim check's blob store: an output too large to keep in its item
//! (above `Settings::claim_check_bytes`) is stored here, and the item keeps a
//! reference to it.

use async_trait::async_trait;

use crate::domain::{CallId, TaskId, TenantId};

/// Where a blob lives. Every key starts with the tenant, as every table key
/// does, so that a tenant-scoped lookup cannot reach another tenant's blob.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobKey(String);

impl BlobKey {
    /// A call's output.
    pub fn call_output(tenant: &TenantId, task_id: TaskId, call_id: CallId) -> Self {
        BlobKey(format!("{tenant}/{task_id}/calls/{call_id}/output"))
    }

    /// A task's combined output.
    pub fn task_output(tenant: &TenantId, task_id: TaskId) -> Self {
        BlobKey(format!("{tenant}/{task_id}/output"))
    }

    /// A key read back from an item; it must belong to `tenant`.
    pub fn stored(tenant: &TenantId, key: &str) -> Option<Self> {
        key.strip_prefix(tenant.as_str())
            .filter(|rest| rest.starts_with('/'))
            .map(|_| BlobKey(key.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob store error: {0}")]
    Backend(String),
}

#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Stores `body` at `key`, replacing what was there (a retried write
    /// writes the same bytes).
    async fn put(&self, key: &BlobKey, body: Vec<u8>) -> Result<(), BlobError>;

    /// The blob at `key`; `None` when there is none (never written, or expired).
    async fn get(&self, key: &BlobKey) -> Result<Option<Vec<u8>>, BlobError>;
}

/// No blob store: a deployment that has none refuses to store large outputs
/// (the call fails loudly) rather than losing them.
pub struct NoBlobs;

#[async_trait]
impl BlobStore for NoBlobs {
    async fn put(&self, _key: &BlobKey, _body: Vec<u8>) -> Result<(), BlobError> {
        Err(BlobError::Backend(
            "no blob store is configured for large outputs".into(),
        ))
    }

    async fn get(&self, _key: &BlobKey) -> Result<Option<Vec<u8>>, BlobError> {
        Ok(None)
    }
}
