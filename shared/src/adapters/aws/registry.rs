use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use serde_dynamo::{from_item, to_item};

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem};

use super::{DynamoAudit, describe};
use crate::adapters::layout::keys::{self, PK, SK};
use crate::domain::{Agent, AgentId, AgentSpec, AuditEntry, Owner, TenantId, TenantSettings};
use crate::ports::{Expect, Registry, StoreError, Versioned};

#[derive(Serialize, Deserialize)]
struct AgentItem {
    pk: String,
    sk: String,
    #[serde(flatten)]
    agent: Agent,
}

#[derive(Serialize, Deserialize)]
struct SettingsItem {
    pk: String,
    sk: String,
    version: u64,
    #[serde(flatten)]
    settings: TenantSettings,
}

/// Agents and tenants' settings in the registry table, each write
/// conditional on its version. An owner's agents share a partition, so
/// listing them is one query, never a scan. A write's audit entry goes to
/// the context table's audit log in the same transaction (one spans tables).
#[derive(Clone)]
pub struct DynamoRegistry {
    client: Client,
    table: String,
    audit: DynamoAudit,
}

type Item = HashMap<String, AttributeValue>;

impl DynamoRegistry {
    pub fn new(client: Client, table: impl Into<String>, audit: DynamoAudit) -> Self {
        DynamoRegistry {
            client,
            table: table.into(),
            audit,
        }
    }

    fn key(pk: String, sk: String) -> Item {
        HashMap::from([
            (PK.to_owned(), AttributeValue::S(pk)),
            (SK.to_owned(), AttributeValue::S(sk)),
        ])
    }

    fn agent_key(owner: &Owner, id: &AgentId) -> Item {
        Self::key(keys::agents_pk(owner), keys::agent_sk(id))
    }

    fn settings_key(tenant: &TenantId) -> Item {
        Self::key(keys::settings_pk(tenant), keys::SETTINGS_SK.to_owned())
    }

    /// The condition expression and values for an expectation.
    fn condition(expect: Expect) -> Option<(&'static str, Option<AttributeValue>)> {
        match expect {
            Expect::Any => None,
            Expect::Absent => Some(("attribute_not_exists(pk)", None)),
            Expect::Version(v) => Some((
                "attribute_exists(pk) AND version = :v",
                Some(AttributeValue::N(v.to_string())),
            )),
        }
    }

    /// Explains a failed condition by the current version.
    fn conflict(current: Option<u64>, expect: Expect) -> StoreError {
        match (current, expect) {
            (Some(_), Expect::Absent) => StoreError::AlreadyExists,
            (current, _) => StoreError::VersionConflict { current },
        }
    }

    async fn read(&self, key: Item) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?;
        Ok(out.item)
    }

    /// A put under `expect`, with `audit`; a failed condition is
    /// `Conflict`, for the caller to explain by the current version.
    async fn write(
        &self,
        item: Item,
        expect: Expect,
        audit: Option<&AuditEntry>,
    ) -> Result<Written, StoreError> {
        if let Some(entry) = audit {
            let mut put = Put::builder().table_name(&self.table).set_item(Some(item));
            if let Some((condition, value)) = Self::condition(expect) {
                put = put.condition_expression(condition);
                if let Some(value) = value {
                    put = put.expression_attribute_values(":v", value);
                }
            }
            let put = put.build().map_err(backend)?;
            return self
                .transact(TransactWriteItem::builder().put(put).build(), entry)
                .await;
        }
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        if let Some((condition, value)) = Self::condition(expect) {
            put = put.condition_expression(condition);
            if let Some(value) = value {
                put = put.expression_attribute_values(":v", value);
            }
        }
        match put.send().await {
            Ok(_) => Ok(Written::Done),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(Written::Conflict)
            }
            Err(e) => Err(backend(e)),
        }
    }

    /// The version a write under `expect` creates.
    fn next_version(current: Option<u64>, expect: Expect) -> u64 {
        match expect {
            Expect::Absent => 1,
            Expect::Version(v) => v + 1,
            Expect::Any => current.map_or(1, |v| v + 1),
        }
    }
}

impl DynamoRegistry {
    /// `write` and `entry`'s put in one transaction: `Conflict` when the
    /// write's condition failed (then neither is written).
    async fn transact(
        &self,
        write: TransactWriteItem,
        entry: &AuditEntry,
    ) -> Result<Written, StoreError> {
        let result = self
            .client
            .transact_write_items()
            .transact_items(write)
            .transact_items(self.audit.put(entry)?)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Written::Done),
            Err(e) => match e.as_service_error() {
                // The write's condition failed, or another transaction held
                // the item at the same moment (a lost race): either way the
                // caller explains it by the version now.
                Some(TransactWriteItemsError::TransactionCanceledException(c))
                    if c.cancellation_reasons()
                        .first()
                        .and_then(|r| r.code())
                        .is_some_and(|code| {
                            code == "ConditionalCheckFailed" || code == "TransactionConflict"
                        }) =>
                {
                    Ok(Written::Conflict)
                }
                _ => Err(backend(e)),
            },
        }
    }
}

enum Written {
    Done,
    Conflict,
}

fn backend<E: std::error::Error>(err: E) -> StoreError {
    StoreError::Backend(describe(err))
}

