//! Google's Gemini API: `POST {root}/v1beta/models/{model}:generateContent`
//! with `x-goog-api-key`, `contents`/`parts`, `systemInstruction` and
//! `generationConfig`.
//!
//! Usage: `promptTokenCount` already includes the cached prompt tokens
//! (`cachedContentTokenCount`), so it is the normalized `input_tokens` as is.
//! Thinking models bill their thoughts (`thoughtsTokenCount`) as output, so
//! `output_tokens` is `candidatesTokenCount + thoughtsTokenCount`.
//!
//! A candidate stopped by a safety or policy filter (`finishReason` `SAFETY`,
//! `PROHIBITED_CONTENT`, `BLOCKLIST`, `SPII`, `IMAGE_SAFETY`, `RECITATION`), or
//! a prompt refused outright (`promptFeedback.blockReason`), is a
//! `content_filtered` error, not an empty answer.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::ACCEPT;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::http::{self, RawResponse, parse_reset_duration, retry_after_header};
use super::outbound::OutboundClient;
use crate::domain::{Agent, ErrorClass, Usage};
use crate::ports::{ChatRequest, ChatResponse, ProviderClient, ProviderError, Role};

/// A client for Gemini's `generateContent` over the process's one [`OutboundClient`].
#[derive(Debug, Clone)]
pub struct Gemini {
    http: OutboundClient,
}

impl Gemini {
    /// The API root used when an agent has no `base_url` (without the version).
    pub const DEFAULT_BASE_URL: &'static str = "https://generativelanguage.googleapis.com";

    pub fn new(http: OutboundClient) -> Self {
        Gemini { http }
    }
}

#[async_trait]
impl ProviderClient for Gemini {
    async fn complete(
        &self,
        agent: &Agent,
        key: Option<&SecretString>,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        let mut builder = self
            .http
            .post(endpoint(agent.spec.base_url.as_deref(), &agent.spec.model))
            .header(ACCEPT, "application/json")
            .json(&WireRequest::new(agent, request));
        if let Some(key) = key {
            // In a header, never in the URL's `?key=`: URLs end up in logs.
            let mut value =
                reqwest::header::HeaderValue::from_str(key.expose_secret()).map_err(|_| {
                    ProviderError::new(ErrorClass::Auth, "the API key is not a valid header value")
                })?;
            value.set_sensitive(true);
            builder = builder.header("x-goog-api-key", value);
        }
        let raw = http::send(
            agent,
            &self.http,
            builder,
            agent.spec.constraints.timeout_ms(),
        )
        .await?;
        if raw.status.is_success() {
            parse_success(agent, &raw)
        } else {
            Err(error_response(agent, key, &raw))
        }
    }
}

/// `{root}/v1beta/models/{model}:generateContent`; a model given as
/// `models/{model}` (as Google's model list names them) works too.
fn endpoint(base_url: Option<&str>, model: &str) -> String {
    let model = model.strip_prefix("models/").unwrap_or(model);
    http::endpoint(
        base_url,
        Gemini::DEFAULT_BASE_URL,
        &format!("/v1beta/models/{model}:generateContent"),
    )
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest<'a> {
    contents: Vec<WireContent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<WireContent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_config: Option<WireGenerationConfig<'a>>,
}

#[derive(Debug, Serialize)]
struct WireContent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    parts: [WirePart<'a>; 1],
}

#[derive(Debug, Serialize)]
struct WirePart<'a> {
    text: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WireGenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
}

