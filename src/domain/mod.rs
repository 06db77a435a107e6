//! The domain: orders and their fields, the events of the orders topic,
//! an order's lifecycle (status, fills), trades, and log positions and
//! offsets. It depends on nothing else in oms — not the web framework, not
//! the log, not a store; matching, every store and the API depend on it.

pub mod field;
pub mod fill;
pub mod log;
pub mod order;
pub mod trade;

pub use field::{
    Account, Amount, Broken, CHANNELS, Channel, ClientOrderId, Currency, Description, Field,
    OrderType, Rule, Side, Symbol, TimeInForce,
};
pub use fill::{Fill, OrderState, Reason, Status};
pub use log::{Offsets, Positioned, StoredOrder};
pub use order::{
    Cancel, Event, FieldError, NewOrder, Order, OrderRecord, RecordError, Terms, ValidationErrors,
};
pub use trade::{StoredTrade, Trade};
