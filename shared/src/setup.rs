//! Building `Services` from configuration, once per process: the AWS set for
//! the Lambdas (and `maof dev --backend aws`), the memory set for `maof dev`.
//! Each takes the process's one [`OutboundClient`] (see [`outbound`]), built
//! under the policy its provider calls obey: the Lambdas
//! [`OutboundPolicy::from_env`] (strict plus `MAOF_OUTBOUND_ALLOW`), `maof
//! dev` loopback as well. The caller keeps the client for its other
//! outbound fetches (the identity provider's JWKS).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::adapters::aws::{
    DynamoAudit, DynamoHealth, DynamoLimiter, DynamoRegistry, DynamoRotation, DynamoTaskStore,
    EventBridgePublisher, ResourceNames, S3Blobs, SecretsManagerSource, SqsQueue, StreamFeed,
};
use crate::adapters::layout::audit_retention_from_env;
use crate::adapters::memory::{
    MemoryBlobs, MemoryEvents, MemoryFeed, MemoryQueue, MemoryRegistry, MemorySecrets,
    MemoryTaskStore,
};
use crate::domain::{AgentId, AgentSpec, Owner, SecretName};
use crate::ports::{
    CachedSecrets, Clock, Expect, QueueName, SecretSource, StoreError, SystemClock,
};
use crate::providers::{OutboundClient, OutboundPolicy, Providers, http_client};
use crate::stages::{Services, Settings};

/// Receives before a message is dead-lettered, as in the template.
pub const MAX_RECEIVES: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read {path}: {message}")]
    Config { path: String, message: String },
    #[error("queue: {0}")]
    Queue(#[from] crate::ports::QueueError),
    #[error("registry: {0}")]
    Registry(#[from] StoreError),
    #[error("settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Outbound(#[from] crate::providers::outbound::BuildError),
}

fn services(
    tasks: Arc<dyn crate::ports::TaskStore>,
    registry: Arc<dyn crate::ports::Registry>,
    queue: Arc<dyn crate::ports::Queue>,
    secrets: Arc<dyn SecretSource>,
    settings: Settings,
    http: OutboundClient,
) -> Services {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let secrets = Arc::new(CachedSecrets::new(
        secrets,
        clock.clone(),
        CachedSecrets::DEFAULT_TTL,
    ));
    Services::new(
        tasks,
        registry,
        queue,
        secrets,
        Arc::new(Providers::new(http)),
        clock,
        settings,
    )
}

/// The process's one outbound HTTP client, under `policy`: the provider
/// clients share it, and so does every other outbound fetch.
pub fn outbound(policy: OutboundPolicy) -> Result<OutboundClient, SetupError> {
    tracing::info!(%policy, "outbound HTTP policy");
    Ok(http_client(policy)?)
}

/// The in-process backends. Secrets come from the environment
/// (`maof/openai` from `MAOF_OPENAI`).
pub fn memory_services(http: OutboundClient) -> Result<(Services, Arc<MemoryQueue>), SetupError> {
    memory_services_on(Arc::new(MemoryTaskStore::new()), http)
}

/// As `memory_services`, on a task store the caller keeps (to read its
/// capacity meter).
pub fn memory_services_on(
    tasks: Arc<MemoryTaskStore>,
    http: OutboundClient,
) -> Result<(Services, Arc<MemoryQueue>), SetupError> {
    let queue = Arc::new(MemoryQueue::new(MAX_RECEIVES));
    let audit = tasks.audit_log();
    let svc = services(
        tasks.clone(),
        Arc::new(MemoryRegistry::with_audit(audit.clone())),
        queue.clone(),
        Arc::new(MemorySecrets::with_env_fallback()),
        Settings::default(),
        http,
    )
    .with_events(Arc::new(MemoryEvents::new()))
    .with_limiter(tasks.clone())
    .with_health(tasks.health())
    .with_rotation(tasks.clone())
    .with_feed(Arc::new(MemoryFeed::new(tasks)))
    .with_blobs(Arc::new(MemoryBlobs::new()))
    .with_audit(audit);
    Ok((svc, queue))
}

/// The in-process backends, provider calls under the strict policy: what
/// the crate's unit tests run on.
#[cfg(test)]
pub(crate) fn strict_memory_services() -> Services {
    let http = outbound(OutboundPolicy::strict()).unwrap_or_else(|e| panic!("{e}"));
    memory_services(http).unwrap_or_else(|e| panic!("{e}")).0
}

/// Queue URLs from `MAOF_QUEUE_URL_ROUTE`, `MAOF_QUEUE_URL_AGENT_CALL`, ...
/// (`_DLQ` suffixed for dead-letter queues), as the template sets them.
pub fn queue_urls_from_env() -> Option<HashMap<QueueName, String>> {
    QueueName::ALL
        .into_iter()
        .map(|q| {
            let var = format!(
                "MAOF_QUEUE_URL_{}",
                q.as_str().replace('-', "_").to_uppercase()
            );
            std::env::var(var).ok().map(|url| (q, url))
        })
        .collect()
}

/// DynamoDB, SQS and Secrets Manager, configured from the environment.
/// Queue URLs come from the environment when set, else are looked up by name.
/// With `MAOF_EVENT_BUS` set, finished tasks are announced on that bus.
pub async fn aws_services(
    config: &aws_config::SdkConfig,
    names: &ResourceNames,
    http: OutboundClient,
) -> Result<Services, SetupError> {
    let svc = aws_services_with(AwsClients::new(config), names, http).await?;
    Ok(match std::env::var("MAOF_EVENT_BUS") {
        Ok(bus) if !bus.is_empty() => svc.with_events(Arc::new(EventBridgePublisher::new(
            aws_sdk_eventbridge::Client::new(config),
            bus,
        ))),
        _ => svc,
    })
}

/// The SDK clients the AWS backends use, built once per process.
#[derive(Clone)]
pub struct AwsClients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub s3: aws_sdk_s3::Client,
    pub streams: aws_sdk_dynamodbstreams::Client,
}

