//! Per-client-address limits on login and register, per-user limits on everything else
//! (GCRA through governor). Keyed state is pruned on an interval so that a stream of
//! new addresses cannot grow it without bound.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Instant;

use governor::clock::DefaultClock;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::RateLimitSettings;
use crate::error::ApiError;
use crate::metrics::RATE_LIMITED_TOTAL;
use crate::model::UserId;

type KeyedLimiter<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

pub struct RateLimits {
    auth: Option<KeyedLimiter<IpAddr>>,
    api: Option<KeyedLimiter<UserId>>,
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings) -> Self {
        if !settings.enabled {
            return Self { auth: None, api: None };
        }
        // `Settings::validate` guarantees non-zero rates while enabled.
        let non_zero = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let auth = Quota::per_minute(non_zero(settings.auth_per_minute));
        let api = Quota::per_second(non_zero(settings.api_per_second)).allow_burst(non_zero(settings.api_burst));
        Self {
            auth: Some(RateLimiter::keyed(auth)),
            api: Some(RateLimiter::keyed(api)),
        }
    }

    pub fn check_auth(&self, client: IpAddr) -> Result<(), ApiError> {
        check(self.auth.as_ref(), &client, "auth")
    }

    pub fn check_api(&self, user: UserId) -> Result<(), ApiError> {
        check(self.api.as_ref(), &user, "api")
    }

    /// Drops the state of keys that are back to a full bucket.
    pub fn prune(&self) {
        if let Some(limiter) = &self.auth {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.api {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys currently tracked (auth, api): what pruning keeps small.
    pub fn tracked_keys(&self) -> (usize, usize) {
        (
            self.auth.as_ref().map_or(0, |l| l.len()),
            self.api.as_ref().map_or(0, |l| l.len()),
        )
    }
}

fn check<K: Hash + Eq + Clone>(limiter: Option<&KeyedLimiter<K>>, key: &K, name: &'static str) -> Result<(), ApiError> {
    let Some(limiter) = limiter else { return Ok(()) };
    limiter.check_key(key).map_err(|not_until| {
        metrics::counter!(RATE_LIMITED_TOTAL, "limit" => name).increment(1);
        ApiError::RateLimited(not_until.wait_time_from(Instant::now()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(auth_per_minute: u32, api_per_second: u32, api_burst: u32) -> RateLimitSettings {
        RateLimitSettings {
            auth_per_minute,
            api_per_second,
            api_burst,
            ..RateLimitSettings::default()
        }
    }

    #[test]
    fn burst_then_refusal_with_a_wait() {
        let limits = RateLimits::new(&settings(3, 1, 2));
        let ip = IpAddr::from([127, 0, 0, 1]);
        for _ in 0..3 {
            limits.check_auth(ip).unwrap();
        }
        match limits.check_auth(ip) {
            Err(ApiError::RateLimited(wait)) => assert!(wait.as_secs_f64() > 1.0, "{wait:?}"),
            other => panic!("expected a rate limit, got {other:?}"),
        }
        // Another address has its own budget.
        limits.check_auth(IpAddr::from([127, 0, 0, 2])).unwrap();
        limits.check_api(1).unwrap();
        limits.check_api(1).unwrap();
        assert!(limits.check_api(1).is_err());
        limits.check_api(2).unwrap();
    }

    #[test]
    fn disabled_limits_never_refuse() {
        let limits = RateLimits::new(&RateLimitSettings {
            enabled: false,
            ..settings(1, 1, 1)
        });
        for _ in 0..100 {
            limits.check_api(1).unwrap();
        }
    }

    #[test]
    fn pruning_forgets_idle_keys() {
        let limits = RateLimits::new(&settings(60_000, 1000, 1));
        for n in 0..50u8 {
            limits.check_auth(IpAddr::from([127, 0, 1, n])).unwrap();
        }
        assert_eq!(limits.tracked_keys().0, 50);
        // At 1,000 per second one request is forgotten within a millisecond.
        std::thread::sleep(std::time::Duration::from_millis(5));
        limits.check_api(7).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        limits.prune();
        assert_eq!(limits.tracked_keys(), (0, 0));
    }
}
