//! `/orders`: submit an order, read one back, list a symbol's orders.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{Example, ParseError, ParseFromJSON, ParseResult, Type};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, Union};
use uuid::Uuid;

use super::auth::{ApiKey, refused};
use super::fields::{ReasonView, StatusView};
use super::problem::Problem;
use super::{ApiTags, AppState};
use crate::broker::producer::ProduceError;
use crate::domain::StoredOrder;
use crate::domain::{
    Account, Amount, Cancel, Channel, ClientOrderId, Currency, Description, NewOrder, OrderType,
    Side, Symbol, TimeInForce,
};

// The API's document of [`NewOrder`]: two shapes, a limit order and a
// market order, whose fields together are `NewOrder::FIELDS` (a test ties
// them), each with the schema its rules build. `oneOf` states the rules
// between the fields that a single object could not: a limit order has a
// price, a market order has none, never rests (`ioc` or `fok`) and is never
// `post_only` (each shape refuses other properties, `api::spec`).
/// An order to submit: a limit order (`type` absent or `limit`) or a market
/// order (`type: market`). Unknown fields are refused (a misspelt
/// `client_order_id` must not silently turn idempotency off).
#[derive(Debug, Clone, PartialEq, Eq, Union)]
#[oai(rename = "NewOrder", one_of)]
pub enum NewOrderSchema {
    Limit(NewLimitOrder),
    Market(NewMarketOrder),
}

/// `limit` (the default): the one value of a limit order's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum LimitType {
    Limit,
}

/// `market`: the one value of a market order's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum MarketType {
    Market,
}

/// A market order never rests: `ioc` (the default: what the book cannot
/// fill at once expires) or `fok` (all of it at once, or none of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum MarketTimeInForce {
    Ioc,
    Fok,
}

/// A limit order: it trades at its price or better. What does not fill at
/// once rests (`gtc`, the default), expires (`ioc`), or — `fok` — nothing
/// trades unless all of it can. `post_only`: rejected instead if it would
/// trade on arrival.
#[derive(Debug, Clone, PartialEq, Eq, Object)]
#[oai(deny_unknown_fields, example)]
pub struct NewLimitOrder {
    /// Currency given.
    pub src_currency: Currency,
    /// Currency received: a currency code, different from `src_currency`.
    pub dst_currency: Currency,
    pub side: Side,
    /// Limit price: an exact decimal greater than zero, as a string.
    pub price: Amount,
    pub quantity: Amount,
    pub channel: Channel,
    #[oai(default)]
    pub description: Description,
    #[oai(skip_serializing_if_is_none)]
    pub client_order_id: Option<ClientOrderId>,
    // Enum fields carry neither a description nor a default: either makes
    // poem-openapi wrap the reference in an `allOf`, which client
    // generators cannot take for a string. Their types say both.
    #[oai(rename = "type", skip_serializing_if_is_none)]
    pub order_type: Option<LimitType>,
    #[oai(skip_serializing_if_is_none)]
    pub time_in_force: Option<TimeInForce>,
    /// Add liquidity only: if the order would trade on arrival, it is
    /// `rejected` (reason `post_only_would_trade`) and never trades.
    #[oai(default)]
    pub post_only: bool,
}

/// A market order: no price, it takes the best prices the book has. What
/// the book cannot fill expires (`ioc`, the default); `fok`: nothing
/// trades unless all of it can (`expired`, reason `fok_not_fillable`).
#[derive(Debug, Clone, PartialEq, Eq, Object)]
#[oai(deny_unknown_fields, example)]
pub struct NewMarketOrder {
    /// Currency given.
    pub src_currency: Currency,
    /// Currency received: a currency code, different from `src_currency`.
    pub dst_currency: Currency,
    pub side: Side,
    pub quantity: Amount,
    pub channel: Channel,
    #[oai(default)]
    pub description: Description,
    #[oai(skip_serializing_if_is_none)]
    pub client_order_id: Option<ClientOrderId>,
    #[oai(rename = "type")]
    pub order_type: MarketType,
    #[oai(skip_serializing_if_is_none)]
    pub time_in_force: Option<MarketTimeInForce>,
}

impl Example for NewLimitOrder {
    fn example() -> Self {
        let o = NewOrder::example();
        Self {
            src_currency: o.src_currency,
            dst_currency: o.dst_currency,
            side: o.side,
            price: o
                .price
                .unwrap_or_else(|| unreachable!("the example is a limit order")),
            quantity: o.quantity,
            channel: o.channel,
            description: o.description,
            client_order_id: o.client_order_id,
            order_type: Some(LimitType::Limit),
            time_in_force: Some(o.terms.time_in_force),
            post_only: o.terms.post_only,
        }
    }
}

