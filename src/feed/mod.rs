//! The live feed: trades, the top of each book and a caller's own order
//! updates, read from the `trades` topic ([`record`]) by a consumer of the
//! client's own, so it is the same on every instance, survives restarts,
//! and resumes exactly where a client left off ([`cursor`]).
//!
//! Each client gets a Kafka consumer assigned at its cursor (no group:
//! nothing it does moves the matching consumer) and a bounded buffer: a
//! client that falls `feed.buffer` events behind is dropped with a reason
//! it can see, and reconnects from its last event id. Records the matching
//! consumer published twice (a batch re-matched after a crash or a lost
//! acknowledgement: the same trade id, the same order state) are shown
//! once: the reader remembers the last `feed.dedupe` event keys, and a
//! resumed reader first reads `feed.lookback` records before its cursor to
//! learn them.

pub mod cursor;
pub mod record;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use rust_decimal::Decimal;
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use crate::config::{BrokerSettings, FeedSettings};
use crate::domain::{Account, Status, StoredTrade};
use crate::matching::Level;
pub use cursor::{BadCursor, Cursor, Place};
pub use record::{FeedRecord, OrderUpdate, SymbolRecord};

/// What a client asked for.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The caller's account: the only one whose order updates it sees.
    pub account: Account,
    /// Only these symbols (`None`: every symbol).
    pub symbols: Option<HashSet<String>>,
    pub trades: bool,
    pub books: bool,
    pub orders: bool,
    /// Resume after this position (`None`: from now on).
    pub after: Option<Cursor>,
}

/// One event of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    Trade(StoredTrade),
    Book {
        symbol: String,
        bids: Vec<Level>,
        asks: Vec<Level>,
    },
    Order {
        symbol: String,
        update: OrderUpdate,
    },
}

/// What a client's stream yields: events, each with its position as its id,
/// and, last, why the feed dropped the client if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Event { id: String, event: FeedEvent },
    Dropped { reason: String },
}

/// Why a subscription could not start.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("{0} feed clients are connected, the most this instance serves (feed.max_clients)")]
    Busy(usize),
    #[error("the broker did not answer for the trades topic")]
    Broker(#[source] rdkafka::error::KafkaError),
}

/// The feed of one oms instance: how many clients it serves and how.
#[derive(Clone)]
pub struct Feed {
    broker: BrokerSettings,
    settings: FeedSettings,
    clients: Arc<Semaphore>,
}

impl Feed {
    pub fn new(broker: BrokerSettings, settings: FeedSettings) -> Self {
        let clients = Arc::new(Semaphore::new(settings.max_clients));
        Self {
            broker,
            settings,
            clients,
        }
    }

    /// Starts a client's reader; its stream ends when the client goes or is
    /// dropped (the last item says why).
    pub async fn subscribe(
        &self,
        sub: Subscription,
    ) -> Result<impl Stream<Item = Delivery> + Send + 'static, FeedError> {
        let permit = self
            .clients
            .clone()
            .try_acquire_owned()
            .map_err(|_| FeedError::Busy(self.settings.max_clients))?;
        let consumer = self.consumer().map_err(FeedError::Broker)?;
        let (consumer, start) = {
            let (topic, after, lookback) = (
                self.broker.trades_topic.clone(),
                sub.after.clone(),
                self.settings.lookback,
            );
            tokio::task::spawn_blocking(move || {
                let start = starting_places(&consumer, &topic, after, lookback)?;
                let mut assignment = TopicPartitionList::new();
                for s in &start {
                    assignment
                        .add_partition_offset(&topic, s.partition, Offset::Offset(s.from))
                        .map_err(FeedError::Broker)?;
                }
                consumer.assign(&assignment).map_err(FeedError::Broker)?;
                Ok::<_, FeedError>((consumer, start))
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?
        };
        let (tx, rx) = mpsc::channel(self.settings.buffer);
        let (dropped_tx, dropped_rx) = oneshot::channel();
        let reader = Reader {
            sub,
            cursor: Cursor(start.iter().map(|s| (s.partition, s.place)).collect()),
            seen: Seen::new(self.settings.dedupe),
            buffer: self.settings.buffer,
        };
        metrics::gauge!("feed_clients").increment(1.0);
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(reason) = reader.run(&consumer, &tx).await {
                metrics::counter!("feed_clients_dropped_total").increment(1);
                let _ = dropped_tx.send(reason);
            }
            metrics::gauge!("feed_clients").decrement(1.0);
        });
        let last = futures::stream::once(dropped_rx).filter_map(|reason| async move {
            reason.ok().map(|reason| Delivery::Dropped { reason })
        });
        let events = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|delivery| (delivery, rx))
        });
        Ok(events.chain(last))
    }

    fn consumer(&self) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
        crate::broker::client_config(&self.broker, "oms-feed")
            // Assigned, never subscribed: the group id is only a name.
            .set("group.id", "oms-feed")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "20")
            .create()
    }
}

