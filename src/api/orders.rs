//! `/orders`: submit an order, read one back, list a symbol's orders.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{Example, ParseError, ParseFromJSON, ParseResult, Type};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use uuid::Uuid;

use super::problem::Problem;
use super::{ApiTags, AppState};
use crate::broker::producer::ProduceError;
use crate::order::{self, FieldError, NewOrder, ValidationErrors};
use crate::store::StoredOrder;

/// Buy or sell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

impl From<order::Side> for Side {
    fn from(side: order::Side) -> Self {
        match side {
            order::Side::Buy => Side::Buy,
            order::Side::Sell => Side::Sell,
        }
    }
}

/// An order to submit. Unknown fields are refused (a misspelt
/// `client_order_id` must not silently turn idempotency off).
#[derive(Debug, Clone, Object)]
#[oai(rename = "NewOrder", deny_unknown_fields, example)]
pub struct NewOrderBody {
    /// Currency given: 3 to 10 upper-case letters A-Z.
    pub src_currency: String,
    /// Currency received: 3 to 10 upper-case letters A-Z, different from `src_currency`.
    pub dst_currency: String,
    pub side: Side,
    /// Limit price, a decimal number as a string (exact; > 0; ≤ 28 significant digits).
    pub price: String,
    /// Quantity, a decimal number as a string (exact; > 0; ≤ 28 significant digits).
    pub quantity: String,
    /// Sales channel: one of 0, 1, 2, 3, 4, 11, 12, 13, 14, 21, 23, 31, 32, 33,
    /// 34, 41, 42, 51, 52, 53, 54, 61.
    pub channel: i64,
    /// Free text, at most 1024 characters.
    #[oai(default)]
    pub description: String,
    /// Idempotency key (1 to 64 characters). Requests with the same key map to
    /// the same order id, and only the first one is stored: retrying a request
    /// whose answer was lost can never create a second order.
    pub client_order_id: Option<String>,
}

impl Example for NewOrderBody {
    fn example() -> Self {
        Self {
            src_currency: "USD".into(),
            dst_currency: "EUR".into(),
            side: Side::Buy,
            price: "1.0850".into(),
            quantity: "2500".into(),
            channel: 11,
            description: "hedge Q4 invoices".into(),
            client_order_id: None,
        }
    }
}

/// The body of `POST /orders` as received. Documented with [`NewOrderBody`]'s
/// schema, but parsed by oms itself so that one `422` names *every* bad field
/// (missing, wrong type, unknown, or breaking a rule) instead of the first one.
#[derive(Debug, Clone)]
pub struct NewOrderInput(serde_json::Map<String, serde_json::Value>);

