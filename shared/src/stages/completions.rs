use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::domain::{TaskId, TenantId};

type Waiting = HashMap<(TenantId, TaskId), Arc<Notify>>;

/// In-process signal that a task finished, so `?wait=N` answers at once when
/// the whole pipeline runs in one process. Across processes (Lambda) waiters
/// fall back to polling the store.
#[derive(Default)]
pub struct Completions {
    waiting: Mutex<Waiting>,
}

/// Interest in one task's end. Dropping it (the waiter finished, or its
/// client went away and the request was dropped) forgets the interest, so
/// abandoned waits leave nothing behind.
pub struct Watch<'a> {
    completions: &'a Completions,
    key: (TenantId, TaskId),
    notify: Arc<Notify>,
}

impl Watch<'_> {
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut waiting = self.completions.lock();
        // Only the map and this watch hold it: no other waiter is left.
        if waiting
            .get(&self.key)
            .is_some_and(|n| Arc::strong_count(n) == 2)
        {
            waiting.remove(&self.key);
        }
    }
}

impl Completions {
    /// Registers interest in a task; check the store after calling this.
    pub fn watch(&self, tenant: &TenantId, task_id: TaskId) -> Watch<'_> {
        let key = (tenant.clone(), task_id);
        let notify = self.lock().entry(key.clone()).or_default().clone();
        Watch {
            completions: self,
            key,
            notify,
        }
    }

    pub fn finished(&self, tenant: &TenantId, task_id: TaskId) {
        if let Some(notify) = self.lock().get(&(tenant.clone(), task_id)) {
            notify.notify_waiters();
        }
    }

    /// Tasks someone is waiting for.
    pub fn watched(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropped_watches_leave_nothing_behind() {
        let completions = Completions::default();
        let tenant = TenantId::parse("t").unwrap();
        let task = TaskId::new();
        {
            let first = completions.watch(&tenant, task);
            let second = completions.watch(&tenant, task);
            assert_eq!(completions.watched(), 1);
            drop(first);
            assert_eq!(completions.watched(), 1, "the second waiter still waits");
            drop(second);
        }
        assert_eq!(completions.watched(), 0);
        // Ten thousand waits abandoned mid-wait, as when clients go away.
        let waits: Vec<_> = (0..10_000)
            .map(|_| {
                let task = TaskId::new();
                let completions = &completions;
                let tenant = &tenant;
                async move {
                    let watch = completions.watch(tenant, task);
                    watch.notify().notified().await;
                }
            })
            .map(Box::pin)
            .collect();
        for mut wait in waits {
            // Polled once (registered, waiting), then dropped.
            let _ = futures::poll!(wait.as_mut());
        }
        assert_eq!(completions.watched(), 0);
    }
}
