//! What the authenticator accepts, as one parsed value ([`AuthConfig`]):
//! built from the environment by the intake Lambda and `maof dev`, by hand in
//! tests.
//!
//! Two kinds of token are told apart by their `alg`:
//! - MAOF's own (HS256, signed with the platform secret by `maof token` and
//!   `maof dev`): claims `sub`, `tenant`, `roles`; no issuer or audience.
//! - an identity provider's (RS256 or ES256, verified with the configured
//!   PEM keys or the keys of a JWKS URL): checked against the configured
//!   issuers and audiences, read through the claim mapping.
//!
//! The time rules (`exp` required, `nbf`, `iat`, the maximum lifetime, the
//! leeway) apply to both, and to the API Gateway authorizer's claims.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};
use secrecy::SecretString;
use url::Url;

/// A token may live this long unless `MAOF_JWT_MAX_LIFETIME` says otherwise.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Clock skew tolerated on `exp`, `nbf` and `iat`; also the most allowed.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);

pub const PUBLIC_KEYS_VAR: &str = "MAOF_JWT_PUBLIC_KEYS";
pub const JWKS_URL_VAR: &str = "MAOF_JWT_JWKS_URL";
pub const ISSUER_VAR: &str = "MAOF_JWT_ISSUER";
pub const AUDIENCE_VAR: &str = "MAOF_JWT_AUDIENCE";
pub const TENANT_CLAIM_VAR: &str = "MAOF_JWT_TENANT_CLAIM";
pub const ROLES_CLAIM_VAR: &str = "MAOF_JWT_ROLES_CLAIM";
pub const MAX_LIFETIME_VAR: &str = "MAOF_JWT_MAX_LIFETIME";
pub const LEEWAY_VAR: &str = "MAOF_JWT_LEEWAY";
/// Read by the intake Lambda only ([`AuthConfig::from_lambda_env`]): the
/// template sets it to `true` exactly when API Gateway's JWT authorizer
/// guards the routes.
pub const TRUST_AUTHORIZER_VAR: &str = "MAOF_JWT_TRUST_AUTHORIZER";

/// Where an identity provider's tokens name the tenant and the roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    /// A string claim, e.g. `custom:tenant` or `https://example.com/tenant`.
    pub tenant: String,
    /// An array of role names (`roles`, `groups`, `cognito:groups`) or a
    /// space-separated string (`scope`).
    pub roles: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        ClaimMapping {
            tenant: "tenant".to_owned(),
            roles: "roles".to_owned(),
        }
    }
}

/// An identity provider's public key, from PEM: RSA (RS256) or EC P-256 (ES256).
#[derive(Clone)]
pub struct PublicKey {
    pub algorithm: Algorithm,
    pub(super) key: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    /// Every PEM block in `text` (`PUBLIC KEY` or `RSA PUBLIC KEY`).
    /// Literal `\n` sequences are read as line breaks, as an environment
    /// variable often carries them.
    pub fn parse_pem_list(text: &str) -> Result<Vec<PublicKey>, AuthConfigError> {
        let text = text.replace("\\n", "\n");
        let mut keys = Vec::new();
        let mut block: Option<String> = None;
        for line in text.lines().map(str::trim) {
            if line.starts_with("-----BEGIN ") {
                block = Some(format!("{line}\n"));
            } else if let Some(current) = block.as_mut() {
                current.push_str(line);
                current.push('\n');
                if line.starts_with("-----END ") {
                    let pem = std::mem::take(current);
                    block = None;
                    keys.push(PublicKey::from_pem(&pem, keys.len() + 1)?);
                }
            }
        }
        if block.is_some() || keys.is_empty() {
            return Err(AuthConfigError::PublicKey {
                index: keys.len() + 1,
                reason: "no complete PEM block",
            });
        }
        Ok(keys)
    }

    /// One PEM block; `index` (from 1) names it in errors, which never
    /// quote key material.
    fn from_pem(pem: &str, index: usize) -> Result<PublicKey, AuthConfigError> {
        let bad = |reason| AuthConfigError::PublicKey { index, reason };
        if pem.contains("PRIVATE KEY") {
            return Err(bad("a private key; give the public key only"));
        }
        if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
            return Ok(PublicKey {
                algorithm: Algorithm::RS256,
                key,
            });
        }
        match DecodingKey::from_ec_pem(pem.as_bytes()) {
            // An uncompressed P-256 point: 0x04, then 32 bytes each of x and y.
            Ok(key) if key.as_bytes().len() == 65 => Ok(PublicKey {
                algorithm: Algorithm::ES256,
                key,
            }),
            Ok(_) => Err(bad("an EC key not on P-256 (only ES256 is accepted)")),
            Err(_) => Err(bad("not an RSA or EC public key in PEM")),
        }
    }
}

/// Everything the [`Authenticator`](super::Authenticator) is told.
#[derive(Clone)]
pub struct AuthConfig {
    /// MAOF's own tokens (HS256); `None` refuses them.
    pub secret: Option<SecretString>,
    /// An identity provider's keys, given directly.
    pub public_keys: Vec<PublicKey>,
    /// An identity provider's key set, fetched and cached.
    pub jwks_url: Option<Url>,
    /// An identity provider's token must name one of these in `iss` (when
    /// any is set).
    pub issuers: Vec<String>,
    /// An identity provider's token must name one of these in `aud` (when
    /// any is set); with none, a token carrying `aud` is refused, as it was
    /// meant for someone else.
    pub audiences: Vec<String>,
    pub claims: ClaimMapping,
    pub max_lifetime: Duration,
    pub leeway: Duration,
    /// Take the claims API Gateway's JWT authorizer validated from the
    /// request context instead of verifying the bearer token. Only for the
    /// intake Lambda behind the authorizer: nothing else can put that
    /// context on a request, and `maof dev` never sets this.
    pub trust_gateway_authorizer: bool,
}

