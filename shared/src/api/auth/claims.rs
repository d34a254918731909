//! From verified claims to a `Principal`: the time rules, then `sub`, the
//! tenant and the roles, read through the claim mapping. Two shapes of
//! claims arrive: a verified token's JSON, and the strings API Gateway's JWT
//! authorizer puts in the request context.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{AuthError, ClaimMapping};
use crate::domain::{Principal, Role, TenantId};

/// Longer subjects are refused: a `sub` goes into every task and log line.
const MAX_SUB_BYTES: usize = 256;

/// `exp` required; `nbf` and `iat` checked when present; the lifetime
/// (`exp − iat`, or `exp − now` without `iat`) at most `max_lifetime`.
#[derive(Debug, Clone, Copy)]
pub(super) struct TimeRules {
    pub max_lifetime: Duration,
    pub leeway: Duration,
}

/// A token's instants, in seconds since the epoch.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Instants {
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub iat: Option<u64>,
}

impl TimeRules {
    pub fn check(&self, times: Instants, now: u64) -> Result<(), AuthError> {
        let exp = times.exp.ok_or(AuthError::Claims("exp"))?;
        let leeway = self.leeway.as_secs();
        let max = self.max_lifetime.as_secs();
        if exp.saturating_add(leeway) <= now {
            return Err(AuthError::Expired);
        }
        let future = |at: Option<u64>| at.is_some_and(|at| at > now.saturating_add(leeway));
        if future(times.nbf) || future(times.iat) {
            return Err(AuthError::NotYetValid);
        }
        let lifetime = match times.iat {
            Some(iat) => exp.checked_sub(iat).ok_or(AuthError::Claims("iat"))?,
            // Without `iat` only what is left can be measured; the leeway
            // absorbs an issuer whose clock runs ahead of ours.
            None => exp.saturating_sub(now).saturating_sub(leeway),
        };
        if lifetime > max {
            return Err(AuthError::LifetimeTooLong);
        }
        Ok(())
    }
}

/// A NumericDate (RFC 7519): a non-negative number of seconds, possibly
/// fractional. Present but not one is an error naming the claim.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or(AuthError::Claims(name)),
        Some(_) => Err(AuthError::Claims(name)),
    }
}

pub(super) fn instants(claims: &Map<String, Value>) -> Result<Instants, AuthError> {
    Ok(Instants {
        exp: numeric_date(claims, "exp")?,
        nbf: numeric_date(claims, "nbf")?,
        iat: numeric_date(claims, "iat")?,
    })
}

fn subject(sub: Option<&str>) -> Result<String, AuthError> {
    match sub.map(str::trim) {
        Some(sub) if !sub.is_empty() && sub.len() <= MAX_SUB_BYTES => Ok(sub.to_owned()),
        _ => Err(AuthError::Claims("sub")),
    }
}

fn tenant(value: Option<&str>) -> Result<TenantId, AuthError> {
    let value = value.ok_or(AuthError::Claims("tenant"))?;
    TenantId::parse(value.to_owned()).map_err(|_| AuthError::Claims("tenant"))
}

/// Known role names; others are ignored (an identity provider's groups may
/// hold more than MAOF's roles).
fn roles<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<Role> {
    let mut roles: Vec<Role> = names
        .into_iter()
        .filter_map(|name| name.trim().parse::<Role>().ok())
        .collect();
    roles.sort();
    roles.dedup();
    roles
}

/// The principal of a verified token's claims; `tenant_claim` and
/// `roles_claim` name where the tenant and roles are. Roles are an array of
/// names or a space-separated string (OAuth's `scope`); absent, none.
pub(super) fn principal_from_json(
    claims: &Map<String, Value>,
    tenant_claim: &str,
    roles_claim: &str,
) -> Result<Principal, AuthError> {
    let sub = subject(claims.get("sub").and_then(Value::as_str))?;
    let tenant = tenant(claims.get(tenant_claim).and_then(Value::as_str))?;
    let roles = match claims.get(roles_claim) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => roles(items.iter().filter_map(Value::as_str)),
        Some(Value::String(text)) => roles(text.split_whitespace()),
        Some(_) => return Err(AuthError::Claims("roles")),
    };
    Ok(Principal { sub, tenant, roles })
}

