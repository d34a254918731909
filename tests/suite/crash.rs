//! A crash on the aws backend (moto): a child `maof dev --backend aws` is
//! killed (SIGKILL) while 500 tasks are being submitted and worked on, at a
//! moment a provider call is in flight, then started again on the same
//! tables and queues. The client submits again, with the same idempotency
//! keys, what got no answer and was not stored, and submits the rest. Every
//! task ends `completed`, none is lost or created twice, and the provider (a
//! counting Chat Completions server in this process, so its counts outlive
//! the child) was asked twice for a prompt only when its first answer died
//! with the child: each task's stored answer is the last one the provider
//! gave for its prompt.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use maof::adapters::aws::ResourceNames;
use maof::api::Authenticator;
use maof::domain::{Role, TenantId};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

const TASKS: usize = 500;
/// Acknowledged submissions before the kill.
const KILL_AFTER: usize = 200;
/// Concurrent submissions (the HTTP requests cut by the kill are as many).
const SUBMITTERS: usize = 16;
/// The child's `--visibility`: how soon the messages it held come back after
/// the kill. Its heartbeat extends them every half of it, so it must leave
/// room for a slow moto under this load.
const VISIBILITY_SECS: u64 = 5;
/// The agent's timeout. A call cut by the kill holds its lease for this plus
/// agent-call's 5 s margin; the delivery after the restart waits that out.
const AGENT_TIMEOUT_MS: u64 = 10_000;
/// How long every task has, from the restart, to end. A task stored just
/// before the kill, whose route message was never sent, waits for the
/// sweeper: a stage's grace (60 s) after it was stored. On two busy cores
/// the whole takes up to two minutes.
const FINISH_LIMIT: Duration = Duration::from_secs(240);
/// A first answer that was never stored must have been sent at most this long
/// before the kill: the time the child takes to store an answer it read.
const UNSTORED_ANSWER_WINDOW: Duration = Duration::from_secs(5);

const JWT_SECRET: &str = "crash-test-secret-of-enough-length-for-hs256";
const API_KEY: &str = "sk-crash-test-0123456789";

fn content(i: usize) -> String {
    format!("Crash test task {i:03}: say one thing about the number {i}.")
}

/// The answer the counting server gives to the `nth` request for `content`:
/// a stored answer names the request it came from.
fn reply(nth: usize, content: &str) -> String {
    format!("reply {nth} to: {content}")
}

/// One request the counting server received.
#[derive(Debug, Clone, Copy)]
struct Received {
    arrived: Instant,
    /// When the handler returned its answer (None: still sleeping, or cut).
    answered: Option<Instant>,
}

/// A Chat Completions server counting requests per prompt.
#[derive(Default)]
struct Upstream {
    requests: Mutex<HashMap<String, Vec<Received>>>,
    /// Requests without the agent's key or without a user message.
    refused: AtomicUsize,
    /// Requests received and not yet answered.
    in_flight: AtomicUsize,
}

async fn chat_completions(
    State(upstream): State<Arc<Upstream>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Json<Value>, StatusCode> {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {API_KEY}"));
    let prompt = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .map(str::to_owned);
    let Some(prompt) = prompt.filter(|_| authorized) else {
        upstream.refused.fetch_add(1, Ordering::SeqCst);
        return Err(StatusCode::UNAUTHORIZED);
    };
    let nth = {
        let mut requests = upstream.requests.lock().unwrap();
        let list = requests.entry(prompt.clone()).or_default();
        list.push(Received {
            arrived: Instant::now(),
            answered: None,
        });
        list.len()
    };
    upstream.in_flight.fetch_add(1, Ordering::SeqCst);
    // 20 to 50 ms, so that calls are in flight when the child is killed.
    let spread = prompt.bytes().map(usize::from).sum::<usize>() % 31;
    tokio::time::sleep(Duration::from_millis(20 + spread as u64)).await;
    let answer = reply(nth, &prompt);
    let prompt_tokens = prompt.len().div_ceil(4);
    let completion_tokens = answer.len().div_ceil(4);
    upstream.requests.lock().unwrap().get_mut(&prompt).unwrap()[nth - 1].answered =
        Some(Instant::now());
    upstream.in_flight.fetch_sub(1, Ordering::SeqCst);
    Ok(Json(json!({
        "id": format!("chatcmpl-crash-{nth}"),
        "object": "chat.completion",
        "created": chrono::Utc::now().timestamp(),
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}
    })))
}

