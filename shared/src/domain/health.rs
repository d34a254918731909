//! Agent health: a circuit breaker per agent, shared by every instance, and
//! the latency statistics routing reads. Pure: the store keeps the counters
//! and the state; the rules are here.
//!
//! **Counters.** Every call result adds to its agent's bucket of
//! [`BUCKET_MS`] (calls, provider-side failures, the latency of successes),
//! with `ADD` in the same write as the result. Only provider-side failures
//! count ([`ErrorClass::is_provider_fault`]): a caller's bad request, a
//! context length or a content refusal says nothing of the agent, so one
//! tenant's bad requests cannot take a shared agent away from everyone.
//!
//! **Circuit.** Closed while the window's failure rate stays under the
//! agent's threshold (or it has fewer calls than the minimum). Past it, the
//! first reader opens it (a conditional write on the state's version) for
//! the cooldown. After the cooldown exactly one probe goes through: the
//! reader that wins a conditional write on the version. The probe's outcome
//! closes the circuit (counting starts afresh) or opens it again. A 429
//! with a wait puts the agent in a cooldown of that wait, apart from the
//! circuit.
//!
//! **Latency.** An exponentially weighted mean of recent successful calls:
//! each bucket's calls weigh `2^(-age / LATENCY_HALF_LIFE_MS)`, over the
//! last [`LATENCY_HORIZON_BUCKETS`] buckets.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::call::ErrorClass;
use super::ids::AgentId;
use super::secret::Owner;

/// The length of a counting bucket.
pub const BUCKET_MS: i64 = 10_000;
/// Buckets read for the latency mean (ten minutes); the failure window is
/// at most this long.
pub const LATENCY_HORIZON_BUCKETS: i64 = 60;
/// The age at which a call's latency weighs half as much as a fresh one's.
pub const LATENCY_HALF_LIFE_MS: f64 = 60_000.0;
/// How long a state item outlives its last change (the table's TTL drops
/// it; an agent unused that long starts closed).
pub const STATE_RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;

/// The breaker's settings, per agent (`breaker` in its definition).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    /// Calls in the window before the rate is judged (default 10).
    #[serde(default = "default_min_requests")]
    #[schema(minimum = 1, maximum = 10000)]
    pub min_requests: u32,
    /// The share of calls failed on the provider's side that opens the
    /// circuit (default 0.5).
    #[serde(default = "default_failure_rate")]
    #[schema(minimum = 0.01, maximum = 1)]
    pub failure_rate: f64,
    /// The window the rate is taken over, in seconds, counted in buckets of
    /// ten (default 60; 10 to 600).
    #[serde(default = "default_window_s")]
    #[schema(minimum = 10, maximum = 600)]
    pub window_s: u32,
    /// How long an open circuit stays open before a probe (default 30; 1 to 3600).
    #[serde(default = "default_cooldown_s")]
    #[schema(minimum = 1, maximum = 3600)]
    pub cooldown_s: u32,
}

fn default_min_requests() -> u32 {
    10
}
fn default_failure_rate() -> f64 {
    0.5
}
fn default_window_s() -> u32 {
    60
}
fn default_cooldown_s() -> u32 {
    30
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            min_requests: default_min_requests(),
            failure_rate: default_failure_rate(),
            window_s: default_window_s(),
            cooldown_s: default_cooldown_s(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerSettingsError {
    #[error("breaker.min_requests must be between 1 and 10000")]
    MinRequests,
    #[error("breaker.failure_rate must be between 0.01 and 1")]
    FailureRate,
    #[error("breaker.window_s must be between 10 and 600")]
    Window,
    #[error("breaker.cooldown_s must be between 1 and 3600")]
    Cooldown,
}

impl BreakerSettingsError {
    pub fn field(&self) -> &'static str {
        match self {
            BreakerSettingsError::MinRequests => "breaker.min_requests",
            BreakerSettingsError::FailureRate => "breaker.failure_rate",
            BreakerSettingsError::Window => "breaker.window_s",
            BreakerSettingsError::Cooldown => "breaker.cooldown_s",
        }
    }
}

impl BreakerSettings {
    pub fn check(&self) -> Result<(), BreakerSettingsError> {
        if !(1..=10_000).contains(&self.min_requests) {
            return Err(BreakerSettingsError::MinRequests);
        }
        if !(0.01..=1.0).contains(&self.failure_rate) {
            return Err(BreakerSettingsError::FailureRate);
        }
        let horizon_s = (LATENCY_HORIZON_BUCKETS * BUCKET_MS / 1000) as u32;
        if !(10..=horizon_s).contains(&self.window_s) {
            return Err(BreakerSettingsError::Window);
        }
        if !(1..=3600).contains(&self.cooldown_s) {
            return Err(BreakerSettingsError::Cooldown);
        }
        Ok(())
    }

    pub fn is_default(&self) -> bool {
        *self == BreakerSettings::default()
    }

    fn window_buckets(&self) -> i64 {
        (i64::from(self.window_s) * 1000 + BUCKET_MS - 1) / BUCKET_MS
    }

    fn cooldown_ms(&self) -> i64 {
        i64::from(self.cooldown_s) * 1000
    }
}

/// The bucket a moment falls in.
pub fn bucket_of(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis().div_euclid(BUCKET_MS)
}

/// The first bucket a read at `now` needs.
pub fn oldest_bucket_read(now: DateTime<Utc>) -> i64 {
    bucket_of(now) - LATENCY_HORIZON_BUCKETS + 1
}

/// When a bucket's item may go: once no read needs it.
pub fn bucket_expiry_ms(index: i64) -> i64 {
    (index + LATENCY_HORIZON_BUCKETS + 1) * BUCKET_MS
}

/// One bucket's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub index: i64,
    /// Calls that reached the provider and were judged: successes and
    /// provider-side failures.
    pub calls: u64,
    pub failures: u64,
    /// Successful calls and their summed latency.
    pub latency_count: u64,
    pub latency_sum_ms: u64,
}

