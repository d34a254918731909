//! DynamoDB key layout. Every context-table key starts with the tenant, so a
//! request scoped to one tenant can never address another's items.

use crate::domain::{AgentId, CallId, IdempotencyKey, Owner, TaskId, TenantId};

pub const PK: &str = "pk";
pub const SK: &str = "sk";
pub const GSI1: &str = "gsi1";
pub const GSI1_PK: &str = "gsi1pk";
pub const GSI1_SK: &str = "gsi1sk";
/// The sweeper's sparse index: unfinished tasks by when to look at them.
pub const SWEEP_INDEX: &str = "sweep";
pub const SWEEP_SHARD: &str = "sweep_shard";
pub const SWEEP_AT: &str = "sweep_at";

/// A task's state; its request is `REQ`, which sorts before it (and after
/// its calls and leases), so one query from `REQ` reads the two.
pub const TASK_SK: &str = "TASK";
pub const REQUEST_SK: &str = "REQ";
pub const CALL_SK_PREFIX: &str = "CALL#";
pub const LEASE_SK_PREFIX: &str = "LEASE#";
pub const IDEM_SK: &str = "IDEM";
pub const AGENT_SK_PREFIX: &str = "AGENT#";
pub const SETTINGS_SK: &str = "SETTINGS";
/// The local announcer's checkpoints, one item per stream shard (sort key:
/// the shard id). The one partition that belongs to no tenant: it holds no
/// tenant data.
pub const FEED_PK: &str = "FEED#announcer";

pub fn task_pk(tenant: &TenantId, task: TaskId) -> String {
    format!("T#{tenant}#TASK#{task}")
}

pub fn call_sk(call: CallId) -> String {
    format!("{CALL_SK_PREFIX}{call}")
}

pub fn lease_sk(call: CallId) -> String {
    format!("{LEASE_SK_PREFIX}{call}")
}

pub fn idempotency_pk(tenant: &TenantId, key: &IdempotencyKey) -> String {
    format!("T#{tenant}#IDEM#{}", key.as_str())
}

/// How many partitions of the list index one tenant's tasks spread over:
/// each takes about 1,000 writes a second, and a task writes the index once.
pub const LIST_SHARDS: u32 = 8;

/// The list index's partition of a task: its tenant's, one of
/// `LIST_SHARDS` by the task id, so that no tenant is one hot partition.
pub fn tenant_tasks(tenant: &TenantId, task: TaskId) -> String {
    tenant_tasks_shard(tenant, spread(task) % LIST_SHARDS)
}

pub fn tenant_tasks_shard(tenant: &TenantId, shard: u32) -> String {
    format!("T#{tenant}#TASKS#{shard}")
}

/// A task id's hash, for spreading tasks over partitions.
fn spread(task: TaskId) -> u32 {
    spread_text(&task.to_string())
}

fn spread_text(text: &str) -> u32 {
    text.bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
}

/// The registry partition of an owner's agents: a tenant's start with the
/// tenant, like every tenant key; the platform's with `PLATFORM`, which no
/// tenant key can be.
pub fn agents_pk(owner: &Owner) -> String {
    match owner {
        Owner::Tenant(tenant) => format!("T#{tenant}#AGENTS"),
        Owner::Platform => "PLATFORM#AGENTS".to_owned(),
    }
}

pub fn agent_sk(id: &AgentId) -> String {
    format!("{AGENT_SK_PREFIX}{id}")
}

/// A rate-limit holder's buckets: one item, so one conditional write takes
/// from all of them. A subject's follows its tenant's key, and an agent's
/// its owner's (the platform's with `PLATFORM`); a long subject is hashed
/// to keep the key short; shards past the first have a suffix.
pub fn limits_pk(holder: &crate::ports::Holder) -> String {
    use crate::ports::limits::Scope;
    let mut pk = match &holder.scope {
        Scope::Tenant(tenant) => format!("T#{tenant}#LIMITS"),
        Scope::Subject(tenant, subject) if subject.len() <= 200 => {
            format!("T#{tenant}#LIMITS#SUB#{subject}")
        }
        Scope::Subject(tenant, subject) => {
            let hash = subject.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            format!("T#{tenant}#LIMITS#SUBH#{hash:016x}")
        }
        Scope::Agent(Owner::Tenant(tenant), agent) => format!("T#{tenant}#LIMITS#AGENT#{agent}"),
        Scope::Agent(Owner::Platform, agent) => format!("PLATFORM#LIMITS#AGENT#{agent}"),
    };
    if holder.shard > 0 {
        pk.push_str(&format!("#S{}", holder.shard));
    }
    pk
}

