//! The Lambda side: the SQS trigger (an `SqsEvent` in, an `SqsBatchResponse`
//! naming only the failed messages out) and API Gateway's request paths.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chrono::{DateTime, Utc};
use lambda_runtime::LambdaEvent;

use crate::domain::{TaskId, TenantId};
use crate::ports::QueueName;
use crate::stages::Services;
use crate::stages::batch::{self, BatchMessage};

/// The queue a message came from, by the suffix of its source ARN: a stage's
/// function consumes its work queue and its dead-letter queue.
pub fn queue_of(stage: QueueName, event_source_arn: Option<&str>) -> QueueName {
    let from_dlq = event_source_arn.is_some_and(|arn| arn.ends_with("-dlq"));
    match (from_dlq, stage.dead_letter()) {
        (true, Some(dlq)) => dlq,
        _ => stage,
    }
}

/// The invocation's deadline, as the runtime gives it (epoch milliseconds;
/// zero outside Lambda).
pub fn invocation_deadline(context: &lambda_runtime::Context) -> Option<DateTime<Utc>> {
    i64::try_from(context.deadline)
        .ok()
        .filter(|ms| *ms > 0)
        .and_then(DateTime::from_timestamp_millis)
}

pub async fn handle_sqs(
    svc: &Services,
    stage: QueueName,
    event: LambdaEvent<SqsEvent>,
) -> SqsBatchResponse {
    let deadline = invocation_deadline(&event.context);
    let event = event.payload;
    let mut by_queue: Vec<(QueueName, Vec<BatchMessage>)> = Vec::new();
    for record in event.records {
        let queue = queue_of(stage, record.event_source_arn.as_deref());
        let message = BatchMessage {
            message_id: record.message_id.unwrap_or_default(),
            receipt: record.receipt_handle.unwrap_or_default(),
            body: record.body.unwrap_or_default(),
            receive_count: record
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1),
        };
        match by_queue.iter_mut().find(|(q, _)| *q == queue) {
            Some((_, batch)) => batch.push(message),
            None => by_queue.push((queue, vec![message])),
        }
    }
    let mut response = SqsBatchResponse::default();
    for (queue, messages) in by_queue {
        let failed = batch::process(svc, queue, messages, deadline).await;
        batch::delay_retries(svc, queue, &failed).await;
        for message in failed {
            response.add_failure(message.message_id);
        }
    }
    response
}

/// API Gateway puts a named stage in front of the path (`/prod/v1/tasks`);
/// the Router knows only `/v1/...`. Removes the stage the request context
/// names, and nothing else.
pub fn strip_stage<B>(mut request: http::Request<B>) -> http::Request<B> {
    use lambda_http::request::RequestContext;
    let stage = match request.extensions().get::<RequestContext>() {
        Some(RequestContext::ApiGatewayV1(context)) => context.stage.clone(),
        Some(RequestContext::ApiGatewayV2(context)) => context.stage.clone(),
        _ => None,
    };
    let Some(stage) = stage.filter(|s| s != "$default") else {
        return request;
    };
    let prefix = format!("/{stage}");
    let Some(rest) = request.uri().path().strip_prefix(&prefix) else {
        return request;
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return request;
    }
    let path = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = request.uri().clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}

/// The events function: task requests from the inbox queue (EventBridge
/// events and direct messages), each failure reported alone.
pub async fn handle_inbox(
    svc: &Services,
    sources: &crate::stages::inbox::EventSources,
    event: SqsEvent,
) -> SqsBatchResponse {
    let outcomes = futures::future::join_all(event.records.into_iter().map(|record| async move {
        let id = record.message_id.unwrap_or_default();
        let body = record.body.unwrap_or_default();
        let outcome = crate::stages::inbox::handle(svc, sources, &id, &body).await;
        (id, outcome)
    }))
    .await;
    let mut response = SqsBatchResponse::default();
    for (id, outcome) in outcomes {
        if let Err(e) = outcome {
            tracing::warn!(message_id = %id, error = %e, "inbox message refused; it will be retried, then kept in the DLQ");
            response.add_failure(id);
        }
    }
    response
}

/// The announcer function: the context table's stream records (the trigger's
/// filter passes only tasks that just finished) become `maof.task.*` events.
/// When one cannot be published, the first such record is reported: the
/// trigger retries the batch from it, in order, and after its retries sends
/// the batch's description to the failure queue.
pub async fn handle_stream(
    svc: &Services,
    event: aws_lambda_events::event::dynamodb::Event,
) -> aws_lambda_events::event::streams::DynamoDbEventResponse {
    let finished: Vec<(String, (TenantId, TaskId))> = event
        .records
        .into_iter()
        .filter_map(|record| {
            let sequence = record.change.sequence_number.unwrap_or_default();
            let task = crate::adapters::aws::finished_in(
                record.change.old_image.into_inner(),
                record.change.new_image,
                &sequence,
            )?;
            Some((sequence, task))
        })
        .collect();
    let tasks: Vec<(TenantId, TaskId)> = finished.iter().map(|(_, t)| t.clone()).collect();
    let announced = crate::stages::announce::announce(svc, &tasks).await;
    let mut response = aws_lambda_events::event::streams::DynamoDbEventResponse::default();
    if let Some((sequence, _)) = finished.get(announced) {
        let mut failure = aws_lambda_events::event::streams::DynamoDbBatchItemFailure::default();
        failure.item_identifier = Some(sequence.clone());
        response.batch_item_failures.push(failure);
    }
    response
}
