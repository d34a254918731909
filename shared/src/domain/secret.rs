//! Provider keys: the names of the secrets that hold them, whose agents may
//! name which secrets, and the hosts a key may be sent to.
//!
//! A key's binding is stored with the key itself, never with the agent: an
//! agent's admin can point an agent anywhere, but the key goes only where
//! the secret's owner said.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::agent::Provider;
use super::ids::TenantId;

/// Who an agent belongs to: one tenant, or the platform (shared, managed by
/// `platform_admin`, used by the tenants its settings allow).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    Platform,
    Tenant(TenantId),
}

impl Owner {
    pub fn is_platform(&self) -> bool {
        matches!(self, Owner::Platform)
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Platform => f.write_str("platform"),
            Owner::Tenant(t) => write!(f, "tenant {t}"),
        }
    }
}

// Stored as the owning tenant, or null for the platform.
impl Serialize for Owner {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Owner::Platform => s.serialize_none(),
            Owner::Tenant(t) => s.serialize_some(t),
        }
    }
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Option::<TenantId>::deserialize(d)?.map_or(Owner::Platform, Owner::Tenant))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretNameError {
    #[error("must be 1 to 512 characters")]
    Length,
    #[error("may contain only letters, digits and / _ + = . @ -")]
    BadCharacter,
    #[error("must be under `{0}`: a tenant's agents use only the tenant's own keys")]
    NotTenants(String),
    #[error(
        "must be under `{prefix}` and not under `{prefix}tenants/`: platform agents use platform keys"
    )]
    NotPlatforms { prefix: String },
}

/// The name of a secret (Secrets Manager's alphabet), never its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretName(String);

impl SecretName {
    pub const MAX_LEN: usize = 512;

    pub fn parse(value: impl Into<String>) -> Result<Self, SecretNameError> {
        let value = value.into();
        if value.is_empty() || value.len() > Self::MAX_LEN {
            return Err(SecretNameError::Length);
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b);
        if !value.bytes().all(allowed) {
            return Err(SecretNameError::BadCharacter);
        }
        Ok(SecretName(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether an agent of `owner` may name this secret, in a deployment
    /// whose provider keys live under `prefix` (e.g. `maof/`): a tenant's
    /// agents only its own keys, `{prefix}tenants/{tenant}/…`; platform
    /// agents only platform keys, under the prefix but outside `tenants/`.
    pub fn usable_by(&self, owner: &Owner, prefix: &str) -> Result<(), SecretNameError> {
        let tenants = format!("{prefix}tenants/");
        match owner {
            Owner::Tenant(tenant) => {
                let own = format!("{tenants}{tenant}/");
                match self.0.strip_prefix(&own) {
                    Some(rest) if !rest.is_empty() => Ok(()),
                    _ => Err(SecretNameError::NotTenants(own)),
                }
            }
            Owner::Platform if self.0.starts_with(prefix) && !self.0.starts_with(&tenants) => {
                Ok(())
            }
            Owner::Platform => Err(SecretNameError::NotPlatforms {
                prefix: prefix.to_owned(),
            }),
        }
    }
}

impl std::ops::Deref for SecretName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for SecretName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SecretName::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Why a secret's value cannot be used as a key. Never carries the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the secret is a JSON object but not a key binding ({{\"key\", \"provider\", \"hosts\"}})"
    )]
    Malformed,
    #[error("the key is bound to provider {bound:?}, not {agent:?}")]
    WrongProvider { bound: Provider, agent: Provider },
    #[error(
        "the key is bound to no host: a key for {0:?} must list its hosts ({{\"key\", \"provider\", \"hosts\"}})"
    )]
    NoHosts(Provider),
    #[error("the key is not bound to host {0}")]
    HostNotAllowed(String),
}

/// A key's binding as a secret stores it:
/// `{"key": "...", "provider": "openai", "hosts": ["api.openai.com"]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredBinding {
    key: String,
    provider: Provider,
    #[serde(default)]
    hosts: Option<Vec<String>>,
}

/// A provider key with the hosts it may be sent to.
#[derive(Debug, Clone)]
pub struct ProviderKey {
    key: SecretString,
    hosts: Vec<String>,
}

impl ProviderKey {
    /// Reads a secret's value for an agent of `provider`. A JSON object is a
    /// binding; a plain string is bound to the provider's default host only.
    /// `implied_hosts` are hosts the secret's source adds (the environment
    /// fallback of `maof dev`: loopback and `…_HOSTS`).
    pub fn bind(
        value: &SecretString,
        provider: Provider,
        implied_hosts: &[String],
    ) -> Result<ProviderKey, KeyError> {
        let raw = value.expose_secret().trim();
        let (key, mut hosts) = if raw.starts_with('{') {
            let stored: StoredBinding =
                serde_json::from_str(raw).map_err(|_| KeyError::Malformed)?;
            if stored.provider != provider {
                return Err(KeyError::WrongProvider {
                    bound: stored.provider,
                    agent: provider,
                });
            }
            let hosts = match stored.hosts {
                Some(hosts) => hosts,
                None => provider
                    .default_host()
                    .map(str::to_owned)
                    .into_iter()
                    .collect(),
            };
            (SecretString::from(stored.key), hosts)
        } else {
            let hosts = provider
                .default_host()
                .map(str::to_owned)
                .into_iter()
                .collect();
            (SecretString::from(raw.to_owned()), hosts)
        };
        hosts.extend(implied_hosts.iter().cloned());
        for host in &mut hosts {
            *host = normal_host(host);
        }
        hosts.retain(|h| !h.is_empty());
        if hosts.is_empty() {
            return Err(KeyError::NoHosts(provider));
        }
        Ok(ProviderKey { key, hosts })
    }

