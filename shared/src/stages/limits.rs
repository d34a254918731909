//! Rate limits at the door: a request that creates work is charged to its
//! tenant's and its subject's token buckets (requests, and estimated
//! tokens, per minute) before anything is stored.

use std::time::Duration;

use crate::domain::rate::{BucketState, Charge, Rate, Refused, Take};
use crate::domain::{Agent, Principal, Rates};
use crate::ports::{Draw, Holder, StoreError};

use super::Services;

/// A request over a limit.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("rate limit exceeded: {limit} {scope}; retry after {}s", retry_after.as_secs())]
    Limited {
        /// `rpm` or `tpm`.
        limit: &'static str,
        /// `for the tenant` or `for this subject`.
        scope: &'static str,
        retry_after: Duration,
        state: BucketState,
    },
    /// The request alone is more than the limit allows in a minute: it
    /// would never be admitted.
    #[error(
        "the request's estimated {tokens} tokens exceed the {scope} limit of {limit} tokens per minute"
    )]
    TooLarge {
        tokens: u64,
        limit: u64,
        scope: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Takes a second one holder's buckets item should see at most: well under
/// a DynamoDB partition's 1,000 writes a second.
const TAKES_PER_SHARD_PER_SECOND: u64 = 400;

/// How many items a holder's buckets are split over: enough that the takes
/// its request limit allows stay under `TAKES_PER_SHARD_PER_SECOND` each.
/// One while that holds (then the limit is exact); without a request limit,
/// one (the request rate is then bounded by the API's throttling).
pub fn shards(rates: Rates) -> u32 {
    let per_shard = TAKES_PER_SHARD_PER_SECOND * 60;
    rates.rpm.map_or(1, |rpm| {
        u32::try_from(rpm.div_ceil(per_shard).max(1)).unwrap_or(u32::MAX)
    })
}

/// The draws `rates`, split over `shards`, make for one request of
/// `tokens` estimated tokens in one shard.
fn draws(rates: Rates, shards: u32, tokens: u64) -> Vec<Draw> {
    let share = |limit: u64| (limit / u64::from(shards)).max(1);
    let mut draws = Vec::new();
    if let Some(rpm) = rates.rpm {
        draws.push(Draw {
            bucket: "rpm",
            charge: Charge {
                rate: Rate::per_minute(share(rpm)),
                cost: 1,
            },
        });
    }
    if let Some(tpm) = rates.tpm {
        draws.push(Draw {
            bucket: "tpm",
            charge: Charge {
                rate: Rate::per_minute(share(tpm)),
                cost: tokens,
            },
        });
    }
    draws
}

/// Charges a request of `tokens` estimated tokens to `principal`'s subject,
/// then to its tenant (a request its subject may not make never counts
/// against the tenant). Returns the state of the bucket with the least
/// room left, for the `RateLimit-*` headers; none when no limit applies.
pub async fn admit(
    svc: &Services,
    principal: &Principal,
    tokens: u64,
) -> Result<Option<BucketState>, LimitError> {
    let limits = svc.agents.settings(&principal.tenant).await?.rate_limits;
    let holders = [
        (
            Holder::subject(principal.tenant.clone(), principal.sub.clone()),
            limits.per_subject,
            "for this subject",
        ),
        (
            Holder::tenant(principal.tenant.clone()),
            limits.tenant,
            "for the tenant",
        ),
    ];
    // A request no bucket could ever take is refused before any is charged.
    for (_, rates, scope) in &holders {
        let shards = u64::from(shards(*rates));
        if let Some(tpm) = rates.tpm.filter(|tpm| tokens > (*tpm / shards).max(1)) {
            return Err(LimitError::TooLarge {
                tokens,
                limit: tpm,
                scope,
            });
        }
    }
    let now = svc.clock.now();
    let mut tightest: Option<BucketState> = None;
    for (holder, rates, scope) in holders {
        let draws = draws(rates, shards(rates), tokens);
        match take(svc, holder, rates, &draws, now).await? {
            None => {}
            Some(Take::Allowed(states)) => {
                for state in states {
                    let room = |s: &BucketState| s.remaining as f64 / s.limit.max(1) as f64;
                    if tightest.as_ref().is_none_or(|t| room(&state) < room(t)) {
                        tightest = Some(state);
                    }
                }
            }
            Some(Take::Refused { bucket, refused }) => {
                let draw = draws[bucket.min(draws.len() - 1)];
                tracing::info!(tenant = %principal.tenant, limit = draw.bucket, scope, "rate limited");
                return Err(LimitError::Limited {
                    limit: draw.bucket,
                    scope,
                    retry_after: wait_of(&refused),
                    state: BucketState {
                        limit: draw.charge.rate.limit,
                        remaining: 0,
                        reset_us: refused.retry_after_us,
                    },
                });
            }
        }
    }
    Ok(tightest)
}

/// Takes `draws` from one holder's buckets, limited to `rates`: a shard at
/// random, and for a sharded holder a second before refusing. None when
/// the holder has no limit (nothing is written).
async fn take(
    svc: &Services,
    holder: Holder,
    rates: Rates,
    draws: &[Draw],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Take>, StoreError> {
    if draws.is_empty() {
        return Ok(None);
    }
    let shards = shards(rates);
    let first = rand::random_range(0..shards);
    let mut take = svc
        .limiter
        .take(&holder.clone().in_shard(first), draws, now)
        .await?;
    if shards > 1 && matches!(take, Take::Refused { .. }) {
        let second = (first + 1 + rand::random_range(0..shards - 1)) % shards;
        take = svc
            .limiter
            .take(&holder.in_shard(second), draws, now)
            .await?;
    }
    Ok(Some(take))
}

/// Whole seconds, rounded up: a client that waits them is admitted.
fn wait_of(refused: &Refused) -> Duration {
    let us = u64::try_from(refused.retry_after_us).unwrap_or(0);
    Duration::from_secs(us.div_ceil(1_000_000).max(1))
}

/// What an agent's own limits (`rpm`, `tpm`: its provider key's) say to one
/// more call of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallAdmission {
    /// Taken (or the agent has no limit).
    Admitted,
    /// At its limit: it has room again after this long.
    Wait(Duration),
    /// The call alone is more tokens than the agent's minute allows.
    Never,
}

/// Takes one call of `tokens` estimated tokens from `agent`'s buckets, shared
/// by every instance (one conditional write, only for an agent with limits).
pub async fn admit_call(
    svc: &Services,
    agent: &Agent,
    tokens: u64,
) -> Result<CallAdmission, StoreError> {
    let rates = Rates {
        rpm: agent.spec.constraints.rpm.map(u64::from),
        tpm: agent.spec.constraints.tpm.map(u64::from),
    };
    let shards = shards(rates);
    if rates
        .tpm
        .is_some_and(|tpm| tokens > (tpm / u64::from(shards)).max(1))
    {
        return Ok(CallAdmission::Never);
    }
    let holder = Holder::agent(agent.owner.clone(), agent.id.clone());
    let draws = draws(rates, shards, tokens);
    Ok(
        match take(svc, holder, rates, &draws, svc.clock.now()).await? {
            None | Some(Take::Allowed(_)) => CallAdmission::Admitted,
            Some(Take::Refused { refused, .. }) => {
                tracing::info!(agent = %agent.id, "agent at its rate limit");
                CallAdmission::Wait(wait_of(&refused))
            }
        },
    )
}

/// Gives back a call taken by `admit_call` that will not be made (its
/// panel waits, or another delivery planned the task): to one shard of
/// the agent's buckets, the shard a take would pick. Best effort: a failed
/// write keeps the limit stricter, never looser.
pub async fn give_back_call(svc: &Services, agent: &Agent, tokens: u64) {
    let rates = Rates {
        rpm: agent.spec.constraints.rpm.map(u64::from),
        tpm: agent.spec.constraints.tpm.map(u64::from),
    };
    let shards = shards(rates);
    let draws = draws(rates, shards, tokens);
    if draws.is_empty() {
        return;
    }
    let holder = Holder::agent(agent.owner.clone(), agent.id.clone())
        .in_shard(rand::random_range(0..shards));
    if let Err(e) = svc
        .limiter
        .give_back(&holder, &draws, svc.clock.now())
        .await
    {
        tracing::warn!(error = %e, agent = %agent.id, "could not give back a call's take");
    }
}

/// One of an agent's limits and what of it is used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct LimitUse {
    /// Per minute.
    pub limit: u64,
    /// Taken within the last minute's worth (calls, or estimated tokens).
    pub used: u64,
}

