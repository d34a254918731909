//! One SQS batch, as the Lambda trigger and the local runner deliver it:
//! messages are handled concurrently and each failure is reported alone, so
//! one bad message never fails its neighbours.

use futures::future::join_all;

use crate::domain::{Envelope, MessageKind};
use crate::ports::QueueName;

use super::{Services, StageError, agent_call, aggregate, dead_letter, route};

#[derive(Debug, Clone)]
pub struct BatchMessage {
    pub message_id: String,
    pub receipt: String,
    pub body: String,
    pub receive_count: u32,
}

/// Handles a batch from `queue`; returns the ids of the messages that failed
/// (to be redelivered, and dead-lettered after the maximum receives).
pub async fn process(svc: &Services, queue: QueueName, messages: Vec<BatchMessage>) -> Vec<String> {
    let outcomes = join_all(messages.into_iter().map(|m| async move {
        let outcome = handle_one(svc, queue, &m).await;
        (m, outcome)
    }))
    .await;
    let mut failed = Vec::new();
    for (message, outcome) in outcomes {
        if let Err(error) = outcome {
            if let StageError::RetryLater { after, .. } = &error
                && let Err(e) = svc
                    .queue
                    .change_visibility(queue, &message.receipt, *after)
                    .await
            {
                tracing::warn!(error = %e, "could not delay the message's redelivery");
            }
            tracing::warn!(queue = queue.as_str(), message_id = %message.message_id, %error, "message failed; it will be redelivered");
            failed.push(message.message_id);
        }
    }
    failed
}

async fn handle_one(
    svc: &Services,
    queue: QueueName,
    message: &BatchMessage,
) -> Result<(), StageError> {
    let envelope = match Envelope::parse(&message.body) {
        Ok(envelope) => envelope,
        Err(e) if queue.dead_letter().is_none() => {
            // An unreadable dead letter names no task; keeping it helps nobody.
            tracing::error!(error = %e, body_len = message.body.len(), "dropping an unreadable dead letter");
            return Ok(());
        }
        Err(e) => return Err(StageError::Malformed(e.to_string())),
    };
    let expected = match queue {
        QueueName::Route => Some(MessageKind::Route),
        QueueName::AgentCall => Some(MessageKind::AgentCall),
        QueueName::Aggregate => Some(MessageKind::Aggregate),
        _ => None,
    };
    if let Some(kind) = expected
        && envelope.kind != kind
    {
        return Err(StageError::Malformed(format!(
            "a {:?} message on the {} queue",
            envelope.kind,
            queue.as_str()
        )));
    }
    match queue {
        QueueName::Route => route::handle(svc, &envelope).await,
        QueueName::AgentCall => agent_call::handle(svc, &envelope).await,
        QueueName::Aggregate => aggregate::handle(svc, &envelope).await,
        dlq => dead_letter::handle(svc, dlq, &envelope, message.receive_count).await,
    }
}
