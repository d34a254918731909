//! Agents: the registry's entries, and what calling one costs.

use serde::{Deserialize, Serialize};

use super::call::Usage;
use super::health::{BreakerSettings, BreakerSettingsError};
use super::ids::AgentId;
use super::money::{self, Usd};
use super::secret::{Owner, SecretName, SecretNameError};
use super::task_type::{TaskType, TaskTypeError};
use super::text;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Openai,
    Anthropic,
    Gemini,
    /// Any server speaking OpenAI Chat Completions at `base_url`.
    OpenaiCompatible,
    Huggingface,
    Bedrock,
    /// Deterministic in-process agent for demos and tests.
    Mock,
}

impl Provider {
    /// Providers that authenticate with a key from the secret source.
    pub fn needs_secret(self) -> bool {
        !matches!(self, Provider::Mock | Provider::Bedrock)
    }

    /// Where the provider's API is when an agent names no `base_url`: the
    /// one host a plain key of this provider may be sent to. The provider
    /// clients' default URLs are checked against these in their tests.
    pub fn default_host(self) -> Option<&'static str> {
        match self {
            Provider::Openai => Some("api.openai.com"),
            Provider::Anthropic => Some("api.anthropic.com"),
            Provider::Gemini => Some("generativelanguage.googleapis.com"),
            Provider::Huggingface => Some("router.huggingface.co"),
            Provider::OpenaiCompatible | Provider::Bedrock | Provider::Mock => None,
        }
    }
}

/// An `http://` or `https://` URL with a host: where an agent's provider is.
/// Reads as the text it was given (`as_deref()` on an `Option<BaseUrl>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    text: String,
    host: String,
}

impl BaseUrl {
    pub fn parse(text: impl Into<String>) -> Result<Self, AgentSpecError> {
        let text = text.into();
        let url = url::Url::parse(&text).map_err(|_| AgentSpecError::BadBaseUrl)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(AgentSpecError::BadBaseUrl);
        }
        // Credentials in the URL would travel with every request, and be shown.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(AgentSpecError::BadBaseUrl);
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(AgentSpecError::BadBaseUrl)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        Ok(BaseUrl { text, host })
    }

    /// The host requests go to (IPv6 without brackets, lower case).
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::ops::Deref for BaseUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl Serialize for BaseUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for BaseUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BaseUrl::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

// It becomes a `Pricing` through `TryFrom`, which applies the rules.
/// An agent's prices as an admin writes them, each a JSON number or a decimal
/// string: per million tokens, per generated image, per minute of transcribed
/// audio. Any may be left out (an image agent can be priced by `per_image`
/// alone), but not all of them (422); a token price left out is zero.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Pricing, min_properties = 1)]
pub struct PricingRequest {
    #[serde(default)]
    #[schema(schema_with = money::nullable_amount_in)]
    pub input_per_mtok: Option<Usd>,
    #[serde(default)]
    #[schema(schema_with = money::nullable_amount_in)]
    pub output_per_mtok: Option<Usd>,
    /// The price of cached input tokens; without it they cost `input_per_mtok`.
    #[serde(default)]
    #[schema(schema_with = money::nullable_amount_in)]
    pub cached_input_per_mtok: Option<Usd>,
    /// The price of input tokens written to the provider's prompt cache
    /// (Anthropic bills them apart, 1.25× input for a 5-minute cache);
    /// without it they cost `input_per_mtok`.
    #[serde(default)]
    #[schema(schema_with = money::nullable_amount_in)]
    pub cache_write_per_mtok: Option<Usd>,
    /// Dollars per generated image (DALL·E 3 bills by the image, not by tokens).
    #[serde(default)]
    #[schema(schema_with = money::nullable_amount_in)]
    pub per_image: Option<Usd>,
    /// Dollars per minute of transcribed audio (whisper-1 bills by duration,
    /// not by tokens); billed by the second.
    #[serde(default)]
    #[schema(schema_with = money::nullable_amount_in)]
    pub per_audio_minute: Option<Usd>,
}

impl TryFrom<PricingRequest> for Pricing {
    type Error = AgentSpecError;

