//! Provider clients: one normalized request in, one normalized answer (or a
//! classified error) out, over the process's one shared [`OutboundClient`].

mod anthropic;
mod bedrock;
mod gemini;
mod http;
mod huggingface;
mod mock;
mod openai_compatible;
mod openai_media;
pub mod outbound;
pub mod presets;
#[cfg(test)]
mod test_support;

use crate::domain::Provider;
use crate::ports::{ProviderClient, ProviderClients};
use std::collections::HashMap;
use std::sync::Arc;

pub use anthropic::Anthropic;
pub use bedrock::Bedrock;
pub use gemini::Gemini;
pub use huggingface::{Classification, HuggingFace, Label, TASK_CLASSIFICATION};
pub use mock::MockProvider;
pub use openai_compatible::OpenAiCompatible;
pub use openai_media::{MAX_AUDIO_BYTES, OpenAi, OpenAiMedia, TASK_IMAGE, TASK_TRANSCRIPTION};
pub use outbound::{OutboundClient, OutboundConfigError, OutboundPolicy};
pub use presets::{PRESETS, Preset, preset_base_url};

/// The client for each provider kind.
///
/// | provider | client | task types |
/// |---|---|---|
/// | `openai` | [`OpenAi`] | `image` and `transcription` to the media endpoints ([`OpenAiMedia`]), the rest to Chat Completions |
/// | `openai_compatible` | [`OpenAi`] at the agent's `base_url` (see [`presets`]) | the same, where the server has the endpoint |
/// | `anthropic` | [`Anthropic`] | text task types (Messages API) |
/// | `gemini` | [`Gemini`] | text task types (`generateContent`) |
/// | `huggingface` | [`HuggingFace`] | `classification` on the inference API, the rest on the OpenAI-compatible router |
/// | `bedrock` | [`Bedrock`] | text task types (Converse, IAM auth) |
/// | `mock` | [`MockProvider`] | all, deterministically |
#[derive(Clone, Default)]
pub struct Providers {
    clients: HashMap<Provider, Arc<dyn ProviderClient>>,
    /// The HTTP client's policy and resolver, for Bedrock's SDK client.
    outbound: outbound::GuardedResolver,
}

impl Providers {
    /// Every provider this build speaks, sharing one HTTP client. Cheap and
    /// synchronous: Bedrock loads its AWS configuration on its first call
    /// (see [`Providers::with_bedrock`] to give it one).
    pub fn new(http: OutboundClient) -> Self {
        let openai = Arc::new(OpenAi::new(http.clone()));
        let mut providers = Providers {
            outbound: http.resolver(),
            ..Providers::default()
        };
        providers.insert(Provider::Mock, Arc::new(MockProvider));
        providers.insert(Provider::Openai, openai.clone());
        // Compatible servers speak the same wire format at their own root.
        providers.insert(Provider::OpenaiCompatible, openai);
        providers.insert(Provider::Anthropic, Arc::new(Anthropic::new(http.clone())));
        providers.insert(Provider::Gemini, Arc::new(Gemini::new(http.clone())));
        providers.insert(Provider::Huggingface, Arc::new(HuggingFace::new(http)));
        providers.insert(
            Provider::Bedrock,
            Arc::new(Bedrock::from_env().with_outbound(providers.outbound.clone())),
        );
        providers
    }

    /// The same, with `bedrock` as the Bedrock client (e.g. one built from
    /// an `SdkConfig` the process already loaded), under these providers'
    /// outbound policy.
    pub fn with_bedrock(mut self, bedrock: Bedrock) -> Self {
        let bedrock = bedrock.with_outbound(self.outbound.clone());
        self.insert(Provider::Bedrock, Arc::new(bedrock));
        self
    }

    pub fn insert(&mut self, provider: Provider, client: Arc<dyn ProviderClient>) {
        self.clients.insert(provider, client);
    }
}

impl ProviderClients for Providers {
    fn client(&self, provider: Provider) -> Option<Arc<dyn ProviderClient>> {
        self.clients.get(&provider).cloned()
    }
}

/// The one outbound HTTP client of a process: rustls, pooled, with a connect
/// timeout (each request sets its own total timeout from the agent), and
/// `policy` enforced on every destination (see [`outbound`]).
pub fn http_client(policy: OutboundPolicy) -> Result<OutboundClient, outbound::BuildError> {
    OutboundClient::new(policy)
}
