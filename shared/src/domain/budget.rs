//! Budgets: what a tenant may spend per UTC day and month, and what one task
//! may spend (`budget_usd`).
//!
//! Route reserves a task's whole panel before any call is made: each call's
//! expected cost (its estimated input, its output cap at the output price,
//! one image, or [`RESERVED_AUDIO_SECONDS`] of audio) is held against the
//! tenant's day and month in the same atomic write as the plan, or nothing is
//! planned. Each call's result settles its reservation with the real cost in
//! the same atomic write as the result, so a duplicate result settles
//! nothing. A call's output is capped at the tokens reserved for it, so the
//! only overrun is a call whose input (or audio) was underestimated.

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use super::agent::Agent;
use super::call::Usage;
use super::ids::AgentId;
use super::money::Usd;
use super::task::TaskSpec;
use super::task_type::TaskType;
use super::tokens;

/// The output tokens reserved (and asked for at most) for a call of an
/// agent that sets no `max_tokens`, when a budget applies.
pub const RESERVED_OUTPUT_TOKENS: u32 = 4096;
/// The audio reserved for a transcription, whose length is unknown until
/// the file is read: ten minutes. A longer file overruns by its excess.
pub const RESERVED_AUDIO_SECONDS: u64 = 600;

/// A tenant's budgets in US dollars; `None` is no budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<Usd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<Usd>,
}

impl Budgets {
    /// Whether any budget applies (and spend is counted).
    pub fn is_set(&self) -> bool {
        self.daily_usd.is_some() || self.monthly_usd.is_some()
    }

    pub fn limit(&self, period: Period) -> Option<Usd> {
        match period {
            Period::Day => self.daily_usd,
            Period::Month => self.monthly_usd,
        }
    }

    /// The tighter of two budgets, field by field (a missing one is none).
    pub fn min(self, other: Budgets) -> Budgets {
        let tighter = |a: Option<Usd>, b: Option<Usd>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Budgets {
            daily_usd: tighter(self.daily_usd, other.daily_usd),
            monthly_usd: tighter(self.monthly_usd, other.monthly_usd),
        }
    }

    /// The first field of `self` above `ceiling`'s, as `budgets.…`.
    pub fn above(self, ceiling: Budgets) -> Option<String> {
        Period::ALL.into_iter().find_map(|period| {
            match (self.limit(period), ceiling.limit(period)) {
                (Some(own), Some(max)) if own > max => Some(format!("budgets.{}", period.field())),
                _ => None,
            }
        })
    }
}

/// The spans spend is counted over, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    Month,
}

impl Period {
    pub const ALL: [Period; 2] = [Period::Day, Period::Month];

    /// The settings field that budgets it.
    pub fn field(self) -> &'static str {
        match self {
            Period::Day => "daily_usd",
            Period::Month => "monthly_usd",
        }
    }

    fn adjective(self) -> &'static str {
        match self {
            Period::Day => "daily",
            Period::Month => "monthly",
        }
    }

    /// The period containing `day`, as its counter is named: `2026-11-26`
    /// or `2026-11`.
    pub fn key(self, day: NaiveDate) -> String {
        match self {
            Period::Day => day.format("%Y-%m-%d").to_string(),
            Period::Month => format!("{:04}-{:02}", day.year(), day.month()),
        }
    }
}

/// A period's spend: what settled calls cost, and what is held for calls
/// not settled yet. A budget refuses what would take their sum over it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spend {
    pub spent: Usd,
    pub reserved: Usd,
}

impl Spend {
    pub fn committed(&self) -> Usd {
        self.spent + self.reserved
    }
}

impl std::ops::Add for Spend {
    type Output = Spend;
    fn add(self, rhs: Spend) -> Spend {
        Spend {
            spent: self.spent + rhs.spent,
            reserved: self.reserved + rhs.reserved,
        }
    }
}

/// A panel's reservation against its tenant's budgets, written with the
/// plan: `amount` is held on `day` (and its month) if it fits under both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Hold {
    pub day: NaiveDate,
    pub amount: Usd,
    pub budgets: Budgets,
}

impl Hold {
    /// The most `period` may have committed for the hold to fit, or `None`
    /// when no budget limits it. Negative when the hold alone is too much.
    pub fn room_needed(&self, period: Period) -> Option<Usd> {
        self.budgets.limit(period).map(|limit| limit - self.amount)
    }

    /// The first period the hold does not fit, given what each has committed.
    pub fn refused_by(&self, committed: impl Fn(Period) -> Usd) -> Option<Period> {
        Period::ALL.into_iter().find(|&period| {
            self.room_needed(period)
                .is_some_and(|most| committed(period) > most)
        })
    }

