//! Agents' health as the stages use it: read through a short cache, judged
//! by `domain::health`, and the breaker's changes (open, claim a probe, a
//! provider's cooldown) written to the shared store.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::health::{
    Assessment, BreakerState, Gate, HealthRecord, Observation, Sample, StateChange, assess,
};
use crate::domain::{Agent, AgentId, CallResult, Owner, Task};
use crate::ports::StoreError;

use super::Services;
use super::agents::TtlMap;
use super::limits::{self, LimitUse};

/// The shortest provider wait that holds an agent back for every instance.
const MIN_COOLDOWN: Duration = Duration::from_secs(1);

/// Agents' health records, cached for `Settings::health_ttl`: route reads
/// an agent's for each task it plans. A change this process writes drops
/// the agent's entry; other instances see it within the TTL.
pub struct HealthCache {
    records: TtlMap<(Owner, AgentId), HealthRecord>,
}

impl HealthCache {
    pub fn new(ttl: Duration) -> Self {
        HealthCache {
            records: TtlMap::new(ttl),
        }
    }
}

/// An agent's health record, from the cache or the store.
async fn record(svc: &Services, agent: &Agent) -> Result<HealthRecord, StoreError> {
    let key = (agent.owner.clone(), agent.id.clone());
    if let Some(record) = svc.health_cache.records.get(&key) {
        return Ok(record);
    }
    let record = svc
        .health
        .read(&agent.owner, &agent.id, svc.clock.now())
        .await?;
    svc.health_cache.records.insert(key, record.clone());
    Ok(record)
}

/// An agent's health and its rate limits' use, as the health endpoints
/// show them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthReport {
    pub assessment: Assessment,
    pub trips: u64,
    pub rpm: Option<LimitUse>,
    pub tpm: Option<LimitUse>,
}

/// `agent`'s health now, read from the store (not the cache: an operator
/// looking sees the state as it is).
pub async fn report(svc: &Services, agent: &Agent) -> Result<HealthReport, StoreError> {
    let now = svc.clock.now();
    let (record, (rpm, tpm)) = tokio::try_join!(
        svc.health.read(&agent.owner, &agent.id, now),
        limits::agent_use(svc, agent)
    )?;
    Ok(HealthReport {
        assessment: assess(&record, &agent.spec.breaker, now),
        trips: record.state.trips,
        rpm,
        tpm,
    })
}

/// `agent`'s recent mean latency, from the cached record; `None` without
/// recent successes.
pub(crate) async fn latency(svc: &Services, agent: &Agent) -> Result<Option<f64>, StoreError> {
    let record = record(svc, agent).await?;
    Ok(assess(&record, &agent.spec.breaker, svc.clock.now()).latency_ms)
}

/// Whether a call may go to an agent, as far as its health goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Closed: call it.
    Call,
    /// Half-open: call it if the probe's claim is won ([`claim_probe`],
    /// from the state seen here), after the agent's other checks.
    Probe(BreakerState),
    /// The circuit is open (or its probe in flight) until then.
    Open(DateTime<Utc>),
    /// The provider asked for no calls until then.
    Wait(DateTime<Utc>),
}

/// What `agent`'s health allows. A reader that finds the failure rate past
/// the threshold opens the circuit (a conditional write: of several
/// readers, one writes it).
pub(crate) async fn admission(svc: &Services, agent: &Agent) -> Result<Admission, StoreError> {
    let record = record(svc, agent).await?;
    let now = svc.clock.now();
    let judged = assess(&record, &agent.spec.breaker, now);
    Ok(match judged.gate {
        Gate::Pass => Admission::Call,
        Gate::Probe => Admission::Probe(record.state),
        Gate::Open { until } => Admission::Open(until),
        Gate::CoolingDown { until } => Admission::Wait(until),
        Gate::Trip => {
            let trip = StateChange::trip(&agent.spec.breaker, now);
            let opened = change(svc, agent, &record.state, trip).await?;
            tracing::warn!(
                agent = %agent.id,
                calls = judged.calls,
                failures = judged.failures,
                opened,
                "the agent's failure rate passed its breaker's threshold: circuit open"
            );
            Admission::Open(judged.retry_at.unwrap_or(now))
        }
    })
}

