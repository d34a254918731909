//! AWS API operations per task: an SDK interceptor counts every operation
//! the pipeline's clients make, by service and operation, while tasks run
//! through the local runner on the AWS backend (moto locally). `maof bench
//! --aws-ops` prints the counts; a CI test holds them to [`CEILINGS`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use serde_json::json;

use crate::adapters::aws::{Bootstrap, ResourceNames};
use crate::domain::{
    AgentId, AgentSpec, Budgets, Origin, Owner, Principal, Role, TaskRequest, TaskStatus, TenantId,
    TenantSettings,
};
use crate::ports::Expect;
use crate::providers::OutboundPolicy;
use crate::runner::{Runner, RunnerConfig};
use crate::stages::intake;

/// A kind of task measured, and the most operations per task its pipeline
/// may make (Receive and Delete excluded: on AWS the Lambda trigger makes
/// them). A change that adds an operation raises its row here and says why.
///
/// | task | ceiling | why |
/// |---|---|---|
/// | 1 agent | 10 | intake: the rate-limit take (one conditional Update of the tenant's buckets, requests and tokens together), a Put of the request (once, in its own item) and a transaction (TransactWriteItems) of the small state with its `task.created` audit entry + Send; route Query + Update + SendBatch; agent-call Query + lease Put + one transaction of the result, its agent's health bucket and the task's finish (a task's only call finishes it in the write that stores it) |
/// | 3 agents | 22 | the same, with three results (a transaction each, with its agent's health bucket), three calls counted into the fan-in (Update each) and the aggregate hop (Send, Query, Update) |
/// | 1 agent, budgeted | 10 | the same as 1 agent: the plan's Update becomes a transaction (TransactWriteItems) with the tenant's day and month spend counters, and the result's transaction carries them too |
/// | 3 agents, budgeted | 22 | the same as 3 agents, likewise |
///
/// The rate-limit take is on with the defaults of a deployment (600
/// requests and 200,000 tokens a minute per tenant); a tenant whose token
/// subjects have limits of their own adds one more Update, and each call
/// of an agent with `rpm` or `tpm` one more at route (its buckets' take).
/// The rows are measured with the default routing strategy; a task routed
/// `round_robin` or `weighted` adds one Update at route (its turn of the
/// shared rotation counter, one write unit), the other strategies none.
///
/// The request's own item costs one call but saves write units on every
/// later write (DynamoDB bills by units, not calls): the state item written
/// on each transition is under 1 KB whatever the content's size.
///
/// Write units, 2 KB request, indexes included (`measure_units`):
///
/// | task | ceiling | why |
/// |---|---|---|
/// | 1 agent | 19 | rate-limit take 1 + request 3 + state with its audit entry 2 × (1 + 1) + route 1 + lease 1 + result, health bucket and finish 2 × (1 + 1 + 1); index entries: list 1, sweep in 1 and out 1. The audit entry costs 3 units: a task and its `task.created` entry are written together or not at all, and a transaction bills twice (the request, the large item, stays outside it). The health bucket costs 3: the breaker's counts ride in the result's transaction (no extra operation), which bills twice. Finishing in that transaction saves an operation for one unit more (the state item, billed twice; more when a large answer is inline in it) |
/// | 3 agents | 32 | the same, with three leases, three results (each with its bucket) and three fan-in counts, and the aggregate's finish; the result lists every answer as a candidate with its score (issue 12), which takes the finished state item past 1 KB (one unit more) |
/// | 1 agent, budgeted | 28 | as 1 agent, but the plan's and the result's writes are transactions with the two counters: the plan 2 × (1 + 2) = 6 units instead of 1, the result's 2 × (1 + 1 + 2 + 1) = 10 instead of 6 (a transaction bills twice; the hold and the settlement cannot be made exactly-once any cheaper) |
/// | 3 agents, budgeted | 49 | as 3 agents, with the plan and each of the three results so; the three calls' holds take the planned state item past 1 KB (one unit more, twice) |
pub const CEILINGS: &[Ceiling] = &[
    Ceiling {
        name: "1 agent",
        fanout: 1,
        budgeted: false,
        max_ops: 10.0,
        max_write_units: 19,
    },
    Ceiling {
        name: "3 agents",
        fanout: 3,
        budgeted: false,
        max_ops: 22.0,
        max_write_units: 32,
    },
    Ceiling {
        name: "1 agent, budgeted",
        fanout: 1,
        budgeted: true,
        max_ops: 10.0,
        max_write_units: 28,
    },
    Ceiling {
        name: "3 agents, budgeted",
        fanout: 3,
        budgeted: true,
        max_ops: 22.0,
        max_write_units: 49,
    },
];

