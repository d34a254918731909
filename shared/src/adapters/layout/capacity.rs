//! On-demand capacity as DynamoDB bills it: a write unit per 1 KB written
//! (the larger of the item before and after), a read unit per 4 KB read
//! strongly consistently (half for an eventually consistent read), twice the
//! write units in a transaction, and the secondary indexes' own writes. The
//! memory backend meters what each of its operations would consume on AWS,
//! so the cost of a task's storage is measured on a laptop, where moto
//! reports one unit per call whatever the size.

use std::sync::atomic::{AtomicU64, Ordering};

/// Write units for writing an item of `bytes` (at least one).
pub fn write_units(bytes: usize) -> u64 {
    bytes.div_ceil(1024).max(1) as u64
}

/// Half read units for reading `bytes` at once (a Query or GetItem; a
/// BatchGetItem counts each item): two per 4 KB strongly consistent, one
/// eventually consistent.
pub fn read_halves(bytes: usize, consistent: bool) -> u64 {
    let units = bytes.div_ceil(4096).max(1) as u64;
    if consistent { 2 * units } else { units }
}

/// One index entry (keys only): its table and index keys, well under 1 KB.
pub const INDEX_ENTRY_UNITS: u64 = 1;

/// Units consumed so far.
#[derive(Debug, Default)]
pub struct CapacityMeter {
    writes: AtomicU64,
    read_halves: AtomicU64,
}

/// A reading of the meter.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Consumed {
    pub write_units: u64,
    pub read_units: f64,
}

impl CapacityMeter {
    pub fn write(&self, units: u64) {
        self.writes.fetch_add(units, Ordering::Relaxed);
    }

    pub fn read(&self, halves: u64) {
        self.read_halves.fetch_add(halves, Ordering::Relaxed);
    }

    pub fn consumed(&self) -> Consumed {
        Consumed {
            write_units: self.writes.load(Ordering::Relaxed),
            read_units: self.read_halves.load(Ordering::Relaxed) as f64 / 2.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_round_up_per_kilobyte_written_and_four_read() {
        assert_eq!(write_units(0), 1);
        assert_eq!(write_units(1024), 1);
        assert_eq!(write_units(1025), 2);
        assert_eq!(write_units(200 * 1024), 200);
        assert_eq!(read_halves(100, true), 2);
        assert_eq!(read_halves(4097, true), 4);
        assert_eq!(read_halves(4097, false), 2);
    }
}
