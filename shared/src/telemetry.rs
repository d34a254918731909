//! Logging set-up shared by every binary: JSON in Lambda (CloudWatch parses
//! it), readable lines locally; the level from `RUST_LOG`.
//!
//! Spans carry the fields of the architecture: `tenant`, `task_id`, `stage`,
//! and `call_id` / `agent_id` where known. `stage_span` makes the stage span.

use tracing_subscriber::EnvFilter;

/// Whether the process runs inside AWS Lambda.
pub fn in_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some()
}

/// Installs the global subscriber once; later calls do nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if in_lambda() {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .without_time() // CloudWatch stamps every line
            .with_ansi(false)
            .try_init()
    } else {
        builder.with_target(false).try_init()
    };
}

/// The span every stage runs a message in; `call_id` and `agent_id` are
/// recorded later when known.
#[macro_export]
macro_rules! stage_span {
    ($stage:expr, $tenant:expr, $task_id:expr) => {
        tracing::info_span!(
            "stage",
            stage = $stage,
            tenant = %$tenant,
            task_id = %$task_id,
            call_id = tracing::field::Empty,
            agent_id = tracing::field::Empty,
        )
    };
}
