//! The store contract, written once and run against every engine
//! (see `store_contract_tests!` at the bottom of each engine's file).

use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;

use super::{Applied, Batch, Store, StoreError};
use crate::domain::{Account, Amount, Cancel, Description, Event, NewOrder, Side, Symbol};
use crate::domain::{Fill, Positioned, Status};
use crate::domain::{Offsets, StoredOrder};
use crate::matching::Matcher;

/// How a contract test gets a store; `open` again must see the same data.
pub trait Engine {
    async fn open(&self) -> Arc<dyn Store>;
}

pub const TOPIC: &str = "contract-orders";

pub fn order(symbol: (&str, &str), n: i64) -> StoredOrder {
    let order = NewOrder::from_value(serde_json::json!({
        "src_currency": symbol.0,
        "dst_currency": symbol.1,
        "side": "sell",
        "price": format!("{n}.5"),
        "quantity": "3",
        "channel": 1,
        "description": format!("order {n}"),
    }))
    .and_then(|o| o.accept(Utc::now()))
    .expect("valid order");
    StoredOrder::new(order, (n % 3) as i32, n)
}

pub fn batch(orders: Vec<StoredOrder>, offsets: &[(i32, i64)]) -> Arc<Batch> {
    Arc::new(Batch::new(TOPIC, orders, offsets.iter().copied().collect()))
}

/// `batch` written only if the store's offsets are at `expected`.
pub fn fenced(
    orders: Vec<StoredOrder>,
    offsets: &[(i32, i64)],
    expected: &[(i32, i64)],
) -> Arc<Batch> {
    Arc::new(
        Batch::new(TOPIC, orders, offsets.iter().copied().collect())
            .expecting(expected.iter().copied().collect()),
    )
}

/// Fencing: a writer whose idea of the store's offsets is stale (it lost
/// the partition to another instance, or the store lost data behind its
/// back) is refused as a whole — no row, no offset — while a writer that
/// knows where the store is goes on, and repeating its batch after a lost
/// answer is harmless. The same records from another writer are refused even
/// when they end where the store is.
pub async fn a_writer_whose_offsets_are_stale_is_refused(engine: impl Engine) {
    let store = engine.open().await;
    let first: Vec<_> = (0..5).map(|n| order(("USD", "EUR"), n)).collect();
    store
        .apply(fenced(first, &[(0, 5)], &[]))
        .await
        .expect("the first writer");

    let zombie: Vec<_> = (5..8).map(|n| order(("GBP", "JPY"), n)).collect();
    let err = store
        .apply(fenced(zombie.clone(), &[(0, 8)], &[]))
        .await
        .expect_err("a writer that believes nothing was stored");
    assert!(matches!(err, StoreError::Diverged { .. }), "{err}");
    assert!(!err.is_permanent(), "its rows must not be dead-lettered");
    assert_eq!(
        store.count().await.expect("count"),
        5,
        "no row of the refused batch"
    );
    for row in &zombie {
        assert!(store.get(row.order.id).await.expect("get").is_none());
    }
    assert_eq!(store.offsets(TOPIC).await.expect("offsets")[&0], 5);
    let err = store
        .apply(fenced(zombie.clone(), &[(0, 9)], &[(0, 3)]))
        .await
        .expect_err("a writer that is behind");
    assert!(matches!(err, StoreError::Diverged { .. }), "{err}");

    let next = fenced(zombie.clone(), &[(0, 8)], &[(0, 5)]);
    store.apply(next.clone()).await.expect("the owner goes on");
    // The same records, matched by another writer that still believes the
    // store at 5: its books never saw what the owner wrote.
    let err = store
        .apply(next.clone())
        .await
        .expect_err("another writer's batch that ends where the owner's did");
    assert!(matches!(err, StoreError::Diverged { .. }), "{err}");
    let again = store
        .apply(Arc::new(next.retry()))
        .await
        .expect("the same batch again (answer lost)");
    assert_eq!(again.inserted, 0);
    assert_eq!(store.count().await.expect("count"), 8);
    assert_eq!(store.offsets(TOPIC).await.expect("offsets")[&0], 8);
}

