//! The client against a local server speaking OpenAI's wire format, errors included.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::domain::{AgentId, AgentSpec};

const KEY: &str = "sk-test-0123456789abcdef";

fn agent_with(base_url: Option<String>, constraints: Value) -> Agent {
    let spec: AgentSpec = serde_json::from_value(json!({
        "name": "Compatible", "provider": "openai_compatible", "model": "gpt-4o-mini",
        "base_url": base_url, "secret": "maof/openai", "capabilities": ["text"],
        "constraints": constraints,
    }))
    .unwrap();
    Agent {
        id: AgentId::parse("compat").unwrap(),
        owner: crate::domain::Owner::Platform,
        spec,
        version: 1,
    }
}

/// An agent whose API root is the mock server's `/v1`.
fn agent(server: &MockServer) -> Agent {
    agent_with(Some(format!("{}/v1", server.uri())), json!({}))
}

fn request() -> ChatRequest {
    crate::providers::test_support::chat_request()
}

fn key() -> SecretString {
    SecretString::from(KEY)
}

fn client() -> OpenAiCompatible {
    OpenAiCompatible::new(crate::providers::test_support::local_client())
}

fn success_body() -> Value {
    json!({
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1_741_569_952,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "positive", "refusal": null},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0}
        },
        "system_fingerprint": "fp_0ba0d124f1"
    })
}

/// Mounts one answer for any chat completion and calls it with a key.
async fn answer_with(response: ResponseTemplate) -> Result<ChatResponse, ProviderError> {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(response)
        .expect(1)
        .mount(&server)
        .await;
    client()
        .complete(&agent(&server), Some(&key()), &request())
        .await
}

fn openai_error(status: u16, message: &str, kind: &str, code: Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "error": {"message": message, "type": kind, "param": null, "code": code}
    }))
}

#[tokio::test]
async fn sends_the_chat_completions_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("content-type", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(success_body()))
        .expect(1)
        .mount(&server)
        .await;

    client()
        .complete(&agent(&server), Some(&key()), &request())
        .await
        .unwrap();

    let received = server.received_requests().await.unwrap();
    let body: Value = received[0].body_json().unwrap();
    // Exact equality: the system message comes first and nothing else is sent.
    assert_eq!(
        body,
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Sentiment of: great!"}
            ],
            "max_tokens": 64,
            "temperature": 0.25,
            "stop": ["END"]
        })
    );
}

#[tokio::test]
async fn omits_absent_fields_and_tolerates_a_trailing_slash() {
    let server = MockServer::start().await;
    let expected = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Sentiment of: great!"}]
    });
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_json(&expected))
        .respond_with(ResponseTemplate::new(200).set_body_json(success_body()))
        .expect(1)
        .mount(&server)
        .await;
    let mut bare = request();
    bare.system = None;
    bare.messages.drain(..2);
    bare.max_tokens = None;
    bare.temperature = None;
    bare.stop.clear();
    let agent = agent_with(Some(format!("{}/v1/", server.uri())), json!({}));

    client().complete(&agent, None, &bare).await.unwrap();

    let received = server.received_requests().await.unwrap();
    assert_eq!(received[0].body_json::<Value>().unwrap(), expected);
    // No key, no Authorization header.
    assert!(received[0].headers.get("authorization").is_none());
}

#[tokio::test]
async fn max_tokens_falls_back_to_the_agent_limit() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(success_body()))
        .mount(&server)
        .await;
    let agent = agent_with(
        Some(format!("{}/v1", server.uri())),
        json!({"max_tokens": 512}),
    );
    let mut req = request();
    req.max_tokens = None;

    client().complete(&agent, None, &req).await.unwrap();

    let body: Value = server.received_requests().await.unwrap()[0]
        .body_json()
        .unwrap();
    assert_eq!(body["max_tokens"], json!(512));
}

#[test]
fn default_root_is_openai() {
    assert_eq!(endpoint(None), "https://api.openai.com/v1/chat/completions");
    assert_eq!(
        endpoint(Some("http://localhost:11434/v1/")),
        "http://localhost:11434/v1/chat/completions"
    );
}

#[tokio::test]
async fn parses_a_success_with_cached_tokens_and_request_id() {
    let response = answer_with(
        ResponseTemplate::new(200)
            .insert_header("x-request-id", "req_7f3a")
            .set_body_json(success_body()),
    )
    .await
    .unwrap();
    assert_eq!(
        response,
        ChatResponse {
            output: "positive".into(),
            finish_reason: Some("stop".into()),
            usage: Usage {
                input_tokens: 2006,
                output_tokens: 300,
                cached_input_tokens: 1920,
                ..Usage::default()
            },
            request_id: Some("req_7f3a".into()),
        }
    );
}

