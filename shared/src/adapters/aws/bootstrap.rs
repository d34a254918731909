//! Creates what the stack declares in `template.yaml` — tables, queues with
//! their redrive, secrets, event buses — if missing, on the configured
//! endpoint: used by `maof bootstrap`, `maof dev --backend aws` and the tests,
//! against moto or a real account. Local and deployed shapes cannot drift.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, StreamSpecification, StreamViewType,
    TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use rand::Rng;

use super::template::{TEMPLATE, TableShape, TemplateError, TemplateShape};
use super::{ResourceNames, describe};
use crate::ports::QueueName;

/// The template's logical id of the claim check's bucket.
const BLOB_BUCKET: &str = "BlobBucket";

#[derive(Debug, thiserror::Error)]
#[error("bootstrap failed at {step}: {message}")]
pub struct BootstrapError {
    pub step: String,
    pub message: String,
}

impl From<TemplateError> for BootstrapError {
    fn from(e: TemplateError) -> Self {
        BootstrapError {
            step: "reading template.yaml".into(),
            message: e.to_string(),
        }
    }
}

fn failed<E: std::error::Error>(step: impl Into<String>) -> impl FnOnce(E) -> BootstrapError {
    let step = step.into();
    move |e| BootstrapError {
        step,
        message: describe(e),
    }
}

fn missing(step: &str, message: &str) -> BootstrapError {
    BootstrapError {
        step: step.into(),
        message: message.into(),
    }
}

pub struct Bootstrap {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub events: aws_sdk_eventbridge::Client,
    pub s3: aws_sdk_s3::Client,
    /// `queue_prefix` is the template's `Prefix` parameter.
    pub names: ResourceNames,
    /// The JWT signing secret's value (`{Prefix}/jwt`); generated when `None`.
    /// Set, it is written even over an existing value, so that locally
    /// (`MAOF_JWT_SECRET`) the intake Lambda accepts tokens `maof token` mints.
    pub jwt_secret: Option<String>,
}

impl Bootstrap {
    pub fn new(config: &aws_config::SdkConfig, names: ResourceNames) -> Self {
        Bootstrap {
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            sqs: aws_sdk_sqs::Client::new(config),
            secrets: aws_sdk_secretsmanager::Client::new(config),
            events: aws_sdk_eventbridge::Client::new(config),
            s3: aws_sdk_s3::Client::from_conf(super::s3_config(config).build()),
            names,
            jwt_secret: None,
        }
    }

    pub fn with_jwt_secret(mut self, value: Option<String>) -> Self {
        self.jwt_secret = value;
        self
    }

    /// The template's resources under this prefix.
    pub fn shape(&self) -> Result<TemplateShape, BootstrapError> {
        let overrides = HashMap::from([("Prefix".to_owned(), self.names.queue_prefix.clone())]);
        Ok(TemplateShape::parse(TEMPLATE, &overrides)?)
    }

    /// Creates every declared resource that is missing; returns the URLs of
    /// the pipeline's queues.
    pub async fn ensure_all(&self) -> Result<HashMap<QueueName, String>, BootstrapError> {
        let shape = self.shape()?;
        for table in [&self.names.context_table, &self.names.registry_table] {
            if !shape.tables.iter().any(|t| &t.name == table) {
                return Err(missing(
                    "checking names",
                    &format!("template.yaml declares no table {table}"),
                ));
            }
        }
        for table in &shape.tables {
            self.ensure_table(table).await?;
        }
        let mut by_logical_id: HashMap<&str, String> = HashMap::new();
        let mut urls = HashMap::new();
        for queue in shape.queues_in_creation_order() {
            let mut attributes = HashMap::new();
            if let Some(seconds) = queue.visibility_timeout {
                attributes.insert(QueueAttributeName::VisibilityTimeout, seconds.to_string());
            }
            if let Some(bytes) = queue.max_message_size {
                attributes.insert(QueueAttributeName::MaximumMessageSize, bytes.to_string());
            }
            if let Some(seconds) = queue.retention {
                attributes.insert(
                    QueueAttributeName::MessageRetentionPeriod,
                    seconds.to_string(),
                );
            }
            if let Some((dlq, receives)) = &queue.dead_letter {
                let dlq_url = by_logical_id.get(dlq.as_str()).ok_or_else(|| {
                    missing(
                        "redrive",
                        &format!("{} redrives to unknown {dlq}", queue.name),
                    )
                })?;
                let arn = self.queue_arn(dlq_url).await?;
                let redrive = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": receives.to_string()});
                attributes.insert(QueueAttributeName::RedrivePolicy, redrive.to_string());
            }
            let url = self
                .sqs
                .create_queue()
                .queue_name(&queue.name)
                .set_attributes(Some(attributes))
                .send()
                .await
                .map_err(failed(format!("create queue {}", queue.name)))?
                .queue_url
                .ok_or_else(|| missing("create queue", "no URL returned"))?;
            if let Some(pipeline_queue) = QueueName::ALL
                .into_iter()
                .find(|q| self.names.queue_name(*q) == queue.name)
            {
                urls.insert(pipeline_queue, url.clone());
            }
            by_logical_id.insert(queue.logical_id.as_str(), url);
        }
        if let Some(absent) = QueueName::ALL.into_iter().find(|q| !urls.contains_key(q)) {
            return Err(missing(
                "checking names",
                &format!(
                    "template.yaml declares no queue {}",
                    self.names.queue_name(absent)
                ),
            ));
        }
        for secret in &shape.secrets {
            self.ensure_secret(secret).await?;
        }
        for bus in &shape.event_buses {
            self.ensure_bus(bus).await?;
        }
        if !shape.buckets.iter().any(|b| b == BLOB_BUCKET) {
            return Err(missing(
                "checking names",
                &format!("template.yaml declares no {BLOB_BUCKET}"),
            ));
        }
        self.ensure_bucket(&self.names.blob_bucket).await?;
        Ok(urls)
    }

