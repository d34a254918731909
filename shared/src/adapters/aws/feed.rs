use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodbstreams::error::SdkError;
use aws_sdk_dynamodbstreams::operation::get_records::GetRecordsError;
use aws_sdk_dynamodbstreams::types::{Record, ShardIteratorType};
use chrono::Utc;
use tokio::sync::Mutex;

use super::describe;
use crate::adapters::layout::{self, keys};
use crate::domain::{TaskId, TenantId};
use crate::ports::{FeedBatch, FeedPosition, FinishedFeed, Finishing, StoreError};

/// The context table's DynamoDB stream, read as the announcer Lambda's
/// trigger reads it: shard by shard, parents before children, from a
/// checkpoint per shard kept in the table itself (`FEED#announcer`). Used
/// where no trigger runs: `maof dev --backend aws` and the tests on moto.
pub struct StreamFeed {
    streams: aws_sdk_dynamodbstreams::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    state: Mutex<Shards>,
}

#[derive(Default)]
struct Shards {
    stream_arn: Option<String>,
    /// In the order DescribeStream lists them (oldest first).
    shards: Vec<Shard>,
    described: Option<Instant>,
    /// The shard read next, round robin.
    turn: usize,
}

struct Shard {
    id: String,
    parent: Option<String>,
    /// Where the next GetRecords reads; `None`: from the checkpoint.
    iterator: Option<String>,
    /// Read to its end (a closed shard has no next iterator).
    done: bool,
}

impl StreamFeed {
    /// New shards appear every few hours; looked for this often.
    const DESCRIBE_EVERY: Duration = Duration::from_secs(30);

    pub fn new(
        streams: aws_sdk_dynamodbstreams::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
    ) -> Self {
        StreamFeed {
            streams,
            dynamodb,
            table: table.into(),
            state: Mutex::default(),
        }
    }

    async fn stream_arn(&self, state: &mut Shards) -> Result<String, StoreError> {
        if let Some(arn) = &state.stream_arn {
            return Ok(arn.clone());
        }
        let table = self
            .dynamodb
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| StoreError::Backend(describe(e)))?;
        let arn = table
            .table
            .and_then(|t| t.latest_stream_arn)
            .ok_or_else(|| {
                StoreError::Backend(format!(
                    "table {} has no stream: enable its StreamSpecification (template.yaml)",
                    self.table
                ))
            })?;
        state.stream_arn = Some(arn.clone());
        Ok(arn)
    }

    /// Adds the shards the stream has now to those known.
    async fn describe(&self, state: &mut Shards) -> Result<(), StoreError> {
        let arn = self.stream_arn(state).await?;
        let mut start: Option<String> = None;
        loop {
            let out = self
                .streams
                .describe_stream()
                .stream_arn(&arn)
                .set_exclusive_start_shard_id(start.take())
                .send()
                .await
                .map_err(|e| StoreError::Backend(describe(e)))?;
            let Some(description) = out.stream_description else {
                break;
            };
            for shard in description.shards.unwrap_or_default() {
                let Some(id) = shard.shard_id else { continue };
                if !state.shards.iter().any(|s| s.id == id) {
                    state.shards.push(Shard {
                        id,
                        parent: shard.parent_shard_id,
                        iterator: None,
                        done: false,
                    });
                }
            }
            match description.last_evaluated_shard_id {
                Some(last) => start = Some(last),
                None => break,
            }
        }
        state.described = Some(Instant::now());
        Ok(())
    }

    fn checkpoint_key(shard: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([
            (
                keys::PK.to_owned(),
                AttributeValue::S(keys::FEED_PK.to_owned()),
            ),
            (keys::SK.to_owned(), AttributeValue::S(shard.to_owned())),
        ])
    }

    /// The iterator a shard's reading starts from: after its checkpoint, or
    /// at its oldest record.
    async fn start(&self, arn: &str, shard: &str) -> Result<String, StoreError> {
        let saved = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::checkpoint_key(shard)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| StoreError::Backend(describe(e)))?
            .item
            .and_then(|item| match item.get(SEQUENCE) {
                Some(AttributeValue::S(s)) => Some(s.clone()),
                _ => None,
            });
        let request = || {
            self.streams
                .get_shard_iterator()
                .stream_arn(arn)
                .shard_id(shard)
        };
        let started = match saved {
            Some(sequence) => {
                let after = request()
                    .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                    .sequence_number(&sequence)
                    .send()
                    .await;
                match after {
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|e| e.is_trimmed_data_access_exception()) =>
                    {
                        // Unread for longer than the stream keeps changes.
                        tracing::error!(
                            shard,
                            sequence,
                            "the stream dropped changes past the checkpoint before they were announced"
                        );
                        request()
                            .shard_iterator_type(ShardIteratorType::TrimHorizon)
                            .send()
                            .await
                    }
                    other => other,
                }
            }
            None => {
                request()
                    .shard_iterator_type(ShardIteratorType::TrimHorizon)
                    .send()
                    .await
            }
        };
        started
            .map_err(|e| StoreError::Backend(describe(e)))?
            .shard_iterator
            .ok_or_else(|| StoreError::Backend(format!("no iterator for shard {shard}")))
    }
}

