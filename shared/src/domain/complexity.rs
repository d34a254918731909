//! How hard a task looks, from its content and task type alone: the tier
//! the `tiered` routing strategy starts at. Pure and cheap (no model is
//! asked), so it is a heuristic; an answer that shows the tier was too low
//! (it fails, comes back empty, or is cut off by `max_tokens`) escalates to
//! the next tier (see `stages::agent_call`).
//!
//! The score adds points for each sign of work:
//!
//! | sign | points |
//! |---|---|
//! | input (content and system prompt, [`tokens::estimate`]) of 1,000 tokens or more | 1 |
//! | input of 8,000 tokens or more | 1 more |
//! | task type `code`, `analysis`, `reasoning` or `math` | 1 |
//! | a fenced code block (```) in the content | 1 |
//! | each distinct marker of multi-step reasoning ([`MARKERS`], case-insensitive) | 1, at most 3 |
//! | three question marks or more (several questions at once) | 1 |
//!
//! and the tier needed is 1 for a score of 0 or 1, 2 for 2 or 3, and 3 for
//! 4 or more ([`Complexity::tier`]). So a short question or a
//! classification is tier 1; a code task with a code block, or a text task
//! that asks to prove something step by step, tier 2; a long analysis that
//! asks to derive and compare, tier 3.

use super::task::TaskSpec;
use super::task_type::TaskType;
use super::tokens;

/// Phrases that ask for several steps of reasoning (matched lowercase,
/// anywhere in the content).
pub const MARKERS: [&str; 14] = [
    "prove",
    "step by step",
    "step-by-step",
    "derive",
    "explain why",
    "trade-off",
    "tradeoff",
    "compare",
    "design a",
    "optimize",
    "debug",
    "refactor",
    "algorithm",
    "edge case",
];

/// Task types whose work is harder than rewriting or labelling text.
pub const HARD_TASK_TYPES: [&str; 4] = ["code", "analysis", "reasoning", "math"];

/// Input at or above which a task is long (one point), and very long (two).
pub const LONG_INPUT_TOKENS: u64 = 1_000;
pub const VERY_LONG_INPUT_TOKENS: u64 = 8_000;

/// The most points the reasoning markers add together.
const MAX_MARKER_POINTS: u32 = 3;

/// The signs found in a task and its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Complexity {
    pub input_tokens: u64,
    pub hard_task_type: bool,
    pub code_block: bool,
    /// Distinct [`MARKERS`] found.
    pub markers: u32,
    pub questions: u32,
}

impl Complexity {
    /// Assesses a task's content and system prompt for its task type.
    pub fn of(task_type: &TaskType, content: &str, system: Option<&str>) -> Complexity {
        let lower = content.to_lowercase();
        Complexity {
            input_tokens: tokens::estimate(content) + system.map_or(0, tokens::estimate),
            hard_task_type: HARD_TASK_TYPES.contains(&task_type.as_str()),
            code_block: content.contains("```"),
            markers: MARKERS.iter().filter(|m| lower.contains(*m)).count() as u32,
            questions: content.matches('?').count() as u32,
        }
    }

    /// [`Complexity::of`] a task.
    pub fn of_task(spec: &TaskSpec) -> Complexity {
        Complexity::of(&spec.task_type, &spec.content, spec.system.as_deref())
    }

    /// The points (see the module's table).
    pub fn score(&self) -> u32 {
        u32::from(self.input_tokens >= LONG_INPUT_TOKENS)
            + u32::from(self.input_tokens >= VERY_LONG_INPUT_TOKENS)
            + u32::from(self.hard_task_type)
            + u32::from(self.code_block)
            + self.markers.min(MAX_MARKER_POINTS)
            + u32::from(self.questions >= 3)
    }

    /// The lowest tier expected to handle the task: 1, 2 or 3.
    pub fn tier(&self) -> u8 {
        match self.score() {
            0 | 1 => 1,
            2 | 3 => 2,
            _ => 3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heuristic_on_a_table_of_tasks() {
        let code_block = "Why does this panic?\n```rust\nlet v: Vec<u8> = vec![];\nv[0];\n```";
        let long = "word ".repeat(1_000); // 5,000 characters: 1,250 tokens
        let very_long = "word ".repeat(8_000); // 10,000 tokens
        // (task type, content, system, score, tier)
        let table: [(&str, &str, Option<&str>, u32, u8); 14] = [
            ("text", "Translate 'good morning' into French.", None, 0, 1),
            (
                "classification",
                "Is this review positive: I love it",
                None,
                0,
                1,
            ),
            (
                "text",
                "Summarize: the meeting moved to Tuesday.",
                None,
                0,
                1,
            ),
            // One sign alone stays at tier 1.
            ("code", "Write hello world in Python.", None, 1, 1),
            ("text", "Compare tea and coffee.", None, 1, 1),
            ("text", "Who? What? Where?", None, 1, 1),
            // Two signs: tier 2.
            ("code", code_block, None, 2, 2),
            (
                "text",
                "Prove step by step that the square root of 2 is irrational.",
                None,
                2,
                2,
            ),
            ("analysis", &long, None, 2, 2),
            // The system prompt counts toward the input.
            ("text", "Go on.", Some(&long), 1, 1),
            ("text", &very_long, None, 2, 2),
            // Markers count once each, and at most three together.
            (
                "text",
                "Prove it, prove it again, step by step, derive, compare, explain why.",
                None,
                3,
                2,
            ),
            // Four signs or more: tier 3.
            (
                "analysis",
                "Derive the algorithm's cost, compare it with a heap, and explain why.",
                None,
                4,
                3,
            ),
            (
                "code",
                &format!("{code_block}\nDebug and refactor it; what edge case? why? how?"),
                None,
                6,
                3,
            ),
        ];
        for (task_type, content, system, score, tier) in table {
            let c = Complexity::of(&TaskType::parse(task_type).unwrap(), content, system);
            assert_eq!(
                (c.score(), c.tier()),
                (score, tier),
                "{task_type}: {content:.60} ({c:?})"
            );
        }
    }
}
