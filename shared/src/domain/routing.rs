//! Picking agents for a task: pure, so every rule is unit-tested.

use std::cmp::Ordering;
use std::collections::HashSet;

use super::agent::Agent;
use super::money::Usd;
use super::task::{RoutingStrategy, TaskSpec};
use super::task_type::TaskType;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("no enabled agent can serve task_type `{0}`")]
    NoCapableAgent(TaskType),
    #[error(
        "no agent with prices can serve task_type `{0}`; under a budget only priced agents are called"
    )]
    NoPricedAgent(TaskType),
    #[error("routing.agents names `{0}`, which is unknown or disabled")]
    UnknownAgent(String),
    #[error(
        "routing.agents names `{0}`, which has no prices; under a budget only priced agents are called"
    )]
    UnpricedAgent(String),
    #[error(
        "fanout {wanted} needs {wanted} agents for task_type `{task_type}`; {available} available"
    )]
    NotEnoughAgents {
        wanted: u32,
        available: usize,
        task_type: TaskType,
    },
}

impl RoutingError {
    pub fn code(&self) -> &'static str {
        match self {
            RoutingError::NoCapableAgent(_) => "no_capable_agent",
            RoutingError::NoPricedAgent(_) => "no_priced_agent",
            RoutingError::UnknownAgent(_) => "unknown_agent",
            RoutingError::UnpricedAgent(_) => "unpriced_agent",
            RoutingError::NotEnoughAgents { .. } => "not_enough_agents",
        }
    }
}

/// Input plus output price per million tokens: the price to compare agents by.
/// An agent without prices sorts after every priced one.
fn blended_price(agent: &Agent) -> Option<Usd> {
    agent
        .spec
        .pricing
        .as_ref()
        .map(|p| p.input_per_mtok + p.output_per_mtok)
}

