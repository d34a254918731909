//! The router over the memory backends, driven request by request. Workers
//! are not running: tasks stay queued unless a test moves them.

mod audit;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use secrecy::SecretString;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{ApiState, Authenticator, MAX_BODY_BYTES, router};
use crate::adapters::memory::{MemoryQueue, MemoryRegistry, MemorySecrets, MemoryTaskStore};
use crate::domain::task::MAX_CONTENT_BYTES;
use crate::domain::{
    AgentId, CallId, CallResult, CallStatus, Provider, Role, TaskId, TaskPatch, TaskStatus,
    TaskType, TenantId, Usage, Usd,
};
use crate::ports::TaskStore;
use crate::ports::{CachedSecrets, Clock, QueueName, SystemClock};
use crate::providers::{Providers, http_client};
use crate::stages::{Services, Settings};

const SECRET: &str = "api-test-secret-0123456789abcdef0123456789";
const PROBLEM_JSON: &str = "application/problem+json";

struct Harness {
    app: Router,
    queue: Arc<MemoryQueue>,
    tasks: Arc<MemoryTaskStore>,
    auth: Arc<Authenticator>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts a problem+json answer with `status`, and returns its body.
    fn problem(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.header(header::CONTENT_TYPE), PROBLEM_JSON);
        assert_eq!(self.body["status"], status.as_u16());
        assert!(self.body["type"].as_str().unwrap().starts_with("https://"));
        assert!(self.body["title"].is_string() && self.body["detail"].is_string());
        &self.body
    }
}

fn harness() -> Harness {
    let queue = Arc::new(MemoryQueue::new(3));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let secrets = Arc::new(CachedSecrets::new(
        Arc::new(MemorySecrets::new()),
        clock.clone(),
        Duration::from_secs(60),
    ));
    let tasks = Arc::new(MemoryTaskStore::new());
    let audit = tasks.audit_log();
    let services = Services::new(
        tasks.clone(),
        Arc::new(MemoryRegistry::with_audit(audit.clone())),
        queue.clone(),
        secrets,
        Arc::new(Providers::new(
            http_client(crate::providers::OutboundPolicy::strict()).unwrap(),
        )),
        clock,
        Settings::default(),
    )
    .with_audit(audit);
    let auth = Arc::new(Authenticator::new(SecretString::from(SECRET)));
    let app = router(ApiState {
        services,
        auth: auth.clone(),
    });
    Harness {
        app,
        queue,
        tasks,
        auth,
    }
}

impl Harness {
    fn token(&self, tenant: &str, roles: &[Role]) -> String {
        self.auth
            .mint(
                "tester",
                &TenantId::parse(tenant).unwrap(),
                roles,
                Duration::from_secs(600),
            )
            .unwrap()
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// A request with a bearer token (if any), extra headers and a JSON body (if any).
    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = body.map_or_else(Body::empty, Body::from);
        self.send(request.body(body).unwrap()).await
    }

    async fn submit(&self, token: &str, task: Value) -> Reply {
        self.submit_with(token, "/v1/tasks", &[], task).await
    }

    async fn submit_with(
        &self,
        token: &str,
        uri: &str,
        headers: &[(&str, &str)],
        task: Value,
    ) -> Reply {
        let body = serde_json::to_vec(&task).unwrap();
        self.call(Method::POST, uri, Some(token), headers, Some(body))
            .await
    }

    async fn get(&self, token: &str, uri: &str) -> Reply {
        self.call(Method::GET, uri, Some(token), &[], None).await
    }
}

fn text_task(content: &str) -> Value {
    json!({"task_type": "text", "content": content})
}

fn mock_agent(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "name": name, "provider": "mock", "model": "echo", "capabilities": ["text"],
        "pricing": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}
    }))
    .unwrap()
}

