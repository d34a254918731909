//! PII detectors. Each kind is one regular expression that finds candidates
//! (with a bounded longest match, so a stream need only hold back that much)
//! and a check of each candidate (checksum, ranges, the characters around it).
//!
//! What counts, exactly (ASCII only; "alone" means not preceded or followed by
//! an ASCII letter, digit or `_`):
//!
//! - **email**: a local part of 1–64 of `A-Z a-z 0-9 . _ % + -` starting with a
//!   letter or digit, `@`, then 2–8 dot-separated labels (letters, digits,
//!   inner `-`, at most 63 each) of which the last is 2–24 letters; alone.
//! - **phone**: either `+`, a 1–3 digit country code, an optional area code in
//!   parentheses, then digits each separated by at most one space, dot or
//!   dash, 7–15 digits in all, not preceded by a letter or digit; or a North
//!   American number: `(NPA) NXX-XXXX` (the space after `)` optional, the last
//!   separator a space, dot or dash), or `NPA-NXX-XXXX` with one separator
//!   (space, dot or dash) used throughout and an optional leading `1`, where
//!   the area code NPA starts with 2–9. Ten digits without separators,
//!   and other national formats, are not phones.
//! - **card**: 13–19 digits that pass the Luhn check, either written
//!   together or as a group of 4 and 1–4 groups of 3–6 separated by one
//!   space or one dash throughout; alone. When more groups follow, the
//!   longest leading run of groups that is a card counts.
//! - **iban**: two capital letters, two check digits and 11–30 capitals or
//!   digits, written together or in groups of four separated by single
//!   spaces; alone; valid for its country (length and format) with a correct
//!   mod-97 checksum, checked by the `iban_validate` crate.
//! - **ssn**: `AAA-GG-SSSS` alone, where the area AAA is not 000, 666 or
//!   900–999, the group GG not 00 and the serial SSSS not 0000.
//! - **ip**: IPv4 as four dot-separated numbers of 1–3 digits, each at most
//!   255, alone and not part of a longer dotted run of numbers (`1.2.3.4.5`
//!   is no address); or IPv6 as `std::net::Ipv6Addr` parses it (embedded IPv4
//!   included), with at least two colons and at least one digit 0–9, not
//!   preceded by a letter, digit, `_`, `:` or `.`, nor followed by a letter,
//!   digit, `_` or `:` (so `std::io` or `a::b` are not addresses).

use std::net::Ipv6Addr;
use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A kind of personal data the filters find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PiiKind {
    Email,
    Phone,
    Card,
    Iban,
    Ssn,
    Ip,
}

impl PiiKind {
    pub const ALL: [PiiKind; 6] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::Card,
        PiiKind::Iban,
        PiiKind::Ssn,
        PiiKind::Ip,
    ];

    /// The kind's position in `ALL`, for per-kind tables.
    pub(super) fn index(self) -> usize {
        self as usize
    }

    /// What replaces each match when the kind is redacted.
    pub fn placeholder(self) -> &'static str {
        match self {
            PiiKind::Email => "[EMAIL]",
            PiiKind::Phone => "[PHONE]",
            PiiKind::Card => "[CARD]",
            PiiKind::Iban => "[IBAN]",
            PiiKind::Ssn => "[SSN]",
            PiiKind::Ip => "[IP]",
        }
    }

    /// The name a block or a finding reports for this kind.
    pub fn rule_name(self) -> &'static str {
        match self {
            PiiKind::Email => "pii:email",
            PiiKind::Phone => "pii:phone",
            PiiKind::Card => "pii:card",
            PiiKind::Iban => "pii:iban",
            PiiKind::Ssn => "pii:ssn",
            PiiKind::Ip => "pii:ip",
        }
    }

    fn pattern(self) -> &'static str {
        match self {
            PiiKind::Email => EMAIL,
            PiiKind::Phone => PHONE,
            PiiKind::Card => CARD,
            PiiKind::Iban => IBAN,
            PiiKind::Ssn => SSN,
            PiiKind::Ip => IP,
        }
    }

    /// The part of a candidate `hay[raw]` that is this kind, if any. Reads at
    /// most one character either side of the candidate.
    fn accept(self, hay: &str, raw: Range<usize>) -> Option<Range<usize>> {
        let text = &hay[raw.clone()];
        let accepted_len = match self {
            PiiKind::Email => Some(text.len()),
            PiiKind::Phone => is_phone(text, char_before(hay, raw.start)).then_some(text.len()),
            PiiKind::Card => card_len(text),
            PiiKind::Iban => iban_len(text),
            PiiKind::Ssn => is_ssn(text).then_some(text.len()),
            PiiKind::Ip => is_ip(text, char_before(hay, raw.start), char_after(hay, raw.end))
                .then_some(text.len()),
        };
        accepted_len.map(|len| raw.start..raw.start + len)
    }
}

