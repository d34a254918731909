//! Combining call results into a task's answer: pure.

use serde_json::json;

use super::call::{CallResult, CallStatus, ErrorClass, Usage};
use super::money::Usd;
use super::task::{AggregateResult, AggregationStrategy, Task, TaskError, TaskPatch, TaskStatus};

/// The final status and fields of a task whose calls are all done.
/// What a task's calls used and cost, in all: the cost is unknown (`None`)
/// if any call's is, never a silent zero.
pub fn totals(calls: &[CallResult]) -> (Usage, Option<Usd>) {
    let usage: Usage = calls.iter().map(|c| c.usage).sum();
    let cost: Option<Usd> = calls.iter().map(|c| c.cost_usd).sum();
    (usage, cost)
}

pub fn combine(task: &Task, calls: &[CallResult]) -> (TaskStatus, TaskPatch) {
    // Call order is the plan's order, whatever order results arrived in.
    let mut ordered: Vec<&CallResult> = calls.iter().collect();
    ordered.sort_by_key(|c| {
        task.plan
            .iter()
            .position(|p| p.call_id == c.call_id)
            .unwrap_or(usize::MAX)
    });
    let (usage, cost) = totals(calls);
    let succeeded: Vec<&&CallResult> = ordered
        .iter()
        .filter(|c| c.status == CallStatus::Succeeded)
        .collect();
    let mut patch = TaskPatch {
        usage: Some(usage),
        cost_usd: cost,
        counted_calls: Some(calls.iter().map(|c| c.call_id).collect()),
        ..TaskPatch::default()
    };
    if succeeded.is_empty() {
        let blocked: Vec<&str> = ordered
            .iter()
            .filter_map(|c| c.error.as_ref())
            .filter(|e| e.class == ErrorClass::ContentBlocked)
            .map(|e| e.message.as_str())
            .collect();
        if blocked.len() == ordered.len() {
            // Every answer was blocked: the task is, with the rules' names
            // (the messages hold the names only, never the text).
            patch.error = Some(TaskError::new(
                "content_blocked",
                format!("every answer was blocked: {}", blocked.join("; ")),
            ));
            return (TaskStatus::Failed, patch);
        }
        let reasons: Vec<String> = ordered
            .iter()
            .map(|c| match &c.error {
                Some(e) => format!("{}: {:?}: {}", c.agent_id, e.class, e.message),
                None => format!("{}: failed", c.agent_id),
            })
            .collect();
        patch.error = Some(TaskError::new(
            "all_calls_failed",
            format!("every call failed: {}", reasons.join("; ")),
        ));
        return (TaskStatus::Failed, patch);
    }
    let candidate = |c: &CallResult| json!({"call_id": c.call_id, "agent_id": c.agent_id, "output": c.output.as_deref().unwrap_or("")});
    let result = match task.spec.aggregation {
        AggregationStrategy::All => AggregateResult {
            strategy: AggregationStrategy::All,
            output: succeeded
                .iter()
                .map(|c| format!("[{}] {}", c.agent_id, c.output.as_deref().unwrap_or("")))
                .collect::<Vec<_>>()
                .join("\n\n"),
            output_ref: None,
            confidence: succeeded.len() as f64 / ordered.len() as f64,
            candidates: succeeded.iter().map(|c| candidate(c)).collect(),
            conflicts: Vec::new(),
        },
        // First is the default; other strategies are refused at intake until offered.
        _ => AggregateResult {
            strategy: AggregationStrategy::First,
            output: succeeded[0].output.clone().unwrap_or_default(),
            output_ref: None,
            confidence: 1.0,
            candidates: vec![candidate(succeeded[0])],
            conflicts: Vec::new(),
        },
    };
    patch.result = Some(result);
    (TaskStatus::Completed, patch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        AgentId, CallError, CallId, ErrorClass, PlannedCall, Provider, TaskRequest, TenantId,
    };
    use chrono::Utc;

    fn task(aggregation: &str, n: usize) -> (Task, Vec<CallId>) {
        let req: TaskRequest = serde_json::from_value(
            json!({"task_type": "text", "content": "x", "aggregation": {"strategy": aggregation}}),
        )
        .unwrap();
        let mut task = Task::new(
            TenantId::parse("t").unwrap(),
            req.parse().unwrap().0,
            None,
            "u",
            Utc::now(),
        );
        let calls: Vec<CallId> = (0..n).map(|_| CallId::new()).collect();
        task.plan = calls
            .iter()
            .enumerate()
            .map(|(i, c)| PlannedCall {
                call_id: *c,
                agent_id: AgentId::parse(format!("a{i}")).unwrap(),
                hold: None,
                fallbacks: Vec::new(),
                probe: false,
            })
            .collect();
        (task, calls)
    }

    fn result(call: CallId, i: usize, ok: bool, cost: Option<&str>) -> CallResult {
        CallResult {
            call_id: call,
            agent_id: AgentId::parse(format!("a{i}")).unwrap(),
            provider: Some(Provider::Mock),
            status: if ok {
                CallStatus::Succeeded
            } else {
                CallStatus::Failed
            },
            output: ok.then(|| format!("out{i}")),
            output_ref: None,
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
                ..Usage::default()
            },
            cost_usd: cost.map(|c| Usd::parse(c).unwrap()),
            latency_ms: 1,
            attempts: 1,
            error: (!ok).then(|| CallError {
                class: ErrorClass::Server,
                message: "boom".into(),
            }),
            retried_errors: Vec::new(),
            finished_at: Utc::now(),
            truncated: false,
            fell_back_from: Vec::new(),
            settles: None,
        }
    }

    #[test]
    fn first_takes_the_first_success_in_plan_order() {
        let (task, calls) = task("first", 3);
        // Arrival order differs from plan order; call 0 failed.
        let results = vec![
            result(calls[2], 2, true, Some("0.3")),
            result(calls[0], 0, false, Some("0")),
            result(calls[1], 1, true, Some("0.1")),
        ];
        let (status, patch) = combine(&task, &results);
        assert_eq!(status, TaskStatus::Completed);
        assert_eq!(patch.result.unwrap().output, "out1");
        assert_eq!(patch.usage.unwrap().input_tokens, 30);
        assert_eq!(patch.cost_usd, Some(Usd::parse("0.4").unwrap()));
    }

    #[test]
    fn all_attributes_every_success() {
        let (task, calls) = task("all", 2);
        let results = vec![
            result(calls[0], 0, true, Some("0.1")),
            result(calls[1], 1, true, None),
        ];
        let (status, patch) = combine(&task, &results);
        assert_eq!(status, TaskStatus::Completed);
        let r = patch.result.unwrap();
        assert_eq!(r.output, "[a0] out0\n\n[a1] out1");
        assert_eq!(r.candidates.len(), 2);
        assert_eq!(
            patch.cost_usd, None,
            "one unknown cost makes the total unknown"
        );
    }

    #[test]
    fn every_call_failing_fails_the_task_with_reasons() {
        let (task, calls) = task("first", 2);
        let results = vec![
            result(calls[0], 0, false, None),
            result(calls[1], 1, false, None),
        ];
        let (status, patch) = combine(&task, &results);
        assert_eq!(status, TaskStatus::Failed);
        let error = patch.error.unwrap();
        assert_eq!(error.code, "all_calls_failed");
        assert!(error.message.contains("a0: Server: boom"));
    }
}
