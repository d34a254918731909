//! `maof bench --cost`: what `tiered` routing saves against `quality`,
//! measured on a synthetic workload. The same prompts run through the whole
//! pipeline (intake, route, agent-call, aggregate) in process, on the memory
//! backend, once per strategy, against three scripted mock agents priced
//! like real tiers ([`tier_agents`]). The figures show the mechanism; real
//! savings depend on real prices, real prompts and real models' failures.
//!
//! An answer *agrees* when the two runs' final answers to a prompt are the
//! same text once trimmed. The scripted agents give the same answer to the
//! same prompt (`mock.untagged`), except for the share of prompts each
//! lower tier gets wrong without a sign (`mock.wrong_share`): a cheap model's
//! confident mistakes, which no escalation catches. A prompt longer than a
//! tier handles (`mock.max_words`) is answered cut off, which `tiered`
//! escalates.

use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use futures::future::join_all;
use serde::Deserialize;
use serde_json::json;

use crate::domain::{
    AgentId, AgentSpec, Origin, Owner, Principal, Role, TaskRequest, TaskStatus, TenantId, Usd,
};
use crate::ports::{Expect, TaskRecord};
use crate::providers::OutboundPolicy;
use crate::runner::{Runner, RunnerConfig};
use crate::stages::{Services, intake};

/// The fixed workload `maof bench --cost` runs: 32 prompts, 16 short and
/// simple, 6 long but simple (summaries, rewrites, extraction), 10 hard
/// (code with code blocks, proofs, analyses).
pub const WORKLOAD: &str = include_str!("../fixtures/cost_workload.json");

/// One task of the workload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompt {
    pub task_type: String,
    pub content: String,
}

/// [`WORKLOAD`], parsed.
pub fn workload() -> Result<Vec<Prompt>, serde_json::Error> {
    serde_json::from_str(WORKLOAD)
}

/// The three scripted tiers, priced per million tokens like the models they
/// stand in for (list prices): tier 1 as GPT-4o mini ($0.15 in, $0.60 out),
/// tier 2 as Claude Sonnet 4 ($3, $15), tier 3 as Claude Opus 4 ($15, $75).
/// Each answers about 400 tokens. Tier 1 answers prompts of up to 60 words
/// in full and gets 10% of prompts wrong; tier 2, up to 96 words and 3%;
/// tier 3 everything, and is the reference.
pub fn tier_agents() -> Result<Vec<(AgentId, AgentSpec)>, BoxError> {
    let tiers = [
        (
            "tier-1",
            "gpt-4o-mini",
            1,
            0.6,
            (0.15, 0.60),
            json!({"max_words": 60, "wrong_share": 0.10}),
        ),
        (
            "tier-2",
            "claude-sonnet-4",
            2,
            0.8,
            (3.0, 15.0),
            json!({"max_words": 96, "wrong_share": 0.03}),
        ),
        ("tier-3", "claude-opus-4", 3, 0.95, (15.0, 75.0), json!({})),
    ];
    tiers
        .into_iter()
        .map(|(id, model, tier, quality, (input, output), script)| {
            let mut mock = json!({"untagged": true, "output_bytes": 1600});
            if let (Some(mock), Some(script)) = (mock.as_object_mut(), script.as_object()) {
                mock.extend(script.clone());
            }
            let spec: AgentSpec = serde_json::from_value(json!({
                "name": format!("Scripted tier {tier} ({model} prices)"),
                "provider": "mock", "model": model,
                "capabilities": ["text", "code", "analysis", "classification", "translation"],
                "pricing": {"input_per_mtok": input, "output_per_mtok": output},
                "tier": tier, "quality": quality, "mock": mock,
            }))?;
            Ok((AgentId::parse(id)?, spec))
        })
        .collect()
}

/// One strategy's run of the workload.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategyRun {
    pub strategy: &'static str,
    pub tasks: usize,
    /// Tasks that did not complete.
    pub failed: usize,
    /// What every call cost, escalations included.
    pub total_cost: Usd,
    /// Tasks whose call escalated at least once.
    pub escalated: usize,
    /// Escalations in all (a task may climb two tiers).
    pub escalations: usize,
    /// The final answers, in the workload's order (`None`: no answer).
    pub outputs: Vec<Option<String>>,
}

