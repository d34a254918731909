//! The authenticator against tokens an attacker or a misconfigured issuer
//! would send, RS256/ES256 keys from PEM and from a JWKS served locally, the
//! claim mapping, and the API Gateway authorizer's claims through the router.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RsaKeyPair};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use serde_json::{Value, json};
use tower::ServiceExt;
use wiremock::{Mock, MockServer, Respond, ResponseTemplate};

use super::*;
use crate::api::{ApiState, router};
use crate::domain::TaskId;
use crate::ports::ManualClock;
use crate::providers::OutboundPolicy;

const SECRET: &str = "auth-test-secret-0123456789abcdef0123456789";
const ISSUER: &str = "https://idp.example.com/";
const AUDIENCE: &str = "maof-api";

// --- keys and tokens ---

struct TestKey {
    algorithm: Algorithm,
    encoding: EncodingKey,
    public_pem: String,
}

impl TestKey {
    /// The key as a JWK with `kid`.
    fn jwk(&self, kid: &str) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.algorithm).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        serde_json::to_value(jwk).unwrap()
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn rsa_key() -> TestKey {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let private: Pkcs8V1Der = AsDer::as_der(&pair).unwrap();
    let public: PublicKeyX509Der = pair.public_key().as_der().unwrap();
    TestKey {
        algorithm: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_pem(pem("PRIVATE KEY", private.as_ref()).as_bytes())
            .unwrap(),
        public_pem: pem("PUBLIC KEY", public.as_ref()),
    }
}

fn ec_key() -> TestKey {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let private = pair.to_pkcs8v1().unwrap();
    let public: PublicKeyX509Der = pair.public_key().as_der().unwrap();
    TestKey {
        algorithm: Algorithm::ES256,
        encoding: EncodingKey::from_ec_pem(pem("PRIVATE KEY", private.as_ref()).as_bytes())
            .unwrap(),
        public_pem: pem("PUBLIC KEY", public.as_ref()),
    }
}

// RSA keys take a moment to generate: each is made once per run.
static RSA: LazyLock<TestKey> = LazyLock::new(rsa_key);
static RSA_OTHER: LazyLock<TestKey> = LazyLock::new(rsa_key);
static EC: LazyLock<TestKey> = LazyLock::new(ec_key);
static EC_OTHER: LazyLock<TestKey> = LazyLock::new(ec_key);

fn sign(key: &TestKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(key.algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

fn sign_hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A base64url JSON segment.
fn segment(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(chrono::Utc::now()))
}

fn now_of(clock: &ManualClock) -> u64 {
    crate::ports::Clock::now(clock).timestamp() as u64
}

/// An identity provider's claims, valid for ten minutes from `now`.
fn idp_claims(now: u64) -> Value {
    json!({
        "sub": "user-1", "tenant": "acme", "roles": ["submitter"],
        "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600,
    })
}

/// `base` with `changes` merged in (a `null` removes the claim).
fn with(mut base: Value, changes: Value) -> Value {
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            base.as_object_mut().unwrap().remove(name);
        } else {
            base[name] = value.clone();
        }
    }
    base
}

/// HS256, and RS256/ES256 with PEM keys, issuer and audience set.
fn pem_config() -> AuthConfig {
    AuthConfig {
        public_keys: PublicKey::parse_pem_list(&format!("{}{}", RSA.public_pem, EC.public_pem))
            .unwrap(),
        issuers: vec![ISSUER.to_owned()],
        audiences: vec![AUDIENCE.to_owned(), "other-api".to_owned()],
        ..AuthConfig::hs256(SecretString::from(SECRET))
    }
}

fn authenticator(config: AuthConfig, clock: Arc<ManualClock>) -> Authenticator {
    Authenticator::from_config(
        config,
        Some(OutboundClient::new(OutboundPolicy::allow_loopback()).unwrap()),
        clock,
    )
    .unwrap()
}

async fn refused(auth: &Authenticator, token: &str) -> AuthError {
    auth.verify(token).await.expect_err("the token is refused")
}

// --- the rules ---

#[tokio::test]
async fn a_forged_token_is_a_bad_signature() {
    let clock = clock();
    let now = now_of(&clock);
    let auth = authenticator(pem_config(), clock);
    let claims = idp_claims(now);
    assert_eq!(
        refused(
            &auth,
            &sign_hs256(b"another-secret-0123456789abcdef0123", &claims)
        )
        .await,
        AuthError::Signature
    );
    assert_eq!(
        refused(&auth, &sign(&RSA_OTHER, None, &claims)).await,
        AuthError::Signature
    );
    assert_eq!(
        refused(&auth, &sign(&EC_OTHER, None, &claims)).await,
        AuthError::Signature
    );
    // The genuine ones pass, and a changed payload under a genuine signature does not.
    for key in [&*RSA, &*EC] {
        let token = sign(key, None, &claims);
        assert_eq!(auth.verify(&token).await.unwrap().sub, "user-1");
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = segment(&with(claims.clone(), json!({"tenant": "globex"})));
        assert_eq!(refused(&auth, &parts.join(".")).await, AuthError::Signature);
    }
}

