//! The client against a local server speaking Gemini's wire format, errors included.

use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::providers::test_support::{
    KEY, TEXT, agent, chat_request, dead_address, key, single_request,
};

const MODEL: &str = "gemini-2.5-flash";
const PATH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";

fn agent_at(server: &MockServer, constraints: Value) -> Agent {
    agent("gemini", MODEL, Some(server.uri()), constraints)
}

fn client() -> Gemini {
    Gemini::new(crate::providers::test_support::local_client())
}

fn success_body() -> Value {
    json!({
        "candidates": [{
            "content": {
                "parts": [
                    {"text": "weighing tone", "thought": true},
                    {"text": "posi"},
                    {"text": "tive"}
                ],
                "role": "model"
            },
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": [
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}
            ]
        }],
        "usageMetadata": {
            "promptTokenCount": 1200,
            "candidatesTokenCount": 3,
            "totalTokenCount": 1213,
            "cachedContentTokenCount": 1024,
            "thoughtsTokenCount": 10,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1200}]
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": "mAitaLmkHPPlz7IPvtfUqQ4"
    })
}

fn google_error(code: u16, status: &str, message: &str, details: Value) -> ResponseTemplate {
    ResponseTemplate::new(code).set_body_json(json!({
        "error": {"code": code, "message": message, "status": status, "details": details}
    }))
}

async fn answer_with(response: ResponseTemplate) -> Result<ChatResponse, ProviderError> {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(response)
        .expect(1)
        .mount(&server)
        .await;
    client()
        .complete(&agent_at(&server, json!({})), Some(&key()), &chat_request())
        .await
}

#[tokio::test]
async fn sends_the_generate_content_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .and(header("x-goog-api-key", KEY))
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
    // The key travels in its header only: not in the query, not as a bearer token.
    assert_eq!(received[0].url.query(), None);
    assert!(received[0].headers.get("authorization").is_none());
    assert_eq!(
        received[0].body_json::<Value>().unwrap(),
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "Hi"}]},
                {"role": "model", "parts": [{"text": "Hello."}]},
                {"role": "user", "parts": [{"text": "Sentiment of: great!"}]}
            ],
            "systemInstruction": {"parts": [{"text": "You are terse."}]},
            "generationConfig": {
                "maxOutputTokens": 64,
                "temperature": 0.25,
                "stopSequences": ["END"]
            }
        })
    );
}

#[tokio::test]
async fn omits_empty_config_and_system() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(success_body()))
        .mount(&server)
        .await;
    let bare = single_request(TEXT, "Hi");
    client()
        .complete(&agent_at(&server, json!({})), Some(&key()), &bare)
        .await
        .unwrap();
    client()
        .complete(
            &agent_at(&server, json!({"max_tokens": 300})),
            Some(&key()),
            &bare,
        )
        .await
        .unwrap();

    let received = server.received_requests().await.unwrap();
    assert_eq!(
        received[0].body_json::<Value>().unwrap(),
        json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]})
    );
    assert_eq!(
        received[1].body_json::<Value>().unwrap()["generationConfig"],
        json!({"maxOutputTokens": 300})
    );
}

#[test]
fn endpoints() {
    assert_eq!(
        endpoint(None, "gemini-2.5-flash"),
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(
        endpoint(Some("http://gw.local/google/"), "models/gemini-2.5-pro"),
        "http://gw.local/google/v1beta/models/gemini-2.5-pro:generateContent"
    );
}

#[tokio::test]
async fn parses_a_success_with_cached_and_thought_tokens() {
    let response = answer_with(ResponseTemplate::new(200).set_body_json(success_body()))
        .await
        .unwrap();
    assert_eq!(
        response,
        ChatResponse {
            output: "positive".into(),
            finish_reason: Some("STOP".into()),
            usage: Usage {
                input_tokens: 1200,
                output_tokens: 13,
                cached_input_tokens: 1024,
                ..Usage::default()
            },
            request_id: Some("mAitaLmkHPPlz7IPvtfUqQ4".into()),
        }
    );
}

#[tokio::test]
async fn a_candidate_stopped_for_safety_is_content_filtered() {
    for reason in ["SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST"] {
        let err = answer_with(ResponseTemplate::new(200).set_body_json(json!({
            "candidates": [{"finishReason": reason, "index": 0, "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}
            ]}],
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
            "responseId": "r1"
        })))
        .await
        .unwrap_err();
        assert_eq!(err.class, ErrorClass::ContentFiltered, "{reason}");
        assert!(err.message.contains(reason));
        assert!(!err.class.is_retryable());
    }
}

#[tokio::test]
async fn a_blocked_prompt_is_content_filtered() {
    let err = answer_with(ResponseTemplate::new(200).set_body_json(json!({
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        "modelVersion": MODEL
    })))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::ContentFiltered);
}