    fn try_from(request: PricingRequest) -> Result<Self, AgentSpecError> {
        let prices = [
            request.input_per_mtok,
            request.output_per_mtok,
            request.cached_input_per_mtok,
            request.cache_write_per_mtok,
            request.per_image,
            request.per_audio_minute,
        ];
        // `{}` is a mistake, not a free agent: that is a zero price, named.
        if prices.iter().all(Option::is_none) {
            return Err(AgentSpecError::NoPrice);
        }
        if prices.iter().flatten().any(|p| p.is_negative()) {
            return Err(AgentSpecError::NegativePrice);
        }
        Ok(Pricing {
            input_per_mtok: request.input_per_mtok.unwrap_or_default(),
            output_per_mtok: request.output_per_mtok.unwrap_or_default(),
            cached_input_per_mtok: request.cached_input_per_mtok,
            cache_write_per_mtok: request.cache_write_per_mtok,
            per_image: request.per_image,
            per_audio_minute: request.per_audio_minute,
        })
    }
}

/// An agent's prices, every rule checked (built from a [`PricingRequest`]).
/// Stored and sent with both token prices written, zero included, so what
/// is read back names a price.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// Dollars per million input tokens; zero when not set.
    #[serde(default)]
    pub input_per_mtok: Usd,
    /// Dollars per million output tokens; zero when not set.
    #[serde(default)]
    pub output_per_mtok: Usd,
    /// The price of cached input tokens; without it they cost `input_per_mtok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<Usd>,
    /// The price of input tokens written to the provider's prompt cache;
    /// without it they cost `input_per_mtok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_mtok: Option<Usd>,
    /// Dollars per generated image; without it images cost nothing beyond
    /// their tokens (gpt-image models bill tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_image: Option<Usd>,
    /// Dollars per minute of transcribed audio; without it audio costs
    /// nothing beyond its tokens (gpt-4o-transcribe bills tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_audio_minute: Option<Usd>,
}

impl Pricing {
    /// The exact cost of a call's usage. Cached input tokens and cache
    /// writes are part of the input count, and billed at their own prices
    /// when the agent has them; images and audio are billed on top of the
    /// tokens when the agent has their prices.
    pub fn cost(&self, usage: &Usage) -> Usd {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let written = usage
            .cache_write_input_tokens
            .min(usage.input_tokens - cached);
        let mut fresh = usage.input_tokens;
        let mut cost = Usd::ZERO;
        if let Some(price) = self.cached_input_per_mtok {
            fresh -= cached;
            cost = cost + Usd::for_tokens(cached, price);
        }
        if let Some(price) = self.cache_write_per_mtok {
            fresh -= written;
            cost = cost + Usd::for_tokens(written, price);
        }
        if let Some(price) = self.per_image {
            cost = cost + price.times(usage.images);
        }
        if let Some(price) = self.per_audio_minute {
            cost = cost + Usd::for_seconds(usage.audio_seconds, price);
        }
        cost + Usd::for_tokens(fresh, self.input_per_mtok)
            + Usd::for_tokens(usage.output_tokens, self.output_per_mtok)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 4294967295_u64)]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 4294967295_u64)]
    pub context_window: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 4294967295_u64)]
    pub rpm: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 4294967295_u64)]
    pub tpm: Option<u32>,
    /// One attempt's limit (default 30,000); a task's own deadline still applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Attempts per call, 1 to 10 (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10)]
    pub max_attempts: Option<u32>,
    /// The largest provider response read, in bytes (default 16 MiB); a
    /// larger one fails the call as `response_too_large`, not retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1073741824)]
    pub max_response_bytes: Option<u64>,
}

impl Constraints {
    pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
    pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;
    pub const MAX_RESPONSE_BYTES_LIMIT: u64 = 1024 * 1024 * 1024;

    pub fn max_response_bytes(&self) -> u64 {
        self.max_response_bytes
            .unwrap_or(Self::DEFAULT_MAX_RESPONSE_BYTES)
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(Self::DEFAULT_TIMEOUT_MS)
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(Self::DEFAULT_MAX_ATTEMPTS)
    }
}

fn default_true() -> bool {
    true
}

fn default_weight() -> u32 {
    1
}

fn default_quality() -> f64 {
    0.5
}

fn default_tier() -> u8 {
    1
}

