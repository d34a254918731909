//! The client against a local server speaking HuggingFace's wire formats, errors included.

use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::providers::test_support::{KEY, agent, chat_request, dead_address, key, single_request};

const MODEL: &str = "distilbert/distilbert-base-uncased-finetuned-sst-2-english";
const PATH: &str = "/models/distilbert/distilbert-base-uncased-finetuned-sst-2-english";

fn agent_at(server: &MockServer, constraints: Value) -> Agent {
    agent("huggingface", MODEL, Some(server.uri()), constraints)
}

fn client() -> HuggingFace {
    HuggingFace::new(crate::providers::test_support::local_client())
}

fn classify_request() -> ChatRequest {
    single_request(TASK_CLASSIFICATION, "I love this movie!")
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
        .complete(
            &agent_at(&server, json!({})),
            Some(&key()),
            &classify_request(),
        )
        .await
}

fn hf_error(status: u16, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"error": message}))
}

#[tokio::test]
async fn sends_the_classification_request_and_sorts_the_labels() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("content-type", "application/json"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-request-id", "Root=1-abc")
                .set_body_json(json!([[
                    {"label": "NEGATIVE", "score": 0.0002},
                    {"label": "POSITIVE", "score": 0.9998}
                ]])),
        )
        .expect(1)
        .mount(&server)
        .await;

    let response = client()
        .complete(
            &agent_at(&server, json!({})),
            Some(&key()),
            &classify_request(),
        )
        .await
        .unwrap();

    let received = server.received_requests().await.unwrap();
    assert_eq!(
        received[0].body_json::<Value>().unwrap(),
        json!({"inputs": "I love this movie!"})
    );
    assert_eq!(
        response,
        ChatResponse {
            output: r#"{"label":"POSITIVE","score":0.9998,"labels":[{"label":"POSITIVE","score":0.9998},{"label":"NEGATIVE","score":0.0002}]}"#.into(),
            finish_reason: None,
            usage: Usage::default(),
            request_id: Some("Root=1-abc".into()),
        }
    );
    let parsed: Classification = serde_json::from_str(&response.output).unwrap();
    assert_eq!(parsed.label, "POSITIVE");
}

#[tokio::test]
async fn a_flat_label_list_works_too() {
    let response = answer_with(ResponseTemplate::new(200).set_body_json(json!([
        {"label": "joy", "score": 0.1},
        {"label": "anger", "score": 0.7},
        {"label": "fear", "score": 0.2}
    ])))
    .await
    .unwrap();
    let parsed: Classification = serde_json::from_str(&response.output).unwrap();
    assert_eq!((parsed.label.as_str(), parsed.score), ("anger", 0.7));
    let order: Vec<_> = parsed.labels.iter().map(|l| l.label.as_str()).collect();
    assert_eq!(order, ["anger", "fear", "joy"]);
}

#[test]
fn default_roots() {
    assert_eq!(
        classification_endpoint(None, MODEL),
        format!("https://router.huggingface.co/hf-inference{PATH}")
    );
    assert_eq!(
        classification_endpoint(Some("https://x.endpoints.huggingface.cloud/"), MODEL),
        format!("https://x.endpoints.huggingface.cloud{PATH}")
    );
}

#[tokio::test]
async fn other_task_types_go_to_the_openai_compatible_router() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "chatcmpl-hf", "object": "chat.completion",
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "positive"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let agent = agent(
        "huggingface",
        "meta-llama/Llama-3.1-8B-Instruct",
        Some(format!("{}/v1", server.uri())),
        json!({}),
    );

    let response = client()
        .complete(&agent, Some(&key()), &chat_request())
        .await
        .unwrap();

    assert_eq!(response.output, "positive");
    assert_eq!(response.usage.input_tokens, 20);
    let body: Value = server.received_requests().await.unwrap()[0]
        .body_json()
        .unwrap();
    assert_eq!(body["model"], "meta-llama/Llama-3.1-8B-Instruct");
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "You are terse."})
    );
}

