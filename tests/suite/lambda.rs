//! The Lambda handlers with event fixtures as `sam local generate-event`
//! prints them: API Gateway v2 and v1 requests into the intake Router, and an
//! SQS batch with a bad message among good ones into a stage.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_http::request::LambdaRequest;
use maof::api::{ApiState, AuthConfig, Authenticator, ClaimMapping, router};
use maof::domain::{Envelope, MessageKind, Origin, Role, TaskId, TaskStatus, TenantId};
use maof::ports::QueueName;
use maof::stages::intake;
use secrecy::SecretString;
use tower::ServiceExt;

async fn body_json(body: axum::body::Body) -> serde_json::Value {
    let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
    serde_json::from_slice(&bytes).expect("JSON body")
}

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/events")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const SECRET: &str = "lambda-fixture-secret-0123456789abcdef";

fn token() -> String {
    Authenticator::new(SecretString::from(SECRET))
        .mint(
            "fixture",
            &TenantId::parse("acme").unwrap(),
            &[Role::Submitter],
            Duration::from_secs(60),
        )
        .unwrap()
}

/// The intake Lambda's authentication behind API Gateway's JWT authorizer
/// (`JwtIssuer` set): its claims are trusted, tenant and roles mapped from a
/// Cognito-like identity provider's.
fn behind_the_authorizer() -> AuthConfig {
    AuthConfig {
        claims: ClaimMapping {
            tenant: "custom:tenant".to_owned(),
            roles: "cognito:groups".to_owned(),
        },
        issuers: vec!["https://cognito-idp.us-east-1.amazonaws.com/us-east-1_example".to_owned()],
        trust_gateway_authorizer: true,
        ..AuthConfig::hs256(SecretString::from(SECRET))
    }
}

/// The fixture as lambda_http hands it to the Router (the request context
/// in its extensions), with its placeholders filled in.
fn lambda_request(fixture_name: &str) -> http::Request<axum::body::Body> {
    let now = chrono::Utc::now().timestamp();
    let event = fixture(fixture_name)
        .replace("{{TOKEN}}", &token())
        .replace("{{IAT}}", &now.to_string())
        .replace("{{EXP}}", &(now + 3600).to_string());
    let request: LambdaRequest =
        serde_json::from_str(&event).expect("the fixture is a Lambda HTTP event");
    let request = maof::lambda::strip_stage(lambda_http::Request::from(request));
    let (parts, body) = request.into_parts();
    http::Request::from_parts(parts, axum::body::Body::from(body.to_vec()))
}

/// Sends the fixture's task through the Router; asserts it was stored
/// for `tenant` by `sub` and queued for routing.
async fn intake_accepts(fixture_name: &str, config: AuthConfig, tenant: &str, sub: &str) {
    let (svc, queue) = maof::setup::memory_services(
        maof::setup::outbound(maof::providers::OutboundPolicy::strict()).unwrap(),
    )
    .unwrap();
    let auth = Arc::new(Authenticator::from_config(config, None, svc.clock.clone()).unwrap());
    let app = router(ApiState {
        services: svc.clone(),
        auth,
    });
    let response = app.oneshot(lambda_request(fixture_name)).await.unwrap();
    let status = response.status();
    let body = body_json(response.into_body()).await;
    assert!(
        status == 202 || status == 200,
        "{fixture_name}: {status} {body}"
    );
    let task_id = TaskId::parse(body["task_id"].as_str().unwrap()).unwrap();
    let stored = svc
        .tasks
        .get(&TenantId::parse(tenant).unwrap(), task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.spec.task_type, "text");
    assert_eq!(stored.submitted_by, sub);
    assert!(
        stored.idempotency_key.is_some(),
        "the Idempotency-Key header came through"
    );
    assert_eq!(queue.depth(QueueName::Route), 1, "a route message was sent");
}

fn own_tokens() -> AuthConfig {
    AuthConfig::hs256(SecretString::from(SECRET))
}

#[tokio::test]
async fn intake_handles_an_api_gateway_http_api_v2_event() {
    intake_accepts("apigw-v2-post-task.json", own_tokens(), "acme", "fixture").await;
}

#[tokio::test]
async fn intake_handles_an_api_gateway_rest_v1_event() {
    intake_accepts("apigw-v1-post-task.json", own_tokens(), "acme", "fixture").await;
}

