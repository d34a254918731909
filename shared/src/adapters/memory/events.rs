use std::sync::Mutex;

use async_trait::async_trait;

use super::lock;
use crate::ports::{EventError, EventPublisher, TaskFinished};

/// Keeps published events in process (`maof dev` logs them; tests read them).
#[derive(Default)]
pub struct MemoryEvents {
    published: Mutex<Vec<TaskFinished>>,
}

impl MemoryEvents {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn published(&self) -> Vec<TaskFinished> {
        lock(&self.published).clone()
    }
}

#[async_trait]
impl EventPublisher for MemoryEvents {
    async fn task_finished(&self, event: &TaskFinished) -> Result<(), EventError> {
        tracing::debug!(detail_type = %event.detail_type(), task_id = %event.task_id, "event");
        let mut published = lock(&self.published);
        // Bounded like the task store: the newest events are what matter locally.
        if published.len() >= 10_000 {
            published.remove(0);
        }
        published.push(event.clone());
        Ok(())
    }
}
