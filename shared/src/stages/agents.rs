use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::{Agent, AgentId};
use crate::ports::{Registry, StoreError};

/// The registry's agent list, cached for a TTL: routing reads it for every
/// task, and the registry changes rarely.
pub struct AgentCache {
    registry: Arc<dyn Registry>,
    ttl: Duration,
    cached: Mutex<Option<(Instant, Arc<Vec<Agent>>)>>,
}

impl AgentCache {
    pub fn new(registry: Arc<dyn Registry>, ttl: Duration) -> Self {
        AgentCache {
            registry,
            ttl,
            cached: Mutex::new(None),
        }
    }

    pub async fn all(&self) -> Result<Arc<Vec<Agent>>, StoreError> {
        if let Some((at, agents)) = &*self.lock()
            && at.elapsed() < self.ttl
        {
            return Ok(agents.clone());
        }
        let agents = Arc::new(self.registry.list().await?);
        *self.lock() = Some((Instant::now(), agents.clone()));
        Ok(agents)
    }

    pub async fn get(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        Ok(self.all().await?.iter().find(|a| &a.id == id).cloned())
    }

    /// Drops the cache, after a write through this process.
    pub fn invalidate(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Arc<Vec<Agent>>)>> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }
}