impl<'a> WireRequest<'a> {
    fn new(agent: &'a Agent, request: &'a ChatRequest) -> Self {
        let config = WireGenerationConfig {
            max_output_tokens: http::max_tokens(agent, request),
            temperature: request.temperature,
            stop_sequences: &request.stop,
        };
        let config_is_empty = config.max_output_tokens.is_none()
            && config.temperature.is_none()
            && config.stop_sequences.is_empty();
        WireRequest {
            contents: request
                .messages
                .iter()
                .map(|m| WireContent {
                    role: Some(match m.role {
                        Role::User => "user",
                        Role::Assistant => "model",
                    }),
                    parts: [WirePart { text: &m.content }],
                })
                .collect(),
            system_instruction: request.system.as_deref().map(|text| WireContent {
                role: None,
                parts: [WirePart { text }],
            }),
            generation_config: (!config_is_empty).then_some(config),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    candidates: Vec<WireCandidate>,
    #[serde(default)]
    prompt_feedback: Option<WirePromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<WireUsage>,
    #[serde(default)]
    response_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    #[serde(default)]
    content: Option<WireAnswer>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireAnswer {
    #[serde(default)]
    parts: Vec<WireAnswerPart>,
}

#[derive(Debug, Deserialize)]
struct WireAnswerPart {
    #[serde(default)]
    text: Option<String>,
    /// A thought summary of a thinking model: not part of the answer.
    #[serde(default)]
    thought: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        Usage {
            input_tokens: u.prompt_token_count,
            output_tokens: u.candidates_token_count + u.thoughts_token_count,
            cached_input_tokens: u.cached_content_token_count,
            ..Usage::default()
        }
    }
}

/// Finish reasons that mean a filter stopped the answer.
const FILTERED: [&str; 6] = [
    "SAFETY",
    "PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "IMAGE_SAFETY",
    "RECITATION",
];

fn parse_success(agent: &Agent, raw: &RawResponse) -> Result<ChatResponse, ProviderError> {
    let wire: WireResponse = serde_json::from_slice(&raw.body)
        .map_err(|e| http::malformed(agent, raw.status, &raw.body, &e))?;
    let filtered = |reason: &str| {
        tracing::warn!(agent_id = %agent.id, model = %agent.spec.model, reason, "provider filtered the request");
        ProviderError {
            status: Some(raw.status.as_u16()),
            ..ProviderError::new(
                ErrorClass::ContentFiltered,
                format!("provider's content filter blocked the request ({reason})"),
            )
        }
    };
    if let Some(reason) = wire.prompt_feedback.and_then(|f| f.block_reason) {
        return Err(filtered(&reason));
    }
    let Some(candidate) = wire.candidates.into_iter().next() else {
        return Err(http::malformed(
            agent,
            raw.status,
            &raw.body,
            &"no candidates",
        ));
    };
    if let Some(reason) = candidate
        .finish_reason
        .as_deref()
        .filter(|r| FILTERED.contains(r))
    {
        return Err(filtered(reason));
    }
    let output = candidate
        .content
        .map(|c| {
            c.parts
                .into_iter()
                .filter(|p| !p.thought)
                .filter_map(|p| p.text)
                .collect::<String>()
        })
        .unwrap_or_default();
    Ok(ChatResponse {
        output,
        finish_reason: candidate.finish_reason,
        usage: wire.usage_metadata.map(Usage::from).unwrap_or_default(),
        request_id: wire.response_id,
    })
}

/// Google's error envelope: `{"error": {"code", "message", "status", "details"}}`
/// (some front ends wrap it in a one-element list).
#[derive(Debug, Default, Deserialize)]
struct WireErrorDetail {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

impl WireErrorDetail {
    fn parse(body: &[u8]) -> WireErrorDetail {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            return WireErrorDetail::default();
        };
        let envelope = value.as_array().and_then(|a| a.first()).unwrap_or(&value);
        envelope
            .get("error")
            .and_then(|e| serde_json::from_value(e.clone()).ok())
            .unwrap_or_default()
    }

    /// The `details` entries of one `@type` (`type.googleapis.com/google.rpc.{name}`).
    fn detail(&self, name: &str) -> impl Iterator<Item = &serde_json::Value> {
        let type_url = format!("type.googleapis.com/google.rpc.{name}");
        self.details
            .iter()
            .filter(move |d| d.get("@type").and_then(|t| t.as_str()) == Some(type_url.as_str()))
    }

    /// `RetryInfo.retryDelay`, a protobuf duration such as `"2s"` or `"0.5s"`.
    fn retry_delay(&self) -> Option<Duration> {
        self.detail("RetryInfo")
            .find_map(|d| d.get("retryDelay")?.as_str())
            .and_then(parse_reset_duration)
    }

    fn mentions(&self, needle: &str) -> bool {
        self.message
            .as_deref()
            .is_some_and(|m| m.to_ascii_lowercase().contains(needle))
    }

    fn is_bad_key(&self) -> bool {
        self.mentions("api key not valid")
            || self.mentions("api key expired")
            || self.detail("ErrorInfo").any(|d| {
                d.get("reason")
                    .and_then(|r| r.as_str())
                    .is_some_and(|r| r.starts_with("API_KEY_"))
            })
    }

    fn is_token_limit(&self) -> bool {
        self.mentions("exceeds the maximum number of tokens")
            || (self.mentions("token count") && self.mentions("exceed"))
            || self.mentions("context window")
    }
}

/// The class and the owner-safe message of an error answer, by Google's
/// canonical `status` when there is one, else by HTTP status.
fn classify(status: StatusCode, detail: &WireErrorDetail) -> (ErrorClass, String) {
    let code = status.as_u16();
    let rejected = || http::quoted("provider rejected the request", detail.message.as_deref());
    let auth = || (ErrorClass::Auth, "provider rejected the API key".to_owned());
    if detail.is_bad_key() {
        return auth();
    }
    match (detail.status.as_deref(), code) {
        (Some("INVALID_ARGUMENT" | "OUT_OF_RANGE"), _) | (None, 400) if detail.is_token_limit() => {
            (
                ErrorClass::ContextLengthExceeded,
                http::quoted(
                    "request exceeds the model's context window",
                    detail.message.as_deref(),
                ),
            )
        }
        (Some("INVALID_ARGUMENT" | "OUT_OF_RANGE" | "FAILED_PRECONDITION"), _) => {
            (ErrorClass::BadRequest, rejected())
        }
        (Some("UNAUTHENTICATED" | "PERMISSION_DENIED"), _) | (None, 401 | 403) => auth(),
        (Some("NOT_FOUND"), _) | (None, 404) => (
            ErrorClass::NotFound,
            "provider has no such model or endpoint".into(),
        ),
        (Some("RESOURCE_EXHAUSTED"), _) | (None, 429) => (
            ErrorClass::RateLimited,
            "provider rate limit reached".into(),
        ),
        (Some("UNAVAILABLE"), _) | (None, 503) => {
            (ErrorClass::Overloaded, "provider is overloaded".into())
        }
        (Some("DEADLINE_EXCEEDED"), _) | (None, 504) => (
            ErrorClass::Timeout,
            format!("provider timed out (HTTP {code})"),
        ),
        (_, 500..=599) | (Some("INTERNAL" | "UNKNOWN" | "DATA_LOSS" | "ABORTED"), _) => (
            ErrorClass::Server,
            format!("provider server error (HTTP {code})"),
        ),
        (_, 400..=499) => (ErrorClass::BadRequest, rejected()),
        _ => (
            ErrorClass::Server,
            format!("unexpected answer from provider (HTTP {code})"),
        ),
    }
}

fn error_response(agent: &Agent, key: Option<&SecretString>, raw: &RawResponse) -> ProviderError {
    let detail = WireErrorDetail::parse(&raw.body);
    let (class, message) = classify(raw.status, &detail);
    let wait = detail
        .retry_delay()
        .or_else(|| retry_after_header(&raw.headers));
    http::error_answer(agent, key, raw, class, message, wait)
}

#[cfg(test)]
mod tests;
