//! The kind of work a task asks for, and an agent offers: one rule for both,
//! so that every capability an agent registers is one a task can ask for.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a task type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TaskTypeError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {} characters", TaskType::MAX_LEN)]
    TooLong,
    #[error("must be a lower-case word of a-z, 0-9 and '_', such as `text` or `code`")]
    BadCharacter,
}

/// A task type (`text`, `code`, `image`, ...): 1 to 32 of `a-z`, `0-9`, `_`.
/// It is both what a task asks for (`task_type`) and what an agent offers
/// (`capabilities`); routing matches them exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskType(Cow<'static, str>);

/// The rule, usable in `const` context so that a task type named in code is
/// checked when it compiles.
const fn check(value: &str) -> Result<(), TaskTypeError> {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err(TaskTypeError::Empty);
    }
    if bytes.len() > TaskType::MAX_LEN {
        return Err(TaskTypeError::TooLong);
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(TaskTypeError::BadCharacter);
        }
        i += 1;
    }
    Ok(())
}

impl TaskType {
    pub const MAX_LEN: usize = 32;
    /// The rule as a JSON Schema (ECMA-262) pattern; with `MAX_LEN` it is the
    /// whole of it.
    pub const PATTERN: &'static str = "^[a-z0-9_]+$";
    /// Image generation: answered with the images' URLs, priced per image.
    pub const IMAGE: TaskType = TaskType::from_static("image");
    /// Audio transcription: priced per minute of audio.
    pub const TRANSCRIPTION: TaskType = TaskType::from_static("transcription");

    pub fn parse(value: impl Into<String>) -> Result<Self, TaskTypeError> {
        let value = value.into();
        check(&value)?;
        Ok(TaskType(Cow::Owned(value)))
    }

    /// A task type written in code: `const IMAGE: TaskType =
    /// TaskType::from_static("image");` fails to compile if the name breaks
    /// the rule (and panics if called at run time with such a name).
    pub const fn from_static(value: &'static str) -> Self {
        if check(value).is_err() {
            panic!("not a task type: a-z, 0-9 and '_', 1 to 32 characters");
        }
        TaskType(Cow::Borrowed(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TaskType {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TaskType {
    type Err = TaskTypeError;
    fn from_str(s: &str) -> Result<Self, TaskTypeError> {
        Self::parse(s)
    }
}

impl PartialEq<str> for TaskType {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for TaskType {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl Serialize for TaskType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TaskType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(raw).map_err(|e| serde::de::Error::custom(format_args!("task type {e}")))
    }
}

impl utoipa::PartialSchema for TaskType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(Self::PATTERN))
            .min_length(Some(1))
            .max_length(Some(Self::MAX_LEN))
            .description(Some(
                "A task type: what a task asks for and an agent offers (`text`, `code`, \
                 `analysis`, `image`, ...). 1 to 32 of a-z, 0-9 and '_'.",
            ))
            .examples(["text"])
            .into()
    }
}

impl utoipa::ToSchema for TaskType {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for ok in ["text", "code", "a", "image_2", "x".repeat(32).as_str()] {
            assert_eq!(TaskType::parse(ok).unwrap().as_str(), ok);
        }
        assert_eq!(TaskType::parse(""), Err(TaskTypeError::Empty));
        assert_eq!(TaskType::parse("x".repeat(33)), Err(TaskTypeError::TooLong));
        for bad in ["code-review", "Text", " text", "text ", "tëxt", "a.b"] {
            assert_eq!(
                TaskType::parse(bad),
                Err(TaskTypeError::BadCharacter),
                "{bad}"
            );
        }
    }

    #[test]
    fn serde_goes_through_parse() {
        let t: TaskType = serde_json::from_str("\"analysis\"").unwrap();
        assert_eq!(t, "analysis");
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"analysis\"");
        let err = serde_json::from_str::<TaskType>("\"code-review\"").unwrap_err();
        assert!(err.to_string().contains("lower-case word"), "{err}");
    }

    #[test]
    fn a_static_task_type_equals_a_parsed_one() {
        const IMAGE: TaskType = TaskType::from_static("image");
        assert_eq!(IMAGE, TaskType::parse("image").unwrap());
        assert_eq!(IMAGE.to_string(), "image");
    }

    #[test]
    #[should_panic(expected = "not a task type")]
    fn a_static_task_type_that_breaks_the_rule_panics() {
        let _ = TaskType::from_static("Code-Review");
    }

    #[test]
    fn the_pattern_says_the_same_as_the_rule() {
        // No regex engine here: the pattern is one character class with `+`,
        // so it holds exactly when every byte is in the class.
        assert_eq!(TaskType::PATTERN, "^[a-z0-9_]+$");
        for b in 0u8..=127 {
            let in_class = b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
            let s = (b as char).to_string();
            assert_eq!(TaskType::parse(s.clone()).is_ok(), in_class, "{s:?}");
        }
    }
}