// It becomes an `AgentSpec` through `TryFrom`, which applies every rule.
/// An agent as an admin writes it (`PUT /v1/agents/{id}`); the id comes from
/// the path. Unknown fields are refused (400); a field that breaks its rule is
/// refused with 422, and the problem's `field` names it (`capabilities[1]`).
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentRequest {
    #[schema(schema_with = not_blank)]
    pub name: String,
    pub provider: Provider,
    #[schema(schema_with = not_blank)]
    pub model: String,
    /// Where the provider's API is: `http://` or `https://`; required for
    /// `openai_compatible`.
    #[serde(default)]
    #[schema(pattern = "^https?://")]
    pub base_url: Option<String>,
    /// The name of the secret holding the key, never the key itself; required
    /// for every provider but `mock` and `bedrock`.
    #[serde(default)]
    pub secret: Option<String>,
    /// The task types the agent serves: the same rule as a task's `task_type`.
    #[schema(value_type = Vec<TaskType>, min_items = 1)]
    pub capabilities: Vec<String>,
    #[serde(default, deserialize_with = "text::optional_object")]
    pub pricing: Option<PricingRequest>,
    #[serde(default, deserialize_with = "text::object")]
    pub constraints: Constraints,
    /// 0 to 1 (default 0.5); `best` routing prefers higher.
    #[serde(default = "default_quality")]
    #[schema(minimum = 0, maximum = 1)]
    pub quality: f64,
    #[serde(default = "default_tier")]
    #[schema(maximum = 255)]
    pub tier: u8,
    #[serde(default = "default_weight")]
    #[schema(maximum = 4294967295_u64)]
    pub weight: u32,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The circuit breaker's settings (each has a default).
    #[serde(default, deserialize_with = "text::optional_object")]
    pub breaker: Option<BreakerSettings>,
    /// Behaviour of a `mock` agent (only `mock`): latency and injected faults.
    #[serde(default, deserialize_with = "text::optional_object")]
    pub mock: Option<MockOptions>,
}

fn not_blank() -> utoipa::openapi::schema::Object {
    text::not_blank_schema(None, "Not blank")
}

/// A registry agent's definition, every rule checked: built from an
/// `AgentRequest` (deserializing one goes through it too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "AgentRequest")]
pub struct AgentSpec {
    pub name: String,
    pub provider: Provider,
    pub model: String,
    pub base_url: Option<BaseUrl>,
    /// The name of the secret holding the key, never the key itself.
    pub secret: Option<SecretName>,
    pub capabilities: Vec<TaskType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    pub constraints: Constraints,
    pub quality: f64,
    pub tier: u8,
    pub weight: u32,
    pub enabled: bool,
    #[serde(skip_serializing_if = "BreakerSettings::is_default")]
    pub breaker: BreakerSettings,
    /// Behaviour of a `mock` agent: latency and injected faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockOptions>,
}

/// A fault a `mock` agent injects, for demos and fault tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MockFault {
    /// 429 with a Retry-After of `retry_after_ms`.
    RateLimit,
    /// A 500.
    ServerError,
    /// No answer within the agent's timeout.
    Timeout,
    /// An answer that does not parse.
    Malformed,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MockOptions {
    /// Added before every answer.
    #[serde(default)]
    pub latency_ms: u64,
    /// Probability (0 to 1) that a call fails with `fault` (a 500 if unset).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub failure_rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<MockFault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Pads every answer to this many bytes (a large answer, such as a
    /// base64 image); at most 64 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 67108864)]
    pub output_bytes: Option<u64>,
    /// Answers with the request's text verbatim (what a model that repeats
    /// its input would): the test double for output filters.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub echo: bool,
    /// Answers without the `[model]` tag: mock agents with it give the same
    /// answer to the same request (stand-ins for models that agree).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub untagged: bool,
    /// The most words of request it answers in full: a longer request gets
    /// the first half of its answer, with finish reason `length` (a scripted
    /// cheap tier out of its depth, whose answer runs into its cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_words: Option<u64>,
    /// Share (0 to 1) of requests answered wrongly without any sign: with
    /// the `[model]` tag although `untagged`, so unlike other agents'
    /// answers. Which requests is decided by their digest: the same every run.
    #[serde(default, skip_serializing_if = "is_zero_share")]
    #[schema(minimum = 0, maximum = 1)]
    pub wrong_share: f64,
    /// Scripted answers, at most 32: the first whose `pattern` the
    /// request's last message contains (ignoring case) is the answer, after
    /// its own `latency_ms` if it sets one (else the agent's). A request
    /// none matches gets the usual answer. Agents scripted alike agree on
    /// purpose, and unlike disagree: demos of `consensus`, `vote` and
    /// `merge` without keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 32)]
    pub answers: Vec<ScriptedAnswer>,
}

