//! The sweeper Lambda: run by an EventBridge schedule every minute, one pass
//! over the sweep index. A failed pass errors, and the next one retries.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use maof::adapters::aws::{ResourceNames, load_sdk_config};
use maof::providers::OutboundPolicy;
use serde_json::{Value, json};

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
    lambda_runtime::run(service_fn(move |_: LambdaEvent<Value>| async move {
        let report = maof::stages::sweeper::sweep(svc).await?;
        Ok::<Value, Error>(json!({"expired": report.expired, "redriven": report.redriven}))
    }))
    .await
}
