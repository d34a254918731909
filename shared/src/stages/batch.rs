//! One SQS batch, as the Lambda trigger and the local runner deliver it:
//! messages are handled concurrently and each failure is reported alone, so
//! one bad message never fails its neighbours.

use std::time::Duration;

use chrono::{DateTime, Utc};
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

/// A message that failed: it is redelivered (after `retry_after` when the
/// stage asked for a particular wait), and dead-lettered after the maximum
/// receives.
#[derive(Debug, Clone)]
pub struct Failed {
    pub message_id: String,
    pub receipt: String,
    pub retry_after: Option<Duration>,
}

/// Handles a batch from `queue`; returns the messages that failed.
/// `deadline` is the Lambda invocation's, when there is one: no provider
/// call is started that could not end before it.
pub async fn process(
    svc: &Services,
    queue: QueueName,
    messages: Vec<BatchMessage>,
    deadline: Option<DateTime<Utc>>,
) -> Vec<Failed> {
    let outcomes = join_all(messages.into_iter().map(|m| async move {
        let outcome = handle_one(svc, queue, &m, deadline).await;
        (m, outcome)
    }))
    .await;
    let mut failed = Vec::new();
    for (message, outcome) in outcomes {
        if let Err(error) = outcome {
            tracing::warn!(queue = queue.as_str(), message_id = %message.message_id, %error, "message failed; it will be redelivered");
            let retry_after = match error {
                StageError::RetryLater { after, .. } => Some(after),
                _ => None,
            };
            failed.push(Failed {
                message_id: message.message_id,
                receipt: message.receipt,
                retry_after,
            });
        }
    }
    failed
}

/// Sets the visibility of the failed messages that asked for a particular
/// wait, so that each comes back after it rather than after the queue's
/// visibility timeout.
pub async fn delay_retries(svc: &Services, queue: QueueName, failed: &[Failed]) {
    let changes = failed.iter().filter_map(|f| {
        f.retry_after
            .map(|after| svc.queue.change_visibility(queue, &f.receipt, after))
    });
    for result in join_all(changes).await {
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not delay a message's redelivery");
        }
    }
}

async fn handle_one(
    svc: &Services,
    queue: QueueName,
    message: &BatchMessage,
    deadline: Option<DateTime<Utc>>,
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
        QueueName::RouteDlq | QueueName::AgentCallDlq | QueueName::AggregateDlq => None,
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
        QueueName::AgentCall => agent_call::handle(svc, &envelope, deadline).await,
        QueueName::Aggregate => aggregate::handle(svc, &envelope).await,
        QueueName::RouteDlq | QueueName::AgentCallDlq | QueueName::AggregateDlq => {
            dead_letter::handle(svc, queue, &envelope, message.receive_count).await
        }
    }
}