#[tokio::test]
async fn expired_not_yet_valid_and_too_long_lived_tokens_are_refused_by_their_own_codes() {
    let clock = clock();
    let now = now_of(&clock);
    let auth = authenticator(pem_config(), clock.clone());
    let claims = idp_claims(now);
    let cases = [
        (json!({"exp": now - 61}), AuthError::Expired),
        (json!({"exp": null}), AuthError::Claims("exp")),
        (json!({"exp": "tomorrow"}), AuthError::Claims("exp")),
        (json!({"nbf": now + 120}), AuthError::NotYetValid),
        (json!({"iat": now + 120}), AuthError::NotYetValid),
        // Ten years, with iat ...
        (
            json!({"exp": now + 10 * 365 * 86_400}),
            AuthError::LifetimeTooLong,
        ),
        // ... and without: exp − now.
        (
            json!({"iat": null, "exp": now + 25 * 3600}),
            AuthError::LifetimeTooLong,
        ),
        // Issued long ago, expiring soon: still lived too long.
        (
            json!({"iat": now - 25 * 3600, "exp": now + 60}),
            AuthError::LifetimeTooLong,
        ),
    ];
    for (changes, expected) in cases {
        let token = sign(&RSA, None, &with(claims.clone(), changes.clone()));
        assert_eq!(refused(&auth, &token).await, expected, "{changes}");
    }
    // Within the leeway (60 s) either way; a lifetime of exactly 24 h.
    for changes in [
        json!({"iat": now - 600, "exp": now - 30}),
        json!({"nbf": now + 30}),
        json!({"iat": now + 30, "exp": now + 600}),
        json!({"iat": now, "exp": now + 24 * 3600}),
        json!({"iat": null, "exp": now + 24 * 3600}),
        json!({"exp": (now + 600) as f64 + 0.5}),
    ] {
        let token = sign(&RSA, None, &with(claims.clone(), changes.clone()));
        let outcome = auth.verify(&token).await;
        assert!(outcome.is_ok(), "{changes}: {outcome:?}");
    }
    // The clock the rules read is the authenticator's: ten minutes on, expired.
    let token = sign(&EC, None, &claims);
    assert!(auth.verify(&token).await.is_ok());
    clock.advance(Duration::from_secs(661));
    assert_eq!(refused(&auth, &token).await, AuthError::Expired);
}

#[tokio::test]
async fn the_maximum_lifetime_and_the_leeway_are_configurable() {
    let clock = clock();
    let now = now_of(&clock);
    let config = AuthConfig {
        max_lifetime: Duration::from_secs(3600),
        leeway: Duration::ZERO,
        ..pem_config()
    };
    let auth = authenticator(config, clock);
    let claims = idp_claims(now);
    let token = |changes| sign(&RSA, None, &with(claims.clone(), changes));
    assert!(
        auth.verify(&token(json!({"exp": now + 3600})))
            .await
            .is_ok()
    );
    assert_eq!(
        refused(&auth, &token(json!({"exp": now + 3601}))).await,
        AuthError::LifetimeTooLong
    );
    assert_eq!(
        refused(&auth, &token(json!({"exp": now}))).await,
        AuthError::Expired
    );
    assert_eq!(
        refused(&auth, &token(json!({"nbf": now + 1}))).await,
        AuthError::NotYetValid
    );
    // MAOF's own tokens obey the same maximum, and none longer is minted.
    let tenant = TenantId::parse("acme").unwrap();
    assert!(matches!(
        auth.mint("u", &tenant, &[Role::Viewer], Duration::from_secs(3601)),
        Err(MintError::TooLong {
            requested: 3601,
            max: 3600
        })
    ));
    let minted = auth
        .mint("u", &tenant, &[Role::Viewer], Duration::from_secs(3600))
        .unwrap();
    assert!(auth.verify(&minted).await.is_ok());
}

