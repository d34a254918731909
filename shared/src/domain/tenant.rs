//! A tenant's settings, as `platform_admin` sets them.

use std::collections::BTreeSet;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::budget::Budgets;
use super::filters::FilterSettings;
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

/// Requests and (estimated) tokens per minute; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
}

impl Rates {
    /// The tighter of two limits, field by field (a missing one is no limit).
    pub fn min(self, other: Rates) -> Rates {
        let tighter = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Rates {
            rpm: tighter(self.rpm, other.rpm),
            tpm: tighter(self.tpm, other.tpm),
        }
    }

    /// Each field of `self` over the same field of `ceiling`, by name.
    fn above(self, ceiling: Rates, prefix: &str) -> Option<String> {
        let over = |a: Option<u64>, c: Option<u64>| matches!((a, c), (Some(a), Some(c)) if a > c);
        if over(self.rpm, ceiling.rpm) {
            Some(format!("{prefix}rpm"))
        } else if over(self.tpm, ceiling.tpm) {
            Some(format!("{prefix}tpm"))
        } else {
            None
        }
    }
}

/// A tenant's rate limits: for the whole tenant, and for each token
/// subject (user or service) of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(flatten)]
    pub tenant: Rates,
    #[serde(default)]
    pub per_subject: Rates,
}

impl RateLimits {
    pub fn min(self, other: RateLimits) -> RateLimits {
        RateLimits {
            tenant: self.tenant.min(other.tenant),
            per_subject: self.per_subject.min(other.per_subject),
        }
    }

    /// The first field set above `ceiling`'s, as `rate_limits.…`.
    pub fn above(self, ceiling: RateLimits) -> Option<String> {
        self.tenant
            .above(ceiling.tenant, "rate_limits.")
            .or_else(|| {
                self.per_subject
                    .above(ceiling.per_subject, "rate_limits.per_subject.")
            })
    }
}

/// What a tenant's admin set for its own tenant: only lower than what
/// `platform_admin` allows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budgets: Option<Budgets>,
    /// The tenant's own content filters, applied with the platform's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<FilterSettings>,
}

/// A tenant's stored settings: what `platform_admin` set (the ceilings, and
/// the platform agents it may use) and what the tenant's admins set below
/// them. A section left unset takes the deployment's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_agents: Option<PlatformAgents>,
    /// The ceiling of the tenant's rate limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimits>,
    /// The ceiling of the tenant's budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budgets: Option<Budgets>,
    /// Content filters the platform applies to the tenant, which its admins
    /// cannot turn off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<FilterSettings>,
    #[serde(default)]
    pub own: OwnSettings,
}

impl TenantSettings {
    /// These settings with the platform's sections `update` names replaced
    /// (a partial PUT); the tenant's own settings stay.
    pub fn merged(mut self, update: TenantSettings) -> TenantSettings {
        if update.platform_agents.is_some() {
            self.platform_agents = update.platform_agents;
        }
        if update.rate_limits.is_some() {
            self.rate_limits = update.rate_limits;
        }
        if update.budgets.is_some() {
            self.budgets = update.budgets;
        }
        if update.filters.is_some() {
            self.filters = update.filters;
        }
        self
    }

    /// These settings with the tenant's own sections `update` names replaced.
    pub fn with_own(mut self, update: OwnSettings) -> TenantSettings {
        if update.rate_limits.is_some() {
            self.own.rate_limits = update.rate_limits;
        }
        if update.budgets.is_some() {
            self.own.budgets = update.budgets;
        }
        if update.filters.is_some() {
            self.own.filters = update.filters;
        }
        self
    }
}

/// The settings that apply: a tenant's own below its ceilings, the
/// defaults where nothing is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveSettings {
    pub platform_agents: PlatformAgents,
    /// What is enforced: the tighter of the ceiling and the tenant's own.
    pub rate_limits: RateLimits,
    pub budgets: Budgets,
    /// What `platform_admin` allows (or the default).
    pub ceilings: Ceilings,
    /// The content filters the platform applies, and the tenant's own; both
    /// apply (see `Filters::combine`).
    pub platform_filters: FilterSettings,
    pub filters: FilterSettings,
}

/// What `platform_admin` allows a tenant: its own limits and budgets may
/// only be lower.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ceilings {
    pub rate_limits: RateLimits,
    pub budgets: Budgets,
}

impl EffectiveSettings {
    /// Why `own` may not be set: the first field above its ceiling.
    pub fn refuse_own(&self, own: &OwnSettings) -> Option<String> {
        own.rate_limits
            .and_then(|r| r.above(self.ceilings.rate_limits))
            .or_else(|| own.budgets.and_then(|b| b.above(self.ceilings.budgets)))
    }
}

