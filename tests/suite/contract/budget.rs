//! The spend counters behind budgets: a plan's hold is written with the plan
//! or not at all, and a call's result settles its reservation exactly once.

use chrono::{NaiveDate, Utc};
use futures::future::join_all;
use maof::domain::{
    AgentId, Budgets, CallHold, CallId, Hold, Period, PlannedCall, Settlement, Spend, Task,
    TaskPatch, TaskRequest, TaskStatus, TenantId, Usd,
};
use maof::ports::{FanIn, SpendOn, StoreError, TaskStore};
use maof_tests::backends::Backend;
use serde_json::json;

use super::on_both_backends;
use super::task_store::call_result;

fn usd(s: &str) -> Usd {
    Usd::parse(s).unwrap()
}

fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 26).unwrap()
}

/// A tenant of its own per test, so runs on a shared table never meet.
fn fresh_tenant() -> TenantId {
    TenantId::parse(format!("budget-{}", CallId::new()).to_lowercase()).unwrap()
}

fn queued(tenant: &TenantId) -> Task {
    let request: TaskRequest =
        serde_json::from_value(json!({"task_type": "text", "content": "x"})).unwrap();
    let (spec, _) = request.parse().unwrap();
    Task::new(tenant.clone(), spec, None, "user-1", Utc::now())
}

/// Plans `task` with one call per amount, holding their sum under `budgets`.
async fn plan(
    store: &dyn TaskStore,
    task: &Task,
    amounts: &[&str],
    budgets: Budgets,
) -> Result<Task, StoreError> {
    let holds: Vec<CallHold> = amounts
        .iter()
        .map(|a| CallHold {
            amount: usd(a),
            max_tokens: 100,
            day: Some(day()),
        })
        .collect();
    let plan: Vec<PlannedCall> = holds
        .iter()
        .map(|hold| PlannedCall {
            call_id: CallId::new(),
            agent_id: AgentId::parse("mock-a").unwrap(),
            hold: Some(*hold),
            fallbacks: Vec::new(),
            probe: false,
        })
        .collect();
    let patch = TaskPatch {
        expected_calls: Some(plan.len() as u32),
        plan: Some(plan),
        hold: Some(Hold {
            day: day(),
            amount: holds.iter().map(|h| h.amount).sum(),
            budgets,
        }),
        ..TaskPatch::default()
    };
    store
        .transition(task, TaskStatus::Running, patch, Utc::now())
        .await
}

fn spend(spent: &str, reserved: &str) -> Spend {
    Spend {
        spent: usd(spent),
        reserved: usd(reserved),
    }
}

fn daily(limit: &str) -> Budgets {
    Budgets {
        daily_usd: Some(usd(limit)),
        monthly_usd: None,
    }
}

async fn a_hold_is_written_with_the_plan_or_not_at_all(b: Backend) {
    let name = b.name;
    let tenant = fresh_tenant();
    let first = queued(&tenant);
    b.tasks
        .create(&first, &maof_tests::created(&first))
        .await
        .unwrap();
    let planned = plan(&*b.tasks, &first, &["0.0000198", "0.3"], daily("0.5"))
        .await
        .unwrap();
    assert_eq!(planned.status, TaskStatus::Running, "{name}");
    assert_eq!(planned.plan.len(), 2, "{name}");
    let held = b.tasks.spend(&tenant, day()).await.unwrap();
    assert_eq!(
        held,
        SpendOn {
            day: spend("0", "0.3000198"),
            month: spend("0", "0.3000198"),
        },
        "{name}: the hold is counted exactly, on the day and its month"
    );
    // What is left (0.1999802) cannot hold 0.2: refused, nothing written.
    let second = queued(&tenant);
    b.tasks
        .create(&second, &maof_tests::created(&second))
        .await
        .unwrap();
    let refused = plan(&*b.tasks, &second, &["0.2"], daily("0.5")).await;
    assert!(
        matches!(refused, Err(StoreError::OverBudget(Period::Day))),
        "{name}: {refused:?}"
    );
    let still = b.tasks.get(&tenant, second.task_id).await.unwrap().unwrap();
    assert_eq!(still.status, TaskStatus::Queued, "{name}: not planned");
    assert!(still.plan.is_empty(), "{name}");
    assert_eq!(b.tasks.spend(&tenant, day()).await.unwrap(), held, "{name}");
    // The month's budget refuses on its own.
    let monthly = Budgets {
        daily_usd: None,
        monthly_usd: Some(usd("0.4")),
    };
    let refused = plan(&*b.tasks, &second, &["0.1"], monthly).await;
    assert!(
        matches!(refused, Err(StoreError::OverBudget(Period::Month))),
        "{name}: {refused:?}"
    );
    // Exactly what is left fits.
    let fits = plan(&*b.tasks, &second, &["0.1999802"], daily("0.5")).await;
    assert!(fits.is_ok(), "{name}: {fits:?}");
    assert_eq!(
        b.tasks.spend(&tenant, day()).await.unwrap().day,
        spend("0", "0.5"),
        "{name}"
    );
    // A task already planned is refused as a transition, holding nothing.
    let again = plan(&*b.tasks, &first, &["0"], daily("10")).await;
    assert!(
        matches!(again, Err(StoreError::Transition(_))),
        "{name}: {again:?}"
    );
    assert_eq!(
        b.tasks.spend(&tenant, day()).await.unwrap().day,
        spend("0", "0.5"),
        "{name}"
    );
}

