//! Fixtures shared by the provider clients' tests.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::domain::{Agent, AgentId, AgentSpec, TaskType};
use crate::ports::{ChatRequest, Message, Role};

/// A client that may reach the tests' local servers (loopback), and nothing
/// else the outbound policy refuses.
pub fn local_client() -> super::OutboundClient {
    super::OutboundClient::new(super::OutboundPolicy::allow_loopback()).unwrap()
}

/// Names the tests resolve without DNS; others go to the system resolver.
pub struct StaticResolver(HashMap<&'static str, Vec<IpAddr>>);

impl StaticResolver {
    pub fn new(entries: &[(&'static str, &str)]) -> Arc<Self> {
        let mut names: HashMap<&'static str, Vec<IpAddr>> = HashMap::new();
        for (name, ip) in entries {
            names.entry(name).or_default().push(ip.parse().unwrap());
        }
        Arc::new(StaticResolver(names))
    }
}

impl Resolve for StaticResolver {
    fn resolve(&self, name: Name) -> Resolving {
        match self.0.get(name.as_str()).cloned() {
            Some(ips) => Box::pin(async move {
                Ok(Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0))) as Addrs)
            }),
            None => super::outbound::SystemResolver.resolve(name),
        }
    }
}

/// The names of the outbound policy's DNS cases.
pub fn test_names() -> Arc<StaticResolver> {
    StaticResolver::new(&[
        ("metadata.test", "169.254.169.254"),
        ("ecs-metadata.test", "169.254.170.2"),
        ("private.test", "10.0.0.5"),
        ("cgnat.test", "100.64.0.1"),
        ("loopback.test", "127.0.0.1"),
        ("second-loopback.test", "127.0.0.2"),
        ("mixed.test", "10.0.0.5"),
        ("mixed.test", "93.184.215.14"),
    ])
}

/// A server on 127.0.0.2, the address no test policy admits: if a request
/// reaches it, a check is missing.
pub async fn forbidden_server() -> wiremock::MockServer {
    let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let server = wiremock::MockServer::builder()
        .listener(listener)
        .start()
        .await;
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_string("secret"))
        .mount(&server)
        .await;
    server
}

pub async fn received(server: &wiremock::MockServer) -> usize {
    server.received_requests().await.unwrap().len()
}

/// The task type of most tests.
pub const TEXT: TaskType = TaskType::from_static("text");

pub const KEY: &str = "sk-test-0123456789abcdef";

pub fn key() -> SecretString {
    SecretString::from(KEY)
}

/// An agent of `provider` for `model`, at `base_url`, with `constraints`.
pub fn agent(provider: &str, model: &str, base_url: Option<String>, constraints: Value) -> Agent {
    let spec: AgentSpec = serde_json::from_value(json!({
        "name": "Test agent", "provider": provider, "model": model,
        "base_url": base_url, "secret": "maof/test", "capabilities": ["text"],
        "constraints": constraints,
    }))
    .unwrap();
    Agent {
        id: AgentId::parse("test-agent").unwrap(),
        owner: crate::domain::Owner::Platform,
        spec,
        version: 1,
    }
}

/// A system prompt, a short dialogue and every optional field set.
pub fn chat_request() -> ChatRequest {
    ChatRequest {
        task_type: TEXT,
        system: Some("You are terse.".into()),
        messages: vec![
            Message {
                role: Role::User,
                content: "Hi".into(),
            },
            Message {
                role: Role::Assistant,
                content: "Hello.".into(),
            },
            Message {
                role: Role::User,
                content: "Sentiment of: great!".into(),
            },
        ],
        max_tokens: Some(64),
        temperature: Some(0.25),
        stop: vec!["END".into()],
    }
}

/// A single user message of `task_type`, nothing else set.
pub fn single_request(task_type: TaskType, content: &str) -> ChatRequest {
    ChatRequest {
        task_type,
        system: None,
        messages: vec![Message {
            role: Role::User,
            content: content.into(),
        }],
        max_tokens: None,
        temperature: None,
        stop: Vec::new(),
    }
}

/// `http://127.0.0.1:{port}` where nothing listens.
pub fn dead_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

/// Every client's timeout case: the provider answers `body` at `at` after
/// 3 s, the agent (built by `agent_at` for the server) allows 200 ms, and the
/// call fails as a timeout well before the answer.
pub async fn assert_slow_answer_is_a_timeout(
    client: &dyn super::ProviderClient,
    at: &str,
    body: Value,
    agent_at: impl FnOnce(&wiremock::MockServer) -> Agent,
    key: Option<&SecretString>,
    request: &ChatRequest,
) {
    use std::time::{Duration, Instant};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(at))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(body)
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let agent = agent_at(&server);
    let started = Instant::now();
    let err = client.complete(&agent, key, request).await.unwrap_err();
    assert_eq!(
        (err.class, err.status),
        (crate::domain::ErrorClass::Timeout, None)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Every client's unreachable case: `agent` points where nothing listens;
/// the call fails as a network error without naming the address.
pub async fn assert_unreachable_is_a_network_error(
    client: &dyn super::ProviderClient,
    agent: &Agent,
    key: Option<&SecretString>,
    request: &ChatRequest,
) {
    let err = client.complete(agent, key, request).await.unwrap_err();
    assert_eq!(
        (err.class, err.status),
        (crate::domain::ErrorClass::Network, None)
    );
    assert!(!err.message.contains("127.0.0.1"), "{}", err.message);
}