/// A log that was replaced starts again at offset 0: forgetting a
/// partition's offset lets its new records in (fenced writers included),
/// keeps every row, and leaves the other partitions where they were.
pub async fn forgotten_offsets_start_again_and_keep_the_rows(engine: impl Engine) {
    let store = engine.open().await;
    let old: Vec<_> = (0..6).map(|n| order(("USD", "EUR"), n)).collect();
    store
        .apply(fenced(old.clone(), &[(0, 40), (1, 50)], &[]))
        .await
        .expect("the old log's batch");

    store
        .forget_offsets(TOPIC, &[1])
        .await
        .expect("forget partition 1");
    assert_eq!(
        store.offsets(TOPIC).await.expect("offsets"),
        [(0, 40)].into_iter().collect(),
        "only partition 1 is forgotten"
    );
    store
        .forget_offsets(TOPIC, &[1, 2])
        .await
        .expect("forgetting again (or a partition never stored) is harmless");

    let new: Vec<_> = (6..9).map(|n| order(("GBP", "JPY"), n)).collect();
    let mut again = old[..2].to_vec();
    again.extend(new.clone());
    let applied = store
        .apply(fenced(again, &[(1, 3)], &[]))
        .await
        .expect("the new log's first batch, fenced as starting from nothing");
    assert_eq!(applied.inserted, 3, "the new orders");
    assert_eq!(applied.duplicates, 2, "orders the old log had stay once");
    assert_eq!(store.count().await.expect("count"), 9);
    for row in old.iter().chain(&new) {
        assert!(store.get(row.order.id).await.expect("get").is_some());
    }
    assert_eq!(
        store.offsets(TOPIC).await.expect("offsets"),
        [(0, 40), (1, 3)].into_iter().collect()
    );
}

pub async fn applies_rows_and_offsets_together(engine: impl Engine) {
    let store = engine.open().await;
    assert_eq!(store.offsets(TOPIC).await.expect("offsets"), Offsets::new());
    let rows: Vec<_> = (0..10).map(|n| order(("USD", "EUR"), n)).collect();
    let applied = store
        .apply(batch(rows.clone(), &[(0, 4), (1, 5), (2, 6)]))
        .await
        .expect("apply");
    assert_eq!(
        applied,
        Applied {
            inserted: 10,
            duplicates: 0
        }
    );
    assert_eq!(store.count().await.expect("count"), 10);
    for row in &rows {
        assert_eq!(
            store.get(row.order.id).await.expect("get").as_ref(),
            Some(row)
        );
    }
    let offsets = store.offsets(TOPIC).await.expect("offsets");
    assert_eq!(offsets, [(0, 4), (1, 5), (2, 6)].into_iter().collect());
    assert!(
        store
            .offsets("another-topic")
            .await
            .expect("offsets")
            .is_empty()
    );
    assert!(store.get(Uuid::now_v7()).await.expect("get").is_none());
}

pub async fn reapplying_a_batch_is_harmless(engine: impl Engine) {
    let store = engine.open().await;
    let rows: Vec<_> = (0..5).map(|n| order(("USD", "EUR"), n)).collect();
    store
        .apply(batch(rows.clone(), &[(0, 5)]))
        .await
        .expect("first apply");
    let mut changed = rows.clone();
    changed[0].order.description = Description::try_from("second copy".to_owned()).expect("short");
    changed.push(order(("USD", "EUR"), 99));
    let applied = store
        .apply(batch(changed, &[(0, 7)]))
        .await
        .expect("re-apply");
    assert_eq!(
        applied,
        Applied {
            inserted: 1,
            duplicates: 5
        }
    );
    assert_eq!(store.count().await.expect("count"), 6);
    let first = store
        .get(rows[0].order.id)
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(
        first.order.description, rows[0].order.description,
        "first write wins"
    );
    assert_eq!(store.offsets(TOPIC).await.expect("offsets")[&0], 7);
}

/// First write wins for the symbol index too: an id written again with
/// other fields (another currency pair) is not listed under the second pair.
pub async fn a_repeated_id_stays_out_of_a_second_symbols_index(engine: impl Engine) {
    let store = engine.open().await;
    let first = order(("USD", "EUR"), 1);
    store
        .apply(batch(vec![first.clone()], &[(1, 2)]))
        .await
        .expect("first write");
    let mut again = order(("GBP", "JPY"), 1);
    again.order.id = first.order.id;
    let applied = store
        .apply(batch(vec![again], &[(1, 3)]))
        .await
        .expect("the same id, another pair");
    assert_eq!(
        applied,
        Applied {
            inserted: 0,
            duplicates: 1
        }
    );
    assert!(
        store
            .list_by_symbol("GBP-JPY", None, 10)
            .await
            .expect("list")
            .is_empty(),
        "the repeated id entered the second pair's index"
    );
    assert_eq!(
        store
            .list_by_symbol("USD-EUR", None, 10)
            .await
            .expect("list"),
        vec![first.clone()]
    );
    assert_eq!(store.get(first.order.id).await.expect("get"), Some(first));
    assert_eq!(store.count().await.expect("count"), 1);
}

