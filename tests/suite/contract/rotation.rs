//! Rotation counters: shared, every turn distinct under concurrency, one
//! counter per tenant, strategy and task type.

use chrono::Utc;
use maof::domain::{RoutingStrategy, TaskType, TenantId};
use maof::ports::RotationKey;
use maof_tests::backends::Backend;

use super::on_both_backends;

fn key(tenant: &str, strategy: RoutingStrategy, task_type: &str) -> RotationKey {
    RotationKey {
        tenant: TenantId::parse(tenant).unwrap(),
        strategy,
        task_type: TaskType::parse(task_type).unwrap(),
    }
}

async fn concurrent_turns_are_distinct_and_consecutive(b: Backend) {
    let rr = key("acme", RoutingStrategy::RoundRobin, "text");
    let now = Utc::now();
    // A counter not used yet starts at 0.
    assert_eq!(b.rotation.next(&rr, 1, now).await.unwrap(), 0, "{}", b.name);
    let mut turns = futures::future::join_all((0..40).map(|_| {
        let (rotation, rr) = (b.rotation.clone(), rr.clone());
        async move { rotation.next(&rr, 1, now).await.unwrap() }
    }))
    .await;
    turns.sort_unstable();
    assert_eq!(turns, (1..41).collect::<Vec<u64>>(), "{}", b.name);
    // A fan-out takes several turns at once: a range no one else gets.
    assert_eq!(
        b.rotation.next(&rr, 3, now).await.unwrap(),
        41,
        "{}",
        b.name
    );
    assert_eq!(
        b.rotation.next(&rr, 1, now).await.unwrap(),
        44,
        "{}",
        b.name
    );
    // Another tenant, strategy or task type counts apart.
    for other in [
        key("globex", RoutingStrategy::RoundRobin, "text"),
        key("acme", RoutingStrategy::Weighted, "text"),
        key("acme", RoutingStrategy::RoundRobin, "code"),
    ] {
        assert_eq!(
            b.rotation.next(&other, 1, now).await.unwrap(),
            0,
            "{}: {other:?}",
            b.name
        );
    }
}

on_both_backends!(concurrent_turns_are_distinct_and_consecutive);
