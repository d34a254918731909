//! A lease on one call: while a delivery holds it, that delivery alone may
//! call (and pay) the provider; any other delivery of the same call waits for
//! the lease to end instead of calling.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Who holds a lease: one id per delivery of a message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct LeaseHolder(String);

impl LeaseHolder {
    /// A holder id no other delivery shares.
    pub fn new() -> Self {
        LeaseHolder(ulid::Ulid::new().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for LeaseHolder {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CallLease {
    pub holder: LeaseHolder,
    pub until: DateTime<Utc>,
}

impl CallLease {
    /// Whether `holder` may take (or renew) this lease at `now`: it is its
    /// own, or it has ended. Stores check the same rule atomically.
    pub fn may_be_taken_by(&self, holder: &LeaseHolder, now: DateTime<Utc>) -> bool {
        self.holder == *holder || self.until <= now
    }
}

/// What asking for a lease gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The caller holds the lease until the time it asked for.
    Acquired,
    /// Another delivery holds it until `until`.
    Held { until: DateTime<Utc> },
}

impl LeaseOutcome {
    /// How long until a held lease ends (zero once it has).
    pub fn remaining(until: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
        (until - now).to_std().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_taken_by_its_holder_or_once_it_ended() {
        let now = Utc::now();
        let me = LeaseHolder::new();
        let other = LeaseHolder::new();
        let live = CallLease {
            holder: other.clone(),
            until: now + chrono::Duration::seconds(5),
        };
        assert!(!live.may_be_taken_by(&me, now));
        assert!(live.may_be_taken_by(&other, now), "its holder renews it");
        assert!(live.may_be_taken_by(&me, now + chrono::Duration::seconds(5)));
        assert_eq!(
            LeaseOutcome::remaining(live.until, now),
            Duration::from_secs(5)
        );
        assert_eq!(
            LeaseOutcome::remaining(live.until, now + chrono::Duration::seconds(9)),
            Duration::ZERO
        );
    }
}
