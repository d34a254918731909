//! Test harness: a moto server started on demand, and the two backends built
//! the same way for every contract test.

pub mod backends;
pub mod faults;
pub mod moto;
pub mod pipeline;

/// The audit entry of a task stored directly (not through intake), for
/// `TaskStore::create`.
pub fn created(task: &maof::domain::Task) -> maof::domain::AuditEntry {
    maof::domain::AuditEntry::task_created_by_submitter(task)
}
