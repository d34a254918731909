use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use secrecy::SecretString;

use super::lock;
use crate::ports::{SecretError, SecretSource};

/// Secrets held in process. With `from_env`, a name missing from the map is
/// read from the environment, which is how `maof dev` gets keys: `maof/a/b-c`
/// from `MAOF_A_B_C` (upper case, every other character as `_`). Only
/// `MAOF_` variables are read, never `MAOF_JWT_SECRET` (the token signing
/// key) nor a `…_HOSTS` list. Such a key is also bound to loopback, for
/// local servers, and to the hosts its `MAOF_A_B_C_HOSTS` lists (commas).
#[derive(Default)]
pub struct MemorySecrets {
    values: Mutex<HashMap<String, SecretString>>,
    from_env: bool,
}

/// Variables the environment fallback never reads as a key.
const NOT_KEYS: [&str; 1] = ["MAOF_JWT_SECRET"];
const LOOPBACK: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

impl MemorySecrets {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_env_fallback() -> Self {
        MemorySecrets {
            values: Mutex::default(),
            from_env: true,
        }
    }

    pub fn put(&self, name: impl Into<String>, value: impl Into<String>) {
        lock(&self.values).insert(name.into(), SecretString::from(value.into()));
    }

    pub fn remove(&self, name: &str) {
        lock(&self.values).remove(name);
    }

    /// The environment variable a secret name maps to.
    pub fn env_var_for(name: &str) -> String {
        name.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    }

    /// The variable the fallback reads for `name`, if it may read one.
    fn env_key_var(&self, name: &str) -> Option<String> {
        let var = Self::env_var_for(name);
        let readable = self.from_env
            && var.starts_with("MAOF_")
            && !NOT_KEYS.contains(&var.as_str())
            && !var.ends_with("_HOSTS");
        readable.then_some(var)
    }

    fn stored(&self, name: &str) -> Option<SecretString> {
        lock(&self.values).get(name).cloned()
    }
}

#[async_trait]
impl SecretSource for MemorySecrets {
    async fn get(&self, name: &str) -> Result<SecretString, SecretError> {
        if let Some(value) = self.stored(name) {
            return Ok(value);
        }
        if let Some(var) = self.env_key_var(name)
            && let Ok(value) = std::env::var(var)
            && !value.is_empty()
        {
            return Ok(SecretString::from(value));
        }
        Err(SecretError::NotFound(name.to_owned()))
    }

    fn implied_hosts(&self, name: &str) -> Vec<String> {
        if self.stored(name).is_some() {
            return Vec::new();
        }
        let Some(var) = self.env_key_var(name) else {
            return Vec::new();
        };
        let listed = std::env::var(format!("{var}_HOSTS")).unwrap_or_default();
        LOOPBACK
            .iter()
            .map(|h| (*h).to_owned())
            .chain(
                listed
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn env_var_names() {
        assert_eq!(MemorySecrets::env_var_for("maof/openai"), "MAOF_OPENAI");
        assert_eq!(MemorySecrets::env_var_for("maof/hf-token"), "MAOF_HF_TOKEN");
        assert_eq!(MemorySecrets::env_var_for("maof/a/b-c"), "MAOF_A_B_C");
    }

    // One test touches the environment, so that no other test races it.
    #[tokio::test]
    async fn the_fallback_reads_only_maof_keys_and_binds_them_to_loopback_and_listed_hosts() {
        let s = MemorySecrets::with_env_fallback();
        // SAFETY: no other test in this binary reads or writes these names.
        unsafe {
            std::env::set_var("MAOF_ENVTEST_KEY", "sk-env");
            std::env::set_var("MAOF_ENVTEST_KEY_HOSTS", "gpu.internal, llm.example");
            std::env::set_var("MAOFENVTEST_OTHER", "not-a-key");
        }
        let key = s.get("maof/envtest-key").await.unwrap();
        assert_eq!(key.expose_secret(), "sk-env");
        assert_eq!(
            s.implied_hosts("maof/envtest-key"),
            [
                "localhost",
                "127.0.0.1",
                "::1",
                "gpu.internal",
                "llm.example"
            ]
        );
        // Not under MAOF_: the AWS credentials, anything else.
        for name in ["aws/secret-access-key", "maofenvtest/other", "home"] {
            assert!(
                matches!(s.get(name).await, Err(SecretError::NotFound(_))),
                "{name}"
            );
        }
        // Not the signing key, not a hosts list.
        for name in ["maof/jwt-secret", "maof/envtest-key-hosts"] {
            assert!(
                matches!(s.get(name).await, Err(SecretError::NotFound(_))),
                "{name}"
            );
        }
        // A key put in the map is bound by its value only.
        s.put("maof/envtest-key", "sk-map");
        assert!(s.implied_hosts("maof/envtest-key").is_empty());
        assert!(
            MemorySecrets::new()
                .implied_hosts("maof/envtest-key")
                .is_empty()
        );
    }
}
