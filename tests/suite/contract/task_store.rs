use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::Utc;
use futures::future::join_all;
use maof::domain::{
    AgentId, AggregateResult, AggregationStrategy, CallId, CallLease, CallResult, CallStatus,
    IdempotencyKey, LeaseHolder, LeaseOutcome, PlannedCall, Provider, Task, TaskError, TaskPatch,
    TaskRequest, TaskStatus, TenantId, Usage, Usd,
};
use maof::ports::{FanIn, StoreError, TaskStore};
use maof_tests::backends::Backend;
use serde_json::json;

use super::on_both_backends;

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

pub(super) fn new_task(tenant_name: &str, key: Option<&str>) -> Task {
    let request: TaskRequest = serde_json::from_value(json!({
        "task_type": "text",
        "content": "Analyze this text for sentiment: «très bien» ✓",
        "system": "be brief",
        "routing": {"strategy": "cheapest", "fanout": 2},
        "aggregation": {"strategy": "all"},
        "budget_usd": 0.05,
        "metadata": {"customer": "c-1", "tags": ["a", "b"], "n": 3}
    }))
    .unwrap();
    let (spec, _) = request.parse().unwrap();
    Task::new(
        tenant(tenant_name),
        spec,
        key.map(|k| IdempotencyKey::parse(k).unwrap()),
        "user-1",
        Utc::now(),
    )
}

pub(super) fn call_result(call_id: CallId, output: &str) -> CallResult {
    CallResult {
        call_id,
        agent_id: AgentId::parse("mock-a").unwrap(),
        provider: Some(Provider::Mock),
        status: CallStatus::Succeeded,
        output: Some(output.to_owned()),
        output_ref: None,
        usage: Usage {
            input_tokens: 12,
            output_tokens: 30,
            ..Usage::default()
        },
        cost_usd: Some(Usd::parse("0.0000198").unwrap()),
        latency_ms: 5,
        attempts: 1,
        error: None,
        retried_errors: Vec::new(),
        finished_at: Utc::now(),
        truncated: false,
        quality: None,
        fell_back_from: Vec::new(),
        settles: None,
    }
}

/// Moves a new task to `running` with `n` planned calls, as routing does.
pub(super) async fn running_with_calls(store: &dyn TaskStore, task: &Task, n: u32) -> Vec<CallId> {
    let calls: Vec<CallId> = (0..n).map(|_| CallId::new()).collect();
    let plan = calls
        .iter()
        .map(|c| PlannedCall {
            call_id: *c,
            agent_id: AgentId::parse("mock-a").unwrap(),
            hold: None,
            fallbacks: Vec::new(),
            probe: false,
        })
        .collect();
    store
        .transition(task, TaskStatus::Routing, TaskPatch::default(), Utc::now())
        .await
        .unwrap();
    store
        .transition(
            task,
            TaskStatus::Running,
            TaskPatch {
                plan: Some(plan),
                expected_calls: Some(n),
                ..TaskPatch::default()
            },
            Utc::now(),
        )
        .await
        .unwrap();
    calls
}

async fn a_created_task_reads_back_whole(b: Backend) {
    let task = new_task("acme", None);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let read = b.tasks.get(&task.tenant, task.task_id).await.unwrap();
    assert_eq!(
        read.as_ref(),
        Some(&task),
        "{}: the task round-trips",
        b.name
    );
}

async fn a_duplicate_create_is_refused(b: Backend) {
    let task = new_task("acme", None);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let again = b.tasks.create(&task, &maof_tests::created(&task)).await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists)),
        "{}: got {again:?}",
        b.name
    );
}

