//! The audit log through the API: an entry for each audited action, in the
//! right log, with who, what, which resource and the request's id; read
//! only, paged, filtered and tenant-isolated.

use super::*;

/// Every entry of a log, following `next` from `query`, checking that each
/// page is newest first and no entry comes twice.
async fn read_log(h: &Harness, token: &str, path: &str, query: &str) -> Vec<Value> {
    let mut entries: Vec<Value> = Vec::new();
    let mut cursor = String::new();
    for _ in 0..100 {
        let sep = if query.is_empty() { "" } else { "&" };
        let reply = h
            .get(token, &format!("{path}?{query}{sep}cursor={cursor}"))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        entries.extend(reply.body["items"].as_array().unwrap().iter().cloned());
        match reply.body["next"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => {
                let ids: Vec<&str> = entries.iter().map(|e| e["id"].as_str().unwrap()).collect();
                let mut sorted = ids.clone();
                sorted.sort_by(|a, b| b.cmp(a));
                sorted.dedup();
                assert_eq!(ids, sorted, "newest first, each once");
                return entries;
            }
        }
    }
    panic!("the log never ended");
}

fn of<'a>(entries: &'a [Value], action: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["action"] == action).collect()
}

#[tokio::test]
async fn every_audited_action_is_in_its_log_with_who_what_and_the_request() {
    let h = harness();
    let admin = h.token("acme", &[Role::Admin]);
    let platform = h.token("ops", &[Role::PlatformAdmin]);

    let submitted = h.submit(&admin, text_task("hi")).await;
    assert_eq!(submitted.status, StatusCode::ACCEPTED);
    let request_id = submitted.headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let task_id = submitted.body["task_id"].as_str().unwrap().to_owned();
    let cancelled = h
        .call(
            Method::POST,
            &format!("/v1/tasks/{task_id}/cancel"),
            Some(&admin),
            &[],
            None,
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    for name in ["A", "B"] {
        let put = h
            .call(
                Method::PUT,
                "/v1/agents/helper",
                Some(&admin),
                &[],
                Some(mock_agent(name)),
            )
            .await;
        assert!(put.status.is_success(), "{}", put.body);
    }
    let deleted = h
        .call(Method::DELETE, "/v1/agents/helper", Some(&admin), &[], None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    let filters = json!({"filters": {"block": [{"name": "no-secrets", "pattern": "password="}]}});
    let set = h
        .call(
            Method::PUT,
            "/v1/tenant/settings",
            Some(&admin),
            &[],
            Some(serde_json::to_vec(&filters).unwrap()),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    let blocked = h.submit(&admin, text_task("password=hunter2")).await;
    blocked.problem(StatusCode::UNPROCESSABLE_ENTITY);
    let viewer = h.token("acme", &[Role::Viewer]);
    h.call(
        Method::PUT,
        "/v1/agents/x",
        Some(&viewer),
        &[],
        Some(mock_agent("X")),
    )
    .await
    .problem(StatusCode::FORBIDDEN);
    h.call(Method::GET, "/v1/tasks", None, &[], None)
        .await
        .problem(StatusCode::UNAUTHORIZED);
    let limit = serde_json::to_vec(&json!({"rate_limits": {"rpm": 1}})).unwrap();
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
    let mut limited = false;
    for _ in 0..3 {
        limited |=
            h.submit(&admin, text_task("again")).await.status == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(limited);

    let log = read_log(&h, &admin, "/v1/audit", "").await;
    let created = of(&log, "task.created");
    let first = created.last().unwrap();
    assert_eq!(first["request_id"], request_id.as_str());
    assert_eq!(first["resource"], json!({"kind": "task", "id": task_id}));
    assert_eq!(first["actor"]["sub"], "tester");
    assert_eq!(first["actor"]["via"], "api");
    assert_eq!(first["outcome"], "success");
    assert_eq!(
        of(&log, "task.cancelled")[0]["resource"]["id"],
        task_id.as_str()
    );
    assert_eq!(of(&log, "agent.created").len(), 1);
    let changed = of(&log, "agent.changed");
    assert_eq!(changed[0]["detail"]["fields"], json!(["name"]));
    assert_eq!(of(&log, "agent.deleted")[0]["resource"]["id"], "helper");
    let settings = of(&log, "settings.changed");
    // The platform's change of the tenant's ceilings is in the tenant's log.
    assert_eq!(settings[0]["actor"]["roles"], json!(["platform_admin"]));
    assert_eq!(settings[0]["detail"]["fields"], json!(["rate_limits"]));
    assert_eq!(settings[1]["detail"]["fields"], json!(["own.filters"]));
    let block = of(&log, "content.blocked")[0];
    assert_eq!(block["detail"]["rule"], "no-secrets");
    assert_eq!(block["outcome"], "blocked");
    let denied = of(&log, "access.denied")[0];
    assert_eq!(denied["detail"]["code"], "role_missing");
    assert_eq!(denied["resource"]["id"], "PUT /v1/agents/{id}");
    assert_eq!(denied["outcome"], "denied");
    let refused = of(&log, "rate.limited")[0];
    assert_eq!(refused["detail"]["limit"], "rpm");
    assert_eq!(refused["outcome"], "refused");
    assert!(
        !Value::Array(log.clone()).to_string().contains("hunter2"),
        "the blocked text is in no entry"
    );

    // The request without a token is in the platform's log, with no actor.
    let platform_log = read_log(&h, &platform, "/v1/platform/audit", "").await;
    let anonymous = of(&platform_log, "access.denied")[0];
    assert_eq!(anonymous["detail"]["code"], "token_missing");
    assert!(anonymous["actor"].get("sub").is_none());
    assert!(
        of(&log, "access.denied")
            .iter()
            .all(|e| e["detail"]["code"] != "token_missing")
    );

    // Another tenant sees none of it; a tenant admin not the platform's.
    let globex = h.token("globex", &[Role::Admin]);
    assert!(read_log(&h, &globex, "/v1/audit", "").await.is_empty());
    h.get(&admin, "/v1/platform/audit")
        .await
        .problem(StatusCode::FORBIDDEN);
    h.get(&viewer, "/v1/audit")
        .await
        .problem(StatusCode::FORBIDDEN);
    // Read only: nothing changes or deletes an entry.
    for method in [Method::PUT, Method::DELETE, Method::POST] {
        let reply = h.call(method, "/v1/audit", Some(&admin), &[], None).await;
        reply.problem(StatusCode::METHOD_NOT_ALLOWED);
    }
}

#[tokio::test]
async fn the_log_pages_filters_and_refuses_bad_queries() {
    let h = harness();
    let admin = h.token("acme", &[Role::Admin]);
    for i in 0..12 {
        let put = h
            .call(
                Method::PUT,
                &format!("/v1/agents/a{i}"),
                Some(&admin),
                &[],
                Some(mock_agent("A")),
            )
            .await;
        assert_eq!(put.status, StatusCode::CREATED, "{}", put.body);
    }
    for _ in 0..3 {
        assert_eq!(
            h.submit(&admin, text_task("hi")).await.status,
            StatusCode::ACCEPTED
        );
    }
    let all = read_log(&h, &admin, "/v1/audit", "limit=5").await;
    assert_eq!(all.len(), 15);
    let agents = read_log(&h, &admin, "/v1/audit", "limit=4&action=agent.created").await;
    assert_eq!(agents.len(), 12);
    assert!(agents.iter().all(|e| e["action"] == "agent.created"));
    let future = "2999-01-01T00:00:00Z";
    assert!(
        read_log(&h, &admin, "/v1/audit", &format!("from={future}"))
            .await
            .is_empty()
    );
    let past = "2000-01-01T00:00:00Z";
    assert!(
        read_log(&h, &admin, "/v1/audit", &format!("to={past}"))
            .await
            .is_empty()
    );
    let both = read_log(&h, &admin, "/v1/audit", &format!("from={past}&to={future}")).await;
    assert_eq!(both.len(), 15);
    for (query, field) in [
        (format!("from={future}&to={past}"), "from"),
        ("limit=0".to_owned(), "limit"),
        ("limit=101".to_owned(), "limit"),
        ("cursor=not-an-id".to_owned(), "cursor"),
    ] {
        let reply = h.get(&admin, &format!("/v1/audit?{query}")).await;
        assert_eq!(
            reply.problem(StatusCode::BAD_REQUEST)["field"],
            field,
            "{query}"
        );
    }
    h.get(&admin, "/v1/audit?action=task.exploded")
        .await
        .problem(StatusCode::BAD_REQUEST);
}