pub async fn a_failed_batch_leaves_nothing(engine: impl Engine) {
    let store = engine.open().await;
    let good = order(("USD", "EUR"), 1);
    store
        .apply(batch(vec![good], &[(0, 2)]))
        .await
        .expect("apply");

    let rows: Vec<_> = (10..20).map(|n| order(("GBP", "JPY"), n)).collect();
    let mut failing = Batch::new(
        TOPIC,
        rows.clone(),
        [(0, 30), (1, 31)].into_iter().collect(),
    );
    failing.fail_before_commit = true;
    store
        .apply(Arc::new(failing))
        .await
        .expect_err("injected failure");

    assert_eq!(
        store.count().await.expect("count"),
        1,
        "no row of the failed batch"
    );
    for row in &rows {
        assert!(store.get(row.order.id).await.expect("get").is_none());
    }
    assert!(
        store
            .list_by_symbol("GBP-JPY", None, 100)
            .await
            .expect("list")
            .is_empty()
    );
    let offsets = store.offsets(TOPIC).await.expect("offsets");
    assert_eq!(
        offsets,
        [(0, 2)].into_iter().collect(),
        "no offset of the failed batch"
    );
}

pub async fn lists_by_symbol_with_a_cursor(engine: impl Engine) {
    let store = engine.open().await;
    let mut usd: Vec<_> = (0..7).map(|n| order(("USD", "EUR"), n)).collect();
    let gbp: Vec<_> = (0..3).map(|n| order(("GBP", "EUR"), n)).collect();
    let mut all = usd.clone();
    all.extend(gbp.clone());
    store.apply(batch(all, &[(0, 10)])).await.expect("apply");
    usd.sort_by_key(|o| o.order.id);

    let page1 = store
        .list_by_symbol("USD-EUR", None, 3)
        .await
        .expect("page 1");
    assert_eq!(page1, usd[0..3]);
    let page2 = store
        .list_by_symbol("USD-EUR", Some(page1[2].order.id), 3)
        .await
        .expect("page 2");
    assert_eq!(page2, usd[3..6]);
    let page3 = store
        .list_by_symbol("USD-EUR", Some(page2[2].order.id), 3)
        .await
        .expect("page 3");
    assert_eq!(page3, usd[6..]);
    let empty = store
        .list_by_symbol("USD-EUR", Some(page3[0].order.id), 3)
        .await
        .expect("end");
    assert!(empty.is_empty());
    assert_eq!(
        store
            .list_by_symbol("GBP-EUR", None, 100)
            .await
            .expect("gbp")
            .len(),
        3
    );
    assert!(
        store
            .list_by_symbol("JPY-EUR", None, 100)
            .await
            .expect("none")
            .is_empty()
    );
    assert!(
        store
            .list_by_symbol("USD-EUR", Some(Uuid::max()), 3)
            .await
            .expect("max")
            .is_empty()
    );
}

