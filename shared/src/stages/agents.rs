//! Agents as a tenant sees them: its own, and the platform agents its
//! settings allow, cached; and the writes of both kinds of owner.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::audit::{changed_fields, changed_fields_within};
use crate::domain::{
    Action, Agent, AgentId, AgentRequest, AgentSpec, AgentSpecError, AuditEntry, EffectiveSettings,
    Filters, Origin, OwnSettings, Owner, Principal, SecretNameError, TenantDefaults, TenantId,
    TenantSettings,
};
use crate::ports::{Expect, Registry, StoreError, Versioned};

use super::Services;

/// The most agents one owner (a tenant, or the platform) may have: each
/// is read on every routing of the tenant's tasks (cached).
pub const MAX_AGENTS_PER_OWNER: usize = 500;
/// The most platform agents a tenant's settings may list by id.
pub const MAX_PLATFORM_AGENTS_LISTED: usize = 1000;

/// Entries kept per cache before it starts over: a Lambda instance serves
/// many tenants, and a cache must not grow with all of them.
const MAX_ENTRIES: usize = 10_000;

/// A map whose entries live for a TTL.
pub(crate) struct TtlMap<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> TtlMap<K, V> {
    pub(crate) fn new(ttl: Duration) -> Self {
        TtlMap {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let entries = self.lock();
        let (at, value) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    pub(crate) fn insert(&self, key: K, value: V) {
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key, (Instant::now(), value));
    }

    pub(crate) fn remove(&self, key: &K) {
        self.lock().remove(key);
    }

    fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (Instant, V)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The registry, cached for a TTL: routing reads a tenant's agents for
/// every task, and the registry changes rarely. A write through this
/// process drops what it changed; other instances see it within the TTL.
pub struct AgentCache {
    registry: Arc<dyn Registry>,
    defaults: TenantDefaults,
    by_owner: TtlMap<Owner, Arc<Vec<Agent>>>,
    by_tenant: TtlMap<TenantId, Arc<EffectiveSettings>>,
    /// What each tenant may use, combined once per TTL rather than per task.
    usable: TtlMap<TenantId, Arc<Vec<Agent>>>,
    /// Each tenant's content filters, compiled once per TTL.
    filters: TtlMap<TenantId, Filters>,
}

impl AgentCache {
    pub fn new(registry: Arc<dyn Registry>, ttl: Duration, defaults: TenantDefaults) -> Self {
        AgentCache {
            registry,
            defaults,
            by_owner: TtlMap::new(ttl),
            by_tenant: TtlMap::new(ttl),
            usable: TtlMap::new(ttl),
            filters: TtlMap::new(ttl),
        }
    }

    /// Every agent of `owner`, ordered by id.
    pub async fn owned(&self, owner: &Owner) -> Result<Arc<Vec<Agent>>, StoreError> {
        if let Some(agents) = self.by_owner.get(owner) {
            return Ok(agents);
        }
        let agents = Arc::new(self.registry.list(owner).await?);
        self.by_owner.insert(owner.clone(), agents.clone());
        Ok(agents)
    }

    /// The settings that apply to `tenant`: its own, the defaults elsewhere.
    pub async fn settings(&self, tenant: &TenantId) -> Result<Arc<EffectiveSettings>, StoreError> {
        if let Some(settings) = self.by_tenant.get(tenant) {
            return Ok(settings);
        }
        let stored = self.registry.settings(tenant).await?;
        let settings = Arc::new(self.defaults.apply(stored.as_ref().map(|s| &s.value)));
        self.by_tenant.insert(tenant.clone(), settings.clone());
        Ok(settings)
    }

    pub fn defaults(&self) -> &TenantDefaults {
        &self.defaults
    }

    /// The agents `tenant` may use, ordered by id: its own, and the platform
    /// agents its settings allow. An own agent hides a platform agent of
    /// the same id.
    pub async fn usable(&self, tenant: &TenantId) -> Result<Arc<Vec<Agent>>, StoreError> {
        if let Some(agents) = self.usable.get(tenant) {
            return Ok(agents);
        }
        let own = self.owned(&Owner::Tenant(tenant.clone())).await?;
        let settings = self.settings(tenant).await?;
        let platform = self.owned(&Owner::Platform).await?;
        let agents = Arc::new(usable(&own, &platform, &settings));
        self.usable.insert(tenant.clone(), agents.clone());
        Ok(agents)
    }

    /// One agent `tenant` may use.
    pub async fn find(&self, tenant: &TenantId, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        let agents = self.usable(tenant).await?;
        // Ordered by id.
        Ok(agents
            .binary_search_by(|a| a.id.cmp(id))
            .ok()
            .map(|i| agents[i].clone()))
    }

    /// Drops `owner`'s agents, and what any tenant they concern may use,
    /// after a write through this process.
    pub fn invalidate(&self, owner: &Owner) {
        self.by_owner.remove(owner);
        match owner {
            Owner::Tenant(tenant) => self.usable.remove(tenant),
            Owner::Platform => self.usable.clear(),
        }
    }

    /// The content filters that apply to `tenant` (the platform's and its
    /// own), compiled once per TTL. Settings that no longer compile (they
    /// were checked when written) fail closed: nothing passes unfiltered.
    pub async fn filters(&self, tenant: &TenantId) -> Result<Filters, StoreError> {
        if let Some(filters) = self.filters.get(tenant) {
            return Ok(filters);
        }
        let settings = self.settings(tenant).await?;
        let filters =
            Filters::combine(&settings.platform_filters, &settings.filters).map_err(|e| {
                StoreError::Backend(format!("the tenant's filters do not compile: {e}"))
            })?;
        self.filters.insert(tenant.clone(), filters.clone());
        Ok(filters)
    }

    pub fn invalidate_settings(&self, tenant: &TenantId) {
        self.by_tenant.remove(tenant);
        self.usable.remove(tenant);
        self.filters.remove(tenant);
    }
}

/// A tenant's own agents, and the platform agents its settings allow that
/// no own agent hides, ordered by id.
fn usable(own: &[Agent], platform: &[Agent], settings: &EffectiveSettings) -> Vec<Agent> {
    let mut agents = own.to_vec();
    agents.extend(
        platform
            .iter()
            .filter(|p| settings.platform_agents.allows(&p.id))
            .filter(|p| !own.iter().any(|o| o.id == p.id))
            .cloned(),
    );
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    agents
}

/// The settings that apply to `tenant`, read now (not cached).
pub async fn settings(svc: &Services, tenant: &TenantId) -> Result<EffectiveSettings, StoreError> {
    let stored = svc.registry.settings(tenant).await?;
    Ok(svc
        .agents
        .defaults()
        .apply(stored.as_ref().map(|s| &s.value)))
}

/// The agents `tenant` may use, read now (the API answers what was just
/// written, whatever instance wrote it).
pub async fn visible(svc: &Services, tenant: &TenantId) -> Result<Vec<Agent>, StoreError> {
    let own = svc.registry.list(&Owner::Tenant(tenant.clone())).await?;
    let platform = svc.registry.list(&Owner::Platform).await?;
    Ok(usable(&own, &platform, &settings(svc, tenant).await?))
}

/// One agent `tenant` may use, read now.
pub async fn visible_one(
    svc: &Services,
    tenant: &TenantId,
    id: &AgentId,
) -> Result<Option<Agent>, StoreError> {
    if let Some(own) = svc.registry.get(&Owner::Tenant(tenant.clone()), id).await? {
        return Ok(Some(own));
    }
    if !settings(svc, tenant).await?.platform_agents.allows(id) {
        return Ok(None);
    }
    svc.registry.get(&Owner::Platform, id).await
}

#[derive(Debug, thiserror::Error)]
pub enum AgentWriteError {
    #[error(transparent)]
    Invalid(#[from] AgentSpecError),
    /// The secret is not one this owner's agents may name.
    #[error("secret {0}")]
    SecretScope(SecretNameError),
    /// A tenant's agent may not take the id of a platform agent it can use.
    #[error("agent `{0}` is a platform agent this tenant uses; choose another id")]
    PlatformId(AgentId),
    #[error("at most {MAX_AGENTS_PER_OWNER} agents per owner; delete one first")]
    TooMany,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes `owner`'s agent `id`. `expect` comes from `If-Match` (a version)
/// or `If-None-Match: *` (create only); without either the write is
/// unconditional. Audited with the fields it changes: an unconditional
/// write is made against the version it read (and read again if another
/// writer got there first), so the entry names exactly what it replaced.
pub async fn put(
    svc: &Services,
    owner: &Owner,
    id: &AgentId,
    request: AgentRequest,
    expect: Expect,
    principal: &Principal,
    origin: &Origin,
) -> Result<Agent, AgentWriteError> {
    let spec = AgentSpec::try_from(request)?;
    if let Some(secret) = &spec.secret {
        secret
            .usable_by(owner, &svc.settings.secret_prefix)
            .map_err(AgentWriteError::SecretScope)?;
    }
    if let Owner::Tenant(tenant) = owner
        && settings(svc, tenant).await?.platform_agents.allows(id)
        && svc.registry.get(&Owner::Platform, id).await?.is_some()
    {
        return Err(AgentWriteError::PlatformId(id.clone()));
    }
    let mut tries = 0;
    loop {
        tries += 1;
        let current = svc.registry.get(owner, id).await?;
        // A new agent must fit (a replace always does).
        if current.is_none() && svc.registry.list(owner).await?.len() >= MAX_AGENTS_PER_OWNER {
            return Err(AgentWriteError::TooMany);
        }
        let (action, before) = match &current {
            Some(agent) => (Action::AgentChanged, json(&agent.spec)),
            None => (Action::AgentCreated, serde_json::Value::Null),
        };
        let write_expect = match (expect, &current) {
            (Expect::Any, Some(agent)) => Expect::Version(agent.version),
            (Expect::Any, None) => Expect::Absent,
            (given, _) => given,
        };
        let entry = AuditEntry::agent_written(
            owner,
            id.as_str(),
            action,
            changed_fields(&before, &json(&spec)),
            principal,
            origin,
            svc.clock.now(),
        );
        match svc
            .registry
            .put(owner, id, spec.clone(), write_expect, Some(&entry))
            .await
        {
            Err(StoreError::VersionConflict { .. } | StoreError::AlreadyExists)
                if expect == Expect::Any && tries < WRITE_TRIES =>
            {
                continue;
            }
            written => {
                svc.agents.invalidate(owner);
                return Ok(written?);
            }
        }
    }
}

fn json(value: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

pub async fn delete(
    svc: &Services,
    owner: &Owner,
    id: &AgentId,
    expect: Expect,
    principal: &Principal,
    origin: &Origin,
) -> Result<(), StoreError> {
    let entry = AuditEntry::agent_written(
        owner,
        id.as_str(),
        Action::AgentDeleted,
        Vec::new(),
        principal,
        origin,
        svc.clock.now(),
    );
    svc.registry.delete(owner, id, expect, Some(&entry)).await?;
    svc.agents.invalidate(owner);
    Ok(())
}

/// Tries of a read-change-write that lost a race to another writer.
const WRITE_TRIES: u32 = 5;

/// Replaces the platform's sections of `tenant`'s settings that `update`
/// names; the others stay as they were.
pub async fn update_settings(
    svc: &Services,
    tenant: &TenantId,
    update: TenantSettings,
    principal: &Principal,
    origin: &Origin,
) -> Result<Versioned<TenantSettings>, StoreError> {
    let change = |current: TenantSettings| current.merged(update.clone());
    change_settings(svc, tenant, change, principal, origin).await
}

/// Replaces the tenant's own sections that `update` names (checked against
/// the ceilings by the caller).
pub async fn update_own_settings(
    svc: &Services,
    tenant: &TenantId,
    update: OwnSettings,
    principal: &Principal,
    origin: &Origin,
) -> Result<Versioned<TenantSettings>, StoreError> {
    let change = |current: TenantSettings| current.with_own(update.clone());
    change_settings(svc, tenant, change, principal, origin).await
}

/// Reads, changes and writes `tenant`'s settings conditionally, again if
/// another writer got there first; audited with the sections it changed.
async fn change_settings(
    svc: &Services,
    tenant: &TenantId,
    change: impl Fn(TenantSettings) -> TenantSettings,
    principal: &Principal,
    origin: &Origin,
) -> Result<Versioned<TenantSettings>, StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let current = svc.registry.settings(tenant).await?;
        let (before, changed, expect) = match current {
            Some(current) => (
                json(&current.value),
                change(current.value),
                Expect::Version(current.version),
            ),
            None => (
                json(&TenantSettings::default()),
                change(TenantSettings::default()),
                Expect::Absent,
            ),
        };
        let entry = AuditEntry::settings_changed(
            tenant,
            changed_fields_within(&before, &json(&changed), "own"),
            principal,
            origin,
            svc.clock.now(),
        );
        match svc
            .registry
            .put_settings(tenant, &changed, expect, Some(&entry))
            .await
        {
            Err(StoreError::VersionConflict { .. } | StoreError::AlreadyExists)
                if tries < WRITE_TRIES =>
            {
                continue;
            }
            outcome => {
                svc.agents.invalidate_settings(tenant);
                return outcome;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::PlatformAgents;

    fn mock(name: &str) -> AgentRequest {
        serde_json::from_value(json!({"name": name, "provider": "mock", "model": "m",
            "capabilities": ["text"]}))
        .unwrap()
    }

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    /// The combined list is cached, and a write through this process shows
    /// at once: an own agent, a platform agent, the settings that allow it.
    #[tokio::test]
    async fn what_a_tenant_may_use_follows_writes_through_this_process() {
        let svc = crate::setup::strict_memory_services();
        let acme = TenantId::parse("acme").unwrap();
        let own = Owner::Tenant(acme.clone());
        let admin = Principal {
            sub: "ana".into(),
            tenant: acme.clone(),
            roles: vec![crate::domain::Role::PlatformAdmin],
        };
        let origin = Origin::default();
        put(
            &svc,
            &own,
            &id("mine"),
            mock("mine"),
            Expect::Any,
            &admin,
            &origin,
        )
        .await
        .unwrap();
        let ids = |agents: Arc<Vec<Agent>>| -> Vec<String> {
            agents.iter().map(|a| a.id.to_string()).collect()
        };
        assert_eq!(ids(svc.agents.usable(&acme).await.unwrap()), ["mine"]);
        put(
            &svc,
            &Owner::Platform,
            &id("shared"),
            mock("shared"),
            Expect::Any,
            &admin,
            &origin,
        )
        .await
        .unwrap();
        // Not allowed yet (no platform agent by default).
        assert_eq!(ids(svc.agents.usable(&acme).await.unwrap()), ["mine"]);
        update_settings(
            &svc,
            &acme,
            TenantSettings {
                platform_agents: Some(PlatformAgents::All),
                ..TenantSettings::default()
            },
            &admin,
            &origin,
        )
        .await
        .unwrap();
        assert_eq!(
            ids(svc.agents.usable(&acme).await.unwrap()),
            ["mine", "shared"]
        );
        let found = svc.agents.find(&acme, &id("shared")).await.unwrap();
        assert!(found.is_some_and(|a| a.owner == Owner::Platform));
        assert!(svc.agents.find(&acme, &id("none")).await.unwrap().is_none());
        delete(&svc, &own, &id("mine"), Expect::Any, &admin, &origin)
            .await
            .unwrap();
        assert_eq!(ids(svc.agents.usable(&acme).await.unwrap()), ["shared"]);
    }
}
