//! Tenants' settings: `platform_admin` sets them for any tenant
//! (`/v1/tenants/{tenant}/settings`): the platform agents it may use and
//! the ceilings of its limits. A tenant's admins read theirs and may lower
//! their own limits and budgets below the ceilings (`/v1/tenant/settings`),
//! and see what the tenant spent (`/v1/tenant/usage`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::NaiveDate;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::Caller;
use super::extract::json_body;
use super::problem::{Problem, path_not_found};
use super::views::{PeriodUsageView, SettingsView, UsageView};
use crate::domain::tenant::PlatformAgentsError;
use crate::domain::{
    Budgets, FilterError, FilterSettings, Filters, OwnSettings, Period, PlatformAgents, RateLimits,
    Rates, TenantId, TenantSettings, Usd,
};
use crate::domain::{money, text};
use crate::stages::agents::{self, MAX_PLATFORM_AGENTS_LISTED};

/// A partial update: each section named replaces the one stored; the
/// others are left as they are. Unknown sections are refused (400).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsRequest {
    /// The platform agents the tenant may use: their ids, or `["*"]` for
    /// all. Only `platform_admin` sets it.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>, max_items = 1000)]
    pub platform_agents: Option<Vec<PlatformAgentName>>,
    /// Requests and estimated tokens per minute, for the tenant and for each
    /// token subject. Set by `platform_admin`, these are the ceilings; set
    /// by the tenant's admin, its own limits, which may only be lower.
    #[serde(default, deserialize_with = "text::optional_object")]
    pub rate_limits: Option<RateLimitsRequest>,
    /// What the tenant may spend per UTC day and month. Set by
    /// `platform_admin`, these are the ceilings; set by the tenant's admin,
    /// its own budgets, which may only be lower.
    #[serde(default, deserialize_with = "text::optional_object")]
    pub budgets: Option<BudgetsRequest>,
    /// Content filters: PII kinds to block, redact or log, and block rules
    /// (at most 100, each a regular expression of at most 1,000 bytes), on
    /// input, output or both. Set by `platform_admin`, they apply to the
    /// tenant whatever it sets; set by the tenant's admin, they apply too.
    #[serde(default, deserialize_with = "text::optional_object")]
    pub filters: Option<FilterSettings>,
}

/// 422 naming the field, for filters that do not compile.
fn filter_error(e: &FilterError) -> Problem {
    Problem::unprocessable(e.to_string()).with_field(e.field())
}

/// Budgets in US dollars; a budget left out is none (within the ceiling).
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetsRequest {
    #[serde(default)]
    #[schema(schema_with = money::nullable_amount_in)]
    pub daily_usd: Option<Usd>,
    #[serde(default)]
    #[schema(schema_with = money::nullable_amount_in)]
    pub monthly_usd: Option<Usd>,
}

impl TryFrom<BudgetsRequest> for Budgets {
    type Error = Problem;

    fn try_from(b: BudgetsRequest) -> Result<Self, Problem> {
        for (name, value) in [("daily_usd", b.daily_usd), ("monthly_usd", b.monthly_usd)] {
            if value.is_some_and(Usd::is_negative) {
                return Err(
                    Problem::unprocessable(format!("budgets.{name} must not be negative"))
                        .with_field(format!("budgets.{name}")),
                );
            }
        }
        Ok(Budgets {
            daily_usd: b.daily_usd,
            monthly_usd: b.monthly_usd,
        })
    }
}

/// Per-minute limits; a limit left out is none (within the ceiling).
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RatesRequest {
    /// Requests that create work (tasks), per minute.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000000)]
    pub rpm: Option<u64>,
    /// Estimated input tokens of those requests, per minute.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000000000_u64)]
    pub tpm: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsRequest {
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000000)]
    pub rpm: Option<u64>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000000000_u64)]
    pub tpm: Option<u64>,
    /// The same limits for each token subject (`sub`) of the tenant.
    #[serde(default, deserialize_with = "text::optional_object")]
    pub per_subject: Option<RatesRequest>,
}

const MAX_RPM: u64 = 1_000_000_000;
const MAX_TPM: u64 = 1_000_000_000_000;