/// `GET /orders` for one account: its orders of a symbol only, in id
/// order, paged; an order of no account is nobody's; and the account
/// survives a reopen.
pub async fn lists_an_accounts_own_orders_with_a_cursor(engine: impl Engine) {
    let store = engine.open().await;
    let (alice, bob): (Account, Account) = (
        "alice".parse().expect("account"),
        "bob".parse().expect("account"),
    );
    let owned = |n: i64, account: Option<&Account>| {
        let mut o = order(("USD", "EUR"), n);
        o.order.account = account.cloned();
        o
    };
    let all: Vec<_> = (0..12)
        .map(|n| match n % 3 {
            0 => owned(n, Some(&alice)),
            1 => owned(n, Some(&bob)),
            _ => owned(n, None),
        })
        .chain([{
            let mut other_symbol = order(("GBP", "EUR"), 20);
            other_symbol.order.account = Some(alice.clone());
            other_symbol
        }])
        .collect();
    store
        .apply(batch(all.clone(), &[(0, 30)]))
        .await
        .expect("apply");
    let mut alices: Vec<_> = all
        .iter()
        .filter(|o| o.order.account.as_ref() == Some(&alice) && o.order.symbol() == "USD-EUR")
        .cloned()
        .collect();
    alices.sort_by_key(|o| o.order.id);
    assert_eq!(alices.len(), 4);
    let first = store
        .list_owned(&alice, "USD-EUR", None, 3)
        .await
        .expect("page 1");
    assert_eq!(first, alices[..3]);
    let rest = store
        .list_owned(&alice, "USD-EUR", Some(first[2].order.id), 3)
        .await
        .expect("page 2");
    assert_eq!(rest, alices[3..]);
    let bobs = store
        .list_owned(&bob, "USD-EUR", None, 100)
        .await
        .expect("bob");
    assert_eq!(bobs.len(), 4);
    assert!(bobs.iter().all(|o| o.order.account.as_ref() == Some(&bob)));
    assert!(
        store
            .list_owned(&"carol".parse().expect("account"), "USD-EUR", None, 100)
            .await
            .expect("carol")
            .is_empty()
    );
    drop(store);
    let store = engine.open().await;
    let again = store
        .get(alices[0].order.id)
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(again.order.account, Some(alice));
}

pub async fn reopening_keeps_everything(engine: impl Engine) {
    let rows: Vec<_> = (0..4).map(|n| order(("USD", "CHF"), n)).collect();
    {
        let store = engine.open().await;
        store
            .apply(batch(rows.clone(), &[(1, 40)]))
            .await
            .expect("apply");
        store.health().await.expect("healthy");
    }
    let store = engine.open().await;
    assert_eq!(store.count().await.expect("count"), 4);
    assert_eq!(store.offsets(TOPIC).await.expect("offsets")[&1], 40);
    assert_eq!(
        store.get(rows[3].order.id).await.expect("get").as_ref(),
        Some(&rows[3])
    );
}

/// A market order (no price), an order's time in force and post-only flag,
/// and the reasons of fills that ended without resting come back as they
/// were written, after a reopen too.
pub async fn keeps_order_terms_and_fill_reasons(engine: impl Engine) {
    use crate::domain::{OrderState, OrderType, Reason, Terms, TimeInForce};
    let mut market = order(("USD", "SEK"), 1);
    market.order.price = None;
    market.order.terms = Terms {
        order_type: OrderType::Market,
        time_in_force: TimeInForce::Fok,
        post_only: false,
    };
    let mut post = order(("USD", "SEK"), 2);
    post.order.terms.post_only = true;
    post.order.terms.time_in_force = TimeInForce::Ioc;
    let ended = [
        (&mut market, Status::Expired, Reason::FokNotFillable),
        (&mut post, Status::Rejected, Reason::PostOnlyWouldTrade),
    ];
    let mut states = Vec::new();
    for (row, status, reason) in ended {
        row.fill = Fill {
            status,
            filled: 0.into(),
            reason: Some(reason),
        };
        states.push(OrderState {
            id: row.order.id,
            partition: row.partition,
            fill: row.fill,
        });
    }
    let rows = vec![market, post];
    let mut written = rows.clone();
    for row in &mut written {
        row.fill = Fill::default();
    }
    {
        let store = engine.open().await;
        let batch = Batch::new(TOPIC, written, [(1, 10), (2, 10)].into_iter().collect())
            .matched(states, Vec::new());
        store.apply(Arc::new(batch)).await.expect("apply");
        for row in &rows {
            assert_eq!(
                store.get(row.order.id).await.expect("get").as_ref(),
                Some(row)
            );
        }
    }
    let store = engine.open().await;
    for row in &rows {
        assert_eq!(
            store.get(row.order.id).await.expect("get").as_ref(),
            Some(row),
            "after a reopen"
        );
    }
}

