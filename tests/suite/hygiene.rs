//! Secret hygiene: a provider key and a bearer token, each a unique canary,
//! go through a whole run (an agent that answers, and one whose provider
//! echoes the key in its error), on both backends. Then the logs (captured
//! at trace level), every stored item (each DynamoDB table scanned on
//! moto), the API's answers and the announced events are searched: the
//! canaries appear 0 times.

use std::sync::{Arc, Mutex};

use maof::domain::Role;
use maof_tests::backends::Backend;
use maof_tests::pipeline::{Faults, Pipeline};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The logs written while the returned guard lives, on this thread (the
/// test's runtime is single-threaded, so every task of the run logs here).
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink(buffer.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    (buffer, tracing::subscriber::set_default(subscriber))
}

fn completion() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"},
            "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    }))
}

/// Every item of every table, as text.
async fn stored_items(tables: &[String]) -> String {
    if tables.is_empty() {
        return String::new();
    }
    let config = maof_tests::moto::sdk_config().await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let mut all = String::new();
    for table in tables {
        let mut start = None;
        loop {
            let out = client
                .scan()
                .table_name(table)
                .set_exclusive_start_key(start)
                .send()
                .await
                .unwrap();
            for item in out.items.unwrap_or_default() {
                all.push_str(&format!("{item:?}\n"));
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
    }
    all
}

async fn no_key_or_token_is_logged_stored_or_announced(b: Backend) {
    let (logs, _guard) = capture_logs();
    let key = format!("sk-canary-{}", ulid::Ulid::new());
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", format!("Bearer {key}").as_str()))
        .respond_with(completion())
        .mount(&server)
        .await;
    // A provider that echoes the key it was sent, as some do in errors.
    Mock::given(method("POST"))
        .and(path("/echo/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": {
            "message": format!("Incorrect API key provided: {key}"),
            "type": "invalid_request_error", "code": "invalid_api_key"}})))
        .mount(&server)
        .await;
    let secret = "maof/tenants/acme/canary";
    b.secret_admin
        .put_secret(
            secret,
            &json!({"key": key, "provider": "openai_compatible", "hosts": ["127.0.0.1"]})
                .to_string(),
        )
        .await;
    let (name, tables) = (b.name, b.tables.clone());
    let p = Pipeline::start(
        b,
        Faults {
            loopback_agents: true,
            ..Faults::default()
        },
    )
    .await;
    let token = p.token("acme", &[Role::Admin]);
    for (id, root) in [("canary", "/v1"), ("echoing", "/echo/v1")] {
        let reply = p
            .http
            .put(format!("{}/v1/agents/{id}", p.base))
            .bearer_auth(&token)
            .json(&json!({"name": id, "provider": "openai_compatible",
                "base_url": format!("{}{root}", server.uri()), "model": "m",
                "secret": secret, "capabilities": ["text"],
                "constraints": {"max_attempts": 1},
                "pricing": {"input_per_mtok": 1, "output_per_mtok": 2}}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 201, "{name}");
    }
    let mut answers = String::new();
    for (id, status) in [("canary", "completed"), ("echoing", "failed")] {
        let task: Value = p
            .http
            .post(format!("{}/v1/tasks?wait=20", p.base))
            .bearer_auth(&token)
            .json(&json!({"task_type": "text", "content": "hello",
                "routing": {"agents": [id]}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(task["status"], status, "{name}: {task}");
        answers.push_str(&task.to_string());
        let listed = p
            .http
            .get(format!("{}/v1/tasks", p.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        answers.push_str(&listed);
    }
    // The key did reach the provider: the run was real.
    assert!(!server.received_requests().await.unwrap().is_empty());
    let events = format!("{:?}", p.events.published());
    let stored = stored_items(&tables).await;
    p.stop().await;
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.contains("agent-call"),
        "{name}: the logs were captured"
    );
    // The echoing provider's error was logged, with the key taken out.
    assert!(
        logs.contains("Incorrect API key provided: [redacted]"),
        "{name}"
    );
    for (what, text) in [
        ("logs", &logs),
        ("stored items", &stored),
        ("API answers", &answers),
        ("events", &events),
    ] {
        assert_eq!(
            text.matches(&key).count(),
            0,
            "{name}: the key in the {what}"
        );
        assert_eq!(
            text.matches(&token).count(),
            0,
            "{name}: the bearer token in the {what}"
        );
    }
    if name == "aws" {
        assert!(stored.contains("canary"), "the tables were read");
    }
}

mod memory {
    #[tokio::test]
    async fn no_key_or_token_is_logged_stored_or_announced() {
        super::no_key_or_token_is_logged_stored_or_announced(maof_tests::backends::memory()).await;
    }
}

mod aws {
    #[tokio::test]
    async fn no_key_or_token_is_logged_stored_or_announced() {
        super::no_key_or_token_is_logged_stored_or_announced(maof_tests::backends::aws().await)
            .await;
    }
}