fn rates(rpm: Option<u64>, tpm: Option<u64>, prefix: &str) -> Result<Rates, Problem> {
    for (name, value, max) in [("rpm", rpm, MAX_RPM), ("tpm", tpm, MAX_TPM)] {
        if let Some(v) = value
            && !(1..=max).contains(&v)
        {
            return Err(Problem::unprocessable(format!(
                "{prefix}{name} must be between 1 and {max}"
            ))
            .with_field(format!("{prefix}{name}")));
        }
    }
    Ok(Rates { rpm, tpm })
}

impl TryFrom<RateLimitsRequest> for RateLimits {
    type Error = Problem;

    fn try_from(r: RateLimitsRequest) -> Result<Self, Problem> {
        let per_subject = r.per_subject.map_or(Ok(Rates::default()), |p| {
            rates(p.rpm, p.tpm, "rate_limits.per_subject.")
        })?;
        Ok(RateLimits {
            tenant: rates(r.rpm, r.tpm, "rate_limits.")?,
            per_subject,
        })
    }
}

/// An agent id, or `*` alone for every platform agent.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(pattern = r"^(\*|[A-Za-z0-9._-]{1,64})$")]
pub struct PlatformAgentName(String);

impl TryFrom<SettingsRequest> for TenantSettings {
    type Error = Problem;

    fn try_from(request: SettingsRequest) -> Result<Self, Problem> {
        let platform_agents = request
            .platform_agents
            .map(|names| {
                if names.len() > MAX_PLATFORM_AGENTS_LISTED {
                    return Err(Problem::unprocessable(format!(
                        "platform_agents lists at most {MAX_PLATFORM_AGENTS_LISTED} ids"
                    ))
                    .with_field("platform_agents"));
                }
                let names: Vec<&str> = names.iter().map(|n| n.0.as_str()).collect();
                PlatformAgents::parse(&names).map_err(|e| {
                    let field = match &e {
                        PlatformAgentsError::BadId { index, .. } => {
                            format!("platform_agents[{index}]")
                        }
                        PlatformAgentsError::StarWithOthers => "platform_agents".to_owned(),
                    };
                    Problem::unprocessable(format!("platform_agents{e}")).with_field(field)
                })
            })
            .transpose()?;
        Ok(TenantSettings {
            platform_agents,
            rate_limits: request.rate_limits.map(RateLimits::try_from).transpose()?,
            budgets: request.budgets.map(Budgets::try_from).transpose()?,
            filters: request
                .filters
                .map(|f| Filters::compile(&f).map(|_| f))
                .transpose()
                .map_err(|e| filter_error(&e))?,
            ..TenantSettings::default()
        })
    }
}

fn tenant_in_path(path: Result<Path<String>, PathRejection>) -> Result<TenantId, Problem> {
    let Path(raw) = path.map_err(path_not_found("tenant"))?;
    TenantId::parse(raw).map_err(|_| Problem::not_found("tenant"))
}

async fn effective(state: &ApiState, tenant: &TenantId) -> Result<Json<SettingsView>, Problem> {
    let settings = agents::settings(&state.services, tenant)
        .await
        .map_err(Problem::server)?;
    Ok(Json(SettingsView::from(settings)))
}

#[utoipa::path(
    get,
    path = "/v1/tenant/settings",
    tag = "tenants",
    responses(
        (status = 200, description = "The settings that apply to the caller's tenant (defaults where nothing is set)", body = SettingsView),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant))]