/// `\b` on ASCII word characters, so that text in scripts written without
/// spaces (`电话555-123-4567`) still has a boundary before the digits.
macro_rules! b {
    () => {
        r"(?-u:\b)"
    };
}

const EMAIL: &str = concat!(
    b!(),
    r"[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@",
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,7}[A-Za-z]{2,24}",
    b!(),
);

const PHONE: &str = concat!(
    // international: +CC, optional (area), digits with single separators
    r"\+[0-9]{1,3}(?:[ .-]?\([0-9]{1,4}\))?(?:[ .-]?[0-9]){4,14}",
    b!(),
    // North American: (NPA) NXX-XXXX
    r"|\([2-9][0-9]{2}\) ?[0-9]{3}[ .-][0-9]{4}",
    b!(),
    // North American: [1-]NPA-NXX-XXXX
    r"|",
    b!(),
    r"(?:1[ .-])?[2-9][0-9]{2}[ .-][0-9]{3}[ .-][0-9]{4}",
    b!(),
);

const CARD: &str = concat!(
    b!(),
    r"(?:[0-9]{4}(?:[ -][0-9]{3,6}){1,4}|[0-9]{13,19})",
    b!(),
);

const IBAN: &str = concat!(
    b!(),
    r"[A-Z]{2}[0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)",
    b!(),
);

const SSN: &str = concat!(b!(), r"[0-9]{3}-[0-9]{2}-[0-9]{4}", b!());

const IP: &str = concat!(
    // IPv6 (checked by Ipv6Addr), with an optional embedded IPv4 tail
    r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.[0-9]{1,3}){0,3}",
    // IPv4: up to eight dotted numbers, so that longer runs can be refused
    r"|",
    b!(),
    r"[0-9]{1,3}(?:\.[0-9]{1,3}){3,7}",
    b!(),
);

fn char_before(hay: &str, at: usize) -> Option<char> {
    hay[..at].chars().next_back()
}

fn char_after(hay: &str, at: usize) -> Option<char> {
    hay[at..].chars().next()
}

fn is_ascii_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn digit_count(text: &str) -> usize {
    text.bytes().filter(u8::is_ascii_digit).count()
}

/// The separators of a number written in groups (everything not a digit).
fn separators(text: &str) -> impl Iterator<Item = u8> + '_ {
    text.bytes().filter(|b| !b.is_ascii_digit())
}

fn is_phone(text: &str, before: Option<char>) -> bool {
    let alone = !before.is_some_and(|c| c.is_ascii_alphanumeric());
    if text.starts_with('+') {
        alone && (7..=15).contains(&digit_count(text))
    } else if text.starts_with('(') {
        alone
    } else {
        // the regex's leading \b already keeps it alone; one separator throughout
        let mut seps = separators(text);
        let first = seps.next();
        seps.all(|s| Some(s) == first)
    }
}

