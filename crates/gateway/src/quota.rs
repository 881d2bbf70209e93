//! Per-API-key limits: how many jobs one key may have running at once and how many requests
//! it may send per minute. Past either, `429 Too Many Requests` with `Retry-After`, naming
//! the key by its fingerprint (never the key itself, which is a secret).
//!
//! A job holds its key's [`Admission`] until it ends (a synchronous request until it is
//! answered, an async one until its task finishes), so a key cannot get around the limit
//! with `Prefer: respond-async`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The window requests per minute are counted over.
const WINDOW: Duration = Duration::from_secs(60);

/// The limits every key gets; 0 is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyLimits {
    pub max_running_jobs: u32,
    pub requests_per_minute: u32,
}

/// The use each key is making now.
pub(crate) struct Quotas {
    limits: KeyLimits,
    keys: Mutex<HashMap<String, KeyUse>>,
}

#[derive(Default)]
struct KeyUse {
    running: u32,
    /// When the requests of the last minute came (at most `requests_per_minute` of them).
    recent: VecDeque<Instant>,
}

/// A key's place while its job runs; dropping it frees the place.
pub(crate) struct Admission {
    quotas: Arc<Quotas>,
    key: String,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut keys = self.quotas.lock();
        if let Some(use_) = keys.get_mut(&self.key) {
            use_.running = use_.running.saturating_sub(1);
        }
    }
}

/// Why a key's request was refused, and when to try again.
#[derive(Debug, PartialEq)]
pub(crate) struct OverLimit {
    pub message: String,
    pub retry_after_secs: u64,
}

impl Quotas {
    pub fn new(limits: KeyLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            keys: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, KeyUse>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a request of `key` and takes a running-job place for it, or says which limit
    /// it is over. Only accepted keys get here, so the map holds at most one entry per
    /// configured key.
    pub fn admit(self: &Arc<Self>, key: &str, now: Instant) -> Result<Admission, OverLimit> {
        let mut keys = self.lock();
        let use_ = keys.entry(key.to_owned()).or_default();
        while use_
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            use_.recent.pop_front();
        }
        let per_minute = self.limits.requests_per_minute;
        if per_minute > 0 && use_.recent.len() >= per_minute as usize {
            let oldest = use_.recent.front().copied().unwrap_or(now);
            let wait = WINDOW.saturating_sub(now.duration_since(oldest));
            return Err(OverLimit {
                message: format!(
                    "API key {}: more than {per_minute} requests in a minute",
                    fingerprint(key)
                ),
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            });
        }
        let running = self.limits.max_running_jobs;
        if running > 0 && use_.running >= running {
            return Err(OverLimit {
                message: format!(
                    "API key {}: {running} jobs already running, the most it may have at once",
                    fingerprint(key)
                ),
                // A place frees when one of its jobs ends; there is no telling when.
                retry_after_secs: 1,
            });
        }
        use_.recent.push_back(now);
        use_.running += 1;
        Ok(Admission {
            quotas: self.clone(),
            key: key.to_owned(),
        })
    }
}

/// How logs, ledgers and errors name a key: `key-` and the first 8 hex digits of its
/// SHA-256, enough to tell a deployment's keys apart, useless for guessing one.
pub fn fingerprint(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("key-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_per_minute_are_counted_over_a_sliding_minute() {
        let q = Quotas::new(KeyLimits {
            max_running_jobs: 0,
            requests_per_minute: 2,
        });
        let t0 = Instant::now();
        let a = q.admit("k", t0).unwrap();
        let b = q.admit("k", t0 + Duration::from_secs(10)).unwrap();
        drop((a, b));
        let refused = q.admit("k", t0 + Duration::from_secs(20)).err().unwrap();
        assert_eq!(
            refused.retry_after_secs, 40,
            "the first leaves the window at 60 s"
        );
        assert!(refused.message.contains(&fingerprint("k")));
        assert!(!refused.message.contains("\"k\""));
        // Another key has its own minute.
        assert!(q.admit("other", t0 + Duration::from_secs(20)).is_ok());
        assert!(q.admit("k", t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn running_jobs_hold_their_place_until_dropped() {
        let q = Quotas::new(KeyLimits {
            max_running_jobs: 1,
            requests_per_minute: 0,
        });
        let now = Instant::now();
        let running = q.admit("k", now).unwrap();
        let refused = q.admit("k", now).err().unwrap();
        assert!(
            refused.message.contains("1 jobs already running"),
            "{refused:?}"
        );
        drop(running);
        assert!(q.admit("k", now).is_ok());
    }

    #[test]
    fn fingerprints_are_short_stable_and_not_the_key() {
        assert_eq!(fingerprint("secret"), fingerprint("secret"));
        assert_ne!(fingerprint("secret"), fingerprint("secret2"));
        assert_eq!(fingerprint("secret").len(), "key-".len() + 8);
        assert!(!fingerprint("secret").contains("secret"));
    }
}
