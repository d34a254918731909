//! The Lambda handlers with event fixtures as `sam local generate-event`
//! prints them: API Gateway v2 and v1 requests into the intake Router, and an
//! SQS batch with a bad message among good ones into a stage.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_http::request::LambdaRequest;
use maof::api::{ApiState, Authenticator, router};
use maof::domain::{Envelope, MessageKind, Role, TaskId, TaskStatus, TenantId};
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

async fn intake_accepts(fixture_name: &str) {
    let (svc, queue) = maof::setup::memory_services();
    let auth = Arc::new(Authenticator::new(SecretString::from(SECRET)));
    let app = router(ApiState {
        services: svc.clone(),
        auth,
    });
    let event = fixture(fixture_name).replace("{{TOKEN}}", &token());
    let request: LambdaRequest =
        serde_json::from_str(&event).expect("the fixture is a Lambda HTTP event");
    let request = maof::lambda::strip_stage(lambda_http::Request::from(request));
    let (parts, body) = request.into_parts();
    let request = http::Request::from_parts(parts, axum::body::Body::from(body.to_vec()));
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let body = body_json(response.into_body()).await;
    assert!(
        status == 202 || status == 200,
        "{fixture_name}: {status} {body}"
    );
    let task_id = TaskId::parse(body["task_id"].as_str().unwrap()).unwrap();
    let stored = svc
        .tasks
        .get(&TenantId::parse("acme").unwrap(), task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.spec.task_type, "text");
    assert!(
        stored.idempotency_key.is_some(),
        "the Idempotency-Key header came through"
    );
    assert_eq!(queue.depth(QueueName::Route), 1, "a route message was sent");
}

#[tokio::test]
async fn intake_handles_an_api_gateway_http_api_v2_event() {
    intake_accepts("apigw-v2-post-task.json").await;
}

#[tokio::test]
async fn intake_handles_an_api_gateway_rest_v1_event() {
    intake_accepts("apigw-v1-post-task.json").await;
}

#[tokio::test]
async fn an_sqs_batch_reports_only_the_bad_message() {
    let (svc, queue) = maof::setup::memory_services();
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
    let task = intake::submit(&svc, &principal, request, None)
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