#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    pub name: &'static str,
    pub fanout: u32,
    /// Whether the tenant has budgets (every call reserved and settled).
    pub budgeted: bool,
    pub max_ops: f64,
    /// DynamoDB write units per task with a 2 KB request, indexes included
    /// (metered by `measure_units`).
    pub max_write_units: u32,
}

/// Counts operations, once per operation (not per retry).
#[derive(Debug, Clone, Default)]
pub struct CountOps(Arc<Mutex<BTreeMap<String, u64>>>);

impl CountOps {
    /// The counts so far, by `Service.Operation`; resets them.
    pub fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Intercept for CountOps {
    fn name(&self) -> &'static str {
        "CountOps"
    }

    // Runs after the operation's metadata is set, before any retry.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(meta) = cfg.load::<Metadata>() {
            let key = format!("{}.{}", meta.service(), meta.name());
            *self
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key)
                .or_default() += 1;
        }
        Ok(())
    }
}

/// Operations the Lambda event source mapping makes on AWS (not our code).
pub fn by_trigger(op: &str) -> bool {
    op.ends_with(".ReceiveMessage") || op.ends_with(".DeleteMessage")
}

/// Whether an operation counts toward a task's ceiling. The registry's
/// reads (a tenant's agents and settings, the platform's agents) and the
/// agents' health reads are per process and TTL, not per task: the
/// measurement keeps them out by warming the caches and giving them a TTL
/// longer than the run.
pub fn per_task(op: &str) -> bool {
    !by_trigger(op)
}

/// One measured row: operations per task, in all and by operation.
#[derive(Debug, Clone)]
pub struct OpsRow {
    pub ceiling: Ceiling,
    pub tasks: usize,
    /// Operations per task made by the pipeline's code.
    pub per_task: f64,
    /// Every operation seen (the trigger's included), per task.
    pub by_op: BTreeMap<String, f64>,
}