impl Type for NewOrderInput {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        NewOrderBody::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        NewOrderBody::schema_ref()
    }

    fn register(registry: &mut Registry) {
        NewOrderBody::register(registry);
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

const STRING_FIELDS: [&str; 5] = ["src_currency", "dst_currency", "side", "price", "quantity"];

impl NewOrderInput {
    /// Reads the fields into a [`NewOrder`], then applies the order rules;
    /// returns every problem found.
    fn into_order(self, now: DateTime<Utc>) -> Result<order::Order, ValidationErrors> {
        let mut errors = Vec::new();
        let mut problem = |field: &str, rule: &str, message: &str| {
            errors.push(FieldError {
                field: field.into(),
                rule: rule.into(),
                message: message.into(),
            });
        };
        let mut map = self.0;
        let mut strings = STRING_FIELDS.map(|field| match map.remove(field) {
            Some(serde_json::Value::String(s)) => s,
            None | Some(serde_json::Value::Null) => {
                problem(field, "required", "is required");
                String::new()
            }
            Some(_) => {
                let hint = if matches!(field, "price" | "quantity") {
                    "must be a string such as \"12.50\" (JSON numbers lose precision)"
                } else {
                    "must be a string"
                };
                problem(field, "type", hint);
                String::new()
            }
        });
        let channel = match map.remove("channel") {
            Some(serde_json::Value::Number(n)) if n.is_i64() => n.as_i64().unwrap_or_default(),
            Some(serde_json::Value::Number(_)) => {
                problem(
                    "channel",
                    "enum",
                    "must be one of the channel codes (an integer)",
                );
                0
            }
            None | Some(serde_json::Value::Null) => {
                problem("channel", "required", "is required");
                0
            }
            Some(_) => {
                problem("channel", "type", "must be an integer");
                0
            }
        };
        let description = match map.remove("description") {
            Some(serde_json::Value::String(s)) => s,
            None | Some(serde_json::Value::Null) => String::new(),
            Some(_) => {
                problem("description", "type", "must be a string");
                String::new()
            }
        };
        let client_order_id = match map.remove("client_order_id") {
            Some(serde_json::Value::String(s)) => Some(s),
            None | Some(serde_json::Value::Null) => None,
            Some(_) => {
                problem("client_order_id", "type", "must be a string");
                None
            }
        };
        for unknown in map.keys() {
            problem(unknown, "unknown_field", "is not a field of NewOrder");
        }
        let [src_currency, dst_currency, side, price, quantity] = std::mem::take(&mut strings);
        let draft = NewOrder {
            src_currency,
            dst_currency,
            side,
            price,
            quantity,
            channel,
            description,
            client_order_id,
        };
        match draft.parse(now) {
            Ok(order) if errors.is_empty() => Ok(order),
            Ok(_) => Err(ValidationErrors(errors)),
            Err(rules) => {
                // A field already reported as missing or mistyped is not
                // reported again for the placeholder that stood in for it.
                let reported: Vec<String> = errors.iter().map(|e| e.field.clone()).collect();
                errors.extend(rules.0.into_iter().filter(|e| !reported.contains(&e.field)));
                Err(ValidationErrors(errors))
            }
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
    pub client_order_id: Option<String>,
    pub symbol: String,
    pub src_currency: String,
    pub dst_currency: String,
    pub side: Side,
    /// Decimal string, exactly as accepted.
    pub price: String,
    /// Decimal string, exactly as accepted.
    pub quantity: String,
    pub channel: i64,
    pub description: String,
    pub created_at: DateTime<Utc>,
    /// Where the order sits on the log.
    pub partition: i32,
    pub offset: i64,
}

impl From<StoredOrder> for OrderView {
    fn from(stored: StoredOrder) -> Self {
        let symbol = stored.order.symbol();
        let o = stored.order;
        Self {
            id: o.id,
            client_order_id: o.client_order_id,
            symbol,
            src_currency: o.src_currency,
            dst_currency: o.dst_currency,
            side: o.side.into(),
            price: o.price.to_string(),
            quantity: o.quantity.to_string(),
            channel: i64::from(o.channel),
            description: o.description,
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
        let body = NewOrderBody::example();
        Self {
            id: example_id(),
            client_order_id: Some("inv-2026-11-0042".into()),
            symbol: "USD-EUR".into(),
            src_currency: body.src_currency,
            dst_currency: body.dst_currency,
            side: body.side,
            price: body.price,
            quantity: body.quantity,
            channel: body.channel,
            description: body.description,
            created_at: example_time(),
            partition: 1,
            offset: 41_872,
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
}

fn bad_create_request(err: poem::Error) -> CreateOrderResponse {
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
}

fn bad_read_request(err: poem::Error) -> GetOrderResponse {
    tracing::debug!(error = %err, "bad order id");
    GetOrderResponse::BadRequest(Json(Problem::new(
        poem::http::StatusCode::BAD_REQUEST,
        "malformed-request",
        "the order id in the path must be a UUID",
    )))
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
}

fn bad_list_request(err: poem::Error) -> ListOrdersResponse {
    ListOrdersResponse::BadRequest(Json(Problem::malformed(err.to_string())))
}

fn store_unavailable(err: &crate::store::StoreError) -> Problem {
    tracing::error!(error = %err, "store read failed");
    Problem::new(
        poem::http::StatusCode::SERVICE_UNAVAILABLE,
        "store-unavailable",
        "the store cannot be read right now",
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
        body: Json<NewOrderInput>,
    ) -> CreateOrderResponse {
        let order = match body.0.into_order(Utc::now()) {
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
                tracing::warn!(order_id = %order.id, error = %err, "order not acknowledged");
                let detail = match &err {
                    ProduceError::Timeout(_) => format!(
                        "{err}; the order may or may not be on the log, retry with the same client_order_id"
                    ),
                    ProduceError::QueueFull | ProduceError::Refused(_) => {
                        format!("{err}; the order is not on the log")
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
    /// Returns the stored order. Right after a `202` the order may still be on
    /// its way from the log to the store: a read that misses waits (at most
    /// `http.read_wait_ms`) until the store holds every record the log is
    /// known to hold, then looks again. So `404` means the order does not
    /// exist; a consumer too far behind to tell answers `503` instead.
    #[oai(path = "/orders/:id", method = "get", operation_id = "getOrder")]
    async fn get(&self, state: Data<&Arc<AppState>>, id: Path<Uuid>) -> GetOrderResponse {
        match state.store.get(id.0).await {
            Ok(Some(stored)) => return GetOrderResponse::Ok(Json(stored.into())),
            Ok(None) => {}
            Err(err) => {
                return GetOrderResponse::Unavailable(
                    Json(store_unavailable(&err)),
                    state.retry_after_secs,
                );
            }
        }
        let log_end = state
            .consumer
            .known_log_end(&state.producer.evidence().acked_ends());
        let deadline = tokio::time::Instant::now() + state.read_wait;
        if let Err(missing) = state.consumer.stored_up_to(&log_end, deadline).await {
            return GetOrderResponse::Unavailable(
                Json(Problem::new(
                    poem::http::StatusCode::SERVICE_UNAVAILABLE,
                    "not-consumed-yet",
                    format!(
                        "order {} is not in the store and the consumer is still {missing} record(s) behind the log; retry later",
                        id.0
                    ),
                )),
                state.retry_after_secs,
            );
        }
        match state.store.get(id.0).await {
            Ok(Some(stored)) => GetOrderResponse::Ok(Json(stored.into())),
            Ok(None) => GetOrderResponse::NotFound(Json(Problem::new(
                poem::http::StatusCode::NOT_FOUND,
                "not-found",
                format!(
                    "no order {}: the store holds every record the log held when asked",
                    id.0
                ),
            ))),
            Err(err) => {
                GetOrderResponse::Unavailable(Json(store_unavailable(&err)), state.retry_after_secs)
            }
        }
    }

    /// List a symbol's orders
    ///
    /// Orders of one symbol in id order (time order for server-assigned ids),
    /// one page at a time: pass the previous page's `next_after` as `after`.
    #[oai(path = "/orders", method = "get", operation_id = "listOrders")]
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        /// `SRC-DST`, e.g. `USD-EUR`.
        #[oai(validator(pattern = r"^[A-Z]{3,10}-[A-Z]{3,10}$"))]
        symbol: Query<String>,
        /// Page size, 1 to 1000 (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// Return orders with an id greater than this one.
        after: Query<Option<Uuid>>,
    ) -> ListOrdersResponse {
        let limit = limit.0.unwrap_or(100) as usize;
        match state.store.list_by_symbol(&symbol.0, after.0, limit).await {
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
                Json(store_unavailable(&err)),
                state.retry_after_secs,
            ),
        }
    }
}
