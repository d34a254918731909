//! Money is exact: a decimal number of US dollars, never summed as `f64`.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, Sub};

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type};

/// An amount in US dollars. It leaves the system (responses, stores,
/// messages, events) as a decimal string such as `"0.0000198"`, never as a
/// float, and is read from a decimal string or a JSON number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(Decimal);

/// Why a text is not an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error(
        "an amount is a decimal such as \"0.0000198\": digits, at most one '.', \
         an optional leading '-'"
    )]
    NotDecimal,
    #[error("an amount has at most 28 digits after the point and 29 in all")]
    OutOfRange,
}

impl Usd {
    pub const ZERO: Usd = Usd(Decimal::ZERO);

    /// What `parse` accepts and `Serialize` writes, as a JSON Schema pattern.
    pub const PATTERN: &'static str = r"^-?[0-9]+(\.[0-9]+)?$";
    /// An amount that may not be negative (prices, budgets), as a pattern.
    pub const NON_NEGATIVE_PATTERN: &'static str = r"^[0-9]+(\.[0-9]+)?$";

    pub fn new(amount: Decimal) -> Self {
        Self(amount)
    }

    /// Parses a plain decimal such as `"0.0000198"` or `"-3"`, exactly: no
    /// exponent, sign `+`, `_`, spaces or rounding.
    pub fn parse(value: &str) -> Result<Self, MoneyError> {
        let digits = value.strip_prefix('-').unwrap_or(value);
        let (whole, fraction) = match digits.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (digits, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(whole) || !fraction.is_none_or(all_digits) {
            return Err(MoneyError::NotDecimal);
        }
        Decimal::from_str_exact(value)
            .map(Self)
            .map_err(|_| MoneyError::OutOfRange)
    }

    /// The price of `tokens` at `per_million` dollars per million tokens.
    pub fn for_tokens(tokens: u64, per_million: Usd) -> Usd {
        Usd(Decimal::from(tokens) * per_million.0 / Decimal::from(1_000_000u32))
    }

    /// This price `count` times (images at a price per image). Saturates at
    /// the largest amount rather than overflow.
    pub fn times(self, count: u64) -> Usd {
        Usd(self.0.saturating_mul(Decimal::from(count)))
    }

    /// The price of `seconds` of audio at `per_minute` dollars per minute:
    /// exact whenever the price per second is a finite decimal (OpenAI's
    /// $0.006 a minute is $0.0001 a second), else rounded at the 28th
    /// decimal place. Saturates at the largest amount rather than overflow.
    pub fn for_seconds(seconds: u64, per_minute: Usd) -> Usd {
        Usd(Decimal::from(seconds).saturating_mul(per_minute.0) / Decimal::from(60u32))
    }

    pub fn amount(self) -> Decimal {
        self.0
    }

    /// `self / other` as a float, for ranking (never for amounts); 0 when
    /// `other` is zero.
    pub fn ratio_to(self, other: Usd) -> f64 {
        use rust_decimal::prelude::ToPrimitive;
        self.0
            .checked_div(other.0)
            .and_then(|r| r.to_f64())
            .unwrap_or(0.0)
    }

    pub fn is_negative(self) -> bool {
        self.0.is_sign_negative() && !self.0.is_zero()
    }
}

impl Serialize for Usd {
    /// The shortest exact decimal: `"0.000059"`, never `5.9e-05`, never
    /// trailing zeros.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.normalize())
    }
}

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UsdVisitor)
    }
}

struct UsdVisitor;

impl serde::de::Visitor<'_> for UsdVisitor {
    type Value = Usd;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an amount of US dollars: a JSON number or a decimal string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Usd, E> {
        Usd::parse(v).map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Usd, E> {
        Ok(Usd(Decimal::from(v)))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Usd, E> {
        Ok(Usd(Decimal::from(v)))
    }

    /// A JSON number with a fraction or an exponent arrives as the nearest
    /// `f64`; its shortest decimal form (`0.15` for 0.15) is the number the
    /// client wrote whenever that has at most 17 significant digits.
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Usd, E> {
        if !v.is_finite() {
            return Err(E::custom(MoneyError::OutOfRange));
        }
        Usd::parse(&v.to_string()).map_err(E::custom)
    }
}

impl utoipa::PartialSchema for Usd {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::Custom("decimal".into())))
            .pattern(Some(Usd::PATTERN))
            .description(Some(
                "US dollars as an exact decimal string, never a float (\"0.0000198\")",
            ))
            .examples(["0.0000198"])
            .into()
    }
}

impl utoipa::ToSchema for Usd {}

/// The schema of an amount a request sends: a JSON number or a decimal
/// string, not negative.
pub fn amount_in() -> RefOr<Schema> {
    amount_in_builder().into()
}

/// As `amount_in`, or `null`.
pub fn nullable_amount_in() -> RefOr<Schema> {
    amount_in_builder()
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .into()
}

fn amount_in_builder() -> OneOfBuilder {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(0)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(Usd::NON_NEGATIVE_PATTERN)),
        )
        .description(Some(
            "US dollars: a JSON number (0.15) or, to send it exactly, a decimal string (\"0.15\")",
        ))
}

