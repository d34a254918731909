//! The workspace's one integration-test binary.

mod agent_call;
mod bootstrap;
mod contract;
mod crash;
mod events;
mod lambda;
mod ops;
mod pipeline;
mod providers;