/// The batch a consumer writes for `rows` and `cancels` after matching them.
fn matched(
    matcher: &mut Matcher,
    store_has: &[Uuid],
    rows: &[StoredOrder],
    cancels: &[Cancel],
    offsets: &[(i32, i64)],
) -> Batch {
    let mut events: Vec<Positioned> = rows
        .iter()
        .map(|r| Positioned {
            partition: r.partition,
            offset: r.offset,
            event: Event::Order(r.order.clone()),
        })
        .collect();
    events.extend(cancels.iter().map(|c| Positioned {
        partition: 1,
        offset: 99,
        event: Event::Cancel(c.clone()),
    }));
    let outcome = matcher.run(&events, &store_has.iter().copied().collect());
    Batch::new(TOPIC, rows.to_vec(), offsets.iter().copied().collect())
        .matched(outcome.states, outcome.trades)
}

fn fill(status: Status, filled: i64) -> Fill {
    Fill {
        status,
        filled: filled.into(),
        reason: None,
    }
}

/// Matching's state commits with the batch: fills replace fills, the
/// resting index follows them, a trade is stored once whatever repeats
/// it, a failed batch leaves none of it, and a book rebuilt from the
/// resting orders is the one that was matched into.
pub async fn fills_and_trades_commit_with_the_batch(engine: impl Engine) {
    let store = engine.open().await;
    let mut matcher = Matcher::new();
    let sell = order(("USD", "EUR"), 1); // partition 1: sells 3 at 1.5
    let first = matched(
        &mut matcher,
        &[],
        std::slice::from_ref(&sell),
        &[],
        &[(1, 2)],
    );
    store.apply(Arc::new(first)).await.expect("the sell");
    let got = store
        .get(sell.order.id)
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(got.fill, fill(Status::Open, 0));
    assert_eq!(store.resting(1).await.expect("resting"), vec![got]);

    let mut buy = order(("USD", "EUR"), 4); // partition 1: buys 1 at 4.5
    buy.order.side = Side::Buy;
    buy.order.quantity = Amount::try_from(rust_decimal::Decimal::ONE).expect("amount");
    let second = Arc::new(matched(
        &mut matcher,
        &[],
        std::slice::from_ref(&buy),
        &[],
        &[(1, 5)],
    ));
    assert_eq!(second.trades.len(), 1, "the buy crosses the sell");
    store.apply(second.clone()).await.expect("the buy");
    store.apply(second.clone()).await.expect("again: harmless");

    fills_and_trades_are_read_back(store.as_ref(), &sell, &buy, &second).await;

    // A book rebuilt from the store is the book that was matched into.
    let mut rebuilt = Matcher::new();
    rebuilt.load(1, store.resting(1).await.expect("resting"));
    assert_eq!(rebuilt.depth("USD-EUR", 5), matcher.depth("USD-EUR", 5));

    a_failed_cancel_leaves_the_fill_and_a_cancel_closes_it(
        store.as_ref(),
        &sell,
        &mut matcher,
        &mut rebuilt,
    )
    .await;
}

/// What [`fills_and_trades_commit_with_the_batch`] wrote, read back every
/// way a reader can.
async fn fills_and_trades_are_read_back(
    store: &dyn Store,
    sell: &StoredOrder,
    buy: &StoredOrder,
    second: &Batch,
) {
    let seller = store.get(sell.order.id).await.expect("get").expect("sell");
    assert_eq!(seller.fill, fill(Status::PartiallyFilled, 1));
    let buyer = store.get(buy.order.id).await.expect("get").expect("buy");
    assert_eq!(buyer.fill, fill(Status::Filled, 1));
    let listed = store
        .list_by_symbol("USD-EUR", None, 10)
        .await
        .expect("list");
    assert!(
        listed.contains(&seller) && listed.contains(&buyer),
        "lists carry fills"
    );
    assert_eq!(
        store.resting(1).await.expect("resting"),
        vec![seller.clone()],
        "the filled buy never rests"
    );
    let trades = store.trades("USD-EUR", None, 10).await.expect("trades");
    assert_eq!(trades, second.trades, "one trade, stored once");
    assert_eq!(trades[0].trade.price, "1.5".parse().expect("decimal"));
    assert!(
        store
            .trades("USD-EUR", Some(trades[0].trade.id), 10)
            .await
            .expect("after")
            .is_empty()
    );
    assert!(
        store
            .trades("GBP-JPY", None, 10)
            .await
            .expect("none")
            .is_empty()
    );
    let unknown = Uuid::now_v7();
    assert_eq!(
        store
            .known(vec![sell.order.id, buy.order.id, unknown])
            .await
            .expect("known"),
        [sell.order.id, buy.order.id].into_iter().collect()
    );
}

