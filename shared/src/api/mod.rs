//! The HTTP API (v1): an axum `Router` over the intake stage. The intake
//! Lambda runs it behind API Gateway; `maof dev` serves it on a socket.
//!
//! Every route but `/health` and `/openapi.json` takes a `Caller`, which
//! verifies the bearer token and the route's role; every error is a
//! `Problem` (application/problem+json).

pub(crate) mod access;
mod agents;
mod audit;
mod auth;
mod extract;
pub mod limits;
mod openapi;
mod problem;
mod tasks;
mod tenants;
mod views;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::{Json, http::Uri};
use tower_http::trace::TraceLayer;

pub use auth::{
    AuthConfig, AuthConfigError, AuthError, Authenticator, ClaimMapping, DEFAULT_MAX_LIFETIME,
    JwksCache, MAX_LEEWAY, MIN_REFETCH_INTERVAL, MintError, PublicKey, parse_duration,
};
pub use openapi::ApiDoc;
pub use problem::Problem;
pub use tasks::MAX_WAIT_SECS;
pub use views::{
    Accepted, AgentList, AgentView, CallView, Health, SettingsView, TaskPage, TaskView,
};

use crate::stages::Services;

/// Largest request body; a task's `content` (200 KiB) plus the rest must fit.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct ApiState {
    pub services: Services,
    pub auth: Arc<Authenticator>,
}

pub fn router(state: ApiState) -> Router {
    access::routes()
        .into_iter()
        .fold(Router::new(), |router, r| {
            tracing::debug!(method = %r.method, path = r.path, access = ?r.access, "route");
            router.route(r.path, r.handler)
        })
        // Must follow the routes: it is set on each one present.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// A request's id: API Gateway's, or one made here. The response carries it
/// as `x-request-id` and the audit log records it. A client's own
/// `x-request-id` is not taken: the audit log's ids are the server's.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub String);

pub const REQUEST_ID_HEADER: &str = "x-request-id";

async fn request_id(mut request: Request, next: Next) -> Response {
    let id = gateway_request_id(&request).unwrap_or_else(|| ulid::Ulid::new().to_string());
    let value = HeaderValue::from_str(&id).ok();
    request.extensions_mut().insert(RequestId(id));
    let mut response = next.run(request).await;
    if let Some(value) = value {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// The id API Gateway gave the request (HTTP API, payload 2.0).
fn gateway_request_id(request: &Request) -> Option<String> {
    use lambda_http::request::RequestContext;
    match request.extensions().get::<RequestContext>()? {
        RequestContext::ApiGatewayV2(context) => context.request_id.clone(),
        _ => None,
    }
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "system",
    responses((status = 200, description = "The process is up", body = Health))
)]
pub(crate) async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

async fn no_route(uri: Uri) -> Problem {
    tracing::debug!(path = %uri.path(), "no route");
    Problem::no_route()
}

async fn method_not_allowed() -> Problem {
    Problem::method_not_allowed()
}
