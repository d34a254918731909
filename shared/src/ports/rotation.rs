//! Rotation counters shared by every instance: where `round_robin` and
//! `weighted` routing take their turns (see `domain::rotation`), so that
//! ten route Lambdas do not all start at the same agent.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::task_store::StoreError;
use crate::domain::{RoutingStrategy, TaskType, TenantId};

/// Whose turns: one counter per tenant, strategy and task type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RotationKey {
    pub tenant: TenantId,
    pub strategy: RoutingStrategy,
    pub task_type: TaskType,
}

#[async_trait]
pub trait Rotation: Send + Sync {
    /// Adds `by` to the counter at `key` and returns its value before
    /// (0 for a counter not yet used, or gone idle), atomically: concurrent
    /// calls, from any instance, get disjoint ranges `[value, value + by)`.
    /// The counter lives a day past its last use (`now`).
    async fn next(&self, key: &RotationKey, by: u64, now: DateTime<Utc>)
    -> Result<u64, StoreError>;
}

/// Counters in this process only: what the memory backend keeps, and the
/// default of services built without a shared store.
#[derive(Default)]
pub struct LocalRotation {
    counters: Mutex<HashMap<RotationKey, u64>>,
}

/// Counters kept before they are all dropped (starting every rotation
/// afresh, as idle counters expire on AWS).
const MAX_COUNTERS: usize = 10_000;

#[async_trait]
impl Rotation for LocalRotation {
    async fn next(
        &self,
        key: &RotationKey,
        by: u64,
        _now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if counters.len() >= MAX_COUNTERS && !counters.contains_key(key) {
            counters.clear();
        }
        let counter = counters.entry(key.clone()).or_default();
        let before = *counter;
        *counter = counter.wrapping_add(by);
        Ok(before)
    }
}
