//! `/trades` and `/orderbook`: what matching the orders did.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi};
use uuid::Uuid;

use super::auth::{ApiKey, refused};
use super::problem::Problem;
use super::{ApiTags, AppState};
use crate::domain::StoredTrade;
use crate::domain::{Side, Symbol};
use crate::matching::{Level, Matcher};

/// One execution between a resting (maker) and an incoming (taker) order;
/// `taker_side` is the side of the incoming order.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Trade", example)]
pub struct TradeView {
    /// Derived from the two orders' ids: a replay or a retry names the
    /// trade the same, so it can never be counted twice.
    pub id: Uuid,
    pub symbol: String,
    /// The resting order's price: an exact decimal, as a string.
    pub price: String,
    /// An exact decimal, as a string.
    pub quantity: String,
    pub buy_order_id: Uuid,
    pub sell_order_id: Uuid,
    pub taker_side: Side,
    /// When the taker order was accepted (the same on every replay).
    pub executed_at: DateTime<Utc>,
}

impl From<StoredTrade> for TradeView {
    fn from(t: StoredTrade) -> Self {
        Self {
            id: t.trade.id,
            symbol: t.symbol,
            price: t.trade.price.normalize().to_string(),
            quantity: t.trade.quantity.normalize().to_string(),
            buy_order_id: t.trade.buy_order_id,
            sell_order_id: t.trade.sell_order_id,
            taker_side: t.trade.taker_side,
            executed_at: t.trade.executed_at,
        }
    }
}

impl Example for TradeView {
    fn example() -> Self {
        Self {
            id: Uuid::from_u128(0x5d1c_6a7e_2b3f_5a10_8c4d_9e2f_1a3b_4c5d),
            symbol: "USD-EUR".into(),
            price: "1.085".into(),
            quantity: "1000".into(),
            buy_order_id: Uuid::from_u128(0x019a_b5c2_7e10_7c3a_9f62_2a7d_4c1e_8b90),
            sell_order_id: Uuid::from_u128(0x019a_b5c2_7d02_7b11_8e40_1c6b_3d0f_7a81),
            taker_side: Side::Buy,
            executed_at: DateTime::from_timestamp(1_795_740_000, 123_456_000).unwrap_or_default(),
        }
    }
}

/// One page of a symbol's trades, in id order.
#[derive(Debug, Clone, Object)]
#[oai(rename = "TradePage", example)]
pub struct TradePage {
    pub trades: Vec<TradeView>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_after: Option<Uuid>,
}

impl Example for TradePage {
    fn example() -> Self {
        let trade = TradeView::example();
        Self {
            next_after: Some(trade.id),
            trades: vec![trade],
        }
    }
}

/// One price level of a book side: every order resting at that price.
#[derive(Debug, Clone, Object)]
#[oai(rename = "BookLevel")]
pub struct LevelView {
    /// An exact decimal, as a string.
    pub price: String,
    /// What rests at this price, all orders together.
    pub quantity: String,
    /// How many orders rest at this price.
    pub orders: u64,
}

impl From<Level> for LevelView {
    fn from(level: Level) -> Self {
        Self {
            price: level.price.normalize().to_string(),
            quantity: level.quantity.normalize().to_string(),
            orders: level.orders as u64,
        }
    }
}

/// The aggregated book of one symbol, best prices first.
#[derive(Debug, Clone, Object)]
#[oai(rename = "OrderBook", example)]
pub struct OrderBookView {
    pub symbol: String,
    /// Buy orders, highest price first.
    pub bids: Vec<LevelView>,
    /// Sell orders, lowest price first.
    pub asks: Vec<LevelView>,
}

impl Example for OrderBookView {
    fn example() -> Self {
        let level = |price: &str, quantity: &str, orders| LevelView {
            price: price.into(),
            quantity: quantity.into(),
            orders,
        };
        Self {
            symbol: "USD-EUR".into(),
            bids: vec![level("1.084", "2500", 2), level("1.083", "900", 1)],
            asks: vec![level("1.086", "1200", 1)],
        }
    }
}

#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "bad_trades_request")]
pub enum ListTradesResponse {
    /// A page of trades (possibly empty).
    #[oai(status = 200)]
    Ok(Json<TradePage>),
    /// A query parameter is missing or malformed.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// The store cannot be read right now.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u32),
    /// No API key, or one that is not valid or was revoked.
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>, #[oai(header = "WWW-Authenticate")] String),
    /// The key is over its rate or has too many requests in flight: retry
    /// after `Retry-After` seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Json<Problem>, #[oai(header = "Retry-After")] u32),
}

fn bad_trades_request(err: poem::Error) -> ListTradesResponse {
    refused!(err, ListTradesResponse, reads);
    ListTradesResponse::BadRequest(Json(Problem::malformed(err.to_string())))
}