impl std::fmt::Debug for AuthConfig {
    // The secret stays out; keys are named by algorithm only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("hs256", &self.secret.is_some())
            .field("public_keys", &self.public_keys)
            .field("jwks_url", &self.jwks_url.as_ref().map(Url::as_str))
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("claims", &self.claims)
            .field("max_lifetime", &self.max_lifetime)
            .field("leeway", &self.leeway)
            .field("trust_gateway_authorizer", &self.trust_gateway_authorizer)
            .finish()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret: None,
            public_keys: Vec::new(),
            jwks_url: None,
            issuers: Vec::new(),
            audiences: Vec::new(),
            claims: ClaimMapping::default(),
            max_lifetime: DEFAULT_MAX_LIFETIME,
            leeway: MAX_LEEWAY,
            trust_gateway_authorizer: false,
        }
    }
}

/// A setting that cannot be used. Names the variable, never a secret or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    #[error("{var}: {reason}")]
    Invalid { var: &'static str, reason: String },
    #[error("{PUBLIC_KEYS_VAR}: key {index} is {reason}")]
    PublicKey { index: usize, reason: &'static str },
    #[error("no way to verify a token: set a signing secret, {PUBLIC_KEYS_VAR} or {JWKS_URL_VAR}")]
    NothingToVerifyWith,
    #[error("{JWKS_URL_VAR} is set but this process has no HTTP client to fetch it")]
    NoHttpClient,
}

impl AuthConfig {
    /// MAOF's own tokens only, with the default rules.
    pub fn hs256(secret: SecretString) -> Self {
        AuthConfig {
            secret: Some(secret),
            ..AuthConfig::default()
        }
    }

    pub fn with_secret(mut self, secret: SecretString) -> Self {
        self.secret = Some(secret);
        self
    }

    /// The `MAOF_JWT_*` settings of the environment (the signing secret
    /// aside: the caller adds it). Never trusts the API Gateway authorizer.
    pub fn from_env() -> Result<Self, AuthConfigError> {
        AuthConfig::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`AuthConfig::from_env`], and trusting the API Gateway
    /// authorizer's claims when `MAOF_JWT_TRUST_AUTHORIZER` is `true`: for
    /// the intake Lambda only.
    pub fn from_lambda_env() -> Result<Self, AuthConfigError> {
        AuthConfig::from_lambda_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lambda_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, AuthConfigError> {
        let mut config = AuthConfig::from_lookup(&lookup)?;
        config.trust_gateway_authorizer = match non_empty(&lookup, TRUST_AUTHORIZER_VAR) {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(_) => return Err(invalid(TRUST_AUTHORIZER_VAR, "use true or false")),
        };
        Ok(config)
    }

    /// The settings `lookup` gives (a variable's value by name).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, AuthConfigError> {
        let mut config = AuthConfig::default();
        if let Some(pem) = non_empty(&lookup, PUBLIC_KEYS_VAR) {
            config.public_keys = PublicKey::parse_pem_list(&pem)?;
        }
        if let Some(url) = non_empty(&lookup, JWKS_URL_VAR) {
            config.jwks_url = Some(parse_jwks_url(&url)?);
        }
        config.issuers = list(&lookup, ISSUER_VAR);
        config.audiences = list(&lookup, AUDIENCE_VAR);
        if let Some(claim) = non_empty(&lookup, TENANT_CLAIM_VAR) {
            config.claims.tenant = claim;
        }
        if let Some(claim) = non_empty(&lookup, ROLES_CLAIM_VAR) {
            config.claims.roles = claim;
        }
        if let Some(text) = non_empty(&lookup, MAX_LIFETIME_VAR) {
            config.max_lifetime =
                parse_duration(&text).map_err(|reason| invalid(MAX_LIFETIME_VAR, reason))?;
            if config.max_lifetime.is_zero() {
                return Err(invalid(MAX_LIFETIME_VAR, "must be more than zero"));
            }
        }
        if let Some(text) = non_empty(&lookup, LEEWAY_VAR) {
            config.leeway = parse_duration(&text).map_err(|reason| invalid(LEEWAY_VAR, reason))?;
            if config.leeway > MAX_LEEWAY {
                return Err(invalid(LEEWAY_VAR, "at most 60 s"));
            }
        }
        Ok(config)
    }

    /// Whether identity-provider tokens (RS256, ES256) can be verified.
    pub fn has_identity_provider(&self) -> bool {
        !self.public_keys.is_empty() || self.jwks_url.is_some()
    }
}

fn invalid(var: &'static str, reason: impl Into<String>) -> AuthConfigError {
    AuthConfigError::Invalid {
        var,
        reason: reason.into(),
    }
}

fn non_empty(lookup: impl Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    lookup(var)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Comma-separated, as the template's `JwtAudience` is.
fn list(lookup: impl Fn(&str) -> Option<String>, var: &str) -> Vec<String> {
    non_empty(lookup, var)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// https, or http to loopback (a local identity provider, tests): keys
/// fetched in clear text from elsewhere could be swapped on the way.
fn parse_jwks_url(text: &str) -> Result<Url, AuthConfigError> {
    let url = Url::parse(text).map_err(|e| invalid(JWKS_URL_VAR, e.to_string()))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(invalid(
            JWKS_URL_VAR,
            "must be an https URL (http only to loopback)",
        )),
    }
}

/// `90`, `90s`, `30m`, `24h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 90s, 30m, 24h or 7d"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad unit in `{text}`: use s, m, h or d")),
    };
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too long"))
}
