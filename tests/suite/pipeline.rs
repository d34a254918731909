//! The pipeline end to end through HTTP, on both backends: intake, the local
//! runner's pollers (the Lambda trigger's semantics), route, agent-call,
//! aggregate and the dead-letter consumers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use maof::domain::Role;
use maof::ports::{QueueName, TaskStore};
use maof_tests::backends::{Backend, MAX_RECEIVES};
use maof_tests::faults::{DroppingMessages, DuplicatingQueue, FailingRecordCalls};
use maof_tests::pipeline::{Faults, Pipeline};
use serde_json::{Value, json};

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(maof_tests::backends::memory()).await;
                }
            )*
        }
        mod aws {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(maof_tests::backends::aws().await).await;
                }
            )*
        }
    };
}

async fn submit(p: &Pipeline, token: &str, body: Value, query: &str) -> (u16, Value) {
    let response = p
        .http
        .post(format!("{}/v1/tasks{query}", p.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("POST /v1/tasks");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get_task(p: &Pipeline, token: &str, id: &str) -> (u16, Value) {
    let response = p
        .http
        .get(format!("{}/v1/tasks/{id}", p.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /v1/tasks/{id}");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls until the task is finished (or fails the test after `limit`).
async fn finished(p: &Pipeline, token: &str, id: &str, limit: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (status, task) = get_task(p, token, id).await;
        assert_eq!(status, 200, "{task}");
        if ["completed", "failed", "cancelled"].contains(&task["status"].as_str().unwrap_or("")) {
            return task;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} not finished in {limit:?}: {task}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The events announced for task `id`, once at least one is (the announcer
/// relays them from the store's change stream, a little after the task ends).
async fn announced(p: &Pipeline, id: &str) -> Vec<maof::ports::TaskFinished> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events: Vec<_> = p
            .events
            .published()
            .into_iter()
            .filter(|e| e.task_id == id)
            .collect();
        if !events.is_empty() {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} was never announced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn text_task(content: &str) -> Value {
    json!({"task_type": "text", "content": content})
}

async fn a_single_agent_task_completes(b: Backend) {
    let name = b.name;
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    let (status, task) = submit(
        &p,
        &token,
        text_task("Analyze this text for sentiment: I love it"),
        "?wait=10",
    )
    .await;
    assert_eq!(status, 200, "{name}: finished within the wait: {task}");
    assert_eq!(task["status"], "completed", "{name}: {task}");
    assert!(!task["result"]["output"].as_str().unwrap_or("").is_empty());
    let calls = task["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["agent_id"], "mock-a", "the best capable agent");
    assert_eq!(calls[0]["status"], "succeeded");
    assert!(task["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(task["usage"], calls[0]["usage"]);
    assert!(
        calls[0].get("output_url").is_none(),
        "a small answer is inline: {task}"
    );
    let served = p
        .http
        .get(format!(
            "{}/v1/tasks/{}/calls/{}/output",
            p.base,
            task["task_id"].as_str().unwrap(),
            calls[0]["call_id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.text().await.unwrap(),
        calls[0]["output"].as_str().unwrap(),
        "the route serves an inline answer too"
    );
    // Money is an exact decimal string, equal to the one call's cost.
    let cost = task["cost_usd"]
        .as_str()
        .expect("cost_usd is a decimal string");
    assert!(
        maof::domain::Usd::parse(cost).unwrap() > maof::domain::Usd::ZERO,
        "{cost}"
    );
    assert_eq!(task["cost_usd"], calls[0]["cost_usd"]);
    p.stop().await;
}

async fn a_fan_out_of_three_completes_with_three_attributed_results(b: Backend) {
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    let body = json!({"task_type": "text", "content": "Name three colours.",
        "routing": {"fanout": 3}, "aggregation": {"strategy": "all"}});
    let (status, task) = submit(&p, &token, body, "?wait=10").await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(task["status"], "completed", "{task}");
    let mut agents: Vec<&str> = task["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["agent_id"].as_str().unwrap())
        .collect();
    agents.sort();
    assert_eq!(agents, ["mock-a", "mock-b", "mock-c"]);
    let candidates = task["result"]["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 3);
    let output = task["result"]["output"].as_str().unwrap();
    for agent in ["mock-a", "mock-b", "mock-c"] {
        assert!(
            output.contains(&format!("[{agent}]")),
            "{agent} is attributed in {output}"
        );
    }
    p.stop().await;
}

async fn every_message_delivered_twice_still_calls_each_agent_once(b: Backend) {
    let faults = Faults {
        wrap_queue: Some(Box::new(|q| Arc::new(DuplicatingQueue(q)))),
        ..Faults::default()
    };
    let p = Pipeline::start(b, faults).await;
    let token = p.submitter("acme");
    let mut ids = Vec::new();
    for i in 0..4 {
        let body =
            json!({"task_type": "text", "content": format!("task {i}"), "routing": {"fanout": 2}});
        let (status, task) = submit(&p, &token, body, "").await;
        assert_eq!(status, 202, "{task}");
        ids.push(task["task_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let task = finished(&p, &token, id, Duration::from_secs(20)).await;
        assert_eq!(task["status"], "completed", "{task}");
        assert_eq!(
            task["calls"].as_array().unwrap().len(),
            2,
            "each planned call recorded once: {task}"
        );
    }
    // Both copies of every agent-call message arrive in one batch and are
    // handled concurrently: the call's lease lets one of them call.
    assert_eq!(
        p.provider.repeated(),
        [],
        "no agent was asked the same task twice"
    );
    assert_eq!(p.provider.total(), 8, "4 tasks × 2 agents, once each");
    // One finishing per task, however often messages came. Announcing is
    // at least once (a batch whose read or publish fails is announced again),
    // so the check is on the event ids, which a consumer dedupes by.
    for id in &ids {
        let events = announced(&p, id).await;
        assert!(
            events
                .iter()
                .all(|e| e.event_id == format!("{id}.completed")),
            "one finishing: {events:?}"
        );
    }
    p.stop().await;
}

async fn a_result_write_that_fails_once_does_not_call_the_agent_again(b: Backend) {
    let wrapped: Arc<std::sync::OnceLock<Arc<FailingRecordCalls>>> = Arc::default();
    let hold = wrapped.clone();
    let faults = Faults {
        wrap_tasks: Some(Box::new(move |inner| {
            let failing = Arc::new(FailingRecordCalls::new(inner, 1));
            let _ = hold.set(failing.clone());
            failing as Arc<dyn TaskStore>
        })),
        ..Faults::default()
    };
    let p = Pipeline::start(b, faults).await;
    let token = p.submitter("acme");
    let (_, task) = submit(&p, &token, text_task("flaky"), "").await;
    let task = finished(
        &p,
        &token,
        task["task_id"].as_str().unwrap(),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(task["status"], "completed", "{task}");
    let store = wrapped.get().unwrap();
    assert_eq!(
        store.attempts.load(Ordering::SeqCst),
        2,
        "the result write failed once, then succeeded"
    );
    assert_eq!(
        p.provider.count("mock-a", "flaky"),
        1,
        "the paid answer was kept and written again, not asked for again"
    );
    p.stop().await;
}

async fn a_call_slower_than_the_visibility_timeout_is_made_once(b: Backend) {
    // The runner's visibility is 1 s here; the slow agent takes 2.5 s.
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    let body = json!({"task_type": "slower", "content": "take your time", "timeout_ms": 20000});
    let (status, task) = submit(&p, &token, body, "?wait=15").await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(
        p.provider.count("mock-slower", "take your time"),
        1,
        "the heartbeat kept the message hidden while the call ran"
    );
    p.stop().await;
}

async fn a_dead_lettered_call_fails_alone_and_the_fan_out_completes(b: Backend) {
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    // mock-throttled always asks for a 2.5 s wait: its message goes back to
    // the queue each time until its receives run out and it is dead-lettered.
    let body = json!({"task_type": "text", "content": "three agents",
        "routing": {"fanout": 3, "agents": ["mock-a", "mock-b", "mock-throttled"]},
        "aggregation": {"strategy": "all"}});
    let (_, task) = submit(&p, &token, body, "").await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    let task = finished(&p, &token, &id, Duration::from_secs(40)).await;
    assert_eq!(task["status"], "completed", "{task}");
    let calls = task["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 3, "{task}");
    let dead = calls
        .iter()
        .find(|c| c["agent_id"] == "mock-throttled")
        .unwrap();
    assert_eq!(dead["status"], "failed", "{dead}");
    assert_eq!(dead["error"]["class"], "dead_letter", "{dead}");
    assert_eq!(
        task["result"]["candidates"].as_array().unwrap().len(),
        2,
        "the two answers are the result: {task}"
    );
    assert_eq!(
        p.provider.count("mock-throttled", "three agents"),
        MAX_RECEIVES,
        "one request per delivery, none while its wait was pending"
    );
    p.stop().await;
}

async fn a_mebibyte_answer_completes_through_the_claim_check(b: Backend) {
    let name = b.name;
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    let body = json!({"task_type": "huge", "content": "draw a cat", "timeout_ms": 30000});
    let (status, task) = submit(&p, &token, body, "?wait=20").await;
    assert_eq!(status, 200, "{name}: {task}");
    assert_eq!(task["status"], "completed", "{name}: {task}");
    assert_eq!(
        p.provider.count("mock-huge", "draw a cat"),
        1,
        "{name}: stored on the first delivery, never asked again"
    );
    let tenant = maof::domain::TenantId::parse("acme").unwrap();
    let id = maof::domain::TaskId::parse(task["task_id"].as_str().unwrap()).unwrap();
    let record = p
        .services
        .tasks
        .get_with_calls(&tenant, id)
        .await
        .unwrap()
        .unwrap();
    let call = &record.calls[0];
    assert_eq!(call.output, None, "{name}: not in the item");
    let reference = call.output_ref.clone().expect("a claim check");
    assert_eq!(reference.bytes, 1_048_576);
    let blob = p
        .services
        .blobs
        .get(&maof::ports::BlobKey::stored(&tenant, &reference.key).unwrap())
        .await
        .unwrap()
        .expect("the blob");
    assert_eq!(blob.len(), 1_048_576);
    assert!(blob.starts_with(b"[mock-huge]"));
    let result = record.task.result.expect("a result");
    assert_eq!(
        result.output_ref,
        Some(reference),
        "{name}: the result refers to the call's blob, not a copy"
    );

    // The task API links to the answers rather than inlining a mebibyte.
    let id = task["task_id"].as_str().unwrap();
    let call = &task["calls"][0];
    assert!(call["output"].is_null(), "{name}: {call}");
    assert_eq!(call["output_bytes"], 1_048_576);
    let call_url = format!(
        "/v1/tasks/{id}/calls/{}/output",
        call["call_id"].as_str().unwrap()
    );
    assert_eq!(call["output_url"], call_url.as_str());
    assert!(
        task["result"]["output"].is_null(),
        "{name}: {}",
        task["result"]
    );
    let task_url = format!("/v1/tasks/{id}/output");
    assert_eq!(task["result"]["output_url"], task_url.as_str());
    let viewer = p.token("acme", &[maof::domain::Role::Viewer]);
    for url in [&call_url, &task_url] {
        let response = p
            .http
            .get(format!("{}{url}", p.base))
            .bearer_auth(&viewer)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name}: {url}");
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; charset=utf-8"
        );
        let body = response.bytes().await.unwrap();
        assert_eq!(body.len(), 1_048_576, "{name}: {url}");
        assert!(body.starts_with(b"[mock-huge]"));
        // Another tenant finds nothing there.
        let other = p
            .http
            .get(format!("{}{url}", p.base))
            .bearer_auth(p.token("globex", &[maof::domain::Role::Admin]))
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 404, "{name}: {url}");
    }
    p.stop().await;
}

async fn a_poison_message_ends_in_the_dlq_and_fails_its_task(b: Backend) {
    let faults = Faults {
        wrap_tasks: Some(Box::new(|inner| {
            Arc::new(FailingRecordCalls::new(inner, u32::MAX)) as Arc<dyn TaskStore>
        })),
        ..Faults::default()
    };
    let p = Pipeline::start(b, faults).await;
    let token = p.submitter("acme");
    let (_, task) = submit(&p, &token, text_task("poison"), "").await;
    let limit = Duration::from_secs(5 + 3 * MAX_RECEIVES as u64);
    let task = finished(&p, &token, task["task_id"].as_str().unwrap(), limit).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], "stage_failed", "{task}");
    assert!(
        task["error"]["message"]
            .as_str()
            .unwrap()
            .contains("agent-call"),
        "{task}"
    );
    p.stop().await;
}

async fn the_same_idempotency_key_returns_the_same_task(b: Backend) {
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = p
            .http
            .post(format!("{}/v1/tasks", p.base))
            .bearer_auth(&token)
            .header("Idempotency-Key", "order-42")
            .json(&text_task("once"))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let body: Value = response.json().await.unwrap();
        ids.push(body["task_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids[0], ids[1]);
    let listed: Value = p
        .http
        .get(format!("{}/v1/tasks", p.base))
        .bearer_auth(p.token("acme", &[Role::Viewer]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        1,
        "one task: {listed}"
    );
    p.stop().await;
}

async fn cross_tenant_reads_are_404_and_bad_tokens_401(b: Backend) {
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    let (_, task) = submit(&p, &token, text_task("private"), "?wait=5").await;
    let id = task["task_id"].as_str().unwrap();
    let (status, body) = get_task(&p, &p.token("globex", &[Role::Admin]), id).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = get_task(&p, "not-a-jwt", id).await;
    assert_eq!(status, 401);
    let forged = maof::api::Authenticator::new(secrecy::SecretString::from(
        "another-secret-entirely-0123456789",
    ))
    .mint(
        "x",
        &maof::domain::TenantId::parse("acme").unwrap(),
        &[Role::Admin],
        Duration::from_secs(60),
    )
    .unwrap();
    let (status, _) = get_task(&p, &forged, id).await;
    assert_eq!(status, 401, "a token signed with another key");
    let (status, _) = get_task(&p, &token, id).await;
    assert_eq!(status, 200, "the owner still reads it");
    p.stop().await;
}

async fn a_task_no_agent_can_serve_fails_at_once_with_the_reason(b: Backend) {
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    let (status, task) = submit(
        &p,
        &token,
        json!({"task_type": "image", "content": "a cat"}),
        "?wait=5",
    )
    .await;
    assert_eq!(status, 200, "{task}");
    assert_eq!(task["status"], "failed");
    assert_eq!(task["error"]["code"], "no_capable_agent");
    assert!(task["calls"].as_array().unwrap().is_empty());
    // A disabled agent (no key) is never chosen, even when named.
    let body = json!({"task_type": "text", "content": "x", "routing": {"agents": ["keyless"]}});
    let (_, task) = submit(&p, &token, body, "?wait=5").await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], "unknown_agent");
    p.stop().await;
}

async fn a_task_past_its_timeout_fails_as_timed_out(b: Backend) {
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    // The slow agent answers after 400 ms; the task allows 150.
    let body = json!({"task_type": "slow", "content": "too slow", "timeout_ms": 150});
    let (_, task) = submit(&p, &token, body, "?wait=5").await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], "timeout", "{task}");
    assert!(task["result"].is_null());
    p.stop().await;
}

/// A money amount as the API renders it (a decimal string, or a number).
fn dollars(v: &Value) -> f64 {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not an amount: {v}"))
}

async fn a_task_that_times_out_carries_the_cost_of_the_calls_it_made(b: Backend) {
    let name = b.name;
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    // mock-a answers at once; mock-slower would take 2.5 s, past the deadline,
    // so its attempt is cut off there (the deadline leaves route time to
    // plan on a loaded machine).
    let body = json!({"task_type": "text", "content": "race the clock", "timeout_ms": 2200,
        "routing": {"fanout": 2, "agents": ["mock-a", "mock-slower"]},
        "aggregation": {"strategy": "all"}});
    let (_, task) = submit(&p, &token, body, "").await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    let task = finished(&p, &token, &id, Duration::from_secs(10)).await;
    assert_eq!(task["status"], "failed", "{name}: {task}");
    assert_eq!(task["error"]["code"], "timeout", "{name}: {task}");
    // The slow call may land just after the task ended (the sweeper or the
    // call itself ends it at the deadline): it is then added when it does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let task = loop {
        let (_, task) = get_task(&p, &token, &id).await;
        if task["calls_pending"] == 0 {
            break task;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name}: {task}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let calls = task["calls"].as_array().unwrap();
    assert_eq!(
        calls.len(),
        2,
        "{name}: both calls were made and recorded: {task}"
    );
    let input: u64 = calls
        .iter()
        .map(|c| c["usage"]["input_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(
        task["usage"]["input_tokens"].as_u64(),
        Some(input),
        "{name}: {task}"
    );
    let cost: f64 = calls.iter().map(|c| dollars(&c["cost_usd"])).sum();
    assert!(cost > 0.0, "{name}: mock-a's answer was paid for: {task}");
    assert!(
        (dollars(&task["cost_usd"]) - cost).abs() < 1e-12,
        "{name}: the failed task owes what its calls cost: {task}"
    );
    p.stop().await;
}

async fn a_task_cancelled_mid_call_owes_what_its_calls_cost_when_they_land(b: Backend) {
    let name = b.name;
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    // Two calls of 0.4 s and 2.5 s; the task is cancelled while they run.
    let body = json!({"task_type": "text", "content": "cancel me", "timeout_ms": 20000,
        "routing": {"fanout": 2, "agents": ["mock-slow", "mock-slower"]}});
    let (_, task) = submit(&p, &token, body, "").await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get_task(&p, &token, &id).await.1["status"] != "running" {
        assert!(tokio::time::Instant::now() < deadline, "{name}: never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled = p
        .http
        .post(format!("{}/v1/tasks/{id}/cancel", p.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200, "{name}");
    // Both calls land (or are recorded as not made) after the cancel, and
    // the fan-in's hand-off to aggregate (one more queue hop) adds them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let task = loop {
        let (_, task) = get_task(&p, &token, &id).await;
        let landed: u64 = task["calls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["usage"]["input_tokens"].as_u64())
            .sum();
        if task["calls_pending"] == 0 && task["usage"]["input_tokens"].as_u64() == Some(landed) {
            break task;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: the late calls were never counted: {task}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        task["status"], "cancelled",
        "{name}: the status never changes: {task}"
    );
    let calls = task["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2, "{name}: {task}");
    let input: u64 = calls
        .iter()
        .map(|c| c["usage"]["input_tokens"].as_u64().unwrap())
        .sum();
    assert!(input > 0, "{name}: at least one call was paid for: {task}");
    assert_eq!(
        task["usage"]["input_tokens"].as_u64(),
        Some(input),
        "{name}: {task}"
    );
    let cost: f64 = calls.iter().map(|c| dollars(&c["cost_usd"])).sum();
    assert!(
        (dollars(&task["cost_usd"]) - cost).abs() < 1e-12,
        "{name}: the cancelled task owes what its calls cost: {task}"
    );
    // Announced once, as cancelled: adding the late calls' cost afterwards
    // changes a finished task, which announces nothing more.
    let events = announced(&p, &id).await;
    assert!(
        events
            .iter()
            .all(|e| e.event_id == format!("{id}.cancelled")),
        "{name}: one finishing, as cancelled: {events:?}"
    );
    p.stop().await;
}

/// A call whose agent fails for good on the provider's side goes to the
/// call's fallbacks in order: through two failing agents to the third,
/// which answers; the call shows the chain. With a depth of one it stops
/// failed at the second, and without fallback at the first.
async fn a_call_falls_back_through_failing_agents_to_one_that_answers(b: Backend) {
    let name = b.name;
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    let body = json!({"task_type": "chained", "content": "fall through"});
    let (_, task) = submit(&p, &token, body, "?wait=20").await;
    assert_eq!(task["status"], "completed", "{name}: {task}");
    let call = &task["calls"][0];
    assert_eq!(call["agent_id"], "chain-c", "{name}: {task}");
    let chain: Vec<(&str, &str)> = call["fell_back_from"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["agent_id"].as_str().unwrap(),
                h["error"]["class"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        chain,
        [("chain-a", "server"), ("chain-b", "rate_limited")],
        "{name}: {task}"
    );
    for agent in ["chain-a", "chain-b", "chain-c"] {
        assert_eq!(
            p.provider.count(agent, "fall through"),
            1,
            "{name}: {agent}"
        );
    }
    let body = json!({"task_type": "chained", "content": "one step",
        "routing": {"fallback_depth": 1}});
    let (_, task) = submit(&p, &token, body, "?wait=20").await;
    assert_eq!(task["status"], "failed", "{name}: {task}");
    assert_eq!(task["calls"][0]["agent_id"], "chain-b", "{name}: {task}");
    assert_eq!(p.provider.count("chain-c", "one step"), 0, "{name}");
    let body = json!({"task_type": "chained", "content": "no fallback",
        "routing": {"fallback": false}});
    let (_, task) = submit(&p, &token, body, "?wait=20").await;
    assert_eq!(task["status"], "failed", "{name}: {task}");
    assert_eq!(task["calls"][0]["agent_id"], "chain-a", "{name}: {task}");
    assert!(
        task["calls"][0]["fell_back_from"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{name}: {task}"
    );
    assert_eq!(p.provider.count("chain-b", "no fallback"), 0, "{name}");
    // A depth without fallback is refused, naming the field.
    let body = json!({"task_type": "chained", "content": "x",
        "routing": {"fallback": false, "fallback_depth": 2}});
    let (status, problem) = submit(&p, &token, body, "").await;
    assert_eq!(status, 422, "{name}: {problem}");
    assert_eq!(
        problem["field"], "routing.fallback_depth",
        "{name}: {problem}"
    );
    p.stop().await;
}

/// A tiered task starts at the cheap tier; the cheap agent's answer to a
/// longer request is cut off (finish reason `length`), so the call
/// escalates to the tier above, whose answer stands. The call shows the
/// escalation, and its usage and cost are both answers'. A short request
/// stays at the cheap tier; `quality` goes to the dear one at once.
async fn a_tiered_call_escalates_a_truncated_answer_to_the_next_tier(b: Backend) {
    let name = b.name;
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    let content = "one two three four five six";
    let body = json!({"task_type": "tiered", "content": content,
        "routing": {"strategy": "tiered"}});
    let (_, task) = submit(&p, &token, body, "?wait=20").await;
    assert_eq!(task["status"], "completed", "{name}: {task}");
    let call = &task["calls"][0];
    assert_eq!(call["agent_id"], "tier-large", "{name}: {task}");
    assert!(call.get("truncated").is_none(), "{name}: {task}");
    let hops = call["fell_back_from"].as_array().unwrap();
    assert_eq!(hops.len(), 1, "{name}: {task}");
    let hop = &hops[0];
    assert_eq!(hop["agent_id"], "tier-small", "{name}: {task}");
    assert_eq!(hop["escalated"], "truncated", "{name}: {task}");
    assert!(hop.get("error").is_none(), "{name}: {task}");
    // The answer kept is the dear tier's, whole.
    let output = call["output"].as_str().unwrap();
    assert!(
        output.starts_with("[tier-large] 6 words"),
        "{name}: {output}"
    );
    assert_eq!(output.len(), 400, "{name}");
    // Both answers are paid for: the cut one (6 input tokens and 50 output
    // at $0.15 and $0.60 a million) and the whole one (at $3 and $15).
    let (hop_out, out) = (
        hop["usage"]["output_tokens"].as_u64().unwrap(),
        call["usage"]["output_tokens"].as_u64().unwrap(),
    );
    assert_eq!((hop_out, out), (50, 150), "{name}: {task}");
    let hop_cost = dollars(&hop["cost_usd"]);
    assert!(
        (hop_cost - (7.0 * 0.15 + 50.0 * 0.60) / 1e6).abs() < 1e-12,
        "{name}: {task}"
    );
    let own = (7.0 * 3.0 + 100.0 * 15.0) / 1e6;
    assert!(
        (dollars(&call["cost_usd"]) - (hop_cost + own)).abs() < 1e-12,
        "{name}: the call's cost is both answers': {task}"
    );
    assert!(
        (dollars(&task["cost_usd"]) - (hop_cost + own)).abs() < 1e-12,
        "{name}: {task}"
    );
    for agent in ["tier-small", "tier-large"] {
        assert_eq!(p.provider.count(agent, content), 1, "{name}: {agent}");
    }
    // A short request: the cheap tier's answer is whole, and stands.
    let body = json!({"task_type": "tiered", "content": "one two",
        "routing": {"strategy": "tiered"}});
    let (_, task) = submit(&p, &token, body, "?wait=20").await;
    assert_eq!(task["status"], "completed", "{name}: {task}");
    assert_eq!(task["calls"][0]["agent_id"], "tier-small", "{name}: {task}");
    assert!(
        task["calls"][0]["fell_back_from"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{name}: {task}"
    );
    assert_eq!(p.provider.count("tier-large", "one two"), 0, "{name}");
    // Quality goes to the dear tier at once.
    let body = json!({"task_type": "tiered", "content": content,
        "routing": {"strategy": "quality"}});
    let (_, task) = submit(&p, &token, body, "?wait=20").await;
    assert_eq!(task["calls"][0]["agent_id"], "tier-large", "{name}: {task}");
    assert_eq!(p.provider.count("tier-small", content), 1, "{name}");
    // Without fallback there is no ladder: the cut answer stands, marked.
    let body = json!({"task_type": "tiered", "content": "a b c d e f g",
        "routing": {"strategy": "tiered", "fallback": false}});
    let (_, task) = submit(&p, &token, body, "?wait=20").await;
    assert_eq!(task["status"], "completed", "{name}: {task}");
    assert_eq!(task["calls"][0]["agent_id"], "tier-small", "{name}: {task}");
    assert_eq!(task["calls"][0]["truncated"], true, "{name}: {task}");
    p.stop().await;
}

/// Waits until `agent` was asked `n` times for `content`; then, after a
/// retry's delay, checks it was asked no more.
async fn called_exactly(p: &Pipeline, name: &str, agent: &str, content: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while p.provider.count(agent, content) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: {agent} was called {} times, not {n}",
            p.provider.count(agent, content)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Longer than the 6 s a refused route message waits before it tries again.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(p.provider.count(agent, content), n, "{name}: {agent}");
}

/// 50 concurrent tasks for an agent limited to 10 calls a minute make 10
/// calls while the clock stands still; the rest wait in the queue (none
/// fails), and a minute later 10 more go. With fallback, a task passes the
/// agent at its limit over for the next capable one, within that one's
/// limit (5 a minute).
async fn an_agent_at_its_rate_limit_is_passed_over_or_waited_for(b: Backend) {
    let name = b.name;
    let clock = Arc::new(maof::ports::ManualClock::new(chrono::Utc::now()));
    let p = Pipeline::start(
        b,
        Faults {
            clock: Some(clock.clone()),
            ..Faults::default()
        },
    )
    .await;
    let token = p.submitter("acme");
    let body = json!({"task_type": "limited", "content": "limit me", "timeout_ms": 600000,
        "routing": {"agents": ["limited-a"], "fallback": false}});
    let submitted =
        futures::future::join_all((0..50).map(|_| submit(&p, &token, body.clone(), ""))).await;
    assert!(submitted.iter().all(|(status, _)| *status == 202), "{name}");
    called_exactly(&p, name, "limited-a", "limit me", 10).await;
    // None of the waiting tasks failed.
    let token_viewer = p.token("acme", &[Role::Viewer]);
    for (_, task) in &submitted {
        let (_, task) = get_task(&p, &token_viewer, task["task_id"].as_str().unwrap()).await;
        assert!(
            ["queued", "running", "completed"].contains(&task["status"].as_str().unwrap()),
            "{name}: {task}"
        );
    }
    clock.advance(Duration::from_secs(60));
    called_exactly(&p, name, "limited-a", "limit me", 20).await;
    // limited-a has no room (the clock stands still again): the next tasks
    // go to limited-b, five of them; the other three wait.
    let body = json!({"task_type": "limited", "content": "fall back", "timeout_ms": 600000});
    for _ in 0..8 {
        assert_eq!(submit(&p, &token, body.clone(), "").await.0, 202, "{name}");
    }
    called_exactly(&p, name, "limited-b", "fall back", 5).await;
    assert_eq!(p.provider.count("limited-a", "fall back"), 0, "{name}");
    p.stop().await;
}

fn dropping_the_first(queue: QueueName, clock: Arc<maof::ports::ManualClock>) -> Faults {
    Faults {
        wrap_queue: Some(Box::new(move |q| {
            Arc::new(DroppingMessages {
                inner: q,
                queue,
                left: std::sync::atomic::AtomicU32::new(1),
            })
        })),
        clock: Some(clock),
        ..Faults::default()
    }
}

fn dropping_the_first_route_message(clock: Arc<maof::ports::ManualClock>) -> Faults {
    dropping_the_first(QueueName::Route, clock)
}

async fn a_fan_out_whose_aggregate_message_is_lost_completes_through_the_sweeper(b: Backend) {
    let name = b.name;
    let clock = Arc::new(maof::ports::ManualClock::new(chrono::Utc::now()));
    let p = Pipeline::start(b, dropping_the_first(QueueName::Aggregate, clock.clone())).await;
    let token = p.submitter("acme");
    let body = json!({"task_type": "text", "content": "lost after the fan-in",
        "timeout_ms": 600000, "routing": {"fanout": 2, "agents": ["mock-a", "mock-b"]}});
    let (status, task) = submit(&p, &token, body, "").await;
    assert_eq!(status, 202, "{name}: {task}");
    let id = task["task_id"].as_str().unwrap().to_owned();
    // Both calls answer and are counted; the winner's hand-on is lost.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, task) = get_task(&p, &token, &id).await;
        let answered = task["calls"]
            .as_array()
            .is_some_and(|c| c.len() == 2 && c.iter().all(|c| c["status"] == "succeeded"));
        if answered {
            assert_eq!(task["status"], "running", "{name}: {task}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name}: {task}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, task) = get_task(&p, &token, &id).await;
    assert_eq!(
        task["status"], "running",
        "{name}: nothing moves it yet: {task}"
    );
    // A stage's grace later, the sweeper hands it on.
    clock.advance(Duration::from_secs(61));
    let task = finished(&p, &token, &id, Duration::from_secs(15)).await;
    assert_eq!(task["status"], "completed", "{name}: {task}");
    for agent in ["mock-a", "mock-b"] {
        assert_eq!(
            p.provider.count(agent, "lost after the fan-in"),
            1,
            "{name}: {agent} answered once, not again for the re-drive"
        );
    }
    p.stop().await;
}

async fn a_task_stored_without_its_route_message_completes_through_the_sweeper(b: Backend) {
    let name = b.name;
    let clock = Arc::new(maof::ports::ManualClock::new(chrono::Utc::now()));
    let p = Pipeline::start(b, dropping_the_first_route_message(clock.clone())).await;
    let token = p.submitter("acme");
    let body = json!({"task_type": "text", "content": "lost at intake", "timeout_ms": 600000});
    let (status, task) = submit(&p, &token, body, "").await;
    assert_eq!(status, 202, "{name}: {task}");
    let id = task["task_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, task) = get_task(&p, &token, &id).await;
    assert_eq!(
        task["status"], "queued",
        "{name}: nothing moves it yet: {task}"
    );
    // A stage's grace later, the sweeper finds it and sends its message again.
    clock.advance(Duration::from_secs(61));
    let task = finished(&p, &token, &id, Duration::from_secs(15)).await;
    assert_eq!(task["status"], "completed", "{name}: {task}");
    assert_eq!(p.provider.count("mock-a", "lost at intake"), 1, "{name}");
    p.stop().await;
}

async fn a_task_whose_messages_are_lost_fails_at_its_deadline_through_the_sweeper(b: Backend) {
    let name = b.name;
    let clock = Arc::new(maof::ports::ManualClock::new(chrono::Utc::now()));
    let p = Pipeline::start(b, dropping_the_first_route_message(clock.clone())).await;
    let token = p.submitter("acme");
    let body = json!({"task_type": "text", "content": "lost for good", "timeout_ms": 30000});
    let (_, task) = submit(&p, &token, body, "").await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    // Past its 30 s deadline (sooner than a stage's grace): the sweeper's
    // first look fails it.
    clock.advance(Duration::from_secs(32));
    let task = finished(&p, &token, &id, Duration::from_secs(15)).await;
    assert_eq!(task["status"], "failed", "{name}: {task}");
    assert_eq!(task["error"]["code"], "timeout", "{name}: {task}");
    assert_eq!(p.provider.total(), 0, "{name}: nothing was called");
    p.stop().await;
}

async fn queues_are_empty_after_tasks_finish(b: Backend) {
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    let (_, task) = submit(
        &p,
        &token,
        json!({"task_type": "text", "content": "x", "routing": {"fanout": 2}}),
        "?wait=10",
    )
    .await;
    assert_eq!(task["status"], "completed", "{task}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for queue in [QueueName::Route, QueueName::AgentCall, QueueName::Aggregate] {
        let left = p
            .services
            .queue
            .receive(queue, 10, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap();
        assert!(
            left.is_empty(),
            "{}: every handled message deleted: {left:?}",
            queue.as_str()
        );
    }
    p.stop().await;
}

/// The caller's tenant's spend today (`GET /v1/tenant/usage`).
async fn usage(p: &Pipeline, token: &str) -> Value {
    p.http
        .get(format!("{}/v1/tenant/usage", p.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Every entry of `action` in `tenant`'s audit log, page by page.
async fn audit_entries(p: &Pipeline, tenant: &str, action: &str) -> Vec<Value> {
    let token = p.token(tenant, &[Role::Admin]);
    let (mut entries, mut cursor) = (Vec::new(), String::new());
    loop {
        let page: Value = p
            .http
            .get(format!(
                "{}/v1/audit?action={action}&limit=100&cursor={cursor}",
                p.base
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        entries.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => return entries,
        }
    }
}

/// 100 concurrent tasks against a daily budget of five and a half calls:
/// spend ends within one call of the budget, on either side (here exactly
/// five calls, as each costs what is reserved for it), no refused task
/// calls its agent, and the usage route shows it.
async fn concurrent_tasks_spend_no_more_than_the_budget(b: Backend) {
    let name = b.name;
    let p = Pipeline::start(b, Faults::default()).await;
    p.put_settings("thrifty", true, json!({"budgets": {"daily_usd": "0.55"}}))
        .await;
    let token = p.token("thrifty", &[Role::Submitter, Role::Viewer]);
    let body = json!({"task_type": "metered", "content": "spend",
        "routing": {"agents": ["mock-metered"]}, "timeout_ms": 120000});
    let submitted =
        futures::future::join_all((0..100).map(|_| submit(&p, &token, body.clone(), ""))).await;
    let ids: Vec<String> = submitted
        .iter()
        .map(|(status, task)| {
            assert_eq!(*status, 202, "{name}: {task}");
            task["task_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let mut completed = 0;
    for id in &ids {
        let task = finished(&p, &token, id, Duration::from_secs(90)).await;
        match task["status"].as_str() {
            Some("completed") => {
                completed += 1;
                assert_eq!(task["cost_usd"], "0.1", "{name}: {task}");
            }
            _ => assert_eq!(task["error"]["code"], "budget_exceeded", "{name}: {task}"),
        }
    }
    let call = 0.1;
    let spent = f64::from(completed) * call;
    assert!(
        spent <= 0.55 + call && spent >= 0.55 - call,
        "{name}: {completed} calls spent ${spent}"
    );
    assert_eq!(
        completed, 5,
        "{name}: each call costs exactly what it reserved"
    );
    assert_eq!(
        p.provider.count("mock-metered", "spend"),
        completed,
        "{name}: a refused task calls nothing"
    );
    // Each refusal is audited once, with its task.
    let refusals = audit_entries(&p, "thrifty", "budget.exceeded").await;
    let mut refused: Vec<&str> = refusals
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    refused.sort();
    refused.dedup();
    assert_eq!(refusals.len(), 100 - completed as usize, "{name}");
    assert_eq!(refused.len(), 100 - completed as usize, "{name}");
    assert!(
        refusals
            .iter()
            .all(|e| e["actor"]["via"] == "pipeline" && e["detail"]["code"] == "budget_exceeded"),
        "{name}: {refusals:?}"
    );
    assert_eq!(
        audit_entries(&p, "thrifty", "task.created").await.len(),
        100,
        "{name}"
    );
    let spend = usage(&p, &token).await;
    assert_eq!(spend["day"]["spent_usd"], "0.5", "{name}: {spend}");
    assert_eq!(spend["day"]["reserved_usd"], "0", "{name}: {spend}");
    assert_eq!(spend["day"]["budget_usd"], "0.55", "{name}: {spend}");
    assert_eq!(spend["day"]["remaining_usd"], "0.05", "{name}: {spend}");
    assert_eq!(spend["month"]["spent_usd"], "0.5", "{name}: {spend}");
    assert!(
        spend["month"].get("budget_usd").is_none(),
        "{name}: {spend}"
    );
    // Another tenant's usage holds none of it.
    let other = usage(&p, &p.token("acme", &[Role::Viewer])).await;
    assert_eq!(other["day"]["spent_usd"], "0", "{name}: {other}");
    assert!(other["day"].get("budget_usd").is_none(), "{name}: {other}");
    p.stop().await;
}

/// A task's own budget refuses a panel that does not fit before any call,
/// and an agent without prices is not chosen under it.
async fn a_task_budget_refuses_a_panel_that_does_not_fit(b: Backend) {
    let name = b.name;
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    let body = json!({"task_type": "metered", "content": "too dear",
        "routing": {"agents": ["mock-metered"]}, "budget_usd": "0.09"});
    let (_, task) = submit(&p, &token, body, "?wait=10").await;
    assert_eq!(task["status"], "failed", "{name}: {task}");
    assert_eq!(task["error"]["code"], "budget_exceeded", "{name}: {task}");
    assert_eq!(p.provider.count("mock-metered", "too dear"), 0, "{name}");
    let body = json!({"task_type": "metered", "content": "just enough",
        "routing": {"agents": ["mock-metered"]}, "budget_usd": "0.1"});
    let (_, task) = submit(&p, &token, body, "?wait=10").await;
    assert_eq!(task["status"], "completed", "{name}: {task}");
    assert_eq!(task["cost_usd"], "0.1", "{name}: {task}");
    let body = json!({"task_type": "unpriced", "content": "unpriced",
        "routing": {"agents": ["mock-unpriced"]}, "budget_usd": "1"});
    let (_, task) = submit(&p, &token, body, "?wait=10").await;
    assert_eq!(task["error"]["code"], "unpriced_agent", "{name}: {task}");
    let body = json!({"task_type": "unpriced", "content": "unpriced", "budget_usd": "1"});
    let (_, task) = submit(&p, &token, body, "?wait=10").await;
    assert_eq!(task["error"]["code"], "no_priced_agent", "{name}: {task}");
    assert_eq!(p.provider.count("mock-unpriced", "unpriced"), 0, "{name}");
    // Without a budget it is called (its cost unknown, not zero).
    let body = json!({"task_type": "unpriced", "content": "unpriced"});
    let (_, task) = submit(&p, &token, body, "?wait=10").await;
    assert_eq!(task["status"], "completed", "{name}: {task}");
    assert_eq!(task["cost_usd"], Value::Null, "{name}: {task}");
    p.stop().await;
}

/// A budgeted task cancelled while its calls run: when they land, each
/// settles what it reserved, so nothing stays reserved and the day's spend
/// is what the task owes.
async fn a_cancelled_budgeted_task_releases_what_it_reserved(b: Backend) {
    let name = b.name;
    let p = Pipeline::start(b, Faults::default()).await;
    p.put_settings(
        "frugal",
        true,
        json!({"budgets": {"daily_usd": "10", "monthly_usd": "100"}}),
    )
    .await;
    let token = p.token("frugal", &[Role::Submitter, Role::Viewer]);
    let body = json!({"task_type": "text", "content": "cancel me", "timeout_ms": 20000,
        "routing": {"fanout": 2, "agents": ["mock-slow", "mock-slower"]}});
    let (_, task) = submit(&p, &token, body, "").await;
    let id = task["task_id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get_task(&p, &token, &id).await.1["status"] != "running" {
        assert!(tokio::time::Instant::now() < deadline, "{name}: never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = usage(&p, &token).await;
    assert_ne!(held["day"]["reserved_usd"], "0", "{name}: {held}");
    let cancelled = p
        .http
        .post(format!("{}/v1/tasks/{id}/cancel", p.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200, "{name}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let settled = loop {
        let now = usage(&p, &token).await;
        if now["day"]["reserved_usd"] == "0" {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: still reserved: {now}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (_, task) = get_task(&p, &token, &id).await;
    // A call the cancel came before is recorded as not made: no usage, no
    // cost, nothing spent.
    let calls: f64 = task["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| match &c["cost_usd"] {
            Value::Null => {
                assert_eq!(c["usage"]["output_tokens"], 0, "{name}: {c}");
                0.0
            }
            cost => dollars(cost),
        })
        .sum();
    assert!(
        (dollars(&settled["day"]["spent_usd"]) - calls).abs() < 1e-12,
        "{name}: spend is what the calls cost: {settled} {task}"
    );
    assert_eq!(settled["month"], {
        let mut month = settled["day"].clone();
        month["period"] = settled["month"]["period"].clone();
        month["budget_usd"] = json!("100");
        month["remaining_usd"] = settled["month"]["remaining_usd"].clone();
        month
    });
    p.stop().await;
}

/// Each filter mode at work through the pipeline: `log` passes the text
/// (the provider and the answer see it as sent); PII in `block` mode
/// refuses it, naming `pii:<kind>`; the platform's filters apply whatever
/// the tenant sets.
async fn filter_modes_log_block_and_the_platforms_apply(b: Backend) {
    let name = b.name;
    let p = Pipeline::start(b, Faults::default()).await;
    p.put_settings(
        "acme",
        false,
        json!({"filters": {"pii": {"mode": "log", "kinds": ["email", "ip"]}}}),
    )
    .await;
    let token = p.token("acme", &[Role::Submitter, Role::Viewer]);
    let logged = "ping ops@example.com from 10.1.2.3";
    let body = json!({"task_type": "echo", "content": logged});
    let (_, task) = submit(&p, &token, body, "?wait=10").await;
    assert_eq!(task["result"]["output"], logged, "{name}: {task}");
    assert_eq!(p.provider.count("mock-echo", logged), 1, "{name}");
    // The platform's card blocking applies over the tenant's logging.
    p.put_settings(
        "acme",
        true,
        json!({"filters": {"pii": {"mode": "block", "kinds": ["card"]}}}),
    )
    .await;
    let carded = "pay with 5500 0000 0000 0004";
    let body = json!({"task_type": "echo", "content": carded});
    let (status, problem) = submit(&p, &token, body, "").await;
    assert_eq!(status, 422, "{name}: {problem}");
    assert_eq!(problem["code"], "content_blocked", "{name}: {problem}");
    assert_eq!(problem["field"], "content", "{name}: {problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("pii:card"),
        "{name}: {problem}"
    );
    assert!(!problem.to_string().contains("5500"), "{name}: {problem}");
    assert_eq!(p.provider.count("mock-echo", carded), 0, "{name}");
    // A Luhn-failing number is no card: it passes.
    let not_a_card = "order 5500 0000 0000 0005";
    let body = json!({"task_type": "echo", "content": not_a_card});
    let (_, task) = submit(&p, &token, body, "?wait=10").await;
    assert_eq!(task["result"]["output"], not_a_card, "{name}: {task}");
    p.stop().await;
}

/// The agent a finished single-call task was sent to.
fn called(task: &Value) -> &str {
    task["calls"][0]["agent_id"].as_str().unwrap_or("")
}

async fn strategies_pick_by_price_quality_and_context_window(b: Backend) {
    let name = b.name;
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    let routed = |strategy: &str, content: String| json!({"task_type": "routed", "content": content, "routing": {"strategy": strategy}});
    // A short task fits route-cheap's 100-token window (1 + 50 output).
    let (_, task) = submit(&p, &token, routed("cheapest", "short".into()), "?wait=10").await;
    assert_eq!(task["status"], "completed", "{name}: {task}");
    assert_eq!(called(&task), "route-cheap", "{name}: {task}");
    // 1,000 characters (250 tokens) do not: the next cheapest is called.
    let long = "word ".repeat(200);
    let (_, task) = submit(&p, &token, routed("cheapest", long.clone()), "?wait=10").await;
    assert_eq!(task["status"], "completed", "{name}: {task}");
    assert_eq!(called(&task), "route-mid", "{name}: {task}");
    for quality in ["quality", "best"] {
        let (_, task) = submit(&p, &token, routed(quality, "short".into()), "?wait=10").await;
        assert_eq!(called(&task), "route-best", "{name} {quality}: {task}");
    }
    // Named, it is still refused before any call, naming the window.
    let body = json!({"task_type": "routed", "content": long,
        "routing": {"agents": ["route-cheap"]}});
    let (_, task) = submit(&p, &token, body, "?wait=10").await;
    assert_eq!(task["status"], "failed", "{name}: {task}");
    assert_eq!(
        task["error"]["code"], "context_window_too_small",
        "{name}: {task}"
    );
    assert!(task["calls"].as_array().unwrap().is_empty(), "{task}");
    p.stop().await;
}

/// `fastest` and `balanced` order by the latency every call records: once
/// each agent has answered, `fastest` (and `balanced` weighing latency
/// alone) calls the quick one, `balanced` weighing quality alone the best;
/// weights with another strategy are refused, naming the field.
async fn fastest_and_balanced_read_the_latency_calls_record(b: Backend) {
    let name = b.name;
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    let timed =
        |routing: Value| json!({"task_type": "timed", "content": "how fast", "routing": routing});
    // With no latency known, fastest goes by quality.
    let (_, task) = submit(
        &p,
        &token,
        timed(json!({"strategy": "fastest"})),
        "?wait=10",
    )
    .await;
    assert_eq!(called(&task), "speed-slow", "{name}: {task}");
    let (_, task) = submit(
        &p,
        &token,
        timed(json!({"agents": ["speed-quick"]})),
        "?wait=10",
    )
    .await;
    assert_eq!(task["status"], "completed", "{name}: {task}");
    let (_, task) = submit(
        &p,
        &token,
        timed(json!({"strategy": "fastest"})),
        "?wait=10",
    )
    .await;
    assert_eq!(called(&task), "speed-quick", "{name}: {task}");
    let balanced = |weights: Value| timed(json!({"strategy": "balanced", "weights": weights}));
    let (_, task) = submit(&p, &token, balanced(json!({"latency": 1})), "?wait=10").await;
    assert_eq!(called(&task), "speed-quick", "{name}: {task}");
    let (_, task) = submit(&p, &token, balanced(json!({"quality": 1})), "?wait=10").await;
    assert_eq!(called(&task), "speed-slow", "{name}: {task}");
    let (status, problem) = submit(
        &p,
        &token,
        timed(json!({"strategy": "quality", "weights": {"quality": 1}})),
        "",
    )
    .await;
    assert_eq!(status, 422, "{name}: {problem}");
    assert_eq!(problem["field"], "routing.weights", "{name}: {problem}");
    p.stop().await;
}

/// An agent failing on the provider's side has its circuit opened once
/// the breaker's window holds enough failures (3 of 3 here): the next
/// tasks go to the healthy agent without calling it, a task that may use
/// only it fails at once naming it, and its health shows the open
/// circuit. After the cooldown exactly one probe goes to it; failing, it
/// opens the circuit again.
async fn an_open_circuit_is_routed_around_and_probed_after_its_cooldown(b: Backend) {
    let name = b.name;
    let clock = Arc::new(maof::ports::ManualClock::new(chrono::Utc::now()));
    let p = Pipeline::start(
        b,
        Faults {
            clock: Some(clock.clone()),
            ..Faults::default()
        },
    )
    .await;
    let token = p.submitter("acme");
    let viewer = p.token("acme", &[Role::Viewer]);
    for i in 0..6 {
        let content = format!("guarded {i}");
        let body = json!({"task_type": "guarded", "content": content});
        let (_, task) = submit(&p, &token, body, "?wait=20").await;
        assert_eq!(task["status"], "completed", "{name}: {task}");
        assert_eq!(called(&task), "steady", "{name}: {task}");
        // The first three fall back from flaky; then its circuit is open.
        let hops = task["calls"][0]["fell_back_from"].as_array().unwrap().len();
        assert_eq!(hops, usize::from(i < 3), "{name}: task {i}: {task}");
        assert_eq!(
            p.provider.count("flaky", &content),
            u32::from(i < 3),
            "{name}: task {i}"
        );
    }
    let health = p
        .http
        .get(format!("{}/v1/agents/flaky/health", p.base))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "{name}");
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["circuit"], "open", "{name}: {health}");
    assert_eq!(health["failures"], 3, "{name}: {health}");
    assert_eq!(health["failure_rate"], 1.0, "{name}: {health}");
    assert_eq!(health["trips"], 1, "{name}: {health}");
    assert!(health["retry_at"].is_string(), "{name}: {health}");
    let listed: Value = p
        .http
        .get(format!("{}/v1/agents?health=true", p.base))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let steady = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "steady")
        .unwrap();
    assert_eq!(steady["health"]["circuit"], "closed", "{name}: {steady}");
    assert_eq!(steady["health"]["calls"], 6, "{name}: {steady}");
    assert!(
        steady["health"]["latency_ms"].is_number(),
        "{name}: {steady}"
    );
    // Only flaky may serve it: no silent bypass, no call.
    let body = json!({"task_type": "guarded", "content": "only flaky",
        "routing": {"agents": ["flaky"], "fallback": false}});
    let (_, task) = submit(&p, &token, body, "?wait=20").await;
    assert_eq!(task["status"], "failed", "{name}: {task}");
    assert_eq!(task["error"]["code"], "circuit_open", "{name}: {task}");
    assert!(
        task["error"]["message"].as_str().unwrap().contains("flaky"),
        "{name}: {task}"
    );
    assert_eq!(p.provider.count("flaky", "only flaky"), 0, "{name}");
    // After the cooldown: two tasks at once, one probe.
    clock.advance(Duration::from_secs(601));
    let body = |content: &str| json!({"task_type": "guarded", "content": content});
    let (first, second) = tokio::join!(
        submit(&p, &token, body("probe 1"), "?wait=20"),
        submit(&p, &token, body("probe 2"), "?wait=20")
    );
    for (_, task) in [&first, &second] {
        assert_eq!(task["status"], "completed", "{name}: {task}");
    }
    let probes = p.provider.count("flaky", "probe 1") + p.provider.count("flaky", "probe 2");
    assert_eq!(probes, 1, "{name}");
    let health: Value = p
        .http
        .get(format!("{}/v1/agents/flaky/health", p.base))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["circuit"], "open", "{name}: {health}");
    p.stop().await;
}

/// How many of `tasks` each agent was called for.
fn per_agent(tasks: &[Value]) -> std::collections::BTreeMap<String, u32> {
    let mut counts = std::collections::BTreeMap::new();
    for task in tasks {
        *counts.entry(called(task).to_owned()).or_default() += 1;
    }
    counts
}

/// Submits `n` tasks at once and waits for each to finish.
async fn submit_all(p: &Pipeline, token: &str, body: Value, n: usize) -> Vec<Value> {
    let ids = futures::future::join_all((0..n).map(|_| submit(p, token, body.clone(), "")))
        .await
        .into_iter()
        .map(|(status, task)| {
            assert_eq!(status, 202, "{task}");
            task["task_id"].as_str().unwrap().to_owned()
        })
        .collect::<Vec<_>>();
    let mut tasks = Vec::new();
    for id in ids {
        tasks.push(finished(p, token, &id, Duration::from_secs(30)).await);
    }
    tasks
}

/// Two instances route tasks from the same queue, taking turns on one
/// counter in the store: in order, consecutive tasks go to the four
/// agents in turn whichever instance routes them; at once, twenty tasks
/// make five calls of each; weighted, in proportion to the weights.
async fn round_robin_across_two_instances_spreads_evenly(b: Backend) {
    let name = b.name;
    let mut p = Pipeline::start(b, Faults::default()).await;
    p.add_instance();
    let token = p.submitter("acme");
    let turns = |strategy: &str| json!({"task_type": "turns", "content": "whose turn", "routing": {"strategy": strategy}});
    let mut in_order = Vec::new();
    for _ in 0..20 {
        let (_, task) = submit(&p, &token, turns("round_robin"), "?wait=10").await;
        assert_eq!(task["status"], "completed", "{name}: {task}");
        in_order.push(called(&task).to_owned());
    }
    // Every four consecutive tasks, the four agents (weights aside).
    for window in in_order.windows(4) {
        let mut agents = window.to_vec();
        agents.sort();
        assert_eq!(
            agents,
            ["turn-a", "turn-b", "turn-c", "turn-d"],
            "{name}: {in_order:?}"
        );
    }
    let expected = |counts: &[(&str, u32)]| {
        counts
            .iter()
            .map(|(a, n)| ((*a).to_owned(), *n))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let even = expected(&[("turn-a", 5), ("turn-b", 5), ("turn-c", 5), ("turn-d", 5)]);
    let at_once = submit_all(&p, &token, turns("round_robin"), 20).await;
    assert_eq!(per_agent(&at_once), even, "{name}");
    // Weighted 2, 1, 1, 0: over two cycles of four, 4, 2, 2 and none.
    let weighted = submit_all(&p, &token, turns("weighted"), 8).await;
    assert_eq!(
        per_agent(&weighted),
        expected(&[("turn-a", 4), ("turn-b", 2), ("turn-c", 2)]),
        "{name}"
    );
    // A fan-out of two takes two turns: 10 tasks, 20 calls, 5 each.
    let body = json!({"task_type": "turns", "content": "two of us",
        "routing": {"strategy": "round_robin", "fanout": 2},
        "aggregation": {"strategy": "all"}});
    let fanned = submit_all(&p, &token, body, 10).await;
    for task in &fanned {
        assert_eq!(task["status"], "completed", "{name}: {task}");
        let calls = task["calls"].as_array().unwrap();
        assert_ne!(calls[0]["agent_id"], calls[1]["agent_id"], "{name}: {task}");
    }
    for agent in ["turn-a", "turn-b", "turn-c", "turn-d"] {
        assert_eq!(p.provider.count(agent, "two of us"), 5, "{name}: {agent}");
    }
    p.stop().await;
}

/// A task of the scripted panel's agents, combined by `aggregation`.
fn panel_task(content: &str, agents: &[&str], aggregation: Value) -> Value {
    json!({"task_type": "panel", "content": content,
        "routing": {"agents": agents, "fanout": agents.len(), "fallback": false},
        "aggregation": aggregation})
}

fn conflict_agents(conflict: &Value) -> Vec<&str> {
    conflict["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}

/// Every strategy through HTTP, on the scripted panel: real agreement and
/// conflict without keys.
async fn every_aggregation_strategy_combines_scripted_answers(b: Backend) {
    let name = b.name;
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    let run = |content: &'static str, agents: &'static [&'static str], aggregation: Value| {
        let body = panel_task(content, agents, aggregation);
        let (p, token) = (&p, &token);
        async move {
            let (status, task) = submit(p, token, body, "?wait=15").await;
            assert_eq!(status, 200, "{name}: {task}");
            assert_eq!(task["status"], "completed", "{name}: {task}");
            task["result"].clone()
        }
    };
    const ABC: &[&str] = &["panel-a", "panel-b", "panel-c"];

    // consensus: Paris and paris. agree, Lyon is the conflict.
    let r = run(
        "What is the capital of France?",
        ABC,
        json!({"strategy": "consensus"}),
    )
    .await;
    assert_eq!(r["strategy"], "consensus", "{name}: {r}");
    assert_eq!(r["output"], "Paris", "{name}: {r}");
    assert_eq!(r["confidence"], 0.6667, "{name}: {r}");
    let candidates = r["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 3, "{name}: {r}");
    assert_eq!(candidates[0]["agent_id"], "panel-a", "plan order: {r}");
    assert_eq!(candidates[0]["score"], 0.94, "0.6×0.9 + 0.4: {r}");
    assert!(candidates.iter().all(|c| c["call_id"].is_string()), "{r}");
    let conflicts = r["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{name}: {r}");
    assert_eq!(conflict_agents(&conflicts[0]), ["panel-c"], "{r}");
    assert_eq!(conflicts[0]["outputs"], json!(["Lyon"]), "{r}");

    // vote: negative twice against Positive.
    let r = run(
        "Analyse the sentiment of: meh",
        ABC,
        json!({"strategy": "vote"}),
    )
    .await;
    assert_eq!(r["output"], "negative", "{name}: {r}");
    assert_eq!(r["confidence"], 0.6667, "{name}: {r}");
    assert_eq!(conflict_agents(&r["conflicts"][0]), ["panel-a"], "{r}");
    // A tie between two goes to the better agent.
    let r = run(
        "Analyse the sentiment of: meh",
        &["panel-b", "panel-a"],
        json!({"strategy": "vote"}),
    )
    .await;
    assert_eq!(r["output"], "Positive", "{name}: {r}");
    assert_eq!(r["confidence"], 0.5, "{name}: {r}");
    assert!(
        r["conflicts"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("higher quality"),
        "{name}: {r}"
    );

    // merge: two JSON objects deep-merged, a disputed key, malformed JSON left out.
    let r = run("Write a profile of Ada", ABC, json!({"strategy": "merge"})).await;
    let merged: Value = serde_json::from_str(r["output"].as_str().unwrap()).unwrap();
    assert_eq!(
        merged,
        json!({"name": "Ada", "born": 1815, "home": {"city": "London", "country": "UK"}}),
        "{name}: {r}"
    );
    let conflicts = r["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 2, "{name}: {r}");
    assert_eq!(conflict_agents(&conflicts[0]), ["panel-c"], "{r}");
    assert_eq!(conflicts[1]["key"], "home.city", "{r}");
    assert_eq!(conflicts[1]["outputs"], json!(["London", "Paris"]), "{r}");

    // best: a truncated answer and an empty one lose to a complete one.
    let r = run("Give the best answer", ABC, json!({"strategy": "best"})).await;
    assert_eq!(r["output"], "Paris", "{name}: {r}");
    let scores: Vec<f64> = r["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["score"].as_f64().unwrap())
        .collect();
    assert_eq!(scores, [0.54, 0.88, 0.0], "{name}: {r}");
    p.stop().await;
}

/// `min_success`: too few answers fail the task, every call's result and
/// cost kept; and the tuning is refused with the field when out of range,
/// `judge` still not offered.
async fn too_few_answers_fail_the_task_and_bad_tuning_is_refused(b: Backend) {
    let name = b.name;
    let p = Pipeline::start(b, Faults::default()).await;
    let token = p.submitter("acme");
    let body = panel_task(
        "What is the capital of France?",
        &["panel-a", "panel-down"],
        json!({"strategy": "consensus", "min_success": 2}),
    );
    let (status, task) = submit(&p, &token, body, "?wait=15").await;
    assert_eq!(status, 200, "{name}: {task}");
    assert_eq!(task["status"], "failed", "{name}: {task}");
    assert_eq!(
        task["error"]["code"], "not_enough_answers",
        "{name}: {task}"
    );
    let calls = task["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2, "{name}: {task}");
    let answered = calls.iter().find(|c| c["agent_id"] == "panel-a").unwrap();
    assert_eq!(answered["output"], "Paris", "{name}: {task}");
    assert!(
        dollars(&task["cost_usd"]) > 0.0,
        "{name}: the answer's cost is kept: {task}"
    );
    // With one needed, the same panel completes.
    let body = panel_task(
        "What is the capital of France?",
        &["panel-a", "panel-down"],
        json!({"strategy": "consensus"}),
    );
    let (_, task) = submit(&p, &token, body, "?wait=15").await;
    assert_eq!(task["status"], "completed", "{name}: {task}");
    assert_eq!(task["result"]["confidence"], 1.0, "{name}: {task}");

    for (aggregation, field) in [
        (
            json!({"strategy": "consensus", "threshold": 1.5}),
            "aggregation.threshold",
        ),
        (
            json!({"strategy": "vote", "threshold": 0.5}),
            "aggregation.threshold",
        ),
        (
            json!({"strategy": "vote", "min_success": 3}),
            "aggregation.min_success",
        ),
        (
            json!({"strategy": "vote", "min_success": 0}),
            "aggregation.min_success",
        ),
    ] {
        let body = panel_task("x", &["panel-a", "panel-b"], aggregation);
        let (status, problem) = submit(&p, &token, body, "").await;
        assert_eq!(status, 422, "{name}: {problem}");
        assert_eq!(problem["field"], field, "{name}: {problem}");
    }
    let body = panel_task("x", &["panel-a"], json!({"strategy": "judge"}));
    let (status, problem) = submit(&p, &token, body, "").await;
    assert_eq!(status, 422, "{name}: judge is not offered yet: {problem}");
    let body = panel_task("x", &["panel-a"], json!({"strategy": "vote", "quorum": 1}));
    let (status, problem) = submit(&p, &token, body, "").await;
    assert_eq!(status, 400, "{name}: an unknown field: {problem}");
    p.stop().await;
}

on_both_backends!(
    round_robin_across_two_instances_spreads_evenly,
    a_single_agent_task_completes,
    a_fan_out_of_three_completes_with_three_attributed_results,
    every_message_delivered_twice_still_calls_each_agent_once,
    a_result_write_that_fails_once_does_not_call_the_agent_again,
    a_call_slower_than_the_visibility_timeout_is_made_once,
    a_dead_lettered_call_fails_alone_and_the_fan_out_completes,
    a_mebibyte_answer_completes_through_the_claim_check,
    a_poison_message_ends_in_the_dlq_and_fails_its_task,
    the_same_idempotency_key_returns_the_same_task,
    cross_tenant_reads_are_404_and_bad_tokens_401,
    a_task_no_agent_can_serve_fails_at_once_with_the_reason,
    a_task_past_its_timeout_fails_as_timed_out,
    a_task_that_times_out_carries_the_cost_of_the_calls_it_made,
    a_task_cancelled_mid_call_owes_what_its_calls_cost_when_they_land,
    a_task_stored_without_its_route_message_completes_through_the_sweeper,
    a_fan_out_whose_aggregate_message_is_lost_completes_through_the_sweeper,
    a_task_whose_messages_are_lost_fails_at_its_deadline_through_the_sweeper,
    queues_are_empty_after_tasks_finish,
    concurrent_tasks_spend_no_more_than_the_budget,
    a_task_budget_refuses_a_panel_that_does_not_fit,
    a_cancelled_budgeted_task_releases_what_it_reserved,
    filter_modes_log_block_and_the_platforms_apply,
    strategies_pick_by_price_quality_and_context_window,
    an_agent_at_its_rate_limit_is_passed_over_or_waited_for,
    a_call_falls_back_through_failing_agents_to_one_that_answers,
    an_open_circuit_is_routed_around_and_probed_after_its_cooldown,
    fastest_and_balanced_read_the_latency_calls_record,
    a_tiered_call_escalates_a_truncated_answer_to_the_next_tier,
    every_aggregation_strategy_combines_scripted_answers,
    too_few_answers_fail_the_task_and_bad_tuning_is_refused,
);