/// A cancel whose batch fails leaves the fill; the cancel itself closes it.
async fn a_failed_cancel_leaves_the_fill_and_a_cancel_closes_it(
    store: &dyn Store,
    sell: &StoredOrder,
    matcher: &mut Matcher,
    rebuilt: &mut Matcher,
) {
    let cancel = Cancel {
        order_id: sell.order.id,
        symbol: Symbol::new(&sell.order.src_currency, &sell.order.dst_currency),
        side: Some(sell.order.side),
        price: sell.order.price,
        requested_at: Utc::now(),
    };
    let mut failing = matched(rebuilt, &[], &[], std::slice::from_ref(&cancel), &[(1, 6)]);
    assert_eq!(failing.states.len(), 1, "the cancel takes the sell out");
    failing.fail_before_commit = true;
    store
        .apply(Arc::new(failing))
        .await
        .expect_err("injected failure");
    assert_eq!(
        store
            .get(sell.order.id)
            .await
            .expect("get")
            .expect("sell")
            .fill,
        fill(Status::PartiallyFilled, 1),
        "nothing of the failed batch"
    );
    assert_eq!(store.resting(1).await.expect("resting").len(), 1);

    let cancelled = matched(matcher, &[], &[], &[cancel], &[(1, 6)]);
    store.apply(Arc::new(cancelled)).await.expect("cancel");
    assert_eq!(
        store
            .get(sell.order.id)
            .await
            .expect("get")
            .expect("sell")
            .fill,
        fill(Status::Cancelled, 1)
    );
    assert!(store.resting(1).await.expect("resting").is_empty());
}

/// Offsets only move forward, whoever writes: an unfenced batch covering a
/// partition the store is already past stores its rows and leaves that
/// partition's offset where it was.
pub async fn offsets_only_move_forward(engine: impl Engine) {
    let store = engine.open().await;
    store
        .apply(batch(vec![order(("USD", "EUR"), 0)], &[(0, 10)]))
        .await
        .expect("first");
    store
        .apply(batch(vec![order(("USD", "EUR"), 1)], &[(0, 5), (1, 3)]))
        .await
        .expect("a batch behind on partition 0");
    let offsets = store.offsets(TOPIC).await.expect("offsets");
    assert_eq!(offsets.get(&0), Some(&10), "never moved back");
    assert_eq!(offsets.get(&1), Some(&3));
    assert_eq!(store.count().await.expect("count"), 2);
}

/// Expands to one `#[tokio::test]` per contract case for the engine that
/// `$engine().await` builds.
#[macro_export]
macro_rules! store_contract_tests {
    ($engine:ident) => {
        mod contract {
            use super::$engine;
            use $crate::store::contract as c;

            #[tokio::test]
            async fn applies_rows_and_offsets_together() {
                c::applies_rows_and_offsets_together($engine().await).await;
            }
            #[tokio::test]
            async fn lists_an_accounts_own_orders_with_a_cursor() {
                c::lists_an_accounts_own_orders_with_a_cursor($engine().await).await;
            }
            #[tokio::test]
            async fn keeps_order_terms_and_fill_reasons() {
                c::keeps_order_terms_and_fill_reasons($engine().await).await;
            }
            #[tokio::test]
            async fn reapplying_a_batch_is_harmless() {
                c::reapplying_a_batch_is_harmless($engine().await).await;
            }
            #[tokio::test]
            async fn a_failed_batch_leaves_nothing() {
                c::a_failed_batch_leaves_nothing($engine().await).await;
            }
            #[tokio::test]
            async fn a_repeated_id_stays_out_of_a_second_symbols_index() {
                c::a_repeated_id_stays_out_of_a_second_symbols_index($engine().await).await;
            }
            #[tokio::test]
            async fn lists_by_symbol_with_a_cursor() {
                c::lists_by_symbol_with_a_cursor($engine().await).await;
            }
            #[tokio::test]
            async fn a_writer_whose_offsets_are_stale_is_refused() {
                c::a_writer_whose_offsets_are_stale_is_refused($engine().await).await;
            }
            #[tokio::test]
            async fn fills_and_trades_commit_with_the_batch() {
                c::fills_and_trades_commit_with_the_batch($engine().await).await;
            }
            #[tokio::test]
            async fn forgotten_offsets_start_again_and_keep_the_rows() {
                c::forgotten_offsets_start_again_and_keep_the_rows($engine().await).await;
            }
            #[tokio::test]
            async fn offsets_only_move_forward() {
                c::offsets_only_move_forward($engine().await).await;
            }
            #[tokio::test]
            async fn reopening_keeps_everything() {
                c::reopening_keeps_everything($engine().await).await;
            }
        }
    };
}