/// One scripted answer of a `mock` agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptedAnswer {
    #[schema(schema_with = answer_pattern_schema)]
    pub pattern: String,
    /// The answer, verbatim (at most 16,384 characters); empty is an empty answer.
    #[schema(max_length = 16384)]
    pub answer: String,
    /// Waited before this answer, instead of the agent's `latency_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// The answer stops at its output cap (finish reason `length`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

fn answer_pattern_schema() -> utoipa::openapi::schema::Object {
    text::not_blank_schema(
        Some(ScriptedAnswer::MAX_PATTERN_CHARS),
        "Text the request's last message contains, ignoring case: not blank, at most 1,024 characters",
    )
}

impl ScriptedAnswer {
    pub const MAX_PATTERN_CHARS: usize = 1024;
    pub const MAX_ANSWER_CHARS: usize = 16 * 1024;

    /// Whether it answers `text`.
    pub fn matches(&self, text: &str) -> bool {
        text.to_lowercase().contains(&self.pattern.to_lowercase())
    }
}

fn is_zero_share(share: &f64) -> bool {
    *share == 0.0
}

impl MockOptions {
    pub const MAX_OUTPUT_BYTES: u64 = 64 * 1024 * 1024;
    pub const MAX_ANSWERS: usize = 32;

    /// The scripted answer for `text`, if any.
    pub fn scripted(&self, text: &str) -> Option<&ScriptedAnswer> {
        self.answers.iter().find(|a| a.matches(text))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentSpecError {
    #[error("name must not be empty")]
    EmptyName,
    #[error("model must not be empty")]
    EmptyModel,
    #[error("capabilities must list at least one task type")]
    NoCapabilities,
    #[error("capabilities[{index}] {error}")]
    BadCapability { index: usize, error: TaskTypeError },
    #[error("quality must be between 0 and 1")]
    QualityOutOfRange,
    #[error("base_url is required for provider openai_compatible")]
    BaseUrlRequired,
    #[error("base_url must be an http:// or https:// URL with a host and no credentials")]
    BadBaseUrl,
    #[error("secret is required for this provider")]
    SecretRequired,
    #[error("secret {0}")]
    BadSecret(SecretNameError),
    #[error("prices must not be negative")]
    NegativePrice,
    #[error(
        "pricing names no price: name at least one, such as input_per_mtok, per_image or \
         per_audio_minute"
    )]
    NoPrice,
    #[error("constraints.max_attempts must be between 1 and 10")]
    MaxAttemptsOutOfRange,
    #[error("constraints.max_response_bytes must be between 1 and 1073741824 (1 GiB)")]
    MaxResponseBytesOutOfRange,
    #[error("mock.failure_rate must be between 0 and 1")]
    FailureRateOutOfRange,
    #[error("mock options are only for provider mock")]
    MockOptionsOnRealProvider,
    #[error("mock.output_bytes must be at most 67108864 (64 MiB)")]
    MockOutputTooLarge,
    #[error(
        "mock.answers: at most 32, each pattern not blank and at most 1,024 characters, each answer at most 16,384 characters"
    )]
    BadMockAnswers,
    #[error("{0}")]
    Breaker(BreakerSettingsError),
}

