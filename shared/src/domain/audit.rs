//! The audit log: who did what to which resource, when, with what outcome.
//!
//! Entries are append-only: the API has no route that changes or deletes
//! one, and they expire only by the table's TTL (`MAOF_AUDIT_RETENTION_DAYS`,
//! 400 days by default). Each tenant has its own log; the platform's log
//! holds what no tenant owns (platform agents, requests whose token names
//! no tenant that could be trusted). An entry never holds a secret, a
//! token, content, or the text a filter matched: names, ids and codes only.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use ulid::Ulid;
use utoipa::ToSchema;

use super::ids::{IdError, TaskId, TenantId};
use super::principal::{Principal, Role};
use super::secret::Owner;
use super::task::Task;

/// An entry's id: a ULID, so entries sort by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AuditId(Ulid);

impl AuditId {
    pub fn new(at: DateTime<Utc>) -> Self {
        AuditId(Ulid::from_datetime(at.into()))
    }

    /// An id fixed by something the entry is about (a call's id), so that a
    /// redelivered action writes the same entry once.
    pub fn from_ulid(ulid: Ulid) -> Self {
        AuditId(ulid)
    }

    /// The canonical spelling only, as `ulid_id!` ids.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        Ulid::from_string(value)
            .ok()
            .filter(|ulid| ulid.to_string() == value)
            .map(AuditId)
            .ok_or(IdError::NotUlid {
                kind: "audit entry id",
            })
    }

    /// The lowest id of an entry made at `at` or later.
    pub fn floor(at: DateTime<Utc>) -> Self {
        AuditId(Ulid::from_parts(millis(at), 0))
    }

    /// The highest id of an entry made at `at` or earlier.
    pub fn ceiling(at: DateTime<Utc>) -> Self {
        AuditId(Ulid::from_parts(millis(at), u128::MAX))
    }

    /// The id just below this one (none below the lowest).
    pub fn predecessor(self) -> Option<Self> {
        u128::from(self.0).checked_sub(1).map(|n| AuditId(n.into()))
    }
}

fn millis(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp_millis()).unwrap_or(0)
}

impl std::fmt::Display for AuditId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What was done. Names are `resource.verb`, stable: clients filter by them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
pub enum Action {
    #[serde(rename = "task.created")]
    TaskCreated,
    #[serde(rename = "task.cancelled")]
    TaskCancelled,
    #[serde(rename = "agent.created")]
    AgentCreated,
    #[serde(rename = "agent.changed")]
    AgentChanged,
    #[serde(rename = "agent.deleted")]
    AgentDeleted,
    #[serde(rename = "settings.changed")]
    SettingsChanged,
    /// A request refused with 401 or 403.
    #[serde(rename = "access.denied")]
    AccessDenied,
    /// A request refused by a rate limit (429).
    #[serde(rename = "rate.limited")]
    RateLimited,
    /// A task refused or ended by a budget.
    #[serde(rename = "budget.exceeded")]
    BudgetExceeded,
    /// Input refused, or an answer withheld, by a content filter.
    #[serde(rename = "content.blocked")]
    ContentBlocked,
}

impl Action {
    pub const ALL: [Action; 10] = [
        Action::TaskCreated,
        Action::TaskCancelled,
        Action::AgentCreated,
        Action::AgentChanged,
        Action::AgentDeleted,
        Action::SettingsChanged,
        Action::AccessDenied,
        Action::RateLimited,
        Action::BudgetExceeded,
        Action::ContentBlocked,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::TaskCreated => "task.created",
            Action::TaskCancelled => "task.cancelled",
            Action::AgentCreated => "agent.created",
            Action::AgentChanged => "agent.changed",
            Action::AgentDeleted => "agent.deleted",
            Action::SettingsChanged => "settings.changed",
            Action::AccessDenied => "access.denied",
            Action::RateLimited => "rate.limited",
            Action::BudgetExceeded => "budget.exceeded",
            Action::ContentBlocked => "content.blocked",
        }
    }

    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }

    /// How an action of this kind ended: an action that is a refusal is
    /// never a success.
    pub fn outcome(self) -> Outcome {
        match self {
            Action::AccessDenied => Outcome::Denied,
            Action::RateLimited | Action::BudgetExceeded => Outcome::Refused,
            Action::ContentBlocked => Outcome::Blocked,
            _ => Outcome::Success,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Denied,
    Refused,
    Blocked,
}

/// Which door the action came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The HTTP API.
    Api,
    /// An event (EventBridge or the inbox queue).
    Event,
    /// The pipeline itself, on behalf of the task's submitter (a budget or
    /// a filter applied after intake).
    Pipeline,
}

