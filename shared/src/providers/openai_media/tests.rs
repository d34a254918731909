//! The media client against a local server speaking OpenAI's wire format, errors included.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::domain::agent::PricingRequest;
use crate::domain::{Pricing, Usd};
use crate::providers::test_support::{KEY, TEXT, agent, dead_address, key, single_request};

const AUDIO: &[u8] = b"ID3\x03\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00\r\n--not-a-boundary\r\n";

fn agent_at(server: &MockServer, model: &str, constraints: Value) -> Agent {
    agent(
        "openai",
        model,
        Some(format!("{}/v1", server.uri())),
        constraints,
    )
}

fn client() -> OpenAiMedia {
    OpenAiMedia::new(crate::providers::test_support::local_client())
}

fn image_request() -> ChatRequest {
    single_request(TASK_IMAGE, "A watercolor fox in the snow")
}

fn audio_data_url() -> String {
    format!("data:audio/mpeg;base64,{}", STANDARD.encode(AUDIO))
}

fn openai_error(status: u16, message: &str, kind: &str, code: Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "error": {"message": message, "type": kind, "param": null, "code": code}
    }))
}

async fn image_answer(response: ResponseTemplate) -> Result<ChatResponse, ProviderError> {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(response)
        .expect(1)
        .mount(&server)
        .await;
    client()
        .complete(
            &agent_at(&server, "dall-e-3", json!({})),
            Some(&key()),
            &image_request(),
        )
        .await
}

async fn transcription_answer(response: ResponseTemplate) -> Result<ChatResponse, ProviderError> {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/transcriptions"))
        .respond_with(response)
        .expect(1)
        .mount(&server)
        .await;
    client()
        .complete(
            &agent_at(&server, "whisper-1", json!({})),
            Some(&key()),
            &single_request(TASK_TRANSCRIPTION, &audio_data_url()),
        )
        .await
}

/// The boundary a multipart request declared in its content type.
fn boundary_of(request: &wiremock::Request) -> String {
    let content_type = request
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap();
    content_type
        .strip_prefix("multipart/form-data; boundary=")
        .expect("a multipart content type")
        .to_owned()
}

fn expected_multipart(
    boundary: &str,
    model: &str,
    file_name: &str,
    mime: &str,
    file: &[u8],
) -> Vec<u8> {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n\
         Content-Type: {mime}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

// ---- images ----

#[tokio::test]
async fn sends_the_image_request_and_returns_the_url() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("content-type", "application/json"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-request-id", "req_img1")
                .set_body_json(json!({
                    "created": 1_713_833_628,
                    "data": [{
                        "url": "https://oaidalleapiprodscus.blob.core.windows.net/private/img-1.png",
                        "revised_prompt": "A watercolor painting of a red fox in fresh snow"
                    }]
                })),
        )
        .expect(1)
        .mount(&server)
        .await;

    let response = client()
        .complete(
            &agent_at(&server, "dall-e-3", json!({})),
            Some(&key()),
            &image_request(),
        )
        .await
        .unwrap();

    let received = server.received_requests().await.unwrap();
    assert_eq!(
        received[0].body_json::<Value>().unwrap(),
        json!({"model": "dall-e-3", "prompt": "A watercolor fox in the snow", "n": 1})
    );
    assert_eq!(
        response,
        ChatResponse {
            output: "https://oaidalleapiprodscus.blob.core.windows.net/private/img-1.png".into(),
            finish_reason: None,
            usage: Usage {
                images: 1,
                ..Usage::default()
            },
            request_id: Some("req_img1".into()),
        }
    );
}

#[tokio::test]
async fn inline_images_become_data_urls_with_token_usage() {
    let response = image_answer(ResponseTemplate::new(200).set_body_json(json!({
        "created": 1_713_833_628,
        "background": "opaque",
        "data": [{"b64_json": "iVBORw0KGgo="}, {"url": "https://example.com/b.png"}],
        "output_format": "webp",
        "quality": "high",
        "size": "1024x1024",
        "usage": {
            "input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210,
            "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}
        }
    })))
    .await
    .unwrap();
    assert_eq!(
        response.output,
        "data:image/webp;base64,iVBORw0KGgo=\nhttps://example.com/b.png"
    );
    assert_eq!(
        response.usage,
        Usage {
            input_tokens: 50,
            output_tokens: 4160,
            images: 2,
            ..Usage::default()
        }
    );
}

