//! Rate limits as token buckets, kept in GCRA form: a bucket is one number,
//! its theoretical arrival time (TAT), the moment it would be full again.
//! Taking `cost` units moves the TAT `cost` emission intervals later; it is
//! allowed while the TAT stays within one period (the bucket's capacity is
//! the limit of one period) of now. One number per bucket is what lets a
//! store apply a take with one conditional write, shared by every instance.

/// `limit` units per `period_us` microseconds, with a burst of `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u64,
    pub period_us: i64,
}

impl Rate {
    pub const MINUTE_US: i64 = 60_000_000;

    pub fn per_minute(limit: u64) -> Self {
        Rate {
            limit,
            period_us: Self::MINUTE_US,
        }
    }

    /// How far `cost` units move the TAT.
    pub fn increment(self, cost: u64) -> i64 {
        let inc = i128::from(cost) * i128::from(self.period_us) / i128::from(self.limit.max(1));
        i64::try_from(inc).unwrap_or(i64::MAX)
    }

    /// One unit's emission interval.
    fn interval(self) -> i64 {
        self.increment(1).max(1)
    }
}

/// One bucket of a take: its rate and what this request costs in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub rate: Rate,
    pub cost: u64,
}

impl Charge {
    /// Whether the cost can ever fit in the bucket.
    pub fn fits(self) -> bool {
        self.cost <= self.rate.limit
    }

    /// The TAT after this charge, from `tat` (none: a full bucket) at `now`,
    /// if the bucket allows it.
    pub fn apply(self, tat: Option<i64>, now_us: i64) -> Result<i64, Refused> {
        let base = tat.map_or(now_us, |t| t.max(now_us));
        let next = base.saturating_add(self.rate.increment(self.cost));
        let over = next - now_us - self.rate.period_us;
        if over > 0 {
            Err(Refused {
                retry_after_us: over,
            })
        } else {
            Ok(next)
        }
    }

    /// The highest TAT from which this charge is still allowed at `now`.
    pub fn latest_allowed_tat(self, now_us: i64) -> i64 {
        now_us + self.rate.period_us - self.rate.increment(self.cost)
    }

    /// What is left, and when the bucket is full again, once the TAT is `tat`.
    pub fn state(self, tat: i64, now_us: i64) -> BucketState {
        let used = (tat - now_us).max(0);
        let room = (self.rate.period_us - used).max(0);
        BucketState {
            limit: self.rate.limit,
            remaining: u64::try_from(room / self.rate.interval()).unwrap_or(0),
            reset_us: used,
        }
    }
}

/// A charge the bucket cannot take now; it could after `retry_after_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after_us: i64,
}

/// A bucket after a take, for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset_us: i64,
}

/// What a take of several buckets at once came to: all taken, or none (the
/// first bucket that refused, by index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    Allowed(Vec<BucketState>),
    Refused { bucket: usize, refused: Refused },
}

/// Decides a take of `charges` against buckets at `tats` (in the same
/// order); the new TATs when allowed. Every backend decides with this.
pub fn decide(charges: &[Charge], tats: &[Option<i64>], now_us: i64) -> Result<Vec<i64>, Take> {
    let mut next = Vec::with_capacity(charges.len());
    for (bucket, (charge, tat)) in charges.iter().zip(tats).enumerate() {
        match charge.apply(*tat, now_us) {
            Ok(t) => next.push(t),
            Err(refused) => return Err(Take::Refused { bucket, refused }),
        }
    }
    Ok(next)
}

/// The states after an allowed take.
pub fn states(charges: &[Charge], tats: &[i64], now_us: i64) -> Vec<BucketState> {
    charges
        .iter()
        .zip(tats)
        .map(|(c, t)| c.state(*t, now_us))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn a_full_bucket_takes_its_limit_at_once_then_one_per_interval() {
        let charge = Charge {
            rate: Rate::per_minute(10),
            cost: 1,
        };
        let mut tat = None;
        for i in 0..10 {
            let next = charge.apply(tat, 0).unwrap_or_else(|_| panic!("take {i}"));
            assert_eq!(charge.state(next, 0).remaining, 9 - i);
            tat = Some(next);
        }
        // The 11th waits one interval (6 s).
        let refused = charge.apply(tat, 0).unwrap_err();
        assert_eq!(refused.retry_after_us, 6 * S);
        assert!(charge.apply(tat, 6 * S - 1).is_err());
        assert!(charge.apply(tat, 6 * S).is_ok());
        // An idle bucket is full again after one period, not more.
        let later = charge.apply(tat, 600 * S).unwrap();
        assert_eq!(later, 606 * S);
        assert_eq!(charge.state(later, 600 * S).remaining, 9);
        assert_eq!(charge.state(later, 600 * S).reset_us, 6 * S);
    }

    #[test]
    fn a_cost_counts_as_that_many_units() {
        let charge = Charge {
            rate: Rate::per_minute(1_000),
            cost: 600,
        };
        let tat = charge.apply(None, 0).unwrap();
        assert_eq!(tat, 36 * S);
        assert_eq!(charge.state(tat, 0).remaining, 400);
        assert_eq!(
            charge.apply(Some(tat), 0).unwrap_err().retry_after_us,
            12 * S
        );
        assert_eq!(charge.latest_allowed_tat(0), 24 * S);
        assert!(
            !Charge {
                rate: Rate::per_minute(10),
                cost: 11
            }
            .fits()
        );
    }

    #[test]
    fn a_take_of_several_buckets_is_all_or_nothing() {
        let rpm = Charge {
            rate: Rate::per_minute(10),
            cost: 1,
        };
        let tpm = Charge {
            rate: Rate::per_minute(100),
            cost: 60,
        };
        let first = decide(&[rpm, tpm], &[None, None], 0).unwrap();
        assert_eq!(first, vec![6 * S, 36 * S]);
        // The second request fits the rpm but not the tpm: refused on bucket 1.
        let second = decide(&[rpm, tpm], &[Some(first[0]), Some(first[1])], 0);
        assert_eq!(
            second,
            Err(Take::Refused {
                bucket: 1,
                refused: Refused {
                    retry_after_us: 12 * S
                }
            })
        );
    }
}
