//! The live feed (`GET /stream`, Server-Sent Events) against a real broker:
//! a subscriber sees the trade of two crossing orders, the book and its
//! own orders' updates (never another account's); it resumes with
//! `Last-Event-ID` exactly after the last event it saw, with the key in
//! the query as `EventSource` sends it; and after a kill -9 of oms the
//! resumed feed holds every trade the store holds, none twice.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{
    OTHER_KEY, OmsProcess, TEST_KEY, TestApp, bootstrap, client_with, free_port, serve_args,
    settings,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

/// One event as the feed sent it.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: Option<String>,
    event: String,
    data: Value,
}

/// A subscription: its events as they arrive, read by a task of its own
/// (aborted on drop, which closes the connection).
struct Feed {
    events: mpsc::UnboundedReceiver<Sse>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// `GET {base}/stream{query}`, resuming after `last` if given; the answer
/// must be a `200` event stream.
async fn subscribe(base: &str, key: &str, query: &str, last: Option<&str>) -> Feed {
    // An empty key: none in a header (the query carries it).
    let resp = open(base, (!key.is_empty()).then_some(key), query, last).await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let (tx, events) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        let mut buffer = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                // Keep-alive comments carry no data.
                if data.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data).expect("an event's data is JSON");
                if tx.send(Sse { id, event, data }).is_err() {
                    return;
                }
            }
        }
    });
    Feed { events, reader }
}

async fn open(base: &str, key: Option<&str>, query: &str, last: Option<&str>) -> reqwest::Response {
    let client = match key {
        Some(key) => client_with(key, Duration::from_secs(300)),
        None => reqwest::Client::new(),
    };
    let mut req = client.get(format!("{base}/stream{query}"));
    if let Some(last) = last {
        req = req.header("Last-Event-ID", last);
    }
    req.send().await.expect("GET /stream")
}

impl Feed {
    /// Events until `done` holds for the events so far, within [`WAIT`].
    async fn until(&mut self, done: impl Fn(&[Sse]) -> bool) -> Vec<Sse> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while !done(&seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(event)) => seen.push(event),
                Ok(None) => panic!("the feed ended; events so far: {seen:#?}"),
                Err(_) => {
                    panic!("the feed did not deliver within {WAIT:?}; events so far: {seen:#?}")
                }
            }
        }
        seen
    }
}

use common::usd_eur as order;

fn has_order(events: &[Sse], id: uuid::Uuid, status: &str) -> bool {
    events.iter().any(|e| {
        e.event == "order" && e.data["order_id"] == id.to_string() && e.data["status"] == status
    })
}

fn trades(events: &[Sse]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "trade")
        .map(|e| e.data["id"].as_str().expect("a trade id").to_owned())
        .collect()
}

#[tokio::test]
async fn a_subscriber_sees_trades_books_and_its_own_orders_and_resumes_after_its_last_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TestApp::spawn(settings(&bootstrap(), dir.path())).await;
    let (me, other) = (app.me(), app.other());
    let mut feed = subscribe(&app.base, TEST_KEY, "?symbols=USD-EUR", None).await;

    let sell = me.accept(&order("sell", "1.10", "5")).await;
    // Matched on its own first (an update is an order's state after its
    // batch: in one batch with the buy, `open` would never be shown).
    let resting = feed.until(|seen| has_order(seen, sell, "open")).await;
    let buy = other.accept(&order("buy", "1.20", "3")).await;
    // The batch's records: the trade, then my order's update and the book.
    let first = feed
        .until(|seen| {
            has_order(seen, sell, "partially_filled")
                && !trades(seen).is_empty()
                && seen.last().is_some_and(|e| e.event == "book")
        })
        .await;
    let first: Vec<Sse> = resting.into_iter().chain(first).collect();
    let trade = first.iter().find(|e| e.event == "trade").expect("a trade");
    assert_eq!(
        (
            &trade.data["sell_order_id"],
            &trade.data["buy_order_id"],
            &trade.data["price"],
            &trade.data["quantity"]
        ),
        (
            &json!(sell.to_string()),
            &json!(buy.to_string()),
            &json!("1.1"),
            &json!("3")
        )
    );
    assert!(
        first.iter().all(|e| e.data["order_id"] != buy.to_string()),
        "another account's order is not in my feed: {first:#?}"
    );
    let book = first
        .iter()
        .rev()
        .find(|e| e.event == "book")
        .expect("a book event");
    assert_eq!(book.data["symbol"], "USD-EUR");
    assert_eq!(
        book.data["asks"],
        json!([{"price": "1.1", "quantity": "2", "orders": 1}])
    );
    assert!(
        first.iter().all(|e| e.id.is_some()),
        "every event has its position as its id"
    );
    let last = first.last().and_then(|e| e.id.clone()).expect("an id");
    drop(feed);

    // While away: the rest of my sell fills.
    let buy2 = other.accept(&order("buy", "1.20", "2")).await;
    common::eventually(WAIT, || async {
        let body: Value = me.get(&format!("/orders/{sell}")).await.json().await.ok()?;
        (body["status"] == "filled").then_some(())
    })
    .await
    .expect("the sell fills");

    // Back, with the key as `EventSource` sends it and the last id seen.
    let mut feed = subscribe(
        &app.base,
        "",
        &format!("?key={TEST_KEY}&symbols=USD-EUR"),
        Some(&last),
    )
    .await;
    let resumed = feed.until(|seen| has_order(seen, sell, "filled")).await;
    let again: Vec<_> = resumed.iter().filter(|e| first.contains(e)).collect();
    assert!(
        again.is_empty(),
        "events seen twice after the resume: {again:#?}"
    );
    let resumed_trades: Vec<_> = resumed.iter().filter(|e| e.event == "trade").collect();
    assert_eq!(resumed_trades.len(), 1, "{resumed:#?}");
    assert_eq!(resumed_trades[0].data["buy_order_id"], buy2.to_string());
    drop(feed);

    // Refusals: no key, a bad position, an unknown kind or symbol.
    let resp = open(&app.base, None, "", None).await;
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    for (query, last) in [
        ("", Some("nonsense")),
        ("?events=quotes", None),
        ("?symbols=usd", None),
    ] {
        let resp = open(&app.base, Some(TEST_KEY), query, last).await;
        assert_eq!(resp.status(), 400, "{query} {last:?}");
    }
    app.stop().await.expect("clean stop");
}

