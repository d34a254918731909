//! A tenant's settings, as `platform_admin` sets them.

use std::collections::BTreeSet;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ids::{AgentId, IdError};

/// Which platform agents a tenant may use: all (`["*"]`) or those listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformAgents {
    All,
    Only(BTreeSet<AgentId>),
}

impl PlatformAgents {
    pub fn none() -> Self {
        PlatformAgents::Only(BTreeSet::new())
    }

    pub fn allows(&self, id: &AgentId) -> bool {
        match self {
            PlatformAgents::All => true,
            PlatformAgents::Only(ids) => ids.contains(id),
        }
    }

    /// From a list of ids, or `*` alone for all.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, PlatformAgentsError> {
        if items.iter().any(|i| i.as_ref() == "*") {
            return if items.len() == 1 {
                Ok(PlatformAgents::All)
            } else {
                Err(PlatformAgentsError::StarWithOthers)
            };
        }
        items
            .iter()
            .enumerate()
            .map(|(index, id)| {
                AgentId::parse(id.as_ref())
                    .map_err(|error| PlatformAgentsError::BadId { index, error })
            })
            .collect::<Result<BTreeSet<_>, _>>()
            .map(PlatformAgents::Only)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformAgentsError {
    #[error("`*` (all platform agents) must be the list's only item")]
    StarWithOthers,
    #[error("[{index}]: {error}")]
    BadId { index: usize, error: IdError },
}

impl Serialize for PlatformAgents {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PlatformAgents::All => ["*"].serialize(s),
            PlatformAgents::Only(ids) => ids.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for PlatformAgents {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<String>::deserialize(d)?;
        PlatformAgents::parse(&items).map_err(serde::de::Error::custom)
    }
}

/// What `platform_admin` set for a tenant; a section left unset takes the
/// deployment's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_agents: Option<PlatformAgents>,
}

impl TenantSettings {
    /// These settings with the sections `update` names replaced (a partial PUT).
    pub fn merged(mut self, update: TenantSettings) -> TenantSettings {
        if update.platform_agents.is_some() {
            self.platform_agents = update.platform_agents;
        }
        self
    }
}

/// The settings that apply: a tenant's own, the defaults elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EffectiveSettings {
    pub platform_agents: PlatformAgents,
}

/// The deployment's defaults for a tenant with nothing set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantDefaults {
    pub platform_agents: PlatformAgents,
}

impl Default for TenantDefaults {
    /// A tenant uses no platform agent until allowed.
    fn default() -> Self {
        TenantDefaults {
            platform_agents: PlatformAgents::none(),
        }
    }
}

impl TenantDefaults {
    pub fn apply(&self, settings: Option<&TenantSettings>) -> EffectiveSettings {
        EffectiveSettings {
            platform_agents: settings
                .and_then(|s| s.platform_agents.clone())
                .unwrap_or_else(|| self.platform_agents.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    #[test]
    fn star_means_all_and_only_alone() {
        let all: PlatformAgents = serde_json::from_value(json!(["*"])).unwrap();
        assert!(all.allows(&id("anything")));
        assert_eq!(serde_json::to_value(&all).unwrap(), json!(["*"]));
        assert!(serde_json::from_value::<PlatformAgents>(json!(["*", "gpt"])).is_err());
        let some: PlatformAgents = serde_json::from_value(json!(["gpt", "claude"])).unwrap();
        assert!(some.allows(&id("gpt")));
        assert!(!some.allows(&id("gemini")));
        assert_eq!(
            PlatformAgents::parse(&["ok", "no#"]),
            Err(PlatformAgentsError::BadId {
                index: 1,
                error: IdError::BadCharacter { kind: "agent id" }
            })
        );
    }

    #[test]
    fn unset_sections_take_the_default_and_a_partial_update_keeps_the_rest() {
        let defaults = TenantDefaults::default();
        assert_eq!(defaults.apply(None).platform_agents, PlatformAgents::none());
        let set = TenantSettings {
            platform_agents: Some(PlatformAgents::All),
        };
        assert_eq!(
            defaults.apply(Some(&set)).platform_agents,
            PlatformAgents::All
        );
        assert_eq!(set.clone().merged(TenantSettings::default()), set);
    }
}
