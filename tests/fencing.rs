//! Offsets that move under the consumer: every batch is written only if the
//! store's offsets are where this consumer last left them (checked inside
//! the write transaction; the store contract tests show a stale writer is
//! refused as a whole on every engine). So a store that lost its data
//! behind oms' back is noticed and rebuilt from the log without restarting
//! oms.

mod common;

use std::time::{Duration, Instant};

use common::{
    Load, PrivateRedis, SYMBOLS, TestApp, bootstrap, check_matching, eventually, settings, tally,
    use_engine, use_redis,
};
use oms::config::Engine;

const CLIENTS: usize = 8;

/// Postgres emptied under load (as a Redis restarted without persistence
/// would be): oms notices on its next batch, reads the store's offsets
/// again (none) and rebuilds from the log — every acknowledged order is
/// back, exactly once, and the lag returns to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_emptied_behind_oms_back_is_rebuilt_without_a_restart() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = settings(&bootstrap(), dir.path());
    use_engine(&mut cfg, Engine::Postgres, "oms_fencing").await;
    let admin = sqlx::PgPool::connect(cfg.store.url.as_str())
        .await
        .expect("connect");
    let app = TestApp::spawn(cfg).await;
    let load = Load::start(&app.base, CLIENTS, started + Duration::from_secs(240));
    load.wait_submitted(500, Duration::from_secs(60)).await;
    app.wait_caught_up(Duration::from_secs(60)).await;

    // Every table oms writes; log_offsets first, as oms' own batch locks
    // it first, so the two cannot deadlock (a deadlock with a batch in
    // flight is retried, as an operator would).
    let emptied = eventually(Duration::from_secs(30), || async {
        sqlx::query("TRUNCATE log_offsets, orders, order_fills, trades")
            .execute(&admin)
            .await
            .map_err(|e| eprintln!("TRUNCATE: {e}"))
            .ok()
    })
    .await;
    assert!(emptied.is_some(), "the store could not be emptied");
    load.wait_submitted(load.submitted() + 500, Duration::from_secs(60))
        .await;
    let result = load.finish().await;

    let resynced = eventually(Duration::from_secs(30), || async {
        (app.metric_sum("consumer_resyncs_total").await >= Some(1.0)).then_some(())
    })
    .await;
    assert!(
        resynced.is_some(),
        "the consumer never noticed the empty store"
    );
    let counted = tally(&app, &result.acked).await;
    eprintln!("emptied under load: {counted:?}");
    assert_eq!(counted.lost, 0, "{counted:?}");
    assert_eq!(counted.duplicated, 0, "{counted:?}");
    // The books were rebuilt from the emptied store and the log matched
    // again from the start: the same trades as the reference.
    let matched = check_matching(&app, &SYMBOLS).await;
    eprintln!(
        "emptied under load: {} trades as the reference matcher",
        matched.trades
    );
    app.stop().await.expect("clean stop");
}

/// Redis restarted empty under load (no persistence, or a failover to an
/// empty replica): the next batch's script finds none of the offsets it
/// expects and refuses before its first write; the consumer reads the
/// store's offsets again (none) and rebuilds from the log — every
/// acknowledged order is back, exactly once, without restarting oms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_under_load_is_rebuilt_without_a_restart() {
    let started = Instant::now();
    let redis = PrivateRedis::start_new();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = settings(&bootstrap(), dir.path());
    use_redis(&mut cfg, &redis.url(), "oms-empty");
    cfg.store.redis.persistence = oms::config::RedisPersistence::None;
    cfg.store.redis.timeout_ms = 1_000;
    let app = TestApp::spawn(cfg).await;
    let load = Load::start(&app.base, CLIENTS, started + Duration::from_secs(240));
    load.wait_submitted(1_000, Duration::from_secs(60)).await;

    let mut stored_before = Vec::new();
    for _ in 0..2 {
        // An empty restart shows only once the consumer has written to the
        // Redis it replaces (an empty store restarted empty is the same
        // store). The consumer's first write can come a second or more after
        // the first 1,000 orders were acknowledged (a new topic's first
        // fetch), and after a resync it reads the log from its start again.
        let held = eventually(Duration::from_secs(30), || async {
            app.store.count().await.ok().filter(|n| *n > 0)
        })
        .await;
        stored_before.push(held.expect("nothing was stored in this Redis"));
        redis.restart_empty();
        load.wait_submitted(load.submitted() + 1_000, Duration::from_secs(60))
            .await;
    }
    let result = load.finish().await;

    let resynced = eventually(Duration::from_secs(30), || async {
        (app.metric_sum("consumer_resyncs_total").await >= Some(2.0)).then_some(())
    })
    .await;
    assert!(
        resynced.is_some(),
        "the consumer did not notice each empty restart"
    );
    let counted = tally(&app, &result.acked).await;
    eprintln!(
        "redis restarted empty twice under load (held {stored_before:?} orders before each): {counted}"
    );
    assert_eq!(counted.lost, 0, "{counted}");
    assert_eq!(counted.duplicated, 0, "{counted}");
    let matched = check_matching(&app, &SYMBOLS).await;
    eprintln!(
        "redis restarted empty: {} trades as the reference matcher",
        matched.trades
    );
    app.stop().await.expect("clean stop");
}