/// A pair that trades one for one: the other account's sell, then my buy,
/// each retried until acknowledged (the daemon may be restarting).
async fn cross(me: &reqwest::Client, other: &reqwest::Client, base: &str, n: usize) {
    for (client, side) in [(other, "sell"), (me, "buy")] {
        let mut body = order(side, "1.00", "1");
        body["client_order_id"] = json!(format!("feed-{n}-{side}"));
        let deadline = Instant::now() + WAIT;
        loop {
            let sent = client
                .post(format!("{base}/orders"))
                .json(&body)
                .send()
                .await;
            if sent.is_ok_and(|r| r.status() == 202) {
                break;
            }
            assert!(Instant::now() < deadline, "order {n} {side} not accepted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn after_a_kill_9_the_resumed_feed_holds_every_trade_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = settings(&bootstrap(), &dir.path().join("store"));
    oms::broker::admin::create_topics(&cfg.broker)
        .await
        .expect("topics");
    let port = free_port();
    let log = dir.path().join("oms.log");
    let args = serve_args(&cfg);
    let base = format!("http://127.0.0.1:{port}");
    let me = client_with(TEST_KEY, Duration::from_secs(10));
    let other = client_with(OTHER_KEY, Duration::from_secs(10));
    let daemon = OmsProcess::start(port, &args, &log).await;
    let mut feed = subscribe(&base, TEST_KEY, "?events=trade,order", None).await;
    for n in 0..20 {
        cross(&me, &other, &base, n).await;
    }
    let before = feed.until(|seen| trades(seen).len() >= 10).await;
    let last = before.last().and_then(|e| e.id.clone()).expect("an id");
    // Killed mid-stream, while more orders arrive: its consumer may have
    // published a batch's records it never stored, and publishes them again.
    let more = tokio::spawn({
        let (me, other, base) = (me.clone(), other.clone(), base.clone());
        async move {
            for n in 20..40 {
                cross(&me, &other, &base, n).await;
            }
        }
    });
    daemon.kill9();
    drop(feed);
    let daemon = OmsProcess::start(port, &args, &log).await;
    more.await.expect("the second half is accepted");

    let mut feed = subscribe(&base, TEST_KEY, "?events=trade,order", Some(&last)).await;
    let after = feed
        .until(|seen| trades(before.as_slice()).len() + trades(seen).len() >= 40)
        .await;
    let mut all = before.clone();
    all.extend(after);
    let shown = trades(&all);
    let unique: HashSet<_> = shown.iter().collect();
    assert_eq!(unique.len(), shown.len(), "a trade shown twice: {shown:?}");
    // The feed is published before the store commits: the store catches up.
    let stored: HashSet<String> = common::eventually(WAIT, || async {
        let page: Value = me
            .get(format!("{base}/trades?symbol=USD-EUR&limit=1000"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let ids: HashSet<String> = page["trades"]
            .as_array()?
            .iter()
            .filter_map(|t| t["id"].as_str().map(str::to_owned))
            .collect();
        (ids.len() >= 40).then_some(ids)
    })
    .await
    .expect("the store holds the trades");
    assert_eq!(stored.len(), 40, "one trade per pair");
    assert_eq!(
        unique.into_iter().cloned().collect::<HashSet<_>>(),
        stored,
        "the feed and the store hold the same trades"
    );
    let updates: Vec<_> = all
        .iter()
        .filter(|e| e.event == "order")
        .map(|e| {
            (
                e.data["order_id"].clone(),
                e.data["status"].clone(),
                e.data["filled_quantity"].clone(),
            )
        })
        .collect();
    let distinct: HashSet<_> = updates
        .iter()
        .map(|u| u.0.to_string() + &u.1.to_string() + &u.2.to_string())
        .collect();
    assert_eq!(distinct.len(), updates.len(), "an order update shown twice");
    drop(feed);
    drop(daemon);
}
