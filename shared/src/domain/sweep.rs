//! When the sweeper looks at an unfinished task, and what it does then. The
//! sweeper is the one place that ends what nothing else will: a task left
//! `queued` (its route message never sent), a stage whose message was lost,
//! a task past its deadline whose messages are all waiting.

use chrono::{DateTime, Utc};

use super::task::{Task, TaskStatus};

/// Partitions of the sweep index (no tenant is one hot partition).
pub const SWEEP_SHARDS: u32 = 16;
/// How long a task may sit in one stage before the sweeper re-drives it.
pub const STAGE_GRACE: chrono::Duration = chrono::Duration::seconds(60);

/// What the sweeper does with a due task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Past its deadline: fail it (`timeout`).
    Expire,
    /// Send its stage's message again (route, the calls without results,
    /// or aggregate); every stage takes a duplicate in its stride.
    Redrive(TaskStatus),
    /// Finished: nothing to do.
    Nothing,
}

impl Task {
    /// The first time the sweeper looks, set when the task is stored: one
    /// stage's grace after creation, or its deadline if sooner.
    pub fn first_sweep(&self) -> DateTime<Utc> {
        (self.created_at + STAGE_GRACE).min(self.deadline())
    }

    /// The next look after one at `now`: another grace, or just past the
    /// deadline if sooner (to expire it then).
    pub fn next_sweep(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        (now + STAGE_GRACE).min(self.deadline() + chrono::Duration::seconds(1))
    }

    pub fn sweep(&self, now: DateTime<Utc>) -> Sweep {
        if self.status.is_terminal() {
            Sweep::Nothing
        } else if now > self.deadline() {
            Sweep::Expire
        } else {
            Sweep::Redrive(self.status)
        }
    }
}
