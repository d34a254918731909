//! Fault injection around the ports: duplicate delivery and failing stores.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use maof::domain::health::Observation;
use maof::domain::{
    Agent, AuditEntry, CallId, CallLease, CallResult, LeaseOutcome, Task, TaskId, TaskPatch,
    TaskStatus, TenantId,
};
use maof::ports::{ChatRequest, ChatResponse, ProviderClient, ProviderError};
use maof::ports::{
    FanIn, OutgoingMessage, Page, Queue, QueueError, QueueName, ReceivedMessage, StoreError,
    TaskRecord, TaskStore,
};
use secrecy::SecretString;

/// Sends every message twice, as SQS's at-least-once delivery may.
pub struct DuplicatingQueue(pub Arc<dyn Queue>);

#[async_trait]
impl Queue for DuplicatingQueue {
    async fn send(&self, queue: QueueName, message: OutgoingMessage) -> Result<(), QueueError> {
        self.0
            .send_batch(queue, vec![message.clone(), message])
            .await
    }

    async fn send_batch(
        &self,
        queue: QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<(), QueueError> {
        let doubled = messages
            .iter()
            .flat_map(|m| [m.clone(), m.clone()])
            .collect();
        self.0.send_batch(queue, doubled).await
    }

    async fn receive(
        &self,
        queue: QueueName,
        max: u32,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.0.receive(queue, max, visibility, wait).await
    }

    async fn delete(&self, queue: QueueName, receipt: &str) -> Result<(), QueueError> {
        self.0.delete(queue, receipt).await
    }

    async fn change_visibility(
        &self,
        queue: QueueName,
        receipt: &str,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        self.0.change_visibility(queue, receipt, visibility).await
    }
}

/// Drops the first `left` messages sent (one at a time) to `queue`, as a
/// crash between a write and its hand-on would: to the route queue, the
/// task is stored and its message never sent; to the aggregate queue, the
/// fan-in is complete and nobody aggregates.
pub struct DroppingMessages {
    pub inner: Arc<dyn Queue>,
    pub queue: QueueName,
    pub left: AtomicU32,
}

impl DroppingMessages {
    fn drop_one(&self, queue: QueueName) -> bool {
        queue == self.queue
            && self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
    }
}

#[async_trait]
impl Queue for DroppingMessages {
    async fn send(&self, queue: QueueName, message: OutgoingMessage) -> Result<(), QueueError> {
        if self.drop_one(queue) {
            return Ok(());
        }
        self.inner.send(queue, message).await
    }

    async fn send_batch(
        &self,
        queue: QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<(), QueueError> {
        self.inner.send_batch(queue, messages).await
    }

    async fn receive(
        &self,
        queue: QueueName,
        max: u32,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.inner.receive(queue, max, visibility, wait).await
    }

    async fn delete(&self, queue: QueueName, receipt: &str) -> Result<(), QueueError> {
        self.inner.delete(queue, receipt).await
    }

    async fn change_visibility(
        &self,
        queue: QueueName,
        receipt: &str,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        self.inner
            .change_visibility(queue, receipt, visibility)
            .await
    }
}

/// Fails the agent-call stage's result write (`put_call` / `record_call`) a
/// set number of times, then behaves: `u32::MAX` failures make a poison stage.
/// Each failing write counts as one fault, however the stage retries it.
pub struct FailingRecordCalls {
    pub inner: Arc<dyn TaskStore>,
    pub failures_left: AtomicU32,
    pub attempts: AtomicU32,
}

impl FailingRecordCalls {
    fn fault(&self) -> Result<(), StoreError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(StoreError::Backend("injected fault".into()));
        }
        Ok(())
    }

    pub fn new(inner: Arc<dyn TaskStore>, failures: u32) -> Self {
        FailingRecordCalls {
            inner,
            failures_left: AtomicU32::new(failures),
            attempts: AtomicU32::new(0),
        }
    }
}

#[async_trait]
impl TaskStore for FailingRecordCalls {
    async fn create(&self, task: &Task, audit: &AuditEntry) -> Result<(), StoreError> {
        self.inner.create(task, audit).await
    }