async fn a_reused_idempotency_key_returns_the_first_task(b: Backend) {
    let first = new_task("acme", Some("order-42"));
    b.tasks
        .create(&first, &maof_tests::created(&first))
        .await
        .unwrap();
    let second = new_task("acme", Some("order-42"));
    match b.tasks.create(&second, &maof_tests::created(&second)).await {
        Err(StoreError::DuplicateIdempotencyKey(id)) => assert_eq!(id, first.task_id),
        other => panic!(
            "{}: expected DuplicateIdempotencyKey, got {other:?}",
            b.name
        ),
    }
    assert!(
        b.tasks
            .get(&second.tenant, second.task_id)
            .await
            .unwrap()
            .is_none()
    );
    // Keys are per tenant: another tenant may use the same key.
    let other_tenant = new_task("globex", Some("order-42"));
    b.tasks
        .create(&other_tenant, &maof_tests::created(&other_tenant))
        .await
        .unwrap();
}

async fn a_transition_from_the_wrong_state_is_refused(b: Backend) {
    let task = new_task("acme", None);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let (t, id) = (&task.tenant, task.task_id);

    let skip = b
        .tasks
        .transition(
            &task,
            TaskStatus::Aggregating,
            TaskPatch::default(),
            Utc::now(),
        )
        .await;
    match skip {
        Err(StoreError::Transition(e)) => {
            assert_eq!(
                (e.from, e.to),
                (TaskStatus::Queued, TaskStatus::Aggregating)
            )
        }
        other => panic!("{}: expected a refused transition, got {other:?}", b.name),
    }

    running_with_calls(b.tasks.as_ref(), &task, 1).await;
    b.tasks
        .transition(
            &task,
            TaskStatus::Aggregating,
            TaskPatch::default(),
            Utc::now(),
        )
        .await
        .unwrap();
    let result = AggregateResult {
        strategy: AggregationStrategy::All,
        output: "positive".into(),
        output_ref: None,
        confidence: 1.0,
        candidates: vec![json!({"agent_id": "mock-a", "output": "positive"})],
        conflicts: vec![],
    };
    let done = b
        .tasks
        .transition(
            &task,
            TaskStatus::Completed,
            TaskPatch {
                result: Some(result.clone()),
                usage: Some(Usage {
                    input_tokens: 1,
                    output_tokens: 2,
                    ..Usage::default()
                }),
                cost_usd: Some(Usd::parse("0.000123").unwrap()),
                ..TaskPatch::default()
            },
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.result, Some(result));
    assert_eq!(done.cost_usd, Some(Usd::parse("0.000123").unwrap()));
    assert_eq!(done.expected_calls, Some(1), "earlier patches are kept");

    // A finished task never moves again, not even to failed.
    let late = b
        .tasks
        .transition(
            &task,
            TaskStatus::Failed,
            TaskPatch {
                error: Some(TaskError::new("timeout", "too late")),
                ..TaskPatch::default()
            },
            Utc::now(),
        )
        .await;
    assert!(
        matches!(late, Err(StoreError::Transition(e)) if e.from == TaskStatus::Completed),
        "{}",
        b.name
    );
    let read = b.tasks.get(t, id).await.unwrap().unwrap();
    assert_eq!(read.status, TaskStatus::Completed);
    assert_eq!(read.error, None);

    let missing = b
        .tasks
        .transition(
            &new_task("acme", None),
            TaskStatus::Routing,
            TaskPatch::default(),
            Utc::now(),
        )
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound)),
        "{}: {missing:?}",
        b.name
    );
}

async fn only_one_of_concurrent_transitions_wins(b: Backend) {
    let task = new_task("acme", None);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let attempts = (0..10).map(|_| {
        let store = b.tasks.clone();
        let task = task.clone();
        tokio::spawn(async move {
            store
                .transition(&task, TaskStatus::Routing, TaskPatch::default(), Utc::now())
                .await
        })
    });
    let results: Vec<_> = join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        won, 1,
        "{}: exactly one duplicate route delivery proceeds",
        b.name
    );
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(_) | Err(StoreError::Transition(_))))
    );
}

