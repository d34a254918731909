//! The local stand-in for Lambda's SQS trigger, used by `maof dev` and the
//! end-to-end tests: pollers receive batches, hand them to the same batch
//! handler the Lambdas use, delete what succeeded and leave failures to come
//! back after their visibility timeout (and to the DLQ after the maximum
//! receives, where the dead-letter pollers fail their tasks).

use std::time::Duration;

use futures::future::join_all;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ports::QueueName;
use crate::stages::Services;
use crate::stages::batch::{self, BatchMessage};

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Messages per batch (the event source mapping's batch size; SQS allows 10).
    pub batch_size: u32,
    /// How long a received message stays hidden; a failed one returns after it.
    pub visibility: Duration,
    /// Long-poll wait of each receive.
    pub wait: Duration,
    /// Concurrent pollers per work queue (Lambda's concurrency per stage).
    pub route_pollers: usize,
    pub agent_call_pollers: usize,
    pub aggregate_pollers: usize,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            batch_size: 10,
            visibility: Duration::from_secs(30),
            wait: Duration::from_secs(1),
            route_pollers: 2,
            agent_call_pollers: 8,
            aggregate_pollers: 2,
        }
    }
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
    loop {
        if *stopped.borrow() {
            return;
        }
        let received = tokio::select! {
            _ = stopped.changed() => return,
            received = svc.queue.receive(queue, config.batch_size, config.visibility, config.wait) => received,
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
        let failed = batch::process(&svc, queue, batch).await;
        let deletes = messages
            .iter()
            .filter(|m| !failed.contains(&m.message_id))
            .map(|m| svc.queue.delete(queue, &m.receipt));
        for result in join_all(deletes).await {
            if let Err(e) = result {
                // The message comes back and is handled again: harmless, as every stage is idempotent.
                tracing::warn!(queue = queue.as_str(), error = %e, "delete failed");
            }
        }
    }
}
