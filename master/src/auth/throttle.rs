//! Login throttling and the audit log's rate limit.
//!
//! Logins: a rate limit per client address and a slower brake per account
//! (GCRA, from `governor`), and a lockout after repeated failures. The
//! lockout is keyed by (account, client address), so an attacker can only
//! lock themselves out: the account's owner, elsewhere, still logs in. The
//! per-account brake never locks (it only spaces attempts out), and an
//! address that logged in to the account recently is exempt from it, so no
//! one can aim it at a user who logs in from a known place.
//!
//! State is per master process: with several masters an attacker gets each
//! master's allowance, which the per-address limit at nginx can cap.
//! `warren user unlock` reaches every master through the revocation feed.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// Login attempts per minute from one client address (also the burst).
    pub per_address_per_minute: u32,
    /// Login attempts per minute for one account (also the burst), from
    /// addresses that have not logged in to it recently.
    pub per_account_per_minute: u32,
    /// Failures within `lockout_window` from one address that lock the
    /// account for that address.
    pub lockout_failures: u32,
    pub lockout_window: Duration,
    pub lockout_duration: Duration,
    /// How long a successful login exempts its address from the account's
    /// brake.
    pub known_address_ttl: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            per_address_per_minute: 30,
            per_account_per_minute: 20,
            lockout_failures: 10,
            lockout_window: Duration::from_secs(15 * 60),
            lockout_duration: Duration::from_secs(15 * 60),
            known_address_ttl: Duration::from_secs(30 * 24 * 3600),
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

/// A lower-cased account name and the unit its client address is limited
/// as (see [`address_key`]).
type Pair = (String, IpAddr);

pub struct Throttle {
    config: ThrottleConfig,
    by_address: DefaultKeyedRateLimiter<IpAddr>,
    by_account: DefaultKeyedRateLimiter<String>,
    /// Failure history per (account, address), bounded in size and
    /// forgotten after the lockout window.
    failures: moka::sync::Cache<Pair, Arc<Mutex<Failures>>>,
    /// (account, address) pairs that logged in successfully recently.
    known: moka::sync::Cache<Pair, ()>,
}

fn quota(per_minute: u32) -> Quota {
    let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(n).allow_burst(n)
}

