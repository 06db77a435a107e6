//! Orders that trade, through the API against a real broker: two crossing
//! orders make a trade at the resting price, statuses and fills follow, the
//! book shows what rests, a cancel takes the rest out (and a second one is
//! refused), and the trade is on the trades topic. A restarted oms rebuilds
//! its books from the store and goes on matching where it left off.

mod common;

use std::time::Duration;

use common::{TestApp, Trader, bootstrap, eventually, read_topic, settings};
use oms::feed::FeedRecord;
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

use common::usd_eur as order;

async fn json_of(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status(), status);
    resp.json().await.expect("json body")
}

/// Polls `GET /orders/{id}`, as the account that owns it, until its status is `status`.
async fn wait_status(app: &Trader, id: Uuid, status: &str) -> Value {
    eventually(WAIT, || async move {
        let resp = app.get(&format!("/orders/{id}")).await;
        let body: Value = resp.json().await.ok()?;
        (body["status"] == status).then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("order {id} did not become {status} within {WAIT:?}"))
}

async fn delete(app: &TestApp, path: &str) -> reqwest::Response {
    app.me().delete(path).await
}

#[tokio::test]
async fn crossing_orders_trade_and_a_cancel_takes_the_rest_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(settings(&bootstrap(), dir.path())).await;
    let (me, other) = (app.me(), app.other());

    let sell = app.accept(&order("sell", "1.10", "5")).await;
    let opened = wait_status(&me, sell, "open").await;
    assert_eq!(
        (&opened["filled_quantity"], &opened["remaining_quantity"]),
        (&json!("0"), &json!("5"))
    );
    // Another account buys: the two trade.
    let buy = other.accept(&order("buy", "1.20", "3")).await;
    let bought = wait_status(&other, buy, "filled").await;
    assert_eq!(
        (&bought["filled_quantity"], &bought["remaining_quantity"]),
        (&json!("3"), &json!("0"))
    );
    let sold = wait_status(&me, sell, "partially_filled").await;
    assert_eq!(
        (&sold["filled_quantity"], &sold["remaining_quantity"]),
        (&json!("3"), &json!("2"))
    );

    let page = json_of(app.get("/trades?symbol=USD-EUR").await, 200).await;
    let trades = page["trades"].as_array().expect("trades");
    assert_eq!(trades.len(), 1, "{page}");
    let trade = &trades[0];
    assert_eq!(trade["price"], "1.1", "the resting order's price");
    assert_eq!(trade["quantity"], "3");
    assert_eq!(trade["buy_order_id"], buy.to_string());
    assert_eq!(trade["sell_order_id"], sell.to_string());
    assert_eq!(trade["taker_side"], "buy");
    assert_eq!(trade["symbol"], "USD-EUR");
    assert!(trade["executed_at"].is_string());
    assert!(page.get("next_after").is_none(), "one page: {page}");
    let after = trade["id"].as_str().expect("trade id");
    let rest = json_of(
        app.get(&format!("/trades?symbol=USD-EUR&after={after}"))
            .await,
        200,
    )
    .await;
    assert_eq!(rest["trades"], json!([]));

    let book = json_of(app.get("/orderbook/USD-EUR?depth=5").await, 200).await;
    assert_eq!(book["bids"], json!([]));
    assert_eq!(
        book["asks"],
        json!([{"price": "1.1", "quantity": "2", "orders": 1}])
    );

    // The trade is on the trades topic, keyed by symbol, under its id.
    let records = read_topic(
        &app.settings.broker.bootstrap,
        &app.settings.broker.trades_topic,
    );
    let trades: Vec<_> = records
        .iter()
        .filter(|(_, v)| matches!(FeedRecord::decode(v), Some(FeedRecord::Trade(_))))
        .collect();
    assert_eq!(trades.len(), 1);
    assert_eq!(trades[0].0, "USD-EUR");
    let published: Value = serde_json::from_slice(&trades[0].1).expect("json");
    assert_eq!(published["id"], trade["id"]);
    // Beside it, the feed's record of each batch that changed the symbol.
    assert!(
        records
            .iter()
            .all(|(key, v)| key == "USD-EUR" && FeedRecord::decode(v).is_some())
    );
    assert!(records.len() > 1);

    // Cancel: accepted, then the order leaves the book with what had filled.
    let resp = delete(&app, &format!("/orders/{sell}")).await;
    assert_eq!(
        resp.headers()["location"],
        format!("/orders/{sell}").as_str()
    );
    json_of(resp, 202).await;
    let cancelled = wait_status(&me, sell, "cancelled").await;
    assert_eq!(
        (
            &cancelled["filled_quantity"],
            &cancelled["remaining_quantity"]
        ),
        (&json!("3"), &json!("0"))
    );
    let book = json_of(app.get("/orderbook/USD-EUR").await, 200).await;
    assert_eq!((&book["bids"], &book["asks"]), (&json!([]), &json!([])));

    // Cancelling what is closed is a conflict; an unknown id is not found.
    for (owner, closed) in [(&me, sell), (&other, buy)] {
        let resp = owner.delete(&format!("/orders/{closed}")).await;
        assert_eq!(resp.status(), 409);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with("application/problem+json")
        );
    }
    assert_eq!(
        delete(&app, &format!("/orders/{}", Uuid::now_v7()))
            .await
            .status(),
        404
    );
    assert_eq!(delete(&app, "/orders/not-a-uuid").await.status(), 400);
    assert_eq!(app.get("/orderbook/usd-eur").await.status(), 400);

    // A buy that would have met the cancelled sell finds nothing to meet.
    let late = other.accept(&order("buy", "1.10", "1")).await;
    wait_status(&other, late, "open").await;
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_repeated_cancel_is_harmless() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(settings(&bootstrap(), dir.path())).await;
    let id = app.accept(&order("sell", "2", "4")).await;
    wait_status(&app.me(), id, "open").await;
    // Both are accepted while the order is open; the second finds it gone.
    json_of(delete(&app, &format!("/orders/{id}")).await, 202).await;
    let second = delete(&app, &format!("/orders/{id}")).await;
    assert!(
        matches!(second.status().as_u16(), 202 | 409),
        "{}",
        second.status()
    );
    let cancelled = wait_status(&app.me(), id, "cancelled").await;
    assert_eq!(cancelled["filled_quantity"], "0");
    app.wait_caught_up(WAIT).await;
    assert_eq!(delete(&app, &format!("/orders/{id}")).await.status(), 409);
    // A cancel on the log is not an order: nothing more is stored.
    assert_eq!(app.store.count().await.expect("count"), 1);
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_restarted_oms_rebuilds_its_books_from_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = settings(&bootstrap(), dir.path());
    let app = TestApp::spawn(cfg.clone()).await;
    let resting = app.accept(&order("sell", "3.5", "10")).await;
    let partly = app.other().accept(&order("buy", "3.6", "4")).await;
    wait_status(&app.other(), partly, "filled").await;
    wait_status(&app.me(), resting, "partially_filled").await;
    app.stop().await.expect("clean stop");

    let app = TestApp::spawn(cfg).await;
    // 503 while the books are rebuilt at start, then the book as it was.
    let book: Value = eventually(WAIT, || async {
        let resp = app.get("/orderbook/USD-EUR").await;
        if resp.status() == 503 {
            return None;
        }
        Some(json_of(resp, 200).await)
    })
    .await
    .expect("the books are rebuilt");
    assert_eq!(
        book["asks"],
        json!([{"price": "3.5", "quantity": "6", "orders": 1}]),
        "the book as it was"
    );
    let taker = app.other().accept(&order("buy", "4", "6")).await;
    wait_status(&app.other(), taker, "filled").await;
    let done = wait_status(&app.me(), resting, "filled").await;
    assert_eq!(done["filled_quantity"], "10");
    let page = json_of(app.get("/trades?symbol=USD-EUR").await, 200).await;
    assert_eq!(page["trades"].as_array().map(Vec::len), Some(2));
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn with_matching_off_orders_are_only_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = settings(&bootstrap(), dir.path());
    cfg.consumer.matching = false;
    let app = TestApp::spawn(cfg).await;
    let sell = app.accept(&order("sell", "1", "1")).await;
    let buy = app.accept(&order("buy", "2", "1")).await;
    app.wait_for_order(buy, WAIT).await.expect("stored");
    let sold = app.wait_for_order(sell, WAIT).await.expect("stored");
    assert_eq!(sold["status"], "open");
    let page = json_of(app.get("/trades?symbol=USD-EUR").await, 200).await;
    assert_eq!(page["trades"], json!([]));
    assert_eq!(delete(&app, &format!("/orders/{sell}")).await.status(), 501);
    assert_eq!(app.get("/orderbook/USD-EUR").await.status(), 501);
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_order_never_trades_with_its_own_account_the_resting_one_is_cancelled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(settings(&bootstrap(), dir.path())).await;
    let (me, other) = (app.me(), app.other());
    // My sell rests at the best price, the other account's behind it.
    let mine = me.accept(&order("sell", "2.00", "5")).await;
    wait_status(&me, mine, "open").await;
    let theirs = other.accept(&order("sell", "2.00", "5")).await;
    wait_status(&other, theirs, "open").await;
    // My buy crosses both: it cancels my own sell and trades with theirs.
    let buy = me.accept(&order("buy", "2.00", "3")).await;
    wait_status(&me, buy, "filled").await;
    let cancelled = wait_status(&me, mine, "cancelled").await;
    assert_eq!(
        (
            &cancelled["filled_quantity"],
            &cancelled["remaining_quantity"]
        ),
        (&json!("0"), &json!("0"))
    );
    let sold = wait_status(&other, theirs, "partially_filled").await;
    assert_eq!(sold["filled_quantity"], "3");
    let page = json_of(app.get("/trades?symbol=USD-EUR").await, 200).await;
    let trades = page["trades"].as_array().expect("trades");
    assert_eq!(trades.len(), 1, "{page}");
    assert_eq!(trades[0]["sell_order_id"], theirs.to_string());
    assert_eq!(trades[0]["buy_order_id"], buy.to_string());
    let book = json_of(app.get("/orderbook/USD-EUR").await, 200).await;
    assert_eq!(
        book["asks"],
        json!([{"price": "2", "quantity": "2", "orders": 1}]),
        "only their rest is left"
    );
    let matched = common::check_matching(&app, &["USD-EUR"]).await;
    assert_eq!(matched.trades, 1, "the reference matcher agrees");
    app.stop().await.expect("clean stop");
}

