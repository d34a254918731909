use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use serde_dynamo::{from_item, to_item};

use super::describe;
use crate::adapters::layout::keys::{self, PK, SK};
use crate::domain::{Agent, AgentId, AgentSpec};
use crate::ports::{Expect, Registry, StoreError};

#[derive(Serialize, Deserialize)]
struct AgentItem {
    pk: String,
    sk: String,
    #[serde(flatten)]
    agent: Agent,
}

/// Agents in the registry table, each write conditional on its version.
#[derive(Clone)]
pub struct DynamoRegistry {
    client: Client,
    table: String,
}

impl DynamoRegistry {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoRegistry {
            client,
            table: table.into(),
        }
    }

    fn key(id: &AgentId) -> HashMap<String, AttributeValue> {
        HashMap::from([
            (PK.to_owned(), AttributeValue::S(keys::agent_pk(id))),
            (SK.to_owned(), AttributeValue::S(keys::AGENT_SK.to_owned())),
        ])
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
    async fn conflict(&self, id: &AgentId, expect: Expect) -> StoreError {
        match (self.get(id).await, expect) {
            (Err(e), _) => e,
            (Ok(Some(_)), Expect::Absent) => StoreError::AlreadyExists,
            (Ok(current), _) => StoreError::VersionConflict {
                current: current.map(|a| a.version),
            },
        }
    }
}

fn backend<E: std::error::Error>(err: E) -> StoreError {
    StoreError::Backend(describe(err))
}

fn decode(err: serde_dynamo::Error) -> StoreError {
    StoreError::Backend(format!("cannot decode agent: {err}"))
}

#[async_trait]
impl Registry for DynamoRegistry {
    #[tracing::instrument(skip_all, fields(agent_id = %id))]
    async fn get(&self, id: &AgentId) -> Result<Option<Agent>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?;
        out.item
            .map(|item| {
                from_item::<_, AgentItem>(item)
                    .map(|i| i.agent)
                    .map_err(decode)
            })
            .transpose()
    }

    #[tracing::instrument(skip_all)]
    async fn list(&self) -> Result<Vec<Agent>, StoreError> {
        let mut agents = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(pk, :p)")
                .expression_attribute_values(":p", AttributeValue::S("AGENT#".into()))
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
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(agents)
    }

    #[tracing::instrument(skip_all, fields(agent_id = %id))]
    async fn put(
        &self,
        id: &AgentId,
        spec: AgentSpec,
        expect: Expect,
    ) -> Result<Agent, StoreError> {
        let version = match expect {
            Expect::Absent => 1,
            Expect::Version(v) => v + 1,
            Expect::Any => self.get(id).await?.map_or(1, |a| a.version + 1),
        };
        let agent = Agent {
            id: id.clone(),
            spec,
            version,
        };
        let item = to_item(AgentItem {
            pk: keys::agent_pk(id),
            sk: keys::AGENT_SK.to_owned(),
            agent: agent.clone(),
        })
        .map_err(|e| StoreError::Backend(format!("cannot encode agent: {e}")))?;
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
            Ok(_) => Ok(agent),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(self.conflict(id, expect).await)
            }
            Err(e) => Err(backend(e)),
        }
    }

    #[tracing::instrument(skip_all, fields(agent_id = %id))]
    async fn delete(&self, id: &AgentId, expect: Expect) -> Result<(), StoreError> {
        let (condition, value) = match Self::condition(expect) {
            Some((condition, value)) => (condition, value),
            None => ("attribute_exists(pk)", None),
        };
        let mut delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(id)))
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
                match self.conflict(id, expect).await {
                    StoreError::VersionConflict { current: None } => Err(StoreError::NotFound),
                    other => Err(other),
                }
            }
            Err(e) => Err(backend(e)),
        }
    }
}