#[tokio::test]
async fn null_content_is_empty_and_body_id_is_the_fallback_request_id() {
    let response = answer_with(ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-xyz",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null},
                     "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 0}
    })))
    .await
    .unwrap();
    assert_eq!(response.output, "");
    assert_eq!(response.finish_reason.as_deref(), Some("length"));
    assert_eq!(response.request_id.as_deref(), Some("chatcmpl-xyz"));
    assert_eq!(
        response.usage,
        Usage {
            input_tokens: 5,
            output_tokens: 0,
            ..Usage::default()
        }
    );
}

#[tokio::test]
async fn context_length_exceeded() {
    let message = "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens. Please reduce the length of the messages.";
    let err = answer_with(openai_error(
        400,
        message,
        "invalid_request_error",
        json!("context_length_exceeded"),
    ))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::ContextLengthExceeded);
    assert_eq!(err.status, Some(400));
    assert!(!err.class.is_retryable());
    assert!(err.message.contains("maximum context length is 128000"));
}

#[tokio::test]
async fn content_filter_and_plain_bad_request() {
    let err = answer_with(openai_error(
        400,
        "The response was filtered due to the prompt triggering content management policy.",
        "invalid_request_error",
        json!("content_filter"),
    ))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::ContentFiltered);

    let err = answer_with(openai_error(
        400,
        "Invalid value for 'temperature': must be between 0 and 2.",
        "invalid_request_error",
        Value::Null,
    ))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::BadRequest);
    assert_eq!((err.status, err.retry_after), (Some(400), None));
    assert_eq!(
        err.message,
        "provider rejected the request: Invalid value for 'temperature': must be between 0 and 2."
    );
}

#[tokio::test]
async fn unauthorized_never_echoes_the_key() {
    let echoed = format!(
        "Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com/account/api-keys."
    );
    let err = answer_with(openai_error(
        401,
        &echoed,
        "invalid_request_error",
        json!("invalid_api_key"),
    ))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::Auth);
    assert_eq!(err.status, Some(401));
    assert_eq!(err.message, "provider rejected the API key");
    assert!(!err.to_string().contains(KEY));
    // And the operator log gets the body with the key blanked.
    let logged = loggable_body(echoed.as_bytes(), Some(&key()));
    assert!(!logged.contains(KEY));
    assert!(logged.contains("[redacted]"));
}

#[tokio::test]
async fn forbidden_is_auth() {
    let err = answer_with(ResponseTemplate::new(403).set_body_json(json!({
        "error": {"message": "Country, region, or territory not supported", "type": "request_forbidden",
                  "param": null, "code": "unsupported_country_region_territory"}
    })))
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Auth, Some(403)));
}

#[tokio::test]
async fn not_found() {
    let err = answer_with(openai_error(
        404,
        "The model `gpt-9` does not exist or you do not have access to it.",
        "invalid_request_error",
        json!("model_not_found"),
    ))
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::NotFound, Some(404)));
    assert!(!err.class.is_retryable());
}

#[tokio::test]
async fn rate_limited_with_retry_after_seconds() {
    let err = answer_with(
        openai_error(
            429,
            "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3, Requested 1.",
            "requests",
            json!("rate_limit_exceeded"),
        )
        .insert_header("retry-after", "2"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::RateLimited);
    assert_eq!(err.status, Some(429));
    assert_eq!(err.retry_after, Some(Duration::from_secs(2)));
    assert!(err.class.is_retryable());
}

#[tokio::test]
async fn retry_after_ms_wins_over_retry_after() {
    let err = answer_with(
        openai_error(429, "slow down", "requests", json!("rate_limit_exceeded"))
            .insert_header("retry-after-ms", "1500")
            .insert_header("retry-after", "2"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::RateLimited);
    assert_eq!(err.retry_after, Some(Duration::from_millis(1500)));
}

#[tokio::test]
async fn rate_limited_with_openai_reset_headers_takes_the_longer() {
    let err = answer_with(
        openai_error(429, "slow down", "tokens", json!("rate_limit_exceeded"))
            .insert_header("x-ratelimit-reset-requests", "1.5s")
            .insert_header("x-ratelimit-reset-tokens", "6m0s"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.retry_after, Some(Duration::from_secs(360)));
}

#[tokio::test]
async fn insufficient_quota_is_not_retryable() {
    let err = answer_with(openai_error(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        json!("insufficient_quota"),
    ))
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Auth, Some(429)));
    assert_eq!(err.message, "quota exhausted");
    assert!(!err.class.is_retryable());
}

#[tokio::test]
async fn server_error() {
    let err = answer_with(openai_error(
        500,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        Value::Null,
    ))
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Server, Some(500)));
    assert!(err.class.is_retryable());
    assert_eq!(err.message, "provider server error (HTTP 500)");
}

#[tokio::test]
async fn service_unavailable_overloaded_or_not() {
    let err = answer_with(
        openai_error(
            503,
            "The engine is currently overloaded, please try again later.",
            "server_error",
            Value::Null,
        )
        .insert_header("retry-after", "1"),
    )
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Overloaded, Some(503)));
    assert_eq!(err.retry_after, Some(Duration::from_secs(1)));

    let err = answer_with(ResponseTemplate::new(503).set_body_string("upstream connect error"))
        .await
        .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Server, Some(503)));
}

