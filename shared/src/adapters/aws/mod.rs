//! AWS backends through the official SDK: DynamoDB for tasks and the registry,
//! SQS for the queues, Secrets Manager for keys. The endpoint comes from the
//! standard `AWS_ENDPOINT_URL` (moto locally); clients are built once per process.

mod audit;
mod blobs;
mod bootstrap;
mod events;
mod feed;
mod health;
mod limits;
mod queue;
mod registry;
mod rotation;
mod secrets;
mod task_store;
pub mod template;

pub use audit::DynamoAudit;
pub use blobs::S3Blobs;
pub use bootstrap::{Bootstrap, BootstrapError};
pub use events::EventBridgePublisher;
pub use feed::StreamFeed;
pub(crate) use feed::finished_in;
pub use health::DynamoHealth;
pub use limits::DynamoLimiter;
pub use queue::SqsQueue;
pub use registry::DynamoRegistry;
pub use rotation::DynamoRotation;
pub use secrets::SecretsManagerSource;
pub use task_store::DynamoTaskStore;

use aws_config::{BehaviorVersion, SdkConfig};

/// The SDK configuration from the environment (region, credentials, endpoint).
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// The S3 client's configuration: path-style addressing when an endpoint is
/// configured (moto locally), since `bucket.127.0.0.1` resolves nowhere.
pub fn s3_config(config: &SdkConfig) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::from(config).force_path_style(config.endpoint_url().is_some())
}

/// Resource names, from the template's parameters in production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceNames {
    pub context_table: String,
    pub registry_table: String,
    /// Queues are named `{queue_prefix}-{stage}` (and `-dlq`).
    pub queue_prefix: String,
    /// The claim check's bucket. On AWS CloudFormation names it (bucket
    /// names are global) and the template passes it in `MAOF_BLOB_BUCKET`;
    /// locally it is `{prefix}-blobs`.
    pub blob_bucket: String,
}

impl ResourceNames {
    pub fn with_prefix(prefix: &str) -> Self {
        ResourceNames {
            context_table: format!("{prefix}-context"),
            registry_table: format!("{prefix}-registry"),
            queue_prefix: prefix.to_owned(),
            blob_bucket: format!("{prefix}-blobs"),
        }
    }

    /// From `MAOF_CONTEXT_TABLE`, `MAOF_REGISTRY_TABLE`, `MAOF_QUEUE_PREFIX`
    /// and `MAOF_BLOB_BUCKET`, defaulting to the `maof` prefix.
    pub fn from_env() -> Self {
        let defaults = Self::with_prefix("maof");
        let var = |name: &str, default: String| std::env::var(name).unwrap_or(default);
        ResourceNames {
            context_table: var("MAOF_CONTEXT_TABLE", defaults.context_table),
            registry_table: var("MAOF_REGISTRY_TABLE", defaults.registry_table),
            queue_prefix: var("MAOF_QUEUE_PREFIX", defaults.queue_prefix),
            blob_bucket: var("MAOF_BLOB_BUCKET", defaults.blob_bucket),
        }
    }

    pub fn queue_name(&self, queue: crate::ports::QueueName) -> String {
        format!("{}-{}", self.queue_prefix, queue.as_str())
    }
}

/// The full error chain of an SDK failure, for operators' logs.
pub(crate) fn describe<E: std::error::Error>(err: E) -> String {
    aws_smithy_types::error::display::DisplayErrorContext(err).to_string()
}