/// Runs `tasks` tasks of each kind in [`CEILINGS`] through the pipeline on
/// the AWS backend at `config` (fresh tables and queues under a unique
/// prefix), one at a time after a warm-up, and counts their operations.
pub async fn measure(
    config: &aws_config::SdkConfig,
    tasks: usize,
) -> Result<Vec<OpsRow>, BoxError> {
    let counter = CountOps::default();
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(config)
            .interceptor(counter.clone())
            .build(),
    );
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(config)
            .interceptor(counter.clone())
            .build(),
    );
    let secrets = aws_sdk_secretsmanager::Client::from_conf(
        aws_sdk_secretsmanager::config::Builder::from(config)
            .interceptor(counter.clone())
            .build(),
    );
    let names = ResourceNames::with_prefix(&format!(
        "ops{}",
        ulid::Ulid::new().to_string().to_lowercase()
    ));
    Bootstrap::new(config, names.clone()).ensure_all().await?;
    let s3 = aws_sdk_s3::Client::from_conf(
        crate::adapters::aws::s3_config(config)
            .interceptor(counter.clone())
            .build(),
    );
    let clients = crate::setup::AwsClients {
        dynamodb,
        sqs,
        secrets,
        s3,
        streams: aws_sdk_dynamodbstreams::Client::new(config),
    };
    let svc = crate::setup::aws_services_with(
        clients,
        &names,
        crate::setup::outbound(OutboundPolicy::strict())?,
    )
    .await?;
    let settings = measured(svc.settings.clone());
    let mut svc = svc.with_settings(settings);
    // Announcing is not measured: on AWS the stream trigger reads for free,
    // and with no bus configured here there is nothing to publish. With one,
    // the announcer adds one PutEvents per finished task, outside the stages.
    svc.feed = None;
    register_mock_agents(&svc).await?;
    let runner = Runner::spawn(
        svc.clone(),
        RunnerConfig {
            wait: Duration::from_millis(100),
            // The sweeper's passes (16 index queries a minute on AWS) are per
            // deployment, not per task: none runs while tasks are counted.
            sweep_every: Duration::from_secs(24 * 3600),
            ..RunnerConfig::default()
        },
    );
    let mut rows = Vec::new();
    for ceiling in CEILINGS {
        let principal = principal(ceiling.budgeted)?;
        let request = || -> Result<TaskRequest, serde_json::Error> {
            serde_json::from_value(json!({"task_type": "text", "content": "count me",
                "routing": {"fanout": ceiling.fanout}}))
        };
        // Warm-up: fills the registry and key caches.
        let warm = intake::submit(&svc, &principal, &Origin::default(), request()?, None)
            .await?
            .task;
        intake::wait(
            &svc,
            &principal.tenant,
            warm.task_id,
            Duration::from_secs(20),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        counter.take();
        let mut measured = Vec::with_capacity(tasks);
        for _ in 0..tasks {
            let task = intake::submit(&svc, &principal, &Origin::default(), request()?, None)
                .await?
                .task;
            let watch = svc.completions.watch(&task.tenant, task.task_id);
            let finished =
                tokio::time::timeout(Duration::from_secs(20), watch.notify().notified()).await;
            drop(watch);
            if finished.is_err() {
                let record = intake::get(&svc, &principal.tenant, task.task_id).await?;
                let state = record.map(|r| (r.task.status, r.task.error));
                return Err(
                    format!("{}: a task did not finish in 20 s: {state:?}", ceiling.name).into(),
                );
            }
            measured.push(task.task_id);
        }
        // Let the last deletes land before reading the counts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let counts = counter.take();
        for task_id in measured {
            let record = intake::get(&svc, &principal.tenant, task_id).await?;
            if !record.is_some_and(|r| r.task.status == TaskStatus::Completed) {
                return Err("a measured task did not complete".into());
            }
        }
        let per = |n: u64| n as f64 / tasks as f64;
        let ours: u64 = counts
            .iter()
            .filter(|(op, _)| per_task(op))
            .map(|(_, n)| n)
            .sum();
        rows.push(OpsRow {
            ceiling: *ceiling,
            tasks,
            per_task: per(ours),
            by_op: counts.into_iter().map(|(op, n)| (op, per(n))).collect(),
        });
    }
    runner.shutdown().await;
    Ok(rows)
}

/// Storage units per task: what DynamoDB would bill for the items the
/// pipeline writes and reads, metered by the memory backend, which keeps
/// the same layout (`adapters::layout::capacity`). moto reports one unit per
/// call whatever the size, so these are modelled, with DynamoDB's rules.
#[derive(Debug, Clone)]
pub struct UnitsRow {
    pub ceiling: Ceiling,
    pub content_bytes: usize,
    pub tasks: usize,
    pub write_units: f64,
    pub read_units: f64,
}

