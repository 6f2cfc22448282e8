//! Requeue after a failed reconcile: 5 s, doubling per consecutive failure of the same object up to 5 minutes,
//! back to the start once it reconciles. A broken object (an API server refusing its sessions, a webhook down)
//! is retried at once-in-a-while, not every 5 s forever; a transient error still clears in seconds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const FIRST: Duration = Duration::from_secs(5);
const MOST: Duration = Duration::from_secs(300);

/// The wait after `failures` consecutive failures (1 for the first).
pub fn after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST * 2u32.pow(doublings)).min(MOST)
}

/// Consecutive failures by object (its uid).
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Counts one more failure of `key` and says how long to wait before the next try.
    pub fn failed(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_string()).or_default();
        *n = n.saturating_add(1);
        after(*n)
    }

    /// `key` reconciled: its next failure starts again from the first wait.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_five_minutes_and_start_again_after_a_success() {
        let waits: Vec<u64> = (1..=9).map(|n| after(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(after(u32::MAX), MOST);
        let b = Backoff::default();
        assert_eq!(b.failed("a"), Duration::from_secs(5));
        assert_eq!(b.failed("a"), Duration::from_secs(10));
        assert_eq!(b.failed("other"), Duration::from_secs(5));
        b.succeeded("a");
        assert_eq!(b.failed("a"), Duration::from_secs(5));
    }
}
