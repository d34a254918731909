//! The workspace's one integration-test binary.

mod contract;
mod lambda;
mod pipeline;