/// 20 calls, each delivered twice, all written concurrently: every call is
/// counted once and exactly one call wins the fan-in claim.
async fn exactly_one_fan_in_claim_wins(b: Backend) {
    let task = new_task("acme", None);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let calls = running_with_calls(b.tasks.as_ref(), &task, 20).await;

    let deliveries = calls.iter().chain(calls.iter()).map(|call| {
        let store: Arc<dyn TaskStore> = b.tasks.clone();
        let tenant = task.tenant.clone();
        let result = call_result(*call, &format!("answer of {call}"));
        tokio::spawn(async move {
            let outcome = store.record_call(&tenant, task.task_id, &result, &[]).await;
            (result.call_id, outcome)
        })
    });
    let outcomes: Vec<(CallId, FanIn)> = join_all(deliveries)
        .await
        .into_iter()
        .map(|r| {
            let (call, outcome) = r.unwrap();
            (call, outcome.unwrap())
        })
        .collect();

    let wins = outcomes.iter().filter(|(_, o)| *o == FanIn::Won).count();
    assert_eq!(
        wins, 1,
        "{}: exactly one delivery completes the fan-in: {outcomes:?}",
        b.name
    );
    let winner = outcomes.iter().find(|(_, o)| *o == FanIn::Won).unwrap().0;

    let record = b
        .tasks
        .get_with_calls(&task.tenant, task.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record.calls.len(),
        20,
        "{}: every call recorded once",
        b.name
    );
    let ids: BTreeSet<CallId> = record.calls.iter().map(|c| c.call_id).collect();
    assert_eq!(ids, calls.iter().copied().collect());

    // A late redelivery, even of the winning call, never wins again.
    let other = *calls.iter().find(|c| **c != winner).unwrap();
    for call in [winner, other] {
        let late = b
            .tasks
            .record_call(&task.tenant, task.task_id, &call_result(call, "late"), &[])
            .await
            .unwrap();
        assert_eq!(late, FanIn::AlreadyComplete, "{}", b.name);
    }
}

