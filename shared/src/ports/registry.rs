//! The registry: agents, each owned by a tenant or by the platform, and
//! tenants' settings; versioned entries with optimistic concurrency.

use async_trait::async_trait;

use super::task_store::StoreError;
use crate::domain::{Agent, AgentId, AgentSpec, AuditEntry, Owner, TenantId, TenantSettings};

/// The condition a registry write is made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Create only: refused if the entry exists.
    Absent,
    /// Replace or delete only the version the writer read.
    Version(u64),
    /// Unconditional (seeding, admin override).
    Any,
}

/// A tenant's settings with the version the next conditional write expects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: u64,
}

#[async_trait]
pub trait Registry: Send + Sync {
    /// One of `owner`'s agents; another owner's agent of that id is none.
    async fn get(&self, owner: &Owner, id: &AgentId) -> Result<Option<Agent>, StoreError>;

    /// Every agent of `owner`, ordered by id.
    async fn list(&self, owner: &Owner) -> Result<Vec<Agent>, StoreError>;

    /// Writes `spec` as `owner`'s agent `id`, bumping the version. A stale
    /// `Expect` is refused with `VersionConflict` (or `AlreadyExists` for
    /// `Absent`). `audit` (none only for the deployment's own seeding) is
    /// appended to its log in the same atomic write: both or neither.
    async fn put(
        &self,
        owner: &Owner,
        id: &AgentId,
        spec: AgentSpec,
        expect: Expect,
        audit: Option<&AuditEntry>,
    ) -> Result<Agent, StoreError>;

    /// Removes one of `owner`'s agents; `NotFound` if absent, `VersionConflict` if stale.
    /// `audit` as for `put`.
    async fn delete(
        &self,
        owner: &Owner,
        id: &AgentId,
        expect: Expect,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError>;

    /// What `platform_admin` set for `tenant`, if anything.
    async fn settings(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<Versioned<TenantSettings>>, StoreError>;

    /// Writes `tenant`'s settings under `expect`, with `audit` (as agents
    /// are written).
    async fn put_settings(
        &self,
        tenant: &TenantId,
        settings: &TenantSettings,
        expect: Expect,
        audit: Option<&AuditEntry>,
    ) -> Result<Versioned<TenantSettings>, StoreError>;
}
