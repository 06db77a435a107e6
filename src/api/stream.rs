//! `GET /stream`: the live feed as Server-Sent Events — trades, the top of
//! each book, and the caller's own order updates, each with its log
//! position as its id (`src/feed`).
//!
//! Server-Sent Events rather than WebSocket: the feed flows one way; a
//! browser's `EventSource` reconnects on its own and sends the last id it
//! saw as `Last-Event-ID`, which is exactly the resume this feed offers;
//! it is plain HTTP/1.1, so nginx, curl and every HTTP client carry it
//! unchanged. What `EventSource` cannot do is send an `Authorization`
//! header, so this one operation also takes the key as `?key=`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use poem::Request;
use poem::web::Data;
use poem::web::sse::Event;
use poem_openapi::auth::ApiKey as QueryApiKey;
use poem_openapi::param::{Header, Query};
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::{ApiResponse, Object, OpenApi, SecurityScheme, Union};
use uuid::Uuid;

use super::auth::{ApiKey, refused};
use super::fields::{ReasonView, StatusView};
use super::problem::Problem;
use super::trading::{LevelView, TradeView};
use super::{ApiTags, AppState};
use crate::auth::Caller;
use crate::domain::Symbol;
use crate::feed::{Cursor, Delivery, FeedError, FeedEvent, Subscription};

/// The API key as the `key` query parameter: for `EventSource`, which
/// cannot send headers. Prefer `Authorization: Bearer` where a client can.
#[derive(SecurityScheme)]
#[oai(
    ty = "api_key",
    key_name = "key",
    key_in = "query",
    checker = "check_query_key",
    rename = "ApiKeyQuery"
)]
pub struct QueryKey(pub Caller);

async fn check_query_key(req: &Request, key: QueryApiKey) -> poem::Result<Caller> {
    super::auth::check(req, &key.key)
}

/// The stream's key: `?key=` or `Authorization: Bearer` (the query is
/// tried first, so a bearer key's refusal is the one reported).
#[derive(SecurityScheme)]
pub enum StreamKey {
    Query(QueryKey),
    Bearer(ApiKey),
}

impl StreamKey {
    fn caller(&self) -> &Caller {
        match self {
            StreamKey::Query(QueryKey(c)) | StreamKey::Bearer(ApiKey(c)) => c,
        }
    }
}

/// A trade (SSE `event: trade`).
#[derive(Debug, Clone, Object)]
pub struct TradeEvent {
    #[oai(skip)]
    pub id: String,
    #[oai(flatten)]
    pub trade: TradeView,
}

/// The best levels of a symbol's book after a batch that changed it (SSE
/// `event: book`).
#[derive(Debug, Clone, Object)]
pub struct BookEvent {
    #[oai(skip)]
    pub id: String,
    pub symbol: String,
    /// Buy orders, highest price first (at most 10 levels).
    pub bids: Vec<LevelView>,
    /// Sell orders, lowest price first (at most 10 levels).
    pub asks: Vec<LevelView>,
}

/// One of the caller's orders changed (SSE `event: order`): its status
/// and fill after the batch that changed it.
#[derive(Debug, Clone, Object)]
pub struct OrderEvent {
    #[oai(skip)]
    pub id: String,
    pub symbol: String,
    pub order_id: Uuid,
    pub status: StatusView,
    #[oai(skip_serializing_if_is_none)]
    pub reason: Option<ReasonView>,
    /// An exact decimal, as a string.
    pub filled_quantity: String,
}

/// The feed dropped this client (SSE `event: dropped`, the last one): it
/// read too slowly. Reconnect with the id of the last event received.
#[derive(Debug, Clone, Object)]
pub struct DroppedEvent {
    pub reason: String,
}

/// One event of the feed; `event` names its kind, as the SSE event type does.
#[derive(Debug, Clone, Union)]
#[oai(discriminator_name = "event")]
pub enum StreamEvent {
    #[oai(mapping = "trade")]
    Trade(TradeEvent),
    #[oai(mapping = "book")]
    Book(BookEvent),
    #[oai(mapping = "order")]
    Order(OrderEvent),
    #[oai(mapping = "dropped")]
    Dropped(DroppedEvent),
}

impl StreamEvent {
    fn of(delivery: Delivery) -> Self {
        match delivery {
            Delivery::Dropped { reason } => StreamEvent::Dropped(DroppedEvent { reason }),
            Delivery::Event { id, event } => match event {
                FeedEvent::Trade(t) => StreamEvent::Trade(TradeEvent {
                    id,
                    trade: t.into(),
                }),
                FeedEvent::Book { symbol, bids, asks } => StreamEvent::Book(BookEvent {
                    id,
                    symbol,
                    bids: bids.into_iter().map(LevelView::from).collect(),
                    asks: asks.into_iter().map(LevelView::from).collect(),
                }),
                FeedEvent::Order { symbol, update } => StreamEvent::Order(OrderEvent {
                    id,
                    symbol,
                    order_id: update.order_id,
                    status: update.status.into(),
                    reason: update.reason.map(Into::into),
                    filled_quantity: update.filled_quantity.normalize().to_string(),
                }),
            },
        }
    }

