//! Estimating tokens before a call: what rate limits charge at intake, and
//! what a known agent's input will count.
//!
//! At intake the agent is not chosen yet, so no model's tokenizer applies:
//! [`estimate`] is the documented ratio of about four characters per token
//! (OpenAI's rule of thumb for English; CJK text and code run denser, so it
//! errs low for them).
//!
//! Once the agent is known, [`estimate_for`] counts with the model's own
//! tokenizer where that tokenizer is public:
//!
//! | models (provider `openai` or `openai_compatible`) | tokenizer |
//! |---|---|
//! | `gpt-4o`, `gpt-4.1`, `gpt-4.5`, `gpt-5`, `o1`, `o3`, `o4`, `gpt-oss` (and their dated or sized names) | `o200k_base` |
//! | `gpt-4`, `gpt-4-turbo`, `gpt-3.5-turbo` (Azure's `gpt-35-turbo` too) | `cl100k_base` |
//!
//! A name may carry a router's `openai/` prefix or a fine-tune's `ft:`.
//! Counting is `tiktoken`'s ordinary encoding (special tokens are text), the
//! tokens of the text alone: a chat request adds a few tokens per message
//! that no text shows. Each tokenizer is built once per process, on first
//! use (about 130 ms for `o200k_base`, 50 ms for `cl100k_base`, optimised).
//!
//! Every other model (Anthropic's, Gemini's, Bedrock's, Hugging Face's, an
//! unknown name) gets the ratio: their tokenizers are not published (Claude,
//! Gemini) or are one per model and too large to ship in every function.
//!
//! The text is encoded in pieces cut before a space that follows a visible
//! character, a place where OpenAI's split patterns always cut, so the count
//! is the same as the whole text's. A stretch longer than
//! [`MAX_EXACT_RUN_BYTES`] with no such place (a base64 blob, a million
//! spaces) gets the ratio instead: the tokenizer's backtracking regex can
//! fail on such a run (`tiktoken-rs` then panics) and its cost grows faster
//! than its length.

use std::ops::Range;

use tiktoken_rs::CoreBPE;

use super::agent::{Agent, Provider};

/// Characters per token, rounded as the estimate is: up.
pub const CHARS_PER_TOKEN: u64 = 4;

/// The longest stretch without a cut that is encoded exactly: well below
/// where `o200k_base` fails (a run of spaces between 256 KiB and 1 MiB), and
/// a few milliseconds to encode at worst.
pub const MAX_EXACT_RUN_BYTES: usize = 64 * 1024;

/// About how many tokens `text` is.
pub fn estimate(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(CHARS_PER_TOKEN)
}

/// The input tokens a task's calls send: its content and system prompt,
/// once per call it asks for.
pub fn task_input(content: &str, system: Option<&str>, calls: u32) -> u64 {
    (estimate(content) + system.map_or(0, estimate)) * u64::from(calls.max(1))
}

/// How many tokens `text` is for `agent`'s model: exact for OpenAI's models,
/// the ratio of [`estimate`] for the others.
pub fn estimate_for(agent: &Agent, text: &str) -> u64 {
    match Tokenizer::for_model(agent.spec.provider, &agent.spec.model) {
        Some(tokenizer) => count(tokenizer.bpe(), text),
        None => estimate(text),
    }
}

/// The public tokenizers of OpenAI's current models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tokenizer {
    O200kBase,
    Cl100kBase,
}

impl Tokenizer {
    /// The tokenizer of an OpenAI model served by `provider`, from the name's
    /// family (as `tiktoken`'s model table maps it); `None` for other models.
    fn for_model(provider: Provider, model: &str) -> Option<Tokenizer> {
        if !matches!(provider, Provider::Openai | Provider::OpenaiCompatible) {
            return None;
        }
        let model = model.trim().to_ascii_lowercase();
        let model = model.strip_prefix("openai/").unwrap_or(&model);
        // `ft:gpt-4o-mini-2024-07-18:org::id` is tokenized as its base model.
        let model = match model.strip_prefix("ft:") {
            Some(rest) => rest.split(':').next().unwrap_or(rest),
            None => model,
        };
        // `name` itself, or a dated or sized variant of it (`gpt-4-turbo`),
        // but not another family (`gpt-4o` is not `gpt-4`).
        let family = |name: &str| {
            model
                .strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
        };
        let o200k = [
            "gpt-4o",
            "chatgpt-4o",
            "gpt-4.1",
            "gpt-4.5",
            "o1",
            "o3",
            "o4",
        ];
        // Every `gpt-5` (`gpt-5.1`, `gpt-5-mini`), as tiktoken maps them.
        let newer = ["gpt-5", "gpt-oss-"];
        if o200k.into_iter().any(family) || newer.iter().any(|p| model.starts_with(p)) {
            Some(Tokenizer::O200kBase)
        } else if ["gpt-4", "gpt-3.5", "gpt-35"].into_iter().any(family) {
            Some(Tokenizer::Cl100kBase)
        } else {
            None
        }
    }

