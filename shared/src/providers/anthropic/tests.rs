//! The client against a local server speaking Anthropic's wire format, errors included.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::providers::test_support::{
    KEY, TEXT, agent, chat_request, dead_address, key, single_request,
};

const MODEL: &str = "claude-sonnet-4-20250514";

fn agent_at(server: &MockServer, constraints: Value) -> Agent {
    agent("anthropic", MODEL, Some(server.uri()), constraints)
}

fn client() -> Anthropic {
    Anthropic::new(crate::providers::test_support::local_client())
}

fn success_body() -> Value {
    json!({
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [
            {"type": "text", "text": "posi"},
            {"type": "text", "text": "tive"}
        ],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {
            "input_tokens": 50, "output_tokens": 12,
            "cache_creation_input_tokens": 100, "cache_read_input_tokens": 2000
        }
    })
}

fn anthropic_error(status: u16, kind: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "type": "error",
        "error": {"type": kind, "message": message}
    }))
}

/// Mounts one answer for the messages endpoint and calls it with a key.
async fn answer_with(response: ResponseTemplate) -> Result<ChatResponse, ProviderError> {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(response)
        .expect(1)
        .mount(&server)
        .await;
    client()
        .complete(&agent_at(&server, json!({})), Some(&key()), &chat_request())
        .await
}

#[tokio::test]
async fn sends_the_messages_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("x-api-key", KEY))
        .and(header("anthropic-version", "2023-06-01"))
        .and(header("content-type", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(success_body()))
        .expect(1)
        .mount(&server)
        .await;

    client()
        .complete(&agent_at(&server, json!({})), Some(&key()), &chat_request())
        .await
        .unwrap();

    let received = server.received_requests().await.unwrap();
    // Anthropic takes the key in x-api-key, never as a bearer token.
    assert!(received[0].headers.get("authorization").is_none());
    assert_eq!(
        received[0].body_json::<Value>().unwrap(),
        json!({
            "model": MODEL,
            "max_tokens": 64,
            "system": "You are terse.",
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Sentiment of: great!"}
            ],
            "temperature": 0.25,
            "stop_sequences": ["END"]
        })
    );
}

#[tokio::test]
async fn max_tokens_is_always_sent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(success_body()))
        .mount(&server)
        .await;
    let bare = single_request(TEXT, "Hi");

    // Neither the request nor the agent sets it: the documented default.
    client()
        .complete(&agent_at(&server, json!({})), Some(&key()), &bare)
        .await
        .unwrap();
    // The agent's limit when the request has none.
    client()
        .complete(
            &agent_at(&server, json!({"max_tokens": 4096})),
            Some(&key()),
            &bare,
        )
        .await
        .unwrap();

    let received = server.received_requests().await.unwrap();
    assert_eq!(
        received[0].body_json::<Value>().unwrap(),
        json!({
            "model": MODEL,
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": "Hi"}]
        })
    );
    assert_eq!(
        received[1].body_json::<Value>().unwrap()["max_tokens"],
        4096
    );
}

#[test]
fn default_root_is_anthropic() {
    assert_eq!(endpoint(None), "https://api.anthropic.com/v1/messages");
    assert_eq!(
        endpoint(Some("http://proxy.local/anthropic/")),
        "http://proxy.local/anthropic/v1/messages"
    );
}

#[tokio::test]
async fn parses_a_success_with_cache_usage_and_request_id() {
    let response = answer_with(
        ResponseTemplate::new(200)
            .insert_header("request-id", "req_018EeWyXxfu5pfWkrYcMdjWG")
            .set_body_json(success_body()),
    )
    .await
    .unwrap();
    assert_eq!(
        response,
        ChatResponse {
            output: "positive".into(),
            finish_reason: Some("end_turn".into()),
            // Cache reads and writes count as input, reads as cached input.
            usage: Usage {
                input_tokens: 2150,
                output_tokens: 12,
                cached_input_tokens: 2000,
                cache_write_input_tokens: 100,
                ..Usage::default()
            },
            request_id: Some("req_018EeWyXxfu5pfWkrYcMdjWG".into()),
        }
    );
}

#[tokio::test]
async fn message_id_is_the_fallback_request_id_and_non_text_blocks_are_skipped() {
    let response = answer_with(ResponseTemplate::new(200).set_body_json(json!({
        "id": "msg_01", "type": "message", "role": "assistant", "model": MODEL,
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "neutral"}
        ],
        "stop_reason": "max_tokens", "stop_sequence": null,
        "usage": {"input_tokens": 7, "output_tokens": 64}
    })))
    .await
    .unwrap();
    assert_eq!(response.output, "neutral");
    assert_eq!(response.finish_reason.as_deref(), Some("max_tokens"));
    assert_eq!(response.request_id.as_deref(), Some("msg_01"));
    assert_eq!(
        response.usage,
        Usage {
            input_tokens: 7,
            output_tokens: 64,
            ..Usage::default()
        }
    );
}

#[tokio::test]
async fn a_refusal_is_content_filtered() {
    let err = answer_with(ResponseTemplate::new(200).set_body_json(json!({
        "id": "msg_02", "type": "message", "role": "assistant", "model": MODEL,
        "content": [], "stop_reason": "refusal", "stop_sequence": null,
        "usage": {"input_tokens": 7, "output_tokens": 0}
    })))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::ContentFiltered);
    assert!(!err.class.is_retryable());
}

