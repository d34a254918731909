//! Agents' health, shared by every instance: each agent's breaker state and
//! its recent counting buckets (see `domain::health`). A call's counts are
//! written by the task store with the call's result (one atomic write);
//! this port reads them and makes the breaker's conditional changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::task_store::StoreError;
use crate::domain::health::{
    BreakerState, Bucket, HealthRecord, LATENCY_HORIZON_BUCKETS, Observation, StateChange,
    oldest_bucket_read,
};
use crate::domain::{AgentId, Owner};

#[async_trait]
pub trait AgentHealth: Send + Sync {
    /// The agent's state and its buckets a read at `now` needs.
    async fn read(
        &self,
        owner: &Owner,
        agent: &AgentId,
        now: DateTime<Utc>,
    ) -> Result<HealthRecord, StoreError>;

    /// Writes `change` if the state is still at `seen`'s version; whether
    /// it did (of two changes from one version, exactly one is written).
    async fn change(
        &self,
        owner: &Owner,
        agent: &AgentId,
        seen: &BreakerState,
        change: StateChange,
    ) -> Result<bool, StoreError>;

    /// Holds the agent back until `until` (a provider's 429), unless a
    /// later wait is held already.
    async fn cool_down(
        &self,
        owner: &Owner,
        agent: &AgentId,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

type AgentKey = (Owner, AgentId);

#[derive(Default)]
struct Kept {
    state: BreakerState,
    buckets: BTreeMap<i64, Bucket>,
}

/// Health in this process only: what the memory backend keeps (its task
/// store adds a result's observations with the result), and the default of
/// services built without a shared store.
#[derive(Default)]
pub struct LocalHealth {
    agents: Mutex<HashMap<AgentKey, Kept>>,
}

impl LocalHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AgentKey, Kept>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a result's observations: what the AWS task store writes in the
    /// result's transaction.
    pub fn observe(&self, observations: &[Observation]) {
        let mut agents = self.lock();
        for o in observations.iter().filter(|o| o.writes()) {
            let kept = agents
                .entry((o.owner.clone(), o.agent.clone()))
                .or_default();
            if let Some(counts) = o.counts() {
                kept.buckets
                    .entry(counts.index)
                    .or_insert(Bucket {
                        index: counts.index,
                        ..Bucket::default()
                    })
                    .add(&counts);
                // As the table's TTL drops buckets no read needs.
                kept.buckets = kept
                    .buckets
                    .split_off(&(counts.index - LATENCY_HORIZON_BUCKETS));
            }
            if let Some(end) = o.probe {
                kept.state = Observation::end_probe(end, &kept.state);
            }
        }
    }
}

#[async_trait]
impl AgentHealth for LocalHealth {
    async fn read(
        &self,
        owner: &Owner,
        agent: &AgentId,
        now: DateTime<Utc>,
    ) -> Result<HealthRecord, StoreError> {
        let agents = self.lock();
        let Some(kept) = agents.get(&(owner.clone(), agent.clone())) else {
            return Ok(HealthRecord::default());
        };
        Ok(HealthRecord {
            state: kept.state,
            buckets: kept
                .buckets
                .range(oldest_bucket_read(now)..)
                .map(|(_, b)| *b)
                .collect(),
        })
    }

    async fn change(
        &self,
        owner: &Owner,
        agent: &AgentId,
        seen: &BreakerState,
        change: StateChange,
    ) -> Result<bool, StoreError> {
        let mut agents = self.lock();
        let kept = agents.entry((owner.clone(), agent.clone())).or_default();
        if kept.state.version != seen.version {
            return Ok(false);
        }
        kept.state = change.applied(&kept.state);
        Ok(true)
    }

    async fn cool_down(
        &self,
        owner: &Owner,
        agent: &AgentId,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut agents = self.lock();
        let state = &mut agents
            .entry((owner.clone(), agent.clone()))
            .or_default()
            .state;
        let until = until.timestamp_millis();
        if state.cooldown_until_ms.is_none_or(|held| held < until) {
            state.cooldown_until_ms = Some(until);
        }
        Ok(())
    }
}
