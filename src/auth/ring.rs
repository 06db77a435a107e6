//! The keys in force on this instance, and the check every protected
//! request passes: a known, unrevoked key, a role that may do what is
//! asked, a request within the key's rate and in-flight limits.
//!
//! The set is read from the key file and swapped whole when the file
//! changes (looked at every `auth.reload_ms`), so a request sees the old
//! set or the new one. A key's limiter survives a reload that leaves its
//! limits alone: rewriting the file for another key resets no one's budget.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use subtle::ConstantTimeEq;

use super::keys::{Key, KeyFile, KeyFileError, KeyRecord, Role};
use crate::config::AuthSettings;
use crate::domain::Account;

/// A key's limits as in force: what the key says, else the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    rate_per_sec: u32,
    burst: u32,
    max_in_flight: u32,
}

/// One key's budget: a rate limiter and its requests in flight.
struct Budget {
    limits: Limits,
    rate: Option<DefaultDirectRateLimiter>,
    in_flight: AtomicU32,
}

impl Budget {
    fn new(limits: Limits) -> Self {
        let rate = NonZeroU32::new(limits.rate_per_sec).map(|per_sec| {
            let burst = NonZeroU32::new(limits.burst).unwrap_or(per_sec);
            RateLimiter::direct(Quota::per_second(per_sec).allow_burst(burst))
        });
        Self {
            limits,
            rate,
            in_flight: AtomicU32::new(0),
        }
    }
}

struct Entry {
    record: KeyRecord,
    /// `None`: a record whose hash this oms cannot read (no key matches it).
    hash: Option<[u8; 32]>,
    budget: Arc<Budget>,
}

/// The set in force, and what the file looked like when it was read.
#[derive(Default)]
struct Live {
    by_id: HashMap<String, Entry>,
    /// The file's modification time and length when read (`None`: absent).
    seen: Option<(SystemTime, u64)>,
    loaded: bool,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this operation needs an API key: send `Authorization: Bearer <key>`")]
    Missing,
    #[error("the API key is not valid")]
    Unknown,
    #[error("API key {id} was revoked")]
    Revoked { id: String },
    #[error("API key {id} is a {role} key: it may read, not submit or cancel orders", role = role.as_str())]
    Forbidden { id: String, role: Role },
    #[error("API key {id} is over its rate of {per_sec} requests per second")]
    RateLimited {
        id: String,
        per_sec: u32,
        retry_after: Duration,
    },
    #[error("API key {id} has {max} requests in flight, its limit")]
    InFlight { id: String, max: u32 },
}

impl Denied {
    /// The metric label and problem type of the refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Unknown => "unknown",
            Denied::Revoked { .. } => "revoked",
            Denied::Forbidden { .. } => "forbidden",
            Denied::RateLimited { .. } => "rate_limited",
            Denied::InFlight { .. } => "in_flight",
        }
    }

    /// Whole seconds to wait before trying again (429 only).
    pub fn retry_after_secs(&self) -> Option<u32> {
        match self {
            Denied::RateLimited { retry_after, .. } => Some(
                u32::try_from(retry_after.as_millis().div_ceil(1000))
                    .unwrap_or(u32::MAX)
                    .max(1),
            ),
            Denied::InFlight { .. } => Some(1),
            _ => None,
        }
    }
}

/// Who is calling: the key's account and role, holding one in-flight slot
/// of the key until the request is answered.
pub struct Caller {
    pub key_id: String,
    pub account: Account,
    pub role: Role,
    budget: Arc<Budget>,
}

impl Drop for Caller {
    fn drop(&mut self) {
        self.budget.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("key_id", &self.key_id)
            .field("account", &self.account)
            .field("role", &self.role)
            .finish()
    }
}

/// The keys of this instance.
pub struct Keyring {
    file: KeyFile,
    defaults: Limits,
    live: ArcSwap<Live>,
}

impl Keyring {
    /// Reads the key file once; a file that does not exist holds no keys
    /// (every protected request is refused until one is made).
    pub fn open(settings: &AuthSettings) -> Result<Keyring, KeyFileError> {
        let ring = Keyring {
            file: KeyFile::new(&settings.keys_file),
            defaults: Limits {
                rate_per_sec: settings.rate_per_sec,
                burst: settings.burst,
                max_in_flight: settings.max_in_flight,
            },
            live: ArcSwap::from_pointee(Live::default()),
        };
        ring.reload()?;
        Ok(ring)
    }

    pub fn file(&self) -> &KeyFile {
        &self.file
    }

    /// Keys in force (not revoked).
    pub fn active(&self) -> usize {
        self.live
            .load()
            .by_id
            .values()
            .filter(|e| !e.record.is_revoked())
            .count()
    }

