//! The loop's own unit tests (the rest runs against a real broker, `tests/`).

use super::*;
use crate::domain::Offsets;
use crate::domain::Positioned;
use crate::domain::{Event, NewOrder, Order};
use crate::store::Batch;

fn order(side: &str, price: &str) -> Order {
    NewOrder::from_value(serde_json::json!({
        "src_currency": "USD", "dst_currency": "EUR", "side": side,
        "price": price, "quantity": "1", "channel": 11, "description": "unit",
    }))
    .and_then(|o| o.accept(chrono::Utc::now()))
    .expect("a valid order")
}

/// A writer whose books stand at "nothing stored" while another writer
/// stored partition 0 up to 2 (a thawed zombie): its crossing orders make
/// a trade, which must not be published (the broker here does not even
/// exist); the consumer resyncs instead.
#[tokio::test]
async fn trades_are_not_published_once_the_store_moved_past_the_books() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store: Arc<dyn Store> = Arc::new(
        crate::store::redb::RedbStore::open(dir.path())
            .await
            .expect("redb opens"),
    );
    store
        .apply(Arc::new(Batch::new(
            "orders",
            Vec::new(),
            Offsets::from([(0, 2)]),
        )))
        .await
        .expect("the other writer's batch");
    let broker = BrokerSettings {
        bootstrap: "127.0.0.1:9".into(),
        ..BrokerSettings::default()
    };
    // Cancelled up front: a retry gives up at once instead of waiting.
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let consumer = ConsumerLoop::new(
        broker,
        ConsumerSettings::default(),
        store,
        ConsumerStatus::default(),
        Books::default(),
        Ownership::default(),
        None,
    )
    .start(shutdown)
    .expect("a consumer");
    let events: Vec<Positioned> = [order("sell", "100.00"), order("buy", "101.00")]
        .into_iter()
        .enumerate()
        .map(|(offset, o)| Positioned {
            partition: 0,
            offset: offset as i64,
            event: Event::Order(o),
        })
        .collect();
    let stale = Batch::new("orders", Vec::new(), Offsets::from([(0, 2)])).expecting(Offsets::new());
    let current = stale.clone().expecting(Offsets::from([(0, 2)]));
    assert!(
        consumer.still_current(&current).await.is_ok(),
        "a store where the batch expects it is current"
    );
    // Publishing waits for an ack forever (`message.timeout.ms = 0`):
    // an attempt to publish shows as this guard running out.
    let matched = tokio::time::timeout(
        Duration::from_secs(30),
        consumer.match_events(&events, &stale),
    )
    .await
    .expect("trades from stale books were sent to the broker");
    assert!(
        matches!(matched, Err(Halt::Resync)),
        "matched from stale books: {:?}",
        matched.map(|o| o.trades.len())
    );
}