#[tokio::test]
async fn a_tenant_has_at_most_its_limit_of_agents() {
    use crate::stages::agents::MAX_AGENTS_PER_OWNER;
    let h = harness();
    let admin = h.token("acme", &[Role::Admin]);
    for i in 0..MAX_AGENTS_PER_OWNER {
        let reply = h
            .call(
                Method::PUT,
                &format!("/v1/agents/a{i}"),
                Some(&admin),
                &[],
                Some(mock_agent("A")),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{i}: {}", reply.body);
    }
    let over = h
        .call(
            Method::PUT,
            "/v1/agents/one-more",
            Some(&admin),
            &[],
            Some(mock_agent("A")),
        )
        .await;
    assert_eq!(
        over.problem(StatusCode::UNPROCESSABLE_ENTITY)["field"],
        "id"
    );
    // Replacing one still works; another tenant has its own allowance.
    let replaced = h
        .call(
            Method::PUT,
            "/v1/agents/a0",
            Some(&admin),
            &[],
            Some(mock_agent("B")),
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK);
    let other = h.token("globex", &[Role::Admin]);
    let theirs = h
        .call(
            Method::PUT,
            "/v1/agents/one-more",
            Some(&other),
            &[],
            Some(mock_agent("A")),
        )
        .await;
    assert_eq!(theirs.status, StatusCode::CREATED);
}

// --- the role matrix ---

/// A request for `route` that its handler can take when allowed: ids that
/// parse, and a body of the right shape.
fn request_for(route: &super::access::Route) -> (String, Option<Vec<u8>>) {
    let uri = route
        .path
        .replace(
            "{id}",
            &if route.path.contains("agents") {
                "matrix-agent".to_owned()
            } else {
                TaskId::new().to_string()
            },
        )
        .replace("{call_id}", &crate::domain::CallId::new().to_string())
        .replace("{tenant}", "globex");
    let body = match (route.method.clone(), route.path) {
        (Method::POST, "/v1/tasks") => Some(serde_json::to_vec(&text_task("matrix")).unwrap()),
        (Method::PUT, p) if p.contains("agents") => Some(mock_agent("matrix")),
        (Method::PUT, _) => Some(b"{}".to_vec()),
        _ => None,
    };
    (uri, body)
}

/// Every route of the router (the access table it is built from) × every
/// role × a token of the tenant and of another: 401 without a token, 403
/// (`role_missing`) below the route's role, neither at or above it. A route
/// added without an entry cannot exist; one whose entry is not in the API
/// document fails here.
#[tokio::test]
async fn every_route_answers_by_the_one_access_table() {
    use super::access::{Access, routes};
    let h = harness();
    let doc = h
        .call(Method::GET, "/openapi.json", None, &[], None)
        .await
        .body;
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    let mut table: Vec<(String, String)> = routes()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_owned()))
        .collect();
    documented.sort();
    table.sort();
    assert_eq!(
        table, documented,
        "the access table and /openapi.json list the same routes"
    );

    for route in routes() {
        let (uri, body) = request_for(&route);
        let what = format!("{} {}", route.method, route.path);
        let anonymous = h
            .call(route.method.clone(), &uri, None, &[], body.clone())
            .await;
        let needed = match route.access {
            Access::Public => {
                assert_eq!(anonymous.status, StatusCode::OK, "{what} is public");
                continue;
            }
            Access::Role(needed) => needed,
        };
        assert_eq!(
            anonymous.problem(StatusCode::UNAUTHORIZED)["code"],
            "token_missing",
            "{what}"
        );
        for tenant in ["acme", "globex"] {
            for role in Role::ALL {
                let token = h.token(tenant, &[role]);
                let reply = h
                    .call(route.method.clone(), &uri, Some(&token), &[], body.clone())
                    .await;
                if role < needed {
                    assert_eq!(
                        reply.problem(StatusCode::FORBIDDEN)["code"],
                        "role_missing",
                        "{what} as {role:?} of {tenant}"
                    );
                } else {
                    assert!(
                        ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&reply.status),
                        "{what} as {role:?} of {tenant}: {} {}",
                        reply.status,
                        reply.body
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn a_submitter_cancels_its_own_tasks_and_an_operator_any() {
    let h = harness();
    let alice = h.token("acme", &[Role::Submitter]);
    let bob = h
        .auth
        .mint(
            "bob",
            &TenantId::parse("acme").unwrap(),
            &[Role::Submitter],
            Duration::from_secs(600),
        )
        .unwrap();
    let operator = h
        .auth
        .mint(
            "ops",
            &TenantId::parse("acme").unwrap(),
            &[Role::Operator],
            Duration::from_secs(600),
        )
        .unwrap();
    let id = |reply: Reply| reply.body["task_id"].as_str().unwrap().to_owned();
    let first = id(h.submit(&alice, text_task("a")).await);
    let cancel = |token: String, task: String| {
        let h = &h;
        async move {
            h.call(
                Method::POST,
                &format!("/v1/tasks/{task}/cancel"),
                Some(&token),
                &[],
                None,
            )
            .await
        }
    };
    let refused = cancel(bob.clone(), first.clone()).await;
    assert_eq!(
        refused.problem(StatusCode::FORBIDDEN)["code"],
        "not_own_task"
    );
    assert_eq!(cancel(alice.clone(), first).await.status, StatusCode::OK);
    let second = id(h.submit(&alice, text_task("b")).await);
    assert_eq!(cancel(operator, second).await.status, StatusCode::OK);
}

// --- tenancy: own agents, platform agents, keys, settings ---

fn openai_agent(secret: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "name": "GPT", "provider": "openai", "model": "gpt-4o-mini", "capabilities": ["text"],
        "secret": secret, "base_url": "https://api.openai.com/v1"
    }))
    .unwrap()
}

fn ids(reply: &Reply) -> Vec<String> {
    reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_tenants_agents_are_its_own() {
    let h = harness();
    let acme = h.token("acme", &[Role::Admin]);
    let globex = h.token("globex", &[Role::Admin]);
    let put = |token: String, name: &'static str| {
        let h = &h;
        async move {
            h.call(
                Method::PUT,
                "/v1/agents/same-id",
                Some(&token),
                &[],
                Some(mock_agent(name)),
            )
            .await
        }
    };
    assert_eq!(
        put(acme.clone(), "acme's").await.status,
        StatusCode::CREATED
    );
    // Another tenant neither reads, lists, replaces nor deletes it...
    h.get(&globex, "/v1/agents/same-id")
        .await
        .problem(StatusCode::NOT_FOUND);
    assert!(ids(&h.get(&globex, "/v1/agents").await).is_empty());
    h.call(
        Method::DELETE,
        "/v1/agents/same-id",
        Some(&globex),
        &[],
        None,
    )
    .await
    .problem(StatusCode::NOT_FOUND);
    // ...and the same id is its own, separate agent.
    assert_eq!(
        put(globex.clone(), "globex's").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        h.get(&acme, "/v1/agents/same-id").await.body["name"],
        "acme's"
    );
    assert_eq!(
        h.get(&globex, "/v1/agents/same-id").await.body["name"],
        "globex's"
    );
    assert_eq!(
        h.get(&acme, "/v1/agents/same-id").await.body["platform"],
        false
    );
}

#[tokio::test]
async fn a_tenants_agent_names_only_the_tenants_own_keys_and_viewers_do_not_see_them() {
    let h = harness();
    let admin = h.token("acme", &[Role::Admin]);
    let uri = "/v1/agents/gpt";
    for secret in [
        "maof/openai",
        "maof/tenants/globex/openai",
        "maof/tenants/acme",
        "other/key",
    ] {
        let reply = h
            .call(
                Method::PUT,
                uri,
                Some(&admin),
                &[],
                Some(openai_agent(secret)),
            )
            .await;
        let problem = reply.problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem["field"], "secret", "{secret}");
    }
    let own = h
        .call(
            Method::PUT,
            uri,
            Some(&admin),
            &[],
            Some(openai_agent("maof/tenants/acme/openai")),
        )
        .await;
    assert_eq!(own.status, StatusCode::CREATED, "{}", own.body);
    assert_eq!(own.body["secret"], "maof/tenants/acme/openai");
    let viewer = h.token("acme", &[Role::Viewer]);
    for read in [
        h.get(&viewer, uri).await.body,
        h.get(&viewer, "/v1/agents").await.body["items"][0].clone(),
    ] {
        assert_eq!(read["id"], "gpt");
        assert!(read.get("secret").is_none(), "{read}");
        assert!(read.get("base_url").is_none(), "{read}");
    }
    assert_eq!(
        h.get(&admin, uri).await.body["base_url"],
        "https://api.openai.com/v1"
    );
}

