//! The events Lambda: task requests from the inbox queue, where the
//! `maof.task.requested` EventBridge rule and direct senders put them.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use maof::adapters::aws::{ResourceNames, load_sdk_config};
use maof::providers::OutboundPolicy;
use maof::stages::inbox::EventSources;

#[tokio::main]
async fn main() -> Result<(), Error> {
    maof::telemetry::init();
    let sources = EventSources::from_env()?;
    let svc = maof::setup::aws_services(
        &load_sdk_config().await,
        &ResourceNames::from_env(),
        // Strict, plus MAOF_OUTBOUND_ALLOW.
        maof::setup::outbound(OutboundPolicy::from_env()?)?,
    )
    .await?;
    let (svc, sources) = (&svc, &sources);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(maof::lambda::handle_inbox(svc, sources, event.payload).await)
    }))
    .await
}
