//! Who may call what: one table for every route of the API. The router is
//! built from it, each route carrying its entry, and the `Caller`
//! extractor enforces the entry of the route it runs in; so a route cannot
//! exist without one, and the role-matrix test enumerates exactly this.
//!
//! | role | may |
//! |---|---|
//! | `viewer` | read everything of its tenant (tasks, agents it may use, usage) |
//! | `submitter` | also create tasks, and cancel those it submitted |
//! | `operator` | also cancel any task of its tenant |
//! | `admin` | also manage its tenant's agents, lower its own limits and budgets, read its audit log |
//! | `platform_admin` | also manage platform agents and every tenant's settings, read the platform's audit log |

use axum::Extension;
use axum::http::Method;
use axum::routing::{MethodRouter, delete, get, post, put};

use super::{ApiState, agents, audit, openapi, tasks, tenants};
use crate::domain::Role;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token (liveness, the API document).
    Public,
    /// A token holding at least this role (roles nest).
    Role(Role),
}

/// A route: its method and path, who may call it, and its handler.
pub(crate) struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub handler: MethodRouter<ApiState>,
}

fn route(
    method: Method,
    path: &'static str,
    access: Access,
    handler: MethodRouter<ApiState>,
) -> Route {
    Route {
        method,
        path,
        access,
        // The extractor reads the entry from the request.
        handler: handler.route_layer(Extension(access)),
    }
}

/// Every route of the API, with who may call it.
pub(crate) fn routes() -> Vec<Route> {
    use Access::Public;
    let viewer = Access::Role(Role::Viewer);
    let submitter = Access::Role(Role::Submitter);
    let admin = Access::Role(Role::Admin);
    let platform = Access::Role(Role::PlatformAdmin);
    vec![
        route(
            Method::POST,
            "/v1/tasks",
            submitter,
            post(tasks::submit_task),
        ),
        route(Method::GET, "/v1/tasks", viewer, get(tasks::list_tasks)),
        route(Method::GET, "/v1/tasks/{id}", viewer, get(tasks::get_task)),
        route(
            Method::GET,
            "/v1/tasks/{id}/output",
            viewer,
            get(tasks::get_task_output),
        ),
        route(
            Method::GET,
            "/v1/tasks/{id}/calls/{call_id}/output",
            viewer,
            get(tasks::get_call_output),
        ),
        // A submitter cancels its own tasks; an operator any (checked in the handler).
        route(
            Method::POST,
            "/v1/tasks/{id}/cancel",
            submitter,
            post(tasks::cancel_task),
        ),
        route(Method::GET, "/v1/agents", viewer, get(agents::list_agents)),
        route(
            Method::GET,
            "/v1/agents/{id}",
            viewer,
            get(agents::get_agent),
        ),
        route(
            Method::GET,
            "/v1/agents/{id}/health",
            viewer,
            get(agents::get_agent_health),
        ),
        route(
            Method::PUT,
            "/v1/agents/{id}",
            admin,
            put(agents::put_agent),
        ),
        route(
            Method::DELETE,
            "/v1/agents/{id}",
            admin,
            delete(agents::delete_agent),
        ),
        route(
            Method::GET,
            "/v1/platform/agents",
            platform,
            get(agents::list_platform_agents),
        ),
        route(
            Method::GET,
            "/v1/platform/agents/{id}",
            platform,
            get(agents::get_platform_agent),
        ),
        route(
            Method::PUT,
            "/v1/platform/agents/{id}",
            platform,
            put(agents::put_platform_agent),
        ),
        route(
            Method::DELETE,
            "/v1/platform/agents/{id}",
            platform,
            delete(agents::delete_platform_agent),
        ),
        route(
            Method::GET,
            "/v1/tenant/settings",
            admin,
            get(tenants::get_own_settings),
        ),
        route(
            Method::PUT,
            "/v1/tenant/settings",
            admin,
            put(tenants::put_own_settings),
        ),
        route(
            Method::GET,
            "/v1/tenant/usage",
            viewer,
            get(tenants::get_usage),
        ),
        route(
            Method::GET,
            "/v1/tenants/{tenant}/settings",
            platform,
            get(tenants::get_settings),
        ),
        route(
            Method::PUT,
            "/v1/tenants/{tenant}/settings",
            platform,
            put(tenants::put_settings),
        ),
        route(Method::GET, "/v1/audit", admin, get(audit::list_audit)),
        route(
            Method::GET,
            "/v1/platform/audit",
            platform,
            get(audit::list_platform_audit),
        ),
        route(Method::GET, "/health", Public, get(super::health)),
        route(
            Method::GET,
            "/openapi.json",
            Public,
            get(openapi::openapi_json),
        ),
    ]
}