    /// Creates the claim check's bucket (CloudFormation names it on AWS;
    /// here it takes the local name).
    async fn ensure_bucket(&self, name: &str) -> Result<(), BootstrapError> {
        if self.s3.head_bucket().bucket(name).send().await.is_ok() {
            return Ok(());
        }
        match self.s3.create_bucket().bucket(name).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(|e| {
                    e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists()
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(failed(format!("create bucket {name}"))(e)),
        }
    }

    async fn queue_arn(&self, url: &str) -> Result<String, BootstrapError> {
        self.sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(failed("queue arn"))?
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .ok_or_else(|| missing("queue arn", "no QueueArn attribute"))
    }

    async fn ensure_table(&self, table: &TableShape) -> Result<(), BootstrapError> {
        let name = &table.name;
        match self.dynamodb.describe_table().table_name(name).send().await {
            Ok(_) => return Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) => {}
            Err(e) => return Err(failed(format!("describe table {name}"))(e)),
        }
        let key = |attribute: &str, key_type: &str| {
            KeySchemaElement::builder()
                .attribute_name(attribute)
                .key_type(KeyType::from(key_type))
                .build()
                .map_err(failed("key schema"))
        };
        let mut create = self
            .dynamodb
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest);
        for (attribute, kind) in &table.attributes {
            create = create.attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attribute)
                    .attribute_type(ScalarAttributeType::from(kind.as_str()))
                    .build()
                    .map_err(failed("attribute definition"))?,
            );
        }
        for k in &table.keys {
            create = create.key_schema(key(&k.attribute, &k.key_type)?);
        }
        for index in &table.indexes {
            let mut builder = GlobalSecondaryIndex::builder()
                .index_name(&index.name)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::from(index.projection.as_str()))
                        .build(),
                );
            for k in &index.keys {
                builder = builder.key_schema(key(&k.attribute, &k.key_type)?);
            }
            create = create.global_secondary_indexes(builder.build().map_err(failed("index"))?);
        }
        if let Some(view) = &table.stream_view {
            create = create.stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::from(view.as_str()))
                    .build()
                    .map_err(failed("stream"))?,
            );
        }
        match create.send().await {
            Ok(_) => {}
            // Another process created it meanwhile.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) => {}
            Err(e) => return Err(failed(format!("create table {name}"))(e)),
        }
        if let Some(attribute) = &table.ttl_attribute {
            let ttl = TimeToLiveSpecification::builder()
                .attribute_name(attribute)
                .enabled(true)
                .build()
                .map_err(failed("ttl"))?;
            self.dynamodb
                .update_time_to_live()
                .table_name(name)
                .time_to_live_specification(ttl)
                .send()
                .await
                .map_err(failed(format!("ttl on {name}")))?;
        }
        Ok(())
    }

    /// A secret the stack generates (the JWT signing key): a random value.
    async fn ensure_secret(&self, name: &str) -> Result<(), BootstrapError> {
        let given = self.jwt_secret.clone().filter(|_| name.ends_with("/jwt"));
        let value: String = given.clone().unwrap_or_else(|| {
            let bytes: [u8; 32] = rand::rng().random();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        });
        match self
            .secrets
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_exists_exception()) =>
            {
                let Some(value) = given else {
                    return Ok(());
                };
                self.secrets
                    .put_secret_value()
                    .secret_id(name)
                    .secret_string(value)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(failed(format!("put secret {name}")))
            }
            Err(e) => Err(failed(format!("create secret {name}"))(e)),
        }
    }

    async fn ensure_bus(&self, name: &str) -> Result<(), BootstrapError> {
        match self.events.create_event_bus().name(name).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_already_exists_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(failed(format!("create event bus {name}"))(e)),
        }
    }
}
