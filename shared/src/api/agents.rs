//! `/v1/agents`: the registry, shared by every tenant. Writes are optimistic:
//! the version is the ETag, `If-Match` guards a replace or delete and
//! `If-None-Match: *` makes a PUT create-only.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::auth::{Admin, Caller, Viewer};
use super::extract::{header_text, json_body};
use super::problem::{Problem, path_not_found, registry_write};
use super::views::{AgentList, AgentView};
use crate::domain::{Agent, AgentId, AgentRequest};
use crate::ports::Expect;
use crate::stages::intake;

fn etag(version: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("\"{version}\"")).ok()
}

/// The agent with its version as the ETag.
fn agent_response(status: StatusCode, agent: Agent) -> Response {
    let tag = etag(agent.version);
    let mut response = (status, Json(AgentView::from(agent))).into_response();
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

#[utoipa::path(
    get,
    path = "/v1/agents",
    tag = "agents",
    responses(
        (status = 200, description = "Every agent, ordered by id", body = AgentList),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the viewer role", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant))]
pub(crate) async fn list_agents(
    State(state): State<ApiState>,
    caller: Caller<Viewer>,
) -> Result<Json<AgentList>, Problem> {
    let agents = state
        .services
        .registry
        .list()
        .await
        .map_err(Problem::server)?;
    Ok(Json(AgentList {
        items: agents.into_iter().map(AgentView::from).collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/agents/{id}",
    tag = "agents",
    params(("id" = AgentId, Path, description = "The agent id; one that cannot exist is 404")),
    responses(
        (status = 200, description = "The agent", body = AgentView,
            headers(("ETag" = String, description = "The version, quoted; send it back in If-Match"))),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the viewer role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such agent", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant, agent_id))]
pub(crate) async fn get_agent(
    State(state): State<ApiState>,
    caller: Caller<Viewer>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let id = known_id(path)?;
    tracing::Span::current().record("agent_id", tracing::field::display(&id));
    let agent = state
        .services
        .registry
        .get(&id)
        .await
        .map_err(Problem::server)?
        .ok_or_else(|| Problem::not_found("agent"))?;
    Ok(agent_response(StatusCode::OK, agent))
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
    request_body(content = AgentRequest, content_type = "application/json"),
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
        (status = 409, description = "The precondition failed: the agent exists, or is not at the If-Match version", body = Problem, content_type = "application/problem+json"),
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
    caller: Caller<Admin>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let id = new_id(path)?;
    tracing::Span::current().record("agent_id", tracing::field::display(&id));
    let expect = put_expectation(&headers)?;
    let request: AgentRequest = json_body(&headers, body)?;
    let agent = intake::put_agent(&state.services, &id, request, expect).await?;
    tracing::info!(version = agent.version, "agent written");
    if agent.version > 1 {
        return Ok(agent_response(StatusCode::OK, agent));
    }
    let location = HeaderValue::from_str(&format!("/v1/agents/{id}")).ok();
    let mut response = agent_response(StatusCode::CREATED, agent);
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
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
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such agent", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The agent is not at the If-Match version", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant, sub = %caller.principal.sub, agent_id))]
pub(crate) async fn delete_agent(
    State(state): State<ApiState>,
    caller: Caller<Admin>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    let id = known_id(path)?;
    tracing::Span::current().record("agent_id", tracing::field::display(&id));
    let expect = if_match(&headers)?.map_or(Expect::Any, Expect::Version);
    intake::delete_agent(&state.services, &id, expect)
        .await
        .map_err(registry_write)?;
    tracing::info!("agent deleted");
    Ok(StatusCode::NO_CONTENT)
}