/// The lease contract (group mode), for the engines that keep leases.
pub mod leases {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{Engine, StoreError, TOPIC, batch, order};
    use crate::store::Store;
    use crate::store::lease::{Claim, Lease, Member, MemberState};

    fn member(id: &str, instance: &str, ttl: Duration) -> Member {
        Member {
            topic: TOPIC.into(),
            id: id.into(),
            instance: instance.into(),
            ttl,
        }
    }

    const LONG: Duration = Duration::from_secs(60);

    /// A batch of partition 0 written by `owner` under `epoch`.
    async fn write(
        store: &Arc<dyn Store>,
        owner: &str,
        epoch: i64,
        n: i64,
    ) -> Result<(), StoreError> {
        let b = batch(vec![order(("USD", "EUR"), n)], &[(0, n + 1)]);
        let claimed = (*b).clone().claiming(Some(Claim {
            owner: owner.into(),
            epochs: [(0, epoch)].into(),
        }));
        store.apply(Arc::new(claimed)).await.map(drop)
    }

    fn fenced(result: Result<(), StoreError>) -> bool {
        matches!(result, Err(StoreError::Fenced { partition: 0, .. }))
    }

    /// One writer per partition: a lease is taken once, only its holder
    /// writes under it, and a lease given up or taken over fences every
    /// batch still written under the old epoch — no row, no offset.
    pub async fn a_lease_has_one_writer_and_fences_the_others(engine: impl Engine) {
        let store = engine.open().await;
        let leases = store.leases().expect("this engine keeps leases");
        let (a, b) = (member("a", "", LONG), member("b", "", LONG));
        let first = leases
            .acquire(&a, 0, false)
            .await
            .expect("acquire")
            .expect("a free partition");
        assert!(
            leases
                .acquire(&b, 0, false)
                .await
                .expect("acquire")
                .is_none(),
            "a's lease is live"
        );
        let refused = write(&store, "b", first.epoch, 0).await;
        let said = format!(
            "holds its lease at epoch {0}, the store has epoch {0} held by a",
            first.epoch
        );
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains(&said)),
            "every engine words the refusal alike: {refused:?}"
        );
        assert!(fenced(refused), "b holds no lease");
        write(&store, "a", first.epoch, 0)
            .await
            .expect("the holder writes");

        leases.release(&a, first).await.expect("release");
        assert!(
            fenced(write(&store, "a", first.epoch, 1).await),
            "given up: fenced"
        );
        let second = leases
            .acquire(&b, 0, false)
            .await
            .expect("acquire")
            .expect("free again");
        assert!(
            second.epoch > first.epoch,
            "every change of hands moves the epoch"
        );
        assert!(
            fenced(write(&store, "a", first.epoch, 1).await),
            "the old holder"
        );
        assert!(
            fenced(write(&store, "a", second.epoch, 1).await),
            "the new epoch is b's, not a's"
        );
        write(&store, "b", second.epoch, 1)
            .await
            .expect("the new holder writes");
        assert_eq!(
            store.count().await.expect("count"),
            2,
            "no row of a fenced batch"
        );
        assert_eq!(store.offsets(TOPIC).await.expect("offsets")[&0], 2);
    }

    /// A lease runs out by the store's clock unless its holder renews it;
    /// then another member takes it and the old holder's heartbeat no
    /// longer renews it. A new run of an instance takes over its
    /// predecessor's live leases at once, a stranger cannot.
    pub async fn leases_run_out_and_a_new_run_takes_its_predecessors_over(engine: impl Engine) {
        let store = engine.open().await;
        let leases = store.leases().expect("this engine keeps leases");
        let short = member("a", "", Duration::from_millis(300));
        let b = member("b", "", LONG);
        let held = leases
            .acquire(&short, 0, false)
            .await
            .expect("acquire")
            .expect("free");
        let view = leases
            .heartbeat(&short, MemberState::Running, &[held])
            .await
            .expect("heartbeat");
        assert_eq!(view.renewed, vec![held], "its holder renews it");
        let deadline = Instant::now() + Duration::from_secs(10);
        let taken = loop {
            if let Some(lease) = leases.acquire(&b, 0, false).await.expect("acquire") {
                break lease;
            }
            assert!(Instant::now() < deadline, "the lease never ran out");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let view = leases
            .heartbeat(&short, MemberState::Running, &[held])
            .await
            .expect("heartbeat");
        assert!(
            view.renewed.is_empty(),
            "a lease another member took is not renewed"
        );
        assert_eq!(view.leases[&0].owner.as_deref(), Some("b"));

        let (run1, run2) = (member("x-1", "x", LONG), member("x-2", "x", LONG));
        let p1 = leases
            .acquire(&run1, 1, false)
            .await
            .expect("acquire")
            .expect("free");
        assert!(
            leases
                .acquire(&b, 1, true)
                .await
                .expect("acquire")
                .is_none(),
            "a stranger"
        );
        assert!(
            leases
                .acquire(&run2, 1, false)
                .await
                .expect("acquire")
                .is_none(),
            "not without takeover"
        );
        let p2 = leases
            .acquire(&run2, 1, true)
            .await
            .expect("acquire")
            .expect("its predecessor's");
        assert!(p2.epoch > p1.epoch);
        let _ = taken;
    }

    /// A heartbeat shows the live members, every lease and the offsets; a
    /// new run of an instance makes the old one's membership go; a member
    /// that leaves frees every lease it held at once.
    pub async fn the_group_is_seen_whole_and_leaving_frees_everything(engine: impl Engine) {
        let store = engine.open().await;
        let leases = store.leases().expect("this engine keeps leases");
        let (a, b) = (member("a", "x", LONG), member("b", "y", LONG));
        let mut held: Vec<Lease> = Vec::new();
        for p in [0, 1] {
            held.push(
                leases
                    .acquire(&a, p, false)
                    .await
                    .expect("acquire")
                    .expect("free"),
            );
        }
        leases
            .heartbeat(&a, MemberState::Running, &held)
            .await
            .expect("heartbeat");
        let view = leases
            .heartbeat(&b, MemberState::Loading, &[])
            .await
            .expect("heartbeat");
        let ids: Vec<&str> = view.members.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"], "live members in id order");
        assert_eq!(view.members[1].state, MemberState::Loading);
        assert!(
            view.leases
                .values()
                .all(|l| l.live && l.owner.as_deref() == Some("a"))
        );
        write(&store, "a", held[0].epoch, 0)
            .await
            .expect("a writes");
        let view = leases
            .heartbeat(&b, MemberState::Running, &[])
            .await
            .expect("heartbeat");
        assert_eq!(
            view.offsets.get(&0),
            Some(&1),
            "the offsets come with the view"
        );

        leases.join(&member("a2", "x", LONG)).await.expect("join");
        let view = leases
            .heartbeat(&b, MemberState::Running, &[])
            .await
            .expect("heartbeat");
        assert!(
            view.members.iter().all(|m| m.id != "a"),
            "replaced by its new run"
        );

        leases.leave(&a).await.expect("leave");
        for p in [0, 1] {
            assert!(
                leases
                    .acquire(&b, p, false)
                    .await
                    .expect("acquire")
                    .is_some(),
                "free at once"
            );
        }
        assert!(
            fenced(write(&store, "a", held[0].epoch, 1).await),
            "nothing after leaving"
        );
    }
}

/// The lease cases, for an engine whose store keeps leases.
#[macro_export]
macro_rules! lease_contract_tests {
    ($engine:ident) => {
        mod lease_contract {
            use super::$engine;
            use $crate::store::contract::leases as c;

            #[tokio::test]
            async fn a_lease_has_one_writer_and_fences_the_others() {
                c::a_lease_has_one_writer_and_fences_the_others($engine().await).await;
            }
            #[tokio::test]
            async fn leases_run_out_and_a_new_run_takes_its_predecessors_over() {
                c::leases_run_out_and_a_new_run_takes_its_predecessors_over($engine().await).await;
            }
            #[tokio::test]
            async fn the_group_is_seen_whole_and_leaving_frees_everything() {
                c::the_group_is_seen_whole_and_leaving_frees_everything($engine().await).await;
            }
        }
    };
}