impl Add for Usd {
    type Output = Usd;
    fn add(self, rhs: Usd) -> Usd {
        Usd(self.0 + rhs.0)
    }
}

impl Sub for Usd {
    type Output = Usd;
    fn sub(self, rhs: Usd) -> Usd {
        Usd(self.0 - rhs.0)
    }
}

impl Sum for Usd {
    fn sum<I: Iterator<Item = Usd>>(iter: I) -> Usd {
        iter.fold(Usd::ZERO, Add::add)
    }
}

impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}", self.0.normalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_cost_is_exact() {
        let price = Usd::parse("0.15").unwrap();
        assert_eq!(Usd::for_tokens(12, price), Usd::parse("0.0000018").unwrap());
        // 1,000 calls of odd token counts sum exactly where f64 would drift.
        let total: Usd = (0..1000u64)
            .map(|i| Usd::for_tokens(2 * i + 1, Usd::parse("0.075").unwrap()))
            .sum();
        // sum of the first 1000 odd numbers = 1_000_000 tokens
        assert_eq!(total, Usd::parse("0.075").unwrap());
    }

    #[test]
    fn image_and_audio_prices_are_exact() {
        let per_image = Usd::parse("0.04").unwrap();
        assert_eq!(per_image.times(3), Usd::parse("0.12").unwrap());
        assert_eq!(per_image.times(0), Usd::ZERO);
        // whisper-1: $0.006 a minute, billed by the second.
        let per_minute = Usd::parse("0.006").unwrap();
        assert_eq!(
            Usd::for_seconds(7, per_minute),
            Usd::parse("0.0007").unwrap()
        );
        assert_eq!(
            Usd::for_seconds(90, per_minute),
            Usd::parse("0.009").unwrap()
        );
        // 1,000 odd durations sum exactly: 1,000,000 seconds.
        let total: Usd = (0..1000u64)
            .map(|i| Usd::for_seconds(2 * i + 1, per_minute))
            .sum();
        assert_eq!(total, Usd::parse("100").unwrap());
        // Absurd prices saturate instead of overflowing.
        let huge = Usd::parse("10000000000000000000000000000").unwrap();
        assert_eq!(huge.times(u64::MAX), Usd::new(Decimal::MAX));
    }

    #[test]
    fn serializes_as_exact_string() {
        let v = Usd::parse("0.0000198").unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"0.0000198\"");
        assert_eq!(serde_json::from_str::<Usd>("\"0.0000198\"").unwrap(), v);
    }

    #[test]
    fn money_renders_as_a_plain_decimal_never_scientific_notation() {
        // 59 tokens at $1 per million: what f64 prints as 5.9e-05.
        let cost = Usd::for_tokens(59, Usd::parse("1").unwrap());
        assert_eq!(format!("{}", cost.amount()), "0.000059");
        assert_eq!(serde_json::to_value(cost).unwrap(), "0.000059");
        // Arithmetic leaves trailing zeros in the scale; they are not written.
        let sum = Usd::parse("0.0000100").unwrap() + Usd::parse("0.00000980").unwrap();
        assert_eq!(serde_json::to_value(sum).unwrap(), "0.0000198");
        assert_eq!(serde_json::to_value(Usd::ZERO).unwrap(), "0");
        assert_eq!(
            serde_json::to_value(Usd::parse("-0.0").unwrap()).unwrap(),
            "0"
        );
        let tiny = Usd::parse("0.0000000000000000000000000001").unwrap();
        assert_eq!(
            serde_json::to_value(tiny).unwrap(),
            "0.0000000000000000000000000001"
        );
        let big = Usd::parse("12345678901234567890").unwrap();
        assert_eq!(serde_json::to_value(big).unwrap(), "12345678901234567890");
    }

    #[test]
    fn amounts_are_read_from_numbers_or_decimal_strings() {
        let read = |json: &str| serde_json::from_str::<Usd>(json);
        let price = Usd::parse("0.15").unwrap();
        assert_eq!(read("0.15").unwrap(), price);
        assert_eq!(read("\"0.15\"").unwrap(), price);
        assert_eq!(read("1.5e-1").unwrap(), price);
        assert_eq!(read("3").unwrap(), Usd::parse("3").unwrap());
        assert_eq!(read("-2").unwrap(), Usd::parse("-2").unwrap());
        assert_eq!(read("1e-7").unwrap(), Usd::parse("0.0000001").unwrap());
        // Strings are plain decimals: what the API document's pattern says.
        for bad in [
            "\"1e5\"", "\"+1\"", "\".5\"", "\"1.\"", "\" 1\"", "\"1_0\"", "\"\"", "\"-\"",
            "\"0x1\"", "true", "null", "{}",
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
        // Exact or refused, never rounded.
        assert_eq!(
            Usd::parse("0.00000000000000000000000000001"),
            Err(MoneyError::OutOfRange)
        );
        assert_eq!(
            Usd::parse("100000000000000000000000000000000"),
            Err(MoneyError::OutOfRange)
        );
        assert!(read("1e300").is_err());
    }
}