/// `order` with `terms` merged in (a market order: `"price": null` drops it).
fn with_terms(mut body: Value, terms: Value) -> Value {
    for (field, value) in terms.as_object().expect("terms") {
        if value.is_null() {
            body.as_object_mut().expect("order").remove(field);
        } else {
            body[field] = value.clone();
        }
    }
    body
}

#[tokio::test]
async fn market_and_ioc_orders_take_what_the_book_has_and_the_rest_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(settings(&bootstrap(), dir.path())).await;
    let (me, other) = (app.me(), app.other());
    let cheap = other.accept(&order("sell", "1.10", "2")).await;
    wait_status(&other, cheap, "open").await;
    let dear = other.accept(&order("sell", "1.30", "3")).await;
    wait_status(&other, dear, "open").await;

    // ioc at 1.20: takes the 2 at 1.10, the rest expires instead of resting.
    let ioc = me
        .accept(&with_terms(
            order("buy", "1.20", "4"),
            json!({"time_in_force": "ioc"}),
        ))
        .await;
    let done = wait_status(&me, ioc, "expired").await;
    assert_eq!(
        (
            &done["reason"],
            &done["filled_quantity"],
            &done["remaining_quantity"],
            &done["time_in_force"]
        ),
        (
            &json!("ioc_remainder"),
            &json!("2"),
            &json!("0"),
            &json!("ioc")
        ),
        "{done}"
    );
    wait_status(&other, cheap, "filled").await;
    // Nothing left to cancel.
    assert_eq!(me.delete(&format!("/orders/{ioc}")).await.status(), 409);

    // A market buy of 5 takes every price: the 3 at 1.30, then the book is empty.
    let market = me
        .accept(&with_terms(
            order("buy", "1", "5"),
            json!({"type": "market", "price": null}),
        ))
        .await;
    let done = wait_status(&me, market, "expired").await;
    assert_eq!(
        (
            &done["reason"],
            &done["filled_quantity"],
            &done["type"],
            done.get("price")
        ),
        (
            &json!("market_remainder"),
            &json!("3"),
            &json!("market"),
            None
        ),
        "{done}"
    );
    wait_status(&other, dear, "filled").await;
    let book = json_of(app.get("/orderbook/USD-EUR").await, 200).await;
    assert_eq!(
        (&book["bids"], &book["asks"]),
        (&json!([]), &json!([])),
        "neither rests"
    );
    let page = json_of(app.get("/trades?symbol=USD-EUR").await, 200).await;
    assert_eq!(
        page["trades"].as_array().expect("trades").len(),
        2,
        "{page}"
    );
    let matched = common::check_matching(&app, &["USD-EUR"]).await;
    assert_eq!(matched.trades, 2, "the reference matcher agrees");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn fok_fills_whole_or_not_at_all_and_post_only_never_trades() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(settings(&bootstrap(), dir.path())).await;
    let (me, other) = (app.me(), app.other());
    let ask = other.accept(&order("sell", "2.00", "3")).await;
    wait_status(&other, ask, "open").await;

    // fok for 4 where 3 rest: nothing trades, the ask is untouched.
    let kill = me
        .accept(&with_terms(
            order("buy", "2.00", "4"),
            json!({"time_in_force": "fok"}),
        ))
        .await;
    let done = wait_status(&me, kill, "expired").await;
    assert_eq!(
        (&done["reason"], &done["filled_quantity"]),
        (&json!("fok_not_fillable"), &json!("0"))
    );
    // post_only that would trade: rejected, nothing trades.
    let post = me
        .accept(&with_terms(
            order("buy", "2.00", "1"),
            json!({"post_only": true}),
        ))
        .await;
    let done = wait_status(&me, post, "rejected").await;
    assert_eq!(done["reason"], "post_only_would_trade");
    assert_eq!(
        wait_status(&other, ask, "open").await["filled_quantity"],
        "0"
    );
    // post_only below the ask rests like any limit order.
    let maker = me
        .accept(&with_terms(
            order("buy", "1.90", "1"),
            json!({"post_only": true}),
        ))
        .await;
    let rests = wait_status(&me, maker, "open").await;
    assert_eq!(rests["post_only"], true);
    assert!(rests.get("reason").is_none(), "{rests}");
    // A market fok for exactly what rests fills whole.
    let fill = me
        .accept(&with_terms(
            order("buy", "1", "3"),
            json!({"type": "market", "price": null, "time_in_force": "fok"}),
        ))
        .await;
    wait_status(&me, fill, "filled").await;
    wait_status(&other, ask, "filled").await;
    let matched = common::check_matching(&app, &["USD-EUR"]).await;
    assert_eq!(matched.trades, 1, "the reference matcher agrees");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn terms_that_contradict_each_other_are_refused_with_every_field_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(settings(&bootstrap(), dir.path())).await;
    let market = |terms: Value| {
        with_terms(
            order("buy", "1", "1"),
            with_terms(json!({"type": "market", "price": null}), terms),
        )
    };
    for (body, fields) in [
        (market(json!({"price": "1.5"})), vec!["price"]),
        (
            market(json!({"time_in_force": "gtc"})),
            vec!["time_in_force"],
        ),
        (market(json!({"post_only": true})), vec!["post_only"]),
        (
            with_terms(order("buy", "1", "1"), json!({"price": null})),
            vec!["price"],
        ),
        (
            with_terms(
                order("buy", "1", "1"),
                json!({"type": "stop", "time_in_force": "day"}),
            ),
            vec!["type", "time_in_force"],
        ),
    ] {
        let resp = app.post_json(&body).await;
        let problem = json_of(resp, 422).await;
        let named: Vec<&str> = problem["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| e["field"].as_str().expect("field"))
            .collect();
        assert_eq!(named, fields, "{body}: {problem}");
    }
    app.stop().await.expect("clean stop");
}
