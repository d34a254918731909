//! The announcer Lambda: triggered by the context table's stream (filtered
//! to tasks that just finished), it publishes `maof.task.*` events. A record
//! it cannot publish is reported, and the trigger retries from it; what still
//! fails goes to the failure queue.

use aws_lambda_events::event::dynamodb::Event;
use aws_lambda_events::event::streams::DynamoDbEventResponse;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use maof::adapters::aws::{ResourceNames, load_sdk_config};
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
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Event>| async move {
        Ok::<DynamoDbEventResponse, Error>(maof::lambda::handle_stream(svc, event.payload).await)
    }))
    .await
}
