//! MAOF library: the pure domain, the ports (one trait per outside thing), their
//! adapters (in-memory and AWS) and the telemetry set-up shared by every binary.
//!
//! Dependencies point one way: `domain` <- `ports` <- `adapters`.

pub mod adapters;
pub mod api;
pub mod cost_bench;
pub mod domain;
pub mod lambda;
pub mod metering;
pub mod ports;
pub mod providers;
pub mod runner;
pub mod setup;
pub mod stages;
pub mod telemetry;
