//! Ports: one trait per outside thing. Stages are written against these only;
//! `adapters` implements them in memory and on AWS.

pub mod audit;
pub mod blobs;
pub mod clock;
pub mod events;
pub mod health;
pub mod limits;
pub mod provider;
pub mod queue;
pub mod registry;
pub mod rotation;
pub mod secrets;
pub mod task_store;

pub use audit::{AuditLog, NoAuditLog};
pub use blobs::{BlobError, BlobKey, BlobStore, NoBlobs};
pub use clock::{Clock, ManualClock, SystemClock};
pub use events::{
    EventError, EventPublisher, FeedBatch, FeedPosition, FinishedFeed, Finishing, NoEvents,
    TaskFinished,
};
pub use health::{AgentHealth, LocalHealth};
pub use limits::{Draw, Holder, LocalLimiter, RateLimiter};
pub use provider::{
    ChatRequest, ChatResponse, Message, ProviderClient, ProviderClients, ProviderError, Role,
};
pub use queue::{OutgoingMessage, Queue, QueueError, QueueName, ReceivedMessage};
pub use registry::{Expect, Registry, Versioned};
pub use rotation::{LocalRotation, Rotation, RotationKey};
pub use secrets::{CachedSecrets, SecretError, SecretSource};
pub use task_store::{FanIn, Page, SpendOn, StoreError, TaskRecord, TaskStore};
