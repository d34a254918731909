//! The intake Lambda: the HTTP API (one axum Router) behind API Gateway,
//! HTTP API (v2) or REST (v1) events alike.

use std::sync::Arc;

use maof::adapters::aws::{ResourceNames, load_sdk_config};
use maof::api::{ApiState, AuthConfig, Authenticator, router};
use maof::ports::SecretSource;
use maof::providers::OutboundPolicy;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    maof::telemetry::init();
    // Strict, plus MAOF_OUTBOUND_ALLOW: the process's one outbound client.
    let http = maof::setup::outbound(OutboundPolicy::from_env()?)?;
    let services = maof::setup::aws_services(
        &load_sdk_config().await,
        &ResourceNames::from_env(),
        http.clone(),
    )
    .await?;
    // The HS256 signing key lives in Secrets Manager, never in the environment.
    let secret_name = std::env::var("MAOF_JWT_SECRET_NAME").unwrap_or_else(|_| "maof/jwt".into());
    let signing_key = services.secrets.get(&secret_name).await?;
    // MAOF_JWT_*: the identity provider, the rules, and whether API Gateway's
    // JWT authorizer (template parameter JwtIssuer) already validated tokens.
    let config = AuthConfig::from_lambda_env()?.with_secret(signing_key);
    // Names, rules and key algorithms only: AuthConfig's Debug leaves secrets out.
    tracing::info!(?config, "authentication");
    // The JWKS is fetched by the process's outbound client: the SSRF policy applies.
    let auth = Authenticator::from_config(config, Some(http), services.clock.clone())?;
    let app = router(ApiState {
        services,
        auth: Arc::new(auth),
    });
    lambda_http::run(tower::ServiceExt::map_request(
        app,
        maof::lambda::strip_stage::<lambda_http::Body>,
    ))
    .await
}