/// `pricing` as an admin writes it, checked.
fn pricing(request: Value) -> Pricing {
    Pricing::try_from(serde_json::from_value::<PricingRequest>(request).unwrap()).unwrap()
}

#[tokio::test]
async fn images_are_priced_per_image_or_by_their_tokens_exactly() {
    // DALL·E 3: $0.04 an image, whatever its tokens.
    let dall_e = image_answer(
        ResponseTemplate::new(200)
            .set_body_json(json!({"created": 1, "data": [{"url": "https://x/a.png"}]})),
    )
    .await
    .unwrap();
    let per_image = pricing(json!({"per_image": "0.04"}));
    assert_eq!(per_image.cost(&dall_e.usage), Usd::parse("0.04").unwrap());

    // gpt-image-1: $5 input and $40 output per million tokens, two images.
    let gpt_image = image_answer(ResponseTemplate::new(200).set_body_json(json!({
        "data": [{"b64_json": "iVBORw0KGgo="}, {"b64_json": "iVBORw0KGgo="}],
        "usage": {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210}
    })))
    .await
    .unwrap();
    assert_eq!(gpt_image.usage.images, 2);
    let by_tokens = pricing(json!({"input_per_mtok": 5, "output_per_mtok": 40}));
    // 50 × 5 + 4160 × 40 = 166,650 per million.
    assert_eq!(
        by_tokens.cost(&gpt_image.usage),
        Usd::parse("0.16665").unwrap()
    );
    assert_eq!(
        per_image.cost(&gpt_image.usage),
        Usd::parse("0.08").unwrap()
    );
}

#[tokio::test]
async fn a_refused_image_prompt_is_content_filtered() {
    let err = image_answer(openai_error(
        400,
        "Your request was rejected as a result of our safety system.",
        "image_generation_user_error",
        json!("content_policy_violation"),
    ))
    .await
    .unwrap_err();
    assert_eq!(
        (err.class, err.status),
        (ErrorClass::ContentFiltered, Some(400))
    );
}

#[tokio::test]
async fn image_bad_request_quotes_the_provider() {
    let err = image_answer(openai_error(
        400,
        "Invalid size '999x999'. Supported sizes are 1024x1024, 1024x1792, and 1792x1024.",
        "invalid_request_error",
        Value::Null,
    ))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::BadRequest);
    assert!(err.message.contains("Invalid size"));
}

#[tokio::test]
async fn image_errors_are_classified() {
    let err = image_answer(openai_error(
        401,
        &format!("Incorrect API key provided: {KEY}"),
        "invalid_request_error",
        json!("invalid_api_key"),
    ))
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Auth, Some(401)));
    assert!(!err.to_string().contains(KEY));

    let err = image_answer(openai_error(
        404,
        "The model `dall-e-9` does not exist.",
        "invalid_request_error",
        json!("model_not_found"),
    ))
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::NotFound, Some(404)));

    let err = image_answer(
        openai_error(
            429,
            "Rate limit exceeded for images per minute.",
            "requests",
            json!("rate_limit_exceeded"),
        )
        .insert_header("retry-after", "2"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (err.class, err.retry_after),
        (ErrorClass::RateLimited, Some(Duration::from_secs(2)))
    );

    let err = image_answer(openai_error(
        500,
        "The server had an error.",
        "server_error",
        Value::Null,
    ))
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Server, Some(500)));
}

#[tokio::test]
async fn malformed_image_answers() {
    for body in [
        ResponseTemplate::new(200).set_body_string("<html>gateway</html>"),
        ResponseTemplate::new(200).set_body_json(json!({"created": 1, "data": []})),
        ResponseTemplate::new(200)
            .set_body_json(json!({"created": 1, "data": [{"revised_prompt": "x"}]})),
    ] {
        let err = image_answer(body).await.unwrap_err();
        assert_eq!((err.class, err.status), (ErrorClass::Server, Some(200)));
        assert_eq!(err.message, "malformed response from provider");
    }
}