    /// The tokenizer, built on first use and kept for the process.
    fn bpe(self) -> &'static CoreBPE {
        match self {
            Tokenizer::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Tokenizer::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        }
    }
}

/// The tokens of `text` in `bpe`: the cut-free stretches encoded together
/// up to [`MAX_EXACT_RUN_BYTES`], a longer stretch estimated by the ratio.
fn count(bpe: &CoreBPE, text: &str) -> u64 {
    let encoded = |range: Range<usize>| bpe.encode_ordinary(&text[range]).len() as u64;
    let mut total = 0;
    // The stretches not yet encoded: `pending.start..` up to the current one.
    let mut pending = 0..0;
    for run in runs(text) {
        if run.len() > MAX_EXACT_RUN_BYTES {
            total += encoded(pending) + estimate(&text[run.clone()]);
            pending = run.end..run.end;
        } else if run.end - pending.start > MAX_EXACT_RUN_BYTES {
            total += encoded(pending);
            pending = run;
        } else {
            pending.end = run.end;
        }
    }
    total + encoded(pending)
}

/// `text` cut before every space (U+0020) that follows a character other
/// than white space. No piece of `o200k_base`'s or `cl100k_base`'s split
/// crosses such a place: their pieces hold white space only at their start
/// (one space or other blank before a word or punctuation) or as a run of
/// white space alone, and the newlines that may end punctuation are not
/// spaces; nor do the patterns look behind. So the parts encode to exactly
/// the tokens of the whole.
fn runs(text: &str) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut after_white_space = true;
    let cuts = text.char_indices().filter_map(move |(at, c)| {
        let cut = c == ' ' && !after_white_space;
        after_white_space = c.is_whitespace();
        cut.then_some(at)
    });
    let mut start = 0;
    cuts.chain(std::iter::once(text.len()))
        .filter(|&end| end > 0)
        .map(move |end| {
            let run = start..end;
            start = end;
            run
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::{AgentId, AgentSpec, Owner};

    fn agent(provider: &str, model: &str) -> Agent {
        let spec: AgentSpec = serde_json::from_value(json!({
            "name": "a", "provider": provider, "model": model,
            "base_url": "https://models.example.com/v1",
            "secret": "maof/test", "capabilities": ["text"]
        }))
        .unwrap();
        Agent {
            id: AgentId::parse("a").unwrap(),
            owner: Owner::Platform,
            spec,
            version: 1,
        }
    }

    fn whole(tokenizer: Tokenizer, text: &str) -> u64 {
        tokenizer.bpe().encode_ordinary(text).len() as u64
    }

    /// Text with the split patterns' corners: contractions, numbers,
    /// punctuation before newlines, runs of blanks, tabs, CJK, emoji, code.
    const MIXED: &str = "I'm here, you're there: it's 12345 o'clock.\n\n  Indented  twice\t\ttabs \
        and \u{3000}ideographic space; 漢字とかな, emoji 🦀🦀 and café.\r\n\
        fn main() {\n    let x = vec![1, 2, 3]; // comment\n}\n\
        https://example.com/a/b?c=d&e=f  ...!!!   \n   trailing   ";

    #[test]
    fn four_characters_make_about_a_token_rounded_up() {
        assert_eq!(estimate(""), 0);
        assert_eq!(estimate("abcd"), 1);
        assert_eq!(estimate("abcde"), 2);
        // Characters, not bytes: "é" is one.
        assert_eq!(estimate("éééé"), 1);
        assert_eq!(task_input("abcdefgh", Some("sys"), 3), 9);
        assert_eq!(task_input("abcd", None, 0), 1);
    }

    #[test]
    fn openai_models_count_as_tiktoken_does() {
        // Counts tiktoken gives for these strings.
        let gpt_4o = agent("openai", "gpt-4o-mini");
        assert_eq!(estimate_for(&gpt_4o, "hello world"), 2);
        assert_eq!(estimate_for(&gpt_4o, ""), 0);
        assert_eq!(estimate_for(&gpt_4o, "tiktoken is great!"), 6);
        let gpt_4 = agent("openai", "gpt-4");
        assert_eq!(estimate_for(&gpt_4, "hello world"), 2);
        assert_eq!(estimate_for(&gpt_4, "tiktoken is great!"), 6);
        // The two vocabularies part on CJK: one token a character in
        // o200k_base, two for 漢 in cl100k_base.
        assert_eq!(estimate_for(&gpt_4o, "漢漢漢"), 3);
        assert_eq!(estimate_for(&gpt_4, "漢漢漢"), 6);
        // The ratio would say 5 for "hello world", 1 for "漢漢漢".
        assert_eq!(estimate("hello world"), 3);
    }

    #[test]
    fn other_models_use_the_ratio() {
        for (provider, model) in [
            ("anthropic", "claude-sonnet-4-5"),
            ("gemini", "gemini-2.5-flash"),
            ("openai_compatible", "llama-3.3-70b-versatile"),
            ("openai", "whisper-1"),
            ("openai", "dall-e-3"),
            // An OpenAI name at a provider that does not serve OpenAI's models.
            ("mock", "gpt-4o"),
        ] {
            let agent = agent(provider, model);
            assert_eq!(estimate_for(&agent, "hello world"), 3, "{provider} {model}");
        }
    }

    #[test]
    fn models_map_to_their_family_s_tokenizer() {
        use Provider::{Openai, OpenaiCompatible};
        use Tokenizer::{Cl100kBase, O200kBase};
        for (model, tokenizer) in [
            ("gpt-4o", Some(O200kBase)),
            ("gpt-4o-2024-08-06", Some(O200kBase)),
            ("chatgpt-4o-latest", Some(O200kBase)),
            ("gpt-4.1-nano", Some(O200kBase)),
            ("gpt-5", Some(O200kBase)),
            ("gpt-5.1-codex", Some(O200kBase)),
            ("o1", Some(O200kBase)),
            ("o3-mini", Some(O200kBase)),
            ("o4-mini-2025-04-16", Some(O200kBase)),
            ("GPT-4o", Some(O200kBase)),
            ("openai/gpt-4.1", Some(O200kBase)),
            ("openai/gpt-oss-120b", Some(O200kBase)),
            ("ft:gpt-4o-mini-2024-07-18:acme::9abc", Some(O200kBase)),
            ("gpt-4", Some(Cl100kBase)),
            ("gpt-4-turbo", Some(Cl100kBase)),
            ("gpt-4-0613", Some(Cl100kBase)),
            ("gpt-3.5-turbo", Some(Cl100kBase)),
            ("gpt-35-turbo", Some(Cl100kBase)),
            ("ft:gpt-3.5-turbo-0125:acme::8xyz", Some(Cl100kBase)),
            ("gpt-4x", None),
            ("gpt-4.2", None),
            ("o10", None),
            ("omni-moderation-latest", None),
            ("gpt-image-1", None),
            ("text-embedding-3-small", None),
            ("llama-3.1-8b", None),
        ] {
            assert_eq!(Tokenizer::for_model(Openai, model), tokenizer, "{model}");
            assert_eq!(
                Tokenizer::for_model(OpenaiCompatible, model),
                tokenizer,
                "{model}"
            );
        }
        assert_eq!(Tokenizer::for_model(Provider::Huggingface, "gpt-4o"), None);
        assert_eq!(Tokenizer::for_model(Provider::Bedrock, "gpt-4o"), None);
    }

    #[test]
    fn the_runs_encode_to_the_tokens_of_the_whole() {
        // A deterministic stream of the characters the cuts depend on.
        let alphabet = [
            " ", " ", " ", "a", "B", "7", ".", "!", "\n", "\r", "\t", "'", "s", "é", "漢",
            "\u{3000}", "\u{85}", "/", "🦀", "\u{301}",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut texts = vec![MIXED.to_owned(), " leading".into(), "  two".into()];
        for _ in 0..300 {
            let mut text = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            for _ in 0..(seed % 40) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            texts.push(text);
        }
        for tokenizer in [Tokenizer::O200kBase, Tokenizer::Cl100kBase] {
            for text in &texts {
                let by_runs: u64 = runs(text).map(|r| whole(tokenizer, &text[r])).sum();
                assert_eq!(by_runs, whole(tokenizer, text), "{tokenizer:?} {text:?}");
            }
        }
        let pieces: Vec<&str> = runs("a  b c").map(|r| &"a  b c"[r]).collect();
        assert_eq!(pieces, ["a", "  b", " c"]);
        assert_eq!(runs("").count(), 0);
    }

    #[test]
    fn long_text_is_exact_and_a_long_unbroken_run_gets_the_ratio() {
        let gpt_4o = agent("openai", "gpt-4o");
        // Longer than one encoded stretch: encoded in several, same count.
        let long = MIXED.repeat(MAX_EXACT_RUN_BYTES / MIXED.len() + 2);
        assert_eq!(
            estimate_for(&gpt_4o, &long),
            whole(Tokenizer::O200kBase, &long)
        );
        // A million spaces would fail the tokenizer; the ratio counts them.
        let spaces = " ".repeat(1024 * 1024);
        assert_eq!(estimate_for(&gpt_4o, &spaces), 256 * 1024);
        let blob = format!("hello world {}", "A".repeat(MAX_EXACT_RUN_BYTES + 3));
        assert_eq!(
            estimate_for(&gpt_4o, &blob),
            2 + estimate(&format!(" {}", "A".repeat(MAX_EXACT_RUN_BYTES + 3)))
        );
    }
}
