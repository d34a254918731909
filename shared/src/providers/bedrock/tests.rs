//! The client, through the official SDK, against a local server speaking
//! Bedrock's Converse REST/JSON wire format, errors included.

use std::time::Duration;

use aws_config::Region;
use aws_sdk_bedrockruntime::config::{Credentials, SharedCredentialsProvider};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::providers::outbound::{OutboundClient, OutboundPolicy};
use crate::providers::test_support::{
    TEXT, agent, chat_request, dead_address, forbidden_server, local_client, received,
    single_request, test_names,
};

const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";
/// The model id as the SDK puts it in the path: `:` percent-encoded.
const PATH: &str = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse";

fn test_config() -> SdkConfig {
    SdkConfig::builder()
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        )))
        .behavior_version(BehaviorVersion::latest())
        .build()
}

/// Loopback admitted: the local server stands in for Bedrock.
fn client() -> Bedrock {
    Bedrock::with_config(test_config()).with_outbound(local_client().resolver())
}

fn agent_at(server: &MockServer, constraints: Value) -> Agent {
    agent("bedrock", MODEL, Some(server.uri()), constraints)
}

fn success_body() -> Value {
    json!({
        "output": {"message": {"role": "assistant", "content": [{"text": "posi"}, {"text": "tive"}]}},
        "stopReason": "end_turn",
        "usage": {
            "inputTokens": 30, "outputTokens": 5, "totalTokens": 1135,
            "cacheReadInputTokens": 1000, "cacheWriteInputTokens": 100
        },
        "metrics": {"latencyMs": 412}
    })
}

/// A Bedrock error: the type in `x-amzn-errortype`, the message in the body.
fn aws_error(status: u16, error_type: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .insert_header(
            "x-amzn-errortype",
            format!("{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/").as_str(),
        )
        .insert_header("x-amzn-requestid", "6c4b1b9e-err")
        .set_body_json(json!({"message": message}))
}

async fn answer_with(response: ResponseTemplate) -> Result<ChatResponse, ProviderError> {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(response)
        // The SDK's retries are off: exactly one request per call.
        .expect(1)
        .mount(&server)
        .await;
    client()
        .complete(&agent_at(&server, json!({})), None, &chat_request())
        .await
}

#[tokio::test]
async fn sends_the_converse_request_signed_with_sigv4() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .and(header("content-type", "application/json"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-amzn-requestid", "6c4b1b9e-0d3a-4b4e-9a55-6f1a1b6d1e01")
                .set_body_json(success_body()),
        )
        .expect(1)
        .mount(&server)
        .await;

    let response = client()
        .complete(&agent_at(&server, json!({})), None, &chat_request())
        .await
        .unwrap();

    let received = &server.received_requests().await.unwrap()[0];
    let authorization = received
        .headers
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"));
    assert!(authorization.contains("/us-east-1/bedrock/aws4_request"));
    assert_eq!(
        received.body_json::<Value>().unwrap(),
        json!({
            "messages": [
                {"role": "user", "content": [{"text": "Hi"}]},
                {"role": "assistant", "content": [{"text": "Hello."}]},
                {"role": "user", "content": [{"text": "Sentiment of: great!"}]}
            ],
            "system": [{"text": "You are terse."}],
            "inferenceConfig": {"maxTokens": 64, "temperature": 0.25, "stopSequences": ["END"]}
        })
    );
    assert_eq!(
        response,
        ChatResponse {
            output: "positive".into(),
            finish_reason: Some("end_turn".into()),
            usage: Usage {
                input_tokens: 1130,
                output_tokens: 5,
                cached_input_tokens: 1000,
                cache_write_input_tokens: 100,
                ..Usage::default()
            },
            request_id: Some("6c4b1b9e-0d3a-4b4e-9a55-6f1a1b6d1e01".into()),
        }
    );
}

#[tokio::test]
async fn omits_absent_fields_and_reuses_the_client() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
            "stopReason": "max_tokens",
            "usage": {"inputTokens": 3, "outputTokens": 9, "totalTokens": 12},
            "metrics": {"latencyMs": 20}
        })))
        .expect(2)
        .mount(&server)
        .await;
    let bedrock = client();
    let bare = single_request(TEXT, "Hi");
    let response = bedrock
        .complete(&agent_at(&server, json!({})), None, &bare)
        .await
        .unwrap();
    bedrock
        .complete(&agent_at(&server, json!({"max_tokens": 500})), None, &bare)
        .await
        .unwrap();

    let received = server.received_requests().await.unwrap();
    assert_eq!(
        received[0].body_json::<Value>().unwrap(),
        json!({"messages": [{"role": "user", "content": [{"text": "Hi"}]}]})
    );
    assert_eq!(
        received[1].body_json::<Value>().unwrap()["inferenceConfig"],
        json!({"maxTokens": 500})
    );
    assert_eq!(response.finish_reason.as_deref(), Some("max_tokens"));
    assert_eq!(
        response.usage,
        Usage {
            input_tokens: 3,
            output_tokens: 9,
            ..Usage::default()
        }
    );
    // One SDK client per endpoint, built once.
    assert_eq!(bedrock.inner.clients.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_answer_over_the_agents_cap_is_response_too_large() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(success_body()))
        .expect(1)
        .mount(&server)
        .await;
    // "positive" is 8 bytes.
    let err = client()
        .complete(
            &agent_at(&server, json!({"max_response_bytes": 4})),
            None,
            &chat_request(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::ResponseTooLarge, "{err:?}");
}

