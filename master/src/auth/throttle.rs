//! Login throttling: a rate limit per client address and per account
//! (GCRA, from `governor`), and a lockout after repeated failures.
//!
//! State is per master process: with several masters an attacker gets each
//! master's allowance, which the per-address limit at nginx can cap.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// Login attempts per minute from one client address (also the burst).
    pub per_address_per_minute: u32,
    /// Login attempts per minute for one account (also the burst).
    pub per_account_per_minute: u32,
    /// Failures within `lockout_window` that lock the account.
    pub lockout_failures: u32,
    pub lockout_window: Duration,
    pub lockout_duration: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            per_address_per_minute: 30,
            per_account_per_minute: 20,
            lockout_failures: 10,
            lockout_window: Duration::from_secs(15 * 60),
            lockout_duration: Duration::from_secs(15 * 60),
        }
    }
}

/// Why a login attempt may not proceed, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    RateLimited { retry_after: Duration },
    LockedOut { retry_after: Duration },
}

#[derive(Debug, Default)]
struct Failures {
    /// Times of recent failures, oldest first.
    recent: std::collections::VecDeque<Instant>,
    locked_until: Option<Instant>,
}

pub struct Throttle {
    config: ThrottleConfig,
    by_address: DefaultKeyedRateLimiter<IpAddr>,
    by_account: DefaultKeyedRateLimiter<String>,
    /// Failure history per (lower-cased) account name, bounded in size and
    /// forgotten after the lockout window.
    failures: moka::sync::Cache<String, Arc<Mutex<Failures>>>,
}

fn quota(per_minute: u32) -> Quota {
    let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(n).allow_burst(n)
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Throttle {
        let idle = config.lockout_window.max(config.lockout_duration);
        Throttle {
            by_address: RateLimiter::keyed(quota(config.per_address_per_minute)),
            by_account: RateLimiter::keyed(quota(config.per_account_per_minute)),
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(idle)
                .build(),
            config,
        }
    }

    /// Admits or refuses one login attempt; an admitted attempt uses up one
    /// unit of both rate limits.
    pub fn admit(&self, address: IpAddr, account: &str) -> Result<(), Refusal> {
        let account = account.to_ascii_lowercase();
        if let Some(failures) = self.failures.get(&account) {
            let failures = failures.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(until) = failures.locked_until {
                let now = Instant::now();
                if until > now {
                    return Err(Refusal::LockedOut {
                        retry_after: until - now,
                    });
                }
            }
        }
        let clock = DefaultClock::default();
        if let Err(not_until) = self.by_address.check_key(&address_key(address)) {
            return Err(Refusal::RateLimited {
                retry_after: not_until.wait_time_from(clock.now()),
            });
        }
        if let Err(not_until) = self.by_account.check_key(&account) {
            return Err(Refusal::RateLimited {
                retry_after: not_until.wait_time_from(clock.now()),
            });
        }
        Ok(())
    }

    /// Records a failed attempt; returns `true` when it locked the account.
    pub fn record_failure(&self, account: &str) -> bool {
        let account = account.to_ascii_lowercase();
        let entry = self.failures.get_with(account, Default::default);
        let mut failures = entry.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while failures
            .recent
            .front()
            .is_some_and(|&at| now.duration_since(at) > self.config.lockout_window)
        {
            failures.recent.pop_front();
        }
        failures.recent.push_back(now);
        if failures.recent.len() >= self.config.lockout_failures as usize {
            failures.recent.clear();
            failures.locked_until = Some(now + self.config.lockout_duration);
            return true;
        }
        false
    }

    /// A successful login forgets the account's failures.
    pub fn record_success(&self, account: &str) {
        self.failures.invalidate(&account.to_ascii_lowercase());
    }

    /// Drops rate-limit state of keys that are back to a full allowance.
    pub fn shrink(&self) {
        self.by_address.retain_recent();
        self.by_account.retain_recent();
        self.by_address.shrink_to_fit();
        self.by_account.shrink_to_fit();
    }
}

/// The unit an address is limited as: an IPv4 address, or the /64 of an
/// IPv6 address (one host usually holds a whole /64, and could otherwise
/// rotate through it).
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !(u128::from(u64::MAX));
                IpAddr::V6(bits.into())
            }
        },
        v4 => v4,
    }
}

/// Seconds for a `Retry-After` header: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn localhost() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    #[test]
    fn the_address_limit_refuses_beyond_the_burst() {
        let throttle = Throttle::new(ThrottleConfig {
            per_address_per_minute: 3,
            per_account_per_minute: 100,
            ..Default::default()
        });
        for n in 0..3 {
            assert_eq!(throttle.admit(localhost(), &format!("user{n}")), Ok(()));
        }
        match throttle.admit(localhost(), "user9") {
            Err(Refusal::RateLimited { retry_after }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(20))
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        // Another address is unaffected.
        assert_eq!(throttle.admit(IpAddr::from([10, 0, 0, 1]), "user9"), Ok(()));
    }

    #[test]
    fn an_ipv6_slash_64_is_one_address() {
        let throttle = Throttle::new(ThrottleConfig {
            per_address_per_minute: 2,
            per_account_per_minute: 100,
            ..Default::default()
        });
        for (n, address) in ["2001:db8::1", "2001:db8::ffff:2", "2001:db8::3"]
            .iter()
            .enumerate()
        {
            let outcome = throttle.admit(address.parse().expect("ip"), "acct");
            assert_eq!(outcome.is_ok(), n < 2, "{address}");
        }
        assert!(throttle
            .admit("2001:db8:0:1::1".parse().expect("ip"), "acct")
            .is_ok());
        assert_eq!(
            address_key("::ffff:192.0.2.7".parse().expect("ip")),
            "192.0.2.7".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn repeated_failures_lock_the_account_whatever_its_case() {
        let throttle = Throttle::new(ThrottleConfig {
            per_address_per_minute: 1000,
            per_account_per_minute: 1000,
            lockout_failures: 3,
            ..Default::default()
        });
        assert!(!throttle.record_failure("Frank"));
        assert!(!throttle.record_failure("frank"));
        assert!(throttle.record_failure("FRANK"));
        match throttle.admit(localhost(), "frank") {
            Err(Refusal::LockedOut { retry_after }) => {
                assert!(retry_after > Duration::from_secs(14 * 60))
            }
            other => panic!("expected a lockout, got {other:?}"),
        }
        assert_eq!(throttle.admit(localhost(), "grace"), Ok(()));
    }

    #[test]
    fn success_forgets_failures() {
        let throttle = Throttle::new(ThrottleConfig {
            lockout_failures: 2,
            ..Default::default()
        });
        assert!(!throttle.record_failure("heidi"));
        throttle.record_success("heidi");
        assert!(!throttle.record_failure("heidi"));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
