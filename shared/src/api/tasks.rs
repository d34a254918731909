//! `/v1/tasks`: submit, read, list and cancel tasks, always within the
//! caller's tenant.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiState;
use super::auth::Caller;
use super::extract::{header_text, json_body};
use super::problem::{Problem, path_not_found, rate_limit_headers};
use super::views::{Accepted, TaskPage, TaskView};
use crate::domain::{CallId, IdempotencyKey, Task, TaskId, TaskRequest};
use crate::stages::intake;

/// Longest `?wait`: API Gateway ends an integration after 29 seconds, so the
/// answer must be on its way well before.
pub const MAX_WAIT_SECS: u64 = 25;
pub const DEFAULT_PAGE: u32 = 20;
pub const MAX_PAGE: u32 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SubmitParams {
    /// Seconds (0 to 25) to wait for the task to finish; 200 with the task if it does.
    #[param(minimum = 0, maximum = 25)]
    wait: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The `next` of the previous page (a task id); empty: the first page.
    #[param(pattern = "^([0-7][0-9A-HJKMNP-TV-Z]{25})?$")]
    cursor: Option<String>,
}

fn parse_id(path: Result<Path<String>, PathRejection>) -> Result<TaskId, Problem> {
    let Path(raw) = path.map_err(path_not_found("task"))?;
    // An id that cannot exist is as absent as one that does not.
    TaskId::parse(&raw).map_err(|_| Problem::not_found("task"))
}

/// 202 with where to look the task up.
fn accepted(task: &Task) -> Response {
    let location = format!("/v1/tasks/{}", task.task_id);
    let mut response = (StatusCode::ACCEPTED, Json(Accepted::from(task))).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

#[utoipa::path(
    post,
    path = "/v1/tasks",
    tag = "tasks",
    params(SubmitParams, ("Idempotency-Key" = Option<IdempotencyKey>, Header,
        description = "Makes a retry return the first task instead of creating another; \
            if the body has an `idempotency_key` too, they must be equal")),
    request_body(content = TaskRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Finished within `wait` (or an idempotent replay of a finished task)", body = TaskView,
            links(
                ("GetTask" = (operation_id = "get_task", parameters(("id" = "$response.body#/task_id")))),
                ("CancelTask" = (operation_id = "cancel_task", parameters(("id" = "$response.body#/task_id")))),
            )),
        (status = 202, description = "Accepted; poll the Location", body = Accepted,
            headers(("Location" = String, description = "/v1/tasks/{task_id}")),
            links(
                ("GetTask" = (operation_id = "get_task", parameters(("id" = "$response.body#/task_id")))),
                ("CancelTask" = (operation_id = "cancel_task", parameters(("id" = "$response.body#/task_id")))),
            )),
        (status = 400, description = "Malformed JSON, unknown or missing field, wrong type, bad query or header", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the submitter role", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 256 KiB, or content/system over its limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON (Content-Type)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field breaks its rule (`field` names it), the two idempotency keys differ, the task's estimated tokens exceed a tokens-per-minute limit by themselves, or it names a strategy not offered yet", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over a rate limit (requests or estimated tokens per minute, of the tenant or the token's subject)", body = Problem, content_type = "application/problem+json",
            headers(
                ("Retry-After" = u64, description = "Seconds until the request would be admitted"),
                ("RateLimit-Limit" = u64, description = "The limit of the bucket that refused"),
                ("RateLimit-Remaining" = u64, description = "0"),
                ("RateLimit-Reset" = u64, description = "Seconds until the bucket has room again"),
            )),
        (status = 503, description = "A backend is unavailable; retry with the same Idempotency-Key", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant, stage = "intake", task_id))]
