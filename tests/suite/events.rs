//! Event-triggered pipelines: tasks submitted by EventBridge events and inbox
//! messages (tenant from the configured source), and finished tasks announced
//! as `maof.task.completed` / `maof.task.failed`, in memory and on EventBridge (moto).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use maof::adapters::aws::EventBridgePublisher;
use maof::adapters::memory::MemoryEvents;
use maof::domain::{Origin, Principal, Role, TaskStatus, TenantId};
use maof::ports::{EventPublisher, TaskFinished};
use maof::runner::{Runner, RunnerConfig};
use maof::stages::inbox::EventSources;
use maof::stages::intake;

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/events")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

fn sources() -> EventSources {
    EventSources::new(
        HashMap::from([("acme.orders".to_owned(), tenant("acme"))]),
        Some(tenant("globex")),
    )
}

#[tokio::test]
async fn inbox_messages_become_tasks_of_the_configured_tenant_once() {
    let (svc, _) = maof::setup::memory_services(
        maof::setup::outbound(maof::providers::OutboundPolicy::strict()).unwrap(),
    )
    .unwrap();
    let event: SqsEvent = serde_json::from_str(&fixture("sqs-inbox-batch.json")).unwrap();

    let response = maof::lambda::handle_inbox(&svc, &sources(), event.clone()).await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(
        failed,
        ["unknown-source"],
        "a source with no configured tenant is refused"
    );

    let acme = svc
        .tasks
        .list(&tenant("acme"), 10, None)
        .await
        .unwrap()
        .items;
    assert_eq!(
        acme.len(),
        1,
        "the EventBridge event's task belongs to its source's tenant"
    );
    assert_eq!(acme[0].spec.content, "Summarize order 42");
    assert_eq!(acme[0].submitted_by, "event:acme.orders");
    let globex = svc
        .tasks
        .list(&tenant("globex"), 10, None)
        .await
        .unwrap()
        .items;
    assert_eq!(
        globex.len(),
        1,
        "the direct message's task belongs to the inbox tenant"
    );
    assert!(
        svc.tasks
            .list(&tenant("evil-corp"), 10, None)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // The same delivery again (SQS redelivers): no new tasks.
    maof::lambda::handle_inbox(&svc, &sources(), event).await;
    assert_eq!(
        svc.tasks
            .list(&tenant("acme"), 10, None)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        svc.tasks
            .list(&tenant("globex"), 10, None)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

#[test]
fn event_sources_parse_their_configuration() {
    assert!(EventSources::parse("acme.orders=acme, globex.billing=globex", Some("acme")).is_ok());
    assert!(EventSources::parse("", None).is_ok());
    assert!(
        EventSources::parse("acme.orders", None).is_err(),
        "missing =tenant"
    );
    assert!(EventSources::parse("acme.orders=bad tenant", None).is_err());
    assert!(EventSources::parse("", Some("a#b")).is_err());
}

/// An event over its tenant's rate limit waits in its queue (retried
/// later), never dropped as malformed.
#[tokio::test]
async fn an_event_over_the_rate_limit_waits_for_room() {
    use maof::domain::{RateLimits, Rates};
    use maof::stages::StageError;
    let (svc, _) = maof::setup::memory_services(
        maof::setup::outbound(maof::providers::OutboundPolicy::strict()).unwrap(),
    )
    .unwrap();
    let mut settings = svc.settings.clone();
    settings.tenant_defaults.rate_limits = RateLimits {
        tenant: Rates {
            rpm: Some(1),
            tpm: None,
        },
        ..RateLimits::default()
    };
    let svc = svc.with_settings(settings);
    let task = r#"{"task_type": "text", "content": "hello"}"#;
    maof::stages::inbox::handle(&svc, &sources(), "m-1", task)
        .await
        .unwrap();
    let second = maof::stages::inbox::handle(&svc, &sources(), "m-2", task).await;
    match second {
        Err(StageError::RetryLater { after, .. }) => {
            assert!(after.as_secs() >= 1 && after.as_secs() <= 60, "{after:?}");
        }
        other => panic!("expected RetryLater, got {other:?}"),
    }
    // Only the first became a task.
    let tasks = svc.tasks.list(&tenant("globex"), 10, None).await.unwrap();
    assert_eq!(tasks.items.len(), 1);
}

#[tokio::test]
async fn only_well_formed_task_requests_are_accepted() {
    let (svc, _) = maof::setup::memory_services(
        maof::setup::outbound(maof::providers::OutboundPolicy::strict()).unwrap(),
    )
    .unwrap();
    let event = fixture("eventbridge-task-requested.json");
    maof::stages::inbox::handle(&svc, &sources(), "m-1", &event)
        .await
        .unwrap();
    let wrong_type = event.replace("maof.task.requested", "maof.task.exploded");
    assert!(
        maof::stages::inbox::handle(&svc, &sources(), "m-2", &wrong_type)
            .await
            .is_err()
    );
    let unknown_field = event.replace("\"metadata\"", "\"surprise\": 1, \"metadata\"");
    assert!(
        maof::stages::inbox::handle(&svc, &sources(), "m-3", &unknown_field)
            .await
            .is_err()
    );
    let no_inbox_tenant = EventSources::new(HashMap::new(), None);
    let direct = r#"{"task_type": "text", "content": "x"}"#;
    assert!(
        maof::stages::inbox::handle(&svc, &no_inbox_tenant, "m-4", direct)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_are_announced() {
    let (svc, _) = maof::setup::memory_services(
        maof::setup::outbound(maof::providers::OutboundPolicy::strict()).unwrap(),
    )
    .unwrap();
    let events = Arc::new(MemoryEvents::new());
    let svc = svc
        .with_events(events.clone())
        .with_settings(maof_tests::pipeline::every_tenant_uses_platform_agents());
    maof::setup::seed_registry(
        &svc,
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/agents.yaml"),
    )
    .await
    .unwrap();
    let runner = Runner::spawn(
        svc.clone(),
        RunnerConfig {
            wait: Duration::from_millis(50),
            ..RunnerConfig::default()
        },
    );
    let principal = Principal {
        sub: "u".into(),
        tenant: tenant("acme"),
        roles: vec![Role::Submitter],
    };
    let ok =
        serde_json::from_value(serde_json::json!({"task_type": "text", "content": "hi"})).unwrap();
    let ok = intake::submit(&svc, &principal, &Origin::default(), ok, None)
        .await
        .unwrap()
        .task;
    let bad = serde_json::from_value(serde_json::json!({"task_type": "image", "content": "a cat"}))
        .unwrap();
    let bad = intake::submit(&svc, &principal, &Origin::default(), bad, None)
        .await
        .unwrap()
        .task;
    for id in [ok.task_id, bad.task_id] {
        let done = intake::wait(&svc, &principal.tenant, id, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert!(done.task.status.is_terminal());
    }
    // The announcer relays the finishings from the store's change stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while events.published().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runner.shutdown().await;
    let published = events.published();
    let of = |id: String| {
        published
            .iter()
            .filter(|e| e.task_id == id)
            .cloned()
            .collect::<Vec<_>>()
    };
    let completed = of(ok.task_id.to_string());
    assert_eq!(completed.len(), 1, "announced once");
    assert_eq!(completed[0].detail_type(), "maof.task.completed");
    assert_eq!(completed[0].event_id, format!("{}.completed", ok.task_id));
    assert_eq!(completed[0].tenant, "acme");
    assert!(completed[0].usage.input_tokens > 0);
    let failed = of(bad.task_id.to_string());
    assert_eq!(failed[0].detail_type(), "maof.task.failed");
    assert_eq!(failed[0].status, TaskStatus::Failed);
    assert_eq!(failed[0].error.as_ref().unwrap().code, "no_capable_agent");
}

/// The EventBridge adapter against moto: a rule on the bus forwards MAOF's
/// events to a queue, where they are read back.
#[tokio::test]
async fn eventbridge_publisher_puts_events_on_the_bus() {
    let config = maof_tests::moto::sdk_config().await;
    let bridge = aws_sdk_eventbridge::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let suffix = ulid::Ulid::new().to_string().to_lowercase();
    let bus = format!("bus-{suffix}");
    bridge.create_event_bus().name(&bus).send().await.unwrap();
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("events-{suffix}"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    bridge
        .put_rule()
        .name(format!("maof-{suffix}"))
        .event_bus_name(&bus)
        .event_pattern(r#"{"source": ["maof"]}"#)
        .send()
        .await
        .unwrap();
    bridge
        .put_targets()
        .rule(format!("maof-{suffix}"))
        .event_bus_name(&bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("q")
                .arn(queue_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let (svc, _) = maof::setup::memory_services(
        maof::setup::outbound(maof::providers::OutboundPolicy::strict()).unwrap(),
    )
    .unwrap();
    let principal = Principal {
        sub: "u".into(),
        tenant: tenant("acme"),
        roles: vec![Role::Submitter],
    };
    let request =
        serde_json::from_value(serde_json::json!({"task_type": "text", "content": "hi"})).unwrap();
    let task = intake::submit(&svc, &principal, &Origin::default(), request, None)
        .await
        .unwrap()
        .task;
    let publisher = EventBridgePublisher::new(bridge, &bus);
    publisher
        .task_finished(&TaskFinished::of(&task))
        .await
        .unwrap();

    let received = sqs
        .receive_message()
        .queue_url(&queue_url)
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert_eq!(received.len(), 1, "the rule forwarded one event");
    let event: serde_json::Value =
        serde_json::from_str(received[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(event["source"], "maof");
    assert_eq!(event["detail-type"], "maof.task.queued");
    assert_eq!(event["detail"]["task_id"], task.task_id.to_string());
    assert_eq!(event["detail"]["tenant"], "acme");
}