/// The breaker's state item: changed only on transitions, each bumping
/// `version` (the condition of the conditional changes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerState {
    #[serde(default)]
    pub version: u64,
    /// Open until then (a probe may go after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_until_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_at_ms: Option<i64>,
    /// A probe is in flight until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_until_ms: Option<i64>,
    /// Buckets that start before this are not counted: the circuit closed then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_from_ms: Option<i64>,
    /// The provider asked for no calls before then (a 429's wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_until_ms: Option<i64>,
    /// How many times the circuit opened.
    #[serde(default)]
    pub trips: u64,
}

/// What the store holds for an agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthRecord {
    pub state: BreakerState,
    /// The buckets from [`oldest_bucket_read`] on, in any order.
    pub buckets: Vec<Bucket>,
}

/// The state of a circuit, as the health endpoints show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    Closed,
    Open,
    /// The cooldown is over: the next call is the probe (or one is in flight).
    HalfOpen,
}

/// What routing may do with an agent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Closed: call it.
    Pass,
    /// The window's failures passed the threshold: open the circuit (then
    /// skip the agent).
    Trip,
    /// The cooldown is over and no probe is in flight: claim the probe, and
    /// call it if the claim wins.
    Probe,
    /// Open, or a probe in flight, until then: skip it.
    Open { until: DateTime<Utc> },
    /// The provider asked for a wait: skip it until then (not a failure).
    CoolingDown { until: DateTime<Utc> },
}

/// An agent's health, judged at a moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assessment {
    pub circuit: Circuit,
    pub gate: Gate,
    /// Calls and provider-side failures counted in the window.
    pub calls: u64,
    pub failures: u64,
    /// `None` with no calls counted.
    pub failure_rate: Option<f64>,
    /// The weighted mean latency of recent successes; `None` without any.
    pub latency_ms: Option<f64>,
    /// When the agent is next tried, if not now.
    pub retry_at: Option<DateTime<Utc>>,
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Judges `record` at `now` under `settings`.
pub fn assess(record: &HealthRecord, settings: &BreakerSettings, now: DateTime<Utc>) -> Assessment {
    let now_ms = now.timestamp_millis();
    let current = bucket_of(now);
    let state = &record.state;
    let counted_from = state.counted_from_ms.unwrap_or(i64::MIN);
    let (calls, failures) = record
        .buckets
        .iter()
        .filter(|b| b.index > current - settings.window_buckets() && b.index <= current)
        .filter(|b| b.index.saturating_mul(BUCKET_MS) >= counted_from)
        .fold((0, 0), |(c, f), b| (c + b.calls, f + b.failures));
    let failure_rate = (calls > 0).then(|| failures as f64 / calls as f64);
    let latency_ms = latency(&record.buckets, now);
    let tripped = calls >= u64::from(settings.min_requests)
        && failure_rate.is_some_and(|rate| rate >= settings.failure_rate);
    let cooldown = state.cooldown_until_ms.filter(|&until| until > now_ms);
    let (circuit, gate) = match state.open_until_ms {
        Some(until) if until > now_ms => (Circuit::Open, Gate::Open { until: at(until) }),
        Some(_) => match state.probe_until_ms.filter(|&p| p > now_ms) {
            Some(probe) => (Circuit::HalfOpen, Gate::Open { until: at(probe) }),
            None => (Circuit::HalfOpen, Gate::Probe),
        },
        None if tripped => (Circuit::Open, Gate::Trip),
        None => (Circuit::Closed, Gate::Pass),
    };
    // A provider's wait holds back every call but the probe's claim is
    // still the breaker's: the wait is the stricter.
    let gate = match (gate, cooldown) {
        (Gate::Pass | Gate::Probe, Some(until)) => Gate::CoolingDown { until: at(until) },
        (gate, _) => gate,
    };
    let retry_at = match gate {
        Gate::Open { until } | Gate::CoolingDown { until } => Some(until),
        Gate::Trip => Some(at(now_ms + settings.cooldown_ms())),
        Gate::Pass | Gate::Probe => None,
    };
    Assessment {
        circuit,
        gate,
        calls,
        failures,
        failure_rate,
        latency_ms,
        retry_at,
    }
}

