//! Remembering verified logins, and slowing down password guessing.
//!
//! Registry clients send credentials with every request and bcrypt costs ~70 ms, so a verified
//! login is remembered — as a keyed fingerprint, never the password — until the user data
//! changes or the entry ages out. Failed logins are counted per (user, client address) and per
//! client address — never per user alone, so a stranger cannot lock a real user out; past a
//! limit, further attempts from there are refused for the rest of the window. Each attempt is
//! reserved before its password is checked, so parallel guesses count as they start.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::secret::constant_time_eq;

/// How long a verified login is trusted without running bcrypt again.
pub const LOGIN_CACHE_TTL: Duration = Duration::from_secs(300);
/// Entries kept at most; beyond, the cache starts over (it only saves work).
const MAX_ENTRIES: usize = 100_000;

struct CachedLogin {
    fingerprint: [u8; 32],
    generation: i64,
    verified_at: Instant,
}

pub struct LoginCache {
    /// Per-process key, so fingerprints are useless outside this process.
    key: [u8; 32],
    entries: Mutex<HashMap<String, CachedLogin>>,
}

impl Default for LoginCache {
    fn default() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        LoginCache {
            key,
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl LoginCache {
    pub fn fingerprint(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Was exactly this login verified recently, against user data of `generation`?
    pub fn hit(&self, user: &str, fingerprint: &[u8; 32], generation: i64) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(user).is_some_and(|c| {
            c.generation == generation
                && c.verified_at.elapsed() < LOGIN_CACHE_TTL
                && constant_time_eq(&c.fingerprint, fingerprint)
        })
    }

    pub fn remember(&self, user: &str, fingerprint: [u8; 32], generation: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            user.to_owned(),
            CachedLogin {
                fingerprint,
                generation,
                verified_at: Instant::now(),
            },
        );
    }
}

/// How many failed logins are allowed, and for how long a limit holds once reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failures allowed per (user, client address): a guesser is stopped without locking the
    /// real user out from anywhere else.
    pub per_user_and_address: u32,
    /// Failures allowed per client address, whatever the user names (guessing many users).
    pub per_address: u32,
    pub window: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            per_user_and_address: 10,
            per_address: 30,
            window: Duration::from_secs(300),
        }
    }
}

/// Failures and attempts in progress for one key (a (user, address) pair, or an address).
#[derive(Default)]
struct Counter {
    failures: u32,
    since: Option<Instant>,
    /// Attempts being verified right now, by password fingerprint: the same password sent on
    /// many parallel requests (a client pushing layers at once) is one attempt, not many.
    in_flight: HashMap<[u8; 32], u32>,
}

impl Counter {
    fn expire(&mut self, window: Duration) {
        if self.since.is_some_and(|s| s.elapsed() >= window) {
            self.failures = 0;
            self.since = None;
        }
    }

    /// What counts against the limit for an attempt with `fingerprint`: past failures plus the
    /// other passwords being checked at this moment.
    fn load(&self, fingerprint: &[u8; 32]) -> u32 {
        let others = self.in_flight.keys().filter(|f| *f != fingerprint).count();
        self.failures + others as u32
    }
}

/// Counts failed logins per (user, address) and per address, and reserves an attempt before
/// its password is checked, so that parallel guesses cannot all be checked before the first
/// failure is counted.
pub struct FailedLogins {
    limits: LoginLimits,
    key: [u8; 32],
    counters: Mutex<HashMap<String, Counter>>,
}

/// A login attempt that was allowed to be checked. Report how it went with [`Attempt::failed`]
/// or [`Attempt::succeeded`]; dropped unreported, it only frees its reservation.
pub struct Attempt<'a> {
    logins: &'a FailedLogins,
    keys: [String; 2],
    fingerprint: [u8; 32],
    /// `Some(true)` failed, `Some(false)` succeeded, `None` not reported.
    outcome: Option<bool>,
}

impl FailedLogins {
    pub fn new(limits: LoginLimits) -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        FailedLogins {
            limits,
            key,
            counters: Mutex::new(HashMap::new()),
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, HashMap<String, Counter>> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves an attempt by `user` from `address` with `password`, or `None` when a limit is
    /// reached (the attempt must then be refused without checking the password).
    pub fn begin(&self, user: &str, address: &str, password: &str) -> Option<Attempt<'_>> {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        let fingerprint: [u8; 32] = h.finalize().into();
        let address = address_group(address);
        let keys = [format!("pair:{user}\0{address}"), format!("addr:{address}")];
        let limits = [self.limits.per_user_and_address, self.limits.per_address];
        let mut counters = self.counters();
        if counters.len() >= MAX_ENTRIES {
            let window = self.limits.window;
            counters.retain(|_, c| {
                c.expire(window);
                c.failures > 0 || !c.in_flight.is_empty()
            });
        }
        for (key, limit) in keys.iter().zip(limits) {
            if let Some(c) = counters.get_mut(key) {
                c.expire(self.limits.window);
                if c.load(&fingerprint) >= limit {
                    return None;
                }
            }
        }
        for key in &keys {
            let c = counters.entry(key.clone()).or_default();
            *c.in_flight.entry(fingerprint).or_default() += 1;
        }
        drop(counters);
        Some(Attempt {
            logins: self,
            keys,
            fingerprint,
            outcome: None,
        })
    }

