//! The rules between settings, checked once, at load (and again by
//! `Application::build` for settings built in code): each
//! failure names the keys and what would fit.

use super::{ConfigError, ConsumerMode, Settings};

type Check = fn(&Settings) -> Result<(), String>;

/// Every rule, in the order they are reported.
const CHECKS: [Check; 8] = [
    group_needs_a_shared_store,
    instance_ids_are_plain,
    heartbeats_fit_the_session,
    retries_grow,
    batches_hold_something,
    feed_serves_someone,
    sampling_is_a_share,
    keys_reload_and_paths_are_sane,
];

impl Settings {
    /// Refuses settings that contradict each other.
    pub fn check(&self) -> Result<(), ConfigError> {
        CHECKS
            .iter()
            .try_for_each(|check| check(self))
            .map_err(ConfigError::Invalid)
    }
}

/// The key file is read on a timer (a zero period is no timer), and the
/// open paths are paths: the order operations can never be among them.
fn keys_reload_and_paths_are_sane(s: &Settings) -> Result<(), String> {
    let auth = &s.auth;
    if auth.reload_ms == 0 {
        return Err(
            "auth.reload_ms must be at least 1: it is how often the key file is read".into(),
        );
    }
    if let Some(bad) = auth.public.iter().find(|p| !p.starts_with('/')) {
        return Err(format!(
            "auth.public: {bad:?} is not a path (start it with `/`)"
        ));
    }
    if let Some(bad) = auth.public.iter().find(|p| {
        ["/orders", "/trades", "/orderbook"]
            .iter()
            .any(|o| p.starts_with(o))
    }) {
        return Err(format!(
            "auth.public: {bad:?} is an order or trading operation, which always needs a key"
        ));
    }
    Ok(())
}

/// `group` splits the partitions between instances: with an embedded
/// store each instance would hold only part of the orders.
fn group_needs_a_shared_store(s: &Settings) -> Result<(), String> {
    let engine = s.store.engine();
    if s.consumer.mode == ConsumerMode::Group && engine.is_embedded() {
        return Err(format!(
            "consumer.mode = \"group\" shares the partitions between instances, but {} keeps \
             each instance's orders in its own files: every instance would hold only part of \
             them. Use consumer.mode = \"assign\" (every instance a full replica) or a shared \
             store (postgres, redis)",
            engine.as_str()
        ));
    }
    Ok(())
}

/// The id is written into the store's lease records, `|`-separated in Redis.
fn instance_ids_are_plain(s: &Settings) -> Result<(), String> {
    let id = &s.consumer.instance_id;
    if id
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
    {
        return Ok(());
    }
    Err(format!(
        "consumer.instance_id {id:?} may hold only letters, digits, '.', '_' and '-'"
    ))
}

fn heartbeats_fit_the_session(s: &Settings) -> Result<(), String> {
    let c = &s.consumer;
    if c.heartbeat_ms == 0 || c.heartbeat_ms.saturating_mul(2) > c.session_timeout_ms {
        return Err(format!(
            "consumer.heartbeat_ms ({}) must be above 0 and at most half of \
             consumer.session_timeout_ms ({}): a member renews its leases several times \
             before they run out",
            c.heartbeat_ms, c.session_timeout_ms
        ));
    }
    Ok(())
}

fn retries_grow(s: &Settings) -> Result<(), String> {
    let c = &s.consumer;
    if c.retry_min_ms == 0 || c.retry_min_ms > c.retry_max_ms {
        return Err(format!(
            "consumer.retry_min_ms ({}) must be above 0 and at most consumer.retry_max_ms ({})",
            c.retry_min_ms, c.retry_max_ms
        ));
    }
    Ok(())
}

fn feed_serves_someone(s: &Settings) -> Result<(), String> {
    if s.feed.max_clients == 0 || s.feed.buffer == 0 || s.feed.dedupe == 0 {
        return Err("feed.max_clients, feed.buffer and feed.dedupe must be at least 1".into());
    }
    if s.feed.lookback < 0 {
        return Err("feed.lookback cannot be negative".into());
    }
    Ok(())
}

fn batches_hold_something(s: &Settings) -> Result<(), String> {
    if s.consumer.batch_max == 0 {
        return Err("consumer.batch_max must be at least 1".into());
    }
    Ok(())
}

fn sampling_is_a_share(s: &Settings) -> Result<(), String> {
    let ratio = s.telemetry.sample_ratio;
    if !(0.0..=1.0).contains(&ratio) {
        return Err(format!(
            "telemetry.sample_ratio ({ratio}) is a share of traces: 0.0 to 1.0"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(change: impl FnOnce(&mut Settings)) -> String {
        let mut s = Settings::default();
        change(&mut s);
        s.check().expect_err("refused").to_string()
    }

    #[test]
    fn contradicting_settings_are_refused_with_their_keys_named() {
        assert!(Settings::default().check().is_ok());
        type Case = (fn(&mut Settings), &'static str);
        let cases: [Case; 6] = [
            (|s| s.consumer.mode = ConsumerMode::Group, "consumer.mode"),
            (
                |s| s.consumer.instance_id = "a|b".into(),
                "consumer.instance_id",
            ),
            (|s| s.consumer.heartbeat_ms = 5_000, "consumer.heartbeat_ms"),
            (
                |s| s.consumer.retry_min_ms = 10_000,
                "consumer.retry_min_ms",
            ),
            (|s| s.consumer.batch_max = 0, "consumer.batch_max"),
            (|s| s.telemetry.sample_ratio = 1.5, "telemetry.sample_ratio"),
        ];
        for (change, key) in cases {
            let err = refused(change);
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