/// No filter: nothing is looked for.
fn none_filtered() -> FilterSettings {
    FilterSettings::default()
}

/// The deployment's defaults for a tenant with nothing set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantDefaults {
    pub platform_agents: PlatformAgents,
    pub rate_limits: RateLimits,
    pub budgets: Budgets,
}

impl Default for TenantDefaults {
    /// A tenant uses no platform agent until allowed, and has no rate limit
    /// and no budget.
    fn default() -> Self {
        TenantDefaults {
            platform_agents: PlatformAgents::none(),
            rate_limits: RateLimits::default(),
            budgets: Budgets::default(),
        }
    }
}

impl TenantDefaults {
    pub fn apply(&self, settings: Option<&TenantSettings>) -> EffectiveSettings {
        let ceilings = Ceilings {
            rate_limits: settings
                .and_then(|s| s.rate_limits)
                .unwrap_or(self.rate_limits),
            budgets: settings.and_then(|s| s.budgets).unwrap_or(self.budgets),
        };
        let own = settings.map(|s| s.own.clone()).unwrap_or_default();
        EffectiveSettings {
            platform_agents: settings
                .and_then(|s| s.platform_agents.clone())
                .unwrap_or_else(|| self.platform_agents.clone()),
            rate_limits: ceilings
                .rate_limits
                .min(own.rate_limits.unwrap_or_default()),
            budgets: ceilings.budgets.min(own.budgets.unwrap_or_default()),
            ceilings,
            platform_filters: settings
                .and_then(|s| s.filters.clone())
                .unwrap_or_else(none_filtered),
            filters: own.filters.unwrap_or_else(none_filtered),
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
            ..TenantSettings::default()
        };
        assert_eq!(
            defaults.apply(Some(&set)).platform_agents,
            PlatformAgents::All
        );
        assert_eq!(set.clone().merged(TenantSettings::default()), set);
    }

    fn limits(v: serde_json::Value) -> RateLimits {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_tenants_own_limits_apply_below_the_ceiling_and_never_above_it() {
        let defaults = TenantDefaults {
            rate_limits: limits(json!({"rpm": 600, "tpm": 200000})),
            ..TenantDefaults::default()
        };
        // Nothing set: the default is the ceiling and what applies.
        let none = defaults.apply(None);
        assert_eq!(none.rate_limits, none.ceilings.rate_limits);
        assert_eq!(none.rate_limits.tenant.rpm, Some(600));
        assert_eq!(none.rate_limits.per_subject, Rates::default());

        let mut settings = TenantSettings {
            rate_limits: Some(limits(json!({"rpm": 100}))),
            ..TenantSettings::default()
        };
        let ceiling = defaults.apply(Some(&settings));
        // A ceiling set replaces the default section: no tpm limit now.
        assert_eq!(ceiling.ceilings.rate_limits, limits(json!({"rpm": 100})));
        let lower = OwnSettings {
            rate_limits: Some(limits(
                json!({"rpm": 50, "tpm": 1000, "per_subject": {"rpm": 5}}),
            )),
            budgets: None,
            filters: None,
        };
        assert_eq!(ceiling.refuse_own(&lower), None);
        settings = settings.with_own(lower);
        let applied = defaults.apply(Some(&settings));
        assert_eq!(
            applied.rate_limits,
            limits(json!({"rpm": 50, "tpm": 1000, "per_subject": {"rpm": 5}}))
        );
        // Above the ceiling: refused, naming the field.
        let higher = OwnSettings {
            rate_limits: Some(limits(json!({"rpm": 101}))),
            budgets: None,
            filters: None,
        };
        assert_eq!(
            applied.refuse_own(&higher).as_deref(),
            Some("rate_limits.rpm")
        );
        let subject = OwnSettings {
            rate_limits: Some(limits(json!({"per_subject": {"tpm": 2}}))),
            budgets: None,
            filters: None,
        };
        let capped = TenantDefaults {
            rate_limits: limits(json!({"per_subject": {"tpm": 1}})),
            ..TenantDefaults::default()
        }
        .apply(None);
        assert_eq!(
            capped.refuse_own(&subject).as_deref(),
            Some("rate_limits.per_subject.tpm")
        );
        // A platform update keeps the tenant's own settings.
        let kept = settings.clone().merged(TenantSettings {
            rate_limits: Some(limits(json!({"rpm": 80}))),
            ..TenantSettings::default()
        });
        assert_eq!(kept.own, settings.own);
        assert!(serde_json::from_value::<RateLimits>(json!({"rps": 1})).is_err());
    }
}