impl Example for NewMarketOrder {
    fn example() -> Self {
        let o = NewOrder::example();
        Self {
            src_currency: o.src_currency,
            dst_currency: o.dst_currency,
            side: Side::Sell,
            quantity: o.quantity,
            channel: o.channel,
            description: Description::try_from("sell at the best bids".to_owned())
                .unwrap_or_default(),
            client_order_id: None,
            order_type: MarketType::Market,
            time_in_force: Some(MarketTimeInForce::Ioc),
        }
    }
}

/// The body of `POST /orders` as received. Documented with [`NewOrderSchema`], but parsed by [`NewOrder::from_json`] so that one `422` names
/// *every* bad field (missing, wrong type, unknown, or breaking a rule)
/// instead of the first one.
#[derive(Debug, Clone)]
pub struct NewOrderInput(serde_json::Map<String, serde_json::Value>);

impl Type for NewOrderInput {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        NewOrderSchema::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        NewOrderSchema::schema_ref()
    }

    fn register(registry: &mut Registry) {
        NewOrderSchema::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for NewOrderInput {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        match value {
            Some(serde_json::Value::Object(map)) => Ok(Self(map)),
            _ => Err(ParseError::custom(
                "the body must be a JSON object (see the NewOrder schema)",
            )),
        }
    }
}

/// The broker acknowledged the order; it will be readable once consumed.
#[derive(Debug, Clone, Object)]
#[oai(rename = "OrderAccepted", example)]
pub struct OrderAccepted {
    /// Order id: a UUIDv7, or a UUIDv5 of `client_order_id` when one was given.
    pub id: Uuid,
    /// `SRC-DST`, the key of the record on the log.
    pub symbol: String,
    /// Log partition the record was appended to.
    pub partition: i32,
    /// Offset of the record in that partition.
    pub offset: i64,
    pub created_at: DateTime<Utc>,
}

/// A stored order.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Order", example)]
pub struct OrderView {
    pub id: Uuid,
    /// Present when the order was submitted with one.
    #[oai(skip_serializing_if_is_none)]
    pub client_order_id: Option<ClientOrderId>,
    /// The account that owns the order (the submitting key's).
    #[oai(skip_serializing_if_is_none)]
    pub account: Option<Account>,
    pub symbol: String,
    pub src_currency: Currency,
    pub dst_currency: Currency,
    pub side: Side,
    /// The limit price; absent for a market order.
    #[oai(skip_serializing_if_is_none)]
    pub price: Option<Amount>,
    pub quantity: Amount,
    pub channel: Channel,
    pub description: Description,
    #[oai(rename = "type")]
    pub order_type: OrderType,
    pub time_in_force: TimeInForce,
    pub post_only: bool,
    pub created_at: DateTime<Utc>,
    /// Where the order sits on the log.
    pub partition: i32,
    pub offset: i64,
    pub status: StatusView,
    // (Documented by its type: a description here would wrap the
    // reference in an `allOf`.)
    #[oai(skip_serializing_if_is_none)]
    pub reason: Option<ReasonView>,
    /// How much of `quantity` traded: an exact decimal, as a string.
    pub filled_quantity: String,
    /// How much can still trade: `quantity - filled_quantity` while the
    /// order is in the book, `0` once it is filled, cancelled, expired or
    /// rejected.
    pub remaining_quantity: String,
}

impl From<StoredOrder> for OrderView {
    fn from(stored: StoredOrder) -> Self {
        let symbol = stored.order.symbol();
        let fill = stored.fill;
        let remaining = fill.remaining(stored.order.quantity.value());
        let o = stored.order;
        Self {
            status: fill.status.into(),
            reason: fill.reason.map(Into::into),
            filled_quantity: fill.filled.normalize().to_string(),
            remaining_quantity: remaining.normalize().to_string(),
            id: o.id,
            client_order_id: o.client_order_id,
            account: o.account,
            symbol,
            src_currency: o.src_currency,
            dst_currency: o.dst_currency,
            side: o.side,
            price: o.price,
            quantity: o.quantity,
            channel: o.channel,
            description: o.description,
            order_type: o.terms.order_type,
            time_in_force: o.terms.time_in_force,
            post_only: o.terms.post_only,
            created_at: o.created_at,
            partition: stored.partition,
            offset: stored.offset,
        }
    }
}

