//! Tasks that arrive as events: an EventBridge `maof.task.requested` event
//! (detail = the task request) routed to the inbox queue, or a task request
//! sent to the inbox queue directly. The tenant always comes from where the
//! event came from, as configured, never from the payload alone.

use std::collections::HashMap;

use serde::Deserialize;

use crate::domain::{Origin, Principal, Role, TaskRequest, TenantId};

use super::intake::{self, SubmitError};
use super::limits::LimitError;
use super::{Services, StageError};

pub const REQUESTED: &str = "maof.task.requested";

/// Which tenant each event source submits for.
#[derive(Debug, Clone, Default)]
pub struct EventSources {
    /// EventBridge `source` -> tenant.
    by_source: HashMap<String, TenantId>,
    /// The tenant of messages sent straight to the inbox queue, if any.
    inbox_tenant: Option<TenantId>,
}

#[derive(Debug, thiserror::Error)]
#[error("bad event-source configuration: {0}")]
pub struct SourcesError(String);

impl EventSources {
    pub fn new(by_source: HashMap<String, TenantId>, inbox_tenant: Option<TenantId>) -> Self {
        EventSources {
            by_source,
            inbox_tenant,
        }
    }

    /// From `MAOF_EVENT_TENANTS` and `MAOF_INBOX_TENANT` (see `parse`).
    pub fn from_env() -> Result<Self, SourcesError> {
        Self::parse(
            &std::env::var("MAOF_EVENT_TENANTS").unwrap_or_default(),
            std::env::var("MAOF_INBOX_TENANT").ok().as_deref(),
        )
    }

    /// `tenants` is `source=tenant,source=tenant`; `inbox` the tenant of direct messages.
    pub fn parse(tenants: &str, inbox: Option<&str>) -> Result<Self, SourcesError> {
        let mut by_source = HashMap::new();
        for pair in tenants.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (source, tenant) = pair
                .split_once('=')
                .ok_or_else(|| SourcesError(format!("`{pair}` is not source=tenant")))?;
            let tenant = TenantId::parse(tenant.trim())
                .map_err(|e| SourcesError(format!("`{pair}`: {e}")))?;
            by_source.insert(source.trim().to_owned(), tenant);
        }
        let inbox_tenant = inbox
            .filter(|t| !t.is_empty())
            .map(TenantId::parse)
            .transpose()
            .map_err(|e| SourcesError(format!("inbox tenant: {e}")))?;
        Ok(EventSources {
            by_source,
            inbox_tenant,
        })
    }
}

/// An EventBridge event as it reaches an SQS target.
#[derive(Deserialize)]
struct BridgeEvent {
    id: String,
    source: String,
    #[serde(rename = "detail-type")]
    detail_type: String,
    detail: serde_json::Value,
}

/// Submits the task a message carries. A message that can never become a
/// task is an error too: it is retried, then kept in the inbox's DLQ.
#[tracing::instrument(skip_all, fields(stage = "inbox", message_id))]
pub async fn handle(
    svc: &Services,
    sources: &EventSources,
    message_id: &str,
    body: &str,
) -> Result<(), StageError> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| StageError::Malformed(format!("not JSON: {e}")))?;
    let is_bridge_event = value.get("detail-type").is_some() && value.get("source").is_some();
    let (tenant, sub, request, fallback_key) = if is_bridge_event {
        let event: BridgeEvent = serde_json::from_value(value)
            .map_err(|e| StageError::Malformed(format!("not an EventBridge event: {e}")))?;
        if event.detail_type != REQUESTED {
            return Err(StageError::Malformed(format!(
                "unexpected detail-type `{}`",
                event.detail_type
            )));
        }
        let tenant = sources
            .by_source
            .get(&event.source)
            .cloned()
            .ok_or_else(|| {
                StageError::Malformed(format!(
                    "no tenant is configured for event source `{}`",
                    event.source
                ))
            })?;
        (
            tenant,
            format!("event:{}", event.source),
            event.detail,
            format!("evt-{}", event.id),
        )
    } else {
        let tenant = sources.inbox_tenant.clone().ok_or_else(|| {
            StageError::Malformed("no tenant is configured for the inbox queue".into())
        })?;
        (
            tenant,
            "inbox".to_owned(),
            value,
            format!("sqs-{message_id}"),
        )
    };
    let request: TaskRequest = serde_json::from_value(request)
        .map_err(|e| StageError::Malformed(format!("not a task request: {e}")))?;
    // The event's own id makes a redelivered event the same task, and names
    // it in the audit log.
    let origin = Origin::event(fallback_key.clone());
    let header_key = request.idempotency_key.is_none().then_some(fallback_key);
    let principal = Principal {
        sub,
        tenant,
        roles: vec![Role::Submitter],
    };
    match intake::submit(svc, &principal, &origin, request, header_key.as_deref()).await {
        Ok(submitted) => {
            tracing::info!(task_id = %submitted.task.task_id, created = submitted.created, "task submitted by event");
            Ok(())
        }
        Err(SubmitError::Store(e) | SubmitError::Limited(LimitError::Store(e))) => Err(e.into()),
        Err(SubmitError::Queue(e)) => Err(e.into()),
        // Over the tenant's rate limit: the event waits in its queue for
        // room, as a client would wait out a 429.
        Err(SubmitError::Limited(LimitError::Limited {
            retry_after, limit, ..
        })) => Err(StageError::RetryLater {
            after: retry_after,
            reason: format!("over the tenant's {limit} limit"),
        }),
        Err(refused) => Err(StageError::Malformed(refused.to_string())),
    }
}