/// Starts the counting server; returns its API root (the agent's `base_url`).
async fn start_upstream(upstream: Arc<Upstream>) -> String {
    let app = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .with_state(upstream);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/v1")
}

/// The `maof` binary, built (or found up to date) by cargo. The tests crate
/// cannot name another package's binary, and `cargo test --workspace` builds
/// only the test harness of a package without integration tests, so this
/// asks cargo, with the workspace's feature set (as `cargo test --workspace`
/// resolves it: after it, only the binary itself is linked).
fn maof_binary() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut command = std::process::Command::new(cargo);
    // Not what cargo set for running this test (the tests crate's manifest
    // and package): a build script that watches one (ring watches
    // CARGO_MANIFEST_DIR) would rebuild, and then rebuild again for the next
    // `cargo build` from a shell.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_PRIMARY_PACKAGE",
        ]
        .iter()
        .any(|p| name.starts_with(p))
        {
            command.env_remove(name.as_ref());
        }
    }
    command
        .current_dir(workspace)
        .args(["build", "--workspace", "--bin", "maof"])
        .arg("--message-format=json-render-diagnostics");
    // The profile this test was built with: target/<profile>/deps/suite-*.
    let exe = std::env::current_exe().expect("the test executable");
    if exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .is_some_and(|p| p == "release")
    {
        command.arg("--release");
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build maof: {e}"));
    assert!(
        output.status.success(),
        "`cargo build --workspace --bin maof` failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "maof")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no maof executable")
}

/// The last lines of the child's log, for failure messages.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(40);
    format!(
        "last lines of {}:\n{}",
        log.display(),
        lines[start..].join("\n")
    )
}

/// A running `maof dev --backend aws`.
struct Dev {
    child: Child,
    base: String,
    spawned: Instant,
}

async fn start_dev(binary: &Path, env: &[(&str, String)], seed: &Path, log: &Path) -> Dev {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the child's log file");
    let spawned = Instant::now();
    let mut child = Command::new(binary)
        .args(["dev", "--backend", "aws", "--port", "0", "--visibility"])
        .arg(VISIBILITY_SECS.to_string())
        .arg("--agents")
        .arg(seed)
        // Only what this test sets: no queue URLs, event bus or profile
        // from the caller's shell.
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            stderr.try_clone().expect("the child's log file"),
        ))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    // The child logs to stdout: every line goes to the log file, and the
    // reading goes on so that the child never blocks on a full pipe.
    let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    let mut stdout_log = stderr.try_clone().expect("the child's log file");
    let (address_tx, address_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut address_tx = Some(address_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(address) = line.strip_prefix("maof dev: listening on ")
                && let Some(tx) = address_tx.take()
            {
                let _ = tx.send(address.trim().to_owned());
            }
            let _ = writeln!(stdout_log, "{line}");
        }
    });
    let Ok(Ok(base)) = tokio::time::timeout(Duration::from_secs(60), address_rx).await else {
        panic!(
            "maof dev did not print its address within 60 s; {}",
            log_tail(log)
        );
    };
    Dev {
        child,
        base,
        spawned,
    }
}

