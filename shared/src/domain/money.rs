//! Money is exact: a decimal number of US dollars, never summed as `f64`.

use std::fmt;
use std::iter::Sum;
use std::ops::Add;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// An amount in US dollars. Stored and serialized as a decimal string so that no
/// store or message ever rounds it through a float.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
#[schema(
    value_type = String,
    description = "US dollars as an exact decimal string (\"0.0000198\"); requests also accept a JSON number."
)]
pub struct Usd(Decimal);

impl Usd {
    pub const ZERO: Usd = Usd(Decimal::ZERO);

    pub fn new(amount: Decimal) -> Self {
        Self(amount)
    }

    /// Parses a decimal such as `"0.0000198"`.
    pub fn parse(value: &str) -> Result<Self, rust_decimal::Error> {
        value.parse().map(Self)
    }

    /// The price of `tokens` at `per_million` dollars per million tokens.
    pub fn for_tokens(tokens: u64, per_million: Usd) -> Usd {
        Usd(Decimal::from(tokens) * per_million.0 / Decimal::from(1_000_000u32))
    }

    pub fn amount(self) -> Decimal {
        self.0
    }

    /// For display in JSON responses only; never used for arithmetic.
    pub fn to_f64_lossy(self) -> f64 {
        use rust_decimal::prelude::ToPrimitive;
        self.0.to_f64().unwrap_or(f64::NAN)
    }

    pub fn is_negative(self) -> bool {
        self.0.is_sign_negative() && !self.0.is_zero()
    }
}

impl Add for Usd {
    type Output = Usd;
    fn add(self, rhs: Usd) -> Usd {
        Usd(self.0 + rhs.0)
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
    fn serializes_as_exact_string() {
        let v = Usd::parse("0.0000198").unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"0.0000198\"");
        assert_eq!(serde_json::from_str::<Usd>("\"0.0000198\"").unwrap(), v);
    }
}