impl AgentSpecError {
    /// The request field the error is about, for problem details.
    pub fn field(&self) -> String {
        let field = match self {
            AgentSpecError::EmptyName => "name",
            AgentSpecError::EmptyModel => "model",
            AgentSpecError::NoCapabilities => "capabilities",
            AgentSpecError::BadCapability { index, .. } => {
                return format!("capabilities[{index}]");
            }
            AgentSpecError::QualityOutOfRange => "quality",
            AgentSpecError::BaseUrlRequired | AgentSpecError::BadBaseUrl => "base_url",
            AgentSpecError::SecretRequired | AgentSpecError::BadSecret(_) => "secret",
            AgentSpecError::NegativePrice | AgentSpecError::NoPrice => "pricing",
            AgentSpecError::MaxAttemptsOutOfRange => "constraints.max_attempts",
            AgentSpecError::MaxResponseBytesOutOfRange => "constraints.max_response_bytes",
            AgentSpecError::FailureRateOutOfRange => "mock.failure_rate",
            AgentSpecError::MockOptionsOnRealProvider => "mock",
            AgentSpecError::MockOutputTooLarge => "mock.output_bytes",
            AgentSpecError::BadMockAnswers => "mock.answers",
            AgentSpecError::Breaker(e) => e.field(),
        };
        field.to_owned()
    }
}

impl TryFrom<AgentRequest> for AgentSpec {
    type Error = AgentSpecError;

    fn try_from(request: AgentRequest) -> Result<Self, AgentSpecError> {
        if text::is_blank(&request.name) {
            return Err(AgentSpecError::EmptyName);
        }
        if text::is_blank(&request.model) {
            return Err(AgentSpecError::EmptyModel);
        }
        if request.capabilities.is_empty() {
            return Err(AgentSpecError::NoCapabilities);
        }
        let capabilities = request
            .capabilities
            .into_iter()
            .enumerate()
            .map(|(index, c)| {
                TaskType::parse(c).map_err(|error| AgentSpecError::BadCapability { index, error })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !(0.0..=1.0).contains(&request.quality) {
            return Err(AgentSpecError::QualityOutOfRange);
        }
        let base_url = request.base_url.map(BaseUrl::parse).transpose()?;
        if base_url.is_none() && request.provider == Provider::OpenaiCompatible {
            return Err(AgentSpecError::BaseUrlRequired);
        }
        let secret = request
            .secret
            .map(SecretName::parse)
            .transpose()
            .map_err(AgentSpecError::BadSecret)?;
        if request.provider.needs_secret() && secret.is_none() {
            return Err(AgentSpecError::SecretRequired);
        }
        let pricing = request.pricing.map(Pricing::try_from).transpose()?;
        if let Some(n) = request.constraints.max_attempts
            && !(1..=10).contains(&n)
        {
            return Err(AgentSpecError::MaxAttemptsOutOfRange);
        }
        if let Some(n) = request.constraints.max_response_bytes
            && !(1..=Constraints::MAX_RESPONSE_BYTES_LIMIT).contains(&n)
        {
            return Err(AgentSpecError::MaxResponseBytesOutOfRange);
        }
        if let Some(mock) = &request.mock {
            if request.provider != Provider::Mock {
                return Err(AgentSpecError::MockOptionsOnRealProvider);
            }
            if !(0.0..=1.0).contains(&mock.failure_rate) {
                return Err(AgentSpecError::FailureRateOutOfRange);
            }
            if mock
                .output_bytes
                .is_some_and(|n| n > MockOptions::MAX_OUTPUT_BYTES)
            {
                return Err(AgentSpecError::MockOutputTooLarge);
            }
            let bad_answer = |a: &ScriptedAnswer| {
                text::is_blank(&a.pattern)
                    || a.pattern.chars().count() > ScriptedAnswer::MAX_PATTERN_CHARS
                    || a.answer.chars().count() > ScriptedAnswer::MAX_ANSWER_CHARS
            };
            if mock.answers.len() > MockOptions::MAX_ANSWERS || mock.answers.iter().any(bad_answer)
            {
                return Err(AgentSpecError::BadMockAnswers);
            }
        }
        let breaker = request.breaker.unwrap_or_default();
        breaker.check().map_err(AgentSpecError::Breaker)?;
        Ok(AgentSpec {
            name: request.name,
            provider: request.provider,
            model: request.model,
            base_url,
            secret,
            capabilities,
            pricing,
            constraints: request.constraints,
            quality: request.quality,
            tier: request.tier,
            weight: request.weight,
            enabled: request.enabled,
            breaker,
            mock: request.mock,
        })
    }
}

/// A registry entry: an id, its owner, what the admin wrote, and a version
/// that every write bumps (optimistic concurrency).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub id: AgentId,
    /// The owning tenant; none for a platform agent.
    #[serde(rename = "tenant")]
    pub owner: Owner,
    #[serde(flatten)]
    pub spec: AgentSpec,
    pub version: u64,
}

impl Agent {
    /// The host a call to this agent goes to: its `base_url`'s, or its
    /// provider's default. `None` for providers reached without HTTP keys
    /// (Bedrock through the AWS SDK, the in-process mock).
    pub fn host(&self) -> Option<&str> {
        match &self.spec.base_url {
            Some(url) => Some(url.host()),
            None => self.spec.provider.default_host(),
        }
    }

