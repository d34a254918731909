//! API roots of well-known OpenAI-compatible servers, for provider
//! `openai_compatible`. An agent still states its `base_url`; these are the
//! values to put there (the docs and the registry seed use them).
//!
//! | preset | `base_url` | key | notes |
//! |---|---|---|---|
//! | `deepseek` | `https://api.deepseek.com` | DeepSeek API key | `deepseek-chat`, `deepseek-reasoner`; reports cache hits |
//! | `mistral` | `https://api.mistral.ai/v1` | Mistral API key | `mistral-large-latest`, `mistral-small-latest`, ... |
//! | `groq` | `https://api.groq.com/openai/v1` | Groq API key | also `transcription` (`whisper-large-v3`) |
//! | `together` | `https://api.together.xyz/v1` | Together API key | also `image` (FLUX models) |
//! | `openrouter` | `https://openrouter.ai/api/v1` | OpenRouter key | models as `vendor/model` |
//! | `huggingface` | `https://router.huggingface.co/v1` | HF token | what provider `huggingface` uses for chat |
//! | `ollama` | `http://localhost:11434/v1` | none (any value) | local models by their Ollama tag |
//! | `vllm` | `http://localhost:8000/v1` | the server's `--api-key`, if set | the model as served |
//!
//! Any other server that speaks Chat Completions works the same way: its
//! `base_url` is the root that ends just before `/chat/completions`.

/// One well-known OpenAI-compatible server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// The lower-case name [`preset_base_url`] looks up.
    pub name: &'static str,
    /// What to put in the agent's `base_url`.
    pub base_url: &'static str,
    /// Whether the server needs a key (a `secret` on the agent).
    pub needs_key: bool,
}

/// Every preset, in the order of the table above.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "deepseek",
        base_url: "https://api.deepseek.com",
        needs_key: true,
    },
    Preset {
        name: "mistral",
        base_url: "https://api.mistral.ai/v1",
        needs_key: true,
    },
    Preset {
        name: "groq",
        base_url: "https://api.groq.com/openai/v1",
        needs_key: true,
    },
    Preset {
        name: "together",
        base_url: "https://api.together.xyz/v1",
        needs_key: true,
    },
    Preset {
        name: "openrouter",
        base_url: "https://openrouter.ai/api/v1",
        needs_key: true,
    },
    Preset {
        name: "huggingface",
        base_url: "https://router.huggingface.co/v1",
        needs_key: true,
    },
    Preset {
        name: "ollama",
        base_url: "http://localhost:11434/v1",
        needs_key: false,
    },
    Preset {
        name: "vllm",
        base_url: "http://localhost:8000/v1",
        needs_key: false,
    },
];

/// The `base_url` of a preset, by name, case-insensitive; `hf` and
/// `togetherai` are accepted too.
pub fn preset_base_url(name: &str) -> Option<&'static str> {
    preset(name).map(|p| p.base_url)
}

/// A preset by name (see [`preset_base_url`]).
pub fn preset(name: &str) -> Option<&'static Preset> {
    let name = name.trim().to_ascii_lowercase();
    let name = match name.as_str() {
        "hf" | "hugging_face" | "hugging-face" => "huggingface",
        "togetherai" | "together_ai" | "together.ai" => "together",
        other => other,
    };
    PRESETS.iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Provider;
    use crate::providers::{Anthropic, Gemini, HuggingFace, OpenAiCompatible};

    /// A plain key is bound to its provider's default host (the domain's
    /// `Provider::default_host`): that must be where the client sends it.
    #[test]
    fn each_clients_default_url_is_on_its_providers_default_host() {
        let host = |url: &str| url::Url::parse(url).unwrap().host_str().unwrap().to_owned();
        for (provider, urls) in [
            (Provider::Openai, vec![OpenAiCompatible::DEFAULT_BASE_URL]),
            (Provider::Anthropic, vec![Anthropic::DEFAULT_BASE_URL]),
            (Provider::Gemini, vec![Gemini::DEFAULT_BASE_URL]),
            (
                Provider::Huggingface,
                vec![
                    HuggingFace::DEFAULT_INFERENCE_URL,
                    HuggingFace::DEFAULT_ROUTER_URL,
                ],
            ),
        ] {
            for url in urls {
                assert_eq!(Some(host(url).as_str()), provider.default_host(), "{url}");
            }
        }
        for none in [
            Provider::OpenaiCompatible,
            Provider::Bedrock,
            Provider::Mock,
        ] {
            assert_eq!(none.default_host(), None);
        }
    }

    #[test]
    fn every_documented_preset_resolves() {
        let expected = [
            ("deepseek", "https://api.deepseek.com"),
            ("mistral", "https://api.mistral.ai/v1"),
            ("groq", "https://api.groq.com/openai/v1"),
            ("together", "https://api.together.xyz/v1"),
            ("openrouter", "https://openrouter.ai/api/v1"),
            ("huggingface", "https://router.huggingface.co/v1"),
            ("ollama", "http://localhost:11434/v1"),
            ("vllm", "http://localhost:8000/v1"),
        ];
        for (name, url) in expected {
            assert_eq!(preset_base_url(name), Some(url), "{name}");
        }
        assert_eq!(PRESETS.len(), expected.len());
    }

    #[test]
    fn names_are_forgiving_but_unknown_is_none() {
        assert_eq!(
            preset_base_url(" Groq "),
            Some("https://api.groq.com/openai/v1")
        );
        assert_eq!(
            preset_base_url("HF"),
            Some("https://router.huggingface.co/v1")
        );
        assert_eq!(
            preset_base_url("togetherai"),
            Some("https://api.together.xyz/v1")
        );
        assert_eq!(preset_base_url("openai"), None);
        assert_eq!(preset_base_url(""), None);
    }

    #[test]
    fn roots_end_before_chat_completions() {
        for preset in PRESETS {
            assert!(!preset.base_url.ends_with('/'), "{}", preset.name);
            assert!(
                !preset.base_url.contains("chat/completions"),
                "{}",
                preset.name
            );
            assert!(preset.base_url.starts_with("http"), "{}", preset.name);
        }
    }
}