    /// What the hold adds to each period's counter.
    pub fn change(&self) -> Spend {
        Spend {
            spent: Usd::ZERO,
            reserved: self.amount,
        }
    }

    /// Why the task fails when `period` refuses the hold.
    pub fn exceeded(&self, period: Period) -> BudgetExceeded {
        BudgetExceeded::Tenant {
            period,
            limit: self.budgets.limit(period).unwrap_or_default(),
            needed: self.amount,
        }
    }
}

/// What route reserved for one call: its expected cost, its output cap,
/// and, when the tenant's budgets hold it, the day it is counted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallHold {
    pub amount: Usd,
    /// The output tokens the call asks for at most: what was reserved.
    pub max_tokens: u32,
    /// The day whose counters hold `amount`; `None` when only the task's
    /// own `budget_usd` applies (nothing is counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<NaiveDate>,
}

impl CallHold {
    /// What a call's result settles, when the tenant's counters hold it.
    pub fn settlement(&self) -> Option<Settlement> {
        self.day.map(|day| Settlement {
            day,
            reserved: self.amount,
        })
    }
}

/// A call's reservation, settled by its result: stored with the result,
/// and applied to the counters in the same write, so exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    pub day: NaiveDate,
    pub reserved: Usd,
}

impl Settlement {
    /// What settling changes in each period's counter once the call cost
    /// `cost` for `usage`. A call that used nothing (not made, or failed
    /// before an answer) spent nothing; an unknown cost of a call that did
    /// use something (its agent lost its prices meanwhile) is taken to be
    /// the reservation: never a silent zero.
    pub fn change(&self, cost: Option<Usd>, usage: &Usage) -> Spend {
        let spent = match cost {
            Some(cost) => cost,
            None if *usage == Usage::default() => Usd::ZERO,
            None => self.reserved,
        };
        Spend {
            spent,
            reserved: Usd::ZERO - self.reserved,
        }
    }
}

/// Why a task is refused for its budget before any call is made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetExceeded {
    #[error(
        "the tenant's {} budget of {limit} has no room for this task's expected cost of {needed}",
        period.adjective()
    )]
    Tenant {
        period: Period,
        limit: Usd,
        needed: Usd,
    },
    #[error("the panel's expected cost of {needed} is above the task's budget_usd of {budget}")]
    Task { budget: Usd, needed: Usd },
    /// Routing does not choose it under a budget; named here so that the
    /// rule holds whatever chose the panel.
    #[error("agent `{0}` has no prices; under a budget only priced agents are called")]
    Unpriced(AgentId),
}

impl BudgetExceeded {
    pub fn code(&self) -> &'static str {
        match self {
            BudgetExceeded::Tenant { .. } | BudgetExceeded::Task { .. } => "budget_exceeded",
            BudgetExceeded::Unpriced(_) => "unpriced_agent",
        }
    }
}

/// What one call of `agent` for `spec` is expected to use at most: its
/// input as the agent's tokenizer counts it (see `tokens::estimate_for`),
/// its output cap, one image for an image task, the reserved audio for a
/// transcription.
pub fn expected_usage(agent: &Agent, spec: &TaskSpec, max_tokens: u32) -> Usage {
    usage_for_input(spec, input_tokens(agent, spec), max_tokens)
}

/// The input tokens one call of `agent` sends for `spec`: its content and
/// system prompt, as the agent's tokenizer counts them.
pub fn input_tokens(agent: &Agent, spec: &TaskSpec) -> u64 {
    tokens::estimate_for(agent, &spec.content)
        + spec
            .system
            .as_deref()
            .map_or(0, |system| tokens::estimate_for(agent, system))
}

/// [`expected_usage`], the input already counted.
pub fn usage_for_input(spec: &TaskSpec, input_tokens: u64, max_tokens: u32) -> Usage {
    Usage {
        input_tokens,
        output_tokens: u64::from(max_tokens),
        images: u64::from(spec.task_type == TaskType::IMAGE),
        audio_seconds: if spec.task_type == TaskType::TRANSCRIPTION {
            RESERVED_AUDIO_SECONDS
        } else {
            0
        },
        ..Usage::default()
    }
}

/// The output a budgeted call of `agent` asks for at most, and is reserved
/// for: its `max_tokens`, or [`RESERVED_OUTPUT_TOKENS`].
pub fn output_cap(agent: &Agent) -> u32 {
    agent
        .spec
        .constraints
        .max_tokens
        .unwrap_or(RESERVED_OUTPUT_TOKENS)
}