pub(crate) async fn get_own_settings(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<SettingsView>, Problem> {
    effective(&state, &caller.principal.tenant).await
}

#[utoipa::path(
    put,
    path = "/v1/tenant/settings",
    tag = "tenants",
    request_body(content = SettingsRequest, content_type = "application/json",
        description = "The tenant's own limits and budgets, which may only be lower than its ceilings; `platform_agents` is platform_admin's (403)."),
    responses(
        (status = 200, description = "Written; the settings that now apply", body = SettingsView),
        (status = 400, description = "Malformed JSON, unknown field or wrong type", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role; or a limit above its ceiling, or a section only platform_admin sets (`field` names it)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Other writers kept changing the settings; try again", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 256 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON (Content-Type)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A section breaks a rule (`field` names it)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant, sub = %caller.principal.sub))]
pub(crate) async fn put_own_settings(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SettingsView>, Problem> {
    let tenant = &caller.principal.tenant;
    let request: SettingsRequest = json_body(&headers, body)?;
    let forbidden = |field: &str, detail: String| {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", detail).with_field(field)
    };
    if request.platform_agents.is_some() {
        return Err(forbidden(
            "platform_agents",
            "platform_agents is set by platform_admin".to_owned(),
        ));
    }
    let own = OwnSettings {
        rate_limits: request.rate_limits.map(RateLimits::try_from).transpose()?,
        budgets: request.budgets.map(Budgets::try_from).transpose()?,
        filters: request.filters,
    };
    let current = agents::settings(&state.services, tenant)
        .await
        .map_err(Problem::server)?;
    if let Some(filters) = &own.filters {
        Filters::combine(&current.platform_filters, filters).map_err(|e| filter_error(&e))?;
    }
    if let Some(field) = current.refuse_own(&own) {
        return Err(forbidden(
            &field,
            format!(
                "{field} is above the tenant's ceiling; a tenant may only lower its limits and budgets"
            ),
        ));
    }
    agents::update_own_settings(
        &state.services,
        tenant,
        own,
        &caller.principal,
        &caller.origin,
    )
    .await
    .map_err(settings_write)?;
    tracing::info!("tenant's own settings written");
    effective(&state, tenant).await
}

fn settings_write(e: crate::ports::StoreError) -> Problem {
    match e {
        crate::ports::StoreError::VersionConflict { .. }
        | crate::ports::StoreError::AlreadyExists => {
            Problem::conflict("other writers kept changing the settings; try again")
        }
        e => Problem::server(e),
    }
}

#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/settings",
    tag = "tenants",
    params(("tenant" = TenantId, Path, description = "The tenant")),
    responses(
        (status = 200, description = "The settings that apply to the tenant (defaults where nothing is set)", body = SettingsView),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the platform_admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "A tenant id that cannot exist", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(sub = %_caller.principal.sub))]
pub(crate) async fn get_settings(
    State(state): State<ApiState>,
    _caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SettingsView>, Problem> {
    let tenant = tenant_in_path(path)?;
    effective(&state, &tenant).await
}

#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant}/settings",
    tag = "tenants",
    params(("tenant" = TenantId, Path, description = "The tenant")),
    request_body(content = SettingsRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Written; the settings that now apply", body = SettingsView),
        (status = 400, description = "Malformed JSON, unknown field or wrong type", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the platform_admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "A tenant id that cannot exist", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Other writers kept changing the settings; try again", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 256 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON (Content-Type)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A section breaks a rule (`field` names it)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(sub = %caller.principal.sub))]
pub(crate) async fn put_settings(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SettingsView>, Problem> {
    let tenant = tenant_in_path(path)?;
    let request: SettingsRequest = json_body(&headers, body)?;
    let update = TenantSettings::try_from(request)?;
    agents::update_settings(
        &state.services,
        &tenant,
        update,
        &caller.principal,
        &caller.origin,
    )
    .await
    .map_err(settings_write)?;
    tracing::info!(%tenant, "tenant settings written");
    effective(&state, &tenant).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UsageParams {
    /// A UTC day (`2026-11-26`); its month is shown with it. Default: today.
    #[param(value_type = Option<String>, format = Date)]
    date: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/tenant/usage",
    tag = "tenants",
    params(UsageParams),
    responses(
        (status = 200, description = "The caller's tenant's spend and reservations for a UTC day and its month, \
            with the budgets that apply. Spend is counted while the tenant has a budget.", body = UsageView),
        (status = 400, description = "A date that is not YYYY-MM-DD", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the viewer role", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A backend is unavailable; retry later", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(tenant = %caller.principal.tenant))]
pub(crate) async fn get_usage(
    State(state): State<ApiState>,
    caller: Caller,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<UsageView>, Problem> {
    let Query(params) = params?;
    let day = match params.date.as_deref() {
        None => state.services.clock.now().date_naive(),
        Some(text) => NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
            Problem::bad_request("date must be a day as YYYY-MM-DD").with_field("date")
        })?,
    };
    let tenant = &caller.principal.tenant;
    let (spend, settings) = tokio::try_join!(
        async {
            state
                .services
                .tasks
                .spend(tenant, day)
                .await
                .map_err(Problem::server)
        },
        async {
            agents::settings(&state.services, tenant)
                .await
                .map_err(Problem::server)
        },
    )?;
    Ok(Json(UsageView {
        day: PeriodUsageView::of(Period::Day, day, spend.day, &settings.budgets),
        month: PeriodUsageView::of(Period::Month, day, spend.month, &settings.budgets),
    }))
}