    /// Frees an attempt's reservation and, when its outcome is known, counts it: a failure
    /// against both keys, a success by clearing its own (user, address) count only.
    fn settle(&self, attempt: &Attempt<'_>, failed: Option<bool>) {
        let mut counters = self.counters();
        for (i, key) in attempt.keys.iter().enumerate() {
            let Some(c) = counters.get_mut(key) else {
                continue;
            };
            if let Some(n) = c.in_flight.get_mut(&attempt.fingerprint) {
                *n -= 1;
                if *n == 0 {
                    c.in_flight.remove(&attempt.fingerprint);
                }
            }
            match failed {
                Some(true) => {
                    c.expire(self.limits.window);
                    c.failures += 1;
                    c.since.get_or_insert_with(Instant::now);
                }
                Some(false) if i == 0 => {
                    c.failures = 0;
                    c.since = None;
                }
                _ => {}
            }
            if c.failures == 0 && c.in_flight.is_empty() {
                counters.remove(key);
            }
        }
    }
}

/// The unit a client address is counted in: the address itself for IPv4, its /64 network for
/// IPv6, since one IPv6 host usually holds a whole /64 and could otherwise rotate addresses.
fn address_group(address: &str) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Ok(std::net::IpAddr::V6(v6)) => v6
            .to_ipv4_mapped()
            .map(|v4| v4.to_string())
            .unwrap_or_default(),
        _ => address.to_owned(),
    }
}

impl Attempt<'_> {
    pub fn failed(mut self) {
        self.outcome = Some(true);
    }

    pub fn succeeded(mut self) {
        self.outcome = Some(false);
    }
}

impl Drop for Attempt<'_> {
    /// Reports the outcome; an attempt dropped unreported (the request was cancelled
    /// mid-check) only frees its reservation.
    fn drop(&mut self) {
        self.logins.settle(self, self.outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_keyed_by_password_and_generation() {
        let c = LoginCache::default();
        let fp = c.fingerprint("u", "pw");
        assert!(!c.hit("u", &fp, 1));
        c.remember("u", fp, 1);
        assert!(c.hit("u", &fp, 1));
        assert!(!c.hit("u", &c.fingerprint("u", "other"), 1));
        assert!(!c.hit("u", &fp, 2), "a change to the user data invalidates");
    }

    fn limits(pair: u32, address: u32) -> LoginLimits {
        LoginLimits {
            per_user_and_address: pair,
            per_address: address,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn failures_block_the_pair_not_the_user_elsewhere() {
        let f = FailedLogins::new(limits(3, 100));
        for i in 0..3 {
            f.begin("bob", "1.2.3.4", &format!("guess{i}"))
                .unwrap()
                .failed();
        }
        assert!(f.begin("bob", "1.2.3.4", "right").is_none());
        assert!(
            f.begin("bob", "5.6.7.8", "right").is_some(),
            "another address is not locked out"
        );
        assert!(
            f.begin("eve", "1.2.3.4", "x").is_some(),
            "per pair, not per address"
        );
        let quick = FailedLogins::new(LoginLimits {
            window: Duration::from_millis(1),
            ..limits(1, 100)
        });
        quick.begin("u", "a", "x").unwrap().failed();
        std::thread::sleep(Duration::from_millis(5));
        assert!(quick.begin("u", "a", "x").is_some(), "the window expires");
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_network() {
        let f = FailedLogins::new(limits(2, 100));
        f.begin("bob", "2001:db8:1:2::1", "x").unwrap().failed();
        f.begin("bob", "2001:db8:1:2:ffff::9", "y")
            .unwrap()
            .failed();
        assert!(f.begin("bob", "2001:db8:1:2::77", "z").is_none());
        assert!(f.begin("bob", "2001:db8:1:3::1", "z").is_some());
    }

    #[test]
    fn an_address_guessing_many_users_is_blocked() {
        let f = FailedLogins::new(limits(10, 3));
        for user in ["a", "b", "c"] {
            f.begin(user, "9.9.9.9", "x").unwrap().failed();
        }
        assert!(f.begin("d", "9.9.9.9", "x").is_none());
        assert!(f.begin("d", "8.8.8.8", "x").is_some());
    }

    #[test]
    fn parallel_guesses_are_reserved_before_they_are_checked() {
        let f = FailedLogins::new(limits(3, 100));
        let held: Vec<_> = (0..3)
            .map(|i| f.begin("bob", "1.1.1.1", &format!("g{i}")).unwrap())
            .collect();
        assert!(
            f.begin("bob", "1.1.1.1", "g9").is_none(),
            "three guesses in flight use up the limit"
        );
        // The same password on many parallel requests is one attempt.
        assert!(f.begin("bob", "1.1.1.1", "g0").is_some());
        drop(held);
        assert!(
            f.begin("bob", "1.1.1.1", "g9").is_some(),
            "dropped attempts free their place"
        );
        let ok = f.begin("bob", "1.1.1.1", "right").unwrap();
        f.begin("bob", "1.1.1.1", "w").unwrap().failed();
        ok.succeeded();
        assert!(
            f.begin("bob", "1.1.1.1", "again").is_some(),
            "a success clears the pair"
        );
    }
}