fn by_price(a: &Agent, b: &Agent) -> Ordering {
    match (blended_price(a), blended_price(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

fn by_quality(a: &Agent, b: &Agent) -> Ordering {
    b.spec.quality.total_cmp(&a.spec.quality)
}

/// Chooses `spec.fanout` distinct agents: exactly the named ones when
/// `routing.agents` is given, else the capable ones ordered by the strategy,
/// preferring distinct providers so one provider's outage hits one call.
/// Under a budget (`priced_only`), an agent without prices is not chosen:
/// what it costs could not be reserved.
pub fn select(
    spec: &TaskSpec,
    agents: &[Agent],
    priced_only: bool,
) -> Result<Vec<Agent>, RoutingError> {
    let priced = |a: &Agent| !priced_only || a.spec.pricing.is_some();
    if !spec.agents.is_empty() {
        return spec
            .agents
            .iter()
            .take(spec.fanout as usize)
            .map(|id| {
                let agent = agents
                    .iter()
                    .find(|a| &a.id == id && a.spec.enabled)
                    .ok_or_else(|| RoutingError::UnknownAgent(id.to_string()))?;
                if !priced(agent) {
                    return Err(RoutingError::UnpricedAgent(id.to_string()));
                }
                Ok(agent.clone())
            })
            .collect();
    }
    let mut capable: Vec<&Agent> = agents
        .iter()
        .filter(|a| a.can_serve(&spec.task_type))
        .collect();
    if capable.is_empty() {
        return Err(RoutingError::NoCapableAgent(spec.task_type.clone()));
    }
    capable.retain(|a| priced(a));
    if capable.is_empty() {
        return Err(RoutingError::NoPricedAgent(spec.task_type.clone()));
    }
    let wanted = spec.fanout as usize;
    if capable.len() < wanted {
        return Err(RoutingError::NotEnoughAgents {
            wanted: spec.fanout,
            available: capable.len(),
            task_type: spec.task_type.clone(),
        });
    }
    capable.sort_by(|a, b| {
        let primary = match spec.routing_strategy {
            RoutingStrategy::Cheapest => by_price(a, b).then_with(|| by_quality(a, b)),
            _ => by_quality(a, b).then_with(|| by_price(a, b)),
        };
        primary.then_with(|| a.id.cmp(&b.id))
    });
    let mut chosen: Vec<&Agent> = Vec::with_capacity(wanted);
    let mut providers = HashSet::new();
    for agent in &capable {
        if chosen.len() < wanted && providers.insert(agent.spec.provider) {
            chosen.push(agent);
        }
    }
    for agent in &capable {
        if chosen.len() < wanted && !chosen.iter().any(|c| c.id == agent.id) {
            chosen.push(agent);
        }
    }
    // Keep the strategy's order among the chosen.
    chosen.sort_by_key(|c| capable.iter().position(|a| a.id == c.id));
    Ok(chosen.into_iter().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AgentId, AgentSpec, TaskRequest};
    use serde_json::json;

    fn agent(id: &str, provider: &str, quality: f64, price: Option<f64>, caps: &[&str]) -> Agent {
        let mut spec = json!({
            "name": id, "provider": provider, "model": "m", "capabilities": caps,
            "quality": quality, "secret": "s", "base_url": "http://x"
        });
        if let Some(p) = price {
            spec["pricing"] = json!({"input_per_mtok": p, "output_per_mtok": p});
        }
        Agent {
            id: AgentId::parse(id).unwrap(),
            owner: crate::domain::Owner::Platform,
            spec: serde_json::from_value::<AgentSpec>(spec).unwrap(),
            version: 1,
        }
    }

    fn spec(v: serde_json::Value) -> TaskSpec {
        serde_json::from_value::<TaskRequest>(v)
            .unwrap()
            .parse()
            .unwrap()
            .0
    }

    fn ids(agents: &[Agent]) -> Vec<&str> {
        agents.iter().map(|a| a.id.as_str()).collect()
    }

    fn registry() -> Vec<Agent> {
        vec![
            agent("cheap", "openai", 0.5, Some(0.1), &["text"]),
            agent("good", "anthropic", 0.9, Some(3.0), &["text"]),
            agent("good-too", "anthropic", 0.85, Some(1.0), &["text"]),
            agent("coder", "openai_compatible", 0.7, Some(0.2), &["code"]),
            agent("free", "gemini", 0.6, None, &["text"]),
        ]
    }

    #[test]
    fn best_prefers_quality_then_distinct_providers() {
        let chosen = select(
            &spec(json!({"task_type": "text", "content": "x", "routing": {"fanout": 2}})),
            &registry(),
            false,
        )
        .unwrap();
        assert_eq!(ids(&chosen), ["good", "free"]);
    }

    #[test]
    fn under_a_budget_an_agent_without_prices_is_not_chosen() {
        let two = spec(json!({"task_type": "text", "content": "x", "routing": {"fanout": 2}}));
        let chosen = select(&two, &registry(), true).unwrap();
        assert_eq!(ids(&chosen), ["good", "cheap"]);
        let named =
            spec(json!({"task_type": "text", "content": "x", "routing": {"agents": ["free"]}}));
        assert_eq!(
            select(&named, &registry(), true).unwrap_err().code(),
            "unpriced_agent"
        );
        let unpriced = vec![agent("free", "gemini", 0.6, None, &["text"])];
        assert_eq!(
            select(&two, &unpriced, true).unwrap_err().code(),
            "no_priced_agent"
        );
    }

    #[test]
    fn cheapest_prefers_price_and_unpriced_last() {
        let s = spec(
            json!({"task_type": "text", "content": "x", "routing": {"strategy": "cheapest", "fanout": 4}}),
        );
        assert_eq!(
            ids(&select(&s, &registry(), false).unwrap()),
            ["cheap", "good-too", "good", "free"]
        );
    }

    #[test]
    fn named_agents_are_taken_as_named() {
        let s = spec(
            json!({"task_type": "text", "content": "x", "routing": {"agents": ["coder", "cheap"], "fanout": 2}}),
        );
        assert_eq!(
            ids(&select(&s, &registry(), false).unwrap()),
            ["coder", "cheap"]
        );
        let s =
            spec(json!({"task_type": "text", "content": "x", "routing": {"agents": ["ghost"]}}));
        assert_eq!(
            select(&s, &registry(), false),
            Err(RoutingError::UnknownAgent("ghost".into()))
        );
    }

    #[test]
    fn no_or_too_few_capable_agents_is_a_clear_error() {
        let s = spec(json!({"task_type": "image", "content": "x"}));
        assert_eq!(
            select(&s, &registry(), false).unwrap_err().code(),
            "no_capable_agent"
        );
        let s = spec(json!({"task_type": "code", "content": "x", "routing": {"fanout": 2}}));
        assert_eq!(
            select(&s, &registry(), false).unwrap_err().code(),
            "not_enough_agents"
        );
        let mut disabled = registry();
        for a in &mut disabled {
            a.spec.enabled = false;
        }
        let s = spec(json!({"task_type": "text", "content": "x"}));
        assert_eq!(
            select(&s, &disabled, false).unwrap_err().code(),
            "no_capable_agent"
        );
    }
}