/// The exponentially weighted mean latency of the successes in `buckets`.
fn latency(buckets: &[Bucket], now: DateTime<Utc>) -> Option<f64> {
    let now_ms = now.timestamp_millis() as f64;
    let (mut weighted_sum, mut weight) = (0.0, 0.0);
    for b in buckets.iter().filter(|b| b.latency_count > 0) {
        // A bucket's calls are taken at its middle.
        let middle = (b.index as f64 + 0.5) * BUCKET_MS as f64;
        let age = (now_ms - middle).max(0.0);
        let w = (-age / LATENCY_HALF_LIFE_MS).exp2();
        weighted_sum += w * b.latency_sum_ms as f64;
        weight += w * b.latency_count as f64;
    }
    (weight > 0.0).then(|| weighted_sum / weight)
}

/// A conditional change of the state: written only if the state is still
/// at the version the reader saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateChange {
    /// Open the circuit until `until_ms`.
    Trip { at_ms: i64, until_ms: i64 },
    /// Hold the probe until `until_ms`.
    ClaimProbe { until_ms: i64 },
}

impl StateChange {
    pub fn trip(settings: &BreakerSettings, now: DateTime<Utc>) -> Self {
        let at_ms = now.timestamp_millis();
        StateChange::Trip {
            at_ms,
            until_ms: at_ms + settings.cooldown_ms(),
        }
    }

    /// A probe's claim, held for as long as its call may take.
    pub fn claim_probe(now: DateTime<Utc>, call_takes: std::time::Duration) -> Self {
        StateChange::ClaimProbe {
            until_ms: now.timestamp_millis() + call_takes.as_millis() as i64,
        }
    }

    /// The state as the change leaves it.
    pub fn applied(&self, seen: &BreakerState) -> BreakerState {
        let mut next = BreakerState {
            version: seen.version + 1,
            ..*seen
        };
        match *self {
            StateChange::Trip { at_ms, until_ms } => {
                next.open_until_ms = Some(until_ms);
                next.opened_at_ms = Some(at_ms);
                next.probe_until_ms = None;
                next.trips += 1;
            }
            StateChange::ClaimProbe { until_ms } => next.probe_until_ms = Some(until_ms),
        }
        next
    }
}

/// What a call tells of its agent's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    Success {
        latency_ms: u64,
    },
    /// Failed on the provider's side.
    Failure,
    /// Says nothing of the agent (a caller's error, a call not made).
    Neutral,
}

impl Sample {
    pub fn of(failed_with: Option<ErrorClass>, requests_made: bool, latency_ms: u64) -> Self {
        match failed_with {
            _ if !requests_made => Sample::Neutral,
            None => Sample::Success { latency_ms },
            Some(class) if class.is_provider_fault() => Sample::Failure,
            Some(_) => Sample::Neutral,
        }
    }
}

/// How a probe's call ends its probe (unconditionally: the probe holds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeEnd {
    /// It succeeded: the circuit closes, counting from now.
    Close { at_ms: i64 },
    /// It failed on the provider's side: open again until then.
    Reopen { until_ms: i64 },
    /// It told nothing (a caller's error): another probe may go.
    Release,
}

/// A call's outcome for its agent's health, written with the call's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub owner: Owner,
    pub agent: AgentId,
    pub bucket: i64,
    pub sample: Sample,
    /// Set when the call was the agent's probe.
    pub probe: Option<ProbeEnd>,
}