#[tokio::test]
async fn behind_the_jwt_authorizer_intake_takes_its_claims_instead_of_reverifying_the_token() {
    // The event carries the identity provider's RS256 token, which intake's
    // HS256 key could never verify, and the claims API Gateway validated.
    intake_accepts(
        "apigw-v2-post-task-jwt-authorizer.json",
        behind_the_authorizer(),
        "acme",
        "5f1c7a2e-idp-user",
    )
    .await;
    // A request without an authorizer context: the bearer token, as before.
    intake_accepts(
        "apigw-v2-post-task.json",
        behind_the_authorizer(),
        "acme",
        "fixture",
    )
    .await;
}

#[tokio::test]
async fn without_the_authorizer_intake_verifies_the_bearer_token_even_with_a_context() {
    // Not configured to trust the authorizer (no JwtIssuer, or `maof dev`):
    // the context is not read, and the identity provider's token is refused.
    let (svc, queue) = maof::setup::memory_services(
        maof::setup::outbound(maof::providers::OutboundPolicy::strict()).unwrap(),
    )
    .unwrap();
    let config = AuthConfig {
        trust_gateway_authorizer: false,
        ..behind_the_authorizer()
    };
    let app = router(ApiState {
        services: svc.clone(),
        auth: Arc::new(Authenticator::from_config(config, None, svc.clock.clone()).unwrap()),
    });
    let response = app
        .oneshot(lambda_request("apigw-v2-post-task-jwt-authorizer.json"))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body = body_json(response.into_body()).await;
    assert_eq!(body["code"], "token_algorithm", "{body}");
    assert_eq!(queue.depth(QueueName::Route), 0);
}

#[tokio::test]
async fn an_sqs_batch_reports_only_the_bad_message() {
    let (svc, queue) = maof::setup::memory_services(
        maof::setup::outbound(maof::providers::OutboundPolicy::strict()).unwrap(),
    )
    .unwrap();
    let svc = svc.with_settings(maof_tests::pipeline::every_tenant_uses_platform_agents());
    maof::setup::seed_registry(
        &svc,
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/agents.yaml"),
    )
    .await
    .unwrap();
    let principal = maof::domain::Principal {
        sub: "u".into(),
        tenant: TenantId::parse("acme").unwrap(),
        roles: vec![Role::Submitter],
    };
    let request =
        serde_json::from_value(serde_json::json!({"task_type": "text", "content": "hi"})).unwrap();
    let task = intake::submit(&svc, &principal, &Origin::default(), request, None)
        .await
        .unwrap()
        .task;
    let good = Envelope::new(MessageKind::Route, task.tenant.clone(), task.task_id).to_body();
    let ghost = Envelope::new(MessageKind::Route, task.tenant.clone(), TaskId::new()).to_body();
    let json_string = |s: &str| serde_json::to_string(s).unwrap();
    let event = fixture("sqs-route-batch.json")
        .replace("\"{{ROUTE_BODY}}\"", &json_string(&good))
        .replace("\"{{GHOST_BODY}}\"", &json_string(&ghost));
    let event: SqsEvent = serde_json::from_str(&event).expect("the fixture is an SQS event");

    let mut context = lambda_runtime::Context::default();
    context.deadline =
        (chrono::Utc::now() + chrono::Duration::seconds(30)).timestamp_millis() as u64;
    let response = maof::lambda::handle_sqs(
        &svc,
        QueueName::Route,
        lambda_runtime::LambdaEvent::new(event, context),
    )
    .await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(
        failed,
        ["malformed-message"],
        "only the bad message is reported"
    );
    let routed = svc
        .tasks
        .get(&task.tenant, task.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        routed.status,
        TaskStatus::Running,
        "the good message was handled"
    );
    assert_eq!(queue.depth(QueueName::AgentCall), 1);
}

#[test]
fn a_dead_letter_queue_arn_selects_the_dead_letter_handler() {
    use maof::lambda::queue_of;
    assert_eq!(
        queue_of(
            QueueName::AgentCall,
            Some("arn:aws:sqs:us-east-1:1:maof-agent-call-dlq")
        ),
        QueueName::AgentCallDlq
    );
    assert_eq!(
        queue_of(
            QueueName::AgentCall,
            Some("arn:aws:sqs:us-east-1:1:maof-agent-call")
        ),
        QueueName::AgentCall
    );
    assert_eq!(queue_of(QueueName::Route, None), QueueName::Route);
}