/// Who acted. `sub` is none only for a request whose token could not be
/// verified (its claims are not trusted, so none is recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Actor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub tenant: Option<TenantId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    pub via: Via,
}

impl Actor {
    pub fn of(principal: &Principal, via: Via) -> Self {
        Actor {
            sub: Some(principal.sub.clone()),
            tenant: Some(principal.tenant.clone()),
            roles: principal.roles.clone(),
            via,
        }
    }

    /// The pipeline acting on `task`'s behalf: its submitter, no roles.
    pub fn pipeline_for(task: &Task) -> Self {
        Actor {
            sub: Some(task.submitted_by.clone()),
            tenant: Some(task.tenant.clone()),
            roles: Vec::new(),
            via: Via::Pipeline,
        }
    }

    /// A request with no verified token.
    pub fn anonymous() -> Self {
        Actor {
            sub: None,
            tenant: None,
            roles: Vec::new(),
            via: Via::Api,
        }
    }
}

/// Where an action came from: its door, and the id of the request (the
/// `x-request-id` the response carries) or of the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub request_id: Option<String>,
    pub via: Via,
}

impl Default for Origin {
    fn default() -> Self {
        Origin {
            request_id: None,
            via: Via::Api,
        }
    }
}

impl Origin {
    pub fn request(id: impl Into<String>) -> Self {
        Origin {
            request_id: Some(id.into()),
            via: Via::Api,
        }
    }

    /// An event, named by its id (the event's or its message's).
    pub fn event(id: impl Into<String>) -> Self {
        Origin {
            request_id: Some(id.into()),
            via: Via::Event,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Task,
    Agent,
    Settings,
    /// An API route (what an access denial was for).
    Route,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Resource {
    pub kind: ResourceKind,
    /// The task or agent id, the tenant whose settings, or `METHOD /path`.
    pub id: String,
}

/// What else an entry says, by action. Every field is a name, a code or a
/// number: never content, a secret or matched text.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct Detail {
    /// The reason code (`token_expired`, `role_missing`, `budget_exceeded`,
    /// `over_budget_day`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The names of the fields (or settings sections) a change touched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// The content filter rule that blocked, and where (`content`,
    /// `system`, `output`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The call an entry about one call of a task names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// The limit that refused (`rpm`, `tpm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// Entries like this one that were not written, to bound what a flood
    /// of refused requests costs (see `DenialSampler`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
}

/// One entry of an audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    #[schema(value_type = String, pattern = "^[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub id: AuditId,
    pub at: DateTime<Utc>,
    /// The log it belongs to: a tenant's, or none for the platform's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub tenant: Option<TenantId>,
    pub actor: Actor,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource>,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default)]
    pub detail: Detail,
}

impl AuditEntry {
    fn new(
        log: &Owner,
        actor: Actor,
        action: Action,
        resource: Option<Resource>,
        request_id: Option<String>,
        at: DateTime<Utc>,
    ) -> Self {
        AuditEntry {
            id: AuditId::new(at),
            at,
            tenant: match log {
                Owner::Tenant(tenant) => Some(tenant.clone()),
                Owner::Platform => None,
            },
            actor,
            action,
            resource,
            outcome: action.outcome(),
            request_id,
            detail: Detail::default(),
        }
    }

    /// The log this entry is in.
    pub fn log(&self) -> Owner {
        match &self.tenant {
            Some(tenant) => Owner::Tenant(tenant.clone()),
            None => Owner::Platform,
        }
    }

