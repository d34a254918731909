//! Rate-limit buckets: shared, exact under concurrency, all or nothing.

use chrono::Utc;
use maof::domain::rate::{Charge, Rate, Take};
use maof::domain::{AgentId, Owner, TenantId};
use maof::ports::{Draw, Holder};
use maof_tests::backends::Backend;

use super::on_both_backends;

fn rpm(limit: u64) -> Draw {
    Draw {
        bucket: "rpm",
        charge: Charge {
            rate: Rate::per_minute(limit),
            cost: 1,
        },
    }
}

fn tpm(limit: u64, cost: u64) -> Draw {
    Draw {
        bucket: "tpm",
        charge: Charge {
            rate: Rate::per_minute(limit),
            cost,
        },
    }
}

fn tenant(t: &str) -> Holder {
    Holder::tenant(TenantId::parse(t).unwrap())
}

async fn fifty_concurrent_takes_against_a_limit_of_ten_admit_exactly_ten(b: Backend) {
    let holder = tenant("acme");
    let now = Utc::now();
    let takes = futures::future::join_all((0..50).map(|_| {
        let (limiter, holder) = (b.limiter.clone(), holder.clone());
        async move { limiter.take(&holder, &[rpm(10)], now).await.unwrap() }
    }))
    .await;
    let allowed = takes
        .iter()
        .filter(|t| matches!(t, Take::Allowed(_)))
        .count();
    assert_eq!(allowed, 10, "{}: {takes:?}", b.name);
    for take in &takes {
        if let Take::Refused { refused, .. } = take {
            // The next unit is one interval (6 s) away, at most.
            assert!(
                (1..=6_000_000).contains(&refused.retry_after_us),
                "{}: {refused:?}",
                b.name
            );
        }
    }
    // Another holder has buckets of its own.
    let other = b
        .limiter
        .take(&tenant("globex"), &[rpm(10)], now)
        .await
        .unwrap();
    assert!(matches!(other, Take::Allowed(_)), "{}", b.name);
    // Time refills the bucket: one unit per interval.
    let later = now + chrono::Duration::seconds(6);
    let refilled = b.limiter.take(&holder, &[rpm(10)], later).await.unwrap();
    assert!(matches!(refilled, Take::Allowed(_)), "{}", b.name);
    let again = b.limiter.take(&holder, &[rpm(10)], later).await.unwrap();
    assert!(matches!(again, Take::Refused { .. }), "{}", b.name);
}

async fn a_take_of_several_buckets_moves_all_or_none(b: Backend) {
    let holder = Holder::subject(TenantId::parse("acme").unwrap(), "alice".into());
    let now = Utc::now();
    // 60 of 100 tokens, then 60 more: refused on tpm, and rpm not charged.
    let first = b
        .limiter
        .take(&holder, &[rpm(2), tpm(100, 60)], now)
        .await
        .unwrap();
    let Take::Allowed(states) = first else {
        panic!("{}: {first:?}", b.name);
    };
    assert_eq!(states[0].remaining, 1, "{}", b.name);
    assert_eq!(states[1].remaining, 40, "{}", b.name);
    let second = b
        .limiter
        .take(&holder, &[rpm(2), tpm(100, 60)], now)
        .await
        .unwrap();
    assert!(
        matches!(second, Take::Refused { bucket: 1, .. }),
        "{}: {second:?}",
        b.name
    );
    // The refused take left the rpm bucket as it was: one request left.
    let small = b
        .limiter
        .take(&holder, &[rpm(2), tpm(100, 10)], now)
        .await
        .unwrap();
    let Take::Allowed(states) = small else {
        panic!("{}: {small:?}", b.name);
    };
    assert_eq!(states[0].remaining, 0, "{}", b.name);
    assert_eq!(states[1].remaining, 30, "{}", b.name);
}

/// An agent's buckets are its own: apart from its tenant's, and a
/// platform agent's apart from a tenant's agent of the same id.
async fn an_agents_buckets_are_apart_from_its_owners(b: Backend) {
    let now = Utc::now();
    let acme = TenantId::parse("acme").unwrap();
    let id = AgentId::parse("gpt").unwrap();
    let holders = [
        Holder::agent(Owner::Tenant(acme.clone()), id.clone()),
        Holder::agent(Owner::Platform, id.clone()),
        Holder::tenant(acme.clone()),
        Holder::subject(acme, "gpt".into()),
    ];
    for holder in &holders {
        let first = b.limiter.take(holder, &[rpm(1)], now).await.unwrap();
        assert!(matches!(first, Take::Allowed(_)), "{}: {holder:?}", b.name);
    }
    for holder in &holders {
        let second = b.limiter.take(holder, &[rpm(1)], now).await.unwrap();
        assert!(
            matches!(second, Take::Refused { .. }),
            "{}: {holder:?}",
            b.name
        );
    }
}

/// A take given back (its call not made) is room again; a bucket that is
/// full is left as it is.
async fn a_take_given_back_is_room_again(b: Backend) {
    let holder = tenant("giver");
    let now = Utc::now();
    for _ in 0..3 {
        let take = b.limiter.take(&holder, &[rpm(3)], now).await.unwrap();
        assert!(matches!(take, Take::Allowed(_)), "{}", b.name);
    }
    let refused = b.limiter.take(&holder, &[rpm(3)], now).await.unwrap();
    assert!(matches!(refused, Take::Refused { .. }), "{}", b.name);
    b.limiter.give_back(&holder, &[rpm(3)], now).await.unwrap();
    let again = b.limiter.take(&holder, &[rpm(3)], now).await.unwrap();
    assert!(matches!(again, Take::Allowed(_)), "{}: {again:?}", b.name);
    let refused = b.limiter.take(&holder, &[rpm(3)], now).await.unwrap();
    assert!(matches!(refused, Take::Refused { .. }), "{}", b.name);
    // Given back to a full bucket, nothing: it does not hold more than its limit.
    let fresh = tenant("full");
    b.limiter.give_back(&fresh, &[rpm(3)], now).await.unwrap();
    let draws = [rpm(3)];
    let allowed = futures::future::join_all((0..5).map(|_| b.limiter.take(&fresh, &draws, now)))
        .await
        .into_iter()
        .filter(|t| matches!(t, Ok(Take::Allowed(_))))
        .count();
    assert_eq!(allowed, 3, "{}", b.name);
}

on_both_backends!(
    fifty_concurrent_takes_against_a_limit_of_ten_admit_exactly_ten,
    a_take_of_several_buckets_moves_all_or_none,
    an_agents_buckets_are_apart_from_its_owners,
    a_take_given_back_is_room_again,
);