#[tokio::test]
async fn a_wrong_or_missing_issuer_or_audience_is_refused() {
    let clock = clock();
    let now = now_of(&clock);
    let auth = authenticator(pem_config(), clock);
    let claims = idp_claims(now);
    let cases = [
        (
            json!({"iss": "https://evil.example.com/"}),
            AuthError::Issuer,
        ),
        (json!({"iss": null}), AuthError::Issuer),
        (json!({"aud": "someone-else"}), AuthError::Audience),
        (json!({"aud": ["a", "b"]}), AuthError::Audience),
        (json!({"aud": null}), AuthError::Audience),
    ];
    for (changes, expected) in cases {
        for key in [&*RSA, &*EC] {
            let token = sign(key, None, &with(claims.clone(), changes.clone()));
            assert_eq!(refused(&auth, &token).await, expected, "{changes}");
        }
    }
    // Any configured audience, alone or among others.
    for aud in [json!("other-api"), json!(["someone-else", AUDIENCE])] {
        let token = sign(&RSA, None, &with(claims.clone(), json!({ "aud": aud })));
        assert!(auth.verify(&token).await.is_ok());
    }
    // MAOF's own tokens name no audience: one that does was meant for
    // something else.
    let own = json!({"sub": "u", "tenant": "acme", "iat": now, "exp": now + 60});
    assert!(
        auth.verify(&sign_hs256(SECRET.as_bytes(), &own))
            .await
            .is_ok()
    );
    let meant_elsewhere = with(own, json!({"aud": "billing"}));
    assert_eq!(
        refused(&auth, &sign_hs256(SECRET.as_bytes(), &meant_elsewhere)).await,
        AuthError::Audience
    );
}

#[tokio::test]
async fn alg_none_unconfigured_algorithms_and_algorithm_confusion_are_refused() {
    let clock = clock();
    let now = now_of(&clock);
    let claims = idp_claims(now);
    let auth = authenticator(pem_config(), clock.clone());

    let unsigned = |alg: &str| {
        format!(
            "{}.{}.",
            segment(&json!({"alg": alg, "typ": "JWT"})),
            segment(&claims)
        )
    };
    for alg in [
        "none", "None", "NONE", "HS384", "RS512", "PS256", "EdDSA", "",
    ] {
        assert_eq!(
            refused(&auth, &unsigned(alg)).await,
            AuthError::Algorithm,
            "{alg}"
        );
    }
    // HS256 whose "secret" is the identity provider's public key: verified
    // with MAOF's secret only, so it fails...
    let confused = sign_hs256(RSA.public_pem.as_bytes(), &claims);
    assert_eq!(refused(&auth, &confused).await, AuthError::Signature);
    // ... and where MAOF has no secret, HS256 is not accepted at all.
    let idp_only = AuthConfig {
        secret: None,
        ..pem_config()
    };
    let idp_only = authenticator(idp_only, clock.clone());
    assert_eq!(refused(&idp_only, &confused).await, AuthError::Algorithm);
    // RS256 and ES256 only where an identity provider is configured.
    let hs256_only = authenticator(AuthConfig::hs256(SecretString::from(SECRET)), clock);
    assert_eq!(
        refused(&hs256_only, &sign(&RSA, None, &claims)).await,
        AuthError::Algorithm
    );
    for malformed in ["", "abc", "a.b", "a.b.c.d", "!!!.e30.", "e30.e30.e30"] {
        assert_eq!(
            refused(&auth, malformed).await,
            AuthError::Malformed,
            "{malformed}"
        );
    }
}

#[tokio::test]
async fn claims_are_mapped_tenant_from_a_custom_claim_roles_from_groups_or_scope() {
    let clock = clock();
    let now = now_of(&clock);
    let base =
        json!({"sub": "user-1", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600});

    let cognito = authenticator(
        AuthConfig {
            claims: ClaimMapping {
                tenant: "custom:tenant".to_owned(),
                roles: "cognito:groups".to_owned(),
            },
            ..pem_config()
        },
        clock.clone(),
    );
    let token = sign(
        &RSA,
        None,
        &with(
            base.clone(),
            json!({"custom:tenant": "acme", "cognito:groups": ["admin", "billing", "viewer"],
                   "tenant": "globex", "roles": ["platform_admin"]}),
        ),
    );
    let principal = cognito.verify(&token).await.unwrap();
    assert_eq!(
        principal.tenant.as_str(),
        "acme",
        "the mapped claim, not `tenant`"
    );
    assert_eq!(
        principal.roles,
        [Role::Viewer, Role::Admin],
        "unknown groups ignored"
    );

    let oauth = authenticator(
        AuthConfig {
            claims: ClaimMapping {
                tenant: "https://example.com/tenant".to_owned(),
                roles: "scope".to_owned(),
            },
            ..pem_config()
        },
        clock.clone(),
    );
    let token = sign(
        &EC,
        None,
        &with(
            base.clone(),
            json!({"https://example.com/tenant": "globex", "scope": "openid submitter viewer"}),
        ),
    );
    let principal = oauth.verify(&token).await.unwrap();
    assert_eq!(principal.tenant.as_str(), "globex");
    assert_eq!(principal.roles, [Role::Viewer, Role::Submitter]);

    // Without the mapped tenant, or with one that is not a tenant id: refused.
    for changes in [
        json!({"https://example.com/tenant": null}),
        json!({"https://example.com/tenant": "a#b"}),
        json!({"https://example.com/tenant": 7}),
    ] {
        let token = sign(&EC, None, &with(base.clone(), changes.clone()));
        assert_eq!(
            refused(&oauth, &token).await,
            AuthError::Claims("tenant"),
            "{changes}"
        );
    }
    let token = sign(
        &EC,
        None,
        &with(
            base.clone(),
            json!({"https://example.com/tenant": "acme", "sub": ""}),
        ),
    );
    assert_eq!(refused(&oauth, &token).await, AuthError::Claims("sub"));
    // No roles claim: no roles (every route then answers 403).
    let token = sign(
        &EC,
        None,
        &with(base, json!({"https://example.com/tenant": "acme"})),
    );
    assert!(oauth.verify(&token).await.unwrap().roles.is_empty());

    // MAOF's own tokens keep their claim names whatever the mapping.
    let minted = oauth
        .mint(
            "dev",
            &TenantId::parse("acme").unwrap(),
            &[Role::Admin],
            Duration::from_secs(60),
        )
        .unwrap();
    let principal = oauth.verify(&minted).await.unwrap();
    assert_eq!(
        (principal.tenant.as_str(), principal.roles),
        ("acme", vec![Role::Admin])
    );
}