fn example_id() -> Uuid {
    Uuid::from_u128(0x019a_b5c2_7e10_7c3a_9f62_2a7d_4c1e_8b90)
}

fn example_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_740_000, 123_456_000).unwrap_or_default()
}

impl Example for OrderAccepted {
    fn example() -> Self {
        Self {
            id: example_id(),
            symbol: "USD-EUR".into(),
            partition: 1,
            offset: 41_872,
            created_at: example_time(),
        }
    }
}

impl Example for OrderView {
    fn example() -> Self {
        let body = NewOrder::example();
        Self {
            id: example_id(),
            client_order_id: ClientOrderId::try_from("inv-2026-11-0042".to_owned()).ok(),
            account: "acme-treasury".parse().ok(),
            symbol: "USD-EUR".into(),
            src_currency: body.src_currency,
            dst_currency: body.dst_currency,
            side: body.side,
            price: body.price,
            quantity: body.quantity,
            channel: body.channel,
            description: body.description,
            order_type: body.terms.order_type,
            time_in_force: body.terms.time_in_force,
            post_only: body.terms.post_only,
            created_at: example_time(),
            partition: 1,
            offset: 41_872,
            status: StatusView::PartiallyFilled,
            reason: None,
            filled_quantity: "1000".into(),
            remaining_quantity: "1500".into(),
        }
    }
}

impl Example for OrderPage {
    fn example() -> Self {
        Self {
            orders: vec![OrderView::example()],
            next_after: Some(example_id()),
        }
    }
}

/// One page of a symbol's orders, in id order.
#[derive(Debug, Clone, Object)]
#[oai(rename = "OrderPage", example)]
pub struct OrderPage {
    pub orders: Vec<OrderView>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_after: Option<Uuid>,
}

#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "bad_create_request")]
pub enum CreateOrderResponse {
    /// Appended to the log and acknowledged by the broker (`acks=all`).
    #[oai(status = 202)]
    Accepted(Json<OrderAccepted>, #[oai(header = "Location")] String),
    /// The body is not a JSON object (syntax error, empty, nested too deeply).
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// The body is larger than the configured limit.
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Json<Problem>),
    /// The body is not `application/json`.
    #[oai(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Json<Problem>),
    /// A JSON object, but with fields missing, of the wrong type, unknown, or
    /// breaking the order rules; `errors` names every bad field.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
    /// The broker did not acknowledge in time. The order may or may not be on
    /// the log: retry after `Retry-After` seconds with the same `client_order_id`.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u32),
    /// No API key, or one that is not valid or was revoked.
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>, #[oai(header = "WWW-Authenticate")] String),
    /// The key is a `reader` key: it may read, not submit or cancel.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// The key is over its rate or has too many requests in flight: retry
    /// after `Retry-After` seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Json<Problem>, #[oai(header = "Retry-After")] u32),
}

fn bad_create_request(err: poem::Error) -> CreateOrderResponse {
    refused!(err, CreateOrderResponse);
    use poem_openapi::error::ContentTypeError;
    if err.is::<ContentTypeError>() {
        return CreateOrderResponse::UnsupportedMediaType(Json(Problem::new(
            poem::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!("{err}; send `Content-Type: application/json`"),
        )));
    }
    CreateOrderResponse::BadRequest(Json(Problem::malformed(err.to_string())))
}

