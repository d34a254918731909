use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use secrecy::SecretString;

use super::describe;
use crate::ports::{SecretError, SecretSource};

/// Secrets Manager. Put a `CachedSecrets` in front: this makes a call per get.
#[derive(Clone)]
pub struct SecretsManagerSource {
    client: Client,
}

impl SecretsManagerSource {
    pub fn new(client: Client) -> Self {
        SecretsManagerSource { client }
    }
}

#[async_trait]
impl SecretSource for SecretsManagerSource {
    #[tracing::instrument(skip(self))]
    async fn get(&self, name: &str) -> Result<SecretString, SecretError> {
        match self.client.get_secret_value().secret_id(name).send().await {
            Ok(out) => out.secret_string.map(SecretString::from).ok_or_else(|| {
                SecretError::Backend(format!("secret `{name}` has no string value"))
            }),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                Err(SecretError::NotFound(name.to_owned()))
            }
            Err(e) => Err(SecretError::Backend(describe(e))),
        }
    }
}
