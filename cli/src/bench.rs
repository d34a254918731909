//! `maof bench`: throughput, latency percentiles and peak memory of the
//! pipeline, two ways side by side: (a) in process (memory backend, the mock
//! provider answering at once), (b) through HTTP against a spawned `maof dev`
//! whose agent is an `openai_compatible` one pointed at a local mock server.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Json;
use axum::routing::post;
use futures::future::join_all;
use maof::api::Authenticator;
use maof::domain::{AgentId, AgentSpec, Origin, Owner, Principal, Role, TaskRequest, TenantId};
use maof::ports::Expect;
use maof::runner::{Runner, RunnerConfig};
use maof::stages::{Services, intake};
use secrecy::SecretString;
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Tasks measured per run (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    concurrency: Vec<usize>,
    /// Skip the HTTP run.
    #[arg(long)]
    in_process_only: bool,
    /// Instead, count AWS API operations per task against AWS_ENDPOINT_URL (moto).
    #[arg(long)]
    aws_ops: bool,
    /// Instead, measure the memory left behind by this many `?wait`
    /// waiters whose clients went away (the future dropped mid-wait).
    #[arg(long, value_name = "N")]
    abandoned_waits: Option<usize>,
    /// Instead, measure the init time of the Lambda binaries under this
    /// directory (`target/lambda` after `cargo lambda build --release`).
    #[arg(long, value_name = "DIR")]
    lambda_init: Option<std::path::PathBuf>,
    /// Instead, run a fixed mixed workload through `tiered` and `quality`
    /// routing with mock agents priced like real tiers, and print each
    /// run's cost, the share escalated and how often the answers agree.
    #[arg(long)]
    cost: bool,
}

struct Figures {
    mode: &'static str,
    concurrency: usize,
    tasks: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    failed: usize,
    peak_rss_kib: Option<u64>,
}

impl Figures {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i].as_secs_f64() * 1000.0
    }

    fn print(&self) {
        println!(
            "{:<11} {:>5} {:>7} {:>9.0} {:>8.3} {:>8.3} {:>8.3} {:>7} {:>12}",
            self.mode,
            self.concurrency,
            self.tasks,
            self.tasks as f64 / self.elapsed.as_secs_f64(),
            self.percentile(0.50),
            self.percentile(0.95),
            self.percentile(0.99),
            self.failed,
            self.peak_rss_kib
                .map_or("-".into(), |k| format!("{:.1} MB", k as f64 / 1024.0)),
        );
    }
}

/// Peak resident set (VmHWM) of a process, from /proc.
fn peak_rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Current resident set (VmRSS) of this process, from /proc.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Memory left behind by `?wait` waiters whose clients went away: `waits`
/// tasks are submitted (no runner, so none finishes), then each gets a
/// waiter dropped after 10 ms, as axum drops a request's future when its
/// client disconnects. The baseline is the same process after the submits.
async fn abandoned_waits(waits: usize) -> anyhow::Result<()> {
    let (svc, _) = maof::setup::memory_services(maof::setup::outbound(
        maof::providers::OutboundPolicy::strict(),
    )?)?;
    let principal = Principal {
        sub: "bench".into(),
        tenant: TenantId::parse("bench")?,
        roles: vec![Role::Submitter],
    };
    let mut ids = Vec::with_capacity(waits);
    for _ in 0..waits {
        ids.push(
            intake::submit(&svc, &principal, &Origin::default(), request(), None)
                .await?
                .task
                .task_id,
        );
    }
    let baseline = rss_kib();
    for round in 0..2 {
        let started = Instant::now();
        let abandoned = ids.iter().map(|id| {
            tokio::time::timeout(
                Duration::from_millis(10),
                intake::wait(&svc, &principal.tenant, *id, Duration::from_secs(25)),
            )
        });
        let finished = join_all(abandoned)
            .await
            .iter()
            .filter(|r| r.is_ok())
            .count();
        let mb = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1} MB", k as f64 / 1024.0));
        println!(
            "round {}: {waits} waits abandoned in {:.2} s ({finished} finished first); waiters left {}; RSS {} (after the submits: {})",
            round + 1,
            started.elapsed().as_secs_f64(),
            svc.completions.watched(),
            mb(rss_kib()),
            mb(baseline),
        );
    }
    Ok(())
}

/// Runs `total` jobs on `concurrency` workers; returns each job's latency and the failures.
async fn drive<F, Fut>(total: usize, concurrency: usize, job: F) -> (Duration, Vec<Duration>, usize)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (job, next) = (job.clone(), next.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let t = Instant::now();
                if job().await {
                    latencies.push(t.elapsed());
                } else {
                    failed += 1;
                }
            }
            (latencies, failed)
        })
    });
    let mut latencies = Vec::with_capacity(total);
    let mut failed = 0;
    for worker in join_all(workers).await {
        let (l, f) = worker.unwrap_or_default();
        latencies.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    (elapsed, latencies, failed)
}

