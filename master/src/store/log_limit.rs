//! Log lines about the database's outages, at most one per kind every few
//! seconds: while PostgreSQL is down, every request that needs it and every
//! round of the background loop fails the same way, and a line for each
//! would flood the log (and the disk under it) with nothing new. The line
//! that does go out says how many like it were left out.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One line per kind per `every`.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    /// Per kind: when its last line went out, and how many were left out
    /// since. A handful of kinds, so a list.
    kinds: Mutex<Vec<(&'static str, Instant, u64)>>,
}

/// The limit every database outage line goes through (see
/// [`LogLimit::admit`]): one line per kind every 10 seconds.
pub static OUTAGE_LOG: LogLimit = LogLimit::new(Duration::from_secs(10));

impl LogLimit {
    pub const fn new(every: Duration) -> LogLimit {
        LogLimit {
            every,
            kinds: Mutex::new(Vec::new()),
        }
    }

    /// `Some(left_out)` when a line of `kind` may go out now (`left_out`:
    /// the lines of that kind not logged since the last one); `None` when
    /// it must be left out (and is counted).
    pub fn admit(&self, kind: &'static str) -> Option<u64> {
        self.admit_at(kind, Instant::now())
    }

    fn admit_at(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        match kinds.iter_mut().find(|(k, _, _)| *k == kind) {
            None => {
                kinds.push((kind, now, 0));
                Some(0)
            }
            Some((_, last, left_out)) => {
                if now.saturating_duration_since(*last) >= self.every {
                    *last = now;
                    Some(std::mem::take(left_out))
                } else {
                    *left_out += 1;
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_period_with_the_count_left_out() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(limit.admit_at("feed", start), Some(0));
        // Another kind has its own budget.
        assert_eq!(limit.admit_at("request", start), Some(0));
        for n in 1..40 {
            let at = start + Duration::from_millis(250 * n);
            assert_eq!(limit.admit_at("feed", at), None, "{n}");
        }
        assert_eq!(
            limit.admit_at("feed", start + Duration::from_secs(10)),
            Some(39)
        );
        assert_eq!(
            limit.admit_at("feed", start + Duration::from_secs(11)),
            None
        );
        assert_eq!(
            limit.admit_at("request", start + Duration::from_secs(30)),
            Some(0)
        );
    }
}
