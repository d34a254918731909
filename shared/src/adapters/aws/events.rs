use async_trait::async_trait;
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;

use super::describe;
use crate::ports::{EventError, EventPublisher, TaskFinished};

/// Publishes to an EventBridge bus, source `maof`.
#[derive(Clone)]
pub struct EventBridgePublisher {
    client: Client,
    bus: String,
}

impl EventBridgePublisher {
    pub const SOURCE: &'static str = "maof";

    pub fn new(client: Client, bus: impl Into<String>) -> Self {
        EventBridgePublisher {
            client,
            bus: bus.into(),
        }
    }
}

#[async_trait]
impl EventPublisher for EventBridgePublisher {
    #[tracing::instrument(skip_all, fields(task_id = %event.task_id))]
    async fn task_finished(&self, event: &TaskFinished) -> Result<(), EventError> {
        let detail = serde_json::to_string(event).map_err(|e| EventError(e.to_string()))?;
        let entry = PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(Self::SOURCE)
            .detail_type(event.detail_type())
            .detail(detail)
            .build();
        let out = self
            .client
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(|e| EventError(describe(e)))?;
        if out.failed_entry_count > 0 {
            let reason = out
                .entries
                .unwrap_or_default()
                .into_iter()
                .find_map(|e| e.error_message)
                .unwrap_or_default();
            return Err(EventError(format!("the bus refused the event: {reason}")));
        }
        Ok(())
    }
}
