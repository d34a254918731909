use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::lock;
use crate::ports::{BlobError, BlobKey, BlobStore};

#[derive(Default)]
struct Blobs {
    by_key: HashMap<BlobKey, Vec<u8>>,
    /// Keys, oldest first: what retention evicts.
    order: VecDeque<BlobKey>,
    bytes: usize,
}

/// Blobs in process. Like the bucket's lifecycle expiry, retention bounds
/// what is kept: past `max_bytes`, the oldest blobs go.
pub struct MemoryBlobs {
    blobs: Mutex<Blobs>,
    max_bytes: usize,
}

impl Default for MemoryBlobs {
    fn default() -> Self {
        Self::with_retention(Self::DEFAULT_MAX_BYTES)
    }
}

impl MemoryBlobs {
    pub const DEFAULT_MAX_BYTES: usize = 512 * 1024 * 1024;

    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_retention(max_bytes: usize) -> Self {
        MemoryBlobs {
            blobs: Mutex::default(),
            max_bytes,
        }
    }
}

#[async_trait]
impl BlobStore for MemoryBlobs {
    async fn put(&self, key: &BlobKey, body: Vec<u8>) -> Result<(), BlobError> {
        let mut blobs = lock(&self.blobs);
        blobs.bytes += body.len();
        match blobs.by_key.insert(key.clone(), body) {
            Some(old) => blobs.bytes -= old.len(),
            None => blobs.order.push_back(key.clone()),
        }
        while blobs.bytes > self.max_bytes {
            let Some(oldest) = blobs.order.pop_front() else {
                break;
            };
            if let Some(gone) = blobs.by_key.remove(&oldest) {
                blobs.bytes -= gone.len();
            }
        }
        Ok(())
    }

    async fn get(&self, key: &BlobKey) -> Result<Option<Vec<u8>>, BlobError> {
        Ok(lock(&self.blobs).by_key.get(key).cloned())
    }
}
