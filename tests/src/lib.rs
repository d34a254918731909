//! Test harness: a moto server started on demand, and the two backends built
//! the same way for every contract test.

pub mod backends;
pub mod faults;
pub mod moto;
pub mod pipeline;
