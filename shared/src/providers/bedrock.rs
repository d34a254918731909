//! AWS Bedrock through the Converse API and the official SDK: IAM auth (the
//! process's AWS credentials), no key.
//!
//! The SDK configuration is loaded once, on the first call, from the
//! environment (`aws_config::load_defaults`), unless one is given with
//! [`Bedrock::with_config`]. An agent's `base_url`, when set, is the endpoint
//! the SDK calls (its `endpoint_url`, e.g.
//! `https://bedrock-runtime.us-west-2.amazonaws.com` or a VPC endpoint); one SDK
//! client is kept per endpoint. The SDK's own retries are off: agent-call
//! retries with backoff, SQS visibility and fallbacks, and counts attempts.
//!
//! An agent's endpoint obeys the outbound policy ([`Bedrock::with_outbound`];
//! strict unless given) as every provider's `base_url` does: an IP literal is
//! checked before the call, a name as the SDK's HTTP client resolves it. A VPC
//! endpoint's private addresses need `MAOF_OUTBOUND_ALLOW`. The process's own
//! AWS configuration (region, `AWS_ENDPOINT_URL`) is the operator's and is
//! not checked.
//!
//! Usage: as with Anthropic's API, Converse's `inputTokens` leaves out cache
//! reads (`cacheReadInputTokens`) and writes (`cacheWriteInputTokens`); the
//! normalized `input_tokens` counts all three and `cached_input_tokens` the
//! reads, so that `cached_input_tokens <= input_tokens`.
//!
//! A `stopReason` of `guardrail_intervened` or `content_filtered` is a
//! `content_filtered` error, not an answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::config::timeout::TimeoutConfig;
use aws_sdk_bedrockruntime::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::operation::RequestId;
use aws_sdk_bedrockruntime::operation::converse::{ConverseError, ConverseOutput};
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ConversationRole, InferenceConfiguration, Message as BedrockMessage, StopReason,
    SystemContentBlock,
};
use aws_smithy_http_client::tls::{Provider as TlsProvider, rustls_provider::CryptoMode};
use secrecy::SecretString;
use tokio::sync::OnceCell;

use super::http::{self, parse_retry_after};
use super::outbound::{GuardedResolver, OutboundError};
use crate::domain::{Agent, ErrorClass, Usage};
use crate::ports::{ChatRequest, ChatResponse, ProviderClient, ProviderError, Role};

/// A Bedrock Converse client; cheap to build, it loads its AWS configuration
/// on first use.
#[derive(Debug, Clone, Default)]
pub struct Bedrock {
    inner: Arc<Inner>,
    /// Resolves, and checks, agents' own endpoints.
    outbound: GuardedResolver,
}

#[derive(Debug, Default)]
struct Inner {
    config: OnceCell<SdkConfig>,
    /// One SDK client per endpoint override (`None`: the SDK's own endpoint).
    clients: Mutex<HashMap<Option<String>, Client>>,
}

impl Bedrock {
    /// A client that loads the AWS configuration from the environment
    /// (region, credentials, `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, ...) on its
    /// first call.
    pub fn from_env() -> Self {
        Bedrock::default()
    }

    /// A client using `config` (region, credentials, endpoint, ...) as given.
    pub fn with_config(config: SdkConfig) -> Self {
        Bedrock {
            inner: Arc::new(Inner {
                config: OnceCell::new_with(Some(config)),
                clients: Mutex::default(),
            }),
            outbound: GuardedResolver::default(),
        }
    }

    /// The same, with agents' endpoints checked by `outbound` (the process's
    /// policy, from [`OutboundClient::resolver`](super::OutboundClient::resolver))
    /// rather than the strict default.
    pub fn with_outbound(mut self, outbound: GuardedResolver) -> Self {
        self.outbound = outbound;
        self
    }

