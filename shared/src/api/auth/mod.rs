//! Authentication: the one place a request becomes a `Principal`, checked by
//! the `Caller` extractor before any handler runs.
//!
//! A request is authenticated in one of two ways:
//! - behind API Gateway's JWT authorizer (the intake Lambda with
//!   `MAOF_JWT_TRUST_AUTHORIZER`), by the claims the authorizer validated,
//!   which lambda_http puts in the request's extensions: a client cannot
//!   put anything there, and nothing it sends (a header) is read instead;
//! - otherwise by the bearer token, verified here: HS256 (MAOF's own
//!   tokens), or RS256/ES256 (an identity provider's, with PEM keys or a
//!   JWKS). Only the algorithms configured are accepted, each with its own
//!   kind of key, so `none` and HS256 with a public key as the secret
//!   (algorithm confusion) fail.
//!
//! Every failure is a 401 with a stable `code` (see [`AuthError::code`]) and
//! a fixed detail: no claim value or key material is echoed. The signature
//! is checked before any claim, so a forger learns nothing about the rules.

mod claims;
mod config;
mod jwks;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use self::claims::TimeRules;
pub use self::config::{
    AuthConfig, AuthConfigError, ClaimMapping, DEFAULT_MAX_LIFETIME, MAX_LEEWAY, PublicKey,
    parse_duration,
};
use self::jwks::Lookup;
pub use self::jwks::{JwksCache, MIN_REFETCH_INTERVAL};
use super::access::Access;
use super::problem::Problem;
use super::{ApiState, RequestId};
use crate::domain::{AuditEntry, Origin, Principal, Role, TenantId};
use crate::ports::{Clock, SystemClock};
use crate::providers::OutboundClient;
use crate::stages::audit::record_refusal;

/// HS256 keys shorter than this are guessable; they still work (tests,
/// `maof dev` with a chosen secret) but are reported.
const MIN_SECRET_BYTES: usize = 32;

/// The claims `mint` writes: MAOF's own token.
#[derive(Debug, Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    tenant: &'a str,
    roles: Vec<&'static str>,
    exp: u64,
    iat: u64,
}

/// Why a request is not authenticated (401, or 503 when the identity
/// provider's keys cannot be had) or not allowed (403).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an Authorization: Bearer token is required")]
    Missing,
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
    #[error("the token's signing algorithm is not accepted")]
    Algorithm,
    #[error("the token's signing key is not known")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token is not valid yet")]
    NotYetValid,
    #[error("the bearer token lives longer than this API accepts")]
    LifetimeTooLong,
    #[error("the token's issuer is not accepted")]
    Issuer,
    #[error("the token is not meant for this API (audience)")]
    Audience,
    /// Names the claim (`sub`, `tenant`, `exp`, ...), never its value.
    #[error("the token lacks a valid `{0}` claim")]
    Claims(&'static str),
    #[error("the identity provider's keys cannot be fetched")]
    KeysUnavailable,
    #[error("this route needs the {} role", .0.name())]
    Forbidden(Role),
}

impl AuthError {
    /// The stable reason code of the problem body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Malformed => "token_malformed",
            AuthError::Algorithm => "token_algorithm",
            AuthError::UnknownKey => "token_key_unknown",
            AuthError::Signature => "token_signature",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::LifetimeTooLong => "token_lifetime_too_long",
            AuthError::Issuer => "token_issuer",
            AuthError::Audience => "token_audience",
            AuthError::Claims(_) => "token_claims",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::Forbidden(_) => "role_missing",
        }
    }
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Self {
        // RFC 6750: a 401 names the scheme, and says why when a token was sent.
        let challenge = match e {
            AuthError::Missing => r#"Bearer realm="maof""#,
            AuthError::Forbidden(_) => {
                return Problem::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
                    .with_code(e.code());
            }
            // Our failure, not the token's: the client may retry.
            AuthError::KeysUnavailable => return Problem::unavailable(&e).with_code(e.code()),
            _ => r#"Bearer realm="maof", error="invalid_token""#,
        };
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
            .with_code(e.code())
            .with_challenge(challenge)
    }
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    #[error("no signing secret is configured")]
    NoSecret,
    #[error(
        "a lifetime of {requested} s is longer than the maximum of {max} s (MAOF_JWT_MAX_LIFETIME): the API would refuse the token"
    )]
    TooLong { requested: u64, max: u64 },
}

