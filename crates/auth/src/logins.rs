//! Remembering verified logins, and slowing down password guessing.
//!
//! Registry clients send credentials with every request and bcrypt costs ~70 ms, so a verified
//! login is remembered — as a keyed fingerprint, never the password — until the user data
//! changes or the entry ages out. Failed logins are counted per user and per client address;
//! past a limit, further attempts are refused for the rest of the window.

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

/// Counts failed logins per key (a user name, a client address).
pub struct FailedLogins {
    limit: u32,
    window: Duration,
    entries: Mutex<HashMap<String, (u32, Instant)>>,
}

impl FailedLogins {
    pub fn new(limit: u32, window: Duration) -> Self {
        FailedLogins {
            limit,
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Is any of `keys` over the limit within the current window?
    pub fn blocked(&self, keys: &[&str]) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter().any(|k| {
            entries
                .get(*k)
                .is_some_and(|(n, since)| *n >= self.limit && since.elapsed() < self.window)
        })
    }

    pub fn record_failure(&self, keys: &[&str]) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, since)| since.elapsed() < self.window);
        }
        for k in keys {
            let e = entries
                .entry((*k).to_owned())
                .or_insert((0, Instant::now()));
            if e.1.elapsed() >= self.window {
                *e = (0, Instant::now());
            }
            e.0 += 1;
        }
    }

    pub fn record_success(&self, key: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
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

    #[test]
    fn failures_block_after_the_limit() {
        let f = FailedLogins::new(3, Duration::from_secs(60));
        for _ in 0..2 {
            f.record_failure(&["user:bob", "addr:1.2.3.4"]);
        }
        assert!(!f.blocked(&["user:bob"]));
        f.record_failure(&["user:bob", "addr:1.2.3.4"]);
        assert!(f.blocked(&["user:bob"]));
        assert!(
            f.blocked(&["user:eve", "addr:1.2.3.4"]),
            "the address is blocked too"
        );
        f.record_success("user:bob");
        assert!(!f.blocked(&["user:bob"]));
        let quick = FailedLogins::new(1, Duration::from_millis(1));
        quick.record_failure(&["k"]);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!quick.blocked(&["k"]), "the window expires");
    }
}