/// Claims `agent`'s probe for a call that may take `call_takes`, from the
/// state `seen` when it was judged half-open (a claim from a later read
/// could take the probe another caller holds); whether this caller won it
/// (of concurrent claims, exactly one does).
pub(crate) async fn claim_probe(
    svc: &Services,
    agent: &Agent,
    seen: &BreakerState,
    call_takes: Duration,
) -> Result<bool, StoreError> {
    let claim = StateChange::claim_probe(svc.clock.now(), call_takes);
    let won = change(svc, agent, seen, claim).await?;
    tracing::info!(agent = %agent.id, won, "circuit half-open: probe claimed");
    Ok(won)
}

async fn change(
    svc: &Services,
    agent: &Agent,
    seen: &BreakerState,
    change: StateChange,
) -> Result<bool, StoreError> {
    let written = svc
        .health
        .change(&agent.owner, &agent.id, seen, change)
        .await;
    // Written or not, the cached state is stale now.
    svc.health_cache
        .records
        .remove(&(agent.owner.clone(), agent.id.clone()));
    written
}

/// How long a probe's claim is held: long enough for the call's every
/// attempt and a queue hop, after which another probe may go.
pub(crate) fn probe_lease(agent: &Agent) -> Duration {
    let constraints = &agent.spec.constraints;
    Duration::from_millis(constraints.timeout_ms() * u64::from(constraints.max_attempts()))
        + Duration::from_secs(60)
}

/// A provider asked for no calls for `wait` (a 429): every instance holds
/// the agent back that long. Best effort: a failed write is logged, and
/// the provider's next 429 says it again.
pub(crate) async fn cool_down(svc: &Services, agent: &Agent, wait: Duration) {
    // A short wait is the retry's own business, not every instance's.
    if wait < MIN_COOLDOWN {
        return;
    }
    let until = svc.clock.now() + wait;
    if let Err(e) = svc.health.cool_down(&agent.owner, &agent.id, until).await {
        tracing::warn!(error = %e, agent = %agent.id, "could not record the provider's wait");
    }
    svc.health_cache
        .records
        .remove(&(agent.owner.clone(), agent.id.clone()));
}

/// What a stored result tells of its agents' health: its last agent's
/// outcome, and each agent it left's (a failure, or an escalated answer).
/// `probes` are the agents whose probe this call held.
pub(crate) async fn observations(
    svc: &Services,
    task: &Task,
    result: &CallResult,
    probes: &[AgentId],
) -> Result<Vec<Observation>, StoreError> {
    let now = svc.clock.now();
    let last = Sample::of(
        result.error.as_ref().map(|e| e.class),
        result.attempts > 0,
        result.latency_ms,
    );
    let tried = result
        .fell_back_from
        .iter()
        .map(|hop| {
            // An escalated hop answered: a success of its agent's.
            let class = hop.error.as_ref().map(|e| e.class);
            let sample = Sample::of(class, hop.attempts > 0, hop.latency_ms);
            (&hop.agent_id, sample)
        })
        .chain([(&result.agent_id, last)]);
    let mut observations = Vec::new();
    for (id, sample) in tried {
        let probe = probes.contains(id);
        if sample == Sample::Neutral && !probe {
            continue;
        }
        // An agent gone from the registry has no health to keep.
        if let Some(agent) = svc.agents.find(&task.tenant, id).await? {
            observations.push(Observation::new(
                agent.owner.clone(),
                agent.id.clone(),
                sample,
                probe,
                &agent.spec.breaker,
                now,
            ));
        }
    }
    Ok(observations)
}