    pub fn can_serve(&self, task_type: &TaskType) -> bool {
        self.spec.enabled && self.spec.capabilities.contains(task_type)
    }

    /// The cost of a call, or `None` when the agent has no prices (never a silent zero).
    pub fn cost(&self, usage: &Usage) -> Option<Usd> {
        self.spec.pricing.as_ref().map(|p| p.cost(usage))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn request() -> Value {
        json!({
            "name": "GPT-4o mini", "provider": "openai", "model": "gpt-4o-mini",
            "secret": "maof/openai", "capabilities": ["text"],
            "pricing": {"input_per_mtok": 0.15, "output_per_mtok": 0.60, "cached_input_per_mtok": 0.075}
        })
    }

    fn spec() -> AgentSpec {
        serde_json::from_value(request()).unwrap()
    }

    /// The rule a request breaks, if any, once it has the shape of a request.
    fn parse(changes: Value) -> Result<AgentSpec, AgentSpecError> {
        let mut body = request();
        for (k, v) in changes.as_object().unwrap() {
            body[k] = v.clone();
        }
        AgentSpec::try_from(serde_json::from_value::<AgentRequest>(body).unwrap())
    }

    #[test]
    fn prices_from_json_numbers_are_exact() {
        let s = spec();
        let p = s.pricing.as_ref().unwrap();
        assert_eq!(p.input_per_mtok, Usd::parse("0.15").unwrap());
        let usage = Usage {
            input_tokens: 12,
            output_tokens: 30,
            ..Usage::default()
        };
        assert_eq!(p.cost(&usage), Usd::parse("0.0000198").unwrap());
    }

    #[test]
    fn prices_are_numbers_or_decimal_strings() {
        let strings = parse(json!({"pricing": {"input_per_mtok": "0.15",
            "output_per_mtok": "0.60", "cached_input_per_mtok": "0.075"}}))
        .unwrap();
        assert_eq!(strings.pricing, spec().pricing);
        let mixed =
            parse(json!({"pricing": {"input_per_mtok": "0.15", "output_per_mtok": 0.6}})).unwrap();
        assert_eq!(
            mixed.pricing.unwrap().output_per_mtok,
            Usd::parse("0.6").unwrap()
        );
        // Written back as strings, which read back the same.
        let written = serde_json::to_value(spec()).unwrap();
        assert_eq!(
            written["pricing"],
            json!({"input_per_mtok": "0.15", "output_per_mtok": "0.6", "cached_input_per_mtok": "0.075"})
        );
        assert_eq!(
            serde_json::from_value::<AgentSpec>(written).unwrap(),
            spec()
        );
    }

    #[test]
    fn cached_tokens_use_cached_price() {
        let p = spec().pricing.unwrap();
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 0,
            cached_input_tokens: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(p.cost(&usage), Usd::parse("0.075").unwrap());
    }

    #[test]
    fn the_response_cap_is_between_one_byte_and_a_gibibyte() {
        for bad in [0, Constraints::MAX_RESPONSE_BYTES_LIMIT + 1] {
            let err = parse(json!({"constraints": {"max_response_bytes": bad}})).unwrap_err();
            assert_eq!(err, AgentSpecError::MaxResponseBytesOutOfRange);
            assert_eq!(err.field(), "constraints.max_response_bytes");
        }
        assert!(parse(json!({"constraints": {"max_response_bytes": 1}})).is_ok());
        let err = parse(json!({"provider": "mock",
            "mock": {"output_bytes": MockOptions::MAX_OUTPUT_BYTES + 1}}))
        .unwrap_err();
        assert_eq!(err.field(), "mock.output_bytes");
        for answers in [
            json!([{"pattern": " ", "answer": "x"}]),
            json!([{"pattern": "p", "answer": "x".repeat(ScriptedAnswer::MAX_ANSWER_CHARS + 1)}]),
            json!(vec![
                json!({"pattern": "p", "answer": ""});
                MockOptions::MAX_ANSWERS + 1
            ]),
        ] {
            let err = parse(json!({"provider": "mock", "mock": {"answers": answers}})).unwrap_err();
            assert_eq!(err.field(), "mock.answers");
        }
        assert!(
            parse(
                json!({"provider": "mock", "mock": {"answers": [{"pattern": "p", "answer": ""}]}})
            )
            .is_ok()
        );
        let err = parse(
            json!({"pricing": {"input_per_mtok": 1, "output_per_mtok": 1,
            "cache_write_per_mtok": -1}}),
        )
        .unwrap_err();
        assert_eq!(err, AgentSpecError::NegativePrice);
    }

    #[test]
    fn cache_writes_use_their_own_price_when_there_is_one() {
        // Claude Sonnet: $3 input, $15 output, $0.30 cache reads, $3.75 cache writes.
        let priced = parse(
            json!({"pricing": {"input_per_mtok": "3", "output_per_mtok": "15",
            "cached_input_per_mtok": "0.30", "cache_write_per_mtok": "3.75"}}),
        )
        .unwrap()
        .pricing
        .unwrap();
        // 2,150 input tokens: 2,000 read from the cache, 100 written to it, 50 fresh.
        let usage = Usage {
            input_tokens: 2_150,
            output_tokens: 12,
            cached_input_tokens: 2_000,
            cache_write_input_tokens: 100,
            ..Usage::default()
        };
        // 50 × 3 + 2000 × 0.30 + 100 × 3.75 + 12 × 15, per million.
        assert_eq!(priced.cost(&usage), Usd::parse("0.001305").unwrap());
        // Without a cache-write price, writes cost plain input.
        let plain = parse(
            json!({"pricing": {"input_per_mtok": "3", "output_per_mtok": "15",
            "cached_input_per_mtok": "0.30"}}),
        )
        .unwrap()
        .pricing
        .unwrap();
        assert_eq!(plain.cost(&usage), Usd::parse("0.00123").unwrap());
    }

    #[test]
    fn an_image_agent_is_priced_per_image_alone() {
        let spec =
            parse(json!({"capabilities": ["image"], "pricing": {"per_image": "0.04"}})).unwrap();
        let pricing = spec.pricing.as_ref().unwrap();
        assert_eq!(pricing.input_per_mtok, Usd::ZERO);
        assert_eq!(pricing.per_image, Some(Usd::parse("0.04").unwrap()));
        let usage = Usage {
            images: 3,
            ..Usage::default()
        };
        assert_eq!(pricing.cost(&usage), Usd::parse("0.12").unwrap());
        // Written with its zero token prices, and read back the same.
        let written = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            written["pricing"],
            json!({"input_per_mtok": "0", "output_per_mtok": "0", "per_image": "0.04"})
        );
        assert_eq!(serde_json::from_value::<AgentSpec>(written).unwrap(), spec);
    }