    fn with_detail(mut self, detail: Detail) -> Self {
        self.detail = detail;
        self
    }

    pub fn task_created(task: &Task, principal: &Principal, origin: &Origin) -> Self {
        Self::new(
            &Owner::Tenant(task.tenant.clone()),
            Actor::of(principal, origin.via),
            Action::TaskCreated,
            Some(task_resource(task.task_id)),
            origin.request_id.clone(),
            task.created_at,
        )
    }

    /// A task's creation by its submitter, with no request: what a task
    /// stored outside the API (a test, a tool writing the store) records.
    pub fn task_created_by_submitter(task: &Task) -> Self {
        let submitter = Principal {
            sub: task.submitted_by.clone(),
            tenant: task.tenant.clone(),
            roles: Vec::new(),
        };
        Self::task_created(task, &submitter, &Origin::default())
    }

    pub fn task_cancelled(
        task: &Task,
        principal: &Principal,
        origin: &Origin,
        at: DateTime<Utc>,
    ) -> Self {
        Self::new(
            &Owner::Tenant(task.tenant.clone()),
            Actor::of(principal, origin.via),
            Action::TaskCancelled,
            Some(task_resource(task.task_id)),
            origin.request_id.clone(),
            at,
        )
    }

    /// An agent of `owner` created (`before` none), changed or deleted
    /// (`after` none); `fields` names what a change touched.
    pub fn agent_written(
        owner: &Owner,
        agent_id: &str,
        action: Action,
        fields: Vec<String>,
        principal: &Principal,
        origin: &Origin,
        at: DateTime<Utc>,
    ) -> Self {
        Self::new(
            owner,
            Actor::of(principal, origin.via),
            action,
            Some(Resource {
                kind: ResourceKind::Agent,
                id: agent_id.to_owned(),
            }),
            origin.request_id.clone(),
            at,
        )
        .with_detail(Detail {
            fields,
            ..Detail::default()
        })
    }

    /// `tenant`'s settings changed in the sections `fields` names (by its
    /// own admin, or by `platform_admin`: the tenant's log has both).
    pub fn settings_changed(
        tenant: &TenantId,
        fields: Vec<String>,
        principal: &Principal,
        origin: &Origin,
        at: DateTime<Utc>,
    ) -> Self {
        Self::new(
            &Owner::Tenant(tenant.clone()),
            Actor::of(principal, origin.via),
            Action::SettingsChanged,
            Some(Resource {
                kind: ResourceKind::Settings,
                id: tenant.to_string(),
            }),
            origin.request_id.clone(),
            at,
        )
        .with_detail(Detail {
            fields,
            ..Detail::default()
        })
    }

    /// A request refused with 401 (`principal` none: in the platform's log,
    /// as no claim of an unverified token is trusted) or 403 (in the
    /// caller's tenant's log).
    pub fn access_denied(
        principal: Option<&Principal>,
        route: &str,
        code: &str,
        request_id: Option<String>,
        at: DateTime<Utc>,
    ) -> Self {
        let (log, actor) = match principal {
            Some(p) => (Owner::Tenant(p.tenant.clone()), Actor::of(p, Via::Api)),
            None => (Owner::Platform, Actor::anonymous()),
        };
        Self::new(
            &log,
            actor,
            Action::AccessDenied,
            Some(Resource {
                kind: ResourceKind::Route,
                id: route.to_owned(),
            }),
            request_id,
            at,
        )
        .with_detail(Detail {
            code: Some(code.to_owned()),
            ..Detail::default()
        })
    }

    /// A task request refused by the `limit` bucket of a rate limit.
    pub fn rate_limited(
        principal: &Principal,
        origin: &Origin,
        limit: &str,
        at: DateTime<Utc>,
    ) -> Self {
        Self::new(
            &Owner::Tenant(principal.tenant.clone()),
            Actor::of(principal, origin.via),
            Action::RateLimited,
            None,
            origin.request_id.clone(),
            at,
        )
        .with_detail(Detail {
            code: Some("rate_limited".to_owned()),
            limit: Some(limit.to_owned()),
            ..Detail::default()
        })
    }

