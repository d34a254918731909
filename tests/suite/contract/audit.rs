//! The audit logs on both backends: entries kept once, per log, paged over
//! the shards newest first; an action's entry written with its action or
//! not at all.

use chrono::{DateTime, Duration, TimeZone, Utc};
use maof::domain::{
    Action, AgentId, AgentSpec, AuditEntry, AuditQuery, IdempotencyKey, Origin, Owner, Principal,
    Role, Task, TaskError, TaskPatch, TaskRequest, TaskStatus, TenantId,
};
use maof::ports::{Expect, StoreError};
use maof_tests::backends::Backend;
use serde_json::json;

use super::on_both_backends;

fn tenant(t: &str) -> TenantId {
    TenantId::parse(t).unwrap()
}

fn admin(t: &str) -> Principal {
    Principal {
        sub: "ana".into(),
        tenant: tenant(t),
        roles: vec![Role::Admin],
    }
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000, 0).unwrap() + Duration::seconds(secs)
}

fn query(limit: u32) -> AuditQuery {
    AuditQuery {
        limit,
        ..AuditQuery::default()
    }
}

/// Every entry `query` matches in `log`, page by page.
async fn read_all(b: &Backend, log: &Owner, mut query: AuditQuery) -> Vec<AuditEntry> {
    let mut entries = Vec::new();
    for _ in 0..200 {
        let page = b.audit.list(log, &query).await.unwrap();
        assert!(page.items.len() <= query.limit as usize);
        entries.extend(page.items);
        match page.next {
            Some(next) => query.before = Some(maof::domain::AuditId::parse(&next).unwrap()),
            None => return entries,
        }
    }
    panic!("{}: the log never ended", b.name);
}

fn task(t: &str, key: Option<&str>) -> Task {
    let request: TaskRequest =
        serde_json::from_value(json!({"task_type": "text", "content": "hi"})).unwrap();
    let (spec, _) = request.parse().unwrap();
    Task::new(
        tenant(t),
        spec,
        key.map(|k| IdempotencyKey::parse(k).unwrap()),
        "ana",
        Utc::now(),
    )
}

async fn entries_are_kept_once_in_their_own_log(b: Backend) {
    let acme = admin("acme");
    let limited = AuditEntry::rate_limited(&acme, &Origin::request("r-1"), "rpm", at(0));
    b.audit.record(&limited).await.unwrap();
    // A redelivered action records the same entry: still one.
    b.audit.record(&limited).await.unwrap();
    b.audit
        .record(&AuditEntry::rate_limited(
            &admin("globex"),
            &Origin::default(),
            "tpm",
            at(1),
        ))
        .await
        .unwrap();
    b.audit
        .record(&AuditEntry::access_denied(
            None,
            "GET /v1/tasks",
            "token_missing",
            None,
            at(2),
        ))
        .await
        .unwrap();
    let acme_log = read_all(&b, &Owner::Tenant(tenant("acme")), query(10)).await;
    assert_eq!(acme_log, [limited], "{}", b.name);
    let globex_log = read_all(&b, &Owner::Tenant(tenant("globex")), query(10)).await;
    assert_eq!(globex_log.len(), 1, "{}", b.name);
    assert_eq!(globex_log[0].detail.limit.as_deref(), Some("tpm"));
    let platform = read_all(&b, &Owner::Platform, query(10)).await;
    assert_eq!(platform.len(), 1, "{}", b.name);
    assert_eq!(platform[0].actor.sub, None);
    assert!(
        read_all(&b, &Owner::Tenant(tenant("initech")), query(10))
            .await
            .is_empty()
    );
}

async fn a_log_pages_over_its_shards_by_action_and_time(b: Backend) {
    let acme = admin("acme");
    let log = Owner::Tenant(tenant("acme"));
    let mut written = Vec::new();
    for i in 0..40 {
        let entry = if i % 3 == 0 {
            AuditEntry::rate_limited(&acme, &Origin::default(), "rpm", at(i))
        } else {
            AuditEntry::input_blocked(&acme, &Origin::default(), "content", "rule", at(i))
        };
        b.audit.record(&entry).await.unwrap();
        written.push(entry);
    }
    written.reverse();
    let all = read_all(&b, &log, query(7)).await;
    assert_eq!(all, written, "{}: every entry once, newest first", b.name);
    let limited = read_all(
        &b,
        &log,
        AuditQuery {
            action: Some(Action::RateLimited),
            ..query(3)
        },
    )
    .await;
    let expected: Vec<AuditEntry> = written
        .iter()
        .filter(|e| e.action == Action::RateLimited)
        .cloned()
        .collect();
    assert_eq!(limited, expected, "{}", b.name);
    let window = read_all(
        &b,
        &log,
        AuditQuery {
            from: Some(at(10)),
            to: Some(at(19)),
            ..query(4)
        },
    )
    .await;
    assert_eq!(window.len(), 10, "{}", b.name);
    assert!(window.iter().all(|e| e.at >= at(10) && e.at <= at(19)));
}