#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "bad_read_request")]
pub enum GetOrderResponse {
    /// The stored order.
    #[oai(status = 200)]
    Ok(Json<OrderView>),
    /// The id is not a UUID.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// No such order: the store holds every record the log held when asked.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The store cannot be read right now, or the consumer is too far behind
    /// the log to tell whether the order exists.
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

fn bad_read_request(err: poem::Error) -> GetOrderResponse {
    refused!(err, GetOrderResponse, reads);
    tracing::debug!(error = %err, "bad order id");
    GetOrderResponse::BadRequest(Json(bad_id()))
}

#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "bad_list_request")]
pub enum ListOrdersResponse {
    /// A page of orders (possibly empty).
    #[oai(status = 200)]
    Ok(Json<OrderPage>),
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

fn bad_list_request(err: poem::Error) -> ListOrdersResponse {
    refused!(err, ListOrdersResponse, reads);
    ListOrdersResponse::BadRequest(Json(Problem::malformed(err.to_string())))
}

#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "bad_cancel_request")]
pub enum CancelOrderResponse {
    /// The cancel is on the log, in the order's partition, behind every
    /// event before it: the order leaves the book when the consumer reaches
    /// it, unless it fills first. Follow `Location` to see its status.
    #[oai(status = 202)]
    Accepted(Json<OrderAccepted>, #[oai(header = "Location")] String),
    /// The id is not a UUID.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// No such order.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The order is already filled or cancelled.
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// This oms runs with `consumer.matching = false`: orders are stored,
    /// not traded, and there is no book to cancel from.
    #[oai(status = 501, content_type = "application/problem+json")]
    NotImplemented(Json<Problem>),
    /// The store cannot be read, the consumer is too far behind to tell
    /// whether the order exists, or the broker did not acknowledge the cancel.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u32),
    /// No API key, or one that is not valid or was revoked.
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>, #[oai(header = "WWW-Authenticate")] String),
    /// The key is a `reader` key: it may read, not submit or cancel.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    /// The key is over its rate or has too many requests in flight: retry
    /// after `Retry-After` seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Json<Problem>, #[oai(header = "Retry-After")] u32),
}

fn bad_cancel_request(err: poem::Error) -> CancelOrderResponse {
    refused!(err, CancelOrderResponse);
    tracing::debug!(error = %err, "bad order id");
    CancelOrderResponse::BadRequest(Json(bad_id()))
}

fn bad_id() -> Problem {
    Problem::new(
        poem::http::StatusCode::BAD_REQUEST,
        "malformed-request",
        "the order id in the path must be a UUID",
    )
}

fn not_found(id: Uuid) -> Problem {
    Problem::new(
        poem::http::StatusCode::NOT_FOUND,
        "not-found",
        format!("no order {id}: the store holds every record the log held when asked"),
    )
}

/// An order of `account` looked up the way a client following a `202`
/// expects: a miss waits (at most `http.read_wait_ms`) until the store
/// holds every record the log is known to hold, then looks again. Another
/// account's order is not there for this caller — the same `None` as an
/// order that does not exist, so an id leaks nothing. `Err`: a 503 to answer.
async fn find_order(
    state: &AppState,
    account: &Account,
    id: Uuid,
) -> Result<Option<StoredOrder>, Problem> {
    let owned = |found: Option<StoredOrder>| {
        found.filter(|stored| stored.order.account.as_ref() == Some(account))
    };
    find_any(state, id).await.map(owned)
}

/// [`find_order`] for whoever owns it.
async fn find_any(state: &AppState, id: Uuid) -> Result<Option<StoredOrder>, Problem> {
    match state.store.get(id).await {
        Ok(Some(stored)) => return Ok(Some(stored)),
        Ok(None) => {}
        Err(err) => return Err(Problem::store_unavailable(&err)),
    }
    let log_end = state
        .consumer
        .known_log_end(&state.producer.evidence().acked_ends());
    let deadline = tokio::time::Instant::now() + state.read_wait;
    if state.consumer.grouped() {
        store_up_to(state, id, &log_end, deadline).await?;
    } else if let Err(missing) = state.consumer.stored_up_to(&log_end, deadline).await {
        return Err(not_consumed_yet(id, missing));
    }
    state
        .store
        .get(id)
        .await
        .map_err(|e| Problem::store_unavailable(&e))
}

/// Group mode: other instances store the other partitions, so whether the
/// log is stored is the store's to say — asked until it is, or `deadline`.
/// `Err`: a 503 to answer (records still missing, or the store unreadable).
async fn store_up_to(
    state: &AppState,
    id: Uuid,
    log_end: &crate::domain::Offsets,
    deadline: tokio::time::Instant,
) -> Result<(), Problem> {
    let mut poll = tokio::time::interval(STORE_POLL);
    loop {
        poll.tick().await;
        let stored = match state.store.offsets(&state.topic).await {
            Ok(stored) => stored,
            Err(err) => return Err(Problem::store_unavailable(&err)),
        };
        let missing: i64 = log_end
            .iter()
            .map(|(p, end)| (end - stored.get(p).copied().unwrap_or(0)).max(0))
            .sum();
        if missing == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(not_consumed_yet(id, missing));
        }
    }
}

/// How often a group-mode read that missed asks the store again: a round
/// trip per poll, a few ms apart keeps it cheap.
const STORE_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// The consumer is `missing` records behind the log: the order may exist.
fn not_consumed_yet(id: Uuid, missing: i64) -> Problem {
    Problem::new(
        poem::http::StatusCode::SERVICE_UNAVAILABLE,
        "not-consumed-yet",
        format!(
            "order {id} is not in the store and the consumer is still {missing} record(s) behind the log; retry later"
        ),
    )
}

/// The order resource.
pub struct OrdersApi;

#[OpenApi(tag = "ApiTags::Orders")]
impl OrdersApi {
    /// Submit an order
    ///
    /// Validates the order, appends it to the `orders` log (key `SRC-DST`) and
    /// answers `202` only after the broker acknowledged it with `acks=all`.
    /// The order becomes readable at `Location` once the consumer stored it,
    /// typically within milliseconds. With `client_order_id`, repeating the
    /// request is safe: the id is derived from the key and the first stored
    /// copy wins.
    #[oai(path = "/orders", method = "post", operation_id = "createOrder")]
    async fn create(
        &self,
        state: Data<&Arc<AppState>>,
        key: ApiKey,
        body: Json<NewOrderInput>,
    ) -> CreateOrderResponse {
        let account = Some(key.0.account.clone());
        let order = match NewOrder::from_json(body.0.0)
            .and_then(|o| o.accept_for(account, Utc::now()))
        {
            Ok(order) => order,
            Err(errors) => return CreateOrderResponse::Invalid(Json(Problem::validation(&errors))),
        };
        match state.producer.send(&order).await {
            Ok(delivered) => {
                tracing::debug!(order_id = %order.id, partition = delivered.partition, offset = delivered.offset, "order accepted");
                let location = format!("/orders/{}", order.id);
                CreateOrderResponse::Accepted(
                    Json(OrderAccepted {
                        id: order.id,
                        symbol: order.symbol(),
                        partition: delivered.partition,
                        offset: delivered.offset,
                        created_at: order.created_at,
                    }),
                    location,
                )
            }
            Err(err) => {
                let reason = crate::error::Chain(&err);
                tracing::warn!(order_id = %order.id, error = %reason, "order not acknowledged");
                let detail = match &err {
                    ProduceError::Timeout(_) => format!(
                        "{reason}; the order may or may not be on the log, retry with the same client_order_id"
                    ),
                    ProduceError::QueueFull | ProduceError::Refused(_) => {
                        format!("{reason}; the order is not on the log")
                    }
                };
                CreateOrderResponse::Unavailable(
                    Json(Problem::new(
                        poem::http::StatusCode::SERVICE_UNAVAILABLE,
                        "broker-unavailable",
                        detail,
                    )),
                    state.retry_after_secs,
                )
            }
        }
    }

