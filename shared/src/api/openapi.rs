//! The OpenAPI 3.1 document, generated from the handlers' annotations so it
//! cannot drift from the routes.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::audit::AuditPage;
use super::problem::Problem;
use super::tenants::{
    BudgetsRequest, PlatformAgentName, RateLimitsRequest, RatesRequest, SettingsRequest,
};
use super::views::{
    Accepted, AgentList, AgentView, BudgetsView, CallView, CeilingsView, Health, PeriodUsageView,
    PricingView, RateLimitsView, RatesView, ResultView, SettingsView, TaskPage, TaskView,
    UsageView,
};
use super::{agents, audit, tasks, tenants};
use crate::domain::audit::{Actor, Detail, Resource};
use crate::domain::call::Hop;
use crate::domain::{AgentRequest, AuditEntry, TaskRequest, TenantId};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "MAOF API",
        description = "Multi-agent LLM orchestration: submit tasks, read their results, manage the agent registry. \
            Errors are application/problem+json."
    ),
    paths(
        tasks::submit_task,
        tasks::list_tasks,
        tasks::get_task,
        tasks::get_task_output,
        tasks::get_call_output,
        tasks::cancel_task,
        agents::list_agents,
        agents::get_agent_health,
        agents::get_agent,
        agents::put_agent,
        agents::delete_agent,
        agents::list_platform_agents,
        agents::get_platform_agent,
        agents::put_platform_agent,
        agents::delete_platform_agent,
        tenants::get_own_settings,
        tenants::put_own_settings,
        tenants::get_settings,
        tenants::put_settings,
        tenants::get_usage,
        audit::list_audit,
        audit::list_platform_audit,
        super::health,
        openapi_json,
    ),
    components(schemas(
        Problem, TaskRequest, Accepted, TaskView, ResultView, CallView, TaskPage, AgentRequest, AgentView, PricingView, AgentList, Health,
        SettingsRequest, PlatformAgentName, RateLimitsRequest, RatesRequest, SettingsView,
        CeilingsView, RateLimitsView, RatesView, TenantId, BudgetsRequest, BudgetsView, UsageView,
        PeriodUsageView, AuditPage, AuditEntry, Actor, Resource, Detail, Hop,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "tasks", description = "Tasks of the caller's tenant"),
        (name = "agents", description = "The tenant's agents, and the platform agents it may use"),
        (name = "platform", description = "Platform agents (platform_admin)"),
        (name = "tenants", description = "Tenants' settings"),
        (name = "audit", description = "The tenant's audit log (admin), read only"),
        (name = "system", description = "Liveness and this document"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` scheme the routes' `security` refers to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "A JWT: HS256 (MAOF's own, claims `sub`, `tenant`, `roles`, `exp`) or RS256/ES256 \
                 from the configured identity provider. A refusal is a 401 problem whose `code` \
                 says why.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The document as served. utoipa 5.5 writes a response link's fields in
/// snake case (`operation_id`); OpenAPI spells them `operationId`,
/// `operationRef` and `requestBody`, which is what clients look for.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let operations = doc
        .get_mut("paths")
        .and_then(|p| p.as_object_mut())
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut());
    for operation in operations {
        let Some(responses) = operation
            .get_mut("responses")
            .and_then(|r| r.as_object_mut())
        else {
            continue;
        };
        let links = responses
            .values_mut()
            .filter_map(|r| r.get_mut("links").and_then(|l| l.as_object_mut()))
            .flat_map(|links| links.values_mut())
            .filter_map(|link| link.as_object_mut());
        for link in links {
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(snake) {
                    link.insert(camel.to_owned(), value);
                }
            }
        }
    }
    doc
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "system",
    responses((status = 200, description = "This document", content_type = "application/json"))
)]
pub(crate) async fn openapi_json() -> Json<serde_json::Value> {
    Json(document())
}