fn pair(account: &str, address: IpAddr) -> Pair {
    (account.to_ascii_lowercase(), address_key(address))
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
            known: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(config.known_address_ttl)
                .build(),
            config,
        }
    }

    /// Admits or refuses one login attempt; an admitted attempt uses up one
    /// unit of the address's rate limit and, from an address not known to
    /// the account, one of the account's.
    pub fn admit(&self, address: IpAddr, account: &str) -> Result<(), Refusal> {
        let key = pair(account, address);
        if let Some(failures) = self.failures.get(&key) {
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
        self.admit_address(address)?;
        if !self.known.contains_key(&key) {
            if let Err(not_until) = self.by_account.check_key(&key.0) {
                return Err(Refusal::RateLimited {
                    retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                });
            }
        }
        Ok(())
    }

    /// Uses up one unit of the address's login rate limit: for requests to
    /// the login routes that are refused before any account is named (a
    /// cross-site login), so they cannot be sent without limit either.
    pub fn admit_address(&self, address: IpAddr) -> Result<(), Refusal> {
        self.by_address
            .check_key(&address_key(address))
            .map_err(|not_until| Refusal::RateLimited {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            })
    }

    /// Records a failed attempt; returns `true` when it locked the account
    /// for this address.
    pub fn record_failure(&self, account: &str, address: IpAddr) -> bool {
        let entry = self
            .failures
            .get_with(pair(account, address), Default::default);
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

    /// A successful login forgets this address's failures for the account
    /// and exempts the address from the account's brake for a while.
    pub fn record_success(&self, account: &str, address: IpAddr) {
        let key = pair(account, address);
        self.failures.invalidate(&key);
        self.known.insert(key, ());
    }

    /// Ends every lockout of `account` and forgets its failures (an
    /// operator's unlock); returns how many addresses were locked out.
    pub fn unlock(&self, account: &str) -> usize {
        let account = account.to_ascii_lowercase();
        let now = Instant::now();
        let mut unlocked = 0;
        for (key, entry) in self.failures.iter() {
            if key.0 != account {
                continue;
            }
            let mut failures = entry.lock().unwrap_or_else(|p| p.into_inner());
            if failures.locked_until.is_some_and(|until| until > now) {
                unlocked += 1;
            }
            *failures = Failures::default();
        }
        unlocked
    }

    /// Drops rate-limit state of keys that are back to a full allowance.
    pub fn shrink(&self) {
        self.by_address.retain_recent();
        self.by_account.retain_recent();
        self.by_address.shrink_to_fit();
        self.by_account.shrink_to_fit();
    }
}

/// How often one user may change what they hold in the accounts database
/// (API tokens created): a user under the token cap could otherwise create
/// and revoke in a loop, each revocation a row of the revocation feed.
#[derive(Debug)]
pub struct UserChangeLimiter {
    by_user: DefaultKeyedRateLimiter<String>,
}

impl UserChangeLimiter {
    pub fn new(per_minute: u32) -> UserChangeLimiter {
        UserChangeLimiter {
            by_user: RateLimiter::keyed(quota(per_minute)),
        }
    }

    /// `Err(wait)` when `user` is over the limit.
    pub fn admit(&self, user: &str) -> Result<(), Duration> {
        self.by_user
            .check_key(&user.to_string())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    pub fn shrink(&self) {
        self.by_user.retain_recent();
        self.by_user.shrink_to_fit();
    }
}

/// The audit log's rate limit: events caused by requests are stored at most
/// `per_minute` a minute (also the burst) per client address and per
/// authenticated user, so no one can fill the disk with audit rows.
pub struct AuditLimiter {
    by_address: DefaultKeyedRateLimiter<IpAddr>,
    by_user: DefaultKeyedRateLimiter<String>,
    /// All request-caused events together: ten times the per-key rate, so
    /// many addresses (an IPv6 block has billions) cannot add up to an
    /// unbounded write rate.
    overall: DefaultDirectRateLimiter,
    /// When a drop was last logged, and drops since then.
    reported: Mutex<(Option<Instant>, u64)>,
    report_interval: Duration,
}

impl AuditLimiter {
    pub fn new(per_minute: u32) -> AuditLimiter {
        AuditLimiter {
            by_address: RateLimiter::keyed(quota(per_minute)),
            by_user: RateLimiter::keyed(quota(per_minute)),
            overall: RateLimiter::direct(quota(per_minute.saturating_mul(10))),
            reported: Mutex::new((None, 0)),
            report_interval: Duration::from_secs(60),
        }
    }

    /// Whether an event by `user` (an authenticated user's id) from
    /// `address` may be stored; each uses up a unit of its limit.
    pub fn admit(&self, user: Option<&str>, address: Option<IpAddr>) -> bool {
        if let Some(address) = address {
            if self.by_address.check_key(&address_key(address)).is_err() {
                return false;
            }
        }
        if let Some(user) = user {
            if self.by_user.check_key(&user.to_string()).is_err() {
                return false;
            }
        }
        self.overall.check().is_ok()
    }

    /// Counts a dropped event; returns the number dropped since the last
    /// report when it is time to log one (at most once a minute).
    pub fn dropped(&self) -> Option<u64> {
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        reported.1 += 1;
        let now = Instant::now();
        if reported
            .0
            .is_some_and(|at| now.duration_since(at) < self.report_interval)
        {
            return None;
        }
        let count = reported.1;
        *reported = (Some(now), 0);
        Some(count)
    }

    pub fn shrink(&self) {
        self.by_address.retain_recent();
        self.by_user.retain_recent();
        self.by_address.shrink_to_fit();
        self.by_user.shrink_to_fit();
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
    fn repeated_failures_lock_the_account_for_that_address_only() {
        let throttle = Throttle::new(ThrottleConfig {
            per_address_per_minute: 1000,
            per_account_per_minute: 1000,
            lockout_failures: 3,
            ..Default::default()
        });
        assert!(!throttle.record_failure("Frank", localhost()));
        assert!(!throttle.record_failure("frank", localhost()));
        assert!(throttle.record_failure("FRANK", localhost()));
        match throttle.admit(localhost(), "frank") {
            Err(Refusal::LockedOut { retry_after }) => {
                assert!(retry_after > Duration::from_secs(14 * 60))
            }
            other => panic!("expected a lockout, got {other:?}"),
        }
        assert_eq!(throttle.admit(localhost(), "grace"), Ok(()));
        // The account's owner, from elsewhere, is not locked out.
        assert_eq!(throttle.admit(IpAddr::from([10, 0, 0, 1]), "frank"), Ok(()));
        // An unlock ends it.
        assert_eq!(throttle.unlock("FRANK"), 1);
        assert_eq!(throttle.admit(localhost(), "frank"), Ok(()));
        assert!(
            !throttle.record_failure("frank", localhost()),
            "failures forgotten"
        );
    }

    #[test]
    fn success_forgets_failures_and_exempts_the_address_from_the_account_brake() {
        let throttle = Throttle::new(ThrottleConfig {
            per_address_per_minute: 1000,
            per_account_per_minute: 2,
            lockout_failures: 2,
            ..Default::default()
        });
        let home = IpAddr::from([192, 0, 2, 1]);
        assert!(!throttle.record_failure("heidi", home));
        throttle.record_success("heidi", home);
        assert!(!throttle.record_failure("heidi", home));
        // Strangers use up the account's brake...
        for n in 0..2 {
            assert_eq!(throttle.admit(IpAddr::from([10, 0, 0, n]), "heidi"), Ok(()));
        }
        assert!(matches!(
            throttle.admit(IpAddr::from([10, 0, 0, 9]), "heidi"),
            Err(Refusal::RateLimited { .. })
        ));
        // ...which does not stop heidi at home.
        assert_eq!(throttle.admit(home, "heidi"), Ok(()));
        assert_eq!(throttle.admit(home, "HEIDI"), Ok(()));
    }

    #[test]
    fn the_audit_limit_applies_per_address_and_per_user() {
        let limiter = AuditLimiter::new(2);
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        assert!(limiter.admit(None, a));
        assert!(limiter.admit(None, a));
        assert!(!limiter.admit(None, a));
        assert!(limiter.admit(Some("u1"), b));
        assert!(limiter.admit(Some("u1"), Some(IpAddr::from([10, 0, 0, 3]))));
        assert!(!limiter.admit(Some("u1"), Some(IpAddr::from([10, 0, 0, 4]))));
        assert!(limiter.admit(None, None));
        // The first drop is reported, the next ones within a minute are not.
        assert_eq!(limiter.dropped(), Some(1));
        assert_eq!(limiter.dropped(), None);
        assert_eq!(limiter.dropped(), None);
    }

    #[test]
    fn changes_per_user_are_limited_one_user_at_a_time() {
        let limiter = UserChangeLimiter::new(3);
        assert!((0..3).all(|_| limiter.admit("alice").is_ok()));
        let wait = limiter.admit("alice").expect_err("over the limit");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(limiter.admit("bob").is_ok());
    }

    #[test]
    fn the_audit_limit_has_a_ceiling_over_all_addresses() {
        let limiter = AuditLimiter::new(2);
        let admitted = (0..100u8)
            .filter(|n| {
                let address = IpAddr::from([10, 0, 0, *n]);
                limiter.admit(None, Some(address))
            })
            .count();
        // Ten times the per-key rate (the burst), not two per address.
        assert_eq!(admitted, 20);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
