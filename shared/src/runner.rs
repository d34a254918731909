//! The local stand-in for Lambda's SQS trigger, used by `maof dev` and the
//! end-to-end tests: pollers receive batches, hand them to the same batch
//! handler the Lambdas use, delete what succeeded and leave failures to come
//! back after their visibility timeout (and to the DLQ after the maximum
//! receives, where the dead-letter pollers fail their tasks).
//!
//! Each queue's visibility timeout is the one template.yaml gives it, and a
//! heartbeat extends the visibility of the messages in hand while their
//! batch is being handled, so a slow call is never delivered a second time
//! while it is still running.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::adapters::aws::template::{TEMPLATE, TemplateShape};
use crate::ports::{FinishedFeed, QueueName, ReceivedMessage};
use crate::stages::Services;
use crate::stages::batch::{self, BatchMessage};

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Messages per batch (the event source mapping's batch size; SQS allows 10).
    pub batch_size: u32,
    /// How long a received message stays hidden, per queue; a failed one
    /// returns after it. A queue not named here gets `FALLBACK_VISIBILITY`.
    pub visibility: BTreeMap<QueueName, Duration>,
    /// Long-poll wait of each receive.
    pub wait: Duration,
    /// Concurrent pollers per work queue (Lambda's concurrency per stage).
    pub route_pollers: usize,
    pub agent_call_pollers: usize,
    pub aggregate_pollers: usize,
    /// How often the sweeper runs (a scheduled Lambda runs it every minute).
    pub sweep_every: Duration,
}

/// The visibility of a queue the template does not describe.
pub const FALLBACK_VISIBILITY: Duration = Duration::from_secs(30);

impl Default for RunnerConfig {
    /// The Lambda trigger's settings, with each queue's visibility timeout
    /// as template.yaml declares it.
    fn default() -> Self {
        RunnerConfig {
            batch_size: 10,
            visibility: template_visibility(),
            wait: Duration::from_secs(1),
            route_pollers: 2,
            agent_call_pollers: 8,
            aggregate_pollers: 2,
            sweep_every: Duration::from_secs(5),
        }
    }
}

impl RunnerConfig {
    /// The same visibility timeout on every queue (tests use a short one, so
    /// that failed messages come back quickly).
    pub fn with_visibility(mut self, visibility: Duration) -> Self {
        self.visibility = QueueName::ALL.iter().map(|q| (*q, visibility)).collect();
        self
    }

    pub fn visibility(&self, queue: QueueName) -> Duration {
        self.visibility
            .get(&queue)
            .copied()
            .unwrap_or(FALLBACK_VISIBILITY)
    }
}

/// Each pipeline queue's `VisibilityTimeout` in the embedded template.
fn template_visibility() -> BTreeMap<QueueName, Duration> {
    let prefix = "maof";
    let overrides = HashMap::from([("Prefix".to_owned(), prefix.to_owned())]);
    let shape = match TemplateShape::parse(TEMPLATE, &overrides) {
        Ok(shape) => shape,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the queues' visibility from template.yaml");
            return BTreeMap::new();
        }
    };
    QueueName::ALL
        .iter()
        .filter_map(|queue| {
            let name = format!("{prefix}-{}", queue.as_str());
            let shape = shape.queues.iter().find(|s| s.name == name)?;
            Some((*queue, Duration::from_secs(shape.visibility_timeout?)))
        })
        .collect()
}

pub struct Runner {
    stop: watch::Sender<bool>,
    pollers: Vec<JoinHandle<()>>,
}

impl Runner {
    pub fn spawn(svc: Services, config: RunnerConfig) -> Runner {
        let (stop, stopped) = watch::channel(false);
        let mut pollers = Vec::new();
        let plan = [
            (QueueName::Route, config.route_pollers),
            (QueueName::AgentCall, config.agent_call_pollers),
            (QueueName::Aggregate, config.aggregate_pollers),
            (QueueName::RouteDlq, 1),
            (QueueName::AgentCallDlq, 1),
            (QueueName::AggregateDlq, 1),
        ];
        for (queue, count) in plan {
            for _ in 0..count.max(1) {
                pollers.push(tokio::spawn(poll(
                    svc.clone(),
                    queue,
                    config.clone(),
                    stopped.clone(),
                )));
            }
        }
        pollers.push(tokio::spawn(sweep(
            svc.clone(),
            config.sweep_every,
            stopped.clone(),
        )));
        if let Some(feed) = svc.feed.clone() {
            pollers.push(tokio::spawn(announce(svc.clone(), feed, stopped.clone())));
        }
        Runner { stop, pollers }
    }

