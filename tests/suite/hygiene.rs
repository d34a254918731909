//! Secret hygiene: a provider key and a bearer token, each a unique canary,
//! go through a whole run (an agent that answers, and one whose provider
//! echoes the key in its error), on both backends. Then the logs (captured
//! at trace level), every stored item (each DynamoDB table scanned on
//! moto), the API's answers and the announced events are searched: the
//! canaries appear 0 times. The audit logs, read through the API, are among
//! the answers searched.

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

/// The tenant's audit log that `token` may read, and the platform's, as the
/// API answers them.
async fn audit_logs(p: &Pipeline, token: &str) -> String {
    let platform = p.token("ops", &[Role::PlatformAdmin]);
    let mut read = String::new();
    for (path, token) in [
        ("/v1/audit", token),
        ("/v1/platform/audit", platform.as_str()),
    ] {
        let reply = p
            .http
            .get(format!("{}{path}?limit=100", p.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200, "{path}");
        read.push_str(&reply.text().await.unwrap());
    }
    read
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
            // Without fallback: the echoing agent's own failure is the point.
            .json(&json!({"task_type": "text", "content": "hello",
                "routing": {"agents": [id], "fallback": false}}))
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
    // A refused token (tampered) is audited, never kept.
    let refused = p
        .http
        .get(format!("{}/v1/tasks", p.base))
        .bearer_auth(format!("{token}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "{name}");
    let logs_read = audit_logs(&p, &token).await;
    assert!(logs_read.contains("agent.created"), "{name}: {logs_read}");
    assert!(logs_read.contains("token_signature"), "{name}: {logs_read}");
    answers.push_str(&logs_read);
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

/// Content filters: PII redacted before the provider sees it (input) and
/// before an answer is stored (output); a block rule fails the task naming
/// the rule. The originals (canaries) appear 0 times in the provider's
/// requests, the logs at trace level, the stored items, the API's answers
/// and the events.
async fn filtered_text_is_never_sent_logged_stored_or_announced(b: Backend) {
    let (logs, _guard) = capture_logs();
    let canary = ulid::Ulid::new().to_string().to_lowercase();
    let email = format!("c{canary}@example.com");
    let secret = format!("password = hunter-{canary}");
    // The output-only tenant's own: its requests are kept as sent.
    let sent = ulid::Ulid::new().to_string().to_lowercase();
    let sent_email = format!("s{sent}@example.com");
    let (name, tables) = (b.name, b.tables.clone());
    let p = Pipeline::start(b, Faults::default()).await;
    let redact = json!({"pii": {"mode": "redact", "kinds": ["email", "card"]},
        "block": [{"name": "no-secrets", "pattern": "(?i)password\\s*="}]});
    // Input and output filtered.
    p.put_settings("acme", false, json!({ "filters": redact.clone() }))
        .await;
    // Output only: the provider sees the text, the answer is filtered.
    let mut output_only = redact;
    output_only["apply_to"] = json!(["output"]);
    p.put_settings("globex", false, json!({ "filters": output_only }))
        .await;
    let mut answers = String::new();
    let submit = |tenant: &str, content: String| {
        let (http, base) = (p.http.clone(), p.base.clone());
        let token = p.token(tenant, &[Role::Submitter, Role::Viewer]);
        async move {
            let reply = http
                .post(format!("{base}/v1/tasks?wait=20"))
                .bearer_auth(&token)
                .json(&json!({"task_type": "echo", "content": content}))
                .send()
                .await
                .unwrap();
            (
                reply.status().as_u16(),
                reply.json::<Value>().await.unwrap(),
            )
        }
    };
    // Redacted on the way in: the provider never sees the address or the card.
    let pii = format!("write to {email}, card 4111 1111 1111 1111");
    let (status, task) = submit("acme", pii.clone()).await;
    assert_eq!(status, 200, "{name}: {task}");
    assert_eq!(task["status"], "completed", "{name}: {task}");
    assert_eq!(
        task["result"]["output"], "write to [EMAIL], card [CARD]",
        "{name}: {task}"
    );
    assert_eq!(p.provider.count("mock-echo", &pii), 0, "{name}");
    assert_eq!(
        p.provider
            .count("mock-echo", "write to [EMAIL], card [CARD]"),
        1,
        "{name}"
    );
    answers.push_str(&task.to_string());
    // Blocked on the way in: refused, naming the rule, nothing sent or kept.
    let (status, problem) = submit("acme", format!("my {secret}")).await;
    assert_eq!(status, 422, "{name}: {problem}");
    assert_eq!(problem["code"], "content_blocked", "{name}: {problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("no-secrets"),
        "{name}: {problem}"
    );
    answers.push_str(&problem.to_string());
    // Output only: the provider is sent the text; the answer is redacted,
    // or blocked (the task fails content_blocked, naming the rule).
    let sent_pii = format!("write to {sent_email}, card 4111 1111 1111 1111");
    let (_, task) = submit("globex", sent_pii.clone()).await;
    assert_eq!(p.provider.count("mock-echo", &sent_pii), 1, "{name}");
    assert_eq!(
        task["result"]["output"], "write to [EMAIL], card [CARD]",
        "{name}: {task}"
    );
    answers.push_str(&task.to_string());
    let (_, task) = submit("globex", format!("my password = hunter-{sent}")).await;
    assert_eq!(task["status"], "failed", "{name}: {task}");
    assert_eq!(task["error"]["code"], "content_blocked", "{name}: {task}");
    assert!(
        task["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-secrets"),
        "{name}: {task}"
    );
    answers.push_str(&task.to_string());
    for tenant in ["acme", "globex"] {
        let listed = p
            .http
            .get(format!("{}/v1/tasks", p.base))
            .bearer_auth(p.token(tenant, &[Role::Viewer]))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        answers.push_str(&listed);
    }
    // The blocks are audited by rule, without the text.
    for tenant in ["acme", "globex"] {
        let logs_read = audit_logs(&p, &p.token(tenant, &[Role::Admin])).await;
        assert!(logs_read.contains("no-secrets"), "{name}: {logs_read}");
        // acme's input was refused; globex's answer withheld.
        let field = if tenant == "acme" {
            "content"
        } else {
            "output"
        };
        assert!(
            logs_read.contains(&format!(r#""field":"{field}""#)),
            "{name}: {logs_read}"
        );
        answers.push_str(&logs_read);
    }
    let events = format!("{:?}", p.events.published());
    let stored = stored_items(&tables).await;
    p.stop().await;
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.contains("agent-call"),
        "{name}: the logs were captured"
    );
    // An input-filtered original is nowhere. An output-only tenant's is in
    // its requests, as sent (the REQ items, and the SDK's trace of them),
    // and in no answer, call result, other log line or event.
    let but_requests = |text: &str| -> String {
        text.lines()
            .filter(|line| !line.contains("REQ"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (what, text) in [
        ("logs", &logs),
        ("stored items", &stored),
        ("API answers", &answers),
        ("events", &events),
    ] {
        for (original, text) in [(&canary, text.clone()), (&sent, but_requests(text))] {
            let before = text.find(original.as_str()).map(|at| {
                let from = text[..at]
                    .char_indices()
                    .rev()
                    .nth(300)
                    .map_or(0, |(i, _)| i);
                text[from..at].to_owned()
            });
            assert_eq!(
                text.matches(original.as_str()).count(),
                0,
                "{name}: an original in the {what}, after: {before:?}"
            );
        }
    }
    assert!(
        !answers.contains("4111 1111 1111 1111"),
        "{name}: the card in the API answers"
    );
    if name == "aws" {
        assert!(stored.contains("[EMAIL]"), "the tables were read");
    }
}

mod memory {
    #[tokio::test]
    async fn no_key_or_token_is_logged_stored_or_announced() {
        super::no_key_or_token_is_logged_stored_or_announced(maof_tests::backends::memory()).await;
    }

    #[tokio::test]
    async fn filtered_text_is_never_sent_logged_stored_or_announced() {
        super::filtered_text_is_never_sent_logged_stored_or_announced(
            maof_tests::backends::memory(),
        )
        .await;
    }
}

mod aws {
    #[tokio::test]
    async fn no_key_or_token_is_logged_stored_or_announced() {
        super::no_key_or_token_is_logged_stored_or_announced(maof_tests::backends::aws().await)
            .await;
    }

    #[tokio::test]
    async fn filtered_text_is_never_sent_logged_stored_or_announced() {
        super::filtered_text_is_never_sent_logged_stored_or_announced(
            maof_tests::backends::aws().await,
        )
        .await;
    }
}