/// Runs `tasks` tasks of each kind in [`CEILINGS`], with a request of
/// `content_bytes`, through the in-process pipeline (memory backend, mock
/// agents, the announcer's relay included) and meters their capacity.
pub async fn measure_units(tasks: usize, content_bytes: usize) -> Result<Vec<UnitsRow>, BoxError> {
    let store = Arc::new(crate::adapters::memory::MemoryTaskStore::new());
    let events = Arc::new(crate::adapters::memory::MemoryEvents::new());
    let (svc, _) = crate::setup::memory_services_on(
        store.clone(),
        crate::setup::outbound(OutboundPolicy::strict())?,
    )?;
    let settings = measured(svc.settings.clone());
    let svc = svc.with_events(events.clone()).with_settings(settings);
    register_mock_agents(&svc).await?;
    let runner = Runner::spawn(
        svc.clone(),
        RunnerConfig {
            wait: Duration::from_millis(20),
            sweep_every: Duration::from_secs(24 * 3600),
            ..RunnerConfig::default()
        },
    );
    let content = "x".repeat(content_bytes.max(1));
    let mut rows = Vec::new();
    for ceiling in CEILINGS {
        let principal = principal(ceiling.budgeted)?;
        let request = || -> Result<TaskRequest, serde_json::Error> {
            serde_json::from_value(json!({"task_type": "text", "content": content,
                "routing": {"fanout": ceiling.fanout}}))
        };
        run_one(&svc, &events, &principal, request()?).await?;
        let before = store.consumed();
        for _ in 0..tasks {
            run_one(&svc, &events, &principal, request()?).await?;
        }
        let after = store.consumed();
        rows.push(UnitsRow {
            ceiling: *ceiling,
            content_bytes,
            tasks,
            write_units: (after.write_units - before.write_units) as f64 / tasks as f64,
            read_units: (after.read_units - before.read_units) / tasks as f64,
        });
    }
    runner.shutdown().await;
    Ok(rows)
}

/// The settings tasks are measured under: rate limits on, as deployed (each
/// task's take is counted), but too high to refuse a measured task; and a
/// registry and health cache that does not expire during the run (their reads are per
/// process and TTL, not per task).
fn measured(settings: crate::stages::Settings) -> crate::stages::Settings {
    let mut settings = crate::stages::Settings {
        registry_ttl: Duration::from_secs(24 * 3600),
        health_ttl: Duration::from_secs(24 * 3600),
        ..settings
    };
    settings.tenant_defaults.rate_limits.tenant = crate::domain::Rates {
        rpm: Some(1_000_000_000),
        tpm: Some(1_000_000_000_000),
    };
    settings
}

/// Gives each measured tenant its own agents, and the budgeted one budgets
/// too high to refuse a measured task.
async fn register_mock_agents(svc: &crate::stages::Services) -> Result<(), BoxError> {
    for budgeted in [false, true] {
        let tenant = principal(budgeted)?.tenant;
        for (id, model) in [("ops-a", "a"), ("ops-b", "b"), ("ops-c", "c")] {
            let spec: AgentSpec = serde_json::from_value(json!({
                "name": id, "provider": "mock", "model": model, "capabilities": ["text"],
                "pricing": {"input_per_mtok": 0.15, "output_per_mtok": 0.60}
            }))?;
            let owner = Owner::Tenant(tenant.clone());
            svc.registry
                .put(&owner, &AgentId::parse(id)?, spec, Expect::Any, None)
                .await?;
        }
    }
    let budgets: Budgets =
        serde_json::from_value(json!({"daily_usd": "1000000", "monthly_usd": "1000000"}))?;
    crate::stages::agents::update_settings(
        svc,
        &principal(true)?.tenant,
        TenantSettings {
            budgets: Some(budgets),
            ..TenantSettings::default()
        },
        &principal(true)?,
        &Origin::default(),
    )
    .await?;
    Ok(())
}

fn principal(budgeted: bool) -> Result<Principal, BoxError> {
    let tenant = if budgeted { "ops-budgeted" } else { "ops" };
    Ok(Principal {
        sub: "ops".into(),
        tenant: TenantId::parse(tenant)?,
        roles: vec![Role::Submitter],
    })
}