/// MAOF's own tokens: HS256 with one secret.
struct OwnTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// An identity provider's tokens: RS256/ES256 with its keys.
struct IdentityProvider {
    keys: Vec<PublicKey>,
    jwks: Option<JwksCache>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    claims: ClaimMapping,
}

/// How the API Gateway authorizer's claims are read: through the identity
/// provider's mapping, and (as a second check of what the authorizer was
/// configured with) from one of the configured issuers.
struct GatewayTrust {
    claims: ClaimMapping,
    issuers: Vec<String>,
}

/// Verifies bearer tokens (and trusts the API Gateway authorizer's claims
/// where configured to); mints MAOF's own tokens.
pub struct Authenticator {
    own: Option<OwnTokens>,
    idp: Option<IdentityProvider>,
    /// Set when the API Gateway authorizer's claims are trusted.
    gateway: Option<GatewayTrust>,
    rules: TimeRules,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Authenticator {
    // The keys are secret material: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

/// The part of a JWT header that picks the key. Read here rather than by
/// `jsonwebtoken::decode_header`, which cannot tell `alg: none` (or any
/// algorithm it does not know) from a broken header.
#[derive(Deserialize)]
struct KeyHint {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

impl Authenticator {
    /// MAOF's own tokens with `secret`, default rules, the system clock.
    pub fn new(secret: SecretString) -> Self {
        Authenticator {
            own: Some(own_tokens(&secret)),
            idp: None,
            gateway: None,
            rules: rules_of(&AuthConfig::default()),
            clock: Arc::new(SystemClock),
        }
    }

    /// Everything `config` says. `http` fetches the JWKS (it must be the
    /// process's outbound client, so that the SSRF policy applies); `clock`
    /// is what the time rules and the JWKS cache read.
    pub fn from_config(
        config: AuthConfig,
        http: Option<OutboundClient>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AuthConfigError> {
        if config.secret.is_none()
            && !config.has_identity_provider()
            && !config.trust_gateway_authorizer
        {
            return Err(AuthConfigError::NothingToVerifyWith);
        }
        // Names, rules and key algorithms only (see AuthConfig's Debug). Debug:
        // `maof token` prints its token on the same stdout as logs.
        tracing::debug!(?config, "authentication");
        let jwks = match (config.jwks_url.clone(), http) {
            (Some(url), Some(http)) => Some(JwksCache::new(url, http, clock.clone())),
            (Some(_), None) => return Err(AuthConfigError::NoHttpClient),
            (None, _) => None,
        };
        let idp = config.has_identity_provider().then(|| {
            if config.audiences.is_empty() {
                tracing::warn!(
                    "no MAOF_JWT_AUDIENCE: identity-provider tokens carrying `aud` will be refused"
                );
            }
            IdentityProvider {
                keys: config.public_keys.clone(),
                jwks,
                issuers: config.issuers.clone(),
                audiences: config.audiences.clone(),
                claims: config.claims.clone(),
            }
        });
        Ok(Authenticator {
            own: config.secret.as_ref().map(own_tokens),
            idp,
            gateway: config.trust_gateway_authorizer.then(|| GatewayTrust {
                claims: config.claims.clone(),
                issuers: config.issuers.clone(),
            }),
            rules: rules_of(&config),
            clock,
        })
    }

    /// The longest lifetime a token may have.
    pub fn max_lifetime(&self) -> Duration {
        self.rules.max_lifetime
    }

    /// MAOF's own token for `sub` in `tenant` with `roles`, valid for `ttl`
    /// (at most the maximum lifetime: a longer one would be refused).
    pub fn mint(
        &self,
        sub: &str,
        tenant: &TenantId,
        roles: &[Role],
        ttl: Duration,
    ) -> Result<String, MintError> {
        let own = self.own.as_ref().ok_or(MintError::NoSecret)?;
        if ttl > self.rules.max_lifetime {
            return Err(MintError::TooLong {
                requested: ttl.as_secs(),
                max: self.rules.max_lifetime.as_secs(),
            });
        }
        let now = self.now();
        let claims = MintedClaims {
            sub,
            tenant: tenant.as_str(),
            roles: roles.iter().map(|r| r.name()).collect(),
            exp: now.saturating_add(ttl.as_secs()),
            iat: now,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &own.encoding,
        )?)
    }

    /// The principal of a request: the API Gateway authorizer's claims when
    /// they are trusted and present, else the bearer token's.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Result<Principal, AuthError> {
        if let Some(trust) = &self.gateway
            && let Some(claims) = gateway_claims(extensions)
        {
            return claims::principal_from_gateway(
                claims,
                &trust.claims,
                &trust.issuers,
                &self.rules,
                self.now(),
            )
            .inspect_err(|e| tracing::info!(code = e.code(), "authorizer claims refused"));
        }
        self.verify(bearer(headers)?).await
    }

    /// The principal a bearer token names, if its signature, times and
    /// claims hold. Unknown roles are ignored (a newer issuer may know more).
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_token(token)
            .await
            .inspect_err(|e| tracing::info!(code = e.code(), "bearer token refused"))
    }

    async fn verify_token(&self, token: &str) -> Result<Principal, AuthError> {
        let hint = key_hint(token)?;
        let (algorithm, claims) = match hint.alg.as_str() {
            "HS256" => {
                let own = self.own.as_ref().ok_or(AuthError::Algorithm)?;
                let claims = decode(token, Algorithm::HS256, &own.decoding, &own_validation())?;
                (Algorithm::HS256, claims)
            }
            "RS256" => (
                Algorithm::RS256,
                self.verify_idp(token, Algorithm::RS256, hint).await?,
            ),
            "ES256" => (
                Algorithm::ES256,
                self.verify_idp(token, Algorithm::ES256, hint).await?,
            ),
            _ => return Err(AuthError::Algorithm),
        };
        self.rules.check(claims::instants(&claims)?, self.now())?;
        let mapping = match (algorithm, &self.idp) {
            (Algorithm::HS256, _) | (_, None) => ClaimMapping::default(),
            (_, Some(idp)) => idp.claims.clone(),
        };
        claims::principal_from_json(&claims, &mapping.tenant, &mapping.roles)
    }

    /// Verifies with the configured keys of `algorithm`, then the JWKS's.
    async fn verify_idp(
        &self,
        token: &str,
        algorithm: Algorithm,
        hint: KeyHint,
    ) -> Result<Map<String, Value>, AuthError> {
        let idp = self.idp.as_ref().ok_or(AuthError::Algorithm)?;
        let validation = idp_validation(idp, algorithm);
        let configured = idp.keys.iter().filter(|k| k.algorithm == algorithm);
        let mut tried_any = false;
        for key in configured {
            tried_any = true;
            match decode(token, algorithm, &key.key, &validation) {
                Err(AuthError::Signature) => continue,
                result => return result,
            }
        }
        let Some(jwks) = &idp.jwks else {
            return Err(if tried_any {
                AuthError::Signature
            } else {
                AuthError::Algorithm
            });
        };
        let keys = jwks
            .keys_for(algorithm, hint.kid.as_deref())
            .await
            .map_err(|lookup| match lookup {
                Lookup::Unknown => AuthError::UnknownKey,
                Lookup::Unavailable => AuthError::KeysUnavailable,
            })?;
        for key in keys {
            match decode(token, algorithm, &key.key, &validation) {
                Err(AuthError::Signature) => continue,
                result => return result,
            }
        }
        Err(AuthError::Signature)
    }

    fn now(&self) -> u64 {
        u64::try_from(self.clock.now().timestamp()).unwrap_or(0)
    }
}

fn own_tokens(secret: &SecretString) -> OwnTokens {
    let bytes = secret.expose_secret().as_bytes();
    if bytes.len() < MIN_SECRET_BYTES {
        tracing::warn!(
            min = MIN_SECRET_BYTES,
            "the JWT secret is short; use at least 32 random bytes"
        );
    }
    OwnTokens {
        encoding: EncodingKey::from_secret(bytes),
        decoding: DecodingKey::from_secret(bytes),
    }
}

fn rules_of(config: &AuthConfig) -> TimeRules {
    TimeRules {
        max_lifetime: config.max_lifetime,
        leeway: config.leeway.min(MAX_LEEWAY),
    }
}

/// The signature (and `iss`/`aud`) only: the time rules are ours, on our
/// clock, with reason codes of their own.
fn base_validation(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    validation.required_spec_claims.clear();
    validation
}

/// MAOF's own tokens name no issuer; one naming an audience was minted for
/// something else and is refused (no audience is set).
fn own_validation() -> Validation {
    base_validation(Algorithm::HS256)
}

fn idp_validation(idp: &IdentityProvider, algorithm: Algorithm) -> Validation {
    let mut validation = base_validation(algorithm);
    if !idp.issuers.is_empty() {
        validation.set_issuer(&idp.issuers);
        validation.required_spec_claims.insert("iss".to_owned());
    }
    if !idp.audiences.is_empty() {
        validation.set_audience(&idp.audiences);
        validation.required_spec_claims.insert("aud".to_owned());
    }
    validation
}

fn decode(
    token: &str,
    algorithm: Algorithm,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Map<String, Value>, AuthError> {
    debug_assert_eq!(validation.algorithms, [algorithm]);
    jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => AuthError::Signature,
            ErrorKind::InvalidIssuer => AuthError::Issuer,
            ErrorKind::InvalidAudience => AuthError::Audience,
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::Issuer,
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::Audience,
            ErrorKind::InvalidAlgorithm => AuthError::Algorithm,
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => AuthError::Malformed,
            other => {
                // A key that cannot verify this algorithm: ours to fix.
                tracing::warn!(error = ?other, "token verification failed");
                AuthError::Signature
            }
        })
}