// --- JWKS ---

/// A JWKS endpoint whose key set can change, counting its requests.
#[derive(Clone)]
struct KeyServer {
    keys: Arc<Mutex<Option<Value>>>,
    requests: Arc<AtomicUsize>,
}

impl Respond for KeyServer {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        self.requests.fetch_add(1, Ordering::SeqCst);
        match self.keys.lock().unwrap().clone() {
            Some(keys) => ResponseTemplate::new(200).set_body_json(json!({ "keys": keys })),
            None => ResponseTemplate::new(503),
        }
    }
}

impl KeyServer {
    async fn start(keys: Value) -> (MockServer, KeyServer) {
        let server = MockServer::start().await;
        let responder = KeyServer {
            keys: Arc::new(Mutex::new(Some(keys))),
            requests: Arc::new(AtomicUsize::new(0)),
        };
        Mock::given(wiremock::matchers::method("GET"))
            .and(wiremock::matchers::path("/.well-known/jwks.json"))
            .respond_with(responder.clone())
            .mount(&server)
            .await;
        (server, responder)
    }

    fn serve(&self, keys: Option<Value>) {
        *self.keys.lock().unwrap() = keys;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn jwks_config(server: &MockServer) -> AuthConfig {
    AuthConfig {
        jwks_url: Some(
            format!("{}/.well-known/jwks.json", server.uri())
                .parse()
                .unwrap(),
        ),
        issuers: vec![ISSUER.to_owned()],
        audiences: vec![AUDIENCE.to_owned()],
        ..AuthConfig::default()
    }
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_from_a_jwks_fetched_once() {
    let (server, keys) = KeyServer::start(
        json!([RSA.jwk("rsa-1"), EC.jwk("ec-1"), {"kty": "oct", "k": "c2VjcmV0"}]),
    )
    .await;
    let clock = clock();
    let now = now_of(&clock);
    let auth = authenticator(jwks_config(&server), clock);
    let claims = idp_claims(now);
    for (key, kid) in [(&*RSA, "rsa-1"), (&*EC, "ec-1")] {
        let principal = auth.verify(&sign(key, Some(kid), &claims)).await.unwrap();
        assert_eq!(
            (principal.sub.as_str(), principal.tenant.as_str()),
            ("user-1", "acme")
        );
        assert_eq!(principal.roles, [Role::Submitter]);
    }
    // No kid: each key of the algorithm is tried.
    assert!(auth.verify(&sign(&EC, None, &claims)).await.is_ok());
    // A kid naming a key of another algorithm, or another key's kid: no match.
    assert_eq!(
        refused(&auth, &sign(&EC, Some("rsa-1"), &claims)).await,
        AuthError::UnknownKey
    );
    assert_eq!(
        refused(&auth, &sign(&RSA_OTHER, Some("rsa-1"), &claims)).await,
        AuthError::Signature
    );
    // The symmetric key in the set is never used: HS256 is MAOF's own secret's.
    assert_eq!(
        refused(&auth, &sign_hs256(b"secret", &claims)).await,
        AuthError::Algorithm
    );
    // One fetch: the unknown kid, within the interval of it, made none.
    assert_eq!(keys.requests(), 1);
}

#[tokio::test]
async fn a_new_kid_refetches_once_and_a_burst_of_unknown_kids_at_most_once_per_interval() {
    let (server, keys) = KeyServer::start(json!([RSA.jwk("old")])).await;
    let clock = clock();
    let now = now_of(&clock);
    let auth = Arc::new(authenticator(jwks_config(&server), clock.clone()));
    let claims = idp_claims(now);

    assert!(auth.verify(&sign(&RSA, Some("old"), &claims)).await.is_ok());
    assert!(auth.verify(&sign(&RSA, Some("old"), &claims)).await.is_ok());
    assert_eq!(keys.requests(), 1, "fetched once, then cached");

    // The provider rotates in a new key: its first token refetches, once.
    clock.advance(MIN_REFETCH_INTERVAL);
    keys.serve(Some(json!([RSA.jwk("old"), EC.jwk("new")])));
    for _ in 0..3 {
        assert!(auth.verify(&sign(&EC, Some("new"), &claims)).await.is_ok());
    }
    assert_eq!(keys.requests(), 2);

    // A burst of unknown kids, concurrent and then one by one, right after
    // that fetch: none fetches.
    let burst = |count: usize| {
        let auth = auth.clone();
        let claims = claims.clone();
        async move {
            let tokens: Vec<String> = (0..count)
                .map(|i| sign(&EC_OTHER, Some(&format!("forged-{i}")), &claims))
                .collect();
            futures::future::join_all(tokens.iter().map(|t| auth.verify(t))).await
        }
    };
    for outcome in burst(20).await {
        assert_eq!(outcome.unwrap_err(), AuthError::UnknownKey);
    }
    clock.advance(MIN_REFETCH_INTERVAL - Duration::from_secs(1));
    for outcome in burst(20).await {
        assert_eq!(outcome.unwrap_err(), AuthError::UnknownKey);
    }
    assert_eq!(keys.requests(), 2, "no fetch within the interval");

    // Once the interval has passed, a burst makes exactly one fetch.
    clock.advance(Duration::from_secs(1));
    for outcome in burst(20).await {
        assert_eq!(outcome.unwrap_err(), AuthError::UnknownKey);
    }
    assert_eq!(keys.requests(), 3);
    // Known keys kept working throughout.
    assert!(auth.verify(&sign(&RSA, Some("old"), &claims)).await.is_ok());
    assert_eq!(keys.requests(), 3);
}

#[tokio::test]
async fn a_failed_fetch_keeps_the_keys_held_and_none_held_is_503() {
    let (server, keys) = KeyServer::start(json!([RSA.jwk("k1")])).await;
    let clock = clock();
    let now = now_of(&clock);
    let auth = authenticator(jwks_config(&server), clock.clone());
    let claims = idp_claims(now);
    assert!(auth.verify(&sign(&RSA, Some("k1"), &claims)).await.is_ok());

    // The provider fails; the keys are old enough to be refetched on use.
    keys.serve(None);
    clock.advance(jwks::MAX_KEY_AGE + Duration::from_secs(1));
    let claims = idp_claims(now_of(&clock));
    assert!(auth.verify(&sign(&RSA, Some("k1"), &claims)).await.is_ok());
    assert_eq!(keys.requests(), 2, "tried, failed, and the held key served");
    assert!(auth.verify(&sign(&RSA, Some("k1"), &claims)).await.is_ok());
    assert_eq!(keys.requests(), 2, "not retried within the interval");

    // A withdrawn key stops working once a fetch succeeds.
    clock.advance(MIN_REFETCH_INTERVAL);
    keys.serve(Some(json!([EC.jwk("k2")])));
    let claims = idp_claims(now_of(&clock));
    assert_eq!(
        refused(&auth, &sign(&RSA, Some("k1"), &claims)).await,
        AuthError::UnknownKey
    );
    assert!(auth.verify(&sign(&EC, Some("k2"), &claims)).await.is_ok());

    // A provider that never answered: no key at all is our failure, a 503.
    let (down, down_keys) = KeyServer::start(json!([])).await;
    down_keys.serve(None);
    let auth = authenticator(jwks_config(&down), clock.clone());
    let error = refused(&auth, &sign(&RSA, Some("k1"), &claims)).await;
    assert_eq!(error, AuthError::KeysUnavailable);
    assert_eq!(
        Problem::from(error).status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // A set with no usable key counts as a failed fetch.
    clock.advance(MIN_REFETCH_INTERVAL);
    down_keys.serve(Some(json!([{"kty": "oct", "k": "c2VjcmV0"}])));
    assert_eq!(
        refused(&auth, &sign(&RSA, Some("k1"), &claims)).await,
        AuthError::KeysUnavailable
    );
    assert_eq!(down_keys.requests(), 2);
}

#[tokio::test]
async fn the_jwks_is_fetched_under_the_outbound_policy_and_its_size_is_capped() {
    let (server, keys) = KeyServer::start(json!([RSA.jwk("k1")])).await;
    let clock = clock();
    let claims = idp_claims(now_of(&clock));
    // The Lambda's strict policy refuses loopback: no request leaves.
    let strict = Authenticator::from_config(
        jwks_config(&server),
        Some(OutboundClient::new(OutboundPolicy::strict()).unwrap()),
        clock.clone(),
    )
    .unwrap();
    assert_eq!(
        refused(&strict, &sign(&RSA, Some("k1"), &claims)).await,
        AuthError::KeysUnavailable
    );
    assert_eq!(keys.requests(), 0);

    // A body larger than the cap is not a key set.
    let padding = "x".repeat(jwks::MAX_JWKS_BYTES);
    keys.serve(Some(json!([RSA.jwk("k1"), {"kty": "oct", "k": padding}])));
    let auth = authenticator(jwks_config(&server), clock);
    assert_eq!(
        refused(&auth, &sign(&RSA, Some("k1"), &claims)).await,
        AuthError::KeysUnavailable
    );
    assert_eq!(keys.requests(), 1);
}

// --- configuration ---

#[test]
fn the_configuration_is_read_from_the_environment() {
    let vars = |pairs: &[(&str, String)]| {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    };
    let config = AuthConfig::from_lookup(vars(&[
        // As an environment variable often carries it: `\n` escaped.
        (
            "MAOF_JWT_PUBLIC_KEYS",
            format!("{}{}", RSA.public_pem, EC.public_pem).replace('\n', "\\n"),
        ),
        ("MAOF_JWT_JWKS_URL", "https://idp.example.com/jwks".into()),
        ("MAOF_JWT_ISSUER", ISSUER.into()),
        ("MAOF_JWT_AUDIENCE", "a, b".into()),
        ("MAOF_JWT_TENANT_CLAIM", "custom:tenant".into()),
        ("MAOF_JWT_ROLES_CLAIM", "groups".into()),
        ("MAOF_JWT_MAX_LIFETIME", "8h".into()),
        ("MAOF_JWT_LEEWAY", "30".into()),
        // Not read outside the Lambda's own constructor.
        ("MAOF_JWT_TRUST_AUTHORIZER", "true".into()),
    ]))
    .unwrap();
    let algorithms: Vec<Algorithm> = config.public_keys.iter().map(|k| k.algorithm).collect();
    assert_eq!(algorithms, [Algorithm::RS256, Algorithm::ES256]);
    assert_eq!(config.issuers, [ISSUER]);
    assert_eq!(config.audiences, ["a", "b"]);
    assert_eq!(config.claims.tenant, "custom:tenant");
    assert_eq!(config.claims.roles, "groups");
    assert_eq!(config.max_lifetime, Duration::from_secs(8 * 3600));
    assert_eq!(config.leeway, Duration::from_secs(30));
    assert!(!config.trust_gateway_authorizer, "maof dev never trusts it");
    let debug = format!("{config:?}");
    assert!(!debug.contains("BEGIN"), "no key material in logs: {debug}");

    let lambda = |trust: &str| {
        AuthConfig::from_lambda_lookup(vars(&[("MAOF_JWT_TRUST_AUTHORIZER", trust.into())]))
    };
    assert!(lambda("true").unwrap().trust_gateway_authorizer);
    assert!(!lambda("false").unwrap().trust_gateway_authorizer);
    assert!(!lambda("").unwrap().trust_gateway_authorizer);
    assert!(lambda("yes").is_err());

    let defaults = AuthConfig::from_lookup(|_| None).unwrap();
    assert_eq!(defaults.max_lifetime, DEFAULT_MAX_LIFETIME);
    assert_eq!(defaults.leeway, MAX_LEEWAY);
    assert_eq!(defaults.claims, ClaimMapping::default());
    assert!(!defaults.has_identity_provider());

    let error = |var: &str, value: String| {
        AuthConfig::from_lookup(vars(&[(var, value)]))
            .unwrap_err()
            .to_string()
    };
    assert!(error("MAOF_JWT_LEEWAY", "61".into()).contains("at most 60"));
    assert!(error("MAOF_JWT_MAX_LIFETIME", "0".into()).contains("more than zero"));
    assert!(error("MAOF_JWT_MAX_LIFETIME", "1y".into()).contains("unit"));
    assert!(error("MAOF_JWT_JWKS_URL", "http://idp.example.com/jwks".into()).contains("https"));
    assert!(
        AuthConfig::from_lookup(vars(&[(
            "MAOF_JWT_JWKS_URL",
            "http://127.0.0.1:9/k".into()
        )]))
        .is_ok()
    );
    let private = error("MAOF_JWT_PUBLIC_KEYS", pem("PRIVATE KEY", b"0123"));
    assert!(
        private.contains("private key") && !private.contains("MDEy"),
        "{private}"
    );
    assert!(error("MAOF_JWT_PUBLIC_KEYS", "not a key".into()).contains("no complete PEM"));
    let p384 =
        EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
    let p384: PublicKeyX509Der = p384.public_key().as_der().unwrap();
    assert!(error("MAOF_JWT_PUBLIC_KEYS", pem("PUBLIC KEY", p384.as_ref())).contains("P-256"));

    assert!(matches!(
        Authenticator::from_config(AuthConfig::default(), None, Arc::new(SystemClock)),
        Err(AuthConfigError::NothingToVerifyWith)
    ));
    assert!(matches!(
        Authenticator::from_config(
            AuthConfig {
                jwks_url: Some("https://idp.example.com/jwks".parse().unwrap()),
                ..AuthConfig::default()
            },
            None,
            Arc::new(SystemClock)
        ),
        Err(AuthConfigError::NoHttpClient)
    ));
}

// --- through the router: problems, and the API Gateway authorizer ---

struct Api {
    app: axum::Router,
    services: crate::stages::Services,
}

fn api(config: AuthConfig) -> Api {
    let (services, _) =
        crate::setup::memory_services(crate::setup::outbound(OutboundPolicy::strict()).unwrap())
            .unwrap();
    let auth = Authenticator::from_config(config, None, Arc::new(SystemClock)).unwrap();
    Api {
        app: router(ApiState {
            services: services.clone(),
            auth: Arc::new(auth),
        }),
        services,
    }
}

/// An HTTP API (payload 2.0) event as API Gateway sends it after its JWT
/// authorizer passed `claims`, turned into a request by lambda_http.
fn gateway_request(
    method: &str,
    path: &str,
    claims: Option<Value>,
    authorization: Option<&str>,
) -> Request<Body> {
    let mut headers = json!({"content-type": "application/json", "host": "api.example.com"});
    if let Some(value) = authorization {
        headers["authorization"] = json!(value);
    }
    let mut context = json!({
        "accountId": "123456789012", "apiId": "api", "domainName": "api.example.com",
        "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.9", "userAgent": "t"},
        "requestId": "r", "routeKey": "$default", "stage": "$default", "time": "t", "timeEpoch": 0
    });
    if let Some(claims) = claims {
        context["authorizer"] = json!({"jwt": {"claims": claims, "scopes": null}});
    }
    let event = json!({
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": headers, "requestContext": context,
        "body": if method == "POST" { json!({"task_type": "text", "content": "hi"}).to_string() } else { String::new() },
        "isBase64Encoded": false
    });
    let event: lambda_http::request::LambdaRequest = serde_json::from_value(event).unwrap();
    let (parts, body) = lambda_http::Request::from(event).into_parts();
    Request::from_parts(parts, Body::from(body.to_vec()))
}

async fn send(app: &axum::Router, request: Request<Body>) -> (StatusCode, String, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, challenge, serde_json::from_slice(&bytes).unwrap())
}

/// An external identity provider's claims as API Gateway passes them: strings.
fn authorizer_claims(now: u64) -> Value {
    json!({
        "sub": "idp|42", "custom:tenant": "acme", "cognito:groups": "[submitter viewer]",
        "iss": ISSUER, "aud": AUDIENCE, "iat": now.to_string(), "exp": (now + 600).to_string(),
        "scope": "openid email"
    })
}

fn trusting() -> AuthConfig {
    AuthConfig {
        claims: ClaimMapping {
            tenant: "custom:tenant".to_owned(),
            roles: "cognito:groups".to_owned(),
        },
        issuers: vec![ISSUER.to_owned()],
        trust_gateway_authorizer: true,
        ..AuthConfig::hs256(SecretString::from(SECRET))
    }
}

#[tokio::test]
async fn behind_the_authorizer_its_claims_are_taken_and_the_idp_token_is_not_reverified() {
    let api = api(trusting());
    let now = jsonwebtoken::get_current_timestamp();
    // The bearer token is the identity provider's (RS256): HS256 could never
    // verify it, and it is not asked to.
    let idp_token = format!("Bearer {}", sign(&RSA, Some("kid"), &idp_claims(now)));
    let request = gateway_request(
        "POST",
        "/v1/tasks",
        Some(authorizer_claims(now)),
        Some(&idp_token),
    );
    let (status, _, body) = send(&api.app, request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = TaskId::parse(body["task_id"].as_str().unwrap()).unwrap();
    let task = api
        .services
        .tasks
        .get(&TenantId::parse("acme").unwrap(), id)
        .await
        .unwrap()
        .expect("stored under the claims' tenant");
    assert_eq!(task.submitted_by, "idp|42");

    // The claims' roles are what is allowed: a viewer may not submit.
    let viewer = with(
        authorizer_claims(now),
        json!({"cognito:groups": "[viewer]"}),
    );
    let (status, _, body) = send(
        &api.app,
        gateway_request("POST", "/v1/tasks", Some(viewer), None),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("role_missing"))
    );

    // The mapping and the rules still apply to them.
    let cases = [
        (json!({"custom:tenant": null}), "token_claims"),
        (json!({"custom:tenant": "a#b"}), "token_claims"),
        (json!({"sub": null}), "token_claims"),
        // The authorizer was configured with the same issuer: another one
        // means another authorizer let it through.
        (
            json!({"iss": "https://other-idp.example.com/"}),
            "token_issuer",
        ),
        (json!({"iss": null}), "token_issuer"),
        (
            json!({"exp": (now + 30 * 86_400).to_string()}),
            "token_lifetime_too_long",
        ),
    ];
    for (changes, code) in cases {
        let claims = with(authorizer_claims(now), changes.clone());
        let (status, challenge, body) = send(
            &api.app,
            gateway_request("GET", "/v1/tasks", Some(claims), None),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{changes}");
        assert_eq!(body["code"], code, "{changes}");
        assert!(challenge.contains("invalid_token"));
    }

    // Without an authorizer context the bearer token is verified as before.
    let (status, _, body) = send(
        &api.app,
        gateway_request("GET", "/v1/tasks", None, Some(&idp_token)),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_algorithm"))
    );
    let own = Authenticator::new(SecretString::from(SECRET))
        .mint(
            "ops",
            &TenantId::parse("acme").unwrap(),
            &[Role::Viewer],
            Duration::from_secs(60),
        )
        .unwrap();
    let (status, _, _) = send(
        &api.app,
        gateway_request("GET", "/v1/tasks", None, Some(&format!("Bearer {own}"))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn without_trust_the_authorizer_context_and_headers_are_ignored() {
    // `maof dev`'s configuration: the same request, context and all, is
    // judged by its bearer token alone.
    let api = api(AuthConfig {
        trust_gateway_authorizer: false,
        ..trusting()
    });
    let now = jsonwebtoken::get_current_timestamp();
    let (status, _, body) = send(
        &api.app,
        gateway_request("GET", "/v1/tasks", Some(authorizer_claims(now)), None),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_missing"))
    );
    // Nor does anything a client can send stand in for the context.
    let request = Request::get("/v1/tasks")
        .header("x-amzn-request-context", authorizer_claims(now).to_string())
        .header("x-apigateway-context", authorizer_claims(now).to_string())
        .body(Body::empty())
        .unwrap();
    let (status, _, _) = send(&api.app, request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn every_refusal_is_a_401_problem_with_a_code_that_echoes_nothing() {
    let api = api(pem_config());
    let now = jsonwebtoken::get_current_timestamp();
    let claims = with(
        idp_claims(now),
        json!({"sub": "secret-subject-4711", "tenant": "tenant-xyz"}),
    );
    let cases = [
        (None, "token_missing"),
        (Some("Basic dXNlcjpwYXNz".to_owned()), "token_malformed"),
        (Some("Bearer not-a-jwt".to_owned()), "token_malformed"),
        (
            Some(format!(
                "Bearer {}.{}.",
                segment(&json!({"alg": "none"})),
                segment(&claims)
            )),
            "token_algorithm",
        ),
        (
            Some(format!("Bearer {}", sign(&RSA_OTHER, None, &claims))),
            "token_signature",
        ),
        (
            Some(format!(
                "Bearer {}",
                sign(
                    &RSA,
                    None,
                    &with(claims.clone(), json!({"exp": now - 3600}))
                )
            )),
            "token_expired",
        ),
        (
            Some(format!(
                "Bearer {}",
                sign(
                    &RSA,
                    None,
                    &with(claims.clone(), json!({"nbf": now + 3600}))
                )
            )),
            "token_not_yet_valid",
        ),
        (
            Some(format!(
                "Bearer {}",
                sign(
                    &RSA,
                    None,
                    &with(claims.clone(), json!({"exp": now + 86_400 * 3650}))
                )
            )),
            "token_lifetime_too_long",
        ),
        (
            Some(format!(
                "Bearer {}",
                sign(
                    &EC,
                    None,
                    &with(claims.clone(), json!({"iss": "https://evil.example/"}))
                )
            )),
            "token_issuer",
        ),
        (
            Some(format!(
                "Bearer {}",
                sign(
                    &EC,
                    None,
                    &with(claims.clone(), json!({"aud": "elsewhere"}))
                )
            )),
            "token_audience",
        ),
        (
            Some(format!(
                "Bearer {}",
                sign(
                    &EC,
                    None,
                    &with(claims.clone(), json!({"tenant": "bad#tenant"}))
                )
            )),
            "token_claims",
        ),
    ];
    for (authorization, code) in cases {
        let mut request = Request::get("/v1/tasks");
        if let Some(value) = &authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let (status, challenge, body) = send(&api.app, request.body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{code}: {body}");
        assert_eq!(body["code"], code, "{body}");
        assert_eq!(body["status"], 401);
        assert!(challenge.starts_with("Bearer realm=\"maof\""));
        assert_eq!(challenge.contains("invalid_token"), code != "token_missing");
        let text = body.to_string();
        for value in [
            "secret-subject-4711",
            "tenant-xyz",
            "bad#tenant",
            "evil",
            "elsewhere",
            ISSUER,
        ] {
            assert!(!text.contains(value), "{code} echoes {value}: {text}");
        }
    }
}