/// A stream record as the announcer's trigger delivers it: the item's images
/// in DynamoDB JSON.
fn stream_record(
    sequence: &str,
    old: &maof::domain::Task,
    new: &maof::domain::Task,
) -> serde_json::Value {
    use maof::adapters::layout::StateItem;
    let image = |task: &maof::domain::Task| {
        let item: serde_dynamo::Item = serde_dynamo::to_item(StateItem::new(task, 0)).unwrap();
        serde_json::to_value(item).unwrap()
    };
    serde_json::json!({
        "eventID": format!("e-{sequence}"),
        "eventName": "MODIFY",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": 1_764_000_000,
            "Keys": {"pk": {"S": "k"}, "sk": {"S": "TASK"}},
            "OldImage": image(old),
            "NewImage": image(new),
            "SequenceNumber": sequence,
            "SizeBytes": 512,
            "StreamViewType": "NEW_AND_OLD_IMAGES"
        },
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/maof-context/stream/2026-01-01T00:00:00.000"
    })
}

/// A bus that is down.
struct DownBus;

#[async_trait::async_trait]
impl maof::ports::EventPublisher for DownBus {
    async fn task_finished(
        &self,
        _event: &maof::ports::TaskFinished,
    ) -> Result<(), maof::ports::EventError> {
        Err(maof::ports::EventError("the bus is down".into()))
    }
}

#[tokio::test]
async fn the_announcer_publishes_finishings_and_reports_the_first_it_could_not() {
    use maof::domain::{TaskPatch, TaskRequest};
    let (svc, _) = maof::setup::memory_services(
        maof::setup::outbound(maof::providers::OutboundPolicy::strict()).unwrap(),
    )
    .unwrap();
    let now = chrono::Utc::now;
    let stored = |content: &str| {
        let request: TaskRequest = serde_json::from_value(
            serde_json::json!({"task_type": "text", "content": content, "metadata": {"c": content}}),
        )
        .unwrap();
        let (spec, _) = request.parse().unwrap();
        maof::domain::Task::new(TenantId::parse("acme").unwrap(), spec, None, "u", now())
    };
    let (one, two) = (stored("one"), stored("two"));
    for task in [&one, &two] {
        svc.tasks
            .create(task, &maof_tests::created(task))
            .await
            .unwrap();
    }
    let running = svc
        .tasks
        .transition(&one, TaskStatus::Running, TaskPatch::default(), now())
        .await
        .unwrap();
    let completed = svc
        .tasks
        .transition(&running, TaskStatus::Completed, TaskPatch::default(), now())
        .await
        .unwrap();
    let cancelled = svc
        .tasks
        .transition(&two, TaskStatus::Cancelled, TaskPatch::default(), now())
        .await
        .unwrap();
    let event = serde_json::json!({"Records": [
        // Queued → running: not a finishing (the trigger's filter would
        // drop it; the handler holds the same rule).
        stream_record("100", &one, &running),
        stream_record("200", &running, &completed),
        // A cost added to a finished task: not a finishing either.
        stream_record("300", &completed, &completed),
        stream_record("400", &two, &cancelled),
    ]});
    let event: aws_lambda_events::event::dynamodb::Event =
        serde_json::from_value(event).expect("a DynamoDB stream event");

    let events = Arc::new(maof::adapters::memory::MemoryEvents::new());
    let up = svc.clone().with_events(events.clone());
    let response = maof::lambda::handle_stream(&up, event.clone()).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    // Published concurrently: in no particular order.
    let published = events.published();
    let mut ids: Vec<&str> = published.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort();
    let mut expected = [
        format!("{}.completed", one.task_id),
        format!("{}.cancelled", two.task_id),
    ];
    expected.sort();
    assert_eq!(ids, expected);
    let cancelled_event = published
        .iter()
        .find(|e| e.task_id == two.task_id.to_string())
        .unwrap();
    assert_eq!(
        cancelled_event.metadata["c"], "two",
        "the request's fields, read from the store"
    );

    // With the bus down, the trigger is told to retry from the first
    // finishing, not from the record before it or the batch's end.
    let down = svc.with_events(Arc::new(DownBus));
    let response = maof::lambda::handle_stream(&down, event).await;
    let failed: Vec<Option<String>> = response
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect();
    assert_eq!(failed, [Some("200".to_owned())]);
}
