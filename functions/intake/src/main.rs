//! The intake Lambda: the HTTP API (one axum Router) behind API Gateway,
//! HTTP API (v2) or REST (v1) events alike.

use maof::adapters::aws::{ResourceNames, load_sdk_config};
use maof::api::{ApiState, Authenticator, router};
use maof::ports::SecretSource;
use maof::providers::OutboundPolicy;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    maof::telemetry::init();
    let services = maof::setup::aws_services(
        &load_sdk_config().await,
        &ResourceNames::from_env(),
        // Strict, plus MAOF_OUTBOUND_ALLOW.
        OutboundPolicy::from_env()?,
    )
    .await?;
    // The HS256 signing key lives in Secrets Manager, never in the environment.
    let secret_name = std::env::var("MAOF_JWT_SECRET_NAME").unwrap_or_else(|_| "maof/jwt".into());
    let signing_key = services.secrets.get(&secret_name).await?;
    let auth = std::sync::Arc::new(Authenticator::new(signing_key));
    let app = router(ApiState { services, auth });
    lambda_http::run(tower::ServiceExt::map_request(
        app,
        maof::lambda::strip_stage::<lambda_http::Body>,
    ))
    .await
}