pub const LIMITS_SK: &str = "LIMITS";

/// An agent's health: its breaker state (`STATE`) and its counting buckets
/// (`B#{index}#{shard}`), one partition per agent, apart for each owner as
/// its rate limits are. A bucket is split over [`HEALTH_SHARDS`] items, so
/// that the transactions of concurrent results seldom meet on one item.
pub fn health_pk(owner: &Owner, agent: &AgentId) -> String {
    match owner {
        Owner::Tenant(tenant) => format!("T#{tenant}#HEALTH#{agent}"),
        Owner::Platform => format!("PLATFORM#HEALTH#{agent}"),
    }
}

pub const HEALTH_STATE_SK: &str = "STATE";
pub const HEALTH_SHARDS: u32 = 8;

/// A bucket's shard; `B#` sorts before `STATE`, so one query from the
/// oldest bucket needed to `STATE` reads both.
pub fn health_bucket_sk(index: i64, shard: u32) -> String {
    format!("B#{index:015}#{shard}")
}

/// The bucket index of a bucket's sort key.
pub fn health_bucket_of(sk: &str) -> Option<i64> {
    sk.strip_prefix("B#")?.split('#').next()?.parse().ok()
}

/// A rotation counter (`round_robin`, `weighted`): one item per tenant,
/// strategy and task type, every routed task of those one `ADD`. One item
/// takes about 1,000 writes a second: more tasks a second of one tenant
/// and task type than that are throttled and retried by route's queue.
pub fn rotation_pk(key: &crate::ports::RotationKey) -> String {
    format!(
        "T#{}#ROTATION#{}#{}",
        key.tenant,
        key.strategy.as_str(),
        key.task_type
    )
}

pub const ROTATION_SK: &str = "ROTATION";

/// A tenant's spend counters: one item per UTC day (`D#2026-11-26`) and
/// per month (`M#2026-11`). Every budgeted task of the tenant writes the
/// two, so a tenant with budgets is bound by one item's write rate (about
/// 500 reservations a second, as transactions); a limit that needs the
/// counters' sum cannot be sharded.
pub fn spend_pk(tenant: &TenantId) -> String {
    format!("T#{tenant}#SPEND")
}

pub fn spend_sk(period: crate::domain::Period, day: chrono::NaiveDate) -> String {
    let prefix = match period {
        crate::domain::Period::Day => "D#",
        crate::domain::Period::Month => "M#",
    };
    format!("{prefix}{}", period.key(day))
}

/// How many partitions one audit log spreads over: a task's creation
/// writes its log, so the log takes the task list's write rate.
pub const AUDIT_SHARDS: u32 = LIST_SHARDS;

/// An audit log's partition for entry `id`: a tenant's starts with the
/// tenant, like every tenant key; the platform's with `PLATFORM`.
pub fn audit_pk(log: &Owner, id: crate::domain::AuditId) -> String {
    audit_shard(log, spread_text(&id.to_string()) % AUDIT_SHARDS)
}

pub fn audit_shard(log: &Owner, shard: u32) -> String {
    match log {
        Owner::Tenant(tenant) => format!("T#{tenant}#AUDIT#{shard}"),
        Owner::Platform => format!("PLATFORM#AUDIT#{shard}"),
    }
}

pub fn settings_pk(tenant: &TenantId) -> String {
    format!("T#{tenant}#SETTINGS")
}

/// The sweep index's partition of a task: its id spread over
/// `SWEEP_SHARDS` partitions, so that no partition is hot.
pub fn sweep_shard(task: TaskId) -> String {
    sweep_partition(spread(task) % crate::domain::sweep::SWEEP_SHARDS)
}

pub fn sweep_partition(shard: u32) -> String {
    format!("SWEEP#{shard}")
}

/// The tenant and task a task item's partition key names.
pub fn parse_task_pk(pk: &str) -> Option<(TenantId, TaskId)> {
    let rest = pk.strip_prefix("T#")?;
    let (tenant, task) = rest.rsplit_once("#TASK#")?;
    Some((TenantId::parse(tenant).ok()?, TaskId::parse(task).ok()?))
}
