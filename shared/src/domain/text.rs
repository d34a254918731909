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
