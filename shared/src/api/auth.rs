//! Bearer tokens: HS256 JWTs carrying `sub`, `tenant` and `roles`, verified
//! into a `Principal` by the `Caller` extractor before any handler runs.

use std::marker::PhantomData;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::problem::Problem;
use crate::domain::{Principal, Role, TenantId};

/// HS256 keys shorter than this are guessable; they still work (tests,
/// `maof dev` with a chosen secret) but are reported.
const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    tenant: String,
    #[serde(default)]
    roles: Vec<String>,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Why a request is not authenticated or not allowed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("an Authorization: Bearer token is required")]
    Missing,
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token is invalid")]
    Invalid,
    #[error("this route needs the {} role", .0.name())]
    Forbidden(Role),
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Self {
        // RFC 6750: a 401 names the scheme, and says why when a token was sent.
        let challenge = match e {
            AuthError::Missing => r#"Bearer realm="maof""#,
            AuthError::Expired | AuthError::Invalid => {
                r#"Bearer realm="maof", error="invalid_token""#
            }
            AuthError::Forbidden(_) => {
                return Problem::new(StatusCode::FORBIDDEN, "forbidden", e.to_string());
            }
        };
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
            .with_challenge(challenge)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot sign the token: {0}")]
pub struct MintError(#[from] jsonwebtoken::errors::Error);

/// Verifies and mints the API's bearer tokens with one HS256 secret.
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    // The keys are secret material: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(secret: SecretString) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        if bytes.len() < MIN_SECRET_BYTES {
            tracing::warn!(
                min = MIN_SECRET_BYTES,
                "the JWT secret is short; use at least 32 random bytes"
            );
        }
        // Only HS256, so a token cannot pick a weaker algorithm; `exp` is required.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authenticator {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
        }
    }

    /// A token for `sub` in `tenant` with `roles`, valid for `ttl`.
    pub fn mint(
        &self,
        sub: &str,
        tenant: &TenantId,
        roles: &[Role],
        ttl: Duration,
    ) -> Result<String, MintError> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            tenant: tenant.to_string(),
            roles: roles.iter().map(|r| r.name().to_owned()).collect(),
            exp: now.saturating_add(ttl.as_secs()),
            iat: Some(now),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// The principal a token names, if its signature, expiry and claims hold.
    /// Unknown roles are ignored (a newer issuer may know more roles).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                tracing::debug!(reason = ?e.kind(), "bearer token refused");
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::Invalid,
                }
            })?;
        let claims = data.claims;
        if claims.sub.trim().is_empty() {
            return Err(AuthError::Invalid);
        }
        let tenant = TenantId::parse(claims.tenant).map_err(|_| AuthError::Invalid)?;
        let roles = claims
            .roles
            .iter()
            .filter_map(|r| r.parse::<Role>().ok())
            .collect();
        Ok(Principal {
            sub: claims.sub,
            tenant,
            roles,
        })
    }
}

/// The token in `Authorization: Bearer <token>` (the scheme is case-insensitive).
fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Invalid)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Invalid)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Invalid);
    }
    Ok(token)
}

/// The least role a route needs; roles nest (see `Principal::may`).
pub trait Needs: Send + Sync {
    const ROLE: Role;
}

pub struct Viewer;
pub struct Submitter;
pub struct Admin;
pub struct PlatformAdmin;

impl Needs for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl Needs for Submitter {
    const ROLE: Role = Role::Submitter;
}
impl Needs for Admin {
    const ROLE: Role = Role::Admin;
}
impl Needs for PlatformAdmin {
    const ROLE: Role = Role::PlatformAdmin;
}

/// An authenticated caller holding at least role `R`. Taking it as a handler
/// argument is what protects a route: 401 without a valid token, 403 without
/// the role.
pub struct Caller<R> {
    pub principal: Principal,
    role: PhantomData<R>,
}

impl<R: Needs> FromRequestParts<ApiState> for Caller<R> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        let principal = state.auth.verify(bearer(&parts.headers)?)?;
        if !principal.may(R::ROLE) {
            tracing::info!(tenant = %principal.tenant, sub = %principal.sub, needed = ?R::ROLE, "forbidden");
            return Err(AuthError::Forbidden(R::ROLE).into());
        }
        Ok(Caller {
            principal,
            role: PhantomData,
        })
    }
}