#[tokio::test]
async fn a_guardrail_is_content_filtered() {
    for reason in ["guardrail_intervened", "content_filtered"] {
        let err = answer_with(ResponseTemplate::new(200).set_body_json(json!({
            "output": {"message": {"role": "assistant", "content": [{"text": "Sorry, the model cannot answer this question."}]}},
            "stopReason": reason,
            "usage": {"inputTokens": 3, "outputTokens": 9, "totalTokens": 12},
            "metrics": {"latencyMs": 20}
        })))
        .await
        .unwrap_err();
        assert_eq!(err.class, ErrorClass::ContentFiltered, "{reason}");
    }
}

#[tokio::test]
async fn validation_errors() {
    let err = answer_with(aws_error(
        400,
        "ValidationException",
        "The provided request is not valid: temperature must be <= 1",
    ))
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::BadRequest, Some(400)));
    assert!(err.message.ends_with("temperature must be <= 1"));

    let err = answer_with(aws_error(
        400,
        "ValidationException",
        "Input is too long for requested model.",
    ))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::ContextLengthExceeded);
    assert!(!err.class.is_retryable());
}

#[tokio::test]
async fn access_denied_is_auth_and_keeps_the_arn_private() {
    let err = answer_with(aws_error(
        403,
        "AccessDeniedException",
        "User: arn:aws:sts::123456789012:assumed-role/maof/agent-call is not authorized to perform: bedrock:InvokeModel",
    ))
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Auth, Some(403)));
    assert!(!err.message.contains("123456789012"));
    // Bad credentials come back without a modelled type.
    let err = answer_with(aws_error(
        403,
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    ))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::Auth);
}

#[tokio::test]
async fn not_found() {
    let err = answer_with(aws_error(
        404,
        "ResourceNotFoundException",
        "Model not found for the given model identifier.",
    ))
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::NotFound, Some(404)));
}

#[tokio::test]
async fn throttling_is_rate_limited() {
    let err = answer_with(
        aws_error(
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
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
    assert!(err.class.is_retryable());
}

#[tokio::test]
async fn server_side_errors() {
    let cases = [
        (500, "InternalServerException", ErrorClass::Server),
        (424, "ModelErrorException", ErrorClass::Server),
        (503, "ServiceUnavailableException", ErrorClass::Overloaded),
        (429, "ModelNotReadyException", ErrorClass::Overloaded),
        (408, "ModelTimeoutException", ErrorClass::Timeout),
    ];
    for (status, kind, class) in cases {
        let err = answer_with(aws_error(status, kind, "try again"))
            .await
            .unwrap_err();
        assert_eq!((err.class, err.status), (class, Some(status)), "{kind}");
        assert!(err.class.is_retryable());
    }
}

#[tokio::test]
async fn malformed_success_body() {
    for body in [
        ResponseTemplate::new(200).set_body_string("<html>gateway</html>"),
        ResponseTemplate::new(200).set_body_json(json!({"stopReason": "end_turn"})),
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
        PATH,
        success_body(),
        |s| agent_at(s, json!({"timeout_ms": 200})),
        None,
        &chat_request(),
    )
    .await;
}

#[tokio::test]
async fn connection_refused_is_a_network_error() {
    crate::providers::test_support::assert_unreachable_is_a_network_error(
        &client(),
        &agent("bedrock", MODEL, Some(dead_address()), json!({})),
        None,
        &chat_request(),
    )
    .await;
}

#[tokio::test]
async fn missing_region_or_credentials_are_not_retried() {
    let server = MockServer::start().await;
    let no_region = Bedrock::with_config(
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .build(),
    )
    .with_outbound(local_client().resolver());
    let err = no_region
        .complete(&agent_at(&server, json!({})), None, &chat_request())
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::BadRequest);

    let no_credentials = Bedrock::with_config(
        SdkConfig::builder()
            .region(Region::new("us-east-1"))
            .behavior_version(BehaviorVersion::latest())
            .build(),
    )
    .with_outbound(local_client().resolver());
    let err = no_credentials
        .complete(&agent_at(&server, json!({})), None, &chat_request())
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Auth, "{err:?}");
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_agent_endpoint_inside_the_network_is_refused_by_address_or_by_name() {
    let forbidden = forbidden_server().await;
    let hidden = forbidden.address().port();
    let strict = Bedrock::with_config(test_config()).with_outbound(
        OutboundClient::with_resolver(OutboundPolicy::strict(), test_names())
            .unwrap()
            .resolver(),
    );
    for base_url in [
        format!("http://127.0.0.2:{hidden}"),
        format!("http://second-loopback.test:{hidden}"),
        "http://169.254.169.254".to_owned(),
        "https://private.test".to_owned(),
    ] {
        let err = strict
            .complete(
                &agent("bedrock", MODEL, Some(base_url.clone()), json!({})),
                None,
                &chat_request(),
            )
            .await
            .unwrap_err();
        assert_eq!(
            (err.class, err.status),
            (ErrorClass::BadRequest, None),
            "{base_url}: {err:?}"
        );
        assert!(
            err.message.starts_with("the agent's base_url is refused: "),
            "{}",
            err.message
        );
    }
    assert_eq!(received(&forbidden).await, 0);
}

#[test]
fn context_length_messages() {
    assert!(is_context_length("Input is too long for requested model."));
    assert!(is_context_length(
        "The model returned the following errors: prompt is too long: 210000 tokens > 200000 maximum"
    ));
    assert!(is_context_length(
        "Too many input tokens. Max input tokens: 8192"
    ));
    assert!(!is_context_length("temperature must be <= 1"));
}
