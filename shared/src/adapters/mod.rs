//! Implementations of the ports: `memory` (in-process, the embedded default)
//! and `aws` (DynamoDB, SQS, Secrets Manager). Both pass the same contract suite.

pub mod aws;
pub mod layout;
pub mod memory;