#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "bad_book_request")]
pub enum OrderBookResponse {
    /// The book (both sides empty when nothing rests).
    #[oai(status = 200)]
    Ok(Json<OrderBookView>),
    /// The symbol or `depth` is malformed.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// This oms runs with `consumer.matching = false`: there is no book.
    #[oai(status = 501, content_type = "application/problem+json")]
    NotImplemented(Json<Problem>),
    /// The books are being rebuilt from the store (oms is starting), or the
    /// store cannot be read right now (an instance that does not own the
    /// symbol's partition reads the book from the store).
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u32),
    /// No API key, or one that is not valid or was revoked.
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>, #[oai(header = "WWW-Authenticate")] String),
    /// The key is over its rate or has too many requests in flight: retry
    /// after `Retry-After` seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Json<Problem>, #[oai(header = "Retry-After")] u32),
}

fn bad_book_request(err: poem::Error) -> OrderBookResponse {
    refused!(err, OrderBookResponse, reads);
    OrderBookResponse::BadRequest(Json(Problem::malformed(err.to_string())))
}

/// Trades and books.
pub struct TradingApi;

#[OpenApi(tag = "ApiTags::Trading")]
impl TradingApi {
    /// List a symbol's trades
    ///
    /// Trades of one symbol in id order, one page at a time: pass the
    /// previous page's `next_after` as `after`. Each trade is also published
    /// to the `trades` topic (key `SRC-DST`).
    #[oai(path = "/trades", method = "get", operation_id = "listTrades")]
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        _key: ApiKey,
        /// `SRC-DST`, e.g. `USD-EUR`.
        symbol: Query<Symbol>,
        /// Page size, 1 to 1000 (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// Return trades with an id greater than this one.
        after: Query<Option<Uuid>>,
    ) -> ListTradesResponse {
        let limit = limit.0.unwrap_or(100) as usize;
        match state.store.trades(symbol.0.as_str(), after.0, limit).await {
            Ok(trades) => {
                let next_after = (trades.len() == limit)
                    .then(|| trades.last().map(|t| t.trade.id))
                    .flatten();
                ListTradesResponse::Ok(Json(TradePage {
                    trades: trades.into_iter().map(TradeView::from).collect(),
                    next_after,
                }))
            }
            Err(err) => ListTradesResponse::Unavailable(
                Json(Problem::store_unavailable(&err)),
                state.retry_after_secs,
            ),
        }
    }

    /// Read a symbol's order book
    ///
    /// The best `depth` price levels of each side, aggregated: price, total
    /// quantity resting and number of orders. It reflects every order the
    /// consumer has matched (the store's view of the log).
    #[oai(
        path = "/orderbook/:symbol",
        method = "get",
        operation_id = "getOrderBook"
    )]
    async fn book(
        &self,
        state: Data<&Arc<AppState>>,
        _key: ApiKey,
        /// `SRC-DST`, e.g. `USD-EUR`.
        symbol: Path<Symbol>,
        /// Levels per side, 1 to 1000 (default 10).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        depth: Query<Option<u32>>,
    ) -> OrderBookResponse {
        if !state.matching {
            return OrderBookResponse::NotImplemented(Json(Problem::matching_off()));
        }
        let depth = depth.0.unwrap_or(10) as usize;
        let symbol = symbol.0.as_str();
        let (held, loaded) = {
            let books = state.books.lock().unwrap_or_else(|e| e.into_inner());
            (books.depth(symbol, depth), books.is_loaded())
        };
        if !loaded && !state.consumer.grouped() {
            return OrderBookResponse::Unavailable(
                Json(Problem::new(
                    poem::http::StatusCode::SERVICE_UNAVAILABLE,
                    "books-loading",
                    "the order books are being rebuilt from the store (oms is starting); retry shortly",
                )),
                state.retry_after_secs,
            );
        }
        let (bids, asks) = match held {
            Some(levels) => levels,
            // One instance owns every partition: no book is an empty book.
            None if !state.consumer.grouped() => (Vec::new(), Vec::new()),
            // Another instance matches this symbol: build its book from the
            // store's resting orders.
            None => match from_store(&state, symbol, depth).await {
                Ok(levels) => levels,
                Err(err) => {
                    return OrderBookResponse::Unavailable(
                        Json(Problem::store_unavailable(&err)),
                        state.retry_after_secs,
                    );
                }
            },
        };
        OrderBookResponse::Ok(Json(OrderBookView {
            symbol: symbol.to_owned(),
            bids: bids.into_iter().map(LevelView::from).collect(),
            asks: asks.into_iter().map(LevelView::from).collect(),
        }))
    }
}

/// A book rebuilt from the store's resting orders of every partition
/// (group mode, on an instance that does not own the symbol).
async fn from_store(
    state: &AppState,
    symbol: &str,
    depth: usize,
) -> Result<(Vec<Level>, Vec<Level>), crate::store::StoreError> {
    let mut matcher = Matcher::new();
    for partition in state.store.offsets(&state.topic).await?.keys() {
        let resting = state
            .store
            .resting(*partition)
            .await?
            .into_iter()
            .filter(|o| o.order.symbol() == symbol)
            .collect();
        matcher.load(*partition, resting);
    }
    Ok(matcher.depth(symbol, depth).unwrap_or_default())
}
