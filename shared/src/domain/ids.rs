//! Identifiers. Each one parses once at the edge and is valid from then on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::Ulid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} must be at most {max} characters")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} may contain only letters, digits, '-', '_' and '.'")]
    BadCharacter { kind: &'static str },
    #[error("{kind} is not a valid ULID")]
    NotUlid { kind: &'static str },
}

/// Checks a human-chosen name: it becomes part of DynamoDB keys, where `#`
/// separates segments, so only a safe alphabet is allowed.
fn check_name(kind: &'static str, value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > max {
        return Err(IdError::TooLong { kind, max });
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(IdError::BadCharacter { kind });
    }
    Ok(())
}

/// `check_name`'s alphabet as a JSON Schema pattern; the length is separate.
const NAME_PATTERN: &str = "^[A-Za-z0-9._-]+$";

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_name($kind, &value, $max)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                string_schema(
                    NAME_PATTERN,
                    $max,
                    concat!("The ", $kind, ": 1 to ", $max, " of letters, digits, '-', '_' and '.'"),
                )
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

/// A string schema with a pattern, a length from 1 to `max` and a description.
fn string_schema(
    pattern: &str,
    max: usize,
    description: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .min_length(Some(1))
        .max_length(Some(max))
        .description(Some(description))
        .into()
}

name_id!(
    /// The tenant every key starts with; one tenant can never address another's items.
    TenantId, "tenant", 64
);
name_id!(
    /// An agent in the registry (`gpt-mini`, `claude-haiku`, ...).
    AgentId, "agent id", 64
);

/// A client-chosen idempotency key: any printable ASCII, bounded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
        let kind = "idempotency key";
        let value = value.into();
        if value.is_empty() {
            return Err(IdError::Empty { kind });
        }
        if value.len() > Self::MAX_LEN {
            return Err(IdError::TooLong {
                kind,
                max: Self::MAX_LEN,
            });
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(IdError::BadCharacter { kind });
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for IdempotencyKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for IdempotencyKey {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        // `!` to `~`: printable ASCII without the space.
        string_schema(
            "^[!-~]+$",
            Self::MAX_LEN,
            "Makes a retry return the first task instead of creating another: \
             1 to 255 printable ASCII characters, no spaces",
        )
    }
}

impl utoipa::ToSchema for IdempotencyKey {}

/// A ULID as this API writes it: 26 upper-case Crockford base32 characters,
/// the first at most `7` (128 bits).
const ULID_PATTERN: &str = "^[0-7][0-9A-HJKMNP-TV-Z]{25}$";

macro_rules! ulid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Ulid);

        impl $name {
            /// A new id; ULIDs sort by creation time, which listing relies on.
            pub fn new() -> Self {
                Self(Ulid::new())
            }

            pub fn from_ulid(ulid: Ulid) -> Self {
                Self(ulid)
            }

            pub fn as_ulid(&self) -> Ulid {
                self.0
            }

            /// Only the canonical spelling, the one this API writes: the
            /// decoder also takes lower case, and drops the bits of a first
            /// character above `7`, which would make two strings one id.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                Ulid::from_string(value)
                    .ok()
                    .filter(|ulid| ulid.to_string() == value)
                    .map(Self)
                    .ok_or(IdError::NotUlid { kind: $kind })
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::schema::{ObjectBuilder, Type};
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(ULID_PATTERN))
                    .description(Some(concat!("The ", $kind, ": a ULID")))
                    .examples(["01JD8X3F6ZQ8Y2W0K4J6M9N1PB"])
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

ulid_id!(
    /// A task.
    TaskId, "task id"
);
ulid_id!(
    /// One call of one agent for one task.
    CallId, "call id"
);
ulid_id!(
    /// A workflow (a DAG of steps).
    WorkflowId, "workflow id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_refuses_key_separator_and_empty() {
        assert!(TenantId::parse("acme-prod").is_ok());
        assert_eq!(
            TenantId::parse("a#b"),
            Err(IdError::BadCharacter { kind: "tenant" })
        );
        assert_eq!(TenantId::parse(""), Err(IdError::Empty { kind: "tenant" }));
        assert!(matches!(
            TenantId::parse("x".repeat(65)),
            Err(IdError::TooLong { .. })
        ));
    }

    #[test]
    fn ids_round_trip_through_json() {
        let id = TaskId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<TaskId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<TaskId>("\"nope\"").is_err());
        assert!(serde_json::from_str::<AgentId>("\"bad id\"").is_err());
    }

    #[test]
    fn a_ulid_parses_only_as_written() {
        let id = TaskId::new();
        let text = id.to_string();
        assert_eq!(TaskId::parse(&text), Ok(id));
        // The decoder would take these, and the last is another id's alias.
        assert!(TaskId::parse(&text.to_lowercase()).is_err());
        assert!(TaskId::parse(&format!("8{}", &text[1..])).is_err());
        assert!(TaskId::parse("ZZZZZZZZZZZZZZZZZZZZZZZZZZ").is_err());
    }

    #[test]
    fn task_ids_sort_by_creation() {
        let a = TaskId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = TaskId::new();
        assert!(a.to_string() < b.to_string());
    }

    #[test]
    fn idempotency_key_is_printable_and_bounded() {
        assert!(IdempotencyKey::parse("order-42/retry").is_ok());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse("k".repeat(256)).is_err());
    }
}
