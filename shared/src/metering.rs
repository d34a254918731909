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
use crate::domain::{AgentId, AgentSpec, Principal, Role, TaskRequest, TaskStatus, TenantId};
use crate::ports::Expect;
use crate::runner::{Runner, RunnerConfig};
use crate::stages::intake;

/// A kind of task measured, and the most operations per task its pipeline
/// may make (Receive and Delete excluded: on AWS the Lambda trigger makes
/// them). A change that adds an operation raises its row here and says why.
///
/// | task | ceiling | why |
/// |---|---|---|
/// | 1 agent | 9 | intake Put + Send; route Update ×2 + SendBatch; agent-call Query + lease Put + result Put + Update |
/// | 3 agents | 20 | the same, with three calls counted into the fan-in (Update each) and the aggregate hop (Send, Query, Update) |
pub const CEILINGS: &[Ceiling] = &[
    Ceiling {
        name: "1 agent",
        fanout: 1,
        max_ops: 9.0,
    },
    Ceiling {
        name: "3 agents",
        fanout: 3,
        max_ops: 20.0,
    },
];

#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    pub name: &'static str,
    pub fanout: u32,
    pub max_ops: f64,
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

/// Operations made per process and period, not per task: the registry's
/// list, read again once its cache (30 s) expires.
pub fn by_cache_refresh(op: &str) -> bool {
    op == "DynamoDB.Scan"
}

/// Whether an operation counts toward a task's ceiling.
pub fn per_task(op: &str) -> bool {
    !by_trigger(op) && !by_cache_refresh(op)
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
    let mut svc = crate::setup::aws_services_with(clients, &names).await?;
    // Announcing is not measured: on AWS the stream trigger reads for free,
    // and with no bus configured here there is nothing to publish. With one,
    // the announcer adds one PutEvents per finished task, outside the stages.
    svc.feed = None;
    for (id, model) in [("ops-a", "a"), ("ops-b", "b"), ("ops-c", "c")] {
        let spec: AgentSpec = serde_json::from_value(json!({
            "name": id, "provider": "mock", "model": model, "capabilities": ["text"],
            "pricing": {"input_per_mtok": 0.15, "output_per_mtok": 0.60}
        }))?;
        svc.registry
            .put(&AgentId::parse(id)?, spec, Expect::Any)
            .await?;
    }
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
    let principal = Principal {
        sub: "ops".into(),
        tenant: TenantId::parse("ops")?,
        roles: vec![Role::Submitter],
    };
    let mut rows = Vec::new();
    for ceiling in CEILINGS {
        let request = || -> Result<TaskRequest, serde_json::Error> {
            serde_json::from_value(json!({"task_type": "text", "content": "count me",
                "routing": {"fanout": ceiling.fanout}}))
        };
        // Warm-up: fills the registry and key caches.
        let warm = intake::submit(&svc, &principal, request()?, None)
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
            let task = intake::submit(&svc, &principal, request()?, None)
                .await?
                .task;
            let watch = svc.completions.watch(&task.tenant, task.task_id);
            let finished =
                tokio::time::timeout(Duration::from_secs(20), watch.notify().notified()).await;
            drop(watch);
            finished.map_err(|_| "a task did not finish in 20 s")?;
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
