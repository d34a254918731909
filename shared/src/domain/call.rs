//! One call of one agent for one task, and its outcome.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::agent::Provider;
use super::ids::{AgentId, CallId};
use super::money::Usd;
use super::text;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Part of `input_tokens` that the provider served from its prompt cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_input_tokens: u64,
    /// Part of `input_tokens` that the provider wrote to its prompt cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_input_tokens: u64,
    /// Images the call generated, for agents priced per image.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub images: u64,
    /// Seconds of audio the call transcribed, rounded up, for agents priced
    /// per minute of audio.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub audio_seconds: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    /// Nothing used.
    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, rhs: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens + rhs.input_tokens,
            output_tokens: self.output_tokens + rhs.output_tokens,
            cached_input_tokens: self.cached_input_tokens + rhs.cached_input_tokens,
            cache_write_input_tokens: self.cache_write_input_tokens + rhs.cache_write_input_tokens,
            images: self.images + rhs.images,
            audio_seconds: self.audio_seconds + rhs.audio_seconds,
        }
    }
}

impl std::iter::Sum for Usage {
    fn sum<I: Iterator<Item = Usage>>(iter: I) -> Usage {
        iter.fold(Usage::default(), std::ops::Add::add)
    }
}

/// The error taxonomy every provider's failures are mapped onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    RateLimited,
    Overloaded,
    Server,
    Timeout,
    Network,
    Auth,
    BadRequest,
    NotFound,
    ContextLengthExceeded,
    ContentFiltered,
    /// No agent could take the call, or the call was abandoned (budget, cancel).
    Unavailable,
    /// The provider's answer was larger than the agent's response cap.
    ResponseTooLarge,
    /// The call's message kept failing until it was dead-lettered.
    DeadLetter,
    /// The provider answered, and the tenant's content filter blocked the
    /// answer (the provider's own refusals are `ContentFiltered`).
    ContentBlocked,
}

impl ErrorClass {
    /// A failure of the provider's side, which counts against the agent's
    /// circuit; a caller's own errors never do.
    pub fn is_provider_fault(self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimited
                | ErrorClass::Overloaded
                | ErrorClass::Server
                | ErrorClass::Timeout
                | ErrorClass::Network
                | ErrorClass::Auth
        )
    }

    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::RateLimited
                | ErrorClass::Overloaded
                | ErrorClass::Server
                | ErrorClass::Timeout
                | ErrorClass::Network
        )
    }
}

/// One agent a call tried and left for the next: a fallback after it
/// failed (`error`), or, for a `tiered` task, an escalation to a higher
/// tier after its answer (`escalated`). One of the two is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Hop {
    #[schema(value_type = String)]
    pub agent_id: AgentId,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CallError>,
    /// Why its answer was not kept, when it answered (a `tiered` task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated: Option<Escalation>,
    pub attempts: u32,
    pub latency_ms: u64,
    /// What its attempts used (nothing, when it failed); part of the call's.
    #[serde(default, skip_serializing_if = "Usage::is_zero")]
    pub usage: Usage,
    /// What its attempts cost; `None` without prices.
    #[schema(value_type = Option<String>)]
    pub cost_usd: Option<Usd>,
}

/// Why a `tiered` call left an agent's answer for a higher tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Escalation {
    /// The answer was blank.
    EmptyAnswer,
    /// The answer was cut off by `max_tokens` ([`is_cut_off`]).
    Truncated,
}

impl Escalation {
    /// Why `result` would escalate, if it answered: blank first, then cut off.
    pub fn of(result: &CallResult) -> Option<Escalation> {
        if result.status != CallStatus::Succeeded {
            return None;
        }
        // An answer offloaded to the blob store is not blank.
        if result.output_ref.is_none() && result.output.as_deref().is_none_or(text::is_blank) {
            Some(Escalation::EmptyAnswer)
        } else if result.truncated {
            Some(Escalation::Truncated)
        } else {
            None
        }
    }
}

/// Whether a provider's finish reason says the answer stopped at its
/// output cap: `length` (OpenAI and compatible servers, Hugging Face),
/// `max_tokens` (Anthropic, Bedrock), `MAX_TOKENS` (Gemini).
pub fn is_cut_off(finish_reason: &str) -> bool {
    finish_reason.eq_ignore_ascii_case("length") || finish_reason.eq_ignore_ascii_case("max_tokens")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallError {
    pub class: ErrorClass,
    /// Safe to show the task's owner: no key, no internal address.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Succeeded,
    Failed,
}

/// An output kept in the blob store (the claim check) rather than in its item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// The blob's key, which starts with the tenant.
    pub key: String,
    /// The output's length in bytes (UTF-8).
    pub bytes: u64,
}

/// The final outcome of one call; written once per call (first write wins).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallResult {
    pub call_id: CallId,
    pub agent_id: AgentId,
    /// `None` when the agent no longer existed when its call was made.
    pub provider: Option<Provider>,
    pub status: CallStatus,
    /// The answer, when it is small enough to keep in the item; a larger one
    /// is in the blob store at `output_ref` (and this is `None`).
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_ref: Option<BlobRef>,
    pub usage: Usage,
    /// `None` when the agent has no prices: unknown, not free.
    pub cost_usd: Option<Usd>,
    pub latency_ms: u64,
    pub attempts: u32,
    pub error: Option<CallError>,
    /// The errors of the attempts before the last, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retried_errors: Vec<CallError>,
    pub finished_at: DateTime<Utc>,
    /// The answer stopped at the output cap (the provider's finish reason,
    /// [`is_cut_off`]): it is partial.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The registry quality of the agent that answered, as it was then:
    /// what aggregation scores the answer by (none: failed, or stored
    /// before it was recorded, scored as of unknown quality).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    /// The agents this call tried before its last, oldest first: each failed
    /// for good on the provider's side, or (a `tiered` task) answered empty
    /// or cut off; `agent_id` is the last. `usage` and `cost_usd` are the
    /// whole call's, these included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fell_back_from: Vec<Hop>,
    /// The budget reservation this result settles: the store applies it to
    /// the tenant's counters in the same write as the result, so only the
    /// first result written settles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settles: Option<super::budget::Settlement>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn images_and_audio_add_up_and_are_written_only_when_counted() {
        let image = Usage {
            images: 1,
            ..Usage::default()
        };
        let clip = Usage {
            input_tokens: 3,
            audio_seconds: 14,
            ..Usage::default()
        };
        let total: Usage = [image, image, clip].into_iter().sum();
        assert_eq!(
            total,
            Usage {
                input_tokens: 3,
                images: 2,
                audio_seconds: 14,
                ..Usage::default()
            }
        );
        assert_eq!(
            serde_json::to_value(total).unwrap(),
            json!({"input_tokens": 3, "output_tokens": 0, "images": 2, "audio_seconds": 14})
        );
        // What was stored before these counts existed reads as none of them.
        let stored: Usage =
            serde_json::from_value(json!({"input_tokens": 1, "output_tokens": 2})).unwrap();
        assert_eq!((stored.images, stored.audio_seconds), (0, 0));
        assert_eq!(
            serde_json::to_value(stored).unwrap(),
            json!({"input_tokens": 1, "output_tokens": 2})
        );
    }
}
