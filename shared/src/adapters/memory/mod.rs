//! In-process backends for `maof dev` and fast tests. Each keeps the exact
//! semantics of its AWS counterpart (conditions, visibility, redrive).

mod audit;
mod blobs;
mod events;
mod feed;
mod queue;
mod registry;
mod secrets;
mod task_store;

pub use audit::MemoryAudit;
pub use blobs::MemoryBlobs;
pub use events::MemoryEvents;
pub use feed::MemoryFeed;
pub use queue::MemoryQueue;
pub use registry::MemoryRegistry;
pub use secrets::MemorySecrets;
pub use task_store::MemoryTaskStore;

/// Locks a std mutex, ignoring poisoning: every critical section here leaves
/// the data consistent before anything that could panic.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
