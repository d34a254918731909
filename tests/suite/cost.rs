//! `maof bench --cost`'s measurement (`maof::cost_bench`) on a small
//! workload: tiered routing costs less than quality routing, and the
//! escalations it makes are counted.

use maof::cost_bench::{Prompt, measure, to_f64, workload};

fn prompt(task_type: &str, content: &str) -> Prompt {
    Prompt {
        task_type: task_type.into(),
        content: content.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_costs_less_than_quality_and_counts_its_escalations() {
    // 70 words, no sign of difficulty: tier 1 by the heuristic, but longer
    // than the scripted tier 1 answers in full (60 words), so it escalates
    // once, to tier 2 (which answers up to 96).
    let long = "please summarize this ".repeat(23) + "now";
    let prompts = [
        prompt("text", "What is the capital of Australia?"),
        prompt("classification", "Spam or not: you won a cruise!"),
        prompt(
            "translation",
            "Translate into German: keep the door closed.",
        ),
        prompt("text", &long),
        prompt(
            "code",
            "Why does this panic?\n```rust\nlet v: Vec<i32> = vec![];\nv[0];\n```",
        ),
    ];
    let report = measure(&prompts)
        .await
        .unwrap_or_else(|e| panic!("measuring: {e}"));
    for run in [&report.tiered, &report.quality] {
        assert_eq!((run.tasks, run.failed), (5, 0), "{run:?}");
        assert_eq!(run.outputs.len(), 5);
        assert!(run.outputs.iter().all(Option::is_some), "{run:?}");
    }
    assert_eq!(
        (report.tiered.escalated, report.tiered.escalations),
        (1, 1),
        "{:?}",
        report.tiered
    );
    // Quality calls tier 3 for everything: nothing to escalate.
    assert_eq!(report.quality.escalated, 0);
    let (tiered, quality) = (
        to_f64(report.tiered.total_cost),
        to_f64(report.quality.total_cost),
    );
    assert!(
        tiered > 0.0 && tiered < quality,
        "tiered ${tiered} against quality ${quality}"
    );
    assert!((report.savings() - (1.0 - tiered / quality)).abs() < 1e-12);
    // The escalated prompt's answer is tier 2's whole one: tier 3 agrees
    // unless it is among tier 2's scripted wrong answers.
    assert!(report.agreed <= 5, "{report:?}");
    assert_eq!(
        report.tiered.outputs[3].as_deref().map(str::len),
        Some(1600),
        "the escalated answer is whole"
    );
}

#[test]
fn the_fixed_workload_parses() {
    let prompts = workload().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(prompts.len(), 32);
}
