//! Creates the tables and queues the AWS backends need, if missing: used by
//! `maof dev --backend aws` and the tests, against moto or a real account.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;

use super::keys::{GSI1, GSI1_PK, GSI1_SK, PK, SK, TTL};
use super::{ResourceNames, describe};
use crate::ports::QueueName;

#[derive(Debug, thiserror::Error)]
#[error("bootstrap failed at {step}: {message}")]
pub struct BootstrapError {
    pub step: String,
    pub message: String,
}

fn failed<E: std::error::Error>(step: impl Into<String>) -> impl FnOnce(E) -> BootstrapError {
    let step = step.into();
    move |e| BootstrapError {
        step,
        message: describe(e),
    }
}

pub struct Bootstrap {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub names: ResourceNames,
    /// Receives before a message is moved to its stage's DLQ.
    pub max_receives: u32,
    /// The queues' default visibility timeout.
    pub visibility: Duration,
}

impl Bootstrap {
    /// Creates both tables and every queue; returns the queue URLs.
    pub async fn ensure_all(&self) -> Result<HashMap<QueueName, String>, BootstrapError> {
        self.ensure_table(&self.names.context_table, true).await?;
        self.ensure_table(&self.names.registry_table, false).await?;
        self.ensure_queues().await
    }

    async fn ensure_table(&self, name: &str, with_index: bool) -> Result<(), BootstrapError> {
        let exists = self.dynamodb.describe_table().table_name(name).send().await;
        match exists {
            Ok(_) => return Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) => {}
            Err(e) => return Err(failed(format!("describe table {name}"))(e)),
        }
        let attr = |n: &str| {
            AttributeDefinition::builder()
                .attribute_name(n)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(failed("attribute definition"))
        };
        let key = |n: &str, t: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(n)
                .key_type(t)
                .build()
                .map_err(failed("key schema"))
        };
        let mut create = self
            .dynamodb
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr(PK)?)
            .attribute_definitions(attr(SK)?)
            .key_schema(key(PK, KeyType::Hash)?)
            .key_schema(key(SK, KeyType::Range)?);
        if with_index {
            let index = GlobalSecondaryIndex::builder()
                .index_name(GSI1)
                .key_schema(key(GSI1_PK, KeyType::Hash)?)
                .key_schema(key(GSI1_SK, KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .map_err(failed("index"))?;
            create = create
                .attribute_definitions(attr(GSI1_PK)?)
                .attribute_definitions(attr(GSI1_SK)?)
                .global_secondary_indexes(index);
        }
        match create.send().await {
            Ok(_) => {}
            // Another process created it meanwhile.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) => {}
            Err(e) => return Err(failed(format!("create table {name}"))(e)),
        }
        let ttl = TimeToLiveSpecification::builder()
            .attribute_name(TTL)
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
        Ok(())
    }

    async fn ensure_queues(&self) -> Result<HashMap<QueueName, String>, BootstrapError> {
        let mut urls = HashMap::new();
        // Dead-letter queues first: the work queues' redrive policies name them.
        for queue in QueueName::ALL
            .into_iter()
            .filter(|q| q.dead_letter().is_none())
        {
            let url = self.create_queue(queue, HashMap::new()).await?;
            urls.insert(queue, url);
        }
        for queue in QueueName::ALL {
            let Some(dlq) = queue.dead_letter() else {
                continue;
            };
            let arn = self
                .sqs
                .get_queue_attributes()
                .queue_url(&urls[&dlq])
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .map_err(failed("dlq arn"))?
                .attributes
                .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
                .ok_or_else(|| BootstrapError {
                    step: "dlq arn".into(),
                    message: "no QueueArn attribute".into(),
                })?;
            let redrive = serde_json::json!({
                "deadLetterTargetArn": arn,
                "maxReceiveCount": self.max_receives.to_string(),
            });
            let attributes = HashMap::from([
                (QueueAttributeName::RedrivePolicy, redrive.to_string()),
                (
                    QueueAttributeName::VisibilityTimeout,
                    self.visibility.as_secs().to_string(),
                ),
            ]);
            let url = self.create_queue(queue, attributes).await?;
            urls.insert(queue, url);
        }
        Ok(urls)
    }

    async fn create_queue(
        &self,
        queue: QueueName,
        attributes: HashMap<QueueAttributeName, String>,
    ) -> Result<String, BootstrapError> {
        let name = self.names.queue_name(queue);
        let out = self
            .sqs
            .create_queue()
            .queue_name(&name)
            .set_attributes(Some(attributes))
            .send()
            .await
            .map_err(failed(format!("create queue {name}")))?;
        out.queue_url.ok_or_else(|| BootstrapError {
            step: format!("create queue {name}"),
            message: "no queue URL returned".into(),
        })
    }
}
