use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::lock;
use crate::domain::{Agent, AgentId, AgentSpec};
use crate::ports::{Expect, Registry, StoreError};

#[derive(Default)]
pub struct MemoryRegistry {
    agents: Mutex<BTreeMap<AgentId, Agent>>,
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Checks a write's expectation against the current entry; shared by put and delete.
pub(crate) fn check_expect(current: Option<u64>, expect: Expect) -> Result<(), StoreError> {
    match (expect, current) {
        (Expect::Any, _) => Ok(()),
        (Expect::Absent, None) => Ok(()),
        (Expect::Absent, Some(_)) => Err(StoreError::AlreadyExists),
        (Expect::Version(v), Some(c)) if v == c => Ok(()),
        (Expect::Version(_), current) => Err(StoreError::VersionConflict { current }),
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn get(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        Ok(lock(&self.agents).get(id).cloned())
    }

    async fn list(&self) -> Result<Vec<Agent>, StoreError> {
        Ok(lock(&self.agents).values().cloned().collect())
    }

    async fn put(
        &self,
        id: &AgentId,
        spec: AgentSpec,
        expect: Expect,
    ) -> Result<Agent, StoreError> {
        let mut agents = lock(&self.agents);
        let current = agents.get(id).map(|a| a.version);
        check_expect(current, expect)?;
        let agent = Agent {
            id: id.clone(),
            spec,
            version: current.unwrap_or(0) + 1,
        };
        agents.insert(id.clone(), agent.clone());
        Ok(agent)
    }

    async fn delete(&self, id: &AgentId, expect: Expect) -> Result<(), StoreError> {
        let mut agents = lock(&self.agents);
        let current = agents.get(id).map(|a| a.version);
        if current.is_none() {
            return Err(StoreError::NotFound);
        }
        check_expect(current, expect)?;
        agents.remove(id);
        Ok(())
    }
}