    async fn client(&self, endpoint: Option<&str>) -> Result<Client, ProviderError> {
        let config = self
            .inner
            .config
            .get_or_init(|| aws_config::load_defaults(BehaviorVersion::latest()))
            .await;
        if config.region().is_none() {
            return Err(ProviderError::new(
                ErrorClass::BadRequest,
                "no AWS region is configured for Bedrock",
            ));
        }
        let key = endpoint.map(|e| e.trim_end_matches('/').to_owned());
        let mut clients = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let client = clients.entry(key.clone()).or_insert_with(|| {
            let mut builder = aws_sdk_bedrockruntime::config::Builder::from(config)
                .retry_config(RetryConfig::disabled());
            if let Some(url) = key {
                // The SDK's own client, but resolving through the policy.
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(TlsProvider::Rustls(CryptoMode::AwsLc))
                    .build_with_resolver(self.outbound.clone());
                builder = builder.endpoint_url(url).http_client(http);
            }
            Client::from_conf(builder.build())
        });
        Ok(client.clone())
    }
}

#[async_trait]
impl ProviderClient for Bedrock {
    async fn complete(
        &self,
        agent: &Agent,
        _key: Option<&SecretString>,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        if let Some(base_url) = agent.spec.base_url.as_deref() {
            // An IP literal is never resolved, so it is checked here.
            let url = reqwest::Url::parse(base_url).map_err(|_| {
                ProviderError::new(
                    ErrorClass::BadRequest,
                    "the agent's base_url is not a valid URL",
                )
            })?;
            if let Err(refused) = self.outbound.policy().check_url(&url) {
                return Err(http::refused_base_url(agent, &refused));
            }
        }
        let client = self.client(agent.spec.base_url.as_deref()).await?;
        let timeout_ms = agent.spec.constraints.timeout_ms();
        let timeout = TimeoutConfig::builder()
            .operation_timeout(Duration::from_millis(timeout_ms))
            .build();

        let messages = request
            .messages
            .iter()
            .map(|m| {
                BedrockMessage::builder()
                    .role(match m.role {
                        Role::User => ConversationRole::User,
                        Role::Assistant => ConversationRole::Assistant,
                    })
                    .content(ContentBlock::Text(m.content.clone()))
                    .build()
                    .map_err(|e| {
                        tracing::warn!(agent_id = %agent.id, error = %e, "could not build a Bedrock message");
                        ProviderError::new(ErrorClass::BadRequest, "could not build the Bedrock request")
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let system = request
            .system
            .as_ref()
            .map(|s| vec![SystemContentBlock::Text(s.clone())]);

        let result = client
            .converse()
            .model_id(&agent.spec.model)
            .set_system(system)
            .set_messages(Some(messages))
            .set_inference_config(inference_config(agent, request))
            .customize()
            .config_override(
                aws_sdk_bedrockruntime::config::Builder::default().timeout_config(timeout),
            )
            .send()
            .await;
        match result {
            Ok(output) => parse_output(agent, output),
            Err(error) => Err(sdk_error(agent, &error, timeout_ms)),
        }
    }
}

/// `maxTokens`, `temperature` and `stopSequences`; `None` when none is set.
fn inference_config(agent: &Agent, request: &ChatRequest) -> Option<InferenceConfiguration> {
    let max_tokens = http::max_tokens(agent, request).map(|n| i32::try_from(n).unwrap_or(i32::MAX));
    if max_tokens.is_none() && request.temperature.is_none() && request.stop.is_empty() {
        return None;
    }
    Some(
        InferenceConfiguration::builder()
            .set_max_tokens(max_tokens)
            .set_temperature(request.temperature)
            .set_stop_sequences((!request.stop.is_empty()).then(|| request.stop.clone()))
            .build(),
    )
}

fn tokens(n: i32) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn parse_output(agent: &Agent, output: ConverseOutput) -> Result<ChatResponse, ProviderError> {
    let request_id = output.request_id().map(str::to_owned);
    let stop_reason = output.stop_reason();
    if matches!(
        stop_reason,
        StopReason::GuardrailIntervened | StopReason::ContentFiltered
    ) {
        tracing::warn!(
            agent_id = %agent.id,
            model = %agent.spec.model,
            stop_reason = stop_reason.as_str(),
            request_id = request_id.as_deref(),
            "provider filtered the request"
        );
        return Err(ProviderError {
            status: Some(200),
            ..ProviderError::new(
                ErrorClass::ContentFiltered,
                format!(
                    "provider's content filter blocked the request ({})",
                    stop_reason.as_str()
                ),
            )
        });
    }
    let Some(message) = output.output().and_then(|o| o.as_message().ok()) else {
        tracing::warn!(
            agent_id = %agent.id,
            model = %agent.spec.model,
            request_id = request_id.as_deref(),
            "provider answered without a message"
        );
        return Err(ProviderError {
            status: Some(200),
            ..ProviderError::new(ErrorClass::Server, "malformed response from provider")
        });
    };
    let text = message
        .content()
        .iter()
        .filter_map(|block| block.as_text().ok())
        .map(String::as_str)
        .collect::<String>();
    // The SDK reads the whole response; the agent's cap still holds for the
    // answer it gave (the same class as the HTTP providers' capped reads).
    let cap = agent.spec.constraints.max_response_bytes();
    if text.len() as u64 > cap {
        return Err(ProviderError::new(
            ErrorClass::ResponseTooLarge,
            format!(
                "the provider's answer is larger than this agent's cap of {cap} bytes ({} bytes)",
                text.len()
            ),
        ));
    }
    let usage = output.usage().map_or_else(Usage::default, |u| {
        let cached = u.cache_read_input_tokens().map_or(0, tokens);
        let written = u.cache_write_input_tokens().map_or(0, tokens);
        Usage {
            input_tokens: tokens(u.input_tokens()) + cached + written,
            output_tokens: tokens(u.output_tokens()),
            cached_input_tokens: cached,
            cache_write_input_tokens: written,
            ..Usage::default()
        }
    });
    Ok(ChatResponse {
        output: text,
        finish_reason: Some(stop_reason.as_str().to_owned()),
        usage,
        request_id,
    })
}

/// Whether a validation message says the input does not fit the model.
fn is_context_length(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "too long",
        "context length",
        "context window",
        "too many input tokens",
        "maximum number of tokens",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

/// The class and owner-safe message of a service error, by its error code
/// (`x-amzn-errortype`), else by HTTP status.
fn classify(code: Option<&str>, status: u16, message: Option<&str>) -> (ErrorClass, String) {
    let rejected = || http::quoted("provider rejected the request", message);
    match code.unwrap_or_default() {
        "ThrottlingException" | "TooManyRequestsException" | "ServiceQuotaExceededException" => (
            ErrorClass::RateLimited,
            "provider rate limit reached".into(),
        ),
        "ServiceUnavailableException" => (ErrorClass::Overloaded, "provider is overloaded".into()),
        "ModelNotReadyException" => (
            ErrorClass::Overloaded,
            "model is not ready on the provider".into(),
        ),
        "ModelTimeoutException" => (ErrorClass::Timeout, "the model timed out".into()),
        "ValidationException" if message.is_some_and(is_context_length) => (
            ErrorClass::ContextLengthExceeded,
            http::quoted("request exceeds the model's context window", message),
        ),
        "ValidationException" => (ErrorClass::BadRequest, rejected()),
        // Never quoted: these name the account and the role.
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException"
        | "MissingAuthenticationTokenException" => (
            ErrorClass::Auth,
            "provider denied access to the model for these AWS credentials".into(),
        ),
        "ResourceNotFoundException" => (
            ErrorClass::NotFound,
            "provider has no such model or endpoint".into(),
        ),
        "InternalServerException" | "ModelErrorException" => (
            ErrorClass::Server,
            format!("provider server error (HTTP {status})"),
        ),
        _ => match status {
            401 | 403 => (
                ErrorClass::Auth,
                "provider denied access to the model for these AWS credentials".into(),
            ),
            404 => (
                ErrorClass::NotFound,
                "provider has no such model or endpoint".into(),
            ),
            408 => (ErrorClass::Timeout, "the model timed out".into()),
            429 => (
                ErrorClass::RateLimited,
                "provider rate limit reached".into(),
            ),
            503 => (ErrorClass::Overloaded, "provider is overloaded".into()),
            400..=499 => (ErrorClass::BadRequest, rejected()),
            _ => (
                ErrorClass::Server,
                format!("provider server error (HTTP {status})"),
            ),
        },
    }
}

fn sdk_error(agent: &Agent, error: &SdkError<ConverseError>, timeout_ms: u64) -> ProviderError {
    // The resolver's refusal, somewhere under the dispatch failure.
    if let Some(refused) = OutboundError::find_in(error) {
        return http::refused_base_url(agent, refused);
    }
    let fail = |class: ErrorClass, message: String, status: Option<u16>| {
        // DisplayErrorContext walks the source chain; it holds no credentials.
        tracing::warn!(
            agent_id = %agent.id,
            model = %agent.spec.model,
            class = ?class,
            status,
            error = %DisplayErrorContext(error),
            "Bedrock call failed"
        );
        ProviderError {
            class,
            message,
            retry_after: None,
            status,
        }
    };
    match error {
        SdkError::ServiceError(context) => {
            let err = context.err();
            let raw = context.raw();
            let status = raw.status().as_u16();
            let (class, message) = if raw.status().is_success() {
                // The SDK reports a success body it cannot read as an unhandled error.
                (
                    ErrorClass::Server,
                    "malformed response from provider".to_owned(),
                )
            } else {
                classify(err.code(), status, err.message())
            };
            let retry_after = raw
                .headers()
                .get("retry-after")
                .map(str::trim)
                .and_then(parse_retry_after);
            tracing::warn!(
                agent_id = %agent.id,
                model = %agent.spec.model,
                status,
                class = ?class,
                code = err.code(),
                request_id = err.request_id(),
                provider_message = err.message(),
                "provider returned an error"
            );
            ProviderError {
                class,
                message,
                retry_after,
                status: Some(status),
            }
        }
        SdkError::TimeoutError(_) => fail(
            ErrorClass::Timeout,
            format!("no answer from provider within {timeout_ms} ms"),
            None,
        ),
        SdkError::DispatchFailure(failure) if failure.is_timeout() => fail(
            ErrorClass::Timeout,
            format!("no answer from provider within {timeout_ms} ms"),
            None,
        ),
        SdkError::DispatchFailure(_) if mentions_credentials(error) => fail(
            ErrorClass::Auth,
            "no usable AWS credentials for Bedrock".into(),
            None,
        ),
        SdkError::DispatchFailure(failure) if failure.is_user() => fail(
            ErrorClass::BadRequest,
            "the Bedrock request could not be sent".into(),
            None,
        ),
        SdkError::DispatchFailure(_) => fail(
            ErrorClass::Network,
            "could not connect to provider".into(),
            None,
        ),
        SdkError::ResponseError(context) => fail(
            ErrorClass::Server,
            "malformed response from provider".into(),
            Some(context.raw().status().as_u16()),
        ),
        SdkError::ConstructionFailure(_) if mentions_credentials(error) => fail(
            ErrorClass::Auth,
            "no usable AWS credentials for Bedrock".into(),
            None,
        ),
        SdkError::ConstructionFailure(_) => fail(
            ErrorClass::BadRequest,
            "the Bedrock request could not be built (check the agent's model and base_url)".into(),
            None,
        ),
        _ => fail(
            ErrorClass::Server,
            "unexpected failure calling provider".into(),
            None,
        ),
    }
}

/// Whether the SDK failed for want of credentials (none found, or their
/// provider failed): an operator's problem that retrying does not fix.
fn mentions_credentials(error: &SdkError<ConverseError>) -> bool {
    let text = DisplayErrorContext(error).to_string().to_ascii_lowercase();
    text.contains("credentials") || text.contains("identity")
}

#[cfg(test)]
mod tests;
