//! What Redis does that the other engines do not. It runs out of memory:
//! with `maxmemory-policy noeviction` (oms sets it), a Redis over
//! `maxmemory` refuses writes; the batch script declares itself a writing
//! script, so Redis refuses it before it starts — never half-way — and oms
//! treats it as an outage (retry, nothing dead-lettered); once memory is
//! there again, the same batch applies. And its persistence is a setting
//! oms applies: with an AOF, a Redis killed with SIGKILL comes back with
//! every acknowledged write.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{PrivateRedis, eventually};
use oms::config::{RedisPersistence, RedisSettings};
use oms::domain::NewOrder;
use oms::domain::StoredOrder;
use oms::store::redis::RedisStore;
use oms::store::{Batch, Store, StoreError};

fn order(n: i64) -> StoredOrder {
    let order = NewOrder::from_value(serde_json::json!({
        "src_currency": "USD",
        "dst_currency": "EUR",
        "side": "buy",
        "price": "1.5",
        "quantity": format!("{}", n + 1),
        "channel": 1,
    }))
    .and_then(|o| o.accept(chrono::Utc::now()))
    .expect("valid order");
    StoredOrder::new(order, 0, n)
}

/// A connection of the test's own, to change the server behind the store.
async fn server(url: &str) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).ok()?;
    client.get_multiplexed_async_connection().await.ok()
}

async fn config_set(url: &str, name: &str, value: &str) {
    let mut conn = server(url).await.expect("connect");
    redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async::<()>(&mut conn)
        .await
        .expect("CONFIG SET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_memory_redis_refuses_a_batch_before_its_first_write() {
    let redis = PrivateRedis::start_new();
    let settings = RedisSettings {
        persistence: RedisPersistence::None,
        timeout_ms: 2_000,
        ..RedisSettings::default()
    };
    let store = RedisStore::open(&redis.url(), &settings)
        .await
        .expect("client");
    let first: Vec<_> = (0..10).map(order).collect();
    let topic = "orders";
    store
        .apply(Arc::new(
            Batch::new(topic, first, [(0, 10)].into_iter().collect()).expecting(Default::default()),
        ))
        .await
        .expect("the first batch");
    // oms applies noeviction on its own; wait until it has, so the limit
    // below refuses writes instead of evicting keys.
    let applied = eventually(Duration::from_secs(10), || async {
        let mut conn = server(&redis.url()).await?;
        let policy: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await
            .ok()?;
        (policy.get(1).map(String::as_str) == Some("noeviction")).then_some(())
    })
    .await;
    assert!(
        applied.is_some(),
        "oms did not set maxmemory-policy noeviction"
    );

    config_set(&redis.url(), "maxmemory", "1").await;
    let second: Vec<_> = (10..20).map(order).collect();
    let batch = Arc::new(
        Batch::new(topic, second.clone(), [(0, 20)].into_iter().collect())
            .expecting([(0, 10)].into_iter().collect()),
    );
    let err = store
        .apply(batch.clone())
        .await
        .expect_err("Redis is over maxmemory");
    assert!(
        matches!(err, StoreError::Transient { .. }),
        "an outage, not a refusal of the orders: {err}"
    );
    assert!(
        oms::error::Chain(&err)
            .to_string()
            .contains("out of memory"),
        "the error says why: {}",
        oms::error::Chain(&err)
    );
    assert_eq!(store.count().await.expect("count"), 10, "nothing written");
    for row in &second {
        assert!(store.get(row.order.id).await.expect("get").is_none());
    }
    assert_eq!(store.offsets(topic).await.expect("offsets")[&0], 10);

    config_set(&redis.url(), "maxmemory", "0").await;
    let applied = store.apply(batch).await.expect("memory is back");
    assert_eq!(applied.inserted, 10);
    assert_eq!(store.count().await.expect("count"), 20);
    assert_eq!(store.offsets(topic).await.expect("offsets")[&0], 20);
}

/// `persistence = "aof-everysec"` survives a kill -9 of Redis: oms saves
/// the setting into the server's config file, so the restarted Redis starts
/// with its AOF and loads it — every acknowledged write is back, and the
/// next batch, expecting the offsets from before the crash, goes on without
/// a rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_killed_with_an_aof_comes_back_with_every_order() {
    let redis = PrivateRedis::start_new();
    let settings = RedisSettings {
        persistence: RedisPersistence::AofEverysec,
        timeout_ms: 2_000,
        ..RedisSettings::default()
    };
    let store = RedisStore::open(&redis.url(), &settings)
        .await
        .expect("client");
    // The AOF is on, and its first rewrite (the base file) done.
    let on = eventually(Duration::from_secs(20), || async {
        let mut conn = server(&redis.url()).await?;
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut conn)
            .await
            .ok()?;
        let has = |line: &str| info.lines().any(|l| l.trim() == line);
        (has("aof_enabled:1") && has("aof_rewrite_in_progress:0") && has("aof_rewrite_scheduled:0"))
            .then_some(())
    })
    .await;
    assert!(on.is_some(), "oms did not turn the AOF on");

    let topic = "orders";
    let rows: Vec<_> = (0..10).map(order).collect();
    store
        .apply(Arc::new(
            Batch::new(topic, rows.clone(), [(0, 10)].into_iter().collect())
                .expecting(Default::default()),
        ))
        .await
        .expect("a batch before the crash");

    redis.stop();
    redis.start();
    let back = eventually(Duration::from_secs(30), || async {
        (store.count().await.ok()? == 10).then_some(())
    })
    .await;
    assert!(back.is_some(), "the orders did not come back from the AOF");
    for row in &rows {
        assert_eq!(
            store.get(row.order.id).await.expect("get").as_ref(),
            Some(row)
        );
    }
    let next: Vec<_> = (10..15).map(order).collect();
    store
        .apply(Arc::new(
            Batch::new(topic, next, [(0, 15)].into_iter().collect())
                .expecting([(0, 10)].into_iter().collect()),
        ))
        .await
        .expect("the offsets from before the crash are there: no rebuild");
    assert_eq!(store.count().await.expect("count"), 15);
}
