//! oms: an order-ingest daemon.
//!
//! ```text
//! client ─HTTP─▶ api ─validate─▶ producer (acks=all, idempotent) ─▶ topic `orders`
//!                                                                        │
//!          store (redb) ◀─ one transaction: rows + offsets ◀─ consumer ◀─┘
//! ```
//!
//! # Layout
//! - [`config`]: layered settings (defaults < file < env < flags).
//! - [`domain`]: orders, fills, trades, log positions — depends on nothing else.
//! - [`api`]: poem-openapi handlers, problem+json errors, Swagger UI.
//! - [`broker`]: topic admin, producer, dead-letter writer.
//! - [`consumer`]: the log → store loop, group mode's leases, lag and the watchdog.
//! - [`store`]: the `Store` trait and one module per engine.
//! - [`telemetry`]: logs and Prometheus metrics.
//! - [`app`]: builds the pieces from settings and runs them until shutdown.
//! - [`cli`]: what the `oms dlq` commands print.
//! - [`error`]: an error with its causes, for logs and dead letters.
//! - [`feed`]: the live feed of trades, books and order updates, read from the log.
//! - [`matching`]: the price-time order books the consumer feeds, order
//!   status, trades.
//! - [`memory`]: the allocator oms runs on (jemalloc) and giving freed heap back.

pub mod api;
pub mod app;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod domain;
pub mod error;
pub mod feed;
pub mod matching;
pub mod memory;
pub mod store;
pub mod telemetry;

/// The order and its fields, where they were before [`domain`] held them.
pub use domain::order;
