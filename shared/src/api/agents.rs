//! The registry: `/v1/agents`, a tenant's own agents (and, to read, the
//! platform agents its settings allow), and `/v1/platform/agents`, the
//! platform's, for `platform_admin`. Writes are optimistic: the version is
//! the ETag, `If-Match` guards a replace or delete and `If-None-Match: *`
//! makes a PUT create-only.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::auth::Caller;
use super::extract::{header_text, json_body};
use super::problem::{Problem, path_not_found, registry_write};
use super::views::{AgentHealthView, AgentList, AgentView};
use crate::domain::{Agent, AgentId, AgentRequest, Owner, Principal, Role};
use crate::ports::{Expect, StoreError};
use crate::stages::{agents, health};
use futures::future::try_join_all;
use serde::Deserialize;
use utoipa::IntoParams;

fn etag(version: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("\"{version}\"")).ok()
}

/// Whether `principal` may change `agent`, and so see where it calls and
/// with which key.
fn manages(principal: &Principal, agent: &Agent) -> bool {
    match &agent.owner {
        Owner::Platform => principal.may(Role::PlatformAdmin),
        Owner::Tenant(tenant) => tenant == &principal.tenant && principal.may(Role::Admin),
    }
}

fn view(principal: &Principal, agent: Agent) -> AgentView {
    let manager = manages(principal, &agent);
    AgentView::new(agent, manager)
}

/// The agent with its version as the ETag.
fn agent_response(status: StatusCode, principal: &Principal, agent: Agent) -> Response {
    let tag = etag(agent.version);
    let mut response = (status, Json(view(principal, agent))).into_response();
    if let Some(tag) = tag {
        response.headers_mut().insert(header::ETAG, tag);
    }
    response
}

/// For reads and deletes: an id that cannot exist names nothing.
fn known_id(path: Result<Path<String>, PathRejection>) -> Result<AgentId, Problem> {
    let Path(raw) = path.map_err(path_not_found("agent"))?;
    AgentId::parse(raw).map_err(|_| Problem::not_found("agent"))
}

/// For a write the id is the client's choice, so a bad one is its error.
fn new_id(path: Result<Path<String>, PathRejection>) -> Result<AgentId, Problem> {
    let Path(raw) = path.map_err(|e| Problem::bad_request(e.body_text()).with_field("id"))?;
    AgentId::parse(raw).map_err(|e| Problem::bad_request(e.to_string()).with_field("id"))
}

/// `If-Match: "<version>"` as the version a write expects.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(value) = header_text(headers, "if-match")? else {
        return Ok(None);
    };
    let tag = value.trim();
    let digits = tag
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(tag);
    let bad = || {
        Problem::bad_request("If-Match must be the agent's ETag, such as \"3\"")
            .with_field("If-Match")
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    digits.parse().map(Some).map_err(|_| bad())
}

/// The condition of a PUT, from `If-Match` or `If-None-Match: *`.
fn put_expectation(headers: &HeaderMap) -> Result<Expect, Problem> {
    let version = if_match(headers)?;
    let none_match = header_text(headers, "if-none-match")?.map(str::trim);
    match (version, none_match) {
        (Some(_), Some(_)) => Err(Problem::bad_request(
            "send either If-Match or If-None-Match, not both",
        )),
        (Some(v), None) => Ok(Expect::Version(v)),
        (None, Some("*")) => Ok(Expect::Absent),
        (None, Some(_)) => Err(Problem::bad_request(
            "If-None-Match supports only * (create if absent)",
        )
        .with_field("If-None-Match")),
        (None, None) => Ok(Expect::Any),
    }
}

/// An agent read, or 404.
fn found(agent: Option<Agent>) -> Result<Agent, Problem> {
    agent.ok_or_else(|| Problem::not_found("agent"))
}

