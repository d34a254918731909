//! Provider keys and signing secrets, with a TTL cache in front of the source.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::clock::Clock;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret `{0}` not found")]
    NotFound(String),
    /// The backend failed; never carries the secret's value.
    #[error("secret backend error: {0}")]
    Backend(String),
}

#[async_trait]
pub trait SecretSource: Send + Sync {
    async fn get(&self, name: &str) -> Result<SecretString, SecretError>;

    /// Hosts this source binds the key `name` to beyond what its value says
    /// (see `ProviderKey::bind`). Only `maof dev`'s environment fallback has
    /// any: loopback, and the variable's `…_HOSTS`.
    fn implied_hosts(&self, _name: &str) -> Vec<String> {
        Vec::new()
    }
}

/// Caches each secret for `ttl`, so a warm Lambda fetches a key once per TTL.
/// `invalidate` drops one entry, for picking up a rotated key after a 401.
pub struct CachedSecrets {
    inner: Arc<dyn SecretSource>,
    clock: Arc<dyn Clock>,
    ttl: Duration,
    entries: Mutex<HashMap<String, (SecretString, DateTime<Utc>)>>,
}

impl CachedSecrets {
    /// Keys are cached for at most five minutes unless told otherwise.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

    pub fn new(inner: Arc<dyn SecretSource>, clock: Arc<dyn Clock>, ttl: Duration) -> Self {
        CachedSecrets {
            inner,
            clock,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn invalidate(&self, name: &str) {
        self.lock().remove(name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (SecretString, DateTime<Utc>)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl SecretSource for CachedSecrets {
    async fn get(&self, name: &str) -> Result<SecretString, SecretError> {
        let now = self.clock.now();
        if let Some((value, fetched)) = self.lock().get(name)
            && now
                .signed_duration_since(*fetched)
                .to_std()
                .unwrap_or_default()
                < self.ttl
        {
            return Ok(value.clone());
        }
        let value = self.inner.get(name).await?;
        self.lock().insert(name.to_owned(), (value.clone(), now));
        Ok(value)
    }

    fn implied_hosts(&self, name: &str) -> Vec<String> {
        self.inner.implied_hosts(name)
    }
}