#[tokio::test]
async fn image_slower_than_the_timeout_is_a_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"data": [{"url": "https://x/y.png"}]}))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let started = Instant::now();
    let err = client()
        .complete(
            &agent_at(&server, "dall-e-3", json!({"timeout_ms": 200})),
            Some(&key()),
            &image_request(),
        )
        .await
        .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Timeout, None));
    assert!(started.elapsed() < Duration::from_secs(2));
}

// ---- transcription ----

#[tokio::test]
async fn sends_a_data_url_as_a_multipart_upload() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/transcriptions"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-request-id", "req_tr1")
                .set_body_json(json!({"text": "Hello from the audio."})),
        )
        .expect(1)
        .mount(&server)
        .await;

    let response = client()
        .complete(
            &agent_at(&server, "whisper-1", json!({})),
            Some(&key()),
            &single_request(TASK_TRANSCRIPTION, &audio_data_url()),
        )
        .await
        .unwrap();

    assert_eq!(
        response,
        ChatResponse {
            output: "Hello from the audio.".into(),
            finish_reason: None,
            usage: Usage::default(),
            request_id: Some("req_tr1".into()),
        }
    );
    let received = &server.received_requests().await.unwrap()[0];
    let boundary = boundary_of(received);
    assert!(boundary.len() > 20);
    assert_eq!(
        received.body,
        expected_multipart(&boundary, "whisper-1", "audio.mp3", "audio/mpeg", AUDIO)
    );
}

#[tokio::test]
async fn downloads_an_audio_url_and_names_the_file_by_its_type() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/media/clip"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "audio/wav")
                .set_body_bytes(AUDIO),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/media/clip.flac"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "binary/octet-stream")
                .set_body_bytes(AUDIO),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/transcriptions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "text": "hi",
            "usage": {"type": "tokens", "input_tokens": 14, "output_tokens": 45, "total_tokens": 59,
                      "input_token_details": {"text_tokens": 0, "audio_tokens": 14}}
        })))
        .expect(2)
        .mount(&server)
        .await;
    let agent = agent_at(&server, "gpt-4o-transcribe", json!({}));

    let response = client()
        .complete(
            &agent,
            Some(&key()),
            &single_request(TASK_TRANSCRIPTION, &format!("{}/media/clip", server.uri())),
        )
        .await
        .unwrap();
    assert_eq!(response.output, "hi");
    assert_eq!(
        response.usage,
        Usage {
            input_tokens: 14,
            output_tokens: 45,
            ..Usage::default()
        }
    );
    // Billed by its tokens ($2.50 and $10 per million); no audio seconds, so
    // a per-minute price adds nothing.
    let by_tokens = pricing(json!({"input_per_mtok": "2.5", "output_per_mtok": 10,
        "per_audio_minute": "0.006"}));
    assert_eq!(
        by_tokens.cost(&response.usage),
        Usd::parse("0.000485").unwrap()
    );
    // A generic content type: the URL's extension names the format.
    client()
        .complete(
            &agent,
            Some(&key()),
            &single_request(
                TASK_TRANSCRIPTION,
                &format!("{}/media/clip.flac", server.uri()),
            ),
        )
        .await
        .unwrap();

    let uploads: Vec<_> = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == "/v1/audio/transcriptions")
        .collect();
    let first = &uploads[0];
    assert_eq!(
        first.body,
        expected_multipart(
            &boundary_of(first),
            "gpt-4o-transcribe",
            "audio.wav",
            "audio/wav",
            AUDIO
        )
    );
    let second = &uploads[1];
    assert_eq!(
        second.body,
        expected_multipart(
            &boundary_of(second),
            "gpt-4o-transcribe",
            "audio.flac",
            "binary/octet-stream",
            AUDIO
        )
    );
}