#[tokio::test]
async fn bad_request_quotes_the_provider() {
    let err = answer_with(hf_error(400, "Input should be a valid string"))
        .await
        .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::BadRequest, Some(400)));
    assert_eq!(
        err.message,
        "provider rejected the request: Input should be a valid string"
    );
    // A list of validation errors is joined.
    let err = answer_with(ResponseTemplate::new(422).set_body_json(json!({
        "error": ["Input validation error: `inputs` must be non-empty", "second"],
        "error_type": "validation"
    })))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::BadRequest);
    assert!(err.message.ends_with("must be non-empty; second"));
}

#[tokio::test]
async fn too_long_input_is_context_length_exceeded() {
    let err = answer_with(hf_error(
        400,
        "Input is too long: token indices sequence length is longer than the specified maximum sequence length for this model (612 > 512)",
    ))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::ContextLengthExceeded);
}

#[tokio::test]
async fn unauthorized_and_out_of_credits_are_auth() {
    let err = answer_with(hf_error(401, "Invalid credentials in Authorization header"))
        .await
        .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Auth, Some(401)));
    assert_eq!(err.message, "provider rejected the API key");
    let err = answer_with(hf_error(
        402,
        "You have exceeded your monthly included credits for Inference Providers.",
    ))
    .await
    .unwrap_err();
    assert_eq!(
        (err.class, err.message.as_str()),
        (ErrorClass::Auth, "quota exhausted")
    );
}

#[tokio::test]
async fn not_found() {
    let err = answer_with(hf_error(404, "Model not found"))
        .await
        .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::NotFound, Some(404)));
}

#[tokio::test]
async fn rate_limited_with_retry_after() {
    let err = answer_with(
        hf_error(
            429,
            "Rate limit reached. You reached free usage limit (reset hourly).",
        )
        .insert_header("retry-after", "2"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (err.class, err.status),
        (ErrorClass::RateLimited, Some(429))
    );
    assert_eq!(err.retry_after, Some(Duration::from_secs(2)));
}

#[tokio::test]
async fn a_loading_model_is_overloaded_for_its_estimated_time() {
    let err = answer_with(ResponseTemplate::new(503).set_body_json(json!({
        "error": "Model distilbert/distilbert-base-uncased-finetuned-sst-2-english is currently loading",
        "estimated_time": 20.5
    })))
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Overloaded, Some(503)));
    assert_eq!(err.retry_after, Some(Duration::from_millis(20_500)));
    assert_eq!(err.message, "model is loading on the provider");
    assert!(err.class.is_retryable());
}

#[tokio::test]
async fn server_error() {
    let err = answer_with(hf_error(500, "CUDA error: device-side assert triggered"))
        .await
        .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Server, Some(500)));
    // The provider's internals stay in the operator log.
    assert_eq!(err.message, "provider server error (HTTP 500)");
}

#[tokio::test]
async fn malformed_success_body() {
    for body in [
        ResponseTemplate::new(200).set_body_string("<html>gateway</html>"),
        ResponseTemplate::new(200).set_body_json(json!([])),
        ResponseTemplate::new(200).set_body_json(json!([[]])),
        ResponseTemplate::new(200).set_body_json(json!({"label": "POSITIVE", "score": 1.0})),
        ResponseTemplate::new(200).set_body_json(json!([{"generated_text": "hello"}])),
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
        json!([[{"label": "POSITIVE", "score": 0.9}]]),
        |s| agent_at(s, json!({"timeout_ms": 200})),
        Some(&key()),
        &classify_request(),
    )
    .await;
}

#[tokio::test]
async fn connection_refused_is_a_network_error() {
    crate::providers::test_support::assert_unreachable_is_a_network_error(
        &client(),
        &agent("huggingface", MODEL, Some(dead_address()), json!({})),
        Some(&key()),
        &classify_request(),
    )
    .await;
}