#[tokio::test]
async fn bad_request_quotes_the_provider() {
    let err = answer_with(anthropic_error(
        400,
        "invalid_request_error",
        "temperature: range: 0..1",
    ))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::BadRequest);
    assert_eq!((err.status, err.retry_after), (Some(400), None));
    assert_eq!(
        err.message,
        "provider rejected the request: temperature: range: 0..1"
    );
}

#[tokio::test]
async fn prompt_too_long_is_context_length_exceeded() {
    let err = answer_with(anthropic_error(
        400,
        "invalid_request_error",
        "prompt is too long: 208914 tokens > 200000 maximum",
    ))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::ContextLengthExceeded);
    assert!(err.message.contains("208914 tokens > 200000 maximum"));
}

#[tokio::test]
async fn low_credit_balance_is_not_retryable() {
    let err = answer_with(anthropic_error(
        400,
        "invalid_request_error",
        "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
    ))
    .await
    .unwrap_err();
    assert_eq!(
        (err.class, err.message.as_str()),
        (ErrorClass::Auth, "quota exhausted")
    );
}

#[tokio::test]
async fn unauthorized_never_echoes_the_key() {
    let echoed = format!("invalid x-api-key {KEY}");
    let err = answer_with(anthropic_error(401, "authentication_error", &echoed))
        .await
        .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Auth, Some(401)));
    assert_eq!(err.message, "provider rejected the API key");
    assert!(!err.to_string().contains(KEY));
}

#[tokio::test]
async fn forbidden_is_auth() {
    let err = answer_with(anthropic_error(
        403,
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ))
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Auth, Some(403)));
}

#[tokio::test]
async fn not_found() {
    let err = answer_with(anthropic_error(404, "not_found_error", "model: claude-9"))
        .await
        .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::NotFound, Some(404)));
    assert!(!err.class.is_retryable());
}

#[tokio::test]
async fn rate_limited_with_retry_after() {
    let soon = (Utc::now() + chrono::Duration::seconds(50)).to_rfc3339();
    let err = answer_with(
        anthropic_error(
            429,
            "rate_limit_error",
            "This request would exceed your organization's rate limit of 50 requests per minute.",
        )
        .insert_header("retry-after", "2")
        .insert_header("anthropic-ratelimit-requests-limit", "50")
        .insert_header("anthropic-ratelimit-requests-remaining", "0")
        .insert_header("anthropic-ratelimit-requests-reset", soon.as_str()),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (err.class, err.status),
        (ErrorClass::RateLimited, Some(429))
    );
    // retry-after is the provider's own answer and wins over the resets.
    assert_eq!(err.retry_after, Some(Duration::from_secs(2)));
    assert!(err.class.is_retryable());
}

#[tokio::test]
async fn rate_limited_with_only_reset_headers_waits_for_the_latest() {
    let requests = (Utc::now() + chrono::Duration::seconds(5)).to_rfc3339();
    let tokens = (Utc::now() + chrono::Duration::seconds(20)).to_rfc3339();
    let err = answer_with(
        anthropic_error(
            429,
            "rate_limit_error",
            "Number of input tokens has exceeded your per-minute rate limit",
        )
        .insert_header("anthropic-ratelimit-requests-reset", requests.as_str())
        .insert_header("anthropic-ratelimit-input-tokens-reset", tokens.as_str()),
    )
    .await
    .unwrap_err();
    let wait = err.retry_after.unwrap();
    assert!(
        wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
        "{wait:?}"
    );
}

#[tokio::test]
async fn server_error() {
    let err = answer_with(anthropic_error(500, "api_error", "Internal server error"))
        .await
        .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Server, Some(500)));
    assert_eq!(err.message, "provider server error (HTTP 500)");
    assert!(err.class.is_retryable());
}

#[tokio::test]
async fn status_529_is_overloaded() {
    let err = answer_with(anthropic_error(529, "overloaded_error", "Overloaded"))
        .await
        .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Overloaded, Some(529)));
    assert!(err.class.is_retryable());
    // Without a typed body the status alone decides.
    let err = answer_with(ResponseTemplate::new(529).set_body_string("overloaded"))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Overloaded);
}

#[tokio::test]
async fn gateway_timeout_is_a_timeout() {
    let err = answer_with(anthropic_error(504, "timeout_error", "Request timed out"))
        .await
        .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Timeout, Some(504)));
}

#[tokio::test]
async fn malformed_success_body() {
    for body in [
        ResponseTemplate::new(200).set_body_string("<html>gateway</html>"),
        ResponseTemplate::new(200).set_body_json(json!({"id": "msg_03", "type": "message"})),
        ResponseTemplate::new(200).set_body_json(json!({"content": "not a list"})),
    ] {
        let err = answer_with(body).await.unwrap_err();
        assert_eq!((err.class, err.status), (ErrorClass::Server, Some(200)));
        assert_eq!(err.message, "malformed response from provider");
    }
}

#[tokio::test]
async fn slower_than_the_agent_timeout_is_a_timeout() {
    crate::providers::test_support::assert_slow_answer_is_a_timeout(
        &client(),
        "/v1/messages",
        success_body(),
        |s| agent_at(s, json!({"timeout_ms": 200})),
        Some(&key()),
        &chat_request(),
    )
    .await;
}

#[tokio::test]
async fn connection_refused_is_a_network_error() {
    crate::providers::test_support::assert_unreachable_is_a_network_error(
        &client(),
        &agent("anthropic", MODEL, Some(dead_address()), json!({})),
        Some(&key()),
        &chat_request(),
    )
    .await;
}
