//! Rules on free text that requests carry, each with the JSON Schema pattern
//! that states it exactly (the API document is generated from these).

/// Unicode `White_Space`: what `char::is_whitespace` is true for and
/// `str::trim` removes, as inclusive ranges.
const WHITE_SPACE: [(char, char); 10] = [
    ('\u{9}', '\u{d}'),
    (' ', ' '),
    ('\u{85}', '\u{85}'),
    ('\u{a0}', '\u{a0}'),
    ('\u{1680}', '\u{1680}'),
    ('\u{2000}', '\u{200a}'),
    ('\u{2028}', '\u{2029}'),
    ('\u{202f}', '\u{202f}'),
    ('\u{205f}', '\u{205f}'),
    ('\u{3000}', '\u{3000}'),
];

/// Text that is not blank contains a character outside `WHITE_SPACE`. The
/// class is spelled out because `\s` means different things in ECMA-262,
/// Python and Rust.
pub const NOT_BLANK_PATTERN: &str =
    r"[^\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]";

/// A string schema for text that must not be blank, of at most `max_len`
/// (bytes, stated as characters: the closest JSON Schema has).
pub fn not_blank_schema(
    max_len: Option<usize>,
    description: &str,
) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(max_len)
        .pattern(Some(NOT_BLANK_PATTERN))
        .description(Some(description))
        .build()
}

fn is_white_space(c: char) -> bool {
    WHITE_SPACE.iter().any(|&(lo, hi)| lo <= c && c <= hi)
}

/// Empty or only white space (Unicode `White_Space`, as `str::trim` removes).
pub fn is_blank(text: &str) -> bool {
    text.chars().all(is_white_space)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_white_space_table_is_char_is_whitespace() {
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            assert_eq!(c.is_whitespace(), is_white_space(c), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn the_pattern_is_the_table() {
        let escape = |c: char| match c {
            '\t' => r"\t".to_owned(),
            '\r' => r"\r".to_owned(),
            ' ' => " ".to_owned(),
            c if (c as u32) < 0x100 => format!(r"\x{:02X}", c as u32),
            c => format!(r"\u{:04X}", c as u32),
        };
        let class: String = WHITE_SPACE
            .iter()
            .map(|&(lo, hi)| match hi as u32 - lo as u32 {
                0 => escape(lo),
                1 => format!("{}{}", escape(lo), escape(hi)),
                _ => format!("{}-{}", escape(lo), escape(hi)),
            })
            .collect();
        assert_eq!(NOT_BLANK_PATTERN, format!("[^{class}]"));
    }

    #[test]
    fn blank_is_only_white_space() {
        assert!(is_blank(""));
        assert!(is_blank(" \t\r\n\u{3000}"));
        assert!(!is_blank(" x "));
        // Not White_Space, though some regex engines' `\s` says so.
        assert!(!is_blank("\u{1c}"));
        assert!(!is_blank("\u{feff}"));
    }
}

/// Deserializes a struct only from an object (a map), never from an array
/// of its fields, which serde's derive also reads: no client sending
/// `[null, null]` means a struct. Works for any self-describing format (the
/// stored items too).
pub fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Object<T>(std::marker::PhantomData<T>);

    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
        type Value = T;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }

    deserializer.deserialize_map(Object(std::marker::PhantomData))
}

/// As [`object`], for an optional struct: `null` is none.
pub fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Optional<T>(std::marker::PhantomData<T>);

    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Optional<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object or null")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
            object(d).map(Some)
        }
    }

    deserializer.deserialize_option(Optional(std::marker::PhantomData))
}

#[cfg(test)]
mod object_tests {
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct Inner {
        #[serde(default)]
        a: Option<u32>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Outer {
        #[serde(default, deserialize_with = "super::object")]
        inner: Inner,
        #[serde(default, deserialize_with = "super::optional_object")]
        maybe: Option<Inner>,
    }

    #[test]
    fn structs_come_only_from_objects() {
        let ok: Outer = serde_json::from_str(r#"{"inner": {"a": 1}, "maybe": null}"#).unwrap();
        assert_eq!(ok.inner.a, Some(1));
        assert_eq!(ok.maybe, None);
        let some: Outer = serde_json::from_str(r#"{"maybe": {}}"#).unwrap();
        assert_eq!(some.maybe, Some(Inner::default()));
        // serde's derive alone reads a struct from an array of its fields.
        assert!(serde_json::from_str::<Inner>("[null]").is_ok());
        for bad in [
            r#"{"inner": [null]}"#,
            r#"{"maybe": [null]}"#,
            r#"{"inner": 1}"#,
        ] {
            assert!(serde_json::from_str::<Outer>(bad).is_err(), "{bad}");
        }
    }
}