    /// A task ended by a budget before any call was made (`code` says which).
    pub fn budget_exceeded(task: &Task, code: &str, at: DateTime<Utc>) -> Self {
        Self::new(
            &Owner::Tenant(task.tenant.clone()),
            Actor::pipeline_for(task),
            Action::BudgetExceeded,
            Some(task_resource(task.task_id)),
            None,
            at,
        )
        .with_detail(Detail {
            code: Some(code.to_owned()),
            ..Detail::default()
        })
    }

    /// A request's `field` refused by the input filter `rule`; no task was
    /// created.
    pub fn input_blocked(
        principal: &Principal,
        origin: &Origin,
        field: &str,
        rule: &str,
        at: DateTime<Utc>,
    ) -> Self {
        Self::new(
            &Owner::Tenant(principal.tenant.clone()),
            Actor::of(principal, origin.via),
            Action::ContentBlocked,
            None,
            origin.request_id.clone(),
            at,
        )
        .with_detail(Detail {
            code: Some("content_blocked".to_owned()),
            rule: Some(rule.to_owned()),
            field: Some(field.to_owned()),
            ..Detail::default()
        })
    }

    /// One call's answer withheld by the output filter `rule`. Its id is
    /// the call's, so a redelivered call writes it once.
    pub fn output_blocked(
        task: &Task,
        call_id: super::ids::CallId,
        rule: &str,
        at: DateTime<Utc>,
    ) -> Self {
        let mut entry = Self::new(
            &Owner::Tenant(task.tenant.clone()),
            Actor::pipeline_for(task),
            Action::ContentBlocked,
            Some(task_resource(task.task_id)),
            None,
            at,
        )
        .with_detail(Detail {
            code: Some("content_blocked".to_owned()),
            rule: Some(rule.to_owned()),
            field: Some("output".to_owned()),
            call_id: Some(call_id.to_string()),
            ..Detail::default()
        });
        entry.id = AuditId::from_ulid(call_id.as_ulid());
        entry
    }

    /// This entry, saying `n` like it were not written before it.
    pub fn with_suppressed(mut self, n: u64) -> Self {
        if n > 0 {
            self.detail.suppressed = Some(n);
        }
        self
    }
}

fn task_resource(task_id: TaskId) -> Resource {
    Resource {
        kind: ResourceKind::Task,
        id: task_id.to_string(),
    }
}

/// The names of the top-level fields in which two values' JSON differ
/// (those either has), in order: what an `agent.changed` or
/// `settings.changed` entry lists. Names only: a changed secret shows as
/// `secret`, never its value.
pub fn changed_fields(before: &Value, after: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let before = before.as_object().unwrap_or(&empty);
    let after = after.as_object().unwrap_or(&empty);
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter(|name| before.get(*name) != after.get(*name))
        .cloned()
        .collect()
}

/// As `changed_fields`, with a change inside the object `nested` named by
/// its own fields (`own.budgets`), for settings whose tenant part is one
/// section.
pub fn changed_fields_within(before: &Value, after: &Value, nested: &str) -> Vec<String> {
    changed_fields(before, after)
        .into_iter()
        .flat_map(|name| {
            if name != nested {
                return vec![name];
            }
            let inner = changed_fields(
                before.get(nested).unwrap_or(&Value::Null),
                after.get(nested).unwrap_or(&Value::Null),
            );
            inner.into_iter().map(|n| format!("{nested}.{n}")).collect()
        })
        .collect()
}

/// What a query of a log asks for: entries between two times (either
/// open), of one action or all, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditQuery {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub action: Option<Action>,
    /// Entries below this id only (the previous page's last).
    pub before: Option<AuditId>,
    pub limit: u32,
}

impl AuditQuery {
    /// The inclusive id range the query covers; none when it is empty
    /// (`from` after `to`, or a cursor below `from`).
    pub fn id_range(&self) -> Option<(AuditId, AuditId)> {
        let low = self.from.map_or(AuditId(Ulid::nil()), AuditId::floor);
        let mut high = self
            .to
            .map_or(AuditId(Ulid::from(u128::MAX)), AuditId::ceiling);
        if let Some(before) = self.before {
            high = high.min(before.predecessor()?);
        }
        (low <= high).then_some((low, high))
    }

