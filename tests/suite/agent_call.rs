//! The agent-call stage against a provider on the wire (a local mock server
//! speaking Chat Completions): waits the provider asks for, in process or by
//! the queue's visibility; a rotated key picked up after a 401; exact costs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use maof::adapters::memory::{MemoryQueue, MemoryRegistry, MemorySecrets, MemoryTaskStore};
use maof::domain::aggregation::combine;
use maof::domain::{
    AgentId, AgentSpec, CallId, CallResult, CallStatus, Origin, Owner, PlannedCall, Principal,
    Provider, Role, Task, TaskRequest, TaskStatus, TenantId, Usage, Usd,
};
use maof::ports::{CachedSecrets, Expect, SecretSource, SystemClock};
use maof::providers::{OutboundPolicy, Providers, http_client};
use maof::runner::{Runner, RunnerConfig};
use maof::stages::{Services, Settings, intake};
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The tenant's own key for the upstream agent, bound to the local server.
const SECRET: &str = "maof/tenants/acme/upstream";

fn bound(key: &str) -> String {
    json!({"key": key, "provider": "openai_compatible", "hosts": ["127.0.0.1"]}).to_string()
}

fn acme() -> Owner {
    Owner::Tenant(TenantId::parse("acme").unwrap())
}

fn completion() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "positive"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 13, "completion_tokens": 7, "total_tokens": 20}
    }))
}

fn rate_limited(seconds: &str) -> ResponseTemplate {
    ResponseTemplate::new(429)
        .insert_header("retry-after", seconds)
        .set_body_json(json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}))
}

struct Harness {
    svc: Services,
    secrets: Arc<MemorySecrets>,
    runner: Runner,
}

async fn harness(upstream: &MockServer, settings: Settings) -> Harness {
    let secrets = Arc::new(MemorySecrets::new());
    secrets.put(SECRET, bound("sk-old"));
    let clock = Arc::new(SystemClock);
    let svc = Services::new(
        Arc::new(MemoryTaskStore::new()),
        Arc::new(MemoryRegistry::new()),
        Arc::new(MemoryQueue::new(5)),
        Arc::new(CachedSecrets::new(
            secrets.clone(),
            clock.clone(),
            CachedSecrets::DEFAULT_TTL,
        )),
        Arc::new(Providers::new(
            http_client(OutboundPolicy::allow_loopback()).unwrap(),
        )),
        clock,
        settings,
    );
    let spec: AgentSpec = serde_json::from_value(json!({
        "name": "upstream", "provider": "openai_compatible", "base_url": format!("{}/v1", upstream.uri()),
        "model": "m", "secret": SECRET, "capabilities": ["text"],
        "pricing": {"input_per_mtok": 0.15, "output_per_mtok": 0.60},
        "constraints": {"max_attempts": 3, "timeout_ms": 5000}
    }))
    .unwrap();
    svc.registry
        .put(
            &acme(),
            &AgentId::parse("upstream").unwrap(),
            spec,
            Expect::Absent,
            None,
        )
        .await
        .unwrap();
    // The template's visibility (minutes): a redelivery sooner than that was asked for.
    let runner = Runner::spawn(
        svc.clone(),
        RunnerConfig {
            wait: Duration::from_millis(50),
            ..RunnerConfig::default()
        },
    );
    Harness {
        svc,
        secrets,
        runner,
    }
}

async fn run_task(h: &Harness) -> maof::ports::TaskRecord {
    run(h, json!({"task_type": "text", "content": "I love it"})).await
}