#[tokio::test]
async fn max_tokens_finish_keeps_the_partial_answer() {
    let response = answer_with(ResponseTemplate::new(200).set_body_json(json!({
        "candidates": [{"content": {"parts": [{"text": "It is"}], "role": "model"},
                        "finishReason": "MAX_TOKENS", "index": 0}],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 2, "totalTokenCount": 11}
    })))
    .await
    .unwrap();
    assert_eq!(response.output, "It is");
    assert_eq!(response.finish_reason.as_deref(), Some("MAX_TOKENS"));
    assert_eq!(response.request_id, None);
}

#[tokio::test]
async fn bad_request_quotes_the_provider() {
    let err = answer_with(google_error(
        400,
        "INVALID_ARGUMENT",
        "Invalid value at 'generation_config.temperature' (TYPE_FLOAT), \"hot\"",
        json!([{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": []}]),
    ))
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::BadRequest, Some(400)));
    assert!(
        err.message
            .starts_with("provider rejected the request: Invalid value")
    );
}

#[tokio::test]
async fn token_limit_is_context_length_exceeded() {
    let err = answer_with(google_error(
        400,
        "INVALID_ARGUMENT",
        "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576).",
        json!([]),
    ))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::ContextLengthExceeded);
    assert!(err.message.contains("1048576"));
}

#[tokio::test]
async fn invalid_key_is_auth_even_as_a_400() {
    let err = answer_with(google_error(
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        json!([{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"}
        }]),
    ))
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Auth, Some(400)));
    assert_eq!(err.message, "provider rejected the API key");
}

#[tokio::test]
async fn unauthenticated_and_permission_denied_are_auth() {
    for (code, status) in [(401, "UNAUTHENTICATED"), (403, "PERMISSION_DENIED")] {
        let err = answer_with(google_error(
            code,
            status,
            "Method doesn't allow unregistered callers (callers without established identity).",
            json!([]),
        ))
        .await
        .unwrap_err();
        assert_eq!((err.class, err.status), (ErrorClass::Auth, Some(code)));
        assert!(!err.to_string().contains(KEY));
    }
}

#[tokio::test]
async fn not_found() {
    let err = answer_with(google_error(
        404,
        "NOT_FOUND",
        "models/gemini-9 is not found for API version v1beta, or is not supported for generateContent.",
        json!([]),
    ))
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::NotFound, Some(404)));
}

#[tokio::test]
async fn resource_exhausted_waits_for_retry_info() {
    let err = answer_with(google_error(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
        json!([
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
            }]},
            {"@type": "type.googleapis.com/google.rpc.Help", "links": [
                {"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}
            ]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}
        ]),
    ))
    .await
    .unwrap_err();
    assert_eq!(
        (err.class, err.status),
        (ErrorClass::RateLimited, Some(429))
    );
    assert_eq!(err.retry_after, Some(Duration::from_secs(2)));

    let err = answer_with(google_error(
        429,
        "RESOURCE_EXHAUSTED",
        "Resource has been exhausted (e.g. check quota).",
        json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.5s"}]),
    ))
    .await
    .unwrap_err();
    assert_eq!(err.retry_after, Some(Duration::from_millis(500)));

    // No RetryInfo: the retry-after header, when there is one.
    let err = answer_with(
        google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", json!([]))
            .insert_header("retry-after", "7"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn server_side_statuses() {
    let cases = [
        (500, "INTERNAL", ErrorClass::Server),
        (503, "UNAVAILABLE", ErrorClass::Overloaded),
        (504, "DEADLINE_EXCEEDED", ErrorClass::Timeout),
    ];
    for (code, status, class) in cases {
        let err = answer_with(google_error(code, status, "try again later", json!([])))
            .await
            .unwrap_err();
        assert_eq!((err.class, err.status), (class, Some(code)), "{status}");
        assert!(err.class.is_retryable());
    }
    // An error body wrapped in a list, as some Google front ends send it.
    let err = answer_with(ResponseTemplate::new(503).set_body_json(json!([{
        "error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}
    }])))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::Overloaded);
    // A bare 500 with no Google body.
    let err = answer_with(ResponseTemplate::new(500).set_body_string("oops"))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Server);
}

#[tokio::test]
async fn malformed_success_body() {
    for body in [
        ResponseTemplate::new(200).set_body_string("<html>gateway</html>"),
        ResponseTemplate::new(200).set_body_json(json!({"candidates": []})),
        ResponseTemplate::new(200).set_body_json(json!({"candidates": "none"})),
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
        PATH,
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
        &agent("gemini", MODEL, Some(dead_address()), json!({})),
        Some(&key()),
        &chat_request(),
    )
    .await;
}