impl Observation {
    pub fn new(
        owner: Owner,
        agent: AgentId,
        sample: Sample,
        probe: bool,
        settings: &BreakerSettings,
        now: DateTime<Utc>,
    ) -> Self {
        let now_ms = now.timestamp_millis();
        let probe = probe.then_some(match sample {
            Sample::Success { .. } => ProbeEnd::Close { at_ms: now_ms },
            Sample::Failure => ProbeEnd::Reopen {
                until_ms: now_ms + settings.cooldown_ms(),
            },
            Sample::Neutral => ProbeEnd::Release,
        });
        Observation {
            owner,
            agent,
            bucket: bucket_of(now),
            sample,
            probe,
        }
    }

    /// Whether it writes anything.
    pub fn writes(&self) -> bool {
        self.sample != Sample::Neutral || self.probe.is_some()
    }

    /// The bucket's counters it adds.
    pub fn counts(&self) -> Option<Bucket> {
        let mut bucket = Bucket {
            index: self.bucket,
            calls: 1,
            ..Bucket::default()
        };
        match self.sample {
            Sample::Neutral => return None,
            Sample::Failure => bucket.failures = 1,
            Sample::Success { latency_ms } => {
                bucket.latency_count = 1;
                bucket.latency_sum_ms = latency_ms;
            }
        }
        Some(bucket)
    }

    /// The state as the probe's end leaves it.
    pub fn end_probe(end: ProbeEnd, seen: &BreakerState) -> BreakerState {
        let mut next = BreakerState {
            version: seen.version + 1,
            probe_until_ms: None,
            ..*seen
        };
        match end {
            ProbeEnd::Close { at_ms } => {
                next.open_until_ms = None;
                next.opened_at_ms = None;
                next.counted_from_ms = Some(at_ms);
            }
            ProbeEnd::Reopen { until_ms } => next.open_until_ms = Some(until_ms),
            ProbeEnd::Release => {}
        }
        next
    }
}