#[tokio::test]
async fn status_529_is_overloaded() {
    let err = answer_with(ResponseTemplate::new(529).set_body_json(json!({
        "type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}
    })))
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Overloaded, Some(529)));
    assert!(err.class.is_retryable());
}

#[tokio::test]
async fn malformed_success_body() {
    for body in [
        ResponseTemplate::new(200).set_body_string("<html>gateway</html>"),
        ResponseTemplate::new(200).set_body_json(json!({"choices": []})),
        ResponseTemplate::new(200).set_body_json(json!({"choices": [{"text": "legacy"}]})),
    ] {
        let err = answer_with(body).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Server);
        assert_eq!(err.message, "malformed response from provider");
    }
}

#[tokio::test]
async fn slower_than_the_agent_timeout_is_a_timeout() {
    crate::providers::test_support::assert_slow_answer_is_a_timeout(
        &client(),
        "/v1/chat/completions",
        success_body(),
        |s| agent_with(Some(format!("{}/v1", s.uri())), json!({"timeout_ms": 200})),
        Some(&key()),
        &request(),
    )
    .await;
}

#[tokio::test]
async fn connection_refused_is_a_network_error() {
    crate::providers::test_support::assert_unreachable_is_a_network_error(
        &client(),
        &agent_with(
            Some(format!(
                "{}/v1",
                crate::providers::test_support::dead_address()
            )),
            json!({}),
        ),
        Some(&key()),
        &request(),
    )
    .await;
}

#[test]
fn reset_durations_parse_like_openai_writes_them() {
    let parse = parse_reset_duration;
    assert_eq!(parse("1s"), Some(Duration::from_secs(1)));
    assert_eq!(parse("6m0s"), Some(Duration::from_secs(360)));
    assert_eq!(parse("20ms"), Some(Duration::from_millis(20)));
    assert_eq!(parse("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse("1h2m3s"), Some(Duration::from_secs(3723)));
    assert_eq!(parse(""), None);
    assert_eq!(parse("soon"), None);
    assert_eq!(parse("5d"), None);
}

#[test]
fn retry_after_values() {
    assert_eq!(parse_millis("1500"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_millis("12.5"), Some(Duration::from_micros(12_500)));
    assert_eq!(parse_millis("-1"), None);
    assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
    assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
    assert_eq!(parse_retry_after("1e400"), None);
    assert_eq!(parse_retry_after("NaN"), None);
    // An HTTP-date: the wait until then.
    let at = (Utc::now() + chrono::Duration::seconds(120))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let wait = parse_retry_after(&at).unwrap();
    assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120));
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
        Some(Duration::ZERO)
    );
}

#[test]
fn error_bodies_of_compatible_servers() {
    // vLLM: flat, with a numeric code and OpenAI's message but no string code.
    let vllm = ErrorDetail::parse(
        br#"{"object":"error","message":"This model's maximum context length is 4096 tokens.","type":"BadRequestError","param":null,"code":400}"#,
    );
    assert_eq!(vllm.code.as_deref(), Some("400"));
    assert_eq!(
        classify(StatusCode::BAD_REQUEST, &vllm).0,
        ErrorClass::ContextLengthExceeded
    );
    // Ollama: the error is a plain string.
    let ollama = ErrorDetail::parse(br#"{"error":"model \"llama9\" not found"}"#);
    assert_eq!(
        ollama.message.as_deref(),
        Some("model \"llama9\" not found")
    );
    // FastAPI validation errors and non-JSON bodies still classify by status.
    let unprocessable = ErrorDetail::parse(br#"{"detail":"bad field"}"#);
    assert_eq!(
        classify(StatusCode::UNPROCESSABLE_ENTITY, &unprocessable),
        (
            ErrorClass::BadRequest,
            "provider rejected the request: bad field".to_owned()
        )
    );
    let html = ErrorDetail::parse(b"<html>502 Bad Gateway</html>");
    assert_eq!(html, ErrorDetail::default());
    assert_eq!(
        classify(StatusCode::BAD_GATEWAY, &html).0,
        ErrorClass::Server
    );
    assert_eq!(
        classify(StatusCode::REQUEST_TIMEOUT, &html).0,
        ErrorClass::Timeout
    );
    assert_eq!(classify(StatusCode::CONFLICT, &html).0, ErrorClass::Server);
    assert_eq!(classify(StatusCode::TOO_EARLY, &html).0, ErrorClass::Server);
}

#[test]
fn long_provider_messages_are_shortened() {
    let detail = ErrorDetail {
        message: Some("é".repeat(1_000)),
        ..ErrorDetail::default()
    };
    let (_, message) = classify(StatusCode::BAD_REQUEST, &detail);
    assert!(
        message.chars().count() <= "provider rejected the request: ".len() + MAX_MESSAGE_CHARS + 1
    );
    assert!(message.ends_with('…'));
}