const SEQUENCE: &str = "sequence";

/// The task a stream record shows finishing, if any. A task item that cannot
/// be read is logged and passed over: reading it again would not help, and
/// it would hold up every record behind it.
pub(crate) fn finished_in(
    old: HashMap<String, serde_dynamo::AttributeValue>,
    new: serde_dynamo::Item,
    sequence: &str,
) -> Option<(TenantId, TaskId)> {
    match layout::finished_task(&old, new) {
        Ok(task) => task,
        Err(e) => {
            tracing::error!(error = %e, sequence, "a task item in the stream cannot be read; not announced");
            None
        }
    }
}

fn record_task(record: &Record) -> Option<(String, Option<(TenantId, TaskId)>)> {
    let change = record.dynamodb.as_ref()?;
    let sequence = change.sequence_number.clone()?;
    let image = |i: Option<&HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>>| {
        serde_dynamo::Item::from(i.cloned().unwrap_or_default())
    };
    let task = finished_in(
        image(change.old_image.as_ref()).into_inner(),
        image(change.new_image.as_ref()),
        &sequence,
    );
    Some((sequence, task))
}

#[async_trait]
impl FinishedFeed for StreamFeed {
    #[tracing::instrument(skip_all)]
    async fn read(&self, limit: usize) -> Result<FeedBatch, StoreError> {
        let mut state = self.state.lock().await;
        let stale = state
            .described
            .is_none_or(|at| at.elapsed() > Self::DESCRIBE_EVERY);
        if stale || state.shards.iter().all(|s| s.done) {
            self.describe(&mut state).await?;
        }
        let arn = self.stream_arn(&mut state).await?;
        // A shard is read once its parent (if still listed) is read to its
        // end, so that a task's changes come out in order.
        let ready: Vec<usize> = (0..state.shards.len())
            .filter(|&i| {
                let shard = &state.shards[i];
                !shard.done
                    && shard
                        .parent
                        .as_ref()
                        .is_none_or(|parent| state.shards.iter().all(|p| &p.id != parent || p.done))
            })
            .collect();
        if ready.is_empty() {
            return Ok(FeedBatch::default());
        }
        let i = ready[state.turn % ready.len()];
        state.turn = state.turn.wrapping_add(1);
        let shard_id = state.shards[i].id.clone();
        let iterator = match state.shards[i].iterator.take() {
            Some(iterator) => iterator,
            None => self.start(&arn, &shard_id).await?,
        };
        let out = match self
            .streams
            .get_records()
            .shard_iterator(iterator)
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                // The iterator is gone (they last 15 minutes); the next read
                // starts again from the checkpoint.
                if let SdkError::ServiceError(service) = &e
                    && matches!(
                        service.err(),
                        GetRecordsError::ExpiredIteratorException(_)
                            | GetRecordsError::TrimmedDataAccessException(_)
                    )
                {
                    tracing::warn!(shard = %shard_id, error = %describe(&e), "stream iterator lost; reading from the checkpoint");
                    return Ok(FeedBatch::default());
                }
                return Err(StoreError::Backend(describe(e)));
            }
        };
        match out.next_shard_iterator {
            Some(next) => state.shards[i].iterator = Some(next),
            None => state.shards[i].done = true,
        }
        let records = out.records.unwrap_or_default();
        let finished = records
            .iter()
            .filter_map(record_task)
            .filter_map(|(sequence, task)| {
                task.map(|(tenant, task_id)| Finishing {
                    position: FeedPosition {
                        shard: shard_id.clone(),
                        sequence,
                    },
                    tenant,
                    task_id,
                })
            })
            .collect();
        Ok(FeedBatch {
            finished,
            records: records.len(),
        })
    }

    #[tracing::instrument(skip_all, fields(shard = %position.shard))]
    async fn checkpoint(&self, position: &FeedPosition) -> Result<(), StoreError> {
        // Kept two days: past the stream's one-day retention.
        let expires_at = Utc::now().timestamp() + 2 * 24 * 3600;
        let mut item = Self::checkpoint_key(&position.shard);
        item.insert(
            SEQUENCE.to_owned(),
            AttributeValue::S(position.sequence.clone()),
        );
        item.insert(
            "expires_at".to_owned(),
            AttributeValue::N(expires_at.to_string()),
        );
        self.dynamodb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| StoreError::Backend(describe(e)))?;
        Ok(())
    }

    async fn rewind(&self) {
        for shard in &mut self.state.lock().await.shards {
            shard.iterator = None;
            // A shard read to its end may have records not announced.
            shard.done = false;
        }
    }
}
