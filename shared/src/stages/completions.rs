use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::domain::{TaskId, TenantId};

/// In-process signal that a task finished, so `?wait=N` answers at once when
/// the whole pipeline runs in one process. Across processes (Lambda) waiters
/// fall back to polling the store.
#[derive(Default)]
pub struct Completions {
    waiting: Mutex<HashMap<(TenantId, TaskId), Arc<Notify>>>,
}

impl Completions {
    /// Registers interest in a task; check the store after calling this.
    pub fn watch(&self, tenant: &TenantId, task_id: TaskId) -> Arc<Notify> {
        self.lock()
            .entry((tenant.clone(), task_id))
            .or_default()
            .clone()
    }

    pub fn unwatch(&self, tenant: &TenantId, task_id: TaskId) {
        let mut waiting = self.lock();
        let key = (tenant.clone(), task_id);
        // Only the map holds it: no other waiter is left.
        if waiting.get(&key).is_some_and(|n| Arc::strong_count(n) == 1) {
            waiting.remove(&key);
        }
    }

    pub fn finished(&self, tenant: &TenantId, task_id: TaskId) {
        if let Some(notify) = self.lock().get(&(tenant.clone(), task_id)) {
            notify.notify_waiters();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(TenantId, TaskId), Arc<Notify>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}