async fn run(h: &Harness, request: serde_json::Value) -> maof::ports::TaskRecord {
    let principal = Principal {
        sub: "u".into(),
        tenant: TenantId::parse("acme").unwrap(),
        roles: vec![Role::Submitter],
    };
    let request: TaskRequest = serde_json::from_value(request).unwrap();
    let task = intake::submit(&h.svc, &principal, &Origin::default(), request, None)
        .await
        .unwrap()
        .task;
    intake::wait(
        &h.svc,
        &principal.tenant,
        task.task_id,
        Duration::from_secs(20),
    )
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_retry_after_is_waited_in_process() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(rate_limited("2"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(completion())
        .mount(&upstream)
        .await;
    let h = harness(&upstream, Settings::default()).await;

    let started = Instant::now();
    let record = run_task(&h).await;
    assert_eq!(
        record.task.status,
        TaskStatus::Completed,
        "{:?}",
        record.task.error
    );
    let call = &record.calls[0];
    assert_eq!(call.attempts, 2, "one 429, then success");
    assert_eq!(
        call.retried_errors.len(),
        1,
        "the 429 is kept with the result"
    );
    assert_eq!(
        call.retried_errors[0].class,
        maof::domain::ErrorClass::RateLimited
    );
    assert!(
        call.latency_ms >= 1900,
        "waited about 2 s: {} ms",
        call.latency_ms
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    h.runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_after_goes_back_to_the_queue_with_that_visibility() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(rate_limited("2"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(completion())
        .mount(&upstream)
        .await;
    // Waits over one second are not slept: the message is hidden for the wait instead.
    let settings = Settings {
        max_inline_wait: Duration::from_secs(1),
        ..Settings::default()
    };
    let h = harness(&upstream, settings).await;

    let started = Instant::now();
    let record = run_task(&h).await;
    let elapsed = started.elapsed();
    assert_eq!(
        record.task.status,
        TaskStatus::Completed,
        "{:?}",
        record.task.error
    );
    assert!(
        elapsed >= Duration::from_millis(1900),
        "came back after the 2 s asked: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "not after the queue's visibility timeout: {elapsed:?}"
    );
    assert_eq!(upstream.received_requests().await.unwrap().len(), 2);
    h.runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_long_retry_after_ends_the_task_at_its_deadline() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(rate_limited("3600"))
        .mount(&upstream)
        .await;
    let h = harness(&upstream, Settings::default()).await;

    let started = Instant::now();
    let record = run(
        &h,
        json!({"task_type": "text", "content": "I love it", "timeout_ms": 3000}),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(record.task.status, TaskStatus::Failed);
    assert_eq!(record.task.error.as_ref().unwrap().code, "timeout");
    assert!(
        elapsed < Duration::from_secs(8),
        "the wait was cut to the task's 3 s deadline (plus SQS's whole seconds), not an hour: {elapsed:?}"
    );
    assert_eq!(
        upstream.received_requests().await.unwrap().len(),
        1,
        "no second request while the provider's wait was pending"
    );
    h.runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_agents_response_cap_fails_once_as_response_too_large() {
    let upstream = MockServer::start().await;
    let huge = "A".repeat(64 * 1024);
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": huge}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 13, "completion_tokens": 7, "total_tokens": 20}
        })))
        .mount(&upstream)
        .await;
    let h = harness(&upstream, Settings::default()).await;
    let mut spec = h
        .svc
        .registry
        .get(&acme(), &AgentId::parse("upstream").unwrap())
        .await
        .unwrap()
        .unwrap()
        .spec;
    spec.constraints.max_response_bytes = Some(16 * 1024);
    h.svc
        .registry
        .put(
            &acme(),
            &AgentId::parse("upstream").unwrap(),
            spec,
            Expect::Any,
            None,
        )
        .await
        .unwrap();

    let record = run_task(&h).await;
    assert_eq!(record.task.status, TaskStatus::Failed);
    let call = &record.calls[0];
    let error = call.error.as_ref().unwrap();
    assert_eq!(
        error.class,
        maof::domain::ErrorClass::ResponseTooLarge,
        "{error:?}"
    );
    assert_eq!(
        upstream.received_requests().await.unwrap().len(),
        1,
        "not retried: the answer would be as large again"
    );
    h.runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_used_after_a_401() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("authorization", "Bearer sk-new"))
        .respond_with(completion())
        .mount(&upstream)
        .await;
    Mock::given(method("POST")).and(header("authorization", "Bearer sk-old"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}})))
        .mount(&upstream).await;
    let h = harness(&upstream, Settings::default()).await;
    // Warm the key cache with the old key, then rotate it in the secret source.
    h.svc.secrets.get(SECRET).await.unwrap();
    h.secrets.put(SECRET, bound("sk-new"));

    let record = run_task(&h).await;
    assert_eq!(
        record.task.status,
        TaskStatus::Completed,
        "{:?}",
        record.task.error
    );
    let keys: Vec<String> = upstream
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            r.headers
                .get("authorization")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        keys,
        ["Bearer sk-old", "Bearer sk-new"],
        "one 401, then the rotated key"
    );
    assert_eq!(
        record.calls[0].attempts, 1,
        "a key refresh is not a failed attempt"
    );
    h.runner.shutdown().await;
}