fn request() -> TaskRequest {
    serde_json::from_value(
        json!({"task_type": "text", "content": "Analyze this text for sentiment: I love it"}),
    )
    .unwrap_or_else(|e| unreachable!("a fixed request parses: {e}"))
}

async fn in_process(tasks: usize, concurrency: usize) -> anyhow::Result<Figures> {
    let (svc, _) = maof::setup::memory_services(maof::setup::outbound(
        maof::providers::OutboundPolicy::strict(),
    )?)?;
    let spec: AgentSpec = serde_json::from_value(json!({
        "name": "bench mock", "provider": "mock", "model": "bench", "capabilities": ["text"],
        "pricing": {"input_per_mtok": 0.15, "output_per_mtok": 0.60}
    }))?;
    let principal = Principal {
        sub: "bench".into(),
        tenant: TenantId::parse("bench")?,
        roles: vec![Role::Submitter],
    };
    // The tenant's own agent.
    svc.registry
        .put(
            &Owner::Tenant(principal.tenant.clone()),
            &AgentId::parse("bench")?,
            spec,
            Expect::Any,
            // The bench's own setup: no one's action to audit.
            None,
        )
        .await?;
    let runner = Runner::spawn(svc.clone(), RunnerConfig::default());
    let job = {
        let (svc, principal): (Services, Principal) = (svc.clone(), principal.clone());
        move || {
            let (svc, principal) = (svc.clone(), principal.clone());
            async move {
                let Ok(submitted) =
                    intake::submit(&svc, &principal, &Origin::default(), request(), None).await
                else {
                    return false;
                };
                matches!(
                    intake::wait(&svc, &principal.tenant, submitted.task.task_id, Duration::from_secs(10)).await,
                    Ok(Some(r)) if r.task.status == maof::domain::TaskStatus::Completed
                )
            }
        }
    };
    drive(tasks / 10, concurrency, job.clone()).await; // warm-up
    let (elapsed, latencies, failed) = drive(tasks, concurrency, job).await;
    runner.shutdown().await;
    Ok(Figures {
        mode: "in-process",
        concurrency,
        tasks,
        elapsed,
        latencies,
        failed,
        peak_rss_kib: peak_rss_kib("self"),
    })
}

