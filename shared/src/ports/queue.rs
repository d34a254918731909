//! Queues between the stages, with SQS semantics: visibility timeout, receive
//! count, and a dead-letter queue after a maximum number of receives.

use std::time::Duration;

use async_trait::async_trait;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueueName {
    Route,
    AgentCall,
    Aggregate,
    RouteDlq,
    AgentCallDlq,
    AggregateDlq,
}

impl QueueName {
    pub const ALL: [QueueName; 6] = [
        QueueName::Route,
        QueueName::AgentCall,
        QueueName::Aggregate,
        QueueName::RouteDlq,
        QueueName::AgentCallDlq,
        QueueName::AggregateDlq,
    ];

    /// The dead-letter queue a work queue redrives to; `None` for a DLQ.
    pub fn dead_letter(self) -> Option<QueueName> {
        match self {
            QueueName::Route => Some(QueueName::RouteDlq),
            QueueName::AgentCall => Some(QueueName::AgentCallDlq),
            QueueName::Aggregate => Some(QueueName::AggregateDlq),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::Route => "route",
            QueueName::AgentCall => "agent-call",
            QueueName::Aggregate => "aggregate",
            QueueName::RouteDlq => "route-dlq",
            QueueName::AgentCallDlq => "agent-call-dlq",
            QueueName::AggregateDlq => "aggregate-dlq",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub body: String,
    /// Delivery delay (SQS allows up to 15 minutes).
    pub delay: Duration,
}

impl OutgoingMessage {
    pub fn now(body: impl Into<String>) -> Self {
        OutgoingMessage {
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub message_id: String,
    /// Identifies this receipt for delete and change-visibility.
    pub receipt: String,
    pub body: String,
    /// How many times the message has been received, this time included.
    pub receive_count: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("unknown or expired receipt")]
    UnknownReceipt,
    /// A message body over the queue's `MaximumMessageSize`.
    #[error("the message is too large ({bytes} bytes; the limit is {MAX_MESSAGE_BYTES})")]
    MessageTooLarge { bytes: usize },
    #[error("queue backend error: {0}")]
    Backend(String),
}

/// The largest message body, as template.yaml pins each queue's
/// `MaximumMessageSize` (SQS's own ceiling is now 1 MiB; pinning 256 KiB keeps
/// AWS and the memory backend in agreement).
pub const MAX_MESSAGE_BYTES: usize = 262_144;
/// The largest batch: the sum of its bodies.
pub const MAX_BATCH_BYTES: usize = 1_048_576;

/// Longest delay or visibility SQS accepts for one message.
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);

/// SQS takes delays and visibility timeouts in whole seconds: every backend
/// rounds up (a message never comes back sooner than asked) and caps at `max`.
pub fn whole_seconds(d: Duration, max: Duration) -> Duration {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Duration::from_secs(secs).min(max)
}

#[async_trait]
pub trait Queue: Send + Sync {
    async fn send(&self, queue: QueueName, message: OutgoingMessage) -> Result<(), QueueError>;

    /// Sends many messages (split into SQS batches of ten by the adapter).
    async fn send_batch(
        &self,
        queue: QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<(), QueueError>;

    /// Up to `max` visible messages, hidden for `visibility` afterwards; waits
    /// up to `wait` for one to arrive. A message received more often than the
    /// queue's maximum receive count goes to its dead-letter queue instead.
    async fn receive(
        &self,
        queue: QueueName,
        max: u32,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError>;

    async fn delete(&self, queue: QueueName, receipt: &str) -> Result<(), QueueError>;

    /// Hides (or, with zero, releases) a received message for `visibility` from now.
    async fn change_visibility(
        &self,
        queue: QueueName,
        receipt: &str,
        visibility: Duration,
    ) -> Result<(), QueueError>;
}
