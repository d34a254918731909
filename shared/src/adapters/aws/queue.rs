use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{MessageSystemAttributeName, SendMessageBatchRequestEntry};

use super::{ResourceNames, describe};
use crate::ports::queue::{MAX_DELAY, MAX_VISIBILITY, whole_seconds};
use crate::ports::{OutgoingMessage, Queue, QueueError, QueueName, ReceivedMessage};

/// SQS queues, resolved to URLs once at start-up.
#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    urls: HashMap<QueueName, String>,
}

fn backend<E: std::error::Error>(err: E) -> QueueError {
    QueueError::Backend(describe(err))
}

/// SQS's words for a body over the queue's `MaximumMessageSize`.
fn too_long(message: &str) -> bool {
    message.contains("must be shorter than")
}

/// A send SQS refused for a body over the queue's `MaximumMessageSize`
/// becomes `MessageTooLarge` (`bytes`: the body's size, or the largest of
/// the batch); anything else is a backend error.
fn send_error<E, R>(err: SdkError<E, R>, bytes: usize) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let refused_for_size = err.as_service_error().is_some_and(|e| {
        e.code() == Some("InvalidParameterValue") && e.message().is_some_and(too_long)
    });
    if refused_for_size {
        QueueError::MessageTooLarge { bytes }
    } else {
        backend(err)
    }
}

fn secs(d: Duration, max: Duration) -> i32 {
    whole_seconds(d, max).as_secs() as i32
}

impl SqsQueue {
    pub fn from_urls(client: Client, urls: HashMap<QueueName, String>) -> Self {
        SqsQueue { client, urls }
    }

    /// Looks up every queue's URL by its name.
    pub async fn connect(client: Client, names: &ResourceNames) -> Result<Self, QueueError> {
        let mut urls = HashMap::new();
        for queue in QueueName::ALL {
            let out = client
                .get_queue_url()
                .queue_name(names.queue_name(queue))
                .send()
                .await
                .map_err(backend)?;
            let url = out
                .queue_url
                .ok_or_else(|| QueueError::Backend(format!("no URL for {}", queue.as_str())))?;
            urls.insert(queue, url);
        }
        Ok(SqsQueue { client, urls })
    }

    fn url(&self, queue: QueueName) -> Result<&str, QueueError> {
        self.urls.get(&queue).map(String::as_str).ok_or_else(|| {
            QueueError::Backend(format!("queue {} is not configured", queue.as_str()))
        })
    }
}

#[async_trait]
impl Queue for SqsQueue {
    #[tracing::instrument(skip_all, fields(queue = queue.as_str()))]
    async fn send(&self, queue: QueueName, message: OutgoingMessage) -> Result<(), QueueError> {
        let bytes = message.body.len();
        self.client
            .send_message()
            .queue_url(self.url(queue)?)
            .message_body(message.body)
            .delay_seconds(secs(message.delay, MAX_DELAY))
            .send()
            .await
            .map_err(|e| send_error(e, bytes))?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(queue = queue.as_str(), count = messages.len()))]
    async fn send_batch(
        &self,
        queue: QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<(), QueueError> {
        let url = self.url(queue)?;
        let mut messages = messages.into_iter().enumerate().peekable();
        while messages.peek().is_some() {
            let mut batch = self.client.send_message_batch().queue_url(url);
            let mut sizes = HashMap::new();
            for (i, message) in messages.by_ref().take(10) {
                sizes.insert(i.to_string(), message.body.len());
                let entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(message.body)
                    .delay_seconds(secs(message.delay, MAX_DELAY))
                    .build()
                    .map_err(backend)?;
                batch = batch.entries(entry);
            }
            let largest = sizes.values().copied().max().unwrap_or_default();
            let out = batch.send().await.map_err(|e| send_error(e, largest))?;
            // A batch call succeeds even when entries fail; those are errors too.
            if let Some(failed) = out.failed.first() {
                if failed.message.as_deref().is_some_and(too_long) {
                    let bytes = sizes.get(&failed.id).copied().unwrap_or_default();
                    return Err(QueueError::MessageTooLarge { bytes });
                }
                return Err(QueueError::Backend(format!(
                    "{} of the batch failed, first: {} {}",
                    out.failed.len(),
                    failed.code,
                    failed.message.as_deref().unwrap_or("")
                )));
            }
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(queue = queue.as_str()))]
    async fn receive(
        &self,
        queue: QueueName,
        max: u32,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(self.url(queue)?)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .visibility_timeout(secs(visibility, MAX_VISIBILITY))
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(backend)?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| ReceivedMessage {
                receive_count: m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1),
                message_id: m.message_id.unwrap_or_default(),
                receipt: m.receipt_handle.unwrap_or_default(),
                body: m.body.unwrap_or_default(),
            })
            .collect())
    }

    #[tracing::instrument(skip_all, fields(queue = queue.as_str()))]
    async fn delete(&self, queue: QueueName, receipt: &str) -> Result<(), QueueError> {
        match self
            .client
            .delete_message()
            .queue_url(self.url(queue)?)
            .receipt_handle(receipt)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_receipt_handle_is_invalid()) =>
            {
                Err(QueueError::UnknownReceipt)
            }
            Err(e) => Err(backend(e)),
        }
    }

    #[tracing::instrument(skip_all, fields(queue = queue.as_str()))]
    async fn change_visibility(
        &self,
        queue: QueueName,
        receipt: &str,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(self.url(queue)?)
            .receipt_handle(receipt)
            .visibility_timeout(secs(visibility, MAX_VISIBILITY))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }
}
