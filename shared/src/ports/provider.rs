//! The provider port: one normalized request in, one normalized answer (or a
//! classified error) out, whatever the provider's wire format. `providers`
//! implements it over HTTP (and the in-process mock); stages, fallbacks and
//! tests see only this.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

use crate::domain::{Agent, ErrorClass, Provider, TaskType, Usage};

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
    pub task_type: TaskType,
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

/// The client for each provider kind this deployment speaks.
pub trait ProviderClients: Send + Sync {
    /// The client that calls agents of `provider`; `None` when this
    /// deployment has none.
    fn client(&self, provider: Provider) -> Option<Arc<dyn ProviderClient>>;
}
