//! Recording refusals in the audit log, and reading it.
//!
//! A refusal (401/403, a rate limit, a blocked input) writes nothing but its
//! entry, so its entry is recorded on its own. Refusals can come in floods
//! (a client retrying a bad token in a loop), so each process records at
//! most `REFUSALS_PER_SECOND` of one kind into one log a second, and the
//! next entry it records says how many it left out.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::domain::{Action, AuditEntry, AuditQuery, Owner};
use crate::ports::{Page, StoreError};

use super::Services;

/// Refusals of one kind recorded per log, per process, per second.
pub const REFUSALS_PER_SECOND: u32 = 10;

/// Logs and kinds tracked before the oldest windows are dropped.
const MAX_WINDOWS: usize = 10_000;

#[derive(Default)]
struct Window {
    second: i64,
    recorded: u32,
    suppressed: u64,
}

/// Counts refusals per log and kind in one-second windows.
#[derive(Default)]
pub struct RefusalSampler {
    windows: Mutex<HashMap<(Owner, Action), Window>>,
}

impl RefusalSampler {
    /// `entry` to record, saying how many before it were left out; or none
    /// when this second's share is used up (it is counted instead).
    fn admit(&self, entry: AuditEntry) -> Option<AuditEntry> {
        let second = entry.at.timestamp();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= MAX_WINDOWS {
            windows.retain(|_, w| w.second >= second - 1);
        }
        let window = windows.entry((entry.log(), entry.action)).or_default();
        if window.second != second {
            window.second = second;
            window.recorded = 0;
        }
        if window.recorded >= REFUSALS_PER_SECOND {
            window.suppressed += 1;
            return None;
        }
        window.recorded += 1;
        Some(entry.with_suppressed(std::mem::take(&mut window.suppressed)))
    }
}

/// Records a refusal's entry, sampled as above. A failure to record is
/// logged, never turned into the request's failure: the refusal stands.
pub async fn record_refusal(svc: &Services, entry: AuditEntry) {
    let Some(entry) = svc.refusals.admit(entry) else {
        return;
    };
    if let Err(e) = svc.audit.record(&entry).await {
        tracing::error!(error = %e, action = entry.action.name(), "audit entry not recorded");
    }
}

/// One page of `log`'s entries.
pub async fn list(
    svc: &Services,
    log: &Owner,
    query: &AuditQuery,
) -> Result<Page<AuditEntry>, StoreError> {
    svc.audit.list(log, query).await
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone, Utc};

    use super::*;

    #[test]
    fn a_flood_of_refusals_is_sampled_and_the_next_entry_counts_what_was_left_out() {
        let sampler = RefusalSampler::default();
        let start = Utc.timestamp_opt(1_790_000_000, 0).unwrap();
        let denied =
            |at| AuditEntry::access_denied(None, "GET /v1/tasks", "token_expired", None, at);
        let recorded: Vec<AuditEntry> = (0..25)
            .filter_map(|_| sampler.admit(denied(start)))
            .collect();
        assert_eq!(recorded.len(), REFUSALS_PER_SECOND as usize);
        assert!(recorded.iter().all(|e| e.detail.suppressed.is_none()));
        let next = sampler.admit(denied(start + Duration::seconds(1))).unwrap();
        assert_eq!(next.detail.suppressed, Some(15));
        let after = sampler.admit(denied(start + Duration::seconds(1))).unwrap();
        assert_eq!(after.detail.suppressed, None);
        // Another kind in the same log has its own share.
        let p = crate::domain::Principal {
            sub: "s".into(),
            tenant: crate::domain::TenantId::parse("t").unwrap(),
            roles: vec![],
        };
        let limited = AuditEntry::rate_limited(&p, &crate::domain::Origin::default(), "rpm", start);
        assert!(sampler.admit(limited).is_some());
    }
}
