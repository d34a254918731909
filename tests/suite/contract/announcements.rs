//! Announcements come from the task store's change stream: a task that
//! finished while no announcer ran (its stage crashed right after the final
//! write) is announced by the next announcer, from the checkpoint; what is
//! announced is not announced again after a restart; what the bus refused
//! is read again. Run on both backends (the memory stream, DynamoDB Streams
//! on moto).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use chrono::Utc;
use maof::adapters::memory::MemoryEvents;
use maof::domain::{CallId, Task, TaskError, TaskPatch, TaskRequest, TaskStatus, TenantId};
use maof::ports::{
    CachedSecrets, EventError, EventPublisher, FinishedFeed, SystemClock, TaskFinished,
};
use maof::providers::{OutboundPolicy, Providers, http_client};
use maof::stages::announce::relay;
use maof::stages::{Services, Settings};
use maof_tests::backends::Backend;
use serde_json::json;

use super::on_both_backends;

fn services(b: &Backend, events: Arc<dyn EventPublisher>) -> Services {
    let clock = Arc::new(SystemClock);
    Services::new(
        b.tasks.clone(),
        b.registry.clone(),
        b.queue.clone(),
        Arc::new(CachedSecrets::new(
            b.secrets.clone(),
            clock.clone(),
            CachedSecrets::DEFAULT_TTL,
        )),
        Arc::new(Providers::new(
            http_client(OutboundPolicy::strict()).unwrap(),
        )),
        clock,
        Settings::default(),
    )
    .with_events(events)
}

async fn stored_task(b: &Backend, content: &str) -> Task {
    let request: TaskRequest = serde_json::from_value(json!({
        "task_type": "text", "content": content, "metadata": {"order": content}
    }))
    .unwrap();
    let (spec, _) = request.parse().unwrap();
    let task = Task::new(
        TenantId::parse("acme").unwrap(),
        spec,
        None,
        "u",
        Utc::now(),
    );
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    task
}

async fn step(b: &Backend, task: &Task, to: TaskStatus, patch: TaskPatch) -> Task {
    b.tasks
        .transition(task, to, patch, Utc::now())
        .await
        .unwrap_or_else(|e| panic!("{} → {to}: {e}", task.task_id))
}

async fn complete(b: &Backend, task: &Task) -> Task {
    step(b, task, TaskStatus::Routing, TaskPatch::default()).await;
    step(b, task, TaskStatus::Running, TaskPatch::default()).await;
    step(b, task, TaskStatus::Completed, TaskPatch::default()).await
}

async fn fail(b: &Backend, task: &Task) -> Task {
    let patch = TaskPatch {
        error: Some(TaskError::new("no_capable_agent", "none")),
        ..TaskPatch::default()
    };
    step(b, task, TaskStatus::Failed, patch).await
}

/// Relays until the feed has nothing new; the number of passes is bounded.
async fn drain(svc: &Services, feed: &dyn FinishedFeed) {
    let mut idle = 0;
    for _ in 0..200 {
        match relay(svc, feed, 100).await {
            Ok(records) if records > 0 => idle = 0,
            Ok(_) => {
                idle += 1;
                if idle == 2 {
                    return;
                }
            }
            Err(e) => panic!("relay: {e}"),
        }
    }
    panic!("the feed never ran dry");
}

/// The ids of the events published, sorted: a batch is published
/// concurrently, in no particular order (EventBridge keeps none either).
fn event_ids(events: &MemoryEvents) -> Vec<String> {
    let mut ids: Vec<String> = events.published().into_iter().map(|e| e.event_id).collect();
    ids.sort();
    ids
}

async fn a_task_finished_while_no_announcer_ran_is_announced_by_the_next(b: Backend) {
    let name = b.name;
    let done = stored_task(&b, "done").await;
    let refused = stored_task(&b, "refused").await;
    let open = stored_task(&b, "open").await;
    // The stages write the final statuses, then "crash": nothing announced.
    let done = complete(&b, &done).await;
    fail(&b, &refused).await;
    // A call landing after the end adds its cost: a change, not a finishing.
    let late = super::task_store::call_result(CallId::new(), "late");
    b.tasks.add_late_calls(&done, &[late]).await.unwrap();

    let events = Arc::new(MemoryEvents::new());
    let svc = services(&b, events.clone());
    drain(&svc, (b.new_feed)().as_ref()).await;
    let mut expected = [
        format!("{}.completed", done.task_id),
        format!("{}.failed", refused.task_id),
    ];
    expected.sort();
    assert_eq!(
        event_ids(&events),
        expected,
        "{name}: each finishing once; the late cost and the open task announce nothing"
    );
    let published = events.published();
    let completed = published
        .iter()
        .find(|e| e.task_id == done.task_id.to_string())
        .unwrap();
    assert_eq!(completed.detail_type(), "maof.task.completed");
    assert_eq!(completed.tenant, "acme");
    assert_eq!(
        completed.metadata["order"], "done",
        "{name}: the request's fields"
    );

    // A restarted announcer reads on from the checkpoint.
    complete(&b, &open).await;
    let restarted = Arc::new(MemoryEvents::new());
    let svc = services(&b, restarted.clone());
    drain(&svc, (b.new_feed)().as_ref()).await;
    assert_eq!(
        event_ids(&restarted),
        [format!("{}.completed", open.task_id)],
        "{name}: what was announced before the restart is not announced again"
    );
}

/// A bus that refuses the first `refusals` events it is given.
struct RefusingBus {
    refusals: AtomicU32,
    inner: MemoryEvents,
}

#[async_trait]
impl EventPublisher for RefusingBus {
    async fn task_finished(&self, event: &TaskFinished) -> Result<(), EventError> {
        let refuse = self
            .refusals
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            return Err(EventError("throttled".into()));
        }
        self.inner.task_finished(event).await
    }
}

async fn an_announcement_the_bus_refused_is_made_again(b: Backend) {
    let name = b.name;
    let first = complete(&b, &stored_task(&b, "one").await).await;
    let second = fail(&b, &stored_task(&b, "two").await).await;
    let bus = Arc::new(RefusingBus {
        refusals: AtomicU32::new(1),
        inner: MemoryEvents::new(),
    });
    let svc = services(&b, bus.clone());
    drain(&svc, (b.new_feed)().as_ref()).await;
    let ids = event_ids(&bus.inner);
    let expected = [
        format!("{}.completed", first.task_id),
        format!("{}.failed", second.task_id),
    ];
    // The batch is published concurrently: the event after the refused one
    // may have gone out before the retry, and then goes out twice, with the
    // same id.
    for id in &expected {
        let n = ids.iter().filter(|i| *i == id).count();
        assert!(
            (1..=2).contains(&n),
            "{name}: {id} announced {n} times: {ids:?}"
        );
    }
    assert_eq!(ids.len(), 2 + usize::from(ids.len() > 2), "{name}: {ids:?}");
    assert_eq!(
        bus.refusals.load(Ordering::SeqCst),
        0,
        "{name}: the refusal happened"
    );
}

on_both_backends!(
    a_task_finished_while_no_announcer_ran_is_announced_by_the_next,
    an_announcement_the_bus_refused_is_made_again,
);