impl AwsClients {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        AwsClients {
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            sqs: aws_sdk_sqs::Client::new(config),
            secrets: aws_sdk_secretsmanager::Client::new(config),
            s3: aws_sdk_s3::Client::from_conf(crate::adapters::aws::s3_config(config).build()),
            streams: aws_sdk_dynamodbstreams::Client::new(config),
        }
    }
}

/// As `aws_services`, with clients the caller built (e.g. with interceptors).
pub async fn aws_services_with(
    clients: AwsClients,
    names: &ResourceNames,
    http: OutboundClient,
) -> Result<Services, SetupError> {
    let queue = match queue_urls_from_env() {
        Some(urls) => SqsQueue::from_urls(clients.sqs, urls),
        None => SqsQueue::connect(clients.sqs, names).await?,
    };
    let feed = StreamFeed::new(
        clients.streams,
        clients.dynamodb.clone(),
        names.context_table.clone(),
    );
    let audit = DynamoAudit::new(clients.dynamodb.clone(), names.context_table.clone())
        .with_retention(audit_retention_from_env().map_err(SetupError::Settings)?);
    let health = DynamoHealth::new(clients.dynamodb.clone(), names.context_table.clone());
    Ok(services(
        Arc::new(
            DynamoTaskStore::new(clients.dynamodb.clone(), names.context_table.clone())
                .with_audit(audit.clone()),
        ),
        Arc::new(DynamoRegistry::new(
            clients.dynamodb.clone(),
            names.registry_table.clone(),
            audit.clone(),
        )),
        Arc::new(queue),
        Arc::new(SecretsManagerSource::new(clients.secrets)),
        Settings::from_env().map_err(SetupError::Settings)?,
        http,
    )
    .with_feed(Arc::new(feed))
    .with_limiter(Arc::new(DynamoLimiter::new(
        clients.dynamodb.clone(),
        names.context_table.clone(),
    )))
    .with_rotation(Arc::new(DynamoRotation::new(
        clients.dynamodb.clone(),
        names.context_table.clone(),
    )))
    .with_blobs(Arc::new(S3Blobs::new(
        clients.s3,
        names.blob_bucket.clone(),
    )))
    .with_health(Arc::new(health))
    .with_audit(Arc::new(audit)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedFile {
    agents: Vec<SeedAgent>,
}

#[derive(Debug, Deserialize)]
struct SeedAgent {
    id: AgentId,
    #[serde(flatten)]
    spec: AgentSpec,
}

/// What seeding did with each agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeded {
    pub id: AgentId,
    pub enabled: bool,
    /// Why the agent is disabled, if it is.
    pub note: Option<String>,
}

/// Loads the registry seed (`infra/agents.yaml`) as platform agents. An
/// agent whose key is not in the secret source is written disabled; an
/// existing agent is left as an admin may have changed it.
pub async fn seed_registry(svc: &Services, path: &Path) -> Result<Vec<Seeded>, SetupError> {
    let text = std::fs::read_to_string(path).map_err(|e| SetupError::Config {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let file: SeedFile = serde_norway::from_str(&text).map_err(|e| SetupError::Config {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut seeded = Vec::new();
    // Each spec was checked by every rule as it was read.
    for SeedAgent { id, mut spec } in file.agents {
        let mut note = None;
        if let Some(secret) = &spec.secret {
            secret
                .usable_by(&Owner::Platform, &svc.settings.secret_prefix)
                .map_err(|e| SetupError::Config {
                    path: path.display().to_string(),
                    message: format!("agent {id}: secret {e}"),
                })?;
        }
        if spec.provider.needs_secret()
            && let Some(secret) = spec.secret.as_ref().map(SecretName::as_str)
            && svc.secrets.get(secret).await.is_err()
        {
            spec.enabled = false;
            note = Some(format!(
                "disabled: no key (set {} or the secret {secret})",
                MemorySecrets::env_var_for(secret)
            ));
        }
        let enabled = spec.enabled;
        match svc
            .registry
            // The deployment's own seeding: no one's action to audit.
            .put(&Owner::Platform, &id, spec, Expect::Absent, None)
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists) => {}
            Err(e) => return Err(e.into()),
        }
        seeded.push(Seeded { id, enabled, note });
    }
    svc.agents.invalidate(&Owner::Platform);
    Ok(seeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_seed_agent_is_read_by_the_rules_of_a_put() {
        let dir = std::env::temp_dir().join(format!("maof-seed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agents.yaml");
        let seed = |capabilities: &str, pricing: &str| {
            format!(
                "agents:\n  - id: m\n    name: M\n    provider: mock\n    model: m\n    \
                 capabilities: {capabilities}\n    pricing: {pricing}\n"
            )
        };
        let (svc, _) = memory_services(outbound(OutboundPolicy::strict()).unwrap()).unwrap();

        std::fs::write(
            &path,
            seed(
                "[text, code-review]",
                "{input_per_mtok: 1, output_per_mtok: 2}",
            ),
        )
        .unwrap();
        let err = seed_registry(&svc, &path).await.unwrap_err().to_string();
        assert!(err.contains("capabilities[1]"), "{err}");

        std::fs::write(
            &path,
            seed("[text]", "{input_per_mtok: \"0.15\", output_per_mtok: 0.6}"),
        )
        .unwrap();
        let seeded = seed_registry(&svc, &path).await.unwrap();
        assert_eq!(seeded.len(), 1);
        let agent = svc
            .registry
            .get(&Owner::Platform, &seeded[0].id)
            .await
            .unwrap()
            .unwrap();
        let pricing = agent.spec.pricing.unwrap();
        assert_eq!(
            pricing.input_per_mtok,
            crate::domain::Usd::parse("0.15").unwrap()
        );
        assert_eq!(
            pricing.output_per_mtok,
            crate::domain::Usd::parse("0.6").unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
