//! HuggingFace: Inference Providers' `hf-inference` for text classification,
//! and the OpenAI-compatible router for every other task type.
//!
//! | task type | request | agent `base_url` (default) |
//! |---|---|---|
//! | `classification` | `POST {root}/models/{model}` with `{"inputs": content}` | `https://router.huggingface.co/hf-inference` |
//! | anything else | `POST {root}/chat/completions` (OpenAI wire format) | `https://router.huggingface.co/v1` |
//!
//! An agent's `base_url` is the root for the kind of model it names: a
//! classifier's is an inference root (`.../hf-inference`, or a dedicated
//! Inference Endpoint's URL), a chat model's an OpenAI-compatible root.
//!
//! A classification answers with the labels as JSON, best first:
//!
//! ```json
//! {"label":"POSITIVE","score":0.9998,"labels":[{"label":"POSITIVE","score":0.9998},{"label":"NEGATIVE","score":0.0002}]}
//! ```
//!
//! `label` and `score` are the top label's, so a consensus or vote over
//! several classifiers can compare `label` alone. HuggingFace reports no token
//! counts for classification: usage is zero.

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::ACCEPT;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::http::{self, RawResponse, retry_after_header};
use super::openai_compatible::OpenAiCompatible;
use super::outbound::OutboundClient;
use crate::domain::{Agent, ErrorClass, TaskType, Usage};
use crate::ports::{ChatRequest, ChatResponse, ProviderClient, ProviderError};

/// The task type served by the inference API; every other goes to the router.
pub const TASK_CLASSIFICATION: TaskType = TaskType::from_static("classification");

/// A client for HuggingFace over the process's one [`OutboundClient`].
#[derive(Debug, Clone)]
pub struct HuggingFace {
    http: OutboundClient,
    chat: OpenAiCompatible,
}

impl HuggingFace {
    /// The inference root used for classification when an agent has no `base_url`.
    pub const DEFAULT_INFERENCE_URL: &'static str = "https://router.huggingface.co/hf-inference";
    /// The OpenAI-compatible root used for other task types when an agent has no `base_url`.
    pub const DEFAULT_ROUTER_URL: &'static str = "https://router.huggingface.co/v1";

    pub fn new(http: OutboundClient) -> Self {
        HuggingFace {
            chat: OpenAiCompatible::new(http.clone()),
            http,
        }
    }
}

#[async_trait]
impl ProviderClient for HuggingFace {
    async fn complete(
        &self,
        agent: &Agent,
        key: Option<&SecretString>,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        if request.task_type != TASK_CLASSIFICATION {
            let url = http::endpoint(
                agent.spec.base_url.as_deref(),
                HuggingFace::DEFAULT_ROUTER_URL,
                "/chat/completions",
            );
            return self.chat.complete_at(&url, agent, key, request).await;
        }
        let mut builder = self
            .http
            .post(classification_endpoint(
                agent.spec.base_url.as_deref(),
                &agent.spec.model,
            ))
            .header(ACCEPT, "application/json")
            .json(&WireRequest {
                inputs: http::last_user_content(request),
            });
        if let Some(key) = key {
            builder = builder.bearer_auth(key.expose_secret());
        }
        let raw = http::send(
            agent,
            &self.http,
            builder,
            agent.spec.constraints.timeout_ms(),
        )
        .await?;
        if raw.status.is_success() {
            parse_labels(agent, &raw)
        } else {
            Err(error_response(agent, key, &raw))
        }
    }
}

/// `{root}/models/{model}`; model ids keep their `/` (`org/name`).
fn classification_endpoint(base_url: Option<&str>, model: &str) -> String {
    http::endpoint(
        base_url,
        HuggingFace::DEFAULT_INFERENCE_URL,
        &format!("/models/{model}"),
    )
}

#[derive(Debug, Serialize)]
struct WireRequest<'a> {
    inputs: &'a str,
}

/// `[[{label, score}, ...]]` (one list per input) or `[{label, score}, ...]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WireLabels {
    Nested(Vec<Vec<Label>>),
    Flat(Vec<Label>),
}

/// One label of a classification and its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    pub label: String,
    pub score: f64,
}

