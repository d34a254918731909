//! The agent registry: versioned entries with optimistic concurrency.

use async_trait::async_trait;

use super::task_store::StoreError;
use crate::domain::{Agent, AgentId, AgentSpec};

/// The condition a registry write is made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Create only: refused if the agent exists.
    Absent,
    /// Replace or delete only the version the writer read.
    Version(u64),
    /// Unconditional (seeding, admin override).
    Any,
}

#[async_trait]
pub trait Registry: Send + Sync {
    async fn get(&self, id: &AgentId) -> Result<Option<Agent>, StoreError>;

    /// Every agent, ordered by id.
    async fn list(&self) -> Result<Vec<Agent>, StoreError>;

    /// Writes `spec` under `id`, bumping the version. A stale `Expect` is
    /// refused with `VersionConflict` (or `AlreadyExists` for `Absent`).
    async fn put(&self, id: &AgentId, spec: AgentSpec, expect: Expect)
    -> Result<Agent, StoreError>;

    /// Removes an agent; `NotFound` if absent, `VersionConflict` if stale.
    async fn delete(&self, id: &AgentId, expect: Expect) -> Result<(), StoreError>;
}
