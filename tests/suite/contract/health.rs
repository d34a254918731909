//! Agents' health: a result's counts are written with the result (once,
//! whichever delivery writes first), and the breaker's conditional changes
//! let exactly one of concurrent writers through.

use std::time::Duration;

use chrono::Utc;
use maof::domain::health::{
    BreakerSettings, Circuit, Gate, Observation, Sample, StateChange, assess,
};
use maof::domain::{AgentId, Owner};
use maof_tests::backends::Backend;

use super::on_both_backends;
use super::task_store::{call_result, new_task, running_with_calls};

fn observation(agent: &str, sample: Sample, probe: bool) -> Observation {
    Observation::new(
        Owner::Platform,
        AgentId::parse(agent).unwrap(),
        sample,
        probe,
        &BreakerSettings::default(),
        Utc::now(),
    )
}

async fn a_results_counts_are_written_with_it_once(b: Backend) {
    let task = new_task("acme", None);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let calls = running_with_calls(b.tasks.as_ref(), &task, 2).await;
    let (a, other) = (
        AgentId::parse("a").unwrap(),
        AgentId::parse("other").unwrap(),
    );
    let health = [
        observation("a", Sample::Success { latency_ms: 120 }, false),
        observation("other", Sample::Failure, false),
    ];
    let result = call_result(calls[0], "x");
    // Three deliveries of one call: the counts are the first's only.
    for _ in 0..3 {
        b.tasks
            .put_call(&task.tenant, task.task_id, &result, &health)
            .await
            .unwrap();
    }
    b.tasks
        .record_call(
            &task.tenant,
            task.task_id,
            &call_result(calls[1], "y"),
            &[observation("a", Sample::Failure, false)],
        )
        .await
        .unwrap();
    let now = Utc::now();
    let read = b.health.read(&Owner::Platform, &a, now).await.unwrap();
    let judged = assess(&read, &BreakerSettings::default(), now);
    assert_eq!(
        (judged.calls, judged.failures),
        (2, 1),
        "{}: {read:?}",
        b.name
    );
    assert_eq!(judged.latency_ms, Some(120.0), "{}", b.name);
    let read = b.health.read(&Owner::Platform, &other, now).await.unwrap();
    assert_eq!(
        assess(&read, &BreakerSettings::default(), now).failures,
        1,
        "{}",
        b.name
    );
    // Another owner's agent of the same id is another agent.
    let tenants = Owner::Tenant(task.tenant.clone());
    let read = b.health.read(&tenants, &a, now).await.unwrap();
    assert!(read.buckets.is_empty(), "{}: {read:?}", b.name);
}

async fn of_concurrent_probe_claims_exactly_one_wins(b: Backend) {
    let agent = AgentId::parse("probed").unwrap();
    let owner = Owner::Platform;
    let now = Utc::now();
    let settings = BreakerSettings::default();
    let seen = b.health.read(&owner, &agent, now).await.unwrap().state;
    // Two readers see the threshold passed; one opens the circuit.
    let trip = StateChange::trip(&settings, now);
    let (x, y) = tokio::join!(
        b.health.change(&owner, &agent, &seen, trip),
        b.health.change(&owner, &agent, &seen, trip)
    );
    assert_eq!(
        u32::from(x.unwrap()) + u32::from(y.unwrap()),
        1,
        "{}",
        b.name
    );
    let later = now + chrono::Duration::seconds(31);
    let record = b.health.read(&owner, &agent, later).await.unwrap();
    assert_eq!(record.state.trips, 1, "{}", b.name);
    assert_eq!(
        assess(&record, &settings, later).gate,
        Gate::Probe,
        "{}",
        b.name
    );
    // After the cooldown, ten instances claim the probe: one wins.
    let claim = StateChange::claim_probe(later, Duration::from_secs(60));
    let claims = futures::future::join_all(
        (0..10).map(|_| b.health.change(&owner, &agent, &record.state, claim)),
    )
    .await;
    let won = claims.into_iter().filter(|c| *c.as_ref().unwrap()).count();
    assert_eq!(won, 1, "{}", b.name);
    let record = b.health.read(&owner, &agent, later).await.unwrap();
    let judged = assess(&record, &settings, later);
    assert_eq!(judged.circuit, Circuit::HalfOpen, "{}", b.name);
    assert!(
        matches!(judged.gate, Gate::Open { .. }),
        "{}: {judged:?}",
        b.name
    );
}

async fn a_providers_wait_is_kept_at_its_latest(b: Backend) {
    let agent = AgentId::parse("waited").unwrap();
    let owner = Owner::Platform;
    let now = Utc::now();
    let (long, short) = (
        now + chrono::Duration::seconds(30),
        now + chrono::Duration::seconds(5),
    );
    b.health.cool_down(&owner, &agent, long).await.unwrap();
    b.health.cool_down(&owner, &agent, short).await.unwrap();
    let record = b.health.read(&owner, &agent, now).await.unwrap();
    let gate = assess(&record, &BreakerSettings::default(), now).gate;
    let until = match gate {
        Gate::CoolingDown { until } => until,
        other => panic!("{}: {other:?}", b.name),
    };
    assert_eq!(
        until.timestamp_millis(),
        long.timestamp_millis(),
        "{}",
        b.name
    );
}

on_both_backends!(
    a_results_counts_are_written_with_it_once,
    of_concurrent_probe_claims_exactly_one_wins,
    a_providers_wait_is_kept_at_its_latest,
);
