//! The two backends, built the same way for every contract test. Each AWS
//! backend gets its own tables and queues (a fresh name prefix) on moto.

use std::sync::Arc;

use async_trait::async_trait;
use maof::adapters::aws::{
    Bootstrap, DynamoAudit, DynamoHealth, DynamoLimiter, DynamoRegistry, DynamoRotation,
    DynamoTaskStore, ResourceNames, S3Blobs, SecretsManagerSource, SqsQueue, StreamFeed, s3_config,
};
use maof::adapters::memory::{
    MemoryBlobs, MemoryFeed, MemoryQueue, MemoryRegistry, MemorySecrets, MemoryTaskStore,
};
use maof::ports::{
    AgentHealth, AuditLog, BlobStore, FinishedFeed, Queue, RateLimiter, Registry, Rotation,
    SecretSource, TaskStore,
};

/// Makes a new reader of a task store's change stream: what an announcer
/// that (re)starts builds.
pub type NewFeed = Arc<dyn Fn() -> Arc<dyn FinishedFeed> + Send + Sync>;

/// Receives after which a message is dead-lettered, on both backends (as
/// template.yaml's redrive policies say).
pub const MAX_RECEIVES: u32 = maof::setup::MAX_RECEIVES;

/// Writes secrets into a backend, as an operator would.
#[async_trait]
pub trait SecretAdmin: Send + Sync {
    async fn put_secret(&self, name: &str, value: &str);
}

pub struct Backend {
    pub name: &'static str,
    pub tasks: Arc<dyn TaskStore>,
    pub registry: Arc<dyn Registry>,
    pub queue: Arc<dyn Queue>,
    pub secrets: Arc<dyn SecretSource>,
    pub secret_admin: Arc<dyn SecretAdmin>,
    pub blobs: Arc<dyn BlobStore>,
    pub limiter: Arc<dyn RateLimiter>,
    /// Agents' health, which the task store adds results' counts to.
    pub health: Arc<dyn AgentHealth>,
    /// Rotation counters, in the task store's table.
    pub rotation: Arc<dyn Rotation>,
    /// The audit logs the task store and the registry write into.
    pub audit: Arc<dyn AuditLog>,
    pub new_feed: NewFeed,
    /// The DynamoDB tables behind it, for tests that read every stored
    /// item (none for memory).
    pub tables: Vec<String>,
}

#[async_trait]
impl SecretAdmin for MemorySecrets {
    async fn put_secret(&self, name: &str, value: &str) {
        self.put(name, value);
    }
}

pub fn memory() -> Backend {
    let secrets = Arc::new(MemorySecrets::new());
    let tasks = Arc::new(MemoryTaskStore::new());
    let store = tasks.clone();
    let audit = tasks.audit_log();
    Backend {
        name: "memory",
        tables: Vec::new(),
        limiter: tasks.clone(),
        health: tasks.health(),
        rotation: tasks.clone(),
        tasks,
        new_feed: Arc::new(move || Arc::new(MemoryFeed::new(store.clone()))),
        registry: Arc::new(MemoryRegistry::with_audit(audit.clone())),
        audit,
        queue: Arc::new(MemoryQueue::new(MAX_RECEIVES)),
        secrets: secrets.clone(),
        secret_admin: secrets,
        blobs: Arc::new(MemoryBlobs::new()),
    }
}

struct SecretsManagerAdmin(aws_sdk_secretsmanager::Client);

#[async_trait]
impl SecretAdmin for SecretsManagerAdmin {
    async fn put_secret(&self, name: &str, value: &str) {
        let created = self
            .0
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await;
        if let Err(e) = created {
            if !e
                .as_service_error()
                .is_some_and(|e| e.is_resource_exists_exception())
            {
                panic!("create_secret {name}: {e:?}");
            }
            self.0
                .put_secret_value()
                .secret_id(name)
                .secret_string(value)
                .send()
                .await
                .unwrap_or_else(|e| panic!("put_secret_value {name}: {e:?}"));
        }
    }
}

/// A fresh set of AWS resources on moto, unique to this call.
pub async fn aws() -> Backend {
    let config = crate::moto::sdk_config().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let secrets = aws_sdk_secretsmanager::Client::new(&config);
    let prefix = format!("t{}", ulid::Ulid::new().to_string().to_lowercase());
    let names = ResourceNames::with_prefix(&prefix);
    let urls = Bootstrap::new(&config, names.clone())
        .ensure_all()
        .await
        .unwrap_or_else(|e| panic!("bootstrap on moto: {e}"));
    let streams = aws_sdk_dynamodbstreams::Client::new(&config);
    let (feed_dynamodb, table) = (dynamodb.clone(), names.context_table.clone());
    let audit = DynamoAudit::new(dynamodb.clone(), names.context_table.clone());
    Backend {
        name: "aws",
        new_feed: Arc::new(move || {
            Arc::new(StreamFeed::new(
                streams.clone(),
                feed_dynamodb.clone(),
                table.clone(),
            ))
        }),
        limiter: Arc::new(DynamoLimiter::new(
            dynamodb.clone(),
            names.context_table.clone(),
        )),
        health: Arc::new(DynamoHealth::new(
            dynamodb.clone(),
            names.context_table.clone(),
        )),
        rotation: Arc::new(DynamoRotation::new(
            dynamodb.clone(),
            names.context_table.clone(),
        )),
        tables: vec![names.context_table.clone(), names.registry_table.clone()],
        tasks: Arc::new(
            DynamoTaskStore::new(dynamodb.clone(), names.context_table.clone())
                .with_audit(audit.clone()),
        ),
        registry: Arc::new(DynamoRegistry::new(
            dynamodb,
            names.registry_table,
            audit.clone(),
        )),
        audit: Arc::new(audit),
        queue: Arc::new(SqsQueue::from_urls(sqs, urls)),
        secrets: Arc::new(SecretsManagerSource::new(secrets.clone())),
        secret_admin: Arc::new(SecretsManagerAdmin(secrets)),
        blobs: Arc::new(S3Blobs::new(
            aws_sdk_s3::Client::from_conf(s3_config(&config).build()),
            names.blob_bucket,
        )),
    }
}