/// For each partition of `topic`: where to start reading (`lookback`
/// records before the place, to learn what was already shown) and the place
/// to show events from. Without a cursor: the end of each partition now.
fn starting_places(
    consumer: &StreamConsumer,
    topic: &str,
    after: Option<Cursor>,
    lookback: i64,
) -> Result<Vec<Start>, FeedError> {
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(FeedError::Broker)?;
    let mut out = Vec::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), timeout)
            .map_err(FeedError::Broker)?;
        let place = match &after {
            // A partition the cursor does not name is new since: all of it.
            Some(cursor) => cursor.0.get(&p.id()).copied().unwrap_or_default(),
            None => Place {
                offset: high,
                skip: 0,
            },
        };
        let place = Place {
            offset: place.offset.clamp(low, high.max(low)),
            ..place
        };
        out.push(Start {
            partition: p.id(),
            from: (place.offset - lookback).max(low),
            place,
        });
    }
    Ok(out)
}

/// Where a reader starts on one partition.
struct Start {
    partition: i32,
    /// The first record read (the lookback's).
    from: i64,
    /// The first event shown.
    place: Place,
}

/// One client's reader.
struct Reader {
    sub: Subscription,
    cursor: Cursor,
    seen: Seen,
    buffer: usize,
}

impl Reader {
    /// Reads until the client goes (`None`) or is dropped (the reason).
    async fn run(
        mut self,
        consumer: &StreamConsumer,
        tx: &mpsc::Sender<Delivery>,
    ) -> Option<String> {
        loop {
            let message = tokio::select! {
                message = consumer.recv() => message,
                () = tx.closed() => return None,
            };
            let message = match message {
                Ok(m) => m,
                // librdkafka reconnects on its own (a broker restart); a
                // pause, so a broker that stays away is not polled in a spin.
                Err(err) => {
                    tracing::debug!(error = %err, "feed: the trades topic could not be read");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (partition, offset) = (message.partition(), message.offset());
            let events = message
                .payload()
                .and_then(FeedRecord::decode)
                .map(|r| self.events_of(r))
                .unwrap_or_default();
            let place = self.cursor.0.get(&partition).copied().unwrap_or_default();
            if offset < place.offset {
                // The lookback: remember, do not show.
                for e in &events {
                    self.seen.first(e);
                }
                continue;
            }
            let skip = if offset == place.offset {
                place.skip
            } else {
                0
            };
            let count = events.len();
            for (i, event) in events.into_iter().enumerate() {
                let first = self.seen.first(&event);
                if (i as u32) < skip || !first {
                    continue;
                }
                let next = if i + 1 == count {
                    Place {
                        offset: offset + 1,
                        skip: 0,
                    }
                } else {
                    Place {
                        offset,
                        skip: i as u32 + 1,
                    }
                };
                self.cursor.0.insert(partition, next);
                let item = Delivery::Event {
                    id: self.cursor.to_string(),
                    event,
                };
                match tx.try_send(item) {
                    Ok(()) => metrics::counter!("feed_events_total").increment(1),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        return Some(format!(
                            "the client fell {} events behind (feed.buffer): reconnect with the id of the last event received",
                            self.buffer
                        ));
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return None,
                }
            }
            self.cursor.0.insert(
                partition,
                Place {
                    offset: offset + 1,
                    skip: 0,
                },
            );
        }
    }

    /// The events of one record this client subscribed to, in order.
    fn events_of(&self, record: FeedRecord) -> Vec<FeedEvent> {
        let wanted = |symbol: &str| self.sub.symbols.as_ref().is_none_or(|s| s.contains(symbol));
        match record {
            FeedRecord::Trade(t) if self.sub.trades && wanted(&t.symbol) => {
                vec![FeedEvent::Trade(t)]
            }
            FeedRecord::Trade(_) => Vec::new(),
            FeedRecord::Symbol(r) if wanted(&r.symbol) => {
                let mut out = Vec::new();
                if self.sub.orders {
                    out.extend(
                        r.orders
                            .into_iter()
                            .filter(|u| u.account.as_ref() == Some(&self.sub.account))
                            .map(|update| FeedEvent::Order {
                                symbol: r.symbol.clone(),
                                update,
                            }),
                    );
                }
                if self.sub.books {
                    out.push(FeedEvent::Book {
                        symbol: r.symbol,
                        bids: r.bids,
                        asks: r.asks,
                    });
                }
                out
            }
            FeedRecord::Symbol(_) => Vec::new(),
        }
    }
}

/// What identifies a trade or an order's state, to show it once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Trade(Uuid),
    Order(Uuid, Status, Decimal),
}

/// The last `capacity` event keys shown, and each symbol's last book.
struct Seen {
    keys: HashSet<Key>,
    order: VecDeque<Key>,
    capacity: usize,
    books: HashMap<String, (Vec<Level>, Vec<Level>)>,
}

impl Seen {
    fn new(capacity: usize) -> Self {
        Self {
            keys: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            books: HashMap::new(),
        }
    }

