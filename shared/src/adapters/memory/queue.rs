use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::lock;
use crate::ports::queue::{
    MAX_BATCH_BYTES, MAX_DELAY, MAX_MESSAGE_BYTES, MAX_VISIBILITY, whole_seconds,
};
use crate::ports::{OutgoingMessage, Queue, QueueError, QueueName, ReceivedMessage};

struct Message {
    id: String,
    body: String,
    visible_at: Instant,
    receive_count: u32,
    /// The receipt of the latest receive; older receipts are stale.
    receipt: Option<String>,
}

#[derive(Default)]
struct Queues {
    messages: HashMap<QueueName, BTreeMap<u64, Message>>,
    next_seq: u64,
}

/// SQS semantics in process: visibility timeouts, receive counts, and redrive
/// to the dead-letter queue once a message has been received `max_receives`
/// times (checked on the next receive, as SQS does).
pub struct MemoryQueue {
    queues: Mutex<Queues>,
    max_receives: u32,
    arrived: Notify,
}

impl MemoryQueue {
    pub fn new(max_receives: u32) -> Self {
        MemoryQueue {
            queues: Mutex::default(),
            max_receives,
            arrived: Notify::new(),
        }
    }

    /// Messages in a queue, visible or not (for metrics and tests).
    pub fn depth(&self, queue: QueueName) -> usize {
        lock(&self.queues)
            .messages
            .get(&queue)
            .map_or(0, |m| m.len())
    }

    fn take_visible(
        &self,
        queue: QueueName,
        max: u32,
        visibility: Duration,
    ) -> Vec<ReceivedMessage> {
        let now = Instant::now();
        let mut guard = lock(&self.queues);
        let state = &mut *guard;
        let mut out = Vec::new();
        let mut dead = Vec::new();
        let messages = state.messages.entry(queue).or_default();
        for (seq, message) in messages.iter_mut() {
            if out.len() as u32 >= max {
                break;
            }
            if message.visible_at > now {
                continue;
            }
            if message.receive_count >= self.max_receives && queue.dead_letter().is_some() {
                dead.push(*seq);
                continue;
            }
            message.receive_count += 1;
            message.visible_at = now + visibility;
            let receipt = format!("{}:{}:{}", queue.as_str(), seq, message.receive_count);
            message.receipt = Some(receipt.clone());
            out.push(ReceivedMessage {
                message_id: message.id.clone(),
                receipt,
                body: message.body.clone(),
                receive_count: message.receive_count,
            });
        }
        if let Some(dlq) = queue.dead_letter() {
            let moved: Vec<Message> = dead
                .into_iter()
                .filter_map(|seq| messages.remove(&seq))
                .collect();
            let target = state.messages.entry(dlq).or_default();
            for mut message in moved {
                state.next_seq += 1;
                message.visible_at = now;
                message.receipt = None;
                target.insert(state.next_seq, message);
            }
        }
        out
    }

    /// A receipt names its message's sequence number, so lookup is direct; a
    /// receipt from an earlier receive of the same message is stale.
    fn find_receipt<'a>(
        queues: &'a mut Queues,
        queue: QueueName,
        receipt: &str,
    ) -> Result<(u64, &'a mut Message), QueueError> {
        let seq: u64 = receipt
            .split(':')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(QueueError::UnknownReceipt)?;
        queues
            .messages
            .get_mut(&queue)
            .and_then(|m| m.get_mut(&seq))
            .filter(|msg| msg.receipt.as_deref() == Some(receipt))
            .map(|msg| (seq, msg))
            .ok_or(QueueError::UnknownReceipt)
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn send(&self, queue: QueueName, message: OutgoingMessage) -> Result<(), QueueError> {
        self.send_batch(queue, vec![message]).await
    }

    async fn send_batch(
        &self,
        queue: QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<(), QueueError> {
        // What SQS refuses, refused before anything is sent.
        if let Some(big) = messages.iter().find(|m| m.body.len() > MAX_MESSAGE_BYTES) {
            return Err(QueueError::MessageTooLarge {
                bytes: big.body.len(),
            });
        }
        for batch in messages.chunks(10) {
            let bytes: usize = batch.iter().map(|m| m.body.len()).sum();
            if bytes > MAX_BATCH_BYTES {
                return Err(QueueError::MessageTooLarge { bytes });
            }
        }
        let now = Instant::now();
        {
            let mut state = lock(&self.queues);
            for message in messages {
                state.next_seq += 1;
                let seq = state.next_seq;
                state.messages.entry(queue).or_default().insert(
                    seq,
                    Message {
                        id: ulid::Ulid::new().to_string(),
                        body: message.body,
                        visible_at: now + whole_seconds(message.delay, MAX_DELAY),
                        receive_count: 0,
                        receipt: None,
                    },
                );
            }
        }
        self.arrived.notify_waiters();
        Ok(())
    }

    async fn receive(
        &self,
        queue: QueueName,
        max: u32,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let visibility = whole_seconds(visibility, MAX_VISIBILITY);
        let deadline = Instant::now() + wait;
        loop {
            // Register interest before looking, so a send in between is not missed.
            let arrived = self.arrived.notified();
            let got = self.take_visible(queue, max.clamp(1, 10), visibility);
            if !got.is_empty() || Instant::now() >= deadline {
                return Ok(got);
            }
            // Wake on a send, or poll again shortly for messages becoming visible.
            let nap = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            let _ = tokio::time::timeout(nap, arrived).await;
        }
    }

    async fn delete(&self, queue: QueueName, receipt: &str) -> Result<(), QueueError> {
        let mut state = lock(&self.queues);
        let (seq, _) = Self::find_receipt(&mut state, queue, receipt)?;
        if let Some(m) = state.messages.get_mut(&queue) {
            m.remove(&seq);
        }
        Ok(())
    }

    async fn change_visibility(
        &self,
        queue: QueueName,
        receipt: &str,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        let mut state = lock(&self.queues);
        let (_, message) = Self::find_receipt(&mut state, queue, receipt)?;
        message.visible_at = Instant::now() + whole_seconds(visibility, MAX_VISIBILITY);
        drop(state);
        if visibility.is_zero() {
            self.arrived.notify_waiters();
        }
        Ok(())
    }
}
