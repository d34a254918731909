use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;

use super::lock;
use crate::ports::{EventError, EventPublisher, TaskFinished};

/// Keeps published events in process (`maof dev` logs them; tests read them).
#[derive(Default)]
pub struct MemoryEvents {
    published: Mutex<VecDeque<TaskFinished>>,
}

impl MemoryEvents {
    /// The newest events kept, like the task store's retention.
    pub const KEEP: usize = 10_000;

    pub fn new() -> Self {
        Self::default()
    }

    pub fn published(&self) -> Vec<TaskFinished> {
        lock(&self.published).iter().cloned().collect()
    }
}

#[async_trait]
impl EventPublisher for MemoryEvents {
    async fn task_finished(&self, event: &TaskFinished) -> Result<(), EventError> {
        tracing::debug!(detail_type = %event.detail_type(), task_id = %event.task_id, "event");
        let mut published = lock(&self.published);
        if published.len() >= Self::KEEP {
            published.pop_front();
        }
        published.push_back(event.clone());
        Ok(())
    }
}