#[tokio::test]
async fn whisper_duration_usage_counts_whole_seconds_rounded_up() {
    // whisper-1 at $0.006 a minute: $0.0001 a second.
    let per_minute = pricing(json!({"per_audio_minute": "0.006"}));
    for (seconds, counted, cost) in [
        (json!(3), 3, "0.0003"),
        (json!(3.2), 4, "0.0004"),
        (json!(61.0), 61, "0.0061"),
        (json!(0.01), 1, "0.0001"),
        (json!(-1), 0, "0"),
    ] {
        let response = transcription_answer(ResponseTemplate::new(200).set_body_json(json!({
            "text": "ok", "usage": {"type": "duration", "seconds": seconds}
        })))
        .await
        .unwrap();
        assert_eq!(
            response.usage,
            Usage {
                audio_seconds: counted,
                ..Usage::default()
            },
            "{seconds}"
        );
        assert_eq!(
            per_minute.cost(&response.usage),
            Usd::parse(cost).unwrap(),
            "{seconds}"
        );
    }
}

#[tokio::test]
async fn an_unreadable_usage_keeps_the_transcript() {
    let response = transcription_answer(ResponseTemplate::new(200).set_body_json(json!({
        "text": "still heard", "usage": {"type": "duration", "seconds": "three"}
    })))
    .await
    .unwrap();
    assert_eq!(response.output, "still heard");
    assert_eq!(response.usage, Usage::default());
}

#[tokio::test]
async fn audio_that_cannot_be_sent_is_refused_before_any_upload() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/missing.mp3"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/huge.mp3"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![0_u8; MAX_AUDIO_BYTES + 1]))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/transcriptions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"text": "never"})))
        .expect(0)
        .mount(&server)
        .await;
    let agent = agent_at(&server, "whisper-1", json!({}));
    let huge_data_url = format!(
        "data:audio/mpeg;base64,{}",
        "A".repeat((MAX_AUDIO_BYTES + 8) / 3 * 4)
    );

    let cases = [
        ("just some text".to_owned(), "http(s) URL or a data: URL"),
        (
            "ftp://example.com/a.mp3".to_owned(),
            "http(s) URL or a data: URL",
        ),
        ("data:audio/mpeg,rawbytes".to_owned(), "must be base64"),
        ("data:audio/mpeg;base64,!!!".to_owned(), "not valid base64"),
        (huge_data_url, "larger than 25 MiB"),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "the audio URL is refused",
        ),
        (
            "http://[fd00:ec2::254]/latest/".to_owned(),
            "the audio URL is refused",
        ),
        // The server's status is the operator's to read, not the caller's.
        (
            format!("{}/missing.mp3", server.uri()),
            "could not fetch the audio",
        ),
        (format!("{}/huge.mp3", server.uri()), "larger than 25 MiB"),
    ];
    for (content, says) in cases {
        let err = client()
            .complete(
                &agent,
                Some(&key()),
                &single_request(TASK_TRANSCRIPTION, &content),
            )
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::BadRequest, "{says}");
        assert!(err.message.contains(says), "{} / {says}", err.message);
        assert!(!err.message.contains("404"), "{}", err.message);
        assert!(!err.class.is_retryable());
    }
}

#[tokio::test]
async fn an_unreachable_audio_host_is_a_network_error() {
    let err = OpenAiMedia::new(crate::providers::test_support::local_client())
        .complete(
            &agent("openai", "whisper-1", Some(dead_address()), json!({})),
            Some(&key()),
            &single_request(TASK_TRANSCRIPTION, &format!("{}/a.mp3", dead_address())),
        )
        .await
        .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Network, None));
}

#[tokio::test]
async fn transcription_errors_are_classified() {
    let err = transcription_answer(openai_error(
        400,
        "Invalid file format. Supported formats: ['flac', 'm4a', 'mp3', 'mp4', 'mpeg', 'mpga', 'oga', 'ogg', 'wav', 'webm']",
        "invalid_request_error",
        Value::Null,
    ))
    .await
    .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::BadRequest, Some(400)));
    assert!(err.message.contains("Invalid file format"));

    let err = transcription_answer(openai_error(
        401,
        "Incorrect API key provided.",
        "invalid_request_error",
        json!("invalid_api_key"),
    ))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::Auth);

    let err = transcription_answer(openai_error(
        404,
        "The model `whisper-9` does not exist.",
        "invalid_request_error",
        json!("model_not_found"),
    ))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::NotFound);

    let err = transcription_answer(
        openai_error(
            429,
            "Rate limit reached.",
            "requests",
            json!("rate_limit_exceeded"),
        )
        .insert_header("retry-after-ms", "1500"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (err.class, err.retry_after),
        (ErrorClass::RateLimited, Some(Duration::from_millis(1500)))
    );

    let err = transcription_answer(openai_error(
        500,
        "The server had an error.",
        "server_error",
        Value::Null,
    ))
    .await
    .unwrap_err();
    assert_eq!(err.class, ErrorClass::Server);

    for body in [
        ResponseTemplate::new(200).set_body_string("Hello as plain text"),
        ResponseTemplate::new(200).set_body_json(json!({"transcript": "wrong field"})),
    ] {
        let err = transcription_answer(body).await.unwrap_err();
        assert_eq!((err.class, err.status), (ErrorClass::Server, Some(200)));
    }
}