/// The header's `alg` and `kid`, from a token of three base64url parts.
fn key_hint(token: &str) -> Result<KeyHint, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)
}

/// The claims API Gateway's JWT authorizer validated, when the request came
/// through one (HTTP API, payload 2.0).
fn gateway_claims(extensions: &Extensions) -> Option<&std::collections::HashMap<String, String>> {
    use lambda_http::request::RequestContext;
    match extensions.get::<RequestContext>()? {
        RequestContext::ApiGatewayV2(context) => context
            .authorizer
            .as_ref()?
            .jwt
            .as_ref()
            .map(|jwt| &jwt.claims),
        _ => None,
    }
}

/// The token in `Authorization: Bearer <token>` (the scheme is case-insensitive).
fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// An authenticated caller holding the role the route's entry in the
/// access table (`api::access`) needs. Taking it as a handler argument is
/// what protects a route: 401 without a valid token, 403 without the role;
/// each refusal is audited.
pub struct Caller {
    pub principal: Principal,
    /// The request, for the audit log.
    pub origin: Origin,
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        let needed = match parts.extensions.get::<Access>() {
            Some(Access::Role(role)) => *role,
            // A route built outside the table, or public yet asking for a
            // caller: a bug, refused rather than let through.
            Some(Access::Public) | None => {
                return Err(Problem::internal(
                    &"a route without an access entry takes a caller",
                ));
            }
        };
        let request_id = parts.extensions.get::<RequestId>().map(|id| id.0.clone());
        match Self::admitted(parts, state, needed).await {
            Ok(principal) => Ok(Caller {
                principal,
                origin: Origin {
                    request_id,
                    ..Origin::default()
                },
            }),
            Err((error, principal)) => {
                if error != AuthError::KeysUnavailable {
                    let route = format!(
                        "{} {}",
                        parts.method,
                        parts
                            .extensions
                            .get::<MatchedPath>()
                            .map_or("?", MatchedPath::as_str)
                    );
                    let now = state.services.clock.now();
                    let entry = AuditEntry::access_denied(
                        principal.as_ref(),
                        &route,
                        error.code(),
                        request_id,
                        now,
                    );
                    record_refusal(&state.services, entry).await;
                }
                Err(error.into())
            }
        }
    }
}

impl Caller {
    /// The verified principal holding the route's role; or why not, with
    /// the principal when it was verified (a 403).
    async fn admitted(
        parts: &Parts,
        state: &ApiState,
        needed: Role,
    ) -> Result<Principal, (AuthError, Option<Principal>)> {
        let principal = state
            .auth
            .authenticate(&parts.headers, &parts.extensions)
            .await
            .map_err(|e| (e, None))?;
        if !principal.may(needed) {
            tracing::info!(tenant = %principal.tenant, sub = %principal.sub, ?needed, "forbidden");
            return Err((AuthError::Forbidden(needed), Some(principal)));
        }
        Ok(principal)
    }
}
