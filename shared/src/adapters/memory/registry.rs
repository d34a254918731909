use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{MemoryAudit, lock};
use crate::domain::{Agent, AgentId, AgentSpec, AuditEntry, Owner, TenantId, TenantSettings};
use crate::ports::{Expect, Registry, StoreError, Versioned};

/// Agents by owner, and tenants' settings, in process. A write's audit
/// entry goes to the audit logs it was given (the task store's, as both
/// are one account's tables on AWS), with the write.
#[derive(Default)]
pub struct MemoryRegistry {
    agents: Mutex<BTreeMap<(Owner, AgentId), Agent>>,
    settings: Mutex<HashMap<TenantId, Versioned<TenantSettings>>>,
    audit: Arc<MemoryAudit>,
}

impl MemoryRegistry {
    /// A registry with audit logs of its own.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry appending to `audit` (`MemoryTaskStore::audit_log`).
    pub fn with_audit(audit: Arc<MemoryAudit>) -> Self {
        MemoryRegistry {
            audit,
            ..Self::default()
        }
    }

    /// Checks the entry before the write, appends it after (under the
    /// write's lock, so that no reader sees one without the other).
    fn audited<T>(
        &self,
        audit: Option<&AuditEntry>,
        write: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Some(entry) = audit {
            MemoryAudit::check(entry)?;
        }
        let written = write()?;
        if let Some(entry) = audit {
            self.audit.append(entry);
        }
        Ok(written)
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
    async fn get(&self, owner: &Owner, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        Ok(lock(&self.agents)
            .get(&(owner.clone(), id.clone()))
            .cloned())
    }

    async fn list(&self, owner: &Owner) -> Result<Vec<Agent>, StoreError> {
        Ok(lock(&self.agents)
            .iter()
            .filter(|((o, _), _)| o == owner)
            .map(|(_, agent)| agent.clone())
            .collect())
    }

    async fn put(
        &self,
        owner: &Owner,
        id: &AgentId,
        spec: AgentSpec,
        expect: Expect,
        audit: Option<&AuditEntry>,
    ) -> Result<Agent, StoreError> {
        let mut agents = lock(&self.agents);
        self.audited(audit, || {
            let key = (owner.clone(), id.clone());
            let current = agents.get(&key).map(|a| a.version);
            check_expect(current, expect)?;
            let agent = Agent {
                id: id.clone(),
                owner: owner.clone(),
                spec,
                version: current.unwrap_or(0) + 1,
            };
            agents.insert(key, agent.clone());
            Ok(agent)
        })
    }

    async fn delete(
        &self,
        owner: &Owner,
        id: &AgentId,
        expect: Expect,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError> {
        let mut agents = lock(&self.agents);
        self.audited(audit, || {
            let key = (owner.clone(), id.clone());
            let current = agents.get(&key).map(|a| a.version);
            if current.is_none() {
                return Err(StoreError::NotFound);
            }
            check_expect(current, expect)?;
            agents.remove(&key);
            Ok(())
        })
    }

    async fn settings(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<Versioned<TenantSettings>>, StoreError> {
        Ok(lock(&self.settings).get(tenant).cloned())
    }

    async fn put_settings(
        &self,
        tenant: &TenantId,
        settings: &TenantSettings,
        expect: Expect,
        audit: Option<&AuditEntry>,
    ) -> Result<Versioned<TenantSettings>, StoreError> {
        let mut all = lock(&self.settings);
        self.audited(audit, || {
            let current = all.get(tenant).map(|s| s.version);
            check_expect(current, expect)?;
            let written = Versioned {
                value: settings.clone(),
                version: current.unwrap_or(0) + 1,
            };
            all.insert(tenant.clone(), written.clone());
            Ok(written)
        })
    }
}
