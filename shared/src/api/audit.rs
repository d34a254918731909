//! `/v1/audit` and `/v1/platform/audit`: the audit logs, read only. There
//! is no route that changes or deletes an entry.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::Caller;
use super::problem::Problem;
use crate::domain::{Action, AuditEntry, AuditId, AuditQuery, Owner};
use crate::stages::audit;

pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditParams {
    /// Entries made at or after this time (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Entries made at or before this time (RFC 3339); not before `from`.
    to: Option<DateTime<Utc>>,
    /// Only entries of this action.
    #[param(inline)]
    action: Option<Action>,
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The `next` of the previous page; empty: the first page.
    #[param(pattern = "^([0-7][0-9A-HJKMNP-TV-Z]{25})?$")]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first. A page may hold fewer than `limit` entries (even none)
    /// and still have a `next`: follow it until it is null.
    pub items: Vec<AuditEntry>,
    /// Pass as `cursor` for the next page; null on the last one.
    #[schema(required = true)]
    pub next: Option<String>,
}

impl AuditParams {
    fn query(self) -> Result<AuditQuery, Problem> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(
                Problem::bad_request(format!("limit must be between 1 and {MAX_PAGE}"))
                    .with_field("limit"),
            );
        }
        if let (Some(from), Some(to)) = (self.from, self.to)
            && from > to
        {
            return Err(Problem::bad_request("from must not be after to").with_field("from"));
        }
        let before = match self.cursor.as_deref().filter(|c| !c.is_empty()) {
            Some(cursor) => Some(AuditId::parse(cursor).map_err(|_| {
                Problem::bad_request("cursor must be the `next` of a previous page")
                    .with_field("cursor")
            })?),
            None => None,
        };
        Ok(AuditQuery {
            from: self.from,
            to: self.to,
            action: self.action,
            before,
            limit,
        })
    }
}

async fn page(
    state: &ApiState,
    log: &Owner,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<AuditPage>, Problem> {
    let Query(params) = params?;
    let query = params.query()?;
    let page = audit::list(&state.services, log, &query)
        .await
        .map_err(Problem::server)?;
    Ok(Json(AuditPage {
        items: page.items,
        next: page.next,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, description = "The caller's tenant's audit log, newest first", body = AuditPage),
        (status = 400, description = "Bad time, action, limit or cursor, or `from` after `to`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant))]
pub(crate) async fn list_audit(
    State(state): State<ApiState>,
    caller: Caller,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<AuditPage>, Problem> {
    page(&state, &Owner::Tenant(caller.principal.tenant), params).await
}

#[utoipa::path(
    get,
    path = "/v1/platform/audit",
    tag = "platform",
    params(AuditParams),
    responses(
        (status = 200, description = "The platform's audit log (platform agents; requests whose token could not be verified), newest first", body = AuditPage),
        (status = 400, description = "Bad time, action, limit or cursor, or `from` after `to`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the platform_admin role", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(sub = %_caller.principal.sub))]
pub(crate) async fn list_platform_audit(
    State(state): State<ApiState>,
    _caller: Caller,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<AuditPage>, Problem> {
    page(&state, &Owner::Platform, params).await
}
