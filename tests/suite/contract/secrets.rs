use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use maof::ports::{CachedSecrets, ManualClock, SecretError, SecretSource};
use maof_tests::backends::Backend;
use secrecy::{ExposeSecret, SecretString};

use super::on_both_backends;

/// Counts the calls that reach the backend.
struct Counting {
    inner: Arc<dyn SecretSource>,
    calls: AtomicUsize,
}

#[async_trait]
impl SecretSource for Counting {
    async fn get(&self, name: &str) -> Result<SecretString, SecretError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.get(name).await
    }
}

async fn a_missing_secret_is_a_typed_error(b: Backend) {
    let name = format!("maof/missing-{}", ulid::Ulid::new());
    match b.secrets.get(&name).await {
        Err(SecretError::NotFound(n)) => assert_eq!(n, name),
        Err(other) => panic!("{}: expected NotFound, got {other:?}", b.name),
        Ok(_) => panic!("{}: expected NotFound, got a value", b.name),
    }
}

async fn a_second_get_within_the_ttl_makes_no_call(b: Backend) {
    let name = format!("maof/openai-{}", ulid::Ulid::new());
    b.secret_admin.put_secret(&name, "sk-one").await;
    let counting = Arc::new(Counting {
        inner: b.secrets.clone(),
        calls: AtomicUsize::new(0),
    });
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let cache = CachedSecrets::new(counting.clone(), clock.clone(), Duration::from_secs(300));

    assert_eq!(cache.get(&name).await.unwrap().expose_secret(), "sk-one");
    b.secret_admin.put_secret(&name, "sk-two").await; // rotated
    clock.advance(Duration::from_secs(299));
    assert_eq!(
        cache.get(&name).await.unwrap().expose_secret(),
        "sk-one",
        "{}: cached",
        b.name
    );
    assert_eq!(
        counting.calls.load(Ordering::SeqCst),
        1,
        "{}: one backend call",
        b.name
    );

    clock.advance(Duration::from_secs(2));
    assert_eq!(
        cache.get(&name).await.unwrap().expose_secret(),
        "sk-two",
        "{}: refetched after the TTL",
        b.name
    );
    assert_eq!(counting.calls.load(Ordering::SeqCst), 2);

    b.secret_admin.put_secret(&name, "sk-three").await;
    cache.invalidate(&name);
    assert_eq!(
        cache.get(&name).await.unwrap().expose_secret(),
        "sk-three",
        "{}: invalidate refetches",
        b.name
    );
}

on_both_backends!(
    a_missing_secret_is_a_typed_error,
    a_second_get_within_the_ttl_makes_no_call
);
