//! Workflows: a DAG of task steps; a step may use earlier steps' outputs.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{TaskId, TenantId, WorkflowId};
use super::task::{TaskSpec, TaskStatus};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub spec: TaskSpec,
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// The task running this step, once started.
    #[serde(default)]
    pub task_id: Option<TaskId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub tenant: TenantId,
    pub workflow_id: WorkflowId,
    pub status: TaskStatus,
    pub steps: Vec<Step>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    #[error("a workflow needs at least one step")]
    Empty,
    #[error("step name `{0}` is used twice")]
    DuplicateStep(String),
    #[error("step `{step}` depends on unknown step `{missing}`")]
    UnknownDependency { step: String, missing: String },
    #[error("the steps' dependencies form a cycle")]
    Cycle,
}

impl Workflow {
    /// Checks that the steps form a DAG and returns them in an order where
    /// every step comes after its dependencies.
    pub fn order(steps: &[Step]) -> Result<Vec<usize>, WorkflowError> {
        if steps.is_empty() {
            return Err(WorkflowError::Empty);
        }
        let mut index = BTreeMap::new();
        for (i, step) in steps.iter().enumerate() {
            if index.insert(step.name.as_str(), i).is_some() {
                return Err(WorkflowError::DuplicateStep(step.name.clone()));
            }
        }
        let mut pending: Vec<BTreeSet<usize>> = Vec::with_capacity(steps.len());
        for step in steps {
            let mut deps = BTreeSet::new();
            for dep in &step.depends_on {
                let i =
                    index
                        .get(dep.as_str())
                        .ok_or_else(|| WorkflowError::UnknownDependency {
                            step: step.name.clone(),
                            missing: dep.clone(),
                        })?;
                deps.insert(*i);
            }
            pending.push(deps);
        }
        // Kahn's algorithm.
        let mut order = Vec::with_capacity(steps.len());
        let mut done = vec![false; steps.len()];
        while order.len() < steps.len() {
            let ready: Vec<usize> = (0..steps.len())
                .filter(|i| !done[*i] && pending[*i].iter().all(|d| done[*d]))
                .collect();
            if ready.is_empty() {
                return Err(WorkflowError::Cycle);
            }
            for i in ready {
                done[i] = true;
                order.push(i);
            }
        }
        Ok(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::task::TaskRequest;

    fn step(name: &str, deps: &[&str]) -> Step {
        let req: TaskRequest =
            serde_json::from_value(serde_json::json!({"task_type": "text", "content": "x"}))
                .unwrap();
        Step {
            name: name.into(),
            spec: req.parse().unwrap().0,
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            task_id: None,
        }
    }

    #[test]
    fn orders_a_dag_and_refuses_cycles() {
        let steps = vec![step("b", &["a"]), step("a", &[]), step("c", &["a", "b"])];
        assert_eq!(Workflow::order(&steps).unwrap(), vec![1, 0, 2]);
        let cyclic = vec![step("a", &["b"]), step("b", &["a"])];
        assert_eq!(Workflow::order(&cyclic), Err(WorkflowError::Cycle));
        assert!(matches!(
            Workflow::order(&[step("a", &["zz"])]),
            Err(WorkflowError::UnknownDependency { .. })
        ));
        assert!(matches!(
            Workflow::order(&[step("a", &[]), step("a", &[])]),
            Err(WorkflowError::DuplicateStep(_))
        ));
    }
}