    /// The key, if it may be sent to `host`.
    pub fn for_host(&self, host: &str) -> Result<&SecretString, KeyError> {
        let host = normal_host(host);
        if self.hosts.contains(&host) {
            Ok(&self.key)
        } else {
            Err(KeyError::HostNotAllowed(host))
        }
    }
}

/// Host names compare case-insensitively, without a trailing dot or IPv6 brackets.
fn normal_host(host: &str) -> String {
    host.trim()
        .trim_end_matches('.')
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    fn tenant(t: &str) -> Owner {
        Owner::Tenant(TenantId::parse(t).unwrap())
    }

    #[test]
    fn names_use_secrets_managers_alphabet() {
        assert!(SecretName::parse("maof/openai").is_ok());
        assert!(SecretName::parse("maof/tenants/acme/key+1=@.-_").is_ok());
        assert_eq!(SecretName::parse(""), Err(SecretNameError::Length));
        assert_eq!(
            SecretName::parse("x".repeat(513)),
            Err(SecretNameError::Length)
        );
        assert_eq!(
            SecretName::parse("maof/open ai"),
            Err(SecretNameError::BadCharacter)
        );
        assert!(serde_json::from_str::<SecretName>("\"a#b\"").is_err());
    }

    #[test]
    fn a_tenants_agents_name_only_its_own_keys() {
        let own = SecretName::parse("maof/tenants/acme/openai").unwrap();
        assert_eq!(own.usable_by(&tenant("acme"), "maof/"), Ok(()));
        // Another tenant's key, a platform key, a prefix that is only a prefix.
        assert!(own.usable_by(&tenant("acm"), "maof/").is_err());
        assert!(own.usable_by(&tenant("globex"), "maof/").is_err());
        let platform = SecretName::parse("maof/openai").unwrap();
        assert_eq!(
            platform.usable_by(&tenant("acme"), "maof/"),
            Err(SecretNameError::NotTenants("maof/tenants/acme/".into()))
        );
        let bare = SecretName::parse("maof/tenants/acme/").unwrap();
        assert!(bare.usable_by(&tenant("acme"), "maof/").is_err());
        let longer = SecretName::parse("maof/tenants/acme-evil/openai").unwrap();
        assert!(longer.usable_by(&tenant("acme"), "maof/").is_err());
    }

    #[test]
    fn platform_agents_name_only_platform_keys() {
        let p = Owner::Platform;
        assert_eq!(
            SecretName::parse("maof/openai")
                .unwrap()
                .usable_by(&p, "maof/"),
            Ok(())
        );
        for bad in ["maof/tenants/acme/openai", "other/openai", "aws/secret"] {
            assert!(
                SecretName::parse(bad)
                    .unwrap()
                    .usable_by(&p, "maof/")
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_plain_key_goes_only_to_its_providers_default_host() {
        let key = ProviderKey::bind(&secret("sk-1"), Provider::Openai, &[]).unwrap();
        assert_eq!(
            key.for_host("api.openai.com").unwrap().expose_secret(),
            "sk-1"
        );
        assert_eq!(
            key.for_host("API.OpenAI.com.").unwrap().expose_secret(),
            "sk-1"
        );
        assert_eq!(
            key.for_host("attacker.example").unwrap_err(),
            KeyError::HostNotAllowed("attacker.example".into())
        );
        // A compatible server has no default host: its key must say where.
        assert_eq!(
            ProviderKey::bind(&secret("sk-1"), Provider::OpenaiCompatible, &[]).unwrap_err(),
            KeyError::NoHosts(Provider::OpenaiCompatible)
        );
    }

    #[test]
    fn a_binding_names_its_provider_and_hosts() {
        let value = secret(
            r#"{"key": "sk-2", "provider": "openai_compatible", "hosts": ["api.deepseek.com"]}"#,
        );
        let key = ProviderKey::bind(&value, Provider::OpenaiCompatible, &[]).unwrap();
        assert!(key.for_host("api.deepseek.com").is_ok());
        assert!(key.for_host("api.openai.com").is_err());
        assert_eq!(
            ProviderKey::bind(&value, Provider::Openai, &[]).unwrap_err(),
            KeyError::WrongProvider {
                bound: Provider::OpenaiCompatible,
                agent: Provider::Openai
            }
        );
        // Without hosts: the provider's default host.
        let value = secret(r#"{"key": "sk-3", "provider": "anthropic"}"#);
        let key = ProviderKey::bind(&value, Provider::Anthropic, &[]).unwrap();
        assert!(key.for_host("api.anthropic.com").is_ok());
        // Not a binding: refused without echoing the value.
        let err =
            ProviderKey::bind(&secret(r#"{"kee": "sk-4"}"#), Provider::Openai, &[]).unwrap_err();
        assert_eq!(err, KeyError::Malformed);
        assert!(!err.to_string().contains("sk-4"));
    }

    #[test]
    fn a_source_may_add_hosts() {
        let implied = vec!["127.0.0.1".to_owned(), "[::1]".to_owned()];
        let key = ProviderKey::bind(&secret("sk-5"), Provider::Openai, &implied).unwrap();
        assert!(key.for_host("127.0.0.1").is_ok());
        assert!(key.for_host("::1").is_ok());
        assert!(key.for_host("api.openai.com").is_ok());
    }

    #[test]
    fn owners_are_stored_as_the_tenant_or_null() {
        assert_eq!(serde_json::to_string(&tenant("acme")).unwrap(), "\"acme\"");
        assert_eq!(serde_json::to_string(&Owner::Platform).unwrap(), "null");
        assert_eq!(
            serde_json::from_str::<Owner>("null").unwrap(),
            Owner::Platform
        );
        assert_eq!(
            serde_json::from_str::<Owner>("\"acme\"").unwrap(),
            tenant("acme")
        );
    }
}