async fn the_first_result_of_a_call_wins(b: Backend) {
    let task = new_task("acme", None);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let calls = running_with_calls(b.tasks.as_ref(), &task, 2).await;
    let first = b
        .tasks
        .record_call(
            &task.tenant,
            task.task_id,
            &call_result(calls[0], "first"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        first,
        FanIn::Waiting {
            done: 1,
            expected: 2
        }
    );
    let again = b
        .tasks
        .record_call(
            &task.tenant,
            task.task_id,
            &call_result(calls[0], "second"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        FanIn::Waiting {
            done: 1,
            expected: 2
        },
        "{}",
        b.name
    );
    let record = b
        .tasks
        .get_with_calls(&task.tenant, task.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.calls.len(), 1);
    assert_eq!(record.calls[0].output.as_deref(), Some("first"));
    let last = b
        .tasks
        .record_call(
            &task.tenant,
            task.task_id,
            &call_result(calls[1], "other"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(last, FanIn::Won);
}

async fn put_call_stores_once_without_counting(b: Backend) {
    let task = new_task("acme", None);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let calls = running_with_calls(b.tasks.as_ref(), &task, 2).await;
    let (t, id) = (&task.tenant, task.task_id);
    let stored = b
        .tasks
        .put_call(t, id, &call_result(calls[0], "first"), &[])
        .await
        .unwrap();
    assert_eq!(stored.output.as_deref(), Some("first"));
    let stored = b
        .tasks
        .put_call(t, id, &call_result(calls[0], "second"), &[])
        .await
        .unwrap();
    assert_eq!(
        stored.output.as_deref(),
        Some("first"),
        "{}: a duplicate write returns the result that stands",
        b.name
    );
    let record = b.tasks.get_with_calls(t, id).await.unwrap().unwrap();
    assert_eq!(record.calls.len(), 1, "{}", b.name);
    assert_eq!(record.calls[0].output.as_deref(), Some("first"));
    // Not counted: recording it later counts it once and keeps the first result.
    let counted = b
        .tasks
        .record_call(t, id, &call_result(calls[0], "third"), &[])
        .await
        .unwrap();
    assert_eq!(
        counted,
        FanIn::Waiting {
            done: 1,
            expected: 2
        },
        "{}",
        b.name
    );
    let record = b.tasks.get_with_calls(t, id).await.unwrap().unwrap();
    assert_eq!(record.calls[0].output.as_deref(), Some("first"));
}

async fn a_tenant_cannot_reach_another_tenants_task(b: Backend) {
    let task = new_task("acme", None);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let intruder = tenant("globex");
    assert!(
        b.tasks
            .get(&intruder, task.task_id)
            .await
            .unwrap()
            .is_none(),
        "{}",
        b.name
    );
    assert!(
        b.tasks
            .get_with_calls(&intruder, task.task_id)
            .await
            .unwrap()
            .is_none()
    );
    let forged = Task {
        tenant: intruder.clone(),
        ..task.clone()
    };
    let moved = b
        .tasks
        .transition(
            &forged,
            TaskStatus::Cancelled,
            TaskPatch::default(),
            Utc::now(),
        )
        .await;
    assert!(
        matches!(moved, Err(StoreError::NotFound)),
        "{}: {moved:?}",
        b.name
    );
    let recorded = b
        .tasks
        .record_call(
            &intruder,
            task.task_id,
            &call_result(CallId::new(), "x"),
            &[],
        )
        .await;
    assert!(
        matches!(recorded, Err(StoreError::NotFound)),
        "{}: {recorded:?}",
        b.name
    );
    assert!(
        b.tasks
            .list(&intruder, 10, None)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let own = b
        .tasks
        .get(&task.tenant, task.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        own.status,
        TaskStatus::Queued,
        "the owner's task is untouched"
    );
}

async fn a_tenants_tasks_list_newest_first_in_pages(b: Backend) {
    let mut created = Vec::new();
    for _ in 0..5 {
        let task = new_task("acme", None);
        b.tasks
            .create(&task, &maof_tests::created(&task))
            .await
            .unwrap();
        created.push(task.task_id);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let globex = new_task("globex", None);
    b.tasks
        .create(&globex, &maof_tests::created(&globex))
        .await
        .unwrap();
    created.reverse();

    let t = tenant("acme");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = b.tasks.list(&t, 2, cursor.as_deref()).await.unwrap();
        pages += 1;
        seen.extend(page.items.iter().map(|t| t.task_id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, created, "{}: newest first, every task once", b.name);
    assert_eq!(pages, 3);
}

async fn usage_and_cost_survive_storage_exactly(b: Backend) {
    let task = new_task("acme", None);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let calls = running_with_calls(b.tasks.as_ref(), &task, 1).await;
    let mut result = call_result(calls[0], "ok");
    result.cost_usd = Some(Usd::parse("0.000000000000000000123456789").unwrap());
    b.tasks
        .record_call(&task.tenant, task.task_id, &result, &[])
        .await
        .unwrap();
    let record = b
        .tasks
        .get_with_calls(&task.tenant, task.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.calls[0], result, "{}", b.name);
    let mut counts = HashMap::new();
    for c in &record.calls {
        *counts.entry(c.call_id).or_insert(0) += 1;
    }
    assert!(counts.values().all(|n| *n == 1));
}

async fn a_call_lease_is_held_by_one_delivery_at_a_time(b: Backend) {
    let task = new_task("acme", None);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let calls = running_with_calls(b.tasks.as_ref(), &task, 2).await;
    let (t, id) = (&task.tenant, task.task_id);
    // Leases are kept to the millisecond.
    let now = chrono::DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let secs = |s: i64| now + chrono::Duration::seconds(s);
    let (first, second) = (LeaseHolder::new(), LeaseHolder::new());
    let lease = |holder: &LeaseHolder, until| CallLease {
        holder: holder.clone(),
        until,
    };
    let call = calls[0];
    let tasks = b.tasks.clone();
    let take = |holder: &LeaseHolder, until, at| {
        let lease = lease(holder, until);
        let tasks = tasks.clone();
        async move { tasks.lease_call(t, id, call, &lease, at).await.unwrap() }
    };
    assert_eq!(take(&first, secs(30), now).await, LeaseOutcome::Acquired);
    assert_eq!(
        take(&second, secs(60), now).await,
        LeaseOutcome::Held { until: secs(30) },
        "{}: another delivery waits, and learns until when",
        b.name
    );
    assert_eq!(
        take(&first, secs(40), now).await,
        LeaseOutcome::Acquired,
        "{}: the holder renews it",
        b.name
    );
    assert_eq!(
        take(&second, secs(60), secs(39)).await,
        LeaseOutcome::Held { until: secs(40) }
    );
    assert_eq!(
        take(&second, secs(70), secs(40)).await,
        LeaseOutcome::Acquired,
        "{}: an ended lease is free",
        b.name
    );
    // The holder ends its lease early by writing `until = now`.
    assert_eq!(
        take(&second, secs(41), secs(41)).await,
        LeaseOutcome::Acquired
    );
    assert_eq!(
        take(&first, secs(50), secs(41)).await,
        LeaseOutcome::Acquired
    );
    // Leases are per call: the other call is free, and none shows as a result.
    assert_eq!(
        b.tasks
            .lease_call(t, id, calls[1], &lease(&second, secs(30)), now)
            .await
            .unwrap(),
        LeaseOutcome::Acquired
    );
    let record = b.tasks.get_with_calls(t, id).await.unwrap().unwrap();
    assert!(record.calls.is_empty(), "{}: {:?}", b.name, record.calls);
}

async fn of_concurrent_deliveries_one_takes_the_lease(b: Backend) {
    let task = new_task("acme", None);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let calls = running_with_calls(b.tasks.as_ref(), &task, 1).await;
    let now = Utc::now();
    let outcomes = join_all((0..10).map(|_| {
        let tasks = b.tasks.clone();
        let task = task.clone();
        let call = calls[0];
        async move {
            let lease = CallLease {
                holder: LeaseHolder::new(),
                until: now + chrono::Duration::seconds(30),
            };
            tasks
                .lease_call(&task.tenant, task.task_id, call, &lease, now)
                .await
                .unwrap()
        }
    }))
    .await;
    let acquired = outcomes
        .iter()
        .filter(|o| **o == LeaseOutcome::Acquired)
        .count();
    assert_eq!(acquired, 1, "{}: {outcomes:?}", b.name);
}

/// A task whose content is `kb` kilobytes of ASCII.
fn task_of_size(tenant_name: &str, kb: usize) -> Task {
    let request: TaskRequest = serde_json::from_value(json!({
        "task_type": "text",
        "content": "x".repeat(kb * 1000),
    }))
    .unwrap();
    let (spec, _) = request.parse().unwrap();
    Task::new(tenant(tenant_name), spec, None, "user-1", Utc::now())
}

async fn an_item_over_400_kb_is_refused_and_changes_nothing(b: Backend) {
    let task = new_task("acme", None);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let calls = running_with_calls(b.tasks.as_ref(), &task, 2).await;
    let (t, id) = (&task.tenant, task.task_id);
    let big = call_result(calls[0], &"y".repeat(450_000));
    let refused = b.tasks.put_call(t, id, &big, &[]).await;
    assert!(
        matches!(refused, Err(StoreError::ItemTooLarge { bytes }) if bytes > 400 * 1024),
        "{}: {refused:?}",
        b.name
    );
    let refused = b.tasks.record_call(t, id, &big, &[]).await;
    assert!(
        matches!(refused, Err(StoreError::ItemTooLarge { .. })),
        "{}: {refused:?}",
        b.name
    );
    // Below the limit, the whole answer is kept.
    let fits = call_result(calls[1], &"z".repeat(300_000));
    b.tasks.put_call(t, id, &fits, &[]).await.unwrap();
    let record = b.tasks.get_with_calls(t, id).await.unwrap().unwrap();
    assert_eq!(record.calls.len(), 1, "{}", b.name);
    assert_eq!(
        record.calls[0].output.as_deref().map(str::len),
        Some(300_000)
    );

    // DynamoDB also refuses an UpdateItem that would grow an item past the
    // limit (moto does not check updates; the memory backend's unit tests do).
}

async fn pages_of_large_tasks_list_every_task_once_newest_first(b: Backend) {
    // Requests of about 190 KB: the list index holds keys only, and the
    // tasks are read by key (past 16 MB, DynamoDB returns the rest as
    // unprocessed keys, read again).
    let mut created = Vec::new();
    for _ in 0..8 {
        let task = task_of_size("acme", 190);
        b.tasks
            .create(&task, &maof_tests::created(&task))
            .await
            .unwrap();
        created.push(task.task_id);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    created.reverse();
    let t = tenant("acme");
    let first = b.tasks.list(&t, 3, None).await.unwrap();
    assert_eq!(first.items.len(), 3, "{}", b.name);
    assert!(
        first.items.iter().all(|t| t.spec.content.len() == 190_000),
        "{}: whole tasks",
        b.name
    );
    let mut seen: Vec<_> = first.items.iter().map(|t| t.task_id).collect();
    let mut cursor = first.next;
    while let Some(next) = cursor {
        let page = b.tasks.list(&t, 3, Some(&next)).await.unwrap();
        seen.extend(page.items.iter().map(|t| t.task_id));
        cursor = page.next;
    }
    assert_eq!(seen, created, "{}: every task once, newest first", b.name);
    let all = b.tasks.list(&t, 100, None).await.unwrap();
    assert_eq!(all.items.len(), 8, "{}", b.name);
    assert_eq!(all.next, None, "{}", b.name);
}

async fn calls_that_land_after_the_task_ended_are_added_once(b: Backend) {
    let task = new_task("acme", None);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let calls = running_with_calls(b.tasks.as_ref(), &task, 3).await;
    let (t, id) = (&task.tenant, task.task_id);
    let first = call_result(calls[0], "first");
    // Cancelled with one call counted.
    let patch = TaskPatch {
        usage: Some(first.usage),
        cost_usd: first.cost_usd,
        counted_calls: Some([calls[0]].into()),
        ..TaskPatch::default()
    };
    let ended = b
        .tasks
        .transition(&task, TaskStatus::Cancelled, patch, Utc::now())
        .await
        .unwrap();
    let late = call_result(calls[1], "late");
    // Given the task as read before it ended, or after: the same outcome.
    b.tasks
        .add_late_calls(&task, &[first.clone(), late.clone()])
        .await
        .unwrap();
    b.tasks
        .add_late_calls(&ended, std::slice::from_ref(&late))
        .await
        .unwrap();
    let now = b.tasks.get(t, id).await.unwrap().unwrap();
    assert_eq!(now.status, TaskStatus::Cancelled, "{}", b.name);
    assert_eq!(
        now.usage.input_tokens,
        first.usage.input_tokens + late.usage.input_tokens,
        "{}: the late call is added once",
        b.name
    );
    assert_eq!(
        now.cost_usd,
        Some(first.cost_usd.unwrap() + late.cost_usd.unwrap()),
        "{}",
        b.name
    );
    // A late call of unknown cost makes the task's cost unknown, not smaller.
    let mut unpriced = call_result(calls[2], "unpriced");
    unpriced.cost_usd = None;
    b.tasks.add_late_calls(&now, &[unpriced]).await.unwrap();
    let now = b.tasks.get(t, id).await.unwrap().unwrap();
    assert_eq!(now.cost_usd, None, "{}", b.name);
    assert_eq!(now.counted_calls.len(), 3, "{}", b.name);
    // An unfinished task is left alone.
    let running = new_task("acme", None);
    b.tasks
        .create(&running, &maof_tests::created(&running))
        .await
        .unwrap();
    b.tasks
        .add_late_calls(&running, &[call_result(CallId::new(), "x")])
        .await
        .unwrap();
    let untouched = b.tasks.get(t, running.task_id).await.unwrap().unwrap();
    assert_eq!(untouched.usage, Usage::default(), "{}", b.name);
}

/// A single call's result and its task's finish are one write: both, or
/// (the result stored already, the task moved on) neither.
async fn a_single_calls_result_finishes_its_task_in_one_write_or_none(b: Backend) {
    let finishing = |call: CallId, output: &str| TaskPatch {
        result: Some(AggregateResult {
            strategy: AggregationStrategy::First,
            output: output.to_owned(),
            output_ref: None,
            confidence: 1.0,
            candidates: Vec::new(),
            conflicts: Vec::new(),
        }),
        counted_calls: Some(BTreeSet::from([call])),
        ..TaskPatch::default()
    };
    let finish = |running: Task, call: CallId, output: &'static str| {
        let tasks = b.tasks.clone();
        async move {
            tasks
                .finish_with_call(
                    &running,
                    TaskStatus::Completed,
                    finishing(call, output),
                    &call_result(call, output),
                    &[],
                    Utc::now(),
                )
                .await
                .unwrap()
        }
    };
    // The short way: the result and the finish together.
    let task = new_task("acme", None);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let calls = running_with_calls(b.tasks.as_ref(), &task, 1).await;
    let running = b
        .tasks
        .get(&task.tenant, task.task_id)
        .await
        .unwrap()
        .unwrap();
    let finished = finish(running.clone(), calls[0], "the answer").await;
    assert_eq!(
        finished.map(|t| t.status),
        Some(TaskStatus::Completed),
        "{}",
        b.name
    );
    let record = b
        .tasks
        .get_with_calls(&task.tenant, task.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.task.status, TaskStatus::Completed, "{}", b.name);
    assert_eq!(record.calls.len(), 1, "{}", b.name);
    // A second delivery's finds the task finished: nothing written.
    let again = finish(running, calls[0], "another").await;
    assert!(again.is_none(), "{}", b.name);
    let record = b
        .tasks
        .get_with_calls(&task.tenant, task.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record.calls[0].output.as_deref(),
        Some("the answer"),
        "{}",
        b.name
    );
    // A result stored already (by a delivery that then stopped): the task
    // is not finished from another, and stays running for the long way.
    let task = new_task("acme", None);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let calls = running_with_calls(b.tasks.as_ref(), &task, 1).await;
    let running = b
        .tasks
        .get(&task.tenant, task.task_id)
        .await
        .unwrap()
        .unwrap();
    b.tasks
        .put_call(
            &task.tenant,
            task.task_id,
            &call_result(calls[0], "first"),
            &[],
        )
        .await
        .unwrap();
    let refused = finish(running, calls[0], "second").await;
    assert!(refused.is_none(), "{}", b.name);
    let record = b
        .tasks
        .get_with_calls(&task.tenant, task.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.task.status, TaskStatus::Running, "{}", b.name);
    assert_eq!(
        record.calls[0].output.as_deref(),
        Some("first"),
        "{}",
        b.name
    );
}

on_both_backends!(
    calls_that_land_after_the_task_ended_are_added_once,
    an_item_over_400_kb_is_refused_and_changes_nothing,
    pages_of_large_tasks_list_every_task_once_newest_first,
    a_call_lease_is_held_by_one_delivery_at_a_time,
    of_concurrent_deliveries_one_takes_the_lease,
    a_created_task_reads_back_whole,
    a_duplicate_create_is_refused,
    a_reused_idempotency_key_returns_the_first_task,
    a_transition_from_the_wrong_state_is_refused,
    only_one_of_concurrent_transitions_wins,
    exactly_one_fan_in_claim_wins,
    the_first_result_of_a_call_wins,
    put_call_stores_once_without_counting,
    a_tenant_cannot_reach_another_tenants_task,
    a_tenants_tasks_list_newest_first_in_pages,
    usage_and_cost_survive_storage_exactly,
    a_single_calls_result_finishes_its_task_in_one_write_or_none,
);