    /// The SSE event: its kind as the event type, its position as the id.
    fn into_sse(self) -> Event {
        use poem_openapi::types::ToJSON;
        let data = self.to_json_string();
        let (kind, id) = match &self {
            StreamEvent::Trade(e) => ("trade", Some(&e.id)),
            StreamEvent::Book(e) => ("book", Some(&e.id)),
            StreamEvent::Order(e) => ("order", Some(&e.id)),
            StreamEvent::Dropped(_) => ("dropped", None),
        };
        let event = Event::message(data).event_type(kind);
        match id {
            Some(id) => event.id(id.clone()),
            None => event,
        }
    }
}

#[derive(ApiResponse)]
#[oai(bad_request_handler = "bad_stream_request")]
pub enum StreamResponse {
    /// `text/event-stream`, open until the client goes: events `trade`,
    /// `book` and `order`, each with its position as its `id`, and
    /// `dropped` (with a reason) if the client falls too far behind.
    #[oai(status = 200)]
    Ok(EventStream<BoxStream<'static, StreamEvent>>),
    /// A symbol, an event kind or `Last-Event-ID` is malformed.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// This oms runs with `consumer.matching = false`: nothing trades.
    #[oai(status = 501, content_type = "application/problem+json")]
    NotImplemented(Json<Problem>),
    /// This instance serves `feed.max_clients` already, or the broker did
    /// not answer.
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

fn bad_stream_request(err: poem::Error) -> StreamResponse {
    refused!(err, StreamResponse, reads);
    StreamResponse::BadRequest(Json(Problem::malformed(err.to_string())))
}

fn bad(detail: String) -> StreamResponse {
    StreamResponse::BadRequest(Json(Problem::malformed(detail)))
}

/// The live feed.
pub struct StreamApi;

#[OpenApi(tag = "ApiTags::Trading")]
impl StreamApi {
    /// Follow trades, books and your orders live
    ///
    /// Server-Sent Events read from the log (the `trades` topic), so every
    /// instance serves the same events and a restart loses none. Each event
    /// carries its log position as its `id`: reconnect with
    /// `Last-Event-ID` (browsers' `EventSource` does it on its own) and the
    /// stream goes on after that event — every event once, in order.
    /// Without one it starts now. `order` events are the caller's own
    /// orders only.
    #[oai(path = "/stream", method = "get", operation_id = "stream")]
    async fn stream(
        &self,
        state: Data<&Arc<AppState>>,
        key: StreamKey,
        /// Only these symbols, comma-separated (`USD-EUR,GBP-EUR`; default: all).
        symbols: Query<Option<String>>,
        /// Only these kinds, comma-separated, of `trade`, `book`, `order` (default: all).
        events: Query<Option<String>>,
        /// Resume after this event (the id of the last event received).
        #[oai(name = "Last-Event-ID")]
        last_event_id: Header<Option<String>>,
        /// The same as `Last-Event-ID`, for a first connection that resumes
        /// (the header wins when both are sent).
        after: Query<Option<String>>,
    ) -> StreamResponse {
        if !state.matching {
            return StreamResponse::NotImplemented(Json(Problem::matching_off()));
        }
        let symbols = match symbols.0.as_deref().map(parse_symbols).transpose() {
            Ok(symbols) => symbols,
            Err(detail) => return bad(detail),
        };
        let (mut trades, mut books, mut orders) = (true, true, true);
        if let Some(kinds) = events.0.as_deref() {
            (trades, books, orders) = (false, false, false);
            for kind in kinds.split(',').map(str::trim) {
                match kind {
                    "trade" => trades = true,
                    "book" => books = true,
                    "order" => orders = true,
                    other => {
                        return bad(format!(
                            "unknown event kind {other:?}: the kinds are trade, book and order"
                        ));
                    }
                }
            }
        }
        let after = match last_event_id.0.or(after.0).filter(|s| !s.is_empty()) {
            Some(id) => match id.parse::<Cursor>() {
                Ok(cursor) => Some(cursor),
                Err(err) => return bad(err.to_string()),
            },
            None => None,
        };
        let sub = Subscription {
            account: key.caller().account.clone(),
            symbols,
            trades,
            books,
            orders,
            after,
        };
        match state.feed.subscribe(sub).await {
            Ok(stream) => StreamResponse::Ok(
                EventStream::new(stream.map(StreamEvent::of).boxed())
                    .keep_alive(Duration::from_secs(15))
                    .to_event(StreamEvent::into_sse),
            ),
            Err(err @ FeedError::Busy(_)) => StreamResponse::Unavailable(
                Json(Problem::new(
                    poem::http::StatusCode::SERVICE_UNAVAILABLE,
                    "feed-busy",
                    err.to_string(),
                )),
                state.retry_after_secs,
            ),
            Err(err) => StreamResponse::Unavailable(
                Json(Problem::new(
                    poem::http::StatusCode::SERVICE_UNAVAILABLE,
                    "broker-unavailable",
                    crate::error::Chain(&err).to_string(),
                )),
                state.retry_after_secs,
            ),
        }
    }
}

fn parse_symbols(list: &str) -> Result<HashSet<String>, String> {
    list.split(',')
        .map(str::trim)
        .map(|s| {
            s.parse::<Symbol>()
                .map(|symbol| symbol.to_string())
                .map_err(|b| format!("symbols: {s:?} {}", b.message))
        })
        .collect()
}