    /// Whether an entry in the id range is one the query asks for.
    pub fn wants(&self, entry: &AuditEntry) -> bool {
        self.action.is_none_or(|action| entry.action == action)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_790_000_000 + secs, 0).unwrap()
    }

    fn principal() -> Principal {
        Principal {
            sub: "ana".into(),
            tenant: TenantId::parse("acme").unwrap(),
            roles: vec![Role::Admin],
        }
    }

    #[test]
    fn changed_fields_name_what_differs_and_never_a_value() {
        let before = json!({"provider": "openai", "secret": "maof/a", "model": "m1"});
        let after = json!({"provider": "openai", "secret": "maof/b", "quality": 0.9});
        let fields = changed_fields(&before, &after);
        assert_eq!(fields, ["model", "quality", "secret"]);
        assert!(!fields.iter().any(|f| f.contains("maof/")));
        assert!(changed_fields(&before, &before).is_empty());
        let before = json!({"budgets": {"daily_usd": "5"}, "own": {"budgets": {"daily_usd": "1"}}});
        let after = json!({"budgets": {"daily_usd": "5"}, "own": {"budgets": {"daily_usd": "2"}, "filters": {}}});
        assert_eq!(
            changed_fields_within(&before, &after, "own"),
            ["own.budgets", "own.filters"]
        );
    }

    #[test]
    fn ids_order_by_time_and_a_query_covers_its_range() {
        let early = AuditId::new(at(0));
        let late = AuditId::new(at(10));
        assert!(early < late);
        let query = AuditQuery {
            from: Some(at(5)),
            to: Some(at(20)),
            ..AuditQuery::default()
        };
        let (low, high) = query.id_range().unwrap();
        assert!(low > early && low <= late && late <= high);
        // A cursor narrows the top; one at the bottom empties the range.
        let below_late = AuditQuery {
            before: Some(late),
            ..query.clone()
        };
        assert!(below_late.id_range().unwrap().1 < late);
        let empty = AuditQuery {
            before: Some(AuditId::floor(at(5))),
            ..query.clone()
        };
        assert_eq!(empty.id_range(), None);
        let backwards = AuditQuery {
            from: Some(at(20)),
            to: Some(at(5)),
            ..AuditQuery::default()
        };
        assert_eq!(backwards.id_range(), None);
        assert_eq!(AuditId::parse(&late.to_string()), Ok(late));
        assert!(AuditId::parse(&late.to_string().to_lowercase()).is_err());
    }

    #[test]
    fn entries_say_who_what_and_where_and_refusals_are_not_successes() {
        let p = principal();
        let denied =
            AuditEntry::access_denied(None, "GET /v1/agents", "token_expired", None, at(0));
        assert_eq!(denied.log(), Owner::Platform);
        assert_eq!(denied.actor, Actor::anonymous());
        assert_eq!(denied.outcome, Outcome::Denied);
        let forbidden =
            AuditEntry::access_denied(Some(&p), "PUT /v1/agents/{id}", "role_missing", None, at(0));
        assert_eq!(forbidden.log(), Owner::Tenant(p.tenant.clone()));
        assert_eq!(forbidden.actor.sub.as_deref(), Some("ana"));
        let limited = AuditEntry::rate_limited(&p, &Origin::event("ev-1"), "rpm", at(0));
        assert_eq!(limited.actor.via, Via::Event);
        assert_eq!(limited.outcome, Outcome::Refused);
        let blocked =
            AuditEntry::input_blocked(&p, &Origin::request("r1"), "content", "no-secrets", at(0));
        assert_eq!(blocked.outcome, Outcome::Blocked);
        assert_eq!(blocked.request_id.as_deref(), Some("r1"));
        assert_eq!(blocked.detail.rule.as_deref(), Some("no-secrets"));
        for action in Action::ALL {
            assert_eq!(Action::parse(action.name()), Some(action));
            assert_eq!(serde_json::to_value(action).unwrap(), action.name());
        }
    }
}
