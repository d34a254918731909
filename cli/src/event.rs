//! `maof event`: ready-to-invoke Lambda events for `cargo lambda invoke`,
//! made from the test fixtures with real values in place of their
//! placeholders (a token signed with `MAOF_JWT_SECRET`, a task's route
//! message).

use std::time::Duration;

use anyhow::Context;
use maof::api::Authenticator;
use maof::domain::{Envelope, MessageKind, Role, TaskId, TenantId};
use secrecy::SecretString;
use serde_json::{Value, json};

const INTAKE_EVENT: &str = include_str!("../../tests/fixtures/events/apigw-v2-post-task.json");
const ROUTE_EVENT: &str = include_str!("../../tests/fixtures/events/sqs-route-batch.json");

#[derive(clap::Args)]
pub struct EventArgs {
    #[command(subcommand)]
    kind: EventKind,
}

#[derive(clap::Subcommand)]
enum EventKind {
    /// An HTTP API request submitting a task (`POST /v1/tasks`), with a
    /// token signed by MAOF_JWT_SECRET, for the intake function.
    Intake {
        #[arg(long, default_value = "dev")]
        tenant: String,
        #[arg(long, default_value = "Analyze this text for sentiment: I love it")]
        content: String,
    },
    /// An SQS batch carrying one task's route message, for the route function.
    Route {
        /// The task's id (as `POST /v1/tasks` answered).
        #[arg(long)]
        task: String,
        #[arg(long, default_value = "dev")]
        tenant: String,
    },
}

pub fn run(args: EventArgs) -> anyhow::Result<()> {
    let event = match args.kind {
        EventKind::Intake { tenant, content } => intake(&tenant, &content)?,
        EventKind::Route { task, tenant } => route(&tenant, &task)?,
    };
    println!("{}", serde_json::to_string_pretty(&event)?);
    Ok(())
}

fn intake(tenant: &str, content: &str) -> anyhow::Result<Value> {
    let secret = std::env::var("MAOF_JWT_SECRET").context(
        "MAOF_JWT_SECRET is not set: the token is signed with it (run `maof bootstrap` with the same value)",
    )?;
    let token = Authenticator::new(SecretString::from(secret)).mint(
        "cargo-lambda",
        &TenantId::parse(tenant).context("bad --tenant")?,
        &[Role::Submitter],
        Duration::from_secs(3600),
    )?;
    let mut event: Value = serde_json::from_str(&INTAKE_EVENT.replace("{{TOKEN}}", &token))?;
    event["body"] = json!({"task_type": "text", "content": content})
        .to_string()
        .into();
    // Each event submits a new task, and the answer comes at once (202):
    // no other stage runs beside a lone function to finish it.
    if let Some(headers) = event["headers"].as_object_mut() {
        headers.remove("idempotency-key");
    }
    event["rawQueryString"] = "".into();
    if let Some(fields) = event.as_object_mut() {
        fields.remove("queryStringParameters");
    }
    Ok(event)
}

fn route(tenant: &str, task: &str) -> anyhow::Result<Value> {
    let envelope = Envelope::new(
        MessageKind::Route,
        TenantId::parse(tenant).context("bad --tenant")?,
        TaskId::parse(task).context("bad --task: a task id as POST /v1/tasks answered")?,
    );
    let mut event: Value = serde_json::from_str(ROUTE_EVENT)?;
    let records = event["Records"]
        .as_array_mut()
        .context("the fixture has Records")?;
    // The fixture's first record, carrying this task's message.
    records.truncate(1);
    records[0]["body"] = envelope.to_body().into();
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_event_carries_the_task_and_no_placeholder() {
        let task = TaskId::new().to_string();
        let event = route("dev", &task).unwrap();
        let text = event.to_string();
        assert!(!text.contains("{{"), "{text}");
        let body = event["Records"][0]["body"].as_str().unwrap();
        assert_eq!(Envelope::parse(body).unwrap().task_id.to_string(), task);
        assert!(route("dev", "not-an-id").is_err());
    }
}