/// API Gateway (HTTP API, payload 2.0) hands the authorizer's claims over as
/// strings: an array as `[a b]`, a number as its digits, `scope` as it was
/// (space-separated). A JSON array text is read too.
fn gateway_list(value: &str) -> Vec<String> {
    let value = value.trim();
    if let Ok(items) = serde_json::from_str::<Vec<String>>(value) {
        return items;
    }
    let inner = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value);
    inner
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The principal of the claims API Gateway's JWT authorizer validated
/// (signature, `exp`, `iss`, `aud`). The mapping and the lifetime rule still
/// apply, and `iss` must be one of `issuers` when any is configured (the
/// authorizer checked it against the same `JwtIssuer`); a time claim not in
/// seconds is left to the authorizer's check.
pub(super) fn principal_from_gateway(
    claims: &HashMap<String, String>,
    mapping: &ClaimMapping,
    issuers: &[String],
    rules: &TimeRules,
    now: u64,
) -> Result<Principal, AuthError> {
    if !issuers.is_empty() && !claims.get("iss").is_some_and(|iss| issuers.contains(iss)) {
        return Err(AuthError::Issuer);
    }
    let seconds = |name: &str| claims.get(name).and_then(|v| v.trim().parse::<u64>().ok());
    let times = Instants {
        exp: seconds("exp"),
        nbf: seconds("nbf"),
        iat: seconds("iat"),
    };
    if times.exp.is_some() {
        rules.check(times, now)?;
    } else {
        tracing::debug!("the authorizer's exp is not in seconds; its own check stands");
    }
    let sub = subject(claims.get("sub").map(String::as_str))?;
    let tenant = tenant(claims.get(&mapping.tenant).map(String::as_str))?;
    let names = claims
        .get(&mapping.roles)
        .map(|v| gateway_list(v))
        .unwrap_or_default();
    let roles = roles(names.iter().map(String::as_str));
    Ok(Principal { sub, tenant, roles })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_lists_in_the_shapes_api_gateway_sends() {
        assert_eq!(gateway_list("[admin viewer]"), ["admin", "viewer"]);
        assert_eq!(gateway_list("[admin]"), ["admin"]);
        assert_eq!(gateway_list("submitter viewer"), ["submitter", "viewer"]);
        assert_eq!(gateway_list("admin"), ["admin"]);
        assert_eq!(gateway_list(r#"["admin","viewer"]"#), ["admin", "viewer"]);
        assert_eq!(gateway_list("[a,b]"), ["a", "b"]);
        assert!(gateway_list("[]").is_empty());
        assert!(gateway_list("").is_empty());
    }

    #[test]
    fn time_rules() {
        let rules = TimeRules {
            max_lifetime: Duration::from_secs(3600),
            leeway: Duration::from_secs(60),
        };
        let now = 1_000_000;
        let at = |exp, nbf, iat| Instants { exp, nbf, iat };
        assert!(
            rules
                .check(at(Some(now + 600), None, Some(now)), now)
                .is_ok()
        );
        // Within the leeway on either side.
        assert!(rules.check(at(Some(now - 30), None, None), now).is_ok());
        assert!(
            rules
                .check(at(Some(now + 600), Some(now + 30), None), now)
                .is_ok()
        );
        assert!(matches!(
            rules.check(at(None, None, None), now),
            Err(AuthError::Claims("exp"))
        ));
        assert!(matches!(
            rules.check(at(Some(now - 61), None, None), now),
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            rules.check(at(Some(now + 600), Some(now + 61), None), now),
            Err(AuthError::NotYetValid)
        ));
        assert!(matches!(
            rules.check(at(Some(now + 600), None, Some(now + 61)), now),
            Err(AuthError::NotYetValid)
        ));
        // exp − iat over the maximum, even when little of it is left.
        assert!(matches!(
            rules.check(at(Some(now + 60), None, Some(now + 60 - 3601)), now),
            Err(AuthError::LifetimeTooLong)
        ));
        // Without iat: exp − now, with the leeway.
        assert!(rules.check(at(Some(now + 3660), None, None), now).is_ok());
        assert!(matches!(
            rules.check(at(Some(now + 3661), None, None), now),
            Err(AuthError::LifetimeTooLong)
        ));
        assert!(matches!(
            rules.check(at(Some(now + 60), None, Some(now + 61)), now),
            Err(AuthError::NotYetValid)
        ));
    }
}