#[test]
fn cost_sums_are_exact_for_a_thousand_calls_of_odd_token_counts() {
    let request: TaskRequest = serde_json::from_value(json!({"task_type": "text", "content": "x",
        "aggregation": {"strategy": "all"}, "routing": {"fanout": 1}}))
    .unwrap();
    let mut task = Task::new(
        TenantId::parse("t").unwrap(),
        request.parse().unwrap().0,
        None,
        "u",
        Utc::now(),
    );
    let agent: AgentSpec = serde_json::from_value(json!({"name": "a", "provider": "mock", "model": "m",
        "capabilities": ["text"], "pricing": {"input_per_mtok": 0.15, "output_per_mtok": 0.60, "cached_input_per_mtok": 0.075}})).unwrap();
    let agent = maof::domain::Agent {
        id: AgentId::parse("a").unwrap(),
        owner: Owner::Platform,
        spec: agent,
        version: 1,
    };
    let mut calls = Vec::new();
    for i in 0..1000u64 {
        let usage = Usage {
            input_tokens: 2 * i + 1,
            output_tokens: 3 * i + 7,
            cached_input_tokens: i % 3,
            ..Usage::default()
        };
        let call_id = CallId::new();
        task.plan.push(PlannedCall {
            call_id,
            agent_id: agent.id.clone(),
            hold: None,
            fallbacks: Vec::new(),
            probe: false,
        });
        calls.push(CallResult {
            call_id,
            agent_id: agent.id.clone(),
            provider: Some(Provider::Mock),
            status: CallStatus::Succeeded,
            output: Some("x".into()),
            output_ref: None,
            cost_usd: agent.cost(&usage),
            usage,
            latency_ms: 1,
            attempts: 1,
            error: None,
            retried_errors: Vec::new(),
            finished_at: Utc::now(),
            truncated: false,
            quality: None,
            fell_back_from: Vec::new(),
            settles: None,
        });
    }
    let (_, patch) = combine(&task, &calls);
    // Σ(2i+1) = 1,000,000 input tokens, Σ(i%3) = 999 of them cached, Σ(3i+7) = 1,505,500 output.
    let expected = rust_decimal::Decimal::new(15, 2) * rust_decimal::Decimal::from(1_000_000 - 999)
        / rust_decimal::Decimal::from(1_000_000)
        + rust_decimal::Decimal::new(75, 3) * rust_decimal::Decimal::from(999)
            / rust_decimal::Decimal::from(1_000_000)
        + rust_decimal::Decimal::new(60, 2) * rust_decimal::Decimal::from(1_505_500)
            / rust_decimal::Decimal::from(1_000_000);
    assert_eq!(patch.cost_usd, Some(Usd::new(expected)));
    assert_eq!(patch.cost_usd, Some(Usd::parse("1.053225075").unwrap()));
    let usage = patch.usage.unwrap();
    assert_eq!(
        (
            usage.input_tokens,
            usage.output_tokens,
            usage.cached_input_tokens
        ),
        (1_000_000, 1_505_500, 999)
    );
}

