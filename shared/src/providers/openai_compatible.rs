//! OpenAI Chat Completions over HTTP: OpenAI itself and every server that
//! speaks its wire format (DeepSeek, Mistral, Groq, vLLM, Ollama, ...).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::http::{self, RawResponse, header, parse_reset_duration, retry_after_header};
use super::outbound::OutboundClient;
use crate::domain::{Agent, ErrorClass, Usage};
use crate::ports::{ChatRequest, ChatResponse, ProviderClient, ProviderError, Role};

// The shared helpers now live in `http`; this module's tests still exercise
// them under these names.
#[cfg(test)]
use super::http::{MAX_MESSAGE_CHARS, loggable_body, parse_millis, parse_retry_after};
#[cfg(test)]
use chrono::Utc;

/// A client for `POST {base_url}/chat/completions`, sharing the process's one
/// [`OutboundClient`].
#[derive(Debug, Clone)]
pub struct OpenAiCompatible {
    http: OutboundClient,
}

impl OpenAiCompatible {
    /// The API root used when an agent has no `base_url` (provider `openai`).
    pub const DEFAULT_BASE_URL: &'static str = "https://api.openai.com/v1";

    pub fn new(http: OutboundClient) -> Self {
        OpenAiCompatible { http }
    }
}

#[async_trait]
impl ProviderClient for OpenAiCompatible {
    async fn complete(
        &self,
        agent: &Agent,
        key: Option<&SecretString>,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        self.complete_at(
            &endpoint(agent.spec.base_url.as_deref()),
            agent,
            key,
            request,
        )
        .await
    }
}

impl OpenAiCompatible {
    /// The chat completion at `url` (a whole `.../chat/completions` URL),
    /// for providers that reach this wire format at a root of their own.
    pub(super) async fn complete_at(
        &self,
        url: &str,
        agent: &Agent,
        key: Option<&SecretString>,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        let mut builder = self
            .http
            .post(url)
            .header(ACCEPT, "application/json")
            .json(&WireRequest::new(agent, request));
        if let Some(key) = key {
            // bearer_auth marks the header sensitive, so it stays out of Debug output.
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
            let request_id = raw.header("x-request-id").map(str::to_owned);
            parse_success(agent, &raw.body, request_id)
        } else {
            Err(error_response(agent, key, &raw))
        }
    }
}

/// `{root}/chat/completions`; the root is what OpenAI's SDKs call `base_url`.
fn endpoint(base_url: Option<&str>) -> String {
    http::endpoint(
        base_url,
        OpenAiCompatible::DEFAULT_BASE_URL,
        "/chat/completions",
    )
}

#[derive(Debug, Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
}

#[derive(Debug, Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
}

impl<'a> WireRequest<'a> {
    fn new(agent: &'a Agent, request: &'a ChatRequest) -> Self {
        let system = request.system.as_deref().map(|content| WireMessage {
            role: "system",
            content,
        });
        let turns = request.messages.iter().map(|m| WireMessage {
            role: match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            },
            content: &m.content,
        });
        WireRequest {
            model: &agent.spec.model,
            messages: system.into_iter().chain(turns).collect(),
            max_tokens: http::max_tokens(agent, request),
            temperature: request.temperature,
            stop: &request.stop,
        }
    }
}

