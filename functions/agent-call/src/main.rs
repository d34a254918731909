//! The agent-call Lambda: an SQS batch in, the failed messages out.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use maof::adapters::aws::{ResourceNames, load_sdk_config};
use maof::ports::QueueName;
use maof::providers::OutboundPolicy;

#[tokio::main]
async fn main() -> Result<(), Error> {
    maof::telemetry::init();
    let svc = maof::setup::aws_services(
        &load_sdk_config().await,
        &ResourceNames::from_env(),
        // Strict, plus MAOF_OUTBOUND_ALLOW.
        maof::setup::outbound(OutboundPolicy::from_env()?)?,
    )
    .await?;
    let svc = &svc;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(
            maof::lambda::handle_sqs(svc, QueueName::AgentCall, event).await,
        )
    }))
    .await
}