    #[test]
    fn audio_is_billed_by_the_second_at_a_price_per_minute() {
        // whisper-1 at $0.006 a minute, gpt-4o-transcribe by its tokens.
        let pricing = parse(
            json!({"pricing": {"input_per_mtok": "2.5", "output_per_mtok": "10",
            "per_audio_minute": 0.006}}),
        )
        .unwrap()
        .pricing
        .unwrap();
        let whisper = Usage {
            audio_seconds: 61,
            ..Usage::default()
        };
        assert_eq!(pricing.cost(&whisper), Usd::parse("0.0061").unwrap());
        // Tokens and audio in one usage are billed both: 14 × 2.5 + 45 × 10
        // per million, plus 3 s at $0.0001.
        let both = Usage {
            input_tokens: 14,
            output_tokens: 45,
            audio_seconds: 3,
            ..Usage::default()
        };
        assert_eq!(pricing.cost(&both), Usd::parse("0.000785").unwrap());
        // Without an image price, images cost nothing beyond their tokens.
        let images = Usage {
            images: 2,
            ..Usage::default()
        };
        assert_eq!(pricing.cost(&images), Usd::ZERO);
    }

    #[test]
    fn a_pricing_that_names_no_price_is_refused() {
        for empty in [
            json!({}),
            json!({"per_image": null, "input_per_mtok": null}),
        ] {
            let err = parse(json!({"pricing": empty})).unwrap_err();
            assert_eq!(err, AgentSpecError::NoPrice);
            assert_eq!(err.field(), "pricing");
            assert!(err.to_string().starts_with("pricing names no price"));
        }
        // A zero price is a price: a free agent costs "0", not unknown.
        let free = parse(json!({"pricing": {"input_per_mtok": 0, "output_per_mtok": 0}}))
            .unwrap()
            .pricing
            .unwrap();
        assert_eq!(free.cost(&Usage::default()), Usd::ZERO);
        // No pricing at all stays allowed: the cost is unknown (null).
        assert_eq!(parse(json!({"pricing": null})).unwrap().pricing, None);
        for field in ["per_image", "per_audio_minute"] {
            let err = parse(json!({"pricing": {field: "-0.01"}})).unwrap_err();
            assert_eq!(err, AgentSpecError::NegativePrice, "{field}");
            assert_eq!(err.field(), "pricing");
        }
    }

