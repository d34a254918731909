//! Provider clients: one normalized request in, one normalized answer (or a
//! classified error) out, over the process's one shared `reqwest::Client`.

mod mock;
mod openai_compatible;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

use crate::domain::{Agent, ErrorClass, Provider, Usage};

pub use mock::MockProvider;
pub use openai_compatible::OpenAiCompatible;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// What every provider is asked, whatever its wire format.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub task_type: String,
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub stop: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub output: String,
    pub finish_reason: Option<String>,
    pub usage: Usage,
    /// The provider's own id for the request, for support tickets.
    pub request_id: Option<String>,
}

/// A failed provider call, classified.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{class:?}: {message}")]
pub struct ProviderError {
    pub class: ErrorClass,
    /// Safe for the task's owner: no key, no internal address.
    pub message: String,
    /// The wait the provider asked for (`retry-after` and kin).
    pub retry_after: Option<Duration>,
    /// The HTTP status, when there was a response.
    pub status: Option<u16>,
}

impl ProviderError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        ProviderError {
            class,
            message: message.into(),
            retry_after: None,
            status: None,
        }
    }
}

#[async_trait]
pub trait ProviderClient: Send + Sync {
    /// Calls `agent` with `request`. `key` is the agent's secret, when its
    /// provider needs one. Honours `agent.spec.base_url` and the agent's timeout.
    async fn complete(
        &self,
        agent: &Agent,
        key: Option<&SecretString>,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError>;
}

/// The client for each provider kind.
#[derive(Clone, Default)]
pub struct Providers {
    clients: HashMap<Provider, Arc<dyn ProviderClient>>,
}

impl Providers {
    /// Every provider this build speaks, sharing one HTTP client.
    pub fn new(http: reqwest::Client) -> Self {
        let compatible = Arc::new(OpenAiCompatible::new(http));
        let mut providers = Providers::default();
        providers.insert(Provider::Mock, Arc::new(MockProvider));
        providers.insert(Provider::OpenaiCompatible, compatible.clone());
        // OpenAI's own API is the same wire format at its default root.
        providers.insert(Provider::Openai, compatible);
        providers
    }

    pub fn insert(&mut self, provider: Provider, client: Arc<dyn ProviderClient>) {
        self.clients.insert(provider, client);
    }

    pub fn get(&self, provider: Provider) -> Option<&Arc<dyn ProviderClient>> {
        self.clients.get(&provider)
    }
}

/// The one outbound HTTP client of a process: rustls, pooled, with a connect
/// timeout; each request sets its own total timeout from the agent.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("maof/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}