/// What one submission gave.
enum Submission {
    /// 202 (or 200, a replay of a finished task): the task's id.
    Acknowledged(String),
    /// No answer (the child died), or 503: retry with the same key.
    Retry(String),
    /// Any other answer: a failure of the test.
    Refused(u16, String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Keyed {
    Yes,
    No,
}

async fn submit(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    i: usize,
    keyed: Keyed,
) -> Submission {
    let mut body = json!({
        "task_type": "text",
        "content": content(i),
        // The default 60 s could end slow tasks `timeout` on a loaded
        // machine; this test is about the crash, not the deadline.
        "timeout_ms": 600_000,
        "metadata": {"crash_test_task": i},
    });
    if keyed == Keyed::Yes {
        body["idempotency_key"] = json!(format!("crash-task-{i}"));
    }
    let response = match http
        .post(format!("{base}/v1/tasks"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
    {
        Ok(response) => response,
        Err(e) => return Submission::Retry(e.to_string()),
    };
    let status = response.status().as_u16();
    let body = match response.text().await {
        Ok(body) => body,
        Err(e) => return Submission::Retry(e.to_string()),
    };
    match status {
        200 | 202 => match serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["task_id"].as_str().map(str::to_owned))
        {
            Some(id) => Submission::Acknowledged(id),
            None => Submission::Refused(status, body),
        },
        503 => Submission::Retry(format!("503: {body}")),
        _ => Submission::Refused(status, body),
    }
}

/// Every task of the tenant, by id, as the list shows it.
async fn list_all(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> Result<HashMap<String, Value>, String> {
    let mut tasks = HashMap::new();
    let mut cursor = String::new();
    loop {
        let response = http
            .get(format!("{base}/v1/tasks?limit=100&cursor={cursor}"))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let page: Value = response.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("GET /v1/tasks: {status} {page}"));
        }
        for task in page["items"].as_array().into_iter().flatten() {
            let id = task["task_id"].as_str().unwrap_or_default().to_owned();
            tasks.insert(id, task.clone());
        }
        match page["next"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => return Ok(tasks),
        }
    }
}

/// Submits `indices` to the restarted child, `SUBMITTERS` at a time. A keyed
/// submission is retried (same key) while the answer is none or 503; any
/// other answer, or any failure of an unkeyed one, fails the test.
async fn submit_all(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    indices: Vec<usize>,
    keyed: Keyed,
    acked: &Mutex<BTreeMap<usize, String>>,
    log: &Path,
) {
    let pending = Mutex::new(indices);
    let submitter = || async {
        loop {
            // (The lock is not held across the awaits below.)
            let next = pending.lock().unwrap().pop();
            let Some(i) = next else { return };
            let first = Instant::now();
            loop {
                match submit(http, base, token, i, keyed).await {
                    Submission::Acknowledged(id) => {
                        acked.lock().unwrap().insert(i, id);
                        break;
                    }
                    Submission::Retry(why)
                        if keyed == Keyed::Yes && first.elapsed() < Duration::from_secs(120) =>
                    {
                        eprintln!("task {i}: not accepted yet after the restart ({why})");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Submission::Retry(why) => {
                        panic!(
                            "task {i} not accepted after the restart: {why}; {}",
                            log_tail(log)
                        )
                    }
                    Submission::Refused(status, body) => {
                        panic!("task {i} refused after the restart: {status} {body}")
                    }
                }
            }
        }
    };
    futures::future::join_all((0..SUBMITTERS).map(|_| submitter())).await;
}

fn is_terminal(task: &Value) -> bool {
    ["completed", "failed", "cancelled"].contains(&task["status"].as_str().unwrap_or(""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_aws_dev_server_loses_no_task_and_pays_no_answer_twice() {
    let started = Instant::now();
    let binary = maof_binary();
    let built = started.elapsed();
    // A moto of its own, not the test process's shared one.
    let moto = maof_tests::moto::dedicated(0);
    let config = maof_tests::moto::sdk_config_at(&moto.endpoint).await;
    let prefix = format!("c{}", ulid::Ulid::new().to_string().to_lowercase());
    let names = ResourceNames::with_prefix(&prefix);

    let upstream = Arc::new(Upstream::default());
    let base_url = start_upstream(upstream.clone()).await;
    // The agent's key, in Secrets Manager as an operator would put it:
    // bound to the local server (a compatible server's key names its hosts).
    let secret = format!("maof/{prefix}-upstream");
    let binding = json!({"key": API_KEY, "provider": "openai_compatible",
        "hosts": ["127.0.0.1"]});
    aws_sdk_secretsmanager::Client::new(&config)
        .create_secret()
        .name(&secret)
        .secret_string(binding.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("create_secret on moto: {e:?}"));
    let dir = std::env::temp_dir().join(format!("maof-crash-{prefix}"));
    std::fs::create_dir_all(&dir).unwrap();
    let seed = dir.join("agents.yaml");
    std::fs::write(
        &seed,
        format!(
            "agents:\n  - id: upstream\n    name: Counting Chat Completions server\n    \
             provider: openai_compatible\n    base_url: {base_url}\n    model: crash-model\n    \
             secret: {secret}\n    capabilities: [text]\n    \
             pricing: {{input_per_mtok: 0.15, output_per_mtok: 0.60}}\n    \
             constraints: {{timeout_ms: {AGENT_TIMEOUT_MS}, max_attempts: 3}}\n"
        ),
    )
    .unwrap();
    let log = dir.join("maof-dev.log");
    println!(
        "crash test: the child logs to {}; moto at {}",
        log.display(),
        moto.endpoint
    );
    let env = [
        ("AWS_ENDPOINT_URL", moto.endpoint.clone()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ("MAOF_CONTEXT_TABLE", names.context_table.clone()),
        ("MAOF_REGISTRY_TABLE", names.registry_table.clone()),
        ("MAOF_QUEUE_PREFIX", names.queue_prefix.clone()),
        ("MAOF_BLOB_BUCKET", names.blob_bucket.clone()),
        ("MAOF_JWT_SECRET", JWT_SECRET.to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let token = Authenticator::new(SecretString::from(JWT_SECRET))
        .mint(
            "crash-test",
            &TenantId::parse("crash").unwrap(),
            &[Role::Submitter, Role::Viewer],
            Duration::from_secs(3600),
        )
        .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // Submit until the first KILL_AFTER are acknowledged, then kill the
    // child. Only a submission the kill may cut needs an idempotency key,
    // and a keyed one is a transaction, which moto makes by deep-copying the
    // whole table once per item written (its time grows with the table):
    // the first KILL_AFTER, all answered before the kill, go without.
    let mut dev = start_dev(&binary, &env, &seed, &log).await;
    let first_up = dev.spawned.elapsed();
    let acked = Arc::new(Mutex::new(BTreeMap::<usize, String>::new()));
    let cut = Arc::new(Mutex::new(Vec::<usize>::new()));
    let busy = Arc::new(Mutex::new(Vec::<usize>::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut submitters = JoinSet::new();
    for _ in 0..SUBMITTERS {
        let (http, base, token) = (http.clone(), dev.base.clone(), token.clone());
        let (acked, cut, busy, next, stop) = (
            acked.clone(),
            cut.clone(),
            busy.clone(),
            next.clone(),
            stop.clone(),
        );
        submitters.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= TASKS {
                    break;
                }
                let keyed = if i < KILL_AFTER {
                    Keyed::No
                } else {
                    Keyed::Yes
                };
                match submit(&http, &base, &token, i, keyed).await {
                    Submission::Acknowledged(id) => {
                        acked.lock().unwrap().insert(i, id);
                    }
                    Submission::Retry(why) if keyed == Keyed::No => {
                        panic!("task {i}, before the kill, got no answer: {why}")
                    }
                    Submission::Retry(why) if why.starts_with("503") => {
                        busy.lock().unwrap().push(i);
                    }
                    Submission::Retry(_) => cut.lock().unwrap().push(i),
                    Submission::Refused(status, body) => {
                        panic!("task {i} refused before the kill: {status} {body}")
                    }
                }
            }
        });
    }
    let submitting = Instant::now();
    loop {
        let acknowledged = acked.lock().unwrap().range(..KILL_AFTER).count();
        if acknowledged == KILL_AFTER {
            break;
        }
        assert!(
            !submitters.is_empty() && submitting.elapsed() < Duration::from_secs(120),
            "{acknowledged} of the first {KILL_AFTER} acknowledged; {}",
            log_tail(&log)
        );
        if let Some(Err(e)) = submitters.try_join_next() {
            std::panic::resume_unwind(e.into_panic());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Then kill it while it waits for the provider, so that a paid call is
    // cut: Child::start_kill is SIGKILL on Unix (no shutdown, no flush).
    let waiting = Instant::now();
    while upstream.in_flight.load(Ordering::SeqCst) == 0 {
        assert!(
            waiting.elapsed() < Duration::from_secs(60),
            "no provider call in flight within 60 s; {}",
            log_tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    dev.child.start_kill().expect("SIGKILL the child");
    let killed_at = Instant::now();
    stop.store(true, Ordering::SeqCst);
    let to_kill = submitting.elapsed();
    let exit = dev.child.wait().await.expect("reap the child");
    assert!(!exit.success(), "the child was killed: {exit}");
    while let Some(joined) = submitters.join_next().await {
        if let Err(e) = joined {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let acked_before_kill = acked.lock().unwrap().len();
    let cut: Vec<usize> = std::mem::take(&mut *cut.lock().unwrap());
    let busy: Vec<usize> = std::mem::take(&mut *busy.lock().unwrap());
    let never_sent: Vec<usize> = (next.load(Ordering::SeqCst).min(TASKS)..TASKS).collect();
    assert!(
        acked_before_kill < TASKS,
        "all {TASKS} were acknowledged before the kill: nothing was cut"
    );

    // Restart on the same tables and queues.
    let dev = start_dev(&binary, &env, &seed, &log).await;
    let restarted_at = dev.spawned;
    let down_for = restarted_at - killed_at;
    let restart_took = restarted_at.elapsed();
    // What had no answer may have been stored: the tasks the list shows (by
    // the index in their metadata) were, the others are submitted again
    // with their keys. Replaying a stored key now would be a transaction
    // that fails its condition, which moto rolls back by restoring a copy
    // of the whole table taken when it began: every write the pipeline made
    // meanwhile would be lost (an acknowledged task vanished that way). The
    // replays come at the end, when nothing else writes.
    let listed = loop {
        match list_all(&http, &dev.base, &token).await {
            Ok(listed) => break listed,
            Err(e) if restarted_at.elapsed() < Duration::from_secs(60) => {
                eprintln!("listing tasks after the restart failed (retrying): {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("cannot list the tasks after the restart: {e}"),
        }
    };
    let stored_before: HashMap<usize, (String, String)> = listed
        .values()
        .filter_map(|t| {
            let i = t["metadata"]["crash_test_task"].as_u64()? as usize;
            let id = t["task_id"].as_str()?.to_owned();
            Some((i, (id, t["status"].as_str().unwrap_or("").to_owned())))
        })
        .collect();
    let in_doubt: Vec<usize> = cut.iter().chain(&busy).copied().collect();
    let mut found = Vec::new();
    let mut again = Vec::new();
    for &i in &in_doubt {
        match stored_before.get(&i) {
            Some((id, status)) => {
                acked.lock().unwrap().insert(i, id.clone());
                found.push((i, id.clone(), status.clone()));
            }
            None => again.push(i),
        }
    }
    // Still queued: behind the route queue's backlog, or, if the kill came
    // before its route message was sent, until the sweeper sends it a
    // stage's grace (60 s) after it was stored.
    let queued = found.iter().filter(|(_, _, s)| s == "queued").count();
    let resubmitted = again.len();
    submit_all(&http, &dev.base, &token, again, Keyed::Yes, &acked, &log).await;
    // Then the rest, without keys: nothing will cut them.
    submit_all(
        &http,
        &dev.base,
        &token,
        never_sent.clone(),
        Keyed::No,
        &acked,
        &log,
    )
    .await;
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert_eq!(acked.len(), TASKS, "every task acknowledged");
    let ids: HashSet<&str> = acked.values().map(String::as_str).collect();
    assert_eq!(ids.len(), TASKS, "one task per submission");

    // Wait until every task has ended.
    let mut tasks = HashMap::new();
    loop {
        match list_all(&http, &dev.base, &token).await {
            Ok(listed) => tasks = listed,
            Err(e) => eprintln!("listing tasks failed (retrying): {e}"),
        }
        let done = ids.iter().all(|id| tasks.get(*id).is_some_and(is_terminal));
        if done {
            break;
        }
        if restarted_at.elapsed() > FINISH_LIMIT {
            let mut stuck = Vec::new();
            for (i, id) in &acked {
                if tasks.get(id.as_str()).is_some_and(is_terminal) {
                    continue;
                }
                // The task with its calls, and what the provider was asked.
                let task = match http
                    .get(format!("{}/v1/tasks/{id}", dev.base))
                    .bearer_auth(&token)
                    .send()
                    .await
                {
                    Ok(response) => response.text().await.unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                let asked = upstream
                    .requests
                    .lock()
                    .unwrap()
                    .get(&content(*i))
                    .map_or(0, Vec::len);
                stuck.push(format!(
                    "task {i} {id} (provider asked {asked} times): {task}"
                ));
            }
            panic!(
                "{} of {TASKS} tasks not ended {FINISH_LIMIT:?} after the restart:\n{}\n{}",
                stuck.len(),
                stuck.join("\n"),
                log_tail(&log)
            );
        }
        // A listing is a query per page and list shard, each a scan of the
        // whole table on moto, which is busy running the pipeline.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let finished_in = restarted_at.elapsed();
    // Now the replays: each stored submission sent again with its key
    // returns its task, finished, and creates nothing.
    for (i, id, _) in &found {
        match submit(&http, &dev.base, &token, *i, Keyed::Yes).await {
            Submission::Acknowledged(replayed) => {
                assert_eq!(&replayed, id, "task {i}: its key returns the stored task")
            }
            Submission::Retry(why) => panic!("task {i}: the replay failed: {why}"),
            Submission::Refused(status, body) => {
                panic!("task {i}: the replay was refused: {status} {body}")
            }
        }
    }
    let tasks_after = list_all(&http, &dev.base, &token)
        .await
        .unwrap_or_else(|e| panic!("listing the tasks after the replays: {e}"));
    assert_eq!(
        tasks_after.len(),
        TASKS,
        "the tenant has exactly the submitted tasks, none created twice"
    );

    // Every task completed, with the answer of the last request for its prompt.
    let requests = upstream.requests.lock().unwrap().clone();
    assert_eq!(
        upstream.refused.load(Ordering::SeqCst),
        0,
        "every request carried the key"
    );
    assert_eq!(
        requests.len(),
        TASKS,
        "one prompt per task reached the provider"
    );
    // Calls the kill cut (sent before it, answered after it: the child never
    // read the answer), and answers read before it but never stored.
    let mut cut_calls = 0;
    let mut unstored = Vec::new();
    let mut failures = Vec::new();
    for (i, id) in &acked {
        let prompt = content(*i);
        let task = &tasks[id.as_str()];
        let received = requests.get(&prompt).map_or(&[][..], Vec::as_slice);
        if task["status"] != "completed" {
            failures.push(format!("task {i} {id} not completed: {task}"));
            continue;
        }
        let before: Vec<&Received> = received
            .iter()
            .filter(|r| r.arrived < restarted_at)
            .collect();
        let after = received.len() - before.len();
        if before.len() > 1 || after > 1 {
            failures.push(format!(
                "task {i}: {} requests before the kill and {after} after the restart",
                before.len()
            ));
            continue;
        }
        // The stored answer is the last request's: no request was made for a
        // prompt whose answer was already stored.
        let expected = reply(received.len(), &prompt);
        if task["result"]["output"] != expected.as_str() {
            failures.push(format!(
                "task {i} {id}: output {} but the provider answered {} times (last: {expected:?})",
                task["result"]["output"],
                received.len()
            ));
            continue;
        }
        let [first] = before[..] else { continue };
        match first.answered {
            Some(answered) if answered < killed_at => {
                if after == 1 {
                    // Answered, but the answer died with the child before
                    // it was stored: this must have been just before the kill.
                    let gap = killed_at - answered;
                    if gap > UNSTORED_ANSWER_WINDOW {
                        failures.push(format!(
                            "task {i}: asked again after an answer sent {gap:?} before the kill"
                        ));
                    }
                    unstored.push(gap);
                }
            }
            // Cut by the kill: the output check above shows it was asked again.
            _ => cut_calls += 1,
        }
    }
    let total_requests: usize = requests.values().map(Vec::len).sum();
    println!(
        "crash test: {TASKS} tasks; binary ready in {built:?}, child up in {first_up:?}; \
         {acked_before_kill} acknowledged before the SIGKILL at {to_kill:?} of submitting; \
         {} submissions cut by it and {} answered 503 before it: {} had been stored ({queued} \
         still queued), {resubmitted} were sent again with their keys, and \
         the stored ones replayed at the end; {} never sent before it; child down {down_for:?}, \
         restart took {restart_took:?}; all ended {finished_in:?} after the restart; \
         provider requests {total_requests}: {cut_calls} calls cut by the kill and made again, \
         {} answered before it but never stored, and asked again (at most {:?} before it); \
         total run time {:?}",
        cut.len(),
        busy.len(),
        found.len(),
        never_sent.len(),
        unstored.len(),
        unstored.iter().max().copied().unwrap_or_default(),
        started.elapsed()
    );
    assert!(
        cut_calls + unstored.len() > 0,
        "the kill came while a call was in flight, yet no paid answer died with the child"
    );
    assert!(
        failures.is_empty(),
        "{} of {TASKS} tasks failed the checks:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        log_tail(&log)
    );
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}