    #[test]
    fn a_capability_follows_the_task_type_rule() {
        let err = parse(json!({"capabilities": ["text", "code-review"]})).unwrap_err();
        assert_eq!(
            err,
            AgentSpecError::BadCapability {
                index: 1,
                error: TaskTypeError::BadCharacter
            }
        );
        assert_eq!(err.field(), "capabilities[1]");
        assert!(
            err.to_string()
                .starts_with("capabilities[1] must be a lower-case word")
        );
        assert_eq!(
            parse(json!({"capabilities": ["Text"]}))
                .unwrap_err()
                .field(),
            "capabilities[0]"
        );
        assert_eq!(
            parse(json!({"capabilities": []})),
            Err(AgentSpecError::NoCapabilities)
        );
        // Deserializing a spec (a stored one, the seed file) applies the rule too.
        let mut stored = request();
        stored["capabilities"] = json!(["code-review"]);
        assert!(serde_json::from_value::<AgentSpec>(stored).is_err());
    }

    #[test]
    fn the_agent_serves_exactly_its_capabilities() {
        let agent = Agent {
            id: AgentId::parse("a").unwrap(),
            owner: crate::domain::Owner::Platform,
            spec: parse(json!({"capabilities": ["text", "code"]})).unwrap(),
            version: 1,
        };
        assert!(agent.can_serve(&TaskType::parse("code").unwrap()));
        assert!(!agent.can_serve(&TaskType::parse("image").unwrap()));
    }

    #[test]
    fn unknown_fields_and_bad_specs_are_refused() {
        let bad = json!({"name": "x", "provider": "openai", "model": "m",
            "capabilities": ["text"], "surprise": 1});
        assert!(serde_json::from_value::<AgentRequest>(bad.clone()).is_err());
        assert!(serde_json::from_value::<AgentSpec>(bad).is_err());

        assert_eq!(
            parse(json!({"provider": "openai_compatible"})),
            Err(AgentSpecError::BaseUrlRequired)
        );
        assert_eq!(
            parse(json!({"provider": "openai_compatible", "base_url": "ftp://x"})),
            Err(AgentSpecError::BadBaseUrl)
        );
        assert_eq!(
            parse(json!({"secret": null})),
            Err(AgentSpecError::SecretRequired)
        );
        assert_eq!(
            parse(json!({"name": " \u{3000}"})),
            Err(AgentSpecError::EmptyName)
        );
        assert_eq!(
            parse(json!({"quality": 1.5})),
            Err(AgentSpecError::QualityOutOfRange)
        );
        assert_eq!(
            parse(json!({"pricing": {"input_per_mtok": "-1", "output_per_mtok": 0}})),
            Err(AgentSpecError::NegativePrice)
        );
        assert_eq!(
            parse(json!({"mock": {}})),
            Err(AgentSpecError::MockOptionsOnRealProvider)
        );
        assert!(parse(json!({})).is_ok());
    }
}