fn decode(err: serde_dynamo::Error) -> StoreError {
    StoreError::Backend(format!("cannot decode a registry item: {err}"))
}

fn encode(err: serde_dynamo::Error) -> StoreError {
    StoreError::Backend(format!("cannot encode a registry item: {err}"))
}

#[async_trait]
impl Registry for DynamoRegistry {
    #[tracing::instrument(skip_all, fields(owner = %owner, agent_id = %id))]
    async fn get(&self, owner: &Owner, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        self.read(Self::agent_key(owner, id))
            .await?
            .map(|item| {
                from_item::<_, AgentItem>(item)
                    .map(|i| i.agent)
                    .map_err(decode)
            })
            .transpose()
    }

    #[tracing::instrument(skip_all, fields(owner = %owner))]
    async fn list(&self, owner: &Owner) -> Result<Vec<Agent>, StoreError> {
        let mut agents = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :agent)")
                .expression_attribute_values(":pk", AttributeValue::S(keys::agents_pk(owner)))
                .expression_attribute_values(
                    ":agent",
                    AttributeValue::S(keys::AGENT_SK_PREFIX.to_owned()),
                )
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(backend)?;
            for item in out.items.unwrap_or_default() {
                agents.push(from_item::<_, AgentItem>(item).map_err(decode)?.agent);
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        // The sort key orders them by id already; sorting keeps the promise
        // whatever the key's encoding.
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(agents)
    }

    #[tracing::instrument(skip_all, fields(owner = %owner, agent_id = %id))]
    async fn put(
        &self,
        owner: &Owner,
        id: &AgentId,
        spec: AgentSpec,
        expect: Expect,
        audit: Option<&AuditEntry>,
    ) -> Result<Agent, StoreError> {
        let current = match expect {
            Expect::Any => self.get(owner, id).await?.map(|a| a.version),
            _ => None,
        };
        let agent = Agent {
            id: id.clone(),
            owner: owner.clone(),
            spec,
            version: Self::next_version(current, expect),
        };
        let item = to_item(AgentItem {
            pk: keys::agents_pk(owner),
            sk: keys::agent_sk(id),
            agent: agent.clone(),
        })
        .map_err(encode)?;
        match self.write(item, expect, audit).await? {
            Written::Done => Ok(agent),
            Written::Conflict => {
                let current = self.get(owner, id).await?.map(|a| a.version);
                Err(Self::conflict(current, expect))
            }
        }
    }

    #[tracing::instrument(skip_all, fields(owner = %owner, agent_id = %id))]
    async fn delete(
        &self,
        owner: &Owner,
        id: &AgentId,
        expect: Expect,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError> {
        let (condition, value) = match Self::condition(expect) {
            Some((condition, value)) => (condition, value),
            None => ("attribute_exists(pk)", None),
        };
        if let Some(entry) = audit {
            let mut delete = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(Self::agent_key(owner, id)))
                .condition_expression(condition);
            if let Some(value) = value {
                delete = delete.expression_attribute_values(":v", value);
            }
            let delete = delete.build().map_err(backend)?;
            return match self
                .transact(TransactWriteItem::builder().delete(delete).build(), entry)
                .await?
            {
                Written::Done => Ok(()),
                Written::Conflict => match self.get(owner, id).await?.map(|a| a.version) {
                    None => Err(StoreError::NotFound),
                    current => Err(Self::conflict(current, expect)),
                },
            };
        }
        let mut delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::agent_key(owner, id)))
            .condition_expression(condition);
        if let Some(value) = value {
            delete = delete.expression_attribute_values(":v", value);
        }
        match delete.send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                match self.get(owner, id).await?.map(|a| a.version) {
                    None => Err(StoreError::NotFound),
                    current => Err(Self::conflict(current, expect)),
                }
            }
            Err(e) => Err(backend(e)),
        }
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant))]
    async fn settings(
        &self,
        tenant: &TenantId,
    ) -> Result<Option<Versioned<TenantSettings>>, StoreError> {
        self.read(Self::settings_key(tenant))
            .await?
            .map(|item| {
                from_item::<_, SettingsItem>(item)
                    .map(|i| Versioned {
                        value: i.settings,
                        version: i.version,
                    })
                    .map_err(decode)
            })
            .transpose()
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant))]
    async fn put_settings(
        &self,
        tenant: &TenantId,
        settings: &TenantSettings,
        expect: Expect,
        audit: Option<&AuditEntry>,
    ) -> Result<Versioned<TenantSettings>, StoreError> {
        let current = match expect {
            Expect::Any => self.settings(tenant).await?.map(|s| s.version),
            _ => None,
        };
        let version = Self::next_version(current, expect);
        let item = to_item(SettingsItem {
            pk: keys::settings_pk(tenant),
            sk: keys::SETTINGS_SK.to_owned(),
            version,
            settings: settings.clone(),
        })
        .map_err(encode)?;
        match self.write(item, expect, audit).await? {
            Written::Done => Ok(Versioned {
                value: settings.clone(),
                version,
            }),
            Written::Conflict => {
                let current = self.settings(tenant).await?.map(|s| s.version);
                Err(Self::conflict(current, expect))
            }
        }
    }
}