/// Submits a task and waits until it is announced, completed (watching the
/// events, which reads nothing from the store the meter would count).
async fn run_one(
    svc: &crate::stages::Services,
    events: &crate::adapters::memory::MemoryEvents,
    principal: &Principal,
    request: TaskRequest,
) -> Result<(), BoxError> {
    let task = intake::submit(svc, principal, &Origin::default(), request, None)
        .await?
        .task;
    let id = task.task_id.to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(event) = events.published().into_iter().find(|e| e.task_id == id) {
            return match event.status {
                TaskStatus::Completed => Ok(()),
                _ => Err("a measured task did not complete".into()),
            };
        }
        if tokio::time::Instant::now() > deadline {
            return Err("a task was not announced in 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Public list prices (us-east-1, on demand), US dollars.
pub mod prices {
    /// HTTP API, per request (first 300 million a month).
    pub const API_REQUEST: f64 = 1.00 / 1e6;
    pub const LAMBDA_REQUEST: f64 = 0.20 / 1e6;
    /// arm64, per GB-second.
    pub const LAMBDA_GB_SECOND: f64 = 0.000_013_333_4;
    pub const DYNAMODB_WRITE_UNIT: f64 = 0.625 / 1e6;
    pub const DYNAMODB_READ_UNIT: f64 = 0.125 / 1e6;
    /// Standard queue, per request (a batch of up to 10 messages is one).
    pub const SQS_REQUEST: f64 = 0.40 / 1e6;
    /// Ingestion, per GB.
    pub const LOGS_GB: f64 = 0.50;
    /// A custom event put on a bus.
    pub const EVENT: f64 = 1.00 / 1e6;
}

/// The assumptions of the estimate that are not measured here.
pub mod assumed {
    /// `FunctionMemory`'s default.
    pub const FUNCTION_GB: f64 = 0.25;
    /// Billed time of one stage invocation, provider waits excluded.
    pub const STAGE_SECONDS: f64 = 0.015;
    /// Log bytes per invocation (JSON lines: the stage's, and the platform's report).
    pub const LOG_BYTES: f64 = 1500.0;
}

/// An estimate of what AWS bills per million tasks of `ops`' kind, by part,
/// provider cost excluded: every message its own invocation (no batching,
/// the dearest case), the trigger's receive and delete per message, the
/// storage units as metered in `units`.
pub fn cost_per_million(ops: &OpsRow, units: &UnitsRow) -> Vec<(&'static str, f64)> {
    let fanout = f64::from(ops.ceiling.fanout);
    // intake, route, one agent-call per call, aggregate for a fan-out, and
    // the announcer (batches of up to 100 stream records).
    let invocations = 2.0 + fanout + if fanout > 1.0 { 1.0 } else { 0.0 } + 0.01;
    let sent: f64 = ops
        .by_op
        .iter()
        .filter(|(op, _)| op.starts_with("SQS.Send"))
        .map(|(_, n)| n)
        .sum();
    // Each message sent is received and deleted by its trigger.
    let messages = 1.0 + fanout + if fanout > 1.0 { 1.0 } else { 0.0 };
    let per_task = [
        ("API Gateway", prices::API_REQUEST),
        ("Lambda requests", invocations * prices::LAMBDA_REQUEST),
        (
            "Lambda GB-seconds",
            invocations * assumed::FUNCTION_GB * assumed::STAGE_SECONDS * prices::LAMBDA_GB_SECOND,
        ),
        (
            "DynamoDB",
            units.write_units * prices::DYNAMODB_WRITE_UNIT
                + units.read_units * prices::DYNAMODB_READ_UNIT,
        ),
        ("SQS", (sent + 2.0 * messages) * prices::SQS_REQUEST),
        (
            "CloudWatch Logs",
            invocations * assumed::LOG_BYTES / 1e9 * prices::LOGS_GB,
        ),
        ("EventBridge", prices::EVENT),
    ];
    per_task
        .into_iter()
        .map(|(part, usd)| (part, usd * 1e6))
        .collect()
}