    /// Stops receiving and waits for the batches in hand to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        join_all(self.pollers).await;
    }
}

async fn poll(
    svc: Services,
    queue: QueueName,
    config: RunnerConfig,
    mut stopped: watch::Receiver<bool>,
) {
    let visibility = config.visibility(queue);
    loop {
        if *stopped.borrow() {
            return;
        }
        let received = tokio::select! {
            _ = stopped.changed() => return,
            received = svc.queue.receive(queue, config.batch_size, visibility, config.wait) => received,
        };
        let messages = match received {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(queue = queue.as_str(), error = %e, "receive failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        let batch: Vec<BatchMessage> = messages
            .iter()
            .map(|m| BatchMessage {
                message_id: m.message_id.clone(),
                receipt: m.receipt.clone(),
                body: m.body.clone(),
                receive_count: m.receive_count,
            })
            .collect();
        // The heartbeat stops when the batch is done, after any extension
        // it has under way: one landing later would undo the visibility a
        // retry is given below.
        let (done, batch_done) = watch::channel(false);
        let (failed, ()) = tokio::join!(
            async {
                let failed = batch::process(&svc, queue, batch, None).await;
                let _ = done.send(true);
                failed
            },
            heartbeat(&svc, queue, &messages, visibility, batch_done),
        );
        batch::delay_retries(&svc, queue, &failed).await;
        let deletes = messages
            .iter()
            .filter(|m| !failed.iter().any(|f| f.message_id == m.message_id))
            .map(|m| svc.queue.delete(queue, &m.receipt));
        for result in join_all(deletes).await {
            if let Err(e) = result {
                // The message comes back and is handled again: harmless, as every stage is idempotent.
                tracing::warn!(queue = queue.as_str(), error = %e, "delete failed");
            }
        }
    }
}

/// The sweeper, every `every`, as the scheduled Lambda runs it on AWS.
async fn sweep(svc: Services, every: Duration, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match crate::stages::sweeper::sweep(&svc).await {
            Ok(report) if report.expired + report.redriven > 0 => {
                tracing::info!(
                    expired = report.expired,
                    redriven = report.redriven,
                    "sweeper pass"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweeper pass failed; the next one retries"),
        }
    }
}

/// The announcer: relays finished tasks from the store's change stream to
/// the event bus, as the stream-triggered Lambda does on AWS.
async fn announce(svc: Services, feed: Arc<dyn FinishedFeed>, mut stopped: watch::Receiver<bool>) {
    use crate::stages::announce::{BACKOFF, IDLE, relay};
    loop {
        let pause = match relay(&svc, feed.as_ref(), 1000).await {
            Ok(records) if records > 0 => Duration::ZERO,
            Ok(_) => IDLE,
            Err(e) => {
                tracing::warn!(error = %e, "reading the task stream failed; retrying");
                BACKOFF
            }
        };
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Keeps `messages` hidden while their batch is handled: every half
/// visibility timeout, hides them for another whole one, until `done`.
async fn heartbeat(
    svc: &Services,
    queue: QueueName,
    messages: &[ReceivedMessage],
    visibility: Duration,
    mut done: watch::Receiver<bool>,
) {
    let period = visibility / 2;
    loop {
        tokio::select! {
            _ = done.changed() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let extensions = messages
            .iter()
            .map(|m| svc.queue.change_visibility(queue, &m.receipt, visibility));
        for result in join_all(extensions).await {
            if let Err(e) = result {
                tracing::warn!(queue = queue.as_str(), error = %e, "could not extend a message's visibility");
            }
        }
    }
}