impl Bucket {
    pub fn add(&mut self, other: &Bucket) {
        self.calls += other.calls;
        self.failures += other.failures;
        self.latency_count += other.latency_count;
        self.latency_sum_ms += other.latency_sum_ms;
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn observe(record: &mut HealthRecord, sample: Sample, probe: bool, now: DateTime<Utc>) {
        let o = Observation::new(
            Owner::Platform,
            AgentId::parse("a").unwrap(),
            sample,
            probe,
            &BreakerSettings::default(),
            now,
        );
        if let Some(counts) = o.counts() {
            match record.buckets.iter_mut().find(|b| b.index == counts.index) {
                Some(b) => b.add(&counts),
                None => record.buckets.push(counts),
            }
        }
        if let Some(end) = o.probe {
            record.state = Observation::end_probe(end, &record.state);
        }
    }

    #[test]
    fn the_circuit_opens_past_the_rate_probes_once_after_the_cooldown_and_closes_or_reopens() {
        let settings = BreakerSettings::default();
        let mut record = HealthRecord::default();
        // Nine failures: under the minimum of ten calls, still closed.
        for i in 0..9 {
            observe(&mut record, Sample::Failure, false, t(i));
        }
        assert_eq!(assess(&record, &settings, t(9)).gate, Gate::Pass);
        // The tenth call, a success: 9 of 10 failed, past 0.5.
        observe(
            &mut record,
            Sample::Success { latency_ms: 100 },
            false,
            t(9),
        );
        let a = assess(&record, &settings, t(9));
        assert_eq!(
            (a.gate, a.circuit, a.calls, a.failures),
            (Gate::Trip, Circuit::Open, 10, 9)
        );
        assert_eq!(a.failure_rate, Some(0.9));
        // Opened: skipped until the cooldown ends.
        let trip = StateChange::trip(&settings, t(10));
        record.state = trip.applied(&record.state);
        assert_eq!(record.state.trips, 1);
        let a = assess(&record, &settings, t(39));
        assert_eq!(a.gate, Gate::Open { until: t(40) });
        assert_eq!(a.retry_at, Some(t(40)));
        // Half-open: a probe may be claimed; once claimed, others skip.
        assert_eq!(assess(&record, &settings, t(40)).gate, Gate::Probe);
        let seen = record.state;
        record.state =
            StateChange::claim_probe(t(40), std::time::Duration::from_secs(60)).applied(&seen);
        assert_eq!(record.state.version, seen.version + 1);
        let a = assess(&record, &settings, t(41));
        assert_eq!(
            (a.circuit, a.gate),
            (Circuit::HalfOpen, Gate::Open { until: t(100) })
        );
        // The probe fails: open again for a cooldown.
        observe(&mut record, Sample::Failure, true, t(45));
        assert_eq!(
            assess(&record, &settings, t(46)).gate,
            Gate::Open { until: t(75) }
        );
        // The next probe succeeds: closed, and the old failures no longer count.
        record.state = StateChange::claim_probe(t(80), std::time::Duration::from_secs(60))
            .applied(&record.state);
        observe(
            &mut record,
            Sample::Success { latency_ms: 100 },
            true,
            t(81),
        );
        let a = assess(&record, &settings, t(95));
        assert_eq!(
            (a.circuit, a.gate, a.failures),
            (Circuit::Closed, Gate::Pass, 0)
        );
    }

    #[test]
    fn failures_age_out_of_the_window_and_a_probe_that_told_nothing_is_released() {
        let settings = BreakerSettings {
            min_requests: 2,
            ..BreakerSettings::default()
        };
        let mut record = HealthRecord::default();
        observe(&mut record, Sample::Failure, false, t(0));
        observe(&mut record, Sample::Failure, false, t(1));
        assert_eq!(assess(&record, &settings, t(2)).gate, Gate::Trip);
        // A minute later they are out of the window.
        assert_eq!(assess(&record, &settings, t(70)).gate, Gate::Pass);
        // A caller's error counts for nothing; as a probe it frees the claim.
        record.state = StateChange::trip(&settings, t(2)).applied(&record.state);
        record.state = StateChange::claim_probe(t(40), std::time::Duration::from_secs(60))
            .applied(&record.state);
        observe(&mut record, Sample::Neutral, true, t(41));
        assert_eq!(assess(&record, &settings, t(42)).gate, Gate::Probe);
        assert_eq!(assess(&record, &settings, t(42)).calls, 2);
    }

    #[test]
    fn a_providers_wait_holds_the_agent_back_without_counting_against_it() {
        let settings = BreakerSettings::default();
        let record = HealthRecord {
            state: BreakerState {
                cooldown_until_ms: Some(t(20).timestamp_millis()),
                ..BreakerState::default()
            },
            buckets: Vec::new(),
        };
        let a = assess(&record, &settings, t(5));
        assert_eq!(
            (a.circuit, a.gate),
            (Circuit::Closed, Gate::CoolingDown { until: t(20) })
        );
        assert_eq!(assess(&record, &settings, t(20)).gate, Gate::Pass);
    }

    #[test]
    fn latency_weighs_recent_calls_more() {
        let mut record = HealthRecord::default();
        // Ten minutes ago 1,000 ms; now 100 ms.
        observe(
            &mut record,
            Sample::Success { latency_ms: 1000 },
            false,
            t(0),
        );
        observe(
            &mut record,
            Sample::Success { latency_ms: 100 },
            false,
            t(540),
        );
        let mean = assess(&record, &BreakerSettings::default(), t(545))
            .latency_ms
            .unwrap();
        // 2^-9 weight for the old one: the mean is close to 100.
        assert!((100.0..103.0).contains(&mean), "{mean}");
        assert_eq!(
            assess(&HealthRecord::default(), &BreakerSettings::default(), t(0)).latency_ms,
            None
        );
    }

    #[test]
    fn only_provider_side_failures_count() {
        assert_eq!(
            Sample::of(Some(ErrorClass::Server), true, 5),
            Sample::Failure
        );
        assert_eq!(
            Sample::of(Some(ErrorClass::RateLimited), true, 5),
            Sample::Failure
        );
        for class in [
            ErrorClass::BadRequest,
            ErrorClass::ContextLengthExceeded,
            ErrorClass::ContentFiltered,
            ErrorClass::ContentBlocked,
        ] {
            assert_eq!(
                Sample::of(Some(class), true, 5),
                Sample::Neutral,
                "{class:?}"
            );
        }
        // Nothing sent: nothing learnt.
        assert_eq!(
            Sample::of(Some(ErrorClass::Timeout), false, 5),
            Sample::Neutral
        );
        assert_eq!(Sample::of(None, true, 5), Sample::Success { latency_ms: 5 });
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(BreakerSettings::default().check(), Ok(()));
        let bad = BreakerSettings {
            window_s: 601,
            ..BreakerSettings::default()
        };
        assert_eq!(bad.check(), Err(BreakerSettingsError::Window));
        let bad = BreakerSettings {
            failure_rate: 0.0,
            ..BreakerSettings::default()
        };
        assert_eq!(
            bad.check().map_err(|e| e.field()),
            Err("breaker.failure_rate")
        );
    }
}