/// Both runs, and how often their answers agree.
#[derive(Debug, Clone, PartialEq)]
pub struct CostReport {
    pub tiered: StrategyRun,
    pub quality: StrategyRun,
    /// Prompts whose two final answers are the same text, trimmed.
    pub agreed: usize,
}

impl CostReport {
    /// What `tiered` saves against `quality`, as a share of `quality`'s cost.
    pub fn savings(&self) -> f64 {
        let (tiered, quality) = (
            to_f64(self.tiered.total_cost),
            to_f64(self.quality.total_cost),
        );
        if quality > 0.0 {
            1.0 - tiered / quality
        } else {
            0.0
        }
    }
}

/// Dollars as a float, for shares and printing.
pub fn to_f64(usd: Usd) -> f64 {
    usd.amount().to_string().parse().unwrap_or(f64::NAN)
}

/// Runs `prompts` through `tiered` and through `quality`, in process on the
/// memory backend, with the [`tier_agents`] as the tenant's only agents.
pub async fn measure(prompts: &[Prompt]) -> Result<CostReport, BoxError> {
    let (svc, _) =
        crate::setup::memory_services(crate::setup::outbound(OutboundPolicy::strict())?)?;
    let principal = Principal {
        sub: "bench".into(),
        tenant: TenantId::parse("bench-cost")?,
        roles: vec![Role::Submitter],
    };
    let owner = Owner::Tenant(principal.tenant.clone());
    for (id, spec) in tier_agents()? {
        svc.registry
            .put(&owner, &id, spec, Expect::Any, None)
            .await?;
    }
    let runner = Runner::spawn(svc.clone(), RunnerConfig::default());
    let tiered = run(&svc, &principal, prompts, "tiered").await;
    let quality = run(&svc, &principal, prompts, "quality").await;
    runner.shutdown().await;
    let (tiered, quality) = (tiered?, quality?);
    let agreed = tiered
        .outputs
        .iter()
        .zip(&quality.outputs)
        .filter(|(a, b)| match (a, b) {
            (Some(a), Some(b)) => a.trim() == b.trim(),
            _ => false,
        })
        .count();
    Ok(CostReport {
        tiered,
        quality,
        agreed,
    })
}

/// Runs every prompt with `strategy`, at most 8 at once.
async fn run(
    svc: &Services,
    principal: &Principal,
    prompts: &[Prompt],
    strategy: &'static str,
) -> Result<StrategyRun, BoxError> {
    let mut records = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(8) {
        let done = join_all(chunk.iter().map(|p| one(svc, principal, p, strategy))).await;
        for record in done {
            records.push(record?);
        }
    }
    let mut run = StrategyRun {
        strategy,
        tasks: prompts.len(),
        failed: 0,
        total_cost: Usd::ZERO,
        escalated: 0,
        escalations: 0,
        outputs: Vec::with_capacity(prompts.len()),
    };
    for record in records {
        let escalations = record
            .calls
            .iter()
            .flat_map(|c| &c.fell_back_from)
            .filter(|h| h.escalated.is_some())
            .count();
        run.escalations += escalations;
        run.escalated += usize::from(escalations > 0);
        let task = record.task;
        if task.status != TaskStatus::Completed {
            run.failed += 1;
        }
        run.total_cost = run.total_cost
            + task
                .cost_usd
                .ok_or("a task's cost is unknown: every bench agent has prices")?;
        run.outputs.push(task.result.map(|r| r.output));
    }
    Ok(run)
}

/// Submits one prompt and waits until its task ends.
async fn one(
    svc: &Services,
    principal: &Principal,
    prompt: &Prompt,
    strategy: &str,
) -> Result<TaskRecord, BoxError> {
    let request: TaskRequest = serde_json::from_value(json!({
        "task_type": prompt.task_type, "content": prompt.content,
        "routing": {"strategy": strategy},
    }))?;
    let task = intake::submit(svc, principal, &Origin::default(), request, None)
        .await?
        .task;
    let record = intake::wait(
        svc,
        &principal.tenant,
        task.task_id,
        Duration::from_secs(30),
    )
    .await?
    .ok_or("a bench task disappeared")?;
    if !record.task.status.is_terminal() {
        return Err("a bench task did not finish in 30 s".into());
    }
    Ok(record)
}