#[tokio::test]
async fn a_redelivered_call_stored_after_its_task_ended_is_added_to_its_cost() {
    use maof::domain::{Envelope, MessageKind, TaskPatch};
    let (svc, _) = maof::setup::memory_services(
        maof::setup::outbound(maof::providers::OutboundPolicy::strict()).unwrap(),
    )
    .unwrap();
    let request: TaskRequest =
        serde_json::from_value(json!({"task_type": "text", "content": "x"})).unwrap();
    let (spec, _) = request.parse().unwrap();
    let tenant = TenantId::parse("acme").unwrap();
    let task = Task::new(tenant.clone(), spec, None, "u", Utc::now());
    svc.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let call_id = CallId::new();
    let agent_id = AgentId::parse("a").unwrap();
    let plan = TaskPatch {
        plan: Some(vec![PlannedCall {
            call_id,
            agent_id: agent_id.clone(),
            hold: None,
            fallbacks: Vec::new(),
            probe: false,
        }]),
        expected_calls: Some(1),
        ..TaskPatch::default()
    };
    for (to, patch) in [
        (TaskStatus::Routing, TaskPatch::default()),
        (TaskStatus::Running, plan),
        // Cancelled while the call ran: nothing counted yet.
        (TaskStatus::Cancelled, TaskPatch::default()),
    ] {
        svc.tasks
            .transition(&task, to, patch, Utc::now())
            .await
            .unwrap();
    }
    // The call's delivery stored its result, then stopped.
    let usage = Usage {
        input_tokens: 10,
        output_tokens: 20,
        ..Usage::default()
    };
    let result = CallResult {
        call_id,
        agent_id: agent_id.clone(),
        provider: Some(Provider::Mock),
        status: CallStatus::Succeeded,
        output: Some("late".into()),
        output_ref: None,
        usage,
        cost_usd: Some(Usd::parse("0.001").unwrap()),
        latency_ms: 1,
        attempts: 1,
        error: None,
        retried_errors: Vec::new(),
        finished_at: Utc::now(),
        truncated: false,
        quality: None,
        fell_back_from: Vec::new(),
        settles: None,
    };
    svc.tasks
        .put_call(&tenant, task.task_id, &result, &[])
        .await
        .unwrap();
    // Its redelivery adds what it cost, once however often it comes.
    let mut envelope = Envelope::new(MessageKind::AgentCall, tenant.clone(), task.task_id);
    envelope.call_id = Some(call_id);
    envelope.agent_id = Some(agent_id);
    for _ in 0..2 {
        maof::stages::agent_call::handle(&svc, &envelope, None)
            .await
            .unwrap();
    }
    let ended = svc.tasks.get(&tenant, task.task_id).await.unwrap().unwrap();
    assert_eq!(ended.status, TaskStatus::Cancelled);
    assert_eq!(ended.usage, usage);
    assert_eq!(ended.cost_usd, Some(Usd::parse("0.001").unwrap()));
}

/// A key goes only to the hosts its binding names: an agent pointed
/// elsewhere (here `localhost`, where the key is bound to `127.0.0.1`: the
/// same server, so that a leak would be seen) fails with `auth`, and the
/// server never receives the key.
#[tokio::test]
async fn a_key_is_sent_only_to_a_host_its_binding_names() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(completion())
        .mount(&upstream)
        .await;
    let h = harness(&upstream, Settings::default()).await;
    let port = upstream.address().port();
    for (id, secret) in [
        ("elsewhere", SECRET),
        // Another tenant's key, written past the API's check.
        ("borrowed", "maof/tenants/globex/upstream"),
    ] {
        let spec: AgentSpec = serde_json::from_value(json!({
            "name": id, "provider": "openai_compatible",
            "base_url": format!("http://localhost:{port}/v1"),
            "model": "m", "secret": secret, "capabilities": ["text"]
        }))
        .unwrap();
        h.svc
            .registry
            .put(
                &acme(),
                &AgentId::parse(id).unwrap(),
                spec,
                Expect::Absent,
                None,
            )
            .await
            .unwrap();
    }
    h.secrets.put(
        "maof/tenants/globex/upstream",
        json!({"key": "sk-globex", "provider": "openai_compatible", "hosts": ["localhost"]})
            .to_string(),
    );
    for (id, why) in [
        ("elsewhere", "not bound to host localhost"),
        ("borrowed", "maof/tenants/acme/"),
    ] {
        let record = run(
            &h,
            // Without fallback: the refused agent's own failure is the point.
            json!({"task_type": "text", "content": "hi",
                "routing": {"agents": [id], "fallback": false}}),
        )
        .await;
        assert_eq!(record.task.status, TaskStatus::Failed, "{id}");
        let error = record.calls[0].error.as_ref().unwrap();
        assert_eq!(
            error.class,
            maof::domain::ErrorClass::Auth,
            "{id}: {error:?}"
        );
        assert!(error.message.contains(why), "{id}: {}", error.message);
        assert!(!error.message.contains("sk-"), "{}", error.message);
    }
    assert_eq!(
        upstream.received_requests().await.unwrap().len(),
        0,
        "no request, so no key, reached the server"
    );
    // The agent the key is bound for reaches it.
    let record = run_task(&h).await;
    assert_eq!(record.task.status, TaskStatus::Completed);
    assert_eq!(upstream.received_requests().await.unwrap().len(), 1);
}