/// A PUT's answer: 200 with the agent when it replaced one, 201 with its
/// `Location` when it created it.
fn written(principal: &Principal, agent: Agent, location: String) -> Response {
    if agent.version > 1 {
        return agent_response(StatusCode::OK, principal, agent);
    }
    let location = HeaderValue::from_str(&location).ok();
    let mut response = agent_response(StatusCode::CREATED, principal, agent);
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Agents' health reads in flight at once for `?health=true`.
const HEALTH_READS_AT_ONCE: usize = 16;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// With each agent's health (`true`): its circuit, failure rate,
    /// latency, rate limits' use, and when it is tried again.
    health: Option<bool>,
}

#[utoipa::path(
    get,
    path = "/v1/agents",
    tag = "agents",
    params(ListParams),
    responses(
        (status = 200, description = "The tenant's agents and the platform agents it may use, ordered by id", body = AgentList),
        (status = 400, description = "A malformed query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the viewer role", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant))]
pub(crate) async fn list_agents(
    State(state): State<ApiState>,
    caller: Caller,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<AgentList>, Problem> {
    let Query(params) = params?;
    let principal = &caller.principal;
    let svc = &state.services;
    let agents = agents::visible(svc, &principal.tenant)
        .await
        .map_err(Problem::server)?;
    let health = match params.health == Some(true) {
        true => {
            // A few reads at a time: a tenant may use hundreds of agents.
            let mut reports = Vec::with_capacity(agents.len());
            for chunk in agents.chunks(HEALTH_READS_AT_ONCE) {
                let read = try_join_all(chunk.iter().map(|a| health::report(svc, a)))
                    .await
                    .map_err(Problem::server)?;
                reports.extend(read.into_iter().map(Some));
            }
            reports
        }
        false => vec![None; agents.len()],
    };
    Ok(Json(AgentList {
        items: agents
            .into_iter()
            .zip(health)
            .map(|(agent, report)| {
                let health = report.map(|r| AgentHealthView::new(&agent, r));
                AgentView {
                    health,
                    ..view(principal, agent)
                }
            })
            .collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/agents/{id}/health",
    tag = "agents",
    params(("id" = AgentId, Path, description = "The agent id; one the tenant cannot use is 404")),
    responses(
        (status = 200, description = "The agent's health now", body = AgentHealthView),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the viewer role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such agent for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant, agent_id))]
pub(crate) async fn get_agent_health(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<AgentHealthView>, Problem> {
    let agent = visible(&state, &caller.principal, path).await?;
    let report = health::report(&state.services, &agent)
        .await
        .map_err(Problem::server)?;
    Ok(Json(AgentHealthView::new(&agent, report)))
}

#[utoipa::path(
    get,
    path = "/v1/agents/{id}",
    tag = "agents",
    params(("id" = AgentId, Path, description = "The agent id; one the tenant cannot use is 404")),
    responses(
        (status = 200, description = "The agent", body = AgentView,
            headers(("ETag" = String, description = "The version, quoted; send it back in If-Match"))),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the viewer role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such agent for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant, agent_id))]
pub(crate) async fn get_agent(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let agent = visible(&state, &caller.principal, path).await?;
    Ok(agent_response(StatusCode::OK, &caller.principal, agent))
}

/// The agent the path names, if the caller's tenant may use it; else 404.
async fn visible(
    state: &ApiState,
    principal: &Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Agent, Problem> {
    let id = known_id(path)?;
    tracing::Span::current().record("agent_id", tracing::field::display(&id));
    let agent = agents::visible_one(&state.services, &principal.tenant, &id)
        .await
        .map_err(Problem::server)?;
    found(agent)
}

#[utoipa::path(
    put,
    path = "/v1/agents/{id}",
    tag = "agents",
    params(
        ("id" = AgentId, Path, description = "The agent id: 1 to 64 letters, digits, '-', '_', '.' (400 otherwise)"),
        ("If-Match" = Option<String>, Header, pattern = r#"^("[0-9]+"|[0-9]+)$"#,
            description = "Replace only this version (the ETag); not with If-None-Match"),
        ("If-None-Match" = Option<String>, Header, pattern = r"^\*$",
            description = "`*`: create only; not with If-Match"),
    ),
    request_body(content = AgentRequest, content_type = "application/json",
        description = "The agent. Its `secret` must be one of the tenant's own keys, `{prefix}tenants/{tenant}/…` (422 otherwise)."),
    responses(
        (status = 200, description = "Replaced", body = AgentView, headers(("ETag" = String)),
            links(
                ("GetAgent" = (operation_id = "get_agent", parameters(("id" = "$response.body#/id")))),
                ("DeleteAgent" = (operation_id = "delete_agent", parameters(("id" = "$response.body#/id")))),
            )),
        (status = 201, description = "Created", body = AgentView, headers(("ETag" = String), ("Location" = String)),
            links(
                ("GetAgent" = (operation_id = "get_agent", parameters(("id" = "$response.body#/id")))),
                ("DeleteAgent" = (operation_id = "delete_agent", parameters(("id" = "$response.body#/id")))),
            )),
        (status = 400, description = "Malformed JSON, unknown or missing field, wrong type, bad id or bad precondition header", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "An empty id: no such route", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The precondition failed (the agent exists, or is not at the If-Match version), or the id is a platform agent's the tenant uses", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 256 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON (Content-Type)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The agent breaks a rule (`field` names it)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant, sub = %caller.principal.sub, agent_id))]
pub(crate) async fn put_agent(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let id = new_id(path)?;
    tracing::Span::current().record("agent_id", tracing::field::display(&id));
    let expect = put_expectation(&headers)?;
    let request: AgentRequest = json_body(&headers, body)?;
    let principal = &caller.principal;
    let owner = Owner::Tenant(principal.tenant.clone());
    let agent = agents::put(
        &state.services,
        &owner,
        &id,
        request,
        expect,
        principal,
        &caller.origin,
    )
    .await?;
    tracing::info!(version = agent.version, "agent written");
    Ok(written(principal, agent, format!("/v1/agents/{id}")))
}

#[utoipa::path(
    delete,
    path = "/v1/agents/{id}",
    tag = "agents",
    params(
        ("id" = AgentId, Path, description = "The agent id; one that cannot exist is 404"),
        ("If-Match" = Option<String>, Header, pattern = r#"^("[0-9]+"|[0-9]+)$"#,
            description = "Delete only this version (the ETag)"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role; or the agent is a platform agent, which only platform_admin manages", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such agent for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The agent is not at the If-Match version", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant, sub = %caller.principal.sub, agent_id))]
pub(crate) async fn delete_agent(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    let id = known_id(path)?;
    tracing::Span::current().record("agent_id", tracing::field::display(&id));
    let expect = if_match(&headers)?.map_or(Expect::Any, Expect::Version);
    let tenant = &caller.principal.tenant;
    let owner = Owner::Tenant(tenant.clone());
    match agents::delete(
        &state.services,
        &owner,
        &id,
        expect,
        &caller.principal,
        &caller.origin,
    )
    .await
    {
        Ok(()) => {}
        Err(StoreError::NotFound) => {
            let visible = agents::visible_one(&state.services, tenant, &id)
                .await
                .map_err(Problem::server)?;
            return Err(match visible {
                Some(_) => Problem::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "a platform agent; only platform_admin manages it",
                ),
                None => Problem::not_found("agent"),
            });
        }
        Err(e) => return Err(registry_write(e)),
    }
    tracing::info!("agent deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/platform/agents",
    tag = "platform",
    responses(
        (status = 200, description = "Every platform agent, ordered by id", body = AgentList),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the platform_admin role", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(sub = %caller.principal.sub))]
pub(crate) async fn list_platform_agents(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<AgentList>, Problem> {
    let agents = state
        .services
        .registry
        .list(&Owner::Platform)
        .await
        .map_err(Problem::server)?;
    Ok(Json(AgentList {
        items: agents
            .into_iter()
            .map(|a| view(&caller.principal, a))
            .collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/platform/agents/{id}",
    tag = "platform",
    params(("id" = AgentId, Path, description = "The platform agent's id")),
    responses(
        (status = 200, description = "The platform agent", body = AgentView,
            headers(("ETag" = String, description = "The version, quoted; send it back in If-Match"))),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the platform_admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such platform agent", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(sub = %caller.principal.sub, agent_id))]
pub(crate) async fn get_platform_agent(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let id = known_id(path)?;
    tracing::Span::current().record("agent_id", tracing::field::display(&id));
    let agent = state
        .services
        .registry
        .get(&Owner::Platform, &id)
        .await
        .map_err(Problem::server)?;
    Ok(agent_response(
        StatusCode::OK,
        &caller.principal,
        found(agent)?,
    ))
}

#[utoipa::path(
    put,
    path = "/v1/platform/agents/{id}",
    tag = "platform",
    params(
        ("id" = AgentId, Path, description = "The agent id: 1 to 64 letters, digits, '-', '_', '.' (400 otherwise)"),
        ("If-Match" = Option<String>, Header, pattern = r#"^("[0-9]+"|[0-9]+)$"#,
            description = "Replace only this version (the ETag); not with If-None-Match"),
        ("If-None-Match" = Option<String>, Header, pattern = r"^\*$",
            description = "`*`: create only; not with If-Match"),
    ),
    request_body(content = AgentRequest, content_type = "application/json",
        description = "The agent. Its `secret` must be a platform key: under the deployment's prefix, not under `{prefix}tenants/` (422 otherwise)."),
    responses(
        (status = 200, description = "Replaced", body = AgentView, headers(("ETag" = String)),
            links(
                ("GetPlatformAgent" = (operation_id = "get_platform_agent", parameters(("id" = "$response.body#/id")))),
                ("DeletePlatformAgent" = (operation_id = "delete_platform_agent", parameters(("id" = "$response.body#/id")))),
            )),
        (status = 201, description = "Created", body = AgentView, headers(("ETag" = String), ("Location" = String)),
            links(
                ("GetPlatformAgent" = (operation_id = "get_platform_agent", parameters(("id" = "$response.body#/id")))),
                ("DeletePlatformAgent" = (operation_id = "delete_platform_agent", parameters(("id" = "$response.body#/id")))),
            )),
        (status = 400, description = "Malformed JSON, unknown or missing field, wrong type, bad id or bad precondition header", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the platform_admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "An empty id: no such route", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The precondition failed: the agent exists, or is not at the If-Match version", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 256 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON (Content-Type)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The agent breaks a rule (`field` names it)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(sub = %caller.principal.sub, agent_id))]
pub(crate) async fn put_platform_agent(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let id = new_id(path)?;
    tracing::Span::current().record("agent_id", tracing::field::display(&id));
    let expect = put_expectation(&headers)?;
    let request: AgentRequest = json_body(&headers, body)?;
    let agent = agents::put(
        &state.services,
        &Owner::Platform,
        &id,
        request,
        expect,
        &caller.principal,
        &caller.origin,
    )
    .await?;
    tracing::info!(version = agent.version, "platform agent written");
    Ok(written(
        &caller.principal,
        agent,
        format!("/v1/platform/agents/{id}"),
    ))
}

#[utoipa::path(
    delete,
    path = "/v1/platform/agents/{id}",
    tag = "platform",
    params(
        ("id" = AgentId, Path, description = "The platform agent's id"),
        ("If-Match" = Option<String>, Header, pattern = r#"^("[0-9]+"|[0-9]+)$"#,
            description = "Delete only this version (the ETag)"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the platform_admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such platform agent", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The agent is not at the If-Match version", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(sub = %caller.principal.sub, agent_id))]
pub(crate) async fn delete_platform_agent(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    let id = known_id(path)?;
    tracing::Span::current().record("agent_id", tracing::field::display(&id));
    let expect = if_match(&headers)?.map_or(Expect::Any, Expect::Version);
    agents::delete(
        &state.services,
        &Owner::Platform,
        &id,
        expect,
        &caller.principal,
        &caller.origin,
    )
    .await
    .map_err(registry_write)?;
    tracing::info!(sub = %caller.principal.sub, "platform agent deleted");
    Ok(StatusCode::NO_CONTENT)
}
