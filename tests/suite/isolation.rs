//! Tenant isolation, resource type by resource type, on both backends:
//! whatever one tenant creates, another tenant's token cannot read, list,
//! change, cancel or delete (404, or absent from its lists), even with the
//! highest tenant role. Every later resource type (workflows, routes,
//! sessions, metrics, audit) adds its row to `RESOURCES`.

use maof::domain::Role;
use maof_tests::backends::Backend;
use maof_tests::pipeline::{Faults, Pipeline};
use reqwest::Method;
use serde_json::{Value, json};

/// A resource type: how its owner creates one, and the requests another
/// tenant may try on it (method, path; `{id}` and `{call}` are filled in).
struct Resource {
    name: &'static str,
    create: fn(&Pipeline, &str) -> futures::future::BoxFuture<'static, Created>,
    probes: &'static [(Method, &'static str)],
    /// The owner's list path, which must not show it to another tenant.
    list: Option<&'static str>,
}

struct Created {
    id: String,
    call: Option<String>,
}

const RESOURCES: &[Resource] = &[
    Resource {
        name: "task",
        create: create_task,
        probes: &[
            (Method::GET, "/v1/tasks/{id}"),
            (Method::GET, "/v1/tasks/{id}/output"),
            (Method::POST, "/v1/tasks/{id}/cancel"),
        ],
        list: Some("/v1/tasks"),
    },
    Resource {
        name: "call",
        create: create_task,
        probes: &[(Method::GET, "/v1/tasks/{id}/calls/{call}/output")],
        list: None,
    },
    Resource {
        name: "agent",
        create: create_agent,
        probes: &[
            (Method::GET, "/v1/agents/{id}"),
            (Method::DELETE, "/v1/agents/{id}"),
        ],
        list: Some("/v1/agents"),
    },
    Resource {
        // No route reads one entry: the log is only listed.
        name: "audit entry",
        create: create_audit_entry,
        probes: &[],
        list: Some("/v1/audit"),
    },
];

/// An audited action (a task's creation), and the id of its entry.
fn create_audit_entry(p: &Pipeline, owner: &str) -> futures::future::BoxFuture<'static, Created> {
    let (http, base, token) = (
        p.http.clone(),
        p.base.clone(),
        p.token(owner, &[Role::Admin]),
    );
    let task = create_task(p, owner);
    Box::pin(async move {
        let task = task.await;
        let log: Value = http
            .get(format!("{base}/v1/audit?action=task.created"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let entry = log["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["resource"]["id"] == task.id.as_str())
            .unwrap_or_else(|| panic!("no entry for task {}: {log}", task.id));
        Created {
            id: entry["id"].as_str().unwrap().to_owned(),
            call: None,
        }
    })
}

fn create_task(p: &Pipeline, owner: &str) -> futures::future::BoxFuture<'static, Created> {
    let (http, base, token) = (
        p.http.clone(),
        p.base.clone(),
        p.token(owner, &[Role::Admin]),
    );
    Box::pin(async move {
        let task: Value = http
            .post(format!("{base}/v1/tasks?wait=20"))
            .bearer_auth(&token)
            .json(&json!({"task_type": "text", "content": "private to its tenant"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(task["status"], "completed", "{task}");
        Created {
            id: task["task_id"].as_str().unwrap().to_owned(),
            call: task["calls"][0]["call_id"].as_str().map(str::to_owned),
        }
    })
}

fn create_agent(p: &Pipeline, owner: &str) -> futures::future::BoxFuture<'static, Created> {
    let (http, base, token) = (
        p.http.clone(),
        p.base.clone(),
        p.token(owner, &[Role::Admin]),
    );
    Box::pin(async move {
        let reply = http
            .put(format!("{base}/v1/agents/private-agent"))
            .bearer_auth(&token)
            .json(&json!({"name": "mine", "provider": "mock", "model": "m",
                "capabilities": ["text"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 201);
        Created {
            id: "private-agent".to_owned(),
            call: None,
        }
    })
}

async fn another_tenant_finds_none_of_a_tenants_resources(b: Backend) {
    let name = b.name;
    let p = Pipeline::start(b, Faults::default()).await;
    // The other tenant's strongest tenant role.
    let intruder = p.token("globex", &[Role::Admin]);
    for resource in RESOURCES {
        let created = (resource.create)(&p, "acme").await;
        for (method, path) in resource.probes {
            let path = path
                .replace("{id}", &created.id)
                .replace("{call}", created.call.as_deref().unwrap_or("none"));
            let reply = p
                .http
                .request(method.clone(), format!("{}{path}", p.base))
                .bearer_auth(&intruder)
                .send()
                .await
                .unwrap();
            assert_eq!(
                reply.status(),
                404,
                "{name}: {} {method} {path} by another tenant",
                resource.name
            );
        }
        if let Some(list) = resource.list {
            let listed: Value = p
                .http
                .get(format!("{}{list}", p.base))
                .bearer_auth(&intruder)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let ids: Vec<&str> = listed["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|i| i["task_id"].as_str().or(i["id"].as_str()))
                .collect();
            assert!(
                !ids.contains(&created.id.as_str()),
                "{name}: {} listed to another tenant",
                resource.name
            );
        }
        // The owner still has it: the probes changed nothing.
        let owner = p.token("acme", &[Role::Admin]);
        let Some((_, first)) = resource.probes.first() else {
            let list = resource.list.unwrap_or_default();
            let listed = p
                .http
                .get(format!("{}{list}", p.base))
                .bearer_auth(&owner)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(
                listed.contains(&created.id),
                "{name}: {} not listed to its owner",
                resource.name
            );
            continue;
        };
        let first = first
            .replace("{id}", &created.id)
            .replace("{call}", created.call.as_deref().unwrap_or("none"));
        let mine = p
            .http
            .get(format!("{}{first}", p.base))
            .bearer_auth(&owner)
            .send()
            .await
            .unwrap();
        assert_eq!(
            mine.status(),
            200,
            "{name}: {} {first} by its owner",
            resource.name
        );
    }
    p.stop().await;
}

mod memory {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn another_tenant_finds_none_of_a_tenants_resources() {
        super::another_tenant_finds_none_of_a_tenants_resources(maof_tests::backends::memory())
            .await;
    }
}

mod aws {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn another_tenant_finds_none_of_a_tenants_resources() {
        super::another_tenant_finds_none_of_a_tenants_resources(maof_tests::backends::aws().await)
            .await;
    }
}