/// A Chat Completions server that answers at once.
async fn mock_openai() -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(|Json(body): Json<Value>| async move {
            Json(json!({
                "id": "chatcmpl-bench", "object": "chat.completion", "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "positive"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/v1"))
}

async fn through_http(tasks: usize, levels: &[usize]) -> anyhow::Result<Vec<Figures>> {
    let upstream = mock_openai().await?;
    let dir = std::env::temp_dir().join(format!("maof-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let agents = dir.join("agents.yaml");
    std::fs::write(
        &agents,
        format!(
            "agents:\n  - id: upstream\n    name: Local mock server\n    provider: openai_compatible\n    base_url: {upstream}\n    model: bench-model\n    secret: maof/bench\n    capabilities: [text]\n    pricing: {{input_per_mtok: 0.15, output_per_mtok: 0.60}}\n"
        ),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let secret = "bench-secret-0123456789abcdef0123456789";
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["dev", "--port", &port.to_string(), "--agents"])
        .arg(&agents)
        .env("MAOF_JWT_SECRET", secret)
        .env("MAOF_BENCH", "sk-bench")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting maof dev")?;
    let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let up = Instant::now();
    while http.get(format!("{base}/health")).send().await.is_err() {
        if up.elapsed() > Duration::from_secs(20) {
            bail!("maof dev did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = Authenticator::new(SecretString::from(secret)).mint(
        "bench",
        &TenantId::parse("bench")?,
        &[Role::Submitter],
        Duration::from_secs(3600),
    )?;
    let body =
        json!({"task_type": "text", "content": "Analyze this text for sentiment: I love it"})
            .to_string();
    let job = {
        let url = format!("{base}/v1/tasks?wait=10");
        move || {
            let (http, url, token, body) = (http.clone(), url.clone(), token.clone(), body.clone());
            async move {
                let sent = http
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => r
                        .json::<Value>()
                        .await
                        .is_ok_and(|v| v["status"] == "completed"),
                    _ => false,
                }
            }
        }
    };
    let mut figures = Vec::new();
    for &concurrency in levels {
        drive(tasks / 10, concurrency, job.clone()).await;
        let (elapsed, latencies, failed) = drive(tasks, concurrency, job.clone()).await;
        figures.push(Figures {
            mode: "http",
            concurrency,
            tasks,
            elapsed,
            latencies,
            failed,
            peak_rss_kib: peak_rss_kib(&pid),
        });
    }
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(figures)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.aws_ops {
        return aws_ops::run(20).await;
    }
    if let Some(dir) = &args.lambda_init {
        return lambda_init::run(dir).await;
    }
    if args.cost {
        return cost().await;
    }
    if let Some(waits) = args.abandoned_waits {
        return abandoned_waits(waits).await;
    }
    println!(
        "machine: {} cores; peak RSS is VmHWM of the process serving the tasks",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<11} {:>5} {:>7} {:>9} {:>8} {:>8} {:>8} {:>7} {:>12}",
        "mode", "conc", "tasks", "tasks/s", "p50 ms", "p95 ms", "p99 ms", "failed", "peak RSS"
    );
    for &concurrency in &args.concurrency {
        in_process(args.tasks, concurrency).await?.print();
    }
    if !args.in_process_only {
        for figures in through_http(args.tasks, &args.concurrency).await? {
            figures.print();
        }
    }
    Ok(())
}

/// `--cost`: see `maof::cost_bench`.
async fn cost() -> anyhow::Result<()> {
    use maof::cost_bench::{measure, tier_agents, to_f64, workload};
    let prompts = workload().context("the cost workload")?;
    let report = measure(&prompts)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("running the cost workload")?;
    println!(
        "SYNTHETIC: {} prompts run through the whole pipeline in process, with scripted mock agents \
         priced like real tiers; the figures show the mechanism, not what real prompts and models save.",
        prompts.len()
    );
    for (id, spec) in tier_agents().map_err(|e| anyhow::anyhow!(e))? {
        let pricing = spec.pricing.as_ref().map_or("-".into(), |p| {
            format!(
                "{} in / {} out per Mtok",
                p.input_per_mtok, p.output_per_mtok
            )
        });
        println!("  {id}: tier {}, {}, {pricing}", spec.tier, spec.model);
    }
    println!(
        "\n{:<9} {:>6} {:>7} {:>12} {:>10} {:>12}",
        "strategy", "tasks", "failed", "total cost", "escalated", "escalations"
    );
    for run in [&report.tiered, &report.quality] {
        println!(
            "{:<9} {:>6} {:>7} {:>12} {:>9.1}% {:>12}",
            run.strategy,
            run.tasks,
            run.failed,
            format!("${:.6}", to_f64(run.total_cost)),
            100.0 * run.escalated as f64 / run.tasks.max(1) as f64,
            run.escalations,
        );
    }
    println!(
        "\ntiered saves {:.1}% of quality's cost; the two final answers agree on {} of {} prompts ({:.1}%)",
        100.0 * report.savings(),
        report.agreed,
        prompts.len(),
        100.0 * report.agreed as f64 / prompts.len().max(1) as f64,
    );
    Ok(())
}

mod aws_ops {
    //! Prints the AWS API operations per task that `maof::metering` counts,
    //! beside each row's ceiling; the storage units per task; and an
    //! estimate of what AWS bills per million tasks.

    use anyhow::Context;
    use maof::adapters::aws::load_sdk_config;
    use maof::metering::{UnitsRow, assumed, by_trigger, cost_per_million, measure, measure_units};

    pub async fn run(tasks: usize) -> anyhow::Result<()> {
        if std::env::var_os("AWS_ENDPOINT_URL").is_none() {
            anyhow::bail!(
                "--aws-ops needs AWS_ENDPOINT_URL (e.g. moto: `moto_server -p 5000` and AWS_ENDPOINT_URL=http://127.0.0.1:5000)"
            );
        }
        let config = load_sdk_config().await;
        let rows = measure(&config, tasks)
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .context("measuring operations per task")?;
        println!(
            "\nAWS API operations per task (moto at AWS_ENDPOINT_URL), steady state, {tasks} tasks each:"
        );
        for row in &rows {
            println!(
                "  {}: {:.2} operations per task by the pipeline's code (ceiling {})",
                row.ceiling.name, row.per_task, row.ceiling.max_ops
            );
            for (op, n) in &row.by_op {
                let note = if by_trigger(op) {
                    "  (done by the Lambda SQS trigger on AWS; the local runner's polling here)"
                } else {
                    ""
                };
                println!("    {op:<32} {n:>6.2}{note}");
            }
        }
        let small = units(tasks, 2_000).await?;
        let large = units(tasks, 200_000).await?;
        println!(
            "\nDynamoDB capacity units per task, as DynamoDB bills them (write: 1 KB, read: 4 KB; \
             indexes included), metered on the memory backend's identical layout:"
        );
        println!(
            "  {:<18} {:>9} {:>12} {:>11} {:>12}",
            "task", "request", "write units", "read units", "write ceiling"
        );
        for row in small.iter().chain(&large) {
            println!(
                "  {:<18} {:>7} B {:>12.2} {:>11.2} {:>12}",
                row.ceiling.name,
                row.content_bytes,
                row.write_units,
                row.read_units,
                if row.content_bytes == 2_000 {
                    row.ceiling.max_write_units.to_string()
                } else {
                    "-".into()
                }
            );
        }
        println!(
            "\nEstimated AWS cost per million tasks, 2 KB request, provider cost excluded \
             (list prices; every message its own {} GB invocation of {} ms; {} log bytes each):",
            assumed::FUNCTION_GB,
            assumed::STAGE_SECONDS * 1000.0,
            assumed::LOG_BYTES
        );
        for (ops, units) in rows.iter().zip(&small) {
            let parts = cost_per_million(ops, units);
            let total: f64 = parts.iter().map(|(_, usd)| usd).sum();
            let listed: Vec<String> = parts
                .iter()
                .map(|(part, usd)| format!("{part} ${usd:.2}"))
                .collect();
            println!(
                "  {}: ${total:.2} ({})",
                ops.ceiling.name,
                listed.join(", ")
            );
        }
        Ok(())
    }

    async fn units(tasks: usize, content_bytes: usize) -> anyhow::Result<Vec<UnitsRow>> {
        measure_units(tasks, content_bytes)
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .context("metering storage units per task")
    }
}

mod lambda_init {
    //! Init time of each Lambda binary: from process start to its first call
    //! to the runtime API (`GET /2018-06-01/runtime/invocation/next`), against
    //! a local stand-in of that API, which also answers the intake's one
    //! Secrets Manager call (the JWT signing key) at `AWS_ENDPOINT_URL`.

    use std::path::Path;
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use anyhow::Context;
    use axum::routing::{get, post};
    use serde_json::json;

    const FUNCTIONS: [&str; 7] = [
        "intake",
        "route",
        "agent-call",
        "aggregate",
        "events",
        "sweeper",
        "announcer",
    ];
    const RUNS: usize = 5;

    pub async fn run(dir: &Path) -> anyhow::Result<()> {
        let hit: Arc<Mutex<Option<Instant>>> = Arc::default();
        let app = axum::Router::new()
            .route(
                "/2018-06-01/runtime/invocation/next",
                get({
                    let hit = hit.clone();
                    move || async move {
                        hit.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(Instant::now);
                        // Never answer: the measurement ends at the first call.
                        std::future::pending::<()>().await;
                    }
                }),
            )
            .route(
                "/",
                post(|| async {
                    axum::Json(json!({"ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:maof/jwt",
                        "Name": "maof/jwt", "SecretString": "init-bench-signing-key-0123456789abcdef", "VersionId": "v1"}))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });

        println!(
            "\nLambda init (process start to first runtime-API call), median of {RUNS} runs, binaries in {}:",
            dir.display()
        );
        for function in FUNCTIONS {
            let binary = dir.join(function).join("bootstrap");
            if !binary.exists() {
                println!(
                    "  {function:<11} not built ({} missing: cargo lambda build --release)",
                    binary.display()
                );
                continue;
            }
            let mut times = Vec::new();
            for _ in 0..RUNS {
                *hit.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let mut command = tokio::process::Command::new(&binary);
                command
                    .env_clear()
                    .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
                    .env("AWS_LAMBDA_FUNCTION_NAME", function)
                    .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
                    .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
                    .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/bench")
                    .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
                    .env("AWS_REGION", "us-east-1")
                    .env("AWS_ACCESS_KEY_ID", "bench")
                    .env("AWS_SECRET_ACCESS_KEY", "bench")
                    .env("AWS_ENDPOINT_URL", format!("http://{addr}"))
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true);
                // The template sets every queue URL, so no lookup happens at start.
                for queue in maof::ports::QueueName::ALL {
                    let var = format!(
                        "MAOF_QUEUE_URL_{}",
                        queue.as_str().replace('-', "_").to_uppercase()
                    );
                    command.env(var, format!("http://{addr}/queue/{}", queue.as_str()));
                }
                let started = Instant::now();
                let mut child = command
                    .spawn()
                    .with_context(|| format!("starting {}", binary.display()))?;
                let deadline = started + Duration::from_secs(10);
                let reached = loop {
                    if let Some(at) = *hit.lock().unwrap_or_else(|p| p.into_inner()) {
                        break Some(at);
                    }
                    if Instant::now() > deadline || child.try_wait()?.is_some() {
                        break None;
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                };
                let _ = child.kill().await;
                match reached {
                    Some(at) => times.push(at.duration_since(started)),
                    None => anyhow::bail!("{function} exited or never called the runtime API"),
                }
            }
            times.sort();
            let size = std::fs::metadata(&binary)?.len();
            println!(
                "  {function:<11} {:>6.1} ms   (binary {:.1} MB unzipped)",
                times[RUNS / 2].as_secs_f64() * 1000.0,
                size as f64 / 1_048_576.0
            );
        }
        Ok(())
    }
}