/// What a classification answers: the top label, and every label best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub label: String,
    pub score: f64,
    pub labels: Vec<Label>,
}

fn parse_labels(agent: &Agent, raw: &RawResponse) -> Result<ChatResponse, ProviderError> {
    let malformed =
        |reason: &dyn std::fmt::Display| http::malformed(agent, raw.status, &raw.body, reason);
    let wire: WireLabels = serde_json::from_slice(&raw.body).map_err(|e| malformed(&e))?;
    let mut labels = match wire {
        WireLabels::Nested(lists) => lists.into_iter().next().unwrap_or_default(),
        WireLabels::Flat(labels) => labels,
    };
    labels.sort_by(|a, b| b.score.total_cmp(&a.score));
    let Some(top) = labels.first().cloned() else {
        return Err(malformed(&"no labels"));
    };
    let output = serde_json::to_string(&Classification {
        label: top.label,
        score: top.score,
        labels,
    })
    .map_err(|e| malformed(&e))?;
    Ok(ChatResponse {
        output,
        finish_reason: None,
        usage: Usage::default(),
        request_id: raw.header("x-request-id").map(str::to_owned),
    })
}

/// `{"error": "..."}` or `{"error": ["..."]}`, and `estimated_time` (seconds)
/// while a model loads.
#[derive(Debug, Default)]
struct ErrorDetail {
    message: Option<String>,
    estimated_time: Option<f64>,
}

impl ErrorDetail {
    fn parse(body: &[u8]) -> ErrorDetail {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            return ErrorDetail::default();
        };
        let message = match value.get("error") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(items)) => Some(
                items
                    .iter()
                    .filter_map(|i| i.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Some(serde_json::Value::Object(o)) => {
                o.get("message").and_then(|m| m.as_str()).map(str::to_owned)
            }
            _ => None,
        };
        ErrorDetail {
            message,
            estimated_time: value.get("estimated_time").and_then(|t| t.as_f64()),
        }
    }

    fn mentions(&self, needle: &str) -> bool {
        self.message
            .as_deref()
            .is_some_and(|m| m.to_ascii_lowercase().contains(needle))
    }
}

fn classify(status: StatusCode, detail: &ErrorDetail) -> (ErrorClass, String) {
    let code = status.as_u16();
    match code {
        400 | 413 | 422
            if detail.mentions("too long")
                || detail.mentions("sequence length")
                || detail.mentions("maximum length") =>
        {
            (
                ErrorClass::ContextLengthExceeded,
                http::quoted(
                    "input exceeds the model's maximum length",
                    detail.message.as_deref(),
                ),
            )
        }
        401 | 403 => (ErrorClass::Auth, "provider rejected the API key".into()),
        // Out of credits: retrying cannot help until someone pays.
        402 => (ErrorClass::Auth, "quota exhausted".into()),
        404 => (
            ErrorClass::NotFound,
            "provider has no such model or endpoint".into(),
        ),
        408 | 504 => (
            ErrorClass::Timeout,
            format!("provider timed out (HTTP {code})"),
        ),
        429 => (
            ErrorClass::RateLimited,
            "provider rate limit reached".into(),
        ),
        503 if detail.estimated_time.is_some() || detail.mentions("loading") => (
            ErrorClass::Overloaded,
            "model is loading on the provider".into(),
        ),
        503 => (ErrorClass::Overloaded, "provider is overloaded".into()),
        500..=599 => (
            ErrorClass::Server,
            format!("provider server error (HTTP {code})"),
        ),
        400..=499 => (
            ErrorClass::BadRequest,
            http::quoted("provider rejected the request", detail.message.as_deref()),
        ),
        _ => (
            ErrorClass::Server,
            format!("unexpected answer from provider (HTTP {code})"),
        ),
    }
}

fn error_response(agent: &Agent, key: Option<&SecretString>, raw: &RawResponse) -> ProviderError {
    let detail = ErrorDetail::parse(&raw.body);
    let (class, message) = classify(raw.status, &detail);
    let wait = detail
        .estimated_time
        .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
        .or_else(|| retry_after_header(&raw.headers));
    http::error_answer(agent, key, raw, class, message, wait)
}

#[cfg(test)]
mod tests;
