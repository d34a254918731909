use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use secrecy::SecretString;

use super::lock;
use crate::ports::{SecretError, SecretSource};

/// Secrets held in process. With `from_env`, a name missing from the map is
/// read from the environment: `maof/openai` from `MAOF_OPENAI` (upper case,
/// every other non-alphanumeric as `_`), which is how `maof dev` gets keys.
#[derive(Default)]
pub struct MemorySecrets {
    values: Mutex<HashMap<String, SecretString>>,
    from_env: bool,
}

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
}

#[async_trait]
impl SecretSource for MemorySecrets {
    async fn get(&self, name: &str) -> Result<SecretString, SecretError> {
        if let Some(value) = lock(&self.values).get(name) {
            return Ok(value.clone());
        }
        if self.from_env
            && let Ok(value) = std::env::var(Self::env_var_for(name))
            && !value.is_empty()
        {
            return Ok(SecretString::from(value));
        }
        Err(SecretError::NotFound(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_var_names() {
        assert_eq!(MemorySecrets::env_var_for("maof/openai"), "MAOF_OPENAI");
        assert_eq!(MemorySecrets::env_var_for("maof/hf-token"), "MAOF_HF_TOKEN");
    }
}
