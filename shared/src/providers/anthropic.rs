//! Anthropic's Messages API: `POST {root}/v1/messages` with `x-api-key` and
//! `anthropic-version`, a required `max_tokens` and a top-level `system`.
//!
//! Usage: Anthropic's `input_tokens` counts only the input tokens after the
//! last cache breakpoint; cache reads (`cache_read_input_tokens`) and cache
//! writes (`cache_creation_input_tokens`) are reported apart. The normalized
//! [`Usage`] counts every input token in `input_tokens` (so that
//! `cached_input_tokens <= input_tokens`, as [`Usage`] promises) and puts the
//! cache reads in `cached_input_tokens` and the cache writes in
//! `cache_write_input_tokens`, each billed at its own price when the agent's
//! `pricing` has one (`cached_input_per_mtok`, `cache_write_per_mtok`).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::http::{self, RawResponse, header, parse_reset_timestamp, retry_after_header};
use super::outbound::OutboundClient;
use crate::domain::{Agent, ErrorClass, Usage};
use crate::ports::{ChatRequest, ChatResponse, ProviderClient, ProviderError, Role};

/// A client for Anthropic's Messages API over the process's one [`OutboundClient`].
#[derive(Debug, Clone)]
pub struct Anthropic {
    http: OutboundClient,
}

impl Anthropic {
    /// The API root used when an agent has no `base_url` (what Anthropic's
    /// SDKs call `base_url`: without `/v1`).
    pub const DEFAULT_BASE_URL: &'static str = "https://api.anthropic.com";
    /// The API version every request pins.
    pub const API_VERSION: &'static str = "2023-06-01";
    /// `max_tokens` when neither the request nor the agent sets one: the API
    /// requires it.
    pub const DEFAULT_MAX_TOKENS: u32 = 1_024;

    pub fn new(http: OutboundClient) -> Self {
        Anthropic { http }
    }
}

#[async_trait]
impl ProviderClient for Anthropic {
    async fn complete(
        &self,
        agent: &Agent,
        key: Option<&SecretString>,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        let mut builder = self
            .http
            .post(endpoint(agent.spec.base_url.as_deref()))
            .header(ACCEPT, "application/json")
            .header("anthropic-version", Anthropic::API_VERSION)
            .json(&WireRequest::new(agent, request));
        if let Some(key) = key {
            let mut value =
                reqwest::header::HeaderValue::from_str(key.expose_secret()).map_err(|_| {
                    ProviderError::new(ErrorClass::Auth, "the API key is not a valid header value")
                })?;
            // Sensitive headers are redacted from Debug output.
            value.set_sensitive(true);
            builder = builder.header("x-api-key", value);
        }
        let raw = http::send(
            agent,
            &self.http,
            builder,
            agent.spec.constraints.timeout_ms(),
        )
        .await?;
        if raw.status.is_success() {
            let request_id = raw.header("request-id").map(str::to_owned);
            parse_success(agent, &raw, request_id)
        } else {
            Err(error_response(agent, key, &raw))
        }
    }
}

/// `{root}/v1/messages`.
fn endpoint(base_url: Option<&str>) -> String {
    http::endpoint(base_url, Anthropic::DEFAULT_BASE_URL, "/v1/messages")
}

#[derive(Debug, Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
}

#[derive(Debug, Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
}

impl<'a> WireRequest<'a> {
    fn new(agent: &'a Agent, request: &'a ChatRequest) -> Self {
        WireRequest {
            model: &agent.spec.model,
            max_tokens: http::max_tokens(agent, request).unwrap_or(Anthropic::DEFAULT_MAX_TOKENS),
            system: request.system.as_deref(),
            messages: request
                .messages
                .iter()
                .map(|m| WireMessage {
                    role: match m.role {
                        Role::User => "user",
                        Role::Assistant => "assistant",
                    },
                    content: &m.content,
                })
                .collect(),
            temperature: request.temperature,
            stop_sequences: &request.stop,
        }
    }
}

#[derive(Debug, Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: Option<String>,
    content: Vec<WireBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct WireBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        let cached = u.cache_read_input_tokens.unwrap_or(0);
        let written = u.cache_creation_input_tokens.unwrap_or(0);
        Usage {
            input_tokens: u.input_tokens + cached + written,
            output_tokens: u.output_tokens,
            cached_input_tokens: cached,
            cache_write_input_tokens: written,
            ..Usage::default()
        }
    }
}