    /// Read one order
    ///
    /// Returns the stored order with its status (`open`, `partially_filled`,
    /// `filled`, `cancelled`) and fills. Right after a `202` the order may still be on
    /// its way from the log to the store: a read that misses waits (at most
    /// `http.read_wait_ms`) until the store holds every record the log is
    /// known to hold, then looks again. So `404` means the order does not
    /// exist; a consumer too far behind to tell answers `503` instead.
    #[oai(path = "/orders/:id", method = "get", operation_id = "getOrder")]
    async fn get(
        &self,
        state: Data<&Arc<AppState>>,
        key: ApiKey,
        id: Path<Uuid>,
    ) -> GetOrderResponse {
        match find_order(&state, &key.0.account, id.0).await {
            Ok(Some(stored)) => GetOrderResponse::Ok(Json(stored.into())),
            Ok(None) => GetOrderResponse::NotFound(Json(not_found(id.0))),
            Err(problem) => GetOrderResponse::Unavailable(Json(problem), state.retry_after_secs),
        }
    }

    /// Cancel an order
    ///
    /// Appends a cancel event to the order's partition and answers `202`
    /// once the broker acknowledged it. The consumer takes the order out of
    /// its book when it reaches the cancel — unless the order filled first;
    /// `GET` the order for the outcome (`status: cancelled`, with what had
    /// filled in `filled_quantity`). Repeating a cancel is harmless: it
    /// answers `202` while the order is still open, `409` after.
    #[oai(path = "/orders/:id", method = "delete", operation_id = "cancelOrder")]
    async fn cancel(
        &self,
        state: Data<&Arc<AppState>>,
        key: ApiKey,
        id: Path<Uuid>,
    ) -> CancelOrderResponse {
        if !state.matching {
            return CancelOrderResponse::NotImplemented(Json(Problem::matching_off()));
        }
        let stored = match find_order(&state, &key.0.account, id.0).await {
            Ok(Some(stored)) => stored,
            Ok(None) => return CancelOrderResponse::NotFound(Json(not_found(id.0))),
            Err(problem) => {
                return CancelOrderResponse::Unavailable(Json(problem), state.retry_after_secs);
            }
        };
        if !stored.fill.status.is_live() {
            return CancelOrderResponse::Conflict(Json(Problem::new(
                poem::http::StatusCode::CONFLICT,
                "order-closed",
                format!(
                    "order {} is {} ({} of {} filled): there is nothing left to cancel",
                    id.0,
                    stored.fill.status.as_str(),
                    stored.fill.filled.normalize(),
                    stored.order.quantity
                ),
            )));
        }
        let cancel = Cancel {
            order_id: id.0,
            symbol: Symbol::new(&stored.order.src_currency, &stored.order.dst_currency),
            side: Some(stored.order.side),
            price: stored.order.price,
            // Microseconds, as every order time.
            requested_at: Utc::now().trunc_subsecs(6),
        };
        match state.producer.cancel(&cancel).await {
            Ok(delivered) => CancelOrderResponse::Accepted(
                Json(OrderAccepted {
                    id: id.0,
                    symbol: cancel.symbol.to_string(),
                    partition: delivered.partition,
                    offset: delivered.offset,
                    created_at: cancel.requested_at,
                }),
                format!("/orders/{}", id.0),
            ),
            Err(err) => {
                let reason = crate::error::Chain(&err);
                tracing::warn!(order_id = %id.0, error = %reason, "cancel not acknowledged");
                CancelOrderResponse::Unavailable(
                    Json(Problem::new(
                        poem::http::StatusCode::SERVICE_UNAVAILABLE,
                        "broker-unavailable",
                        format!(
                            "{reason}; the cancel may or may not be on the log: repeating it is harmless"
                        ),
                    )),
                    state.retry_after_secs,
                )
            }
        }
    }

