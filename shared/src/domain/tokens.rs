//! Estimating tokens before a call: what rate limits charge at intake.
//!
//! The agent is not chosen yet at intake, so no model's tokenizer applies:
//! the estimate is the documented ratio of about four characters per token
//! (OpenAI's rule of thumb for English; CJK text and code run denser, so
//! this errs low for them). Routing and budgets, which know the model, are
//! where a model's own tokenizer belongs.

/// Characters per token, rounded as the estimate is: up.
pub const CHARS_PER_TOKEN: u64 = 4;

/// About how many tokens `text` is.
pub fn estimate(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(CHARS_PER_TOKEN)
}

/// The input tokens a task's calls send: its content and system prompt,
/// once per call it asks for.
pub fn task_input(content: &str, system: Option<&str>, calls: u32) -> u64 {
    (estimate(content) + system.map_or(0, estimate)) * u64::from(calls.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