async fn a_tasks_creation_is_audited_with_it_or_not_at_all(b: Backend) {
    let log = Owner::Tenant(tenant("acme"));
    let first = task("acme", Some("k-1"));
    let entry = AuditEntry::task_created_by_submitter(&first);
    b.tasks.create(&first, &entry).await.unwrap();
    // The same key again: refused, and its entry is not written.
    let second = task("acme", Some("k-1"));
    let refused = AuditEntry::task_created_by_submitter(&second);
    assert!(matches!(
        b.tasks.create(&second, &refused).await,
        Err(StoreError::DuplicateIdempotencyKey(id)) if id == first.task_id
    ));
    // The same task id again (no key): refused, nothing written.
    let plain = task("acme", None);
    b.tasks
        .create(&plain, &AuditEntry::task_created_by_submitter(&plain))
        .await
        .unwrap();
    let mut again = AuditEntry::task_created_by_submitter(&plain);
    again.id = maof::domain::AuditId::new(Utc::now() + Duration::seconds(1));
    assert!(matches!(
        b.tasks.create(&plain, &again).await,
        Err(StoreError::AlreadyExists)
    ));
    let entries = read_all(&b, &log, query(10)).await;
    let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
    assert_eq!(entries.len(), 2, "{}: {entries:?}", b.name);
    assert!(ids.contains(&entry.id) && !ids.contains(&refused.id) && !ids.contains(&again.id));
    assert!(entries.iter().all(|e| e.action == Action::TaskCreated));
}

async fn a_transition_writes_its_entry_with_it_and_a_refused_one_none(b: Backend) {
    let log = Owner::Tenant(tenant("acme"));
    let task = task("acme", None);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let cancel = |audit: AuditEntry| TaskPatch {
        error: Some(TaskError::new("cancelled", "by ana")),
        audit: Some(audit),
        ..TaskPatch::default()
    };
    let origin = Origin::request("r-9");
    let first = AuditEntry::task_cancelled(&task, &admin("acme"), &origin, Utc::now());
    b.tasks
        .transition(
            &task,
            TaskStatus::Cancelled,
            cancel(first.clone()),
            Utc::now(),
        )
        .await
        .unwrap();
    let second = AuditEntry::task_cancelled(
        &task,
        &admin("acme"),
        &origin,
        Utc::now() + Duration::seconds(1),
    );
    assert!(matches!(
        b.tasks
            .transition(&task, TaskStatus::Cancelled, cancel(second), Utc::now())
            .await,
        Err(StoreError::Transition(_))
    ));
    let cancelled: Vec<AuditEntry> = read_all(&b, &log, query(10))
        .await
        .into_iter()
        .filter(|e| e.action == Action::TaskCancelled)
        .collect();
    assert_eq!(cancelled, [first], "{}", b.name);
}

async fn registry_writes_carry_their_entry_and_a_refused_write_none(b: Backend) {
    let acme = Owner::Tenant(tenant("acme"));
    let id = AgentId::parse("helper").unwrap();
    let spec: AgentSpec = serde_json::from_value(
        json!({"name": "h", "provider": "mock", "model": "echo", "capabilities": ["text"]}),
    )
    .unwrap();
    let p = admin("acme");
    let origin = Origin::default();
    let entry = |action, secs| {
        AuditEntry::agent_written(&acme, "helper", action, vec![], &p, &origin, at(secs))
    };
    let created = entry(Action::AgentCreated, 0);
    b.registry
        .put(&acme, &id, spec.clone(), Expect::Absent, Some(&created))
        .await
        .unwrap();
    let stale = entry(Action::AgentChanged, 1);
    assert!(matches!(
        b.registry
            .put(&acme, &id, spec.clone(), Expect::Version(7), Some(&stale))
            .await,
        Err(StoreError::VersionConflict { current: Some(1) })
    ));
    let gone = entry(Action::AgentDeleted, 2);
    b.registry
        .delete(&acme, &id, Expect::Version(1), Some(&gone))
        .await
        .unwrap();
    let missing = entry(Action::AgentDeleted, 3);
    assert!(matches!(
        b.registry
            .delete(&acme, &id, Expect::Any, Some(&missing))
            .await,
        Err(StoreError::NotFound)
    ));
    let settings = AuditEntry::settings_changed(&tenant("acme"), vec![], &p, &origin, at(4));
    b.registry
        .put_settings(
            &tenant("acme"),
            &Default::default(),
            Expect::Absent,
            Some(&settings),
        )
        .await
        .unwrap();
    let stale_settings = AuditEntry::settings_changed(&tenant("acme"), vec![], &p, &origin, at(5));
    assert!(
        b.registry
            .put_settings(
                &tenant("acme"),
                &Default::default(),
                Expect::Absent,
                Some(&stale_settings)
            )
            .await
            .is_err()
    );
    let log = read_all(&b, &acme, query(10)).await;
    assert_eq!(log, [settings, gone, created], "{}", b.name);
}

async fn an_entry_too_large_for_an_item_is_refused(b: Backend) {
    let acme = Owner::Tenant(tenant("acme"));
    let p = admin("acme");
    let fields = (0..30_000).map(|i| format!("field-{i:08}")).collect();
    let huge = AuditEntry::agent_written(
        &acme,
        "helper",
        Action::AgentChanged,
        fields,
        &p,
        &Origin::default(),
        at(0),
    );
    assert!(b.audit.record(&huge).await.is_err(), "{}", b.name);
    assert!(read_all(&b, &acme, query(10)).await.is_empty());
}

on_both_backends!(
    entries_are_kept_once_in_their_own_log,
    a_log_pages_over_its_shards_by_action_and_time,
    a_tasks_creation_is_audited_with_it_or_not_at_all,
    a_transition_writes_its_entry_with_it_and_a_refused_one_none,
    registry_writes_carry_their_entry_and_a_refused_write_none,
    an_entry_too_large_for_an_item_is_refused,
);