    async fn get(&self, tenant: &TenantId, task_id: TaskId) -> Result<Option<Task>, StoreError> {
        self.inner.get(tenant, task_id).await
    }

    async fn get_with_calls(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
    ) -> Result<Option<TaskRecord>, StoreError> {
        self.inner.get_with_calls(tenant, task_id).await
    }

    async fn transition(
        &self,
        seen: &Task,
        to: TaskStatus,
        patch: TaskPatch,
        now: DateTime<Utc>,
    ) -> Result<Task, StoreError> {
        self.inner.transition(seen, to, patch, now).await
    }

    async fn lease_call(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        call_id: CallId,
        lease: &CallLease,
        now: DateTime<Utc>,
    ) -> Result<LeaseOutcome, StoreError> {
        self.inner
            .lease_call(tenant, task_id, call_id, lease, now)
            .await
    }

    async fn put_call(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        result: &CallResult,
        health: &[Observation],
    ) -> Result<CallResult, StoreError> {
        self.fault()?;
        self.inner.put_call(tenant, task_id, result, health).await
    }

    async fn finish_with_call(
        &self,
        seen: &Task,
        to: TaskStatus,
        patch: TaskPatch,
        result: &CallResult,
        health: &[Observation],
        now: DateTime<Utc>,
    ) -> Result<Option<Task>, StoreError> {
        self.fault()?;
        self.inner
            .finish_with_call(seen, to, patch, result, health, now)
            .await
    }

    async fn record_call(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        result: &CallResult,
        health: &[Observation],
    ) -> Result<FanIn, StoreError> {
        self.fault()?;
        self.inner
            .record_call(tenant, task_id, result, health)
            .await
    }

    async fn add_late_calls(&self, seen: &Task, calls: &[CallResult]) -> Result<(), StoreError> {
        self.inner.add_late_calls(seen, calls).await
    }

    async fn spend(
        &self,
        tenant: &TenantId,
        day: chrono::NaiveDate,
    ) -> Result<maof::ports::SpendOn, StoreError> {
        self.inner.spend(tenant, day).await
    }

    async fn due(
        &self,
        shard: u32,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(TenantId, TaskId)>, StoreError> {
        self.inner.due(shard, now, limit).await
    }

    async fn postpone(
        &self,
        tenant: &TenantId,
        task_id: TaskId,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner.postpone(tenant, task_id, until).await
    }

    async fn list(
        &self,
        tenant: &TenantId,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<Task>, StoreError> {
        self.inner.list(tenant, limit, cursor).await
    }
}

/// Counts the requests a provider receives, by agent and request text: what
/// a provider would bill. Wraps the real client, which still answers.
pub struct CountingProvider {
    inner: Arc<dyn ProviderClient>,
    requests: std::sync::Mutex<HashMap<(String, String), u32>>,
}

impl CountingProvider {
    pub fn new(inner: Arc<dyn ProviderClient>) -> Self {
        CountingProvider {
            inner,
            requests: Default::default(),
        }
    }

    /// Requests received in all.
    pub fn total(&self) -> u32 {
        self.requests.lock().unwrap().values().sum()
    }

    /// Requests received for `agent` with `content` as the user's text.
    pub fn count(&self, agent: &str, content: &str) -> u32 {
        self.requests
            .lock()
            .unwrap()
            .get(&(agent.to_owned(), content.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// The (agent, content) pairs that were requested more than once.
    pub fn repeated(&self) -> Vec<((String, String), u32)> {
        let mut repeated: Vec<_> = self
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        repeated.sort();
        repeated
    }
}

#[async_trait]
impl ProviderClient for CountingProvider {
    async fn complete(
        &self,
        agent: &Agent,
        key: Option<&SecretString>,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ProviderError> {
        let content = request
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        *self
            .requests
            .lock()
            .unwrap()
            .entry((agent.id.to_string(), content))
            .or_default() += 1;
        self.inner.complete(agent, key, request).await
    }
}
