//! An identity provider's signing keys, fetched from its JWKS URL through the
//! outbound client (so the SSRF policy applies) and cached by `kid`.
//!
//! A token naming a `kid` the cache lacks (a key rotated in) triggers a
//! refetch, at most once per [`MIN_REFETCH_INTERVAL`] however many unknown
//! kids arrive: a stream of forged kids cannot make us flood the provider.
//! Keys older than [`MAX_KEY_AGE`] are refetched on use, so a key the provider
//! withdrew stops being accepted; when a fetch fails the keys already held
//! are served on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use url::Url;

use crate::ports::Clock;
use crate::providers::OutboundClient;

/// At most one fetch per this interval, whatever asks for it.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// Keys fetched longer ago than this are fetched again when next used.
pub const MAX_KEY_AGE: Duration = Duration::from_secs(3600);
/// A key set is a few kilobytes; anything larger is not one.
pub const MAX_JWKS_BYTES: usize = 128 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A key of the set, ready to verify with.
#[derive(Clone)]
pub(super) struct SetKey {
    kid: Option<String>,
    algorithm: Algorithm,
    pub(super) key: Arc<DecodingKey>,
}

/// Why no key could be found for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lookup {
    /// The set, fresh or as last fetched, has no key for the token.
    Unknown,
    /// No key set could be fetched yet: the provider is unreachable.
    Unavailable,
}

#[derive(Default)]
struct Cache {
    keys: Vec<SetKey>,
    /// When the keys were fetched (`None`: never).
    fetched_at: Option<DateTime<Utc>>,
    /// When a fetch was last tried, successful or not.
    tried_at: Option<DateTime<Utc>>,
}

/// The JWKS of one URL.
pub struct JwksCache {
    url: Url,
    http: OutboundClient,
    clock: Arc<dyn Clock>,
    refetch_interval: Duration,
    cache: Mutex<Cache>,
    /// Held for the whole of a fetch, so that concurrent requests with the
    /// same unknown kid wait for one fetch instead of starting their own.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl JwksCache {
    pub fn new(url: Url, http: OutboundClient, clock: Arc<dyn Clock>) -> Self {
        JwksCache {
            url,
            http,
            clock,
            refetch_interval: MIN_REFETCH_INTERVAL,
            cache: Mutex::new(Cache::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The keys that may have signed a token with `algorithm` and `kid`:
    /// the one with that kid, or without a kid every key of the algorithm.
    /// Fetches the set first when it is missing, stale or lacks the kid, and
    /// the last fetch is at least the refetch interval ago.
    pub(super) async fn keys_for(
        &self,
        algorithm: Algorithm,
        kid: Option<&str>,
    ) -> Result<Vec<SetKey>, Lookup> {
        if let Some(found) = self.cached(algorithm, kid) {
            return Ok(found);
        }
        let _one_fetch = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(found) = self.cached(algorithm, kid) {
            return Ok(found);
        }
        if self.may_fetch() {
            self.fetch().await;
        }
        let cache = self.lock();
        let found = matching(&cache.keys, algorithm, kid);
        if !found.is_empty() {
            Ok(found)
        } else if cache.fetched_at.is_none() {
            Err(Lookup::Unavailable)
        } else {
            Err(Lookup::Unknown)
        }
    }

    /// The cached keys for the token when the cache is fresh and has some.
    fn cached(&self, algorithm: Algorithm, kid: Option<&str>) -> Option<Vec<SetKey>> {
        let cache = self.lock();
        let fresh = cache
            .fetched_at
            .is_some_and(|at| self.clock.now() - at < chrono_duration(MAX_KEY_AGE));
        let found = matching(&cache.keys, algorithm, kid);
        // A stale set is still used when it may not be fetched again yet.
        (!found.is_empty() && (fresh || !self.may_fetch_now(&cache))).then_some(found)
    }

    fn may_fetch(&self) -> bool {
        self.may_fetch_now(&self.lock())
    }

    fn may_fetch_now(&self, cache: &Cache) -> bool {
        cache
            .tried_at
            .is_none_or(|at| self.clock.now() - at >= chrono_duration(self.refetch_interval))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The cache holds no invariant a panicking holder could break.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetches the set; on success it replaces the cached keys, on failure
    /// they are kept (and the failure logged).
    async fn fetch(&self) {
        let now = self.clock.now();
        self.lock().tried_at = Some(now);
        match self.download().await {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "JWKS fetched");
                let mut cache = self.lock();
                cache.keys = keys;
                cache.fetched_at = Some(now);
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; keeping the keys held");
            }
        }
    }

    async fn download(&self) -> Result<Vec<SetKey>, JwksError> {
        let request = self
            .http
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(FETCH_TIMEOUT);
        let mut response = self
            .http
            .send(request)
            .await
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        if !response.status().is_success() {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(JwksError::TooLarge);
        }
        // Chunk by chunk, so that a body without a (true) length is cut at the cap.
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| JwksError::Fetch(e.to_string()))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let keys = parse_key_set(&body)?;
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(keys)
    }
}

#[derive(Debug, thiserror::Error)]
enum JwksError {
    #[error("{0}")]
    Fetch(String),
    #[error("status {0}")]
    Status(u16),
    #[error("larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("not a JWK set: {0}")]
    NotAKeySet(String),
    #[error("no RS256 or ES256 signing key in the set")]
    NoUsableKey,
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn matching(keys: &[SetKey], algorithm: Algorithm, kid: Option<&str>) -> Vec<SetKey> {
    keys.iter()
        .filter(|k| k.algorithm == algorithm)
        .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
        .cloned()
        .collect()
}

/// The set's keys each parsed alone: one key of a kind this build does not
/// know (or does not accept) is skipped, not a reason to refuse the set.
fn parse_key_set(body: &[u8]) -> Result<Vec<SetKey>, JwksError> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let set: RawSet =
        serde_json::from_slice(body).map_err(|e| JwksError::NotAKeySet(e.to_string()))?;
    Ok(set
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter_map(|jwk| {
            let algorithm = signing_algorithm(&jwk)?;
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            Some(SetKey {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key: Arc::new(key),
            })
        })
        .collect())
}

/// RS256 for an RSA key, ES256 for a P-256 key; `None` for an encryption
/// key, another algorithm or another curve.
fn signing_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let by_kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_kind),
        Some(KeyAlgorithm::RS256) if by_kind == Algorithm::RS256 => Some(by_kind),
        Some(KeyAlgorithm::ES256) if by_kind == Algorithm::ES256 => Some(by_kind),
        Some(_) => None,
    }
}