/// What to reserve for one call of `agent` for `spec`, or `None` for an
/// agent without prices (which is not chosen when a budget applies).
pub fn reserve_call(agent: &Agent, spec: &TaskSpec) -> Option<CallHold> {
    let max_tokens = output_cap(agent);
    let amount = agent.cost(&expected_usage(agent, spec, max_tokens))?;
    Some(CallHold {
        amount,
        max_tokens,
        day: None,
    })
}

/// Whether a budget applies to the task: the tenant's, or its own. Then
/// only priced agents are chosen, and every call is reserved.
pub fn applies(budgets: Budgets, spec: &TaskSpec) -> bool {
    budgets.is_set() || spec.budget_usd.is_some()
}

/// What a panel holds: each call's reservation (none where no budget
/// applies), and the tenant's hold on its day's and month's counters (when
/// it has budgets), written with the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelHolds {
    pub calls: Vec<Option<CallHold>>,
    pub tenant: Option<Hold>,
}

/// Reserves `panel` for `spec` on `day` under the tenant's `budgets` and the
/// task's own `budget_usd`: nothing when neither applies; refused whole
/// when the panel is above the task's budget, or names an agent without
/// prices (which routing does not choose under a budget).
pub fn hold_panel(
    spec: &TaskSpec,
    panel: &[Agent],
    budgets: Budgets,
    day: NaiveDate,
) -> Result<PanelHolds, BudgetExceeded> {
    if !applies(budgets, spec) {
        return Ok(PanelHolds {
            calls: vec![None; panel.len()],
            tenant: None,
        });
    }
    let counted = budgets.is_set().then_some(day);
    let calls: Vec<CallHold> = panel
        .iter()
        .map(|agent| {
            reserve_call(agent, spec)
                .map(|hold| CallHold {
                    day: counted,
                    ..hold
                })
                .ok_or_else(|| BudgetExceeded::Unpriced(agent.id.clone()))
        })
        .collect::<Result<_, _>>()?;
    let needed: Usd = calls.iter().map(|h| h.amount).sum();
    if let Some(budget) = spec.budget_usd
        && needed > budget
    {
        return Err(BudgetExceeded::Task { budget, needed });
    }
    Ok(PanelHolds {
        tenant: counted.map(|day| Hold {
            day,
            amount: needed,
            budgets,
        }),
        calls: calls.into_iter().map(Some).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    #[test]
    fn a_hold_fits_while_what_is_committed_leaves_room_for_it() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        let hold = Hold {
            day,
            amount: usd("0.3"),
            budgets: Budgets {
                daily_usd: Some(usd("1")),
                monthly_usd: None,
            },
        };
        assert_eq!(hold.room_needed(Period::Day), Some(usd("0.7")));
        assert_eq!(hold.room_needed(Period::Month), None);
        assert_eq!(hold.refused_by(|_| usd("0.7")), None);
        assert_eq!(hold.refused_by(|_| usd("0.71")), Some(Period::Day));
        assert_eq!(Period::Day.key(day), "2026-11-26");
        assert_eq!(Period::Month.key(day), "2026-11");
        assert_eq!(
            hold.exceeded(Period::Day).to_string(),
            "the tenant's daily budget of $1 has no room for this task's expected cost of $0.3"
        );
    }

    #[test]
    fn settling_replaces_the_reservation_by_the_cost_and_an_unknown_cost_by_the_reservation() {
        let settle = Settlement {
            day: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            reserved: usd("0.5"),
        };
        let held = Spend {
            spent: Usd::ZERO,
            reserved: usd("0.5"),
        };
        let used = Usage {
            output_tokens: 7,
            ..Usage::default()
        };
        let settled = held + settle.change(Some(usd("0.2")), &used);
        assert_eq!(settled.spent, usd("0.2"));
        assert_eq!(settled.reserved, Usd::ZERO);
        assert_eq!((held + settle.change(None, &used)).committed(), usd("0.5"));
        // A call not made spends nothing, priced or not.
        let unmade = held + settle.change(None, &Usage::default());
        assert_eq!((unmade.spent, unmade.reserved), (Usd::ZERO, Usd::ZERO));
    }

    fn agent(v: serde_json::Value) -> Agent {
        let mut spec = serde_json::json!({
            "name": "a", "provider": "openai", "model": "gpt-4o-mini",
            "capabilities": ["text", "image", "transcription"], "secret": "s"
        });
        for (k, val) in v.as_object().unwrap() {
            spec[k] = val.clone();
        }
        Agent {
            id: crate::domain::AgentId::parse("a").unwrap(),
            owner: crate::domain::Owner::Platform,
            spec: serde_json::from_value(spec).unwrap(),
            version: 1,
        }
    }

    fn spec(v: serde_json::Value) -> TaskSpec {
        serde_json::from_value::<crate::domain::TaskRequest>(v)
            .unwrap()
            .parse()
            .unwrap()
            .0
    }

    #[test]
    fn a_call_reserves_its_counted_input_its_output_cap_and_its_media() {
        let priced = agent(serde_json::json!({
            "pricing": {"input_per_mtok": 1, "output_per_mtok": 10, "per_image": "0.04",
                "per_audio_minute": "0.006"},
            "constraints": {"max_tokens": 100}
        }));
        // "hello world" is 2 tokens for gpt-4o-mini's tokenizer, "be brief" 2.
        let text = spec(
            serde_json::json!({"task_type": "text", "content": "hello world",
            "system": "be brief"}),
        );
        let hold = reserve_call(&priced, &text).unwrap();
        assert_eq!(hold.max_tokens, 100);
        assert_eq!(hold.amount, usd("0.001004"));
        assert_eq!(hold.day, None);
        let image = spec(serde_json::json!({"task_type": "image", "content": "a cat"}));
        let held = reserve_call(&priced, &image).unwrap().amount;
        assert_eq!(held, usd("0.04") + usd("0.001002"));
        let audio = spec(serde_json::json!({"task_type": "transcription",
            "content": "https://example.com/a.mp3"}));
        let held = reserve_call(&priced, &audio).unwrap().amount;
        // Ten minutes of audio at $0.006, and the URL's tokens.
        assert!(held > usd("0.06") && held < usd("0.0611"), "{held}");
        // Without max_tokens the reservation caps the output it asks for.
        let uncapped = agent(serde_json::json!({"pricing": {"output_per_mtok": 1}}));
        let hold = reserve_call(&uncapped, &text).unwrap();
        assert_eq!(hold.max_tokens, RESERVED_OUTPUT_TOKENS);
        assert_eq!(hold.amount, usd("0.004096"));
        // No prices: nothing can be reserved.
        assert_eq!(reserve_call(&agent(serde_json::json!({})), &text), None);
    }

    #[test]
    fn a_panel_above_the_tasks_budget_is_refused_whole() {
        let priced = agent(serde_json::json!({"pricing": {"output_per_mtok": 1000},
            "constraints": {"max_tokens": 100}}));
        let panel = [priced.clone(), priced];
        let fits = spec(serde_json::json!({"task_type": "text", "content": "x",
            "budget_usd": "0.2"}));
        let day = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        // The task's budget alone: holds, but nothing on the counters.
        let holds = hold_panel(&fits, &panel, Budgets::default(), day).unwrap();
        assert_eq!(holds.tenant, None);
        assert!(
            holds
                .calls
                .iter()
                .all(|h| h.is_some_and(|h| h.day.is_none() && h.amount == usd("0.1")))
        );
        // The tenant's budgets too: the panel's sum held on its counters.
        let tenant = Budgets {
            daily_usd: Some(usd("5")),
            monthly_usd: None,
        };
        let holds = hold_panel(&fits, &panel, tenant, day).unwrap();
        assert_eq!(
            holds.tenant,
            Some(Hold {
                day,
                amount: usd("0.2"),
                budgets: tenant
            })
        );
        assert!(
            holds
                .calls
                .iter()
                .all(|h| h.is_some_and(|h| h.day == Some(day)))
        );
        let tight = spec(serde_json::json!({"task_type": "text", "content": "x",
            "budget_usd": "0.19"}));
        assert_eq!(
            hold_panel(&tight, &panel, tenant, day),
            Err(BudgetExceeded::Task {
                budget: usd("0.19"),
                needed: usd("0.2")
            })
        );
        // No budget at all: nothing held, unpriced agents welcome.
        let free = spec(serde_json::json!({"task_type": "text", "content": "x"}));
        let unpriced = [agent(serde_json::json!({}))];
        let none = hold_panel(&free, &unpriced, Budgets::default(), day).unwrap();
        assert_eq!(none.calls, vec![None]);
        assert_eq!(
            hold_panel(&fits, &unpriced, Budgets::default(), day)
                .unwrap_err()
                .code(),
            "unpriced_agent"
        );
    }

    #[test]
    fn a_tenants_own_budget_may_only_be_lower() {
        let ceiling = Budgets {
            daily_usd: Some(usd("50")),
            monthly_usd: None,
        };
        let own = Budgets {
            daily_usd: Some(usd("60")),
            monthly_usd: Some(usd("1000")),
        };
        assert_eq!(own.above(ceiling).as_deref(), Some("budgets.daily_usd"));
        assert_eq!(
            own.min(ceiling),
            Budgets {
                daily_usd: Some(usd("50")),
                monthly_usd: Some(usd("1000"))
            }
        );
    }
}