/// Luhn's check over ASCII digits, rightmost first.
fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(position, digit)| {
            let value = u32::from(digit - b'0');
            match position % 2 {
                0 => value,
                _ if value * 2 > 9 => value * 2 - 9,
                _ => value * 2,
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Where each group of a grouped number ends (exclusive), as long as the
/// separator stays the one between the first two groups.
fn group_ends(text: &str) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut separator = None;
    for (at, byte) in text.bytes().enumerate() {
        if byte.is_ascii_digit() || byte.is_ascii_uppercase() {
            continue;
        }
        if *separator.get_or_insert(byte) != byte {
            return ends;
        }
        ends.push(at);
    }
    ends.push(text.len());
    ends
}

/// The length of the card at the start of `text`: the longest run of whole
/// groups with 13–19 digits that passes Luhn.
fn card_len(text: &str) -> Option<usize> {
    group_ends(text).into_iter().rev().find(|&end| {
        let digits: Vec<u8> = text[..end].bytes().filter(u8::is_ascii_digit).collect();
        (13..=19).contains(&digits.len()) && luhn(&digits)
    })
}

/// The length of the IBAN at the start of `text`: the longest run of whole
/// groups that is a valid IBAN.
fn iban_len(text: &str) -> Option<usize> {
    group_ends(text)
        .into_iter()
        .rev()
        .find(|&end| text[..end].parse::<iban::Iban>().is_ok())
}

fn is_ssn(text: &str) -> bool {
    let mut parts = text.split('-');
    let (Some(area), Some(group), Some(serial)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

fn is_ip(text: &str, before: Option<char>, after: Option<char>) -> bool {
    if text.contains(':') {
        let alone_before = !before.is_some_and(|c| is_ascii_word(c) || c == ':' || c == '.');
        let alone_after = !after.is_some_and(|c| is_ascii_word(c) || c == ':');
        alone_before
            && alone_after
            && text.bytes().any(|b| b.is_ascii_digit())
            && text.parse::<Ipv6Addr>().is_ok()
    } else {
        let octets: Vec<&str> = text.split('.').collect();
        octets.len() == 4
            && octets
                .iter()
                .all(|octet| octet.parse::<u16>().is_ok_and(|value| value <= 255))
    }
}

/// One kind's compiled candidate regex and the longest text it can match.
#[derive(Debug)]
pub(super) struct Detector {
    pub kind: PiiKind,
    regex: Regex,
    pub max_len: usize,
}

/// A match of a detector: the candidate, and the part of it that is the kind.
pub(super) struct Candidate {
    pub raw: Range<usize>,
    pub accepted: Option<Range<usize>>,
}

impl Detector {
    fn build(kind: PiiKind) -> Result<Detector, String> {
        let pattern = kind.pattern();
        let max_len = regex_syntax::parse(pattern)
            .map_err(|error| format!("{}: {error}", kind.rule_name()))?
            .properties()
            .maximum_len()
            .ok_or_else(|| format!("{}: no longest match", kind.rule_name()))?;
        let regex =
            Regex::new(pattern).map_err(|error| format!("{}: {error}", kind.rule_name()))?;
        Ok(Detector {
            kind,
            regex,
            max_len,
        })
    }

    /// The leftmost candidate starting at or after `at` (the text before `at`
    /// is context), checked.
    pub fn find_at(&self, hay: &str, at: usize) -> Option<Candidate> {
        let found = self.regex.find_at(hay, at)?;
        Some(Candidate {
            raw: found.range(),
            accepted: self.kind.accept(hay, found.range()),
        })
    }
}

/// The detectors of all kinds, in `PiiKind::ALL` order, compiled once per
/// process. An error here is a bug in the constants above (a test compiles
/// them).
static DETECTORS: LazyLock<Result<Vec<Detector>, String>> =
    LazyLock::new(|| PiiKind::ALL.into_iter().map(Detector::build).collect());

pub(super) fn detector(kind: PiiKind) -> Result<&'static Detector, String> {
    match &*DETECTORS {
        Ok(all) => all
            .get(kind.index())
            .ok_or_else(|| format!("{}: no detector", kind.rule_name())),
        Err(error) => Err(error.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The accepted matches of `kind` in `text`, as text.
    fn found(kind: PiiKind, text: &str) -> Vec<String> {
        let detector = detector(kind).unwrap();
        let mut at = 0;
        let mut out = Vec::new();
        while let Some(candidate) = detector.find_at(text, at) {
            if let Some(accepted) = candidate.accepted {
                out.push(text[accepted].to_owned());
            }
            at = candidate.raw.end;
        }
        out
    }

    fn assert_finds(kind: PiiKind, text: &str, expected: &str) {
        assert_eq!(found(kind, text), [expected], "{kind:?} in {text:?}");
    }

    fn assert_none(kind: PiiKind, text: &str) {
        assert_eq!(
            found(kind, text),
            Vec::<String>::new(),
            "{kind:?} in {text:?}"
        );
    }

    #[test]
    fn every_detector_compiles_with_a_bounded_longest_match() {
        for kind in PiiKind::ALL {
            let detector = detector(kind).unwrap();
            assert_eq!(detector.kind, kind);
            assert!(detector.max_len <= 700, "{kind:?}: {}", detector.max_len);
        }
    }

    #[test]
    fn emails() {
        for email in [
            "jane.doe@example.com",
            "j+tag@mail.example.co.uk",
            "x_1%y@sub-domain.example.org",
        ] {
            assert_finds(PiiKind::Email, &format!("write to {email}."), email);
        }
        assert_finds(PiiKind::Email, "电话jane@example.com", "jane@example.com");
        assert_none(PiiKind::Email, "jane@localhost");
        assert_none(PiiKind::Email, "@example.com");
        assert_none(PiiKind::Email, "jane@example.c");
        assert_none(PiiKind::Email, "jane@-example.com");
    }

    #[test]
    fn phones() {
        for phone in [
            "+1 555 123 4567",
            "+15551234567",
            "+44 20 7946 0958",
            "+49 (0)30 1234567",
            "+1 (555) 123-4567",
            "(555) 123-4567",
            "(555)123-4567",
            "555-123-4567",
            "555.123.4567",
            "555 123 4567",
            "1-555-123-4567",
        ] {
            assert_finds(PiiKind::Phone, &format!("call {phone} now"), phone);
        }
        assert_finds(PiiKind::Phone, "电话555-123-4567", "555-123-4567");
        for not_phone in [
            "+12345",                   // too few digits
            "+1234567890123456",        // 16 digits
            "x+15551234567",            // glued to a word
            "555-123.4567",             // mixed separators
            "123-456-7890",             // area code starting with 1
            "5551234567",               // ten bare digits
            "555-123-45678",            // too long a line number
            "2024-01-15",               // a date
            "version 10.2.3",           // a version
            "order 12345678 shipped",   // a plain number
            "call (555) 123-4567x8 ok", // glued extension
        ] {
            assert_none(PiiKind::Phone, not_phone);
        }
    }

    #[test]
    fn cards() {
        for card in [
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111111",
            "3782 822463 10005",
            "5500 0000 0000 0004",
            "6011000990139424",
        ] {
            assert_finds(PiiKind::Card, &format!("card: {card}."), card);
        }
        // more groups after the card: the card is the leading groups
        assert_finds(
            PiiKind::Card,
            "4111 1111 1111 1111 2024",
            "4111 1111 1111 1111",
        );
        for not_card in [
            "4111 1111 1111 1112",    // fails Luhn
            "4111111111111112",       // fails Luhn
            "1234567890123456789012", // a long number
            "4111 1111-1111 1111",    // mixed separators
            "41111111111111111111",   // 20 digits (Luhn-valid or not)
            "4111 1111 1111",         // 12 digits
            "x4111111111111111",      // glued to a word
            "4111  1111  1111  1111", // double spaces
        ] {
            assert_none(PiiKind::Card, not_card);
        }
    }

    #[test]
    fn ibans() {
        for iban in [
            "DE44 5001 0517 5407 3249 31",
            "DE44500105175407324931",
            "GB82 WEST 1234 5698 7654 32",
            "NO9386011117947",
            "FR14 2004 1010 0505 0001 3M02 606",
        ] {
            assert_finds(PiiKind::Iban, &format!("IBAN {iban}, thanks"), iban);
        }
        assert_finds(
            PiiKind::Iban,
            "BE68 5390 0754 7034 THEN",
            "BE68 5390 0754 7034",
        );
        for not_iban in [
            "DE45 5001 0517 5407 3249 31", // bad checksum
            "DE44500105175407324932",      // bad checksum
            "XX44500105175407324931",      // no such country
            "DE4450010517540732493",       // too short for DE
            "de44500105175407324931",      // lower case
        ] {
            assert_none(PiiKind::Iban, not_iban);
        }
    }

    #[test]
    fn ssns() {
        assert_finds(PiiKind::Ssn, "SSN 123-45-6789.", "123-45-6789");
        assert_finds(PiiKind::Ssn, "ssn:899-99-9999", "899-99-9999");
        for not_ssn in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
            "1234-45-6789",
            "123-456-789",
            "x123-45-6789",
        ] {
            assert_none(PiiKind::Ssn, not_ssn);
        }
    }

    #[test]
    fn ips() {
        for ip in [
            "192.168.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "2001:db8::1",
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            "fe80::1",
            "::1",
            "::ffff:192.0.2.1",
        ] {
            assert_finds(PiiKind::Ip, &format!("from {ip}."), ip);
        }
        assert_finds(PiiKind::Ip, "[2001:db8::1]:8080", "2001:db8::1");
        for not_ip in [
            "256.1.1.1",
            "1.2.3.4.5",
            "1.2.3",
            "v1.2.3.4",
            "12:30:45",
            "std::vector",
            "a::b",
            "dead::beef",
            "00:1a:2b:3c:4d:5e",
            "1::2::3",
            "::",
        ] {
            assert_none(PiiKind::Ip, not_ip);
        }
    }

    #[test]
    fn luhn_known_values() {
        assert!(luhn(b"79927398713"));
        assert!(!luhn(b"79927398710"));
        assert!(luhn(b"0"));
    }
}