#[tokio::test]
async fn platform_agents_are_managed_by_platform_admins_and_used_where_settings_allow() {
    let h = harness();
    let platform = h.token("ops", &[Role::PlatformAdmin]);
    let admin = h.token("acme", &[Role::Admin]);
    let uri = "/v1/platform/agents/shared-gpt";
    // A tenant admin cannot manage platform agents, nor read them there.
    h.call(
        Method::PUT,
        uri,
        Some(&admin),
        &[],
        Some(openai_agent("maof/openai")),
    )
    .await
    .problem(StatusCode::FORBIDDEN);
    h.get(&admin, "/v1/platform/agents")
        .await
        .problem(StatusCode::FORBIDDEN);
    // A platform agent uses platform keys, never a tenant's.
    let reply = h
        .call(
            Method::PUT,
            uri,
            Some(&platform),
            &[],
            Some(openai_agent("maof/tenants/acme/openai")),
        )
        .await;
    assert_eq!(
        reply.problem(StatusCode::UNPROCESSABLE_ENTITY)["field"],
        "secret"
    );
    let created = h
        .call(
            Method::PUT,
            uri,
            Some(&platform),
            &[],
            Some(openai_agent("maof/openai")),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["platform"], true);
    assert_eq!(created.header(header::LOCATION), uri);
    assert_eq!(
        ids(&h.get(&platform, "/v1/platform/agents").await),
        ["shared-gpt"]
    );

    // Not allowed by default: the tenant does not see it.
    assert!(ids(&h.get(&admin, "/v1/agents").await).is_empty());
    h.get(&admin, "/v1/agents/shared-gpt")
        .await
        .problem(StatusCode::NOT_FOUND);
    assert_eq!(
        h.get(&admin, "/v1/tenant/settings").await.body["platform_agents"],
        json!([])
    );

    // Allowed: listed, marked, without its key or address.
    let settings = serde_json::to_vec(&json!({"platform_agents": ["shared-gpt"]})).unwrap();
    h.call(
        Method::PUT,
        "/v1/tenants/acme/settings",
        Some(&admin),
        &[],
        Some(settings.clone()),
    )
    .await
    .problem(StatusCode::FORBIDDEN);
    let set = h
        .call(
            Method::PUT,
            "/v1/tenants/acme/settings",
            Some(&platform),
            &[],
            Some(settings),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    assert_eq!(set.body["platform_agents"], json!(["shared-gpt"]));
    assert_eq!(
        h.get(&admin, "/v1/tenant/settings").await.body["platform_agents"],
        json!(["shared-gpt"])
    );
    let listed = h.get(&admin, "/v1/agents").await;
    assert_eq!(ids(&listed), ["shared-gpt"]);
    let seen = &listed.body["items"][0];
    assert_eq!(seen["platform"], true);
    assert!(
        seen.get("secret").is_none() && seen.get("base_url").is_none(),
        "{seen}"
    );

    // Its id is taken for this tenant; deleting it is not the tenant's to do.
    h.call(
        Method::PUT,
        "/v1/agents/shared-gpt",
        Some(&admin),
        &[],
        Some(mock_agent("mine")),
    )
    .await
    .problem(StatusCode::CONFLICT);
    h.call(
        Method::DELETE,
        "/v1/agents/shared-gpt",
        Some(&admin),
        &[],
        None,
    )
    .await
    .problem(StatusCode::FORBIDDEN);
    // Another tenant still does not see it.
    let globex = h.token("globex", &[Role::Admin]);
    assert!(ids(&h.get(&globex, "/v1/agents").await).is_empty());

    let deleted = h
        .call(Method::DELETE, uri, Some(&platform), &[], None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(ids(&h.get(&admin, "/v1/agents").await).is_empty());
}

#[tokio::test]
async fn tenant_settings_are_checked() {
    let h = harness();
    let platform = h.token("ops", &[Role::PlatformAdmin]);
    let put = |body: Value| {
        let (h, platform) = (&h, platform.clone());
        async move {
            h.call(
                Method::PUT,
                "/v1/tenants/acme/settings",
                Some(&platform),
                &[],
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await
        }
    };
    let mixed = put(json!({"platform_agents": ["*", "gpt"]})).await;
    assert_eq!(
        mixed.problem(StatusCode::UNPROCESSABLE_ENTITY)["field"],
        "platform_agents"
    );
    let bad = put(json!({"platform_agents": ["gpt", "no#"]})).await;
    assert_eq!(
        bad.problem(StatusCode::UNPROCESSABLE_ENTITY)["field"],
        "platform_agents[1]"
    );
    let negative = put(json!({"budgets": {"daily_usd": "-1"}})).await;
    assert_eq!(
        negative.problem(StatusCode::UNPROCESSABLE_ENTITY)["field"],
        "budgets.daily_usd"
    );
    put(json!({"budgets": {"weekly_usd": "1"}}))
        .await
        .problem(StatusCode::BAD_REQUEST);
    let budgets = put(json!({"budgets": {"daily_usd": "50", "monthly_usd": 1000}})).await;
    assert_eq!(
        budgets.body["budgets"],
        json!({"daily_usd": "50", "monthly_usd": "1000"})
    );
    let zero = put(json!({"rate_limits": {"per_subject": {"rpm": 0}}})).await;
    assert_eq!(
        zero.problem(StatusCode::UNPROCESSABLE_ENTITY)["field"],
        "rate_limits.per_subject.rpm"
    );
    // Filters that do not compile are refused, naming the rule's field.
    let bad_pattern = put(json!({"filters": {"block": [{"name": "ok", "pattern": "x"},
        {"name": "broken", "pattern": "(unclosed"}]}}))
    .await;
    assert_eq!(
        bad_pattern.problem(StatusCode::UNPROCESSABLE_ENTITY)["field"],
        "filters.block[1].pattern"
    );
    let huge =
        put(json!({"filters": {"block": [{"name": "huge", "pattern": "\\w{1000}{1000}"}]}})).await;
    assert_eq!(
        huge.problem(StatusCode::UNPROCESSABLE_ENTITY)["field"],
        "filters.block[0].pattern"
    );
    let rules: Vec<Value> = (0..101)
        .map(|i| json!({"name": format!("r{i}"), "pattern": format!("x{i}y")}))
        .collect();
    let many = put(json!({"filters": {"block": rules}})).await;
    assert_eq!(
        many.problem(StatusCode::UNPROCESSABLE_ENTITY)["field"],
        "filters.block"
    );
    let mandatory = put(json!({"filters": {"block": [{"name": "no-secrets",
        "pattern": "(?i)password\\s*="}]}}))
    .await;
    assert_eq!(
        mandatory.body["platform_filters"]["block"][0]["name"], "no-secrets",
        "{}",
        mandatory.body
    );
    let all = put(json!({"platform_agents": ["*"]})).await;
    assert_eq!(all.body["platform_agents"], json!(["*"]));
    // No limit where nothing is set (this harness's default).
    assert_eq!(all.body["rate_limits"], json!({"per_subject": {}}));
    let limited = put(json!({"rate_limits": {"rpm": 100, "tpm": 5000}})).await;
    assert_eq!(
        limited.body["rate_limits"],
        json!({"rpm": 100, "tpm": 5000, "per_subject": {}})
    );
    // A partial update leaves the sections it does not name.
    let empty = put(json!({})).await;
    assert_eq!(empty.body["platform_agents"], json!(["*"]));
    assert_eq!(empty.body["rate_limits"]["rpm"], 100);
    h.get(&platform, "/v1/tenants/no%23such/settings")
        .await
        .problem(StatusCode::NOT_FOUND);

    // The tenant's admin may lower its limits, never raise them.
    let admin = h.token("acme", &[Role::Admin]);
    let own = |body: Value| {
        let (h, admin) = (&h, admin.clone());
        async move {
            h.call(
                Method::PUT,
                "/v1/tenant/settings",
                Some(&admin),
                &[],
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await
        }
    };
    let raise = own(json!({"rate_limits": {"rpm": 101}})).await;
    assert_eq!(
        raise.problem(StatusCode::FORBIDDEN)["field"],
        "rate_limits.rpm"
    );
    let agents = own(json!({"platform_agents": ["*"]})).await;
    assert_eq!(
        agents.problem(StatusCode::FORBIDDEN)["field"],
        "platform_agents"
    );
    let richer = own(json!({"budgets": {"daily_usd": "50.01"}})).await;
    assert_eq!(
        richer.problem(StatusCode::FORBIDDEN)["field"],
        "budgets.daily_usd"
    );
    let thrifty = own(json!({"budgets": {"daily_usd": "10"}})).await;
    assert_eq!(thrifty.status, StatusCode::OK, "{}", thrifty.body);
    assert_eq!(
        thrifty.body["budgets"],
        json!({"daily_usd": "10", "monthly_usd": "1000"})
    );
    assert_eq!(
        thrifty.body["ceilings"]["budgets"],
        json!({"daily_usd": "50", "monthly_usd": "1000"})
    );
    // The tenant's own filters apply with the platform's, which stay.
    let filtered = own(
        json!({"filters": {"pii": {"mode": "redact", "kinds": ["email"]},
        "apply_to": ["output"]}}),
    )
    .await;
    assert_eq!(filtered.status, StatusCode::OK, "{}", filtered.body);
    assert_eq!(filtered.body["filters"]["apply_to"], json!(["output"]));
    assert_eq!(
        filtered.body["platform_filters"]["block"][0]["name"],
        "no-secrets"
    );
    let duplicate = own(json!({"filters": {"block": [{"name": "a", "pattern": "x"},
        {"name": "a", "pattern": "y"}]}}))
    .await;
    assert_eq!(
        duplicate.problem(StatusCode::UNPROCESSABLE_ENTITY)["field"],
        "filters.block[1].name"
    );
    let lower = own(json!({"rate_limits": {"rpm": 40, "per_subject": {"rpm": 5}}})).await;
    assert_eq!(lower.status, StatusCode::OK, "{}", lower.body);
    assert_eq!(
        lower.body["rate_limits"],
        json!({"rpm": 40, "tpm": 5000, "per_subject": {"rpm": 5}})
    );
    assert_eq!(
        lower.body["ceilings"]["rate_limits"],
        json!({"rpm": 100, "tpm": 5000, "per_subject": {}})
    );
    let viewer = h.token("acme", &[Role::Viewer]);
    h.call(
        Method::PUT,
        "/v1/tenant/settings",
        Some(&viewer),
        &[],
        Some(b"{}".to_vec()),
    )
    .await
    .problem(StatusCode::FORBIDDEN);
    // Lowering the ceiling below the tenant's own setting: the ceiling applies.
    let lowered = put(json!({"rate_limits": {"rpm": 20}})).await;
    assert_eq!(lowered.body["rate_limits"]["rpm"], 20);
}

fn task_body(content: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"task_type": "text", "content": content})).unwrap()
}

/// 50 concurrent submissions against an rpm of 10: exactly 10 are
/// accepted, and the other 40 get 429 with the headers a client needs.
#[tokio::test]
async fn a_tenants_rate_limit_admits_exactly_its_limit() {
    let h = harness();
    let platform = h.token("ops", &[Role::PlatformAdmin]);
    let limit = serde_json::to_vec(&json!({"rate_limits": {"rpm": 10}})).unwrap();
    let set = h
        .call(
            Method::PUT,
            "/v1/tenants/acme/settings",
            Some(&platform),
            &[],
            Some(limit),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    let submitter = h.token("acme", &[Role::Submitter]);
    let replies = futures::future::join_all((0..50).map(|_| {
        h.call(
            Method::POST,
            "/v1/tasks",
            Some(&submitter),
            &[],
            Some(task_body("hi")),
        )
    }))
    .await;
    let accepted: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::ACCEPTED)
        .collect();
    let limited: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(accepted.len(), 10);
    assert_eq!(limited.len(), 40);
    for reply in &limited {
        reply.problem(StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = reply.header(header::RETRY_AFTER).parse().unwrap();
        assert!((1..=6).contains(&retry), "{retry}");
        assert_eq!(reply.headers["ratelimit-limit"], "10");
        assert_eq!(reply.headers["ratelimit-remaining"], "0");
    }
    let remaining: Vec<u64> = accepted
        .iter()
        .map(|r| {
            r.headers["ratelimit-remaining"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(remaining.iter().min(), Some(&0));
    assert_eq!(remaining.iter().max(), Some(&9));
    // Only the accepted ones were stored and queued.
    assert_eq!(h.queue.depth(QueueName::Route), 10);
    // Another tenant has its own bucket.
    let other = h.token("globex", &[Role::Submitter]);
    let reply = h
        .call(
            Method::POST,
            "/v1/tasks",
            Some(&other),
            &[],
            Some(task_body("hi")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_subjects_limit_and_the_token_limit_apply_too() {
    let h = harness();
    let platform = h.token("ops", &[Role::PlatformAdmin]);
    let limits =
        serde_json::to_vec(&json!({"rate_limits": {"tpm": 100, "per_subject": {"rpm": 2}}}))
            .unwrap();
    h.call(
        Method::PUT,
        "/v1/tenants/acme/settings",
        Some(&platform),
        &[],
        Some(limits),
    )
    .await;
    let alice = h.token("acme", &[Role::Submitter]);
    let bob = h
        .auth
        .mint(
            "bob",
            &TenantId::parse("acme").unwrap(),
            &[Role::Submitter],
            Duration::from_secs(600),
        )
        .unwrap();
    for _ in 0..2 {
        let ok = h
            .call(
                Method::POST,
                "/v1/tasks",
                Some(&alice),
                &[],
                Some(task_body("hi")),
            )
            .await;
        assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.body);
    }
    let third = h
        .call(
            Method::POST,
            "/v1/tasks",
            Some(&alice),
            &[],
            Some(task_body("hi")),
        )
        .await;
    assert!(
        third.problem(StatusCode::TOO_MANY_REQUESTS)["detail"]
            .as_str()
            .unwrap()
            .contains("for this subject")
    );
    // Another subject of the tenant still may.
    let other = h
        .call(
            Method::POST,
            "/v1/tasks",
            Some(&bob),
            &[],
            Some(task_body("hi")),
        )
        .await;
    assert_eq!(other.status, StatusCode::ACCEPTED);
    // 400 characters are about 100 tokens: more than the tenant's tpm left.
    let big = h
        .call(
            Method::POST,
            "/v1/tasks",
            Some(&bob),
            &[],
            Some(task_body(&"x".repeat(400))),
        )
        .await;
    let problem = big.problem(StatusCode::TOO_MANY_REQUESTS);
    assert!(
        problem["detail"].as_str().unwrap().contains("tpm"),
        "{problem}"
    );
    // More than the tpm allows at all: 422, it would never be admitted.
    let huge = h
        .call(
            Method::POST,
            "/v1/tasks",
            Some(&bob),
            &[],
            Some(task_body(&"x".repeat(800))),
        )
        .await;
    assert_eq!(
        huge.problem(StatusCode::UNPROCESSABLE_ENTITY)["field"],
        "content"
    );
}

// --- authentication and roles ---

#[tokio::test]
async fn a_request_without_a_token_is_401_with_a_bearer_challenge() {
    let h = harness();
    let reply = h.call(Method::GET, "/v1/tasks", None, &[], None).await;
    reply.problem(StatusCode::UNAUTHORIZED);
    assert!(reply.header(header::WWW_AUTHENTICATE).starts_with("Bearer"));

    let reply = h.get("not-a-jwt", "/v1/tasks").await;
    reply.problem(StatusCode::UNAUTHORIZED);
    assert!(
        reply
            .header(header::WWW_AUTHENTICATE)
            .contains("invalid_token")
    );
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_401() {
    let h = harness();
    let forged = Authenticator::new(SecretString::from(
        "another-secret-entirely-0123456789abcdef",
    ))
    .mint(
        "x",
        &TenantId::parse("acme").unwrap(),
        &[Role::Admin],
        Duration::from_secs(60),
    )
    .unwrap();
    let reply = h.get(&forged, "/v1/tasks").await;
    reply.problem(StatusCode::UNAUTHORIZED);
    assert!(reply.header(header::WWW_AUTHENTICATE).starts_with("Bearer"));
}

#[tokio::test]
async fn an_expired_token_is_401() {
    let h = harness();
    let past = jsonwebtoken::get_current_timestamp() - 3600;
    let claims = json!({"sub": "u", "tenant": "acme", "roles": ["admin"], "exp": past});
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let reply = h.get(&expired, "/v1/tasks").await;
    let body = reply.problem(StatusCode::UNAUTHORIZED);
    assert!(body["detail"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn a_token_without_exp_or_with_a_bad_tenant_is_401_and_unknown_roles_are_ignored() {
    let h = harness();
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let no_exp = sign(json!({"sub": "u", "tenant": "acme", "roles": ["viewer"]}));
    h.get(&no_exp, "/v1/tasks")
        .await
        .problem(StatusCode::UNAUTHORIZED);
    let bad_tenant = sign(json!({"sub": "u", "tenant": "a#b", "roles": ["viewer"], "exp": exp}));
    h.get(&bad_tenant, "/v1/tasks")
        .await
        .problem(StatusCode::UNAUTHORIZED);
    let extra_role =
        sign(json!({"sub": "u", "tenant": "acme", "roles": ["auditor", "viewer"], "exp": exp}));
    assert_eq!(h.get(&extra_role, "/v1/tasks").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_viewer_may_not_submit() {
    let h = harness();
    let viewer = h.token("acme", &[Role::Viewer]);
    let reply = h.submit(&viewer, text_task("hello")).await;
    let body = reply.problem(StatusCode::FORBIDDEN);
    assert!(body["detail"].as_str().unwrap().contains("submitter"));
    assert_eq!(h.queue.depth(QueueName::Route), 0);
}

// --- submitting ---

#[tokio::test]
async fn a_valid_submit_is_accepted_and_queued_for_routing() {
    let h = harness();
    let token = h.token("acme", &[Role::Submitter]);
    let reply = h.submit(&token, text_task("Analyze this text")).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let id = reply.body["task_id"].as_str().unwrap();
    assert!(TaskId::parse(id).is_ok());
    assert_eq!(reply.body["status"], "queued");
    assert_eq!(reply.header(header::LOCATION), format!("/v1/tasks/{id}"));
    assert_eq!(h.queue.depth(QueueName::Route), 1);

    let task = h.get(&token, &format!("/v1/tasks/{id}")).await;
    assert_eq!(task.status, StatusCode::OK, "{}", task.body);
    assert_eq!(task.body["task_id"], id);
    assert_eq!(task.body["status"], "queued");
    assert_eq!(task.body["task_type"], "text");
    assert_eq!(task.body["calls"], json!([]));
    assert_eq!(task.body["result"], Value::Null);
    assert_eq!(task.body["cost_usd"], Value::Null);
    assert_eq!(task.body["error"], Value::Null);
}

#[tokio::test]
async fn an_unknown_field_is_400_naming_it() {
    let h = harness();
    let token = h.token("acme", &[Role::Submitter]);
    let reply = h
        .submit(
            &token,
            json!({"task_type": "text", "content": "x", "colour": "red"}),
        )
        .await;
    let body = reply.problem(StatusCode::BAD_REQUEST);
    assert!(
        body["detail"].as_str().unwrap().contains("colour"),
        "{body}"
    );

    let reply = h
        .call(
            Method::POST,
            "/v1/tasks",
            Some(&token),
            &[],
            Some(b"{not json".to_vec()),
        )
        .await;
    reply.problem(StatusCode::BAD_REQUEST);
    let reply = h.submit(&token, json!({"task_type": "text"})).await;
    let body = reply.problem(StatusCode::BAD_REQUEST);
    assert!(
        body["detail"].as_str().unwrap().contains("content"),
        "{body}"
    );
    assert_eq!(h.queue.depth(QueueName::Route), 0);
}

#[tokio::test]
async fn a_body_over_256_kib_is_413() {
    let h = harness();
    let token = h.token("acme", &[Role::Submitter]);
    let reply = h
        .submit(&token, text_task(&"x".repeat(MAX_BODY_BYTES + 1)))
        .await;
    reply.problem(StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn content_over_its_limit_is_413_naming_the_field() {
    let h = harness();
    let token = h.token("acme", &[Role::Submitter]);
    let content = "x".repeat(MAX_CONTENT_BYTES + 1);
    assert!(content.len() < MAX_BODY_BYTES, "the body itself fits");
    let reply = h.submit(&token, text_task(&content)).await;
    let body = reply.problem(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["field"], "content");
}

#[tokio::test]
async fn fanout_zero_is_422_naming_the_field() {
    let h = harness();
    let token = h.token("acme", &[Role::Submitter]);
    let reply = h
        .submit(
            &token,
            json!({"task_type": "text", "content": "x", "routing": {"fanout": 0}}),
        )
        .await;
    let body = reply.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["field"], "routing.fanout");
}

#[tokio::test]
async fn a_strategy_not_offered_and_a_key_mismatch_are_422() {
    let h = harness();
    let token = h.token("acme", &[Role::Submitter]);
    let reply = h
        .submit(
            &token,
            json!({"task_type": "text", "content": "x", "aggregation": {"strategy": "judge"}}),
        )
        .await;
    reply.problem(StatusCode::UNPROCESSABLE_ENTITY);
    // A negative budget is refused, naming the field; nothing is queued.
    let reply = h
        .submit(
            &token,
            json!({"task_type": "text", "content": "x", "budget_usd": "-0.05"}),
        )
        .await;
    let problem = reply.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["field"], "budget_usd");
    assert_eq!(h.queue.depth(QueueName::Route), 0);
    let task = json!({"task_type": "text", "content": "x", "idempotency_key": "a"});
    let reply = h
        .submit_with(&token, "/v1/tasks", &[("Idempotency-Key", "b")], task)
        .await;
    let body = reply.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["field"], "idempotency_key");
}

#[tokio::test]
async fn the_same_idempotency_key_twice_gives_one_task() {
    let h = harness();
    let token = h.token("acme", &[Role::Submitter]);
    let key = [("Idempotency-Key", "order-42")];
    let first = h
        .submit_with(&token, "/v1/tasks", &key, text_task("once"))
        .await;
    let second = h
        .submit_with(&token, "/v1/tasks", &key, text_task("once"))
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(second.status, StatusCode::ACCEPTED);
    assert_eq!(first.body["task_id"], second.body["task_id"]);
    let listed = h.get(&token, "/v1/tasks").await;
    assert_eq!(
        listed.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        listed.body
    );
}

#[tokio::test]
async fn replaying_the_key_of_a_finished_task_returns_it_whole() {
    let h = harness();
    let token = h.token("acme", &[Role::Submitter]);
    let key = [("Idempotency-Key", "order-43")];
    let first = h
        .submit_with(&token, "/v1/tasks", &key, text_task("once"))
        .await;
    let id = first.body["task_id"].as_str().unwrap();
    let cancel = h
        .call(
            Method::POST,
            &format!("/v1/tasks/{id}/cancel"),
            Some(&token),
            &[],
            None,
        )
        .await;
    assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.body);
    let replay = h
        .submit_with(&token, "/v1/tasks", &key, text_task("once"))
        .await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.body);
    assert_eq!(replay.body["task_id"], id);
    assert_eq!(replay.body["status"], "cancelled");
    assert!(replay.body["calls"].is_array());
}

#[tokio::test]
async fn wait_is_bounded_and_an_unfinished_task_is_still_202() {
    let h = harness();
    let token = h.token("acme", &[Role::Submitter]);
    for bad in ["26", "abc", "-1", "1.5"] {
        let reply = h
            .submit_with(
                &token,
                &format!("/v1/tasks?wait={bad}"),
                &[],
                text_task("x"),
            )
            .await;
        reply.problem(StatusCode::BAD_REQUEST);
    }
    assert_eq!(h.queue.depth(QueueName::Route), 0);

    let started = std::time::Instant::now();
    let reply = h
        .submit_with(&token, "/v1/tasks?wait=1", &[], text_task("x"))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["status"], "queued");
    assert!(started.elapsed() >= Duration::from_millis(900), "it waited");
}

#[tokio::test]
async fn a_body_that_is_not_json_by_content_type_is_415() {
    let h = harness();
    let token = h.token("acme", &[Role::Submitter]);
    let reply = h
        .send(
            Request::post("/v1/tasks")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from(serde_json::to_vec(&text_task("x")).unwrap()))
                .unwrap(),
        )
        .await;
    reply.problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_400() {
    let h = harness();
    let platform = h.token("ops", &[Role::PlatformAdmin]);
    // An array of a struct's fields would otherwise read as the struct.
    for body in ["[null, null]", "[]", "null", "\"x\"", "  [ ]"] {
        let reply = h
            .call(
                Method::PUT,
                "/v1/tenants/acme/settings",
                Some(&platform),
                &[],
                Some(body.as_bytes().to_vec()),
            )
            .await;
        reply.problem(StatusCode::BAD_REQUEST);
    }
}

// --- reading and cancelling ---

#[tokio::test]
async fn another_tenants_task_is_404() {
    let h = harness();
    let acme = h.token("acme", &[Role::Submitter]);
    let id = h.submit(&acme, text_task("private")).await.body["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let globex = h.token("globex", &[Role::Admin]);
    let uri = format!("/v1/tasks/{id}");
    h.get(&globex, &uri).await.problem(StatusCode::NOT_FOUND);
    let cancel = h
        .call(
            Method::POST,
            &format!("{uri}/cancel"),
            Some(&globex),
            &[],
            None,
        )
        .await;
    cancel.problem(StatusCode::NOT_FOUND);
    assert_eq!(h.get(&acme, &uri).await.status, StatusCode::OK);
    let listed = h.get(&globex, "/v1/tasks").await;
    assert_eq!(listed.body["items"], json!([]));
}

#[tokio::test]
async fn a_malformed_or_unknown_id_is_404() {
    let h = harness();
    let token = h.token("acme", &[Role::Viewer]);
    h.get(&token, "/v1/tasks/not-a-ulid")
        .await
        .problem(StatusCode::NOT_FOUND);
    h.get(&token, &format!("/v1/tasks/{}", TaskId::new()))
        .await
        .problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cancelling_twice_is_409() {
    let h = harness();
    let token = h.token("acme", &[Role::Submitter]);
    let id = h.submit(&token, text_task("stop me")).await.body["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let uri = format!("/v1/tasks/{id}/cancel");
    let first = h.call(Method::POST, &uri, Some(&token), &[], None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.body["status"], "cancelled");
    assert_eq!(first.body["error"]["code"], "cancelled");
    let second = h.call(Method::POST, &uri, Some(&token), &[], None).await;
    let body = second.problem(StatusCode::CONFLICT);
    assert_eq!(body["detail"], "the task is already cancelled");
}

#[tokio::test]
async fn lists_page_with_a_cursor_and_refuse_bad_limits() {
    let h = harness();
    let token = h.token("acme", &[Role::Submitter]);
    let mut ids = Vec::new();
    for n in 0..3 {
        let reply = h.submit(&token, text_task(&format!("task {n}"))).await;
        ids.push(reply.body["task_id"].as_str().unwrap().to_owned());
        // Ids order by millisecond; within one they are random.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let first = h.get(&token, "/v1/tasks?limit=2").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let items = first.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["task_id"], ids[2].as_str(), "newest first");
    assert!(items[0].get("calls").is_none(), "lists leave calls out");
    let next = first.body["next"].as_str().unwrap();
    let second = h
        .get(&token, &format!("/v1/tasks?limit=2&cursor={next}"))
        .await;
    let items = second.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["task_id"], ids[0].as_str());
    assert_eq!(second.body["next"], Value::Null);

    for bad in ["limit=0", "limit=101", "limit=x", "cursor=nope"] {
        h.get(&token, &format!("/v1/tasks?{bad}"))
            .await
            .problem(StatusCode::BAD_REQUEST);
    }
}

// --- agents ---

#[tokio::test]
async fn agents_are_created_replaced_guarded_and_deleted() {
    let h = harness();
    let admin = h.token("acme", &[Role::Admin]);
    let uri = "/v1/agents/mock-a";
    let create = [("If-None-Match", "*")];
    let created = h
        .call(
            Method::PUT,
            uri,
            Some(&admin),
            &create,
            Some(mock_agent("A")),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.header(header::ETAG), "\"1\"");
    assert_eq!(created.body["id"], "mock-a");
    assert_eq!(created.body["version"], 1);
    assert_eq!(created.body["provider"], "mock");

    let again = h
        .call(
            Method::PUT,
            uri,
            Some(&admin),
            &create,
            Some(mock_agent("A")),
        )
        .await;
    again.problem(StatusCode::CONFLICT);

    let replaced = h
        .call(
            Method::PUT,
            uri,
            Some(&admin),
            &[("If-Match", "\"1\"")],
            Some(mock_agent("A2")),
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.body);
    assert_eq!(replaced.header(header::ETAG), "\"2\"");

    let stale = h
        .call(
            Method::PUT,
            uri,
            Some(&admin),
            &[("If-Match", "\"1\"")],
            Some(mock_agent("A3")),
        )
        .await;
    stale.problem(StatusCode::CONFLICT);

    let viewer = h.token("acme", &[Role::Viewer]);
    let read = h.get(&viewer, uri).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.header(header::ETAG), "\"2\"");
    assert_eq!(read.body["name"], "A2");
    // Prices come back as decimal strings, which a PUT takes back as they are.
    assert_eq!(
        read.body["pricing"],
        json!({"input_per_mtok": "0.15", "output_per_mtok": "0.6"})
    );
    let listed = h.get(&viewer, "/v1/agents").await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);

    let deleted = h
        .call(
            Method::DELETE,
            uri,
            Some(&admin),
            &[("If-Match", "\"2\"")],
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    h.get(&viewer, uri).await.problem(StatusCode::NOT_FOUND);
    h.call(Method::DELETE, uri, Some(&admin), &[], None)
        .await
        .problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn only_admins_write_agents_and_bad_input_is_refused() {
    let h = harness();
    let viewer = h.token("acme", &[Role::Viewer]);
    let uri = "/v1/agents/mock-a";
    h.call(Method::PUT, uri, Some(&viewer), &[], Some(mock_agent("A")))
        .await
        .problem(StatusCode::FORBIDDEN);
    let submitter = h.token("acme", &[Role::Submitter]);
    h.call(Method::DELETE, uri, Some(&submitter), &[], None)
        .await
        .problem(StatusCode::FORBIDDEN);

    let admin = h.token("acme", &[Role::Admin]);
    let body = h
        .call(
            Method::PUT,
            "/v1/agents/bad%20id",
            Some(&admin),
            &[],
            Some(mock_agent("A")),
        )
        .await;
    assert_eq!(body.problem(StatusCode::BAD_REQUEST)["field"], "id");

    let unknown = serde_json::to_vec(&json!({
        "name": "A", "provider": "mock", "model": "m", "capabilities": ["text"], "surprise": 1
    }))
    .unwrap();
    h.call(Method::PUT, uri, Some(&admin), &[], Some(unknown))
        .await
        .problem(StatusCode::BAD_REQUEST);

    let invalid = serde_json::to_vec(&json!({
        "name": "A", "provider": "openai", "model": "m", "capabilities": ["text"]
    }))
    .unwrap();
    let reply = h
        .call(Method::PUT, uri, Some(&admin), &[], Some(invalid))
        .await;
    assert_eq!(
        reply.problem(StatusCode::UNPROCESSABLE_ENTITY)["field"],
        "secret"
    );

    // If-Match is the ETag, quoted or not, and nothing else.
    for tag in ["soon", "+1", "\"1", "W/\"1\"", "*"] {
        let reply = h
            .call(
                Method::PUT,
                uri,
                Some(&admin),
                &[("If-Match", tag)],
                Some(mock_agent("A")),
            )
            .await;
        assert_eq!(
            reply.problem(StatusCode::BAD_REQUEST)["field"],
            "If-Match",
            "{tag}"
        );
    }
}

#[tokio::test]
async fn a_capability_no_task_could_ask_for_is_422_naming_it() {
    let h = harness();
    let admin = h.token("acme", &[Role::Admin]);
    let agent = |capabilities: Value| {
        serde_json::to_vec(&json!({
            "name": "A", "provider": "mock", "model": "m", "capabilities": capabilities
        }))
        .unwrap()
    };
    for (capabilities, field) in [
        (json!(["text", "code-review"]), "capabilities[1]"),
        (json!(["Text"]), "capabilities[0]"),
        (json!([]), "capabilities"),
    ] {
        let reply = h
            .call(
                Method::PUT,
                "/v1/agents/a",
                Some(&admin),
                &[],
                Some(agent(capabilities.clone())),
            )
            .await;
        let body = reply.problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["field"], field, "{capabilities}");
    }
    let viewer = h.token("acme", &[Role::Viewer]);
    h.get(&viewer, "/v1/agents/a")
        .await
        .problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_task_type_and_a_capability_follow_one_rule() {
    let h = harness();
    let admin = h.token("acme", &[Role::Admin]);
    let long = "x".repeat(33);
    for name in [
        "text",
        "image_2",
        "code-review",
        "Text",
        " text",
        "",
        "a.b",
        long.as_str(),
    ] {
        let agent = serde_json::to_vec(&json!({
            "name": "A", "provider": "mock", "model": "m", "capabilities": [name]
        }))
        .unwrap();
        let put = h
            .call(Method::PUT, "/v1/agents/a", Some(&admin), &[], Some(agent))
            .await;
        let submit = h
            .submit(&admin, json!({"task_type": name, "content": "x"}))
            .await;
        let agent_ok = put.status.is_success();
        let task_ok = submit.status.is_success();
        assert_eq!(
            agent_ok, task_ok,
            "{name:?}: {} / {}",
            put.body, submit.body
        );
        if !task_ok {
            assert_eq!(
                put.problem(StatusCode::UNPROCESSABLE_ENTITY)["field"],
                "capabilities[0]"
            );
            assert_eq!(
                submit.problem(StatusCode::UNPROCESSABLE_ENTITY)["field"],
                "task_type"
            );
        }
    }
}

#[tokio::test]
async fn prices_are_taken_as_numbers_or_strings_and_given_back_as_strings() {
    let h = harness();
    let admin = h.token("acme", &[Role::Admin]);
    let put = |pricing: Value| {
        serde_json::to_vec(&json!({
            "name": "A", "provider": "mock", "model": "m", "capabilities": ["text"],
            "pricing": pricing
        }))
        .unwrap()
    };
    let numbers = json!({"input_per_mtok": 0.15, "output_per_mtok": 0.6, "cached_input_per_mtok": 0.075,
        "cache_write_per_mtok": 0.1875});
    let strings = json!({"input_per_mtok": "0.15", "output_per_mtok": "0.60", "cached_input_per_mtok": "0.075",
        "cache_write_per_mtok": "0.1875"});
    let expected = json!({"input_per_mtok": "0.15", "output_per_mtok": "0.6", "cached_input_per_mtok": "0.075",
        "cache_write_per_mtok": "0.1875"});
    let media = json!({"per_image": 0.04, "per_audio_minute": "0.006"});
    let media_expected = json!({"input_per_mtok": "0", "output_per_mtok": "0", "per_image": "0.04",
        "per_audio_minute": "0.006"});
    for (id, pricing, expected) in [
        ("by-number", numbers, &expected),
        ("by-string", strings, &expected),
        ("media", media, &media_expected),
    ] {
        let uri = format!("/v1/agents/{id}");
        let reply = h
            .call(Method::PUT, &uri, Some(&admin), &[], Some(put(pricing)))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        assert_eq!(&reply.body["pricing"], expected);
        // What a GET gives a PUT takes back unchanged.
        let read = h.get(&admin, &uri).await;
        let again = h
            .call(
                Method::PUT,
                &uri,
                Some(&admin),
                &[],
                Some(put(read.body["pricing"].clone())),
            )
            .await;
        assert_eq!(again.status, StatusCode::OK, "{}", again.body);
        assert_eq!(&again.body["pricing"], expected);
    }
    for bad in [json!("1e-7"), json!("0,15"), json!(" 0.15"), json!(true)] {
        let reply = h
            .call(
                Method::PUT,
                "/v1/agents/bad",
                Some(&admin),
                &[],
                Some(put(json!({"input_per_mtok": bad, "output_per_mtok": 1}))),
            )
            .await;
        reply.problem(StatusCode::BAD_REQUEST);
    }
    let negative = h
        .call(
            Method::PUT,
            "/v1/agents/bad",
            Some(&admin),
            &[],
            Some(put(json!({"input_per_mtok": "-0.1", "output_per_mtok": 1}))),
        )
        .await;
    assert_eq!(
        negative.problem(StatusCode::UNPROCESSABLE_ENTITY)["field"],
        "pricing"
    );
    let empty = h
        .call(
            Method::PUT,
            "/v1/agents/bad",
            Some(&admin),
            &[],
            Some(put(json!({}))),
        )
        .await;
    let problem = empty.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["field"], "pricing");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("names no price")),
        "{problem}"
    );
}

#[tokio::test]
async fn money_in_a_task_is_a_decimal_string_not_a_float() {
    let h = harness();
    let token = h.token("acme", &[Role::Submitter]);
    let id = h.submit(&token, text_task("cost me")).await.body["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let task_id = TaskId::parse(&id).unwrap();
    let tenant = TenantId::parse("acme").unwrap();
    // 59 tokens at $1 per million: 5.9e-05 as a float.
    let cost = Usd::for_tokens(59, Usd::parse("1").unwrap());
    let call = CallResult {
        call_id: CallId::new(),
        agent_id: AgentId::parse("mock-a").unwrap(),
        provider: Some(Provider::Mock),
        status: CallStatus::Succeeded,
        output: Some("ok".into()),
        output_ref: None,
        usage: Usage {
            input_tokens: 59,
            output_tokens: 0,
            ..Usage::default()
        },
        cost_usd: Some(cost),
        latency_ms: 1,
        attempts: 1,
        error: None,
        retried_errors: Vec::new(),
        finished_at: chrono::Utc::now(),
        truncated: false,
        quality: None,
        fell_back_from: Vec::new(),
        settles: None,
    };
    h.tasks
        .put_call(&tenant, task_id, &call, &[])
        .await
        .unwrap();
    let patch = TaskPatch {
        cost_usd: Some(cost),
        ..TaskPatch::default()
    };
    let seen = h.tasks.get(&tenant, task_id).await.unwrap().unwrap();
    h.tasks
        .transition(&seen, TaskStatus::Cancelled, patch, chrono::Utc::now())
        .await
        .unwrap();

    let task = h.get(&token, &format!("/v1/tasks/{id}")).await;
    assert_eq!(task.status, StatusCode::OK, "{}", task.body);
    assert_eq!(task.body["cost_usd"], "0.000059");
    assert_eq!(task.body["calls"][0]["cost_usd"], "0.000059");
    let listed = h.get(&token, "/v1/tasks").await;
    assert_eq!(listed.body["items"][0]["cost_usd"], "0.000059");
}

// --- the rest of the surface ---

#[tokio::test]
async fn health_needs_no_token() {
    let h = harness();
    let reply = h.call(Method::GET, "/health", None, &[], None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, json!({"status": "ok"}));
}

#[tokio::test]
async fn the_openapi_document_describes_the_routes() {
    let h = harness();
    let reply = h.call(Method::GET, "/openapi.json", None, &[], None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/tasks",
        "/v1/tasks/{id}",
        "/v1/tasks/{id}/cancel",
        "/v1/agents",
        "/v1/agents/{id}",
        "/health",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    assert!(doc["paths"]["/v1/agents/{id}"]["put"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["TaskRequest"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
}

#[tokio::test]
async fn the_openapi_document_states_the_rules_the_api_enforces() {
    let h = harness();
    let doc = h
        .call(Method::GET, "/openapi.json", None, &[], None)
        .await
        .body;
    let schemas = &doc["components"]["schemas"];
    let task_type = json!({"$ref": "#/components/schemas/TaskType"});

    // One rule for a task's task_type and an agent's capabilities.
    assert_eq!(schemas["TaskType"]["pattern"], TaskType::PATTERN);
    assert_eq!(schemas["TaskType"]["maxLength"], TaskType::MAX_LEN);
    let task = &schemas["TaskRequest"];
    assert_eq!(task["properties"]["task_type"]["$ref"], task_type["$ref"]);
    assert_eq!(
        schemas["AgentRequest"]["properties"]["capabilities"]["items"],
        task_type
    );
    assert_eq!(
        schemas["AgentRequest"]["properties"]["capabilities"]["minItems"],
        1
    );

    // Limits and ranges.
    assert_eq!(
        task["properties"]["content"]["maxLength"],
        MAX_CONTENT_BYTES
    );
    let routing = &schemas["RoutingRequest"]["properties"];
    assert_eq!(routing["fanout"]["minimum"], 1);
    assert_eq!(routing["fanout"]["maximum"], 10);
    assert_eq!(task["properties"]["timeout_ms"]["minimum"], 1);
    assert_eq!(task["properties"]["timeout_ms"]["maximum"], 900_000);
    assert_eq!(schemas["IdempotencyKey"]["maxLength"], 255);
    assert_eq!(
        routing["strategy"]["enum"],
        json!([
            "explicit",
            "cheapest",
            "quality",
            "fastest",
            "balanced",
            "round_robin",
            "weighted",
            "tiered",
            "best"
        ])
    );

    // Unknown fields are refused wherever the API refuses them.
    for name in [
        "TaskRequest",
        "RoutingRequest",
        "AggregationRequest",
        "AgentRequest",
        "Pricing",
        "Constraints",
        "MockOptions",
    ] {
        assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
    }

    // An agent as returned: its id and version are part of it.
    let agent = &schemas["AgentView"];
    assert!(agent.get("allOf").is_none(), "{agent}");
    assert!(agent.get("additionalProperties").is_none(), "{agent}");
    for field in ["id", "version", "capabilities", "pricing"] {
        assert!(
            agent["required"]
                .as_array()
                .unwrap()
                .contains(&json!(field)),
            "{field}"
        );
    }

    // Money: a decimal string out, a number or a decimal string in.
    assert_eq!(schemas["Usd"]["type"], "string");
    assert_eq!(schemas["Usd"]["pattern"], Usd::PATTERN);
    let usd = json!({"$ref": "#/components/schemas/Usd"});
    assert_eq!(schemas["PricingView"]["properties"]["input_per_mtok"], usd);
    let price_in = &schemas["Pricing"]["properties"]["input_per_mtok"]["oneOf"];
    assert_eq!(price_in[0]["type"], "number");
    assert_eq!(price_in[0]["minimum"], 0);
    assert_eq!(price_in[1]["type"], "string");
    for view in ["TaskView", "CallView"] {
        let cost = &schemas[view]["properties"]["cost_usd"]["oneOf"];
        assert!(
            cost.as_array()
                .unwrap()
                .iter()
                .any(|s| s["$ref"] == usd["$ref"]),
            "{view}"
        );
    }

    // Path ids and the parameters' bounds.
    let agent_id = &doc["paths"]["/v1/agents/{id}"]["put"]["parameters"][0];
    assert_eq!(agent_id["schema"]["$ref"], "#/components/schemas/AgentId");
    assert_eq!(schemas["AgentId"]["maxLength"], 64);
    let wait = &doc["paths"]["/v1/tasks"]["post"]["parameters"][0];
    assert_eq!(
        (wait["name"].as_str(), wait["schema"]["maximum"].as_u64()),
        (Some("wait"), Some(25))
    );

    // Links name their target the way OpenAPI spells it.
    let links = &doc["paths"]["/v1/tasks"]["post"]["responses"]["202"]["links"];
    assert_eq!(links["GetTask"]["operationId"], "get_task");
    assert!(links["GetTask"].get("operation_id").is_none());

    // Every error is problem+json, and only that.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let types: Vec<&String> =
                        response["content"].as_object().unwrap().keys().collect();
                    assert_eq!(types, [PROBLEM_JSON], "{method} {path} {status}");
                }
            }
        }
    }
}

#[tokio::test]
async fn an_unknown_path_is_404_and_a_wrong_method_405_both_as_problems() {
    let h = harness();
    let token = h.token("acme", &[Role::Admin]);
    h.get(&token, "/v2/nothing")
        .await
        .problem(StatusCode::NOT_FOUND);
    h.call(Method::GET, "/nowhere", None, &[], None)
        .await
        .problem(StatusCode::NOT_FOUND);
    let reply = h
        .call(Method::DELETE, "/v1/tasks", Some(&token), &[], None)
        .await;
    reply.problem(StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        reply.header(header::ALLOW).contains("POST"),
        "{:?}",
        reply.headers
    );
}