#[derive(Debug, Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: Option<String>,
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct WireChoice {
    message: WireAnswer,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireAnswer {
    /// `null` when the model only called tools or refused.
    #[serde(default)]
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<WirePromptDetails>,
    /// DeepSeek reports its cache hits here instead.
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct WirePromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

fn parse_success(
    agent: &Agent,
    body: &[u8],
    header_request_id: Option<String>,
) -> Result<ChatResponse, ProviderError> {
    let malformed =
        |reason: &dyn std::fmt::Display| http::malformed(agent, StatusCode::OK, body, reason);
    let wire: WireResponse = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
    let Some(choice) = wire.choices.into_iter().next() else {
        return Err(malformed(&"no choices"));
    };
    let usage = wire.usage.map_or_else(Usage::default, |u| Usage {
        input_tokens: u.prompt_tokens,
        output_tokens: u.completion_tokens,
        cached_input_tokens: u
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .or(u.prompt_cache_hit_tokens)
            .unwrap_or(0),
        // OpenAI-compatible servers do not bill cache writes apart.
        ..Usage::default()
    });
    Ok(ChatResponse {
        output: choice.message.content.unwrap_or_default(),
        finish_reason: choice.finish_reason,
        usage,
        request_id: header_request_id.or(wire.id),
    })
}

/// The parts of an error body that decide its class. OpenAI sends
/// `{"error": {"message", "type", "param", "code"}}`; compatible servers vary
/// (`{"error": "..."}`, vLLM's flat `{"message", "type", "code": 400}`,
/// FastAPI's `{"detail": "..."}`), so this reads whatever is there.
#[derive(Debug, Default, PartialEq, Eq)]
struct ErrorDetail {
    message: Option<String>,
    code: Option<String>,
    kind: Option<String>,
}

impl ErrorDetail {
    fn parse(body: &[u8]) -> ErrorDetail {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            return ErrorDetail::default();
        };
        let error = value.get("error");
        let object = error.filter(|e| e.is_object()).unwrap_or(&value);
        let text = |field: &str| -> Option<String> {
            match object.get(field)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        ErrorDetail {
            message: text("message")
                .or_else(|| error.and_then(|e| e.as_str()).map(str::to_owned))
                .or_else(|| text("detail")),
            code: text("code"),
            kind: text("type"),
        }
    }

    fn code_is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    fn mentions(&self, needle: &str) -> bool {
        [&self.message, &self.code, &self.kind]
            .into_iter()
            .flatten()
            .any(|s| s.to_ascii_lowercase().contains(needle))
    }

    fn is_context_length(&self) -> bool {
        // vLLM and others send OpenAI's message without its code.
        self.code_is("context_length_exceeded") || self.mentions("maximum context length")
    }

    fn is_content_filter(&self) -> bool {
        self.code_is("content_filter")
            || self.code_is("content_policy_violation")
            || self
                .kind
                .as_deref()
                .is_some_and(|k| k.contains("content_policy") || k.contains("content-policy"))
    }

    /// The provider's own words, shortened, for the task's owner.
    fn quoted(&self, prefix: &str) -> String {
        http::quoted(prefix, self.message.as_deref())
    }
}

/// The class and the owner-safe message of an HTTP error answer.
fn classify(status: StatusCode, detail: &ErrorDetail) -> (ErrorClass, String) {
    let code = status.as_u16();
    match code {
        400 | 413 | 422 if detail.is_context_length() => (
            ErrorClass::ContextLengthExceeded,
            detail.quoted("request exceeds the model's context window"),
        ),
        400 | 422 if detail.is_content_filter() => (
            ErrorClass::ContentFiltered,
            "provider's content filter blocked the request".into(),
        ),
        // Never echoed: OpenAI's 401 message quotes part of the key.
        401 | 403 => (ErrorClass::Auth, "provider rejected the API key".into()),
        404 => (
            ErrorClass::NotFound,
            "provider has no such model or endpoint".into(),
        ),
        408 => (ErrorClass::Timeout, "provider timed out (HTTP 408)".into()),
        409 | 425 => (
            ErrorClass::Server,
            format!("provider could not process the request now (HTTP {code})"),
        ),
        // Billing, not pacing: retrying cannot help until someone pays.
        429 if detail.code_is("insufficient_quota") => (ErrorClass::Auth, "quota exhausted".into()),
        429 => (
            ErrorClass::RateLimited,
            "provider rate limit reached".into(),
        ),
        503 if detail.mentions("overloaded") => {
            (ErrorClass::Overloaded, "provider is overloaded".into())
        }
        529 => (ErrorClass::Overloaded, "provider is overloaded".into()),
        500..=599 => (
            ErrorClass::Server,
            format!("provider server error (HTTP {code})"),
        ),
        400..=499 => (
            ErrorClass::BadRequest,
            detail.quoted("provider rejected the request"),
        ),
        _ => (
            ErrorClass::Server,
            format!("unexpected answer from provider (HTTP {code})"),
        ),
    }
}

/// An OpenAI-format error answer, classified, with the wait it asked for.
pub(super) fn error_response(
    agent: &Agent,
    key: Option<&SecretString>,
    raw: &RawResponse,
) -> ProviderError {
    let detail = ErrorDetail::parse(&raw.body);
    let (class, message) = classify(raw.status, &detail);
    let wait = retry_after(raw.status, &raw.headers);
    http::error_answer(agent, key, raw, class, message, wait)
}

/// The wait the provider asked for: `retry-after-ms`, else `retry-after`, else
/// (on 429 only) the longer of OpenAI's rate-limit reset times.
fn retry_after(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if let Some(wait) = retry_after_header(headers) {
        return Some(wait);
    }
    if status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .into_iter()
        .filter_map(|name| header(headers, name).and_then(parse_reset_duration))
        .max()
}

#[cfg(test)]
mod tests;
