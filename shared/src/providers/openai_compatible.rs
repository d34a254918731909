//! OpenAI Chat Completions over HTTP: OpenAI itself and every server that
//! speaks its wire format (DeepSeek, Mistral, Groq, vLLM, Ollama, ...).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{ChatRequest, ChatResponse, ProviderClient, ProviderError, Role};
use crate::domain::{Agent, ErrorClass, Usage};

/// A client for `POST {base_url}/chat/completions`, sharing the process's one
/// `reqwest::Client`.
#[derive(Debug, Clone)]
pub struct OpenAiCompatible {
    http: reqwest::Client,
}

impl OpenAiCompatible {
    /// The API root used when an agent has no `base_url` (provider `openai`).
    pub const DEFAULT_BASE_URL: &'static str = "https://api.openai.com/v1";

    pub fn new(http: reqwest::Client) -> Self {
        OpenAiCompatible { http }
    }
}

/// Longest provider error message passed on to the task's owner.
const MAX_MESSAGE_CHARS: usize = 300;
/// Longest error body written to the operator log.
const MAX_LOGGED_BODY_CHARS: usize = 4_096;

#[async_trait]
impl ProviderClient for OpenAiCompatible {
    async fn complete(
        &self,
        agent: &Agent,
        key: Option<&SecretString>,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        let timeout_ms = agent.spec.constraints.timeout_ms();
        let mut builder = self
            .http
            .post(endpoint(agent.spec.base_url.as_deref()))
            .timeout(Duration::from_millis(timeout_ms))
            .header(ACCEPT, "application/json")
            .json(&WireRequest::new(agent, request));
        if let Some(key) = key {
            // bearer_auth marks the header sensitive, so it stays out of Debug output.
            builder = builder.bearer_auth(key.expose_secret());
        }

        let response = builder
            .send()
            .await
            .map_err(|e| transport_error(agent, e, timeout_ms))?;
        let status = response.status();
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let retry_after = if status.is_success() {
            None
        } else {
            retry_after(status, response.headers())
        };
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(agent, e, timeout_ms))?;

        if status.is_success() {
            parse_success(agent, &body, request_id)
        } else {
            Err(error_response(agent, key, status, retry_after, &body))
        }
    }
}

/// `{root}/chat/completions`; the root is what OpenAI's SDKs call `base_url`.
fn endpoint(base_url: Option<&str>) -> String {
    let root = base_url.unwrap_or(OpenAiCompatible::DEFAULT_BASE_URL);
    format!("{}/chat/completions", root.trim_end_matches('/'))
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
            max_tokens: request.max_tokens.or(agent.spec.constraints.max_tokens),
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
    let malformed = |reason: &dyn std::fmt::Display| {
        tracing::warn!(
            agent_id = %agent.id,
            model = %agent.spec.model,
            body_bytes = body.len(),
            %reason,
            "provider answered 200 with a body that does not parse"
        );
        ProviderError {
            status: Some(200),
            ..ProviderError::new(ErrorClass::Server, "malformed response from provider")
        }
    };
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
        match self.message.as_deref().map(str::trim) {
            Some(message) if !message.is_empty() => {
                format!("{prefix}: {}", truncate(message, MAX_MESSAGE_CHARS))
            }
            _ => prefix.to_owned(),
        }
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

fn error_response(
    agent: &Agent,
    key: Option<&SecretString>,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> ProviderError {
    let detail = ErrorDetail::parse(body);
    let (class, message) = classify(status, &detail);
    tracing::warn!(
        agent_id = %agent.id,
        model = %agent.spec.model,
        status = status.as_u16(),
        class = ?class,
        retry_after_ms = retry_after.map(|d| d.as_millis() as u64),
        body = %loggable_body(body, key),
        "provider returned an error"
    );
    ProviderError {
        class,
        message,
        retry_after,
        status: Some(status.as_u16()),
    }
}

/// The error body for operators: shortened, and with the key blanked should a
/// server echo it back.
fn loggable_body(body: &[u8], key: Option<&SecretString>) -> String {
    let text = String::from_utf8_lossy(body);
    // Blank the key before shortening, so no partial key survives the cut.
    let text = match key.map(|k| k.expose_secret()) {
        Some(secret) if !secret.is_empty() && text.contains(secret) => {
            text.replace(secret, "[redacted]")
        }
        _ => text.into_owned(),
    };
    truncate(&text, MAX_LOGGED_BODY_CHARS)
}

fn transport_error(agent: &Agent, error: reqwest::Error, timeout_ms: u64) -> ProviderError {
    // The URL may carry credentials in its user-info: keep it out of the log.
    let error = error.without_url();
    let (class, message) = if error.is_timeout() {
        (
            ErrorClass::Timeout,
            format!("no answer from provider within {timeout_ms} ms"),
        )
    } else if error.is_builder() {
        (
            ErrorClass::BadRequest,
            "the agent's base_url is not a valid URL".to_owned(),
        )
    } else if error.is_connect() {
        (
            ErrorClass::Network,
            "could not connect to provider".to_owned(),
        )
    } else {
        (
            ErrorClass::Network,
            "connection to provider failed".to_owned(),
        )
    };
    tracing::warn!(agent_id = %agent.id, class = ?class, error = ?error, "provider call failed");
    ProviderError::new(class, message)
}

/// The wait the provider asked for: `retry-after-ms`, else `retry-after`, else
/// (on 429 only) the longer of OpenAI's rate-limit reset times.
fn retry_after(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(wait) = header("retry-after-ms").and_then(parse_millis) {
        return Some(wait);
    }
    if let Some(wait) = header("retry-after").and_then(parse_retry_after) {
        return Some(wait);
    }
    if status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .into_iter()
        .filter_map(|name| header(name).and_then(parse_reset_duration))
        .max()
}

fn parse_millis(value: &str) -> Option<Duration> {
    let millis: f64 = value.parse().ok()?;
    // try_from rejects negative, NaN and overflowing values instead of panicking.
    Duration::try_from_secs_f64(millis / 1_000.0).ok()
}

/// Seconds (integer or float), or an HTTP-date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    // A date already past means "now".
    Some(
        (at.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// Go-style durations as OpenAI writes them: `1s`, `6m0s`, `20ms`, `1.5s`, `1h2m3s`.
fn parse_reset_duration(value: &str) -> Option<Duration> {
    let is_number = |c: char| c.is_ascii_digit() || c == '.';
    let mut rest = value;
    let mut seconds = 0.0_f64;
    let mut parts = 0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !is_number(c)).unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest.find(is_number).unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3_600.0,
            "m" => 60.0,
            // A bare number is read as seconds.
            "s" | "" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        seconds += number * scale;
        parts += 1;
    }
    if parts == 0 {
        return None;
    }
    Duration::try_from_secs_f64(seconds).ok()
}

/// At most `max` chars, cut on a char boundary.
fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests;
