//! Rate limits at the door: a request that creates work is charged to its
//! tenant's and its subject's token buckets (requests, and estimated
//! tokens, per minute) before anything is stored.

use std::time::Duration;

use crate::domain::rate::{BucketState, Charge, Rate, Take};
use crate::domain::{Principal, Rates};
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

/// The draws `rates` make for one request of `tokens` estimated tokens.
fn draws(rates: Rates, tokens: u64) -> Vec<Draw> {
    let mut draws = Vec::new();
    if let Some(rpm) = rates.rpm {
        draws.push(Draw {
            bucket: "rpm",
            charge: Charge {
                rate: Rate::per_minute(rpm),
                cost: 1,
            },
        });
    }
    if let Some(tpm) = rates.tpm {
        draws.push(Draw {
            bucket: "tpm",
            charge: Charge {
                rate: Rate::per_minute(tpm),
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
            Holder::Subject(principal.tenant.clone(), principal.sub.clone()),
            limits.per_subject,
            "for this subject",
        ),
        (
            Holder::Tenant(principal.tenant.clone()),
            limits.tenant,
            "for the tenant",
        ),
    ];
    // A request no bucket could ever take is refused before any is charged.
    for (_, rates, scope) in &holders {
        if let Some(tpm) = rates.tpm.filter(|tpm| tokens > *tpm) {
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
        let draws = draws(rates, tokens);
        if draws.is_empty() {
            continue;
        }
        match svc.limiter.take(&holder, &draws, now).await? {
            Take::Allowed(states) => {
                for state in states {
                    let room = |s: &BucketState| s.remaining as f64 / s.limit.max(1) as f64;
                    if tightest.as_ref().is_none_or(|t| room(&state) < room(t)) {
                        tightest = Some(state);
                    }
                }
            }
            Take::Refused { bucket, refused } => {
                let draw = draws[bucket.min(draws.len() - 1)];
                tracing::info!(tenant = %principal.tenant, limit = draw.bucket, scope, "rate limited");
                let retry_after_us = u64::try_from(refused.retry_after_us).unwrap_or(0);
                return Err(LimitError::Limited {
                    limit: draw.bucket,
                    scope,
                    // Whole seconds, rounded up: a client that waits them is admitted.
                    retry_after: Duration::from_secs(retry_after_us.div_ceil(1_000_000).max(1)),
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