pub(crate) async fn submit_task(
    State(state): State<ApiState>,
    caller: Caller,
    params: Result<Query<SubmitParams>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let Query(params) = params?;
    let wait = match params.wait {
        Some(secs) if secs > MAX_WAIT_SECS => {
            return Err(Problem::bad_request(format!(
                "wait must be between 0 and {MAX_WAIT_SECS} seconds"
            ))
            .with_field("wait"));
        }
        secs => Duration::from_secs(secs.unwrap_or(0)),
    };
    let request: TaskRequest = json_body(&headers, body)?;
    let key = header_text(&headers, "idempotency-key")?;

    let svc = &state.services;
    let tenant = &caller.principal.tenant;
    let submitted = intake::submit(svc, &caller.principal, &caller.origin, request, key).await?;
    let task = submitted.task;
    tracing::Span::current().record("task_id", tracing::field::display(task.task_id));
    let limits = submitted.rate_limit.as_ref().map(rate_limit_headers);

    // A fresh task with no wait cannot have finished: skip the read.
    let mut response = if submitted.created && wait.is_zero() {
        accepted(&task)
    } else {
        let record = intake::wait(svc, tenant, task.task_id, wait)
            .await
            .map_err(Problem::server)?;
        match record {
            Some(record) if record.task.status.is_terminal() => {
                (StatusCode::OK, Json(TaskView::from(record))).into_response()
            }
            Some(record) => accepted(&record.task),
            None => accepted(&task),
        }
    };
    for (name, value) in limits.into_iter().flatten() {
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    params(("id" = TaskId, Path, description = "The task id; one that cannot exist is 404")),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the viewer role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task in the caller's tenant", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant, stage = "intake", task_id))]
pub(crate) async fn get_task(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<TaskView>, Problem> {
    let id = parse_id(path)?;
    tracing::Span::current().record("task_id", tracing::field::display(id));
    let record = intake::get(&state.services, &caller.principal.tenant, id)
        .await
        .map_err(Problem::server)?
        .ok_or_else(|| Problem::not_found("task"))?;
    Ok(Json(record.into()))
}

/// The answer as text, or the problem of its absence.
async fn serve_output(
    state: &ApiState,
    caller: &Caller,
    task_id: TaskId,
    of: intake::OutputOf,
) -> Result<Response, Problem> {
    match intake::output(&state.services, &caller.principal.tenant, task_id, of).await {
        Ok(text) => {
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
        }
        Err(intake::OutputError::TaskNotFound) => Err(Problem::not_found("task")),
        Err(intake::OutputError::NoOutput) => Err(Problem::not_found("output")),
        Err(intake::OutputError::Store(e)) => Err(Problem::server(e)),
        Err(intake::OutputError::Blob(e)) => Err(Problem::unavailable(&e)),
    }
}

#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/output",
    tag = "tasks",
    params(("id" = TaskId, Path, description = "The task id; one that cannot exist is 404")),
    responses(
        (status = 200, description = "The task's combined answer in full, inline or claim-checked", body = String, content_type = "text/plain; charset=utf-8"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the viewer role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task in the caller's tenant, or no answer (yet)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant, stage = "intake", task_id))]
pub(crate) async fn get_task_output(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let id = parse_id(path)?;
    tracing::Span::current().record("task_id", tracing::field::display(id));
    serve_output(&state, &caller, id, intake::OutputOf::Task).await
}

#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/calls/{call_id}/output",
    tag = "tasks",
    params(
        ("id" = TaskId, Path, description = "The task id; one that cannot exist is 404"),
        ("call_id" = CallId, Path, description = "One of the task's calls; one that cannot exist is 404"),
    ),
    responses(
        (status = 200, description = "The call's answer in full, inline or claim-checked", body = String, content_type = "text/plain; charset=utf-8"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the viewer role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task in the caller's tenant, no such call, or no answer", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant, stage = "intake", task_id, call_id))]
pub(crate) async fn get_call_output(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, Problem> {
    let Path((task, call)) = path.map_err(path_not_found("task"))?;
    // Ids that cannot exist are as absent as ones that do not.
    let task_id = TaskId::parse(&task).map_err(|_| Problem::not_found("task"))?;
    let call_id = CallId::parse(&call).map_err(|_| Problem::not_found("output"))?;
    let span = tracing::Span::current();
    span.record("task_id", tracing::field::display(task_id));
    span.record("call_id", tracing::field::display(call_id));
    serve_output(&state, &caller, task_id, intake::OutputOf::Call(call_id)).await
}

#[utoipa::path(
    get,
    path = "/v1/tasks",
    tag = "tasks",
    params(ListParams),
    responses(
        (status = 200, description = "The caller's tenant's tasks, newest first, without their calls", body = TaskPage),
        (status = 400, description = "Bad limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the viewer role", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant, stage = "intake"))]
pub(crate) async fn list_tasks(
    State(state): State<ApiState>,
    caller: Caller,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<TaskPage>, Problem> {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(
            Problem::bad_request(format!("limit must be between 1 and {MAX_PAGE}"))
                .with_field("limit"),
        );
    }
    // Cursors are task ids; refusing a foreign one here keeps it a client
    // error rather than a store failure.
    let cursor = params.cursor.filter(|c| !c.is_empty());
    if let Some(cursor) = &cursor
        && TaskId::parse(cursor).is_err()
    {
        return Err(
            Problem::bad_request("cursor must be the `next` of a previous page")
                .with_field("cursor"),
        );
    }
    let page = intake::list(
        &state.services,
        &caller.principal.tenant,
        limit,
        cursor.as_deref(),
    )
    .await
    .map_err(Problem::server)?;
    Ok(Json(TaskPage {
        items: page.items.into_iter().map(TaskView::summary).collect(),
        next: page.next,
    }))
}

#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/cancel",
    tag = "tasks",
    params(("id" = TaskId, Path, description = "The task id; one that cannot exist is 404")),
    responses(
        (status = 200, description = "The cancelled task", body = TaskView),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the submitter role; a submitter may cancel only the tasks it submitted (an operator any)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task in the caller's tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The task has already finished", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant, stage = "intake", task_id))]
pub(crate) async fn cancel_task(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<TaskView>, Problem> {
    let id = parse_id(path)?;
    tracing::Span::current().record("task_id", tracing::field::display(id));
    let svc = &state.services;
    let task = intake::cancel(svc, &caller.principal, &caller.origin, id).await?;
    // The cancel is done; reading the calls back is only for the answer.
    match intake::get(svc, &task.tenant, id).await {
        Ok(Some(record)) => Ok(Json(record.into())),
        Ok(None) => Ok(Json(TaskView::summary(task))),
        Err(e) => {
            tracing::warn!(error = %e, "cancelled, but the calls could not be read back");
            Ok(Json(TaskView::summary(task)))
        }
    }
}
