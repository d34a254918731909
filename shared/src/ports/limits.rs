//! Rate limits shared by every instance: token buckets in the context
//! store, each take one conditional write (see `domain::rate`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::task_store::StoreError;
use crate::domain::rate::{Charge, Take};
use crate::domain::{AgentId, Owner, TenantId};

/// Whose buckets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A tenant's requests.
    Tenant(TenantId),
    /// One token subject's requests within its tenant.
    Subject(TenantId, String),
    /// The calls of one agent, whoever's tasks they serve: a provider's
    /// limits are per key, and a platform agent's key serves every tenant.
    Agent(Owner, AgentId),
}

/// Whose buckets, and which shard of them (a holder whose limit allows
/// more takes a second than one item should take writes has its limit
/// split over shards).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Holder {
    pub scope: Scope,
    pub shard: u32,
}

impl Holder {
    pub fn tenant(tenant: TenantId) -> Self {
        Holder {
            scope: Scope::Tenant(tenant),
            shard: 0,
        }
    }

    pub fn subject(tenant: TenantId, subject: String) -> Self {
        Holder {
            scope: Scope::Subject(tenant, subject),
            shard: 0,
        }
    }

    pub fn agent(owner: Owner, agent: AgentId) -> Self {
        Holder {
            scope: Scope::Agent(owner, agent),
            shard: 0,
        }
    }

    pub fn in_shard(self, shard: u32) -> Self {
        Holder { shard, ..self }
    }
}

/// A bucket of a holder, by name (`rpm`, `tpm`), and what to take from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draw {
    pub bucket: &'static str,
    pub charge: Charge,
}

#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Takes every draw from `holder`'s buckets at `now`, atomically: all of
    /// them, or none (`Take::Refused` names the first that would not fit).
    async fn take(
        &self,
        holder: &Holder,
        draws: &[Draw],
        now: DateTime<Utc>,
    ) -> Result<Take, StoreError>;

    /// Gives back what `draws` took from `holder`'s buckets (a take whose
    /// work was then not done): each bucket's TAT moves back by the draw,
    /// unless that would take it past now (it is full by then anyway).
    /// Best effort, all or none.
    async fn give_back(
        &self,
        holder: &Holder,
        draws: &[Draw],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// The TATs of `holder`'s buckets named `buckets` (none: full), taking
    /// nothing: what a health view shows of the limits' use.
    async fn peek(
        &self,
        holder: &Holder,
        buckets: &[&'static str],
    ) -> Result<Vec<Option<i64>>, StoreError>;
}

/// Microseconds since the epoch: the buckets' clock.
pub fn micros(now: DateTime<Utc>) -> i64 {
    now.timestamp_micros()
}

/// Buckets in this process only: what the memory backend keeps, and the
/// default of services built without a shared store. Exact for one
/// process; the AWS backend shares its buckets between instances.
#[derive(Default)]
pub struct LocalLimiter {
    buckets: std::sync::Mutex<std::collections::HashMap<Holder, BucketTats>>,
}

type BucketTats = std::collections::HashMap<&'static str, i64>;

/// Holders kept before those with full buckets (TAT in the past) are
/// dropped, as the table's TTL drops their items.
const MAX_HOLDERS: usize = 10_000;

#[async_trait]
impl RateLimiter for LocalLimiter {
    async fn take(
        &self,
        holder: &Holder,
        draws: &[Draw],
        now: DateTime<Utc>,
    ) -> Result<Take, StoreError> {
        let now_us = micros(now);
        let charges: Vec<Charge> = draws.iter().map(|d| d.charge).collect();
        let mut all = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() >= MAX_HOLDERS {
            all.retain(|_, buckets| buckets.values().any(|tat| *tat > now_us));
        }
        let buckets = all.entry(holder.clone()).or_default();
        let tats: Vec<Option<i64>> = draws
            .iter()
            .map(|d| buckets.get(d.bucket).copied())
            .collect();
        Ok(match crate::domain::rate::decide(&charges, &tats, now_us) {
            Ok(next) => {
                for (draw, tat) in draws.iter().zip(&next) {
                    buckets.insert(draw.bucket, *tat);
                }
                Take::Allowed(crate::domain::rate::states(&charges, &next, now_us))
            }
            Err(refused) => refused,
        })
    }

    async fn give_back(
        &self,
        holder: &Holder,
        draws: &[Draw],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let now_us = micros(now);
        let mut all = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(buckets) = all.get_mut(holder) else {
            return Ok(());
        };
        let back = |d: &Draw| d.charge.rate.increment(d.charge.cost);
        // All or none, as the store's one conditional write.
        if draws.iter().all(|d| {
            buckets
                .get(d.bucket)
                .is_some_and(|tat| *tat >= now_us + back(d))
        }) {
            for d in draws {
                if let Some(tat) = buckets.get_mut(d.bucket) {
                    *tat -= back(d);
                }
            }
        }
        Ok(())
    }

    async fn peek(
        &self,
        holder: &Holder,
        buckets: &[&'static str],
    ) -> Result<Vec<Option<i64>>, StoreError> {
        let all = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let held = all.get(holder);
        Ok(buckets
            .iter()
            .map(|b| held.and_then(|h| h.get(b).copied()))
            .collect())
    }
}