fn parse_success(
    agent: &Agent,
    raw: &RawResponse,
    header_request_id: Option<String>,
) -> Result<ChatResponse, ProviderError> {
    let wire: WireResponse = serde_json::from_slice(&raw.body)
        .map_err(|e| http::malformed(agent, raw.status, &raw.body, &e))?;
    if wire.stop_reason.as_deref() == Some("refusal") {
        // Claude's safety classifiers stopped the answer.
        tracing::warn!(agent_id = %agent.id, model = %agent.spec.model, "provider refused to answer");
        return Err(ProviderError {
            status: Some(raw.status.as_u16()),
            ..ProviderError::new(
                ErrorClass::ContentFiltered,
                "provider's safety filter stopped the answer",
            )
        });
    }
    let output = wire
        .content
        .iter()
        .filter(|b| b.kind == "text")
        .filter_map(|b| b.text.as_deref())
        .collect::<String>();
    Ok(ChatResponse {
        output,
        finish_reason: wire.stop_reason,
        usage: wire.usage.map(Usage::from).unwrap_or_default(),
        request_id: header_request_id.or(wire.id),
    })
}

/// `{"type": "error", "error": {"type": "...", "message": "..."}}`.
#[derive(Debug, Default, Deserialize)]
struct WireError {
    #[serde(default)]
    error: Option<WireErrorDetail>,
}

#[derive(Debug, Default, Deserialize)]
struct WireErrorDetail {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// The class and the owner-safe message of an error answer, by the error's
/// `type` when there is one, else by status.
fn classify(status: StatusCode, kind: Option<&str>, message: Option<&str>) -> (ErrorClass, String) {
    let said = |needle: &str| message.is_some_and(|m| m.to_ascii_lowercase().contains(needle));
    let code = status.as_u16();
    if said("prompt is too long") {
        return (
            ErrorClass::ContextLengthExceeded,
            http::quoted("request exceeds the model's context window", message),
        );
    }
    if said("credit balance") {
        // Billing, not pacing: retrying cannot help until someone pays.
        return (ErrorClass::Auth, "quota exhausted".into());
    }
    match (kind, code) {
        (Some("authentication_error"), _) | (None, 401) => {
            (ErrorClass::Auth, "provider rejected the API key".into())
        }
        (Some("permission_error"), _) | (None, 403) => (
            ErrorClass::Auth,
            "provider denied this key access to the model or feature".into(),
        ),
        (Some("billing_error"), _) | (None, 402) => (ErrorClass::Auth, "quota exhausted".into()),
        (Some("not_found_error"), _) | (None, 404) => (
            ErrorClass::NotFound,
            "provider has no such model or endpoint".into(),
        ),
        (Some("rate_limit_error"), _) | (None, 429) => (
            ErrorClass::RateLimited,
            "provider rate limit reached".into(),
        ),
        (Some("overloaded_error"), _) | (None, 529) => {
            (ErrorClass::Overloaded, "provider is overloaded".into())
        }
        (Some("timeout_error"), _) | (None, 504) => (
            ErrorClass::Timeout,
            format!("provider timed out (HTTP {code})"),
        ),
        (Some("request_too_large"), _) | (None, 413) => (
            ErrorClass::BadRequest,
            "request is larger than the provider accepts".into(),
        ),
        (Some("api_error"), _) | (_, 500..=599) => (
            ErrorClass::Server,
            format!("provider server error (HTTP {code})"),
        ),
        (_, 400..=499) => (
            ErrorClass::BadRequest,
            http::quoted("provider rejected the request", message),
        ),
        _ => (
            ErrorClass::Server,
            format!("unexpected answer from provider (HTTP {code})"),
        ),
    }
}

fn error_response(agent: &Agent, key: Option<&SecretString>, raw: &RawResponse) -> ProviderError {
    let detail = serde_json::from_slice::<WireError>(&raw.body)
        .ok()
        .and_then(|e| e.error)
        .unwrap_or_default();
    let (class, message) = classify(
        raw.status,
        detail.kind.as_deref(),
        detail.message.as_deref(),
    );
    let wait = retry_after(raw.status, &raw.headers);
    http::error_answer(agent, key, raw, class, message, wait)
}

/// Anthropic's rate-limit reset headers, RFC 3339 instants.
const RESET_HEADERS: [&str; 4] = [
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-reset",
];

/// `retry-after` (or `retry-after-ms`), else on 429 the latest of the
/// rate-limit reset instants: the one limit known to be hit is not named,
/// so waiting for the last reset is the wait that surely suffices.
fn retry_after(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if let Some(wait) = retry_after_header(headers) {
        return Some(wait);
    }
    if status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    RESET_HEADERS
        .into_iter()
        .filter_map(|name| header(headers, name).and_then(parse_reset_timestamp))
        .max()
}

#[cfg(test)]
mod tests;
