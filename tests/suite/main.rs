//! The workspace's one integration-test binary.

mod contract;
mod events;
mod lambda;
mod pipeline;