    /// Whether `event` is new; remembers it either way. A book is new
    /// unless it repeats the symbol's last one exactly (a re-published
    /// batch), which would be no news.
    fn first(&mut self, event: &FeedEvent) -> bool {
        let key = match event {
            FeedEvent::Trade(t) => Key::Trade(t.trade.id),
            FeedEvent::Order { update, .. } => Key::Order(
                update.order_id,
                update.status,
                update.filled_quantity.normalize(),
            ),
            FeedEvent::Book { symbol, bids, asks } => {
                let book = (bids.clone(), asks.clone());
                return self.books.insert(symbol.clone(), book.clone()).as_ref() != Some(&book);
            }
        };
        if self.keys.contains(&key) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        self.keys.insert(key.clone());
        self.order.push_back(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Trade;

    fn trade(n: u128) -> FeedEvent {
        FeedEvent::Trade(StoredTrade {
            trade: Trade {
                id: Uuid::from_u128(n),
                price: Decimal::ONE,
                quantity: Decimal::ONE,
                buy_order_id: Uuid::from_u128(100 + n),
                sell_order_id: Uuid::from_u128(200 + n),
                taker_side: crate::domain::Side::Buy,
                executed_at: chrono::Utc::now(),
            },
            symbol: "USD-EUR".into(),
            partition: 0,
            offset: 0,
        })
    }

    fn book(quantity: i64) -> FeedEvent {
        FeedEvent::Book {
            symbol: "USD-EUR".into(),
            bids: Vec::new(),
            asks: vec![Level {
                price: Decimal::ONE,
                quantity: quantity.into(),
                orders: 1,
            }],
        }
    }

    #[test]
    fn a_republished_event_is_shown_once_and_a_book_that_changes_back_is_news() {
        let mut seen = Seen::new(2);
        assert!(seen.first(&trade(1)));
        assert!(!seen.first(&trade(1)), "the same trade id again");
        assert!(seen.first(&book(5)));
        assert!(!seen.first(&book(5)), "the same book again is no news");
        assert!(seen.first(&book(2)));
        assert!(seen.first(&book(5)), "back to 5 after 2 is news");
        // Bounded: the oldest keys go.
        assert!(seen.first(&trade(2)));
        assert!(seen.first(&trade(3)));
        assert!(seen.first(&trade(1)), "forgotten past the bound");
    }
}