    /// Reads the file again if it changed since the last read; `true` when
    /// a new set is in force. On an error the set in force stays.
    pub fn reload(&self) -> Result<bool, KeyFileError> {
        let seen = std::fs::metadata(self.file.path())
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        let old = self.live.load();
        if old.loaded && old.seen == seen {
            return Ok(false);
        }
        let set = self.file.load()?;
        let mut by_id = HashMap::with_capacity(set.keys.len());
        for record in set.keys {
            let limits = Limits {
                rate_per_sec: record.rate_per_sec.unwrap_or(self.defaults.rate_per_sec),
                burst: match record.rate_per_sec {
                    // A key's own rate brings its own burst: one second of it.
                    Some(rate) => rate,
                    None => self.defaults.burst,
                },
                max_in_flight: record.max_in_flight.unwrap_or(self.defaults.max_in_flight),
            };
            let budget = match old.by_id.get(&record.id) {
                Some(e) if e.budget.limits == limits => e.budget.clone(),
                _ => Arc::new(Budget::new(limits)),
            };
            metrics::gauge!("auth_key_rate_limit_per_second", "key" => record.id.clone())
                .set(f64::from(limits.rate_per_sec));
            metrics::gauge!("auth_key_in_flight_limit", "key" => record.id.clone())
                .set(f64::from(limits.max_in_flight));
            let hash = record.hash_bytes();
            if hash.is_none() {
                tracing::warn!(key = %record.id, "key file: a hash this oms cannot read; the key is refused");
            }
            by_id.insert(
                record.id.clone(),
                Entry {
                    record,
                    hash,
                    budget,
                },
            );
        }
        let live = Live {
            by_id,
            seen,
            loaded: true,
        };
        let (active, revoked) = live.by_id.values().fold((0u32, 0u32), |(a, r), e| {
            if e.record.is_revoked() {
                (a, r + 1)
            } else {
                (a + 1, r)
            }
        });
        metrics::gauge!("auth_keys", "state" => "active").set(f64::from(active));
        metrics::gauge!("auth_keys", "state" => "revoked").set(f64::from(revoked));
        self.live.store(Arc::new(live));
        Ok(true)
    }

    /// The check of one request carrying `token` (the bearer credential);
    /// `trades`: the request submits or cancels an order.
    pub fn check(&self, token: Option<&str>, trades: bool) -> Result<Caller, Denied> {
        let outcome = self.decide(token, trades);
        if let Err(denied) = &outcome {
            metrics::counter!("auth_refused_total", "reason" => denied.reason()).increment(1);
            if let Denied::RateLimited { id, .. } | Denied::InFlight { id, .. } = denied {
                metrics::counter!("auth_limited_total", "key" => id.clone(), "limit" => denied.reason())
                    .increment(1);
            }
        }
        outcome
    }

    fn decide(&self, token: Option<&str>, trades: bool) -> Result<Caller, Denied> {
        let token = token.ok_or(Denied::Missing)?;
        let key = Key::parse(token).ok_or(Denied::Unknown)?;
        let live = self.live.load();
        let entry = live.by_id.get(key.id()).ok_or(Denied::Unknown)?;
        let matches = entry
            .hash
            .is_some_and(|stored| bool::from(stored.ct_eq(&key.hash())));
        if !matches {
            return Err(Denied::Unknown);
        }
        let id = &entry.record.id;
        if entry.record.is_revoked() {
            return Err(Denied::Revoked { id: id.clone() });
        }
        if trades && !entry.record.role.may_trade() {
            return Err(Denied::Forbidden {
                id: id.clone(),
                role: entry.record.role,
            });
        }
        let budget = &entry.budget;
        if let Some(rate) = &budget.rate {
            if let Err(not_until) = rate.check() {
                return Err(Denied::RateLimited {
                    id: id.clone(),
                    per_sec: budget.limits.rate_per_sec,
                    retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                });
            }
        }
        let before = budget.in_flight.fetch_add(1, Ordering::AcqRel);
        let caller = Caller {
            key_id: id.clone(),
            account: entry.record.account.clone(),
            role: entry.record.role,
            budget: budget.clone(),
        };
        let max = budget.limits.max_in_flight;
        if max > 0 && before >= max {
            // `caller` gives the slot back as it drops.
            return Err(Denied::InFlight {
                id: id.clone(),
                max,
            });
        }
        Ok(caller)
    }
}

