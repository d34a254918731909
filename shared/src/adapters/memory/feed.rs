use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{MemoryTaskStore, lock};
use crate::ports::{FeedBatch, FeedPosition, FinishedFeed, Finishing, StoreError};

/// The memory task store's change stream, read as the announcer reads the
/// table's: from the store's checkpoint, which outlives this reader (a new
/// reader on the same store goes on where the last one checkpointed).
pub struct MemoryFeed {
    store: Arc<MemoryTaskStore>,
    /// The last record read; `None` reads from the checkpoint.
    read_through: Mutex<Option<u64>>,
}

impl MemoryFeed {
    /// The one shard's name.
    pub const SHARD: &'static str = "memory";

    pub fn new(store: Arc<MemoryTaskStore>) -> Self {
        store.announced_by_a_reader();
        MemoryFeed {
            store,
            read_through: Mutex::new(None),
        }
    }
}

fn position(sequence: u64) -> FeedPosition {
    FeedPosition {
        shard: MemoryFeed::SHARD.to_owned(),
        sequence: sequence.to_string(),
    }
}

#[async_trait]
impl FinishedFeed for MemoryFeed {
    async fn read(&self, limit: usize) -> Result<FeedBatch, StoreError> {
        let after = *lock(&self.read_through);
        let records = self.store.finishings_after(after, limit);
        if let Some((last, _, _)) = records.last() {
            *lock(&self.read_through) = Some(*last);
        }
        Ok(FeedBatch {
            records: records.len(),
            finished: records
                .into_iter()
                .map(|(n, tenant, task_id)| Finishing {
                    position: position(n),
                    tenant,
                    task_id,
                })
                .collect(),
        })
    }

    async fn checkpoint(&self, position: &FeedPosition) -> Result<(), StoreError> {
        let sequence = position.sequence.parse().map_err(|_| {
            StoreError::Backend(format!("not a memory stream position: {position:?}"))
        })?;
        self.store.set_announced(sequence);
        Ok(())
    }

    async fn rewind(&self) {
        *lock(&self.read_through) = None;
    }
}
