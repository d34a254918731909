//! The API's limits, in one table: what each is, its value, and the status
//! a request over it gets. The README's table is checked against this one;
//! a route that adds a limit adds its row here.

use super::MAX_BODY_BYTES;
use super::tasks::{MAX_PAGE, MAX_WAIT_SECS};
use crate::domain::task::{MAX_CONTENT_BYTES, MAX_FANOUT, MAX_SYSTEM_BYTES};
use crate::stages::agents::{MAX_AGENTS_PER_OWNER, MAX_PLATFORM_AGENTS_LISTED};

/// One limit of the API.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// What is limited, as the README names it.
    pub name: &'static str,
    pub value: u64,
    pub unit: &'static str,
    /// The status of a request over it.
    pub status: u16,
}

pub const LIMITS: &[Limit] = &[
    Limit {
        name: "request body",
        value: MAX_BODY_BYTES as u64,
        unit: "bytes",
        status: 413,
    },
    Limit {
        name: "task content",
        value: MAX_CONTENT_BYTES as u64,
        unit: "bytes",
        status: 413,
    },
    Limit {
        name: "task system prompt",
        value: MAX_SYSTEM_BYTES as u64,
        unit: "bytes",
        status: 413,
    },
    Limit {
        name: "fan-out (routing.fanout)",
        value: MAX_FANOUT as u64,
        unit: "calls",
        status: 422,
    },
    Limit {
        name: "page size (limit)",
        value: MAX_PAGE as u64,
        unit: "items",
        status: 400,
    },
    Limit {
        name: "wait (?wait)",
        value: MAX_WAIT_SECS,
        unit: "seconds",
        status: 400,
    },
    Limit {
        name: "agents per tenant (and platform agents)",
        value: MAX_AGENTS_PER_OWNER as u64,
        unit: "agents",
        status: 422,
    },
    Limit {
        name: "platform agents a tenant's settings list",
        value: MAX_PLATFORM_AGENTS_LISTED as u64,
        unit: "ids",
        status: 422,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's limits table says what this one says.
    #[test]
    fn the_readme_lists_every_limit_as_enforced() {
        let readme = include_str!("../../../README.md");
        for limit in LIMITS {
            let row = format!(
                "| {} | {} {} | {} |",
                limit.name, limit.value, limit.unit, limit.status
            );
            assert!(readme.contains(&row), "README.md lacks the row `{row}`");
        }
    }
}
