//! A task routed to each provider kind completes through the whole pipeline,
//! each provider answered by a local server in its own wire format.

use std::sync::Arc;
use std::time::Duration;

use maof::adapters::memory::{MemoryQueue, MemoryRegistry, MemorySecrets, MemoryTaskStore};
use maof::domain::{
    AgentId, AgentSpec, Origin, Owner, PlatformAgents, Principal, Role, TaskRequest, TaskStatus,
    TenantDefaults, TenantId,
};
use maof::ports::{CachedSecrets, Expect, SystemClock};
use maof::providers::{Bedrock, OutboundPolicy, Providers, http_client};
use maof::runner::{Runner, RunnerConfig};
use maof::stages::{Services, Settings, intake};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn answer(server: &MockServer, at: &str, auth: (&str, &str), body: Value) {
    Mock::given(method("POST"))
        .and(path(at))
        .and(header(auth.0, auth.1))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(server)
        .await;
}

fn chat_completion(text: &str) -> Value {
    json!({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_can_be_routed_to_each_provider_kind() {
    let server = MockServer::start().await;
    let root = server.uri();
    answer(
        &server,
        "/v1/chat/completions",
        ("authorization", "Bearer sk-openai"),
        chat_completion("from openai"),
    )
    .await;
    answer(
        &server,
        "/compat/v1/chat/completions",
        ("authorization", "Bearer sk-compat"),
        chat_completion("from compatible"),
    )
    .await;
    answer(
        &server,
        "/v1/messages",
        ("x-api-key", "sk-anthropic"),
        json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [{"type": "text", "text": "from anthropic"}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 9, "output_tokens": 3}}),
    )
    .await;
    answer(&server, "/v1beta/models/gemini-test:generateContent", ("x-goog-api-key", "sk-gemini"), json!({
        "candidates": [{"content": {"role": "model", "parts": [{"text": "from gemini"}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 3, "totalTokenCount": 12}})).await;
    answer(
        &server,
        "/models/org/sentiment",
        ("authorization", "Bearer sk-hf"),
        json!([[{"label": "POSITIVE", "score": 0.98}, {"label": "NEGATIVE", "score": 0.02}]]),
    )
    .await;
    Mock::given(method("POST"))
        .and(path("/model/bedrock-test/converse"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "output": {"message": {"role": "assistant", "content": [{"text": "from bedrock"}]}},
            "stopReason": "end_turn", "usage": {"inputTokens": 9, "outputTokens": 3, "totalTokens": 12},
            "metrics": {"latencyMs": 1}})))
        .mount(&server)
        .await;

    let secrets = Arc::new(MemorySecrets::new());
    // Each key bound to its provider and to the local server, which stands
    // in for the provider's own host.
    for (name, provider, key) in [
        ("openai", "openai", "sk-openai"),
        ("compat", "openai_compatible", "sk-compat"),
        ("anthropic", "anthropic", "sk-anthropic"),
        ("gemini", "gemini", "sk-gemini"),
        ("hf", "huggingface", "sk-hf"),
    ] {
        let binding = json!({"key": key, "provider": provider, "hosts": ["127.0.0.1"]});
        secrets.put(format!("maof/{name}"), binding.to_string());
    }
    // Bedrock signs with IAM credentials: static test ones here.
    let aws = aws_config::SdkConfig::builder()
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            aws_sdk_dynamodb::config::Credentials::new("AKID", "secret", None, None, "test"),
        ))
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build();
    let clock = Arc::new(SystemClock);
    let svc = Services::new(
        Arc::new(MemoryTaskStore::new()),
        Arc::new(MemoryRegistry::new()),
        Arc::new(MemoryQueue::new(5)),
        Arc::new(CachedSecrets::new(
            secrets,
            clock.clone(),
            CachedSecrets::DEFAULT_TTL,
        )),
        Arc::new(
            Providers::new(http_client(OutboundPolicy::allow_loopback()).unwrap())
                .with_bedrock(Bedrock::with_config(aws)),
        ),
        clock,
        Settings {
            tenant_defaults: TenantDefaults {
                platform_agents: PlatformAgents::All,
                ..TenantDefaults::default()
            },
            ..Settings::default()
        },
    );
    let agents = [
        (
            "openai",
            json!({"provider": "openai", "base_url": format!("{root}/v1"), "model": "gpt-test", "secret": "maof/openai"}),
            "text",
            "from openai",
        ),
        (
            "compat",
            json!({"provider": "openai_compatible", "base_url": format!("{root}/compat/v1"), "model": "m", "secret": "maof/compat"}),
            "text",
            "from compatible",
        ),
        (
            "anthropic",
            json!({"provider": "anthropic", "base_url": root.clone(), "model": "claude", "secret": "maof/anthropic"}),
            "text",
            "from anthropic",
        ),
        (
            "gemini",
            json!({"provider": "gemini", "base_url": root.clone(), "model": "gemini-test", "secret": "maof/gemini"}),
            "text",
            "from gemini",
        ),
        (
            "hf",
            json!({"provider": "huggingface", "base_url": root.clone(), "model": "org/sentiment", "secret": "maof/hf"}),
            "classification",
            "POSITIVE",
        ),
        (
            "bedrock",
            json!({"provider": "bedrock", "base_url": root.clone(), "model": "bedrock-test"}),
            "text",
            "from bedrock",
        ),
        (
            "mock",
            json!({"provider": "mock", "model": "mock"}),
            "text",
            "[mock]",
        ),
    ];
    for (id, spec, task_type, _) in &agents {
        let mut spec = spec.clone();
        spec["name"] = json!(id);
        spec["capabilities"] = json!([task_type]);
        spec["pricing"] = json!({"input_per_mtok": 1.0, "output_per_mtok": 2.0});
        let spec: AgentSpec = serde_json::from_value(spec).unwrap();
        svc.registry
            .put(
                &Owner::Platform,
                &AgentId::parse(*id).unwrap(),
                spec,
                Expect::Absent,
                None,
            )
            .await
            .unwrap();
    }
    let runner = Runner::spawn(
        svc.clone(),
        RunnerConfig {
            wait: Duration::from_millis(50),
            ..RunnerConfig::default()
        },
    );
    let principal = Principal {
        sub: "u".into(),
        tenant: TenantId::parse("acme").unwrap(),
        roles: vec![Role::Submitter],
    };
    for (id, _, task_type, expected) in &agents {
        let request: TaskRequest = serde_json::from_value(json!({
            "task_type": task_type, "content": "I love it", "routing": {"agents": [id]}
        }))
        .unwrap();
        let task = intake::submit(&svc, &principal, &Origin::default(), request, None)
            .await
            .unwrap()
            .task;
        let done = intake::wait(
            &svc,
            &principal.tenant,
            task.task_id,
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            done.task.status,
            TaskStatus::Completed,
            "{id}: {:?} {:?}",
            done.task.error,
            done.calls
        );
        let output = &done.task.result.as_ref().unwrap().output;
        assert!(output.contains(expected), "{id}: {output}");
        assert_eq!(done.calls[0].agent_id.as_str(), *id);
        if *id != "hf" {
            assert!(done.task.usage.input_tokens > 0, "{id}: usage recorded");
            assert!(done.task.cost_usd.is_some(), "{id}: cost recorded");
        }
    }
    runner.shutdown().await;
}