/// Reads the key file again every `every` until `stop`: a key made or
/// revoked on any instance is in force here within that long.
pub async fn watch(ring: Arc<Keyring>, every: Duration, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ring = ring.clone();
        match tokio::task::spawn_blocking(move || ring.reload()).await {
            Ok(Ok(true)) => tracing::info!("API keys reloaded"),
            Ok(Ok(false)) => {}
            Ok(Err(err)) => {
                metrics::counter!("auth_key_file_errors_total").increment(1);
                tracing::error!(error = %crate::error::Chain(&err), "the key file cannot be read: the keys in force stay");
            }
            Err(err) => tracing::error!(error = %err, "the key file reload panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_with(settings: AuthSettings) -> (tempfile::TempDir, Keyring) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let settings = AuthSettings {
            keys_file: dir.path().join("keys.toml"),
            ..settings
        };
        let ring = Keyring::open(&settings).expect("open");
        (dir, ring)
    }

    fn account(name: &str) -> Account {
        name.parse().expect("an account")
    }

    #[test]
    fn only_a_known_unrevoked_key_passes_and_a_reader_does_not_trade() {
        let (_dir, ring) = ring_with(AuthSettings::default());
        assert_eq!(ring.check(None, false).unwrap_err(), Denied::Missing);
        let trader = ring
            .file()
            .create(account("alice"), Role::Trader, None, None)
            .expect("create");
        let reader = ring
            .file()
            .create(account("alice"), Role::Reader, None, None)
            .expect("create");
        let shown = trader.key.expose();
        assert_eq!(
            ring.check(Some(&shown), false).unwrap_err(),
            Denied::Unknown,
            "not in force before the reload"
        );
        assert!(ring.reload().expect("reload"));
        let caller = ring.check(Some(&shown), true).expect("a trader trades");
        assert_eq!(caller.account, account("alice"));
        drop(caller);
        // Same id, another secret: refused exactly like an unknown key.
        let forged = format!("oms_{}_{}", trader.key.id(), "0".repeat(64));
        assert_eq!(
            ring.check(Some(&forged), false).unwrap_err(),
            Denied::Unknown
        );
        assert_eq!(
            ring.check(Some("Bearer x"), false).unwrap_err(),
            Denied::Unknown
        );
        let read_only = reader.key.expose();
        assert!(ring.check(Some(&read_only), false).is_ok());
        assert!(matches!(
            ring.check(Some(&read_only), true),
            Err(Denied::Forbidden { .. })
        ));
        ring.file().revoke(trader.key.id()).expect("revoke");
        ring.reload().expect("reload");
        assert!(matches!(
            ring.check(Some(&shown), false),
            Err(Denied::Revoked { .. })
        ));
    }

    #[test]
    fn a_key_over_its_rate_waits_while_another_is_served() {
        let (_dir, ring) = ring_with(AuthSettings::default());
        let slow = ring
            .file()
            .create(account("noisy"), Role::Trader, Some(5), Some(0))
            .expect("create");
        let other = ring
            .file()
            .create(account("calm"), Role::Trader, None, None)
            .expect("create");
        ring.reload().expect("reload");
        let slow = slow.key.expose();
        let served = (0..50)
            .filter(|_| ring.check(Some(&slow), true).is_ok())
            .count();
        assert_eq!(served, 5, "a burst of one second of its rate");
        let denied = ring.check(Some(&slow), true).unwrap_err();
        assert_eq!(denied.reason(), "rate_limited");
        assert_eq!(denied.retry_after_secs(), Some(1));
        assert!(ring.check(Some(&other.key.expose()), true).is_ok());
    }

    #[test]
    fn in_flight_requests_are_bounded_and_given_back() {
        let (_dir, ring) = ring_with(AuthSettings::default());
        let made = ring
            .file()
            .create(account("acme"), Role::Trader, Some(0), Some(2))
            .expect("create");
        ring.reload().expect("reload");
        let key = made.key.expose();
        let first = ring.check(Some(&key), true).expect("one");
        let second = ring.check(Some(&key), true).expect("two");
        assert!(matches!(
            ring.check(Some(&key), true),
            Err(Denied::InFlight { max: 2, .. })
        ));
        drop(first);
        let third = ring.check(Some(&key), true).expect("a slot came back");
        drop((second, third));
    }

    #[test]
    fn a_reload_of_an_unchanged_file_keeps_every_budget() {
        let (_dir, ring) = ring_with(AuthSettings::default());
        let a = ring
            .file()
            .create(account("a"), Role::Trader, Some(3), Some(0))
            .expect("create");
        ring.reload().expect("reload");
        let key = a.key.expose();
        assert_eq!(
            (0..10)
                .filter(|_| ring.check(Some(&key), true).is_ok())
                .count(),
            3
        );
        // Another key made: the file changes, `a`'s spent budget stays spent.
        ring.file()
            .create(account("b"), Role::Trader, None, None)
            .expect("create");
        ring.reload().expect("reload");
        assert!(ring.check(Some(&key), true).is_err());
    }
}