    /// List your orders of a symbol
    ///
    /// The caller's own orders (its key's account) of one symbol in id order (time order for server-assigned ids),
    /// one page at a time: pass the previous page's `next_after` as `after`.
    #[oai(path = "/orders", method = "get", operation_id = "listOrders")]
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        key: ApiKey,
        /// `SRC-DST`, e.g. `USD-EUR`.
        symbol: Query<Symbol>,
        /// Page size, 1 to 1000 (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// Return orders with an id greater than this one.
        after: Query<Option<Uuid>>,
    ) -> ListOrdersResponse {
        let limit = limit.0.unwrap_or(100) as usize;
        match state
            .store
            .list_owned(&key.0.account, symbol.0.as_str(), after.0, limit)
            .await
        {
            Ok(orders) => {
                let next_after = (orders.len() == limit)
                    .then(|| orders.last().map(|o| o.order.id))
                    .flatten();
                ListOrdersResponse::Ok(Json(OrderPage {
                    orders: orders.into_iter().map(OrderView::from).collect(),
                    next_after,
                }))
            }
            Err(err) => ListOrdersResponse::Unavailable(
                Json(Problem::store_unavailable(&err)),
                state.retry_after_secs,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_orders_have_exactly_the_domains_fields() {
        let mut registry = Registry::new();
        NewOrderSchema::register(&mut registry);
        let fields = |name: &str| {
            let schema = registry.schemas.get(name).expect("registered");
            let names: Vec<&str> = schema.properties.iter().map(|(name, _)| *name).collect();
            (names, schema.required.clone())
        };
        let (limit, limit_required) = fields("NewLimitOrder");
        assert_eq!(limit, NewOrder::FIELDS);
        let (market, market_required) = fields("NewMarketOrder");
        let no_price: Vec<&str> = NewOrder::FIELDS
            .into_iter()
            .filter(|f| !matches!(*f, "price" | "post_only"))
            .collect();
        assert_eq!(market, no_price);
        let common = ["src_currency", "dst_currency", "side"];
        assert_eq!(
            limit_required,
            [&common[..], &["price", "quantity", "channel"]].concat(),
            "what the schema requires is what NewOrder::from_json requires"
        );
        assert_eq!(
            market_required,
            [&common[..], &["quantity", "channel", "type"]].concat()
        );
        let union = registry.schemas.get("NewOrder").expect("NewOrder");
        assert_eq!(union.one_of.len(), 2);
    }
}