#[tokio::test]
async fn transcription_slower_than_the_timeout_is_a_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/transcriptions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"text": "late"}))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let started = Instant::now();
    let err = client()
        .complete(
            &agent_at(&server, "whisper-1", json!({"timeout_ms": 200})),
            Some(&key()),
            &single_request(TASK_TRANSCRIPTION, &audio_data_url()),
        )
        .await
        .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Timeout, None));
    assert!(started.elapsed() < Duration::from_secs(2));
}

// ---- routing by task type ----

#[tokio::test]
async fn the_openai_client_routes_by_task_type() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "chatcmpl-1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "chat answer"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"data": [{"url": "https://x/i.png"}]})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/transcriptions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"text": "heard"})))
        .expect(1)
        .mount(&server)
        .await;
    let openai = OpenAi::new(crate::providers::test_support::local_client());
    let agent = agent_at(&server, "gpt-4o", json!({}));
    let ask = |task: TaskType, content: &str| single_request(task, content);

    let text = openai
        .complete(&agent, Some(&key()), &ask(TEXT, "hi"))
        .await
        .unwrap();
    let image = openai
        .complete(&agent, Some(&key()), &ask(TASK_IMAGE, "a fox"))
        .await
        .unwrap();
    let heard = openai
        .complete(
            &agent,
            Some(&key()),
            &ask(TASK_TRANSCRIPTION, &audio_data_url()),
        )
        .await
        .unwrap();

    assert_eq!(text.output, "chat answer");
    assert_eq!(image.output, "https://x/i.png");
    assert_eq!(heard.output, "heard");
    // The media client alone refuses text tasks.
    let err = client()
        .complete(&agent, None, &ask(TEXT, "hi"))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::BadRequest);
}

// ---- pieces ----

#[test]
fn file_names_follow_the_format() {
    let audio = |mime: &str, url_extension: Option<&str>| Audio {
        bytes: Vec::new(),
        mime: mime.into(),
        url_extension: url_extension.map(Into::into),
    };
    assert_eq!(audio("audio/x-wav", None).file_name(), "audio.wav");
    assert_eq!(audio("audio/ogg", Some("mp3")).file_name(), "audio.ogg");
    assert_eq!(audio("", Some("m4a")).file_name(), "audio.m4a");
    assert_eq!(
        audio("application/octet-stream", Some("exe")).file_name(),
        "audio.mp3"
    );
    assert_eq!(media_type(" Audio/MPEG; charset=binary"), "audio/mpeg");
}

#[test]
fn data_urls() {
    let audio = decode_data_url(&format!(
        "audio/webm;codecs=opus;base64,{}",
        STANDARD.encode(b"abc")
    ))
    .unwrap();
    assert_eq!(
        audio,
        Audio {
            bytes: b"abc".to_vec(),
            mime: "audio/webm".into(),
            url_extension: None
        }
    );
    assert!(decode_data_url("no comma").is_err());
}

#[test]
fn boundaries_avoid_the_file() {
    let form = Multipart::new(AUDIO);
    assert!(!contains(AUDIO, form.boundary.as_bytes()));
    assert!(
        form.content_type()
            .starts_with("multipart/form-data; boundary=maof-")
    );
    assert!(contains(b"abcdef", b"cde"));
    assert!(!contains(b"abc", b"abcd"));
}