/// What an agent's `rpm` and `tpm` limits have in use now (none where it
/// has no limit): read, never taken.
pub async fn agent_use(
    svc: &Services,
    agent: &Agent,
) -> Result<(Option<LimitUse>, Option<LimitUse>), StoreError> {
    let rates = Rates {
        rpm: agent.spec.constraints.rpm.map(u64::from),
        tpm: agent.spec.constraints.tpm.map(u64::from),
    };
    if rates.rpm.is_none() && rates.tpm.is_none() {
        return Ok((None, None));
    }
    let shards = shards(rates);
    let now_us = crate::ports::limits::micros(svc.clock.now());
    let (mut rpm_used, mut tpm_used) = (0u64, 0u64);
    for shard in 0..shards {
        let holder = Holder::agent(agent.owner.clone(), agent.id.clone()).in_shard(shard);
        let tats = svc.limiter.peek(&holder, &["rpm", "tpm"]).await?;
        // A bucket's use is its TAT's lead on now, in its emission intervals.
        let used = |limit: Option<u64>, tat: Option<i64>| {
            let (Some(limit), Some(tat)) = (limit, tat) else {
                return 0;
            };
            let share = (limit / u64::from(shards)).max(1);
            let charge = Charge {
                rate: Rate::per_minute(share),
                cost: 1,
            };
            share - charge.state(tat, now_us).remaining
        };
        rpm_used += used(rates.rpm, tats.first().copied().flatten());
        tpm_used += used(rates.tpm, tats.get(1).copied().flatten());
    }
    let of = |limit: Option<u64>, used| limit.map(|limit| LimitUse { limit, used });
    Ok((of(rates.rpm, rpm_used), of(rates.tpm, tpm_used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_one_item_until_its_request_limit_needs_more() {
        let rates = |rpm| Rates { rpm, tpm: None };
        assert_eq!(shards(rates(None)), 1);
        assert_eq!(shards(rates(Some(10))), 1);
        // 400 takes a second: one item.
        assert_eq!(shards(rates(Some(24_000))), 1);
        // 2,000 a second (120,000 a minute): five items of 400 each.
        assert_eq!(shards(rates(Some(120_000))), 5);
        let split = draws(
            Rates {
                rpm: Some(120_000),
                tpm: Some(1_000_000),
            },
            5,
            7,
        );
        assert_eq!(split[0].charge.rate.limit, 24_000);
        assert_eq!(split[1].charge.rate.limit, 200_000);
        assert_eq!(split[1].charge.cost, 7);
    }
}