async fn a_result_settles_its_reservation_once(b: Backend) {
    let name = b.name;
    let tenant = fresh_tenant();
    let task = queued(&tenant);
    b.tasks
        .create(&task, &maof_tests::created(&task))
        .await
        .unwrap();
    let task = plan(&*b.tasks, &task, &["0.5", "0.25"], daily("1"))
        .await
        .unwrap();
    let (one, two) = (task.plan[0].call_id, task.plan[1].call_id);
    let settled = |call: CallId, cost: Option<&str>| {
        let mut result = call_result(call, "answer");
        result.cost_usd = cost.map(usd);
        result.settles = task.settlement(call);
        result
    };
    assert_eq!(
        task.settlement(one),
        Some(Settlement {
            day: day(),
            reserved: usd("0.5")
        })
    );
    // The single-call path (put_call), delivered three times at once.
    let first = settled(one, Some("0.0000198"));
    join_all((0..3).map(|_| b.tasks.put_call(&tenant, task.task_id, &first, &[]))).await;
    assert_eq!(
        b.tasks.spend(&tenant, day()).await.unwrap().day,
        spend("0.0000198", "0.25"),
        "{name}: settled once, whatever the deliveries"
    );
    // The fan-in path (record_call), twice; an unknown cost stands as the
    // reservation.
    let second = settled(two, None);
    let outcomes: Vec<_> =
        join_all((0..2).map(|_| b.tasks.record_call(&tenant, task.task_id, &second, &[])))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    assert!(outcomes.contains(&FanIn::Waiting {
        done: 1,
        expected: 2
    }));
    let after = b.tasks.spend(&tenant, day()).await.unwrap();
    assert_eq!(after.day, spend("0.2500198", "0"), "{name}");
    assert_eq!(after.month, after.day, "{name}");
    // A counter back at zero reserved takes the next hold (DynamoDB keeps
    // the sum of decimals exact, zero included).
    let next = queued(&tenant);
    b.tasks
        .create(&next, &maof_tests::created(&next))
        .await
        .unwrap();
    plan(&*b.tasks, &next, &["0.1"], daily("1")).await.unwrap();
    assert_eq!(
        b.tasks.spend(&tenant, day()).await.unwrap().day,
        spend("0.2500198", "0.1"),
        "{name}"
    );
    // Another day and another tenant are untouched.
    let tomorrow = day().succ_opt().unwrap();
    assert_eq!(
        b.tasks.spend(&tenant, tomorrow).await.unwrap().day,
        Spend::default(),
        "{name}"
    );
    assert_eq!(
        b.tasks.spend(&fresh_tenant(), day()).await.unwrap(),
        SpendOn::default(),
        "{name}"
    );
}

async fn concurrent_holds_never_commit_more_than_the_budget(b: Backend) {
    let name = b.name;
    let tenant = fresh_tenant();
    let tasks: Vec<Task> = (0..20).map(|_| queued(&tenant)).collect();
    for task in &tasks {
        b.tasks
            .create(task, &maof_tests::created(task))
            .await
            .unwrap();
    }
    // Twenty holds of 0.1 against 0.75: exactly seven fit.
    let outcomes = join_all(
        tasks
            .iter()
            .map(|task| plan(&*b.tasks, task, &["0.1"], daily("0.75"))),
    )
    .await;
    let planned = outcomes.iter().filter(|o| o.is_ok()).count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Err(StoreError::OverBudget(Period::Day))))
        .count();
    assert_eq!((planned, refused), (7, 13), "{name}: {outcomes:?}");
    assert_eq!(
        b.tasks.spend(&tenant, day()).await.unwrap().day,
        spend("0", "0.7"),
        "{name}"
    );
}

on_both_backends!(
    a_hold_is_written_with_the_plan_or_not_at_all,
    a_result_settles_its_reservation_once,
    concurrent_holds_never_commit_more_than_the_budget,
);
