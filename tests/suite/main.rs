//! The workspace's integration-test binary (the crash test, `crash.rs`, has
//! one of its own: see tests/Cargo.toml).

mod agent_call;
mod bootstrap;
mod contract;
mod cost;
mod events;
mod hygiene;
mod isolation;
mod lambda;
mod ops;
mod pipeline;
mod providers;
