//! Price-time priority matching, one book per symbol.
//!
//! The book is a pure function of the events fed to it, in log order: the
//! same records replayed give the same trades with the same ids, which is
//! what lets the book live in memory only and be rebuilt from the log (one
//! partition per symbol orders its events). Rules: an incoming order
//! trades against the best opposite price first and, at one price, the
//! oldest resting order first; the trade price is the resting order's;
//! every quantity and price is an exact decimal. What is left of it then
//! depends on its terms:
//!
//! - a limit order, `gtc`: rests at its limit;
//! - `ioc` (immediate or cancel): expires (`ioc_remainder`);
//! - a market order (no limit, `ioc` or `fok`): takes every price, and what
//!   the book could not fill expires (`market_remainder`);
//! - `fok` (fill or kill): before anything trades, the book counts what it
//!   could fill within the limit (orders of the taker's own account do not
//!   count: they would be cancelled, not traded); short of the whole
//!   quantity, nothing happens and the order expires (`fok_not_fillable`);
//! - `post_only`: if the best opposite price is within its limit, nothing
//!   happens and it is rejected (`post_only_would_trade`); otherwise it
//!   rests (`gtc`) or, under `ioc`/`fok`, expires with nothing filled.
//!
//! Self-trade prevention: an order never trades with a resting order of its
//! own account. The resting one is cancelled instead ("cancel oldest", as
//! Coinbase's `co` and Binance's `EXPIRE_MAKER`) and the incoming order
//! goes on to the next resting order: the newer order says what the owner
//! wants now. Orders of no account (written before accounts) never count
//! as one owner. The rule reads only the log's records, so a replay
//! cancels the same orders.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::domain::{
    Account, Amount, Cancel, Event, Fill, Order, OrderState, Positioned, Reason, Side, Status,
    StoredOrder, StoredTrade, TimeInForce, Trade,
};

/// Who owns an order, as one book numbers its accounts: 0 is "no account".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Owner(u32);

impl Owner {
    /// No account: never the same owner as another order.
    pub const NONE: Owner = Owner(0);

    fn trades_with(self, other: Owner) -> bool {
        self == Owner::NONE || self != other
    }
}

/// An order resting in the book.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resting {
    id: Uuid,
    quantity: Decimal,
    remaining: Decimal,
    owner: Owner,
}

/// A resting order cancelled because its owner's own order reached it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfTrade {
    pub id: Uuid,
    pub quantity: Decimal,
    pub remaining: Decimal,
}

/// An incoming order, as its book reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    pub id: Uuid,
    pub side: Side,
    /// The limit price; `None` for a market order (every price).
    pub limit: Option<Decimal>,
    pub quantity: Decimal,
    pub time_in_force: TimeInForce,
    pub post_only: bool,
    pub at: DateTime<Utc>,
    pub owner: Owner,
}

impl Incoming {
    /// A limit order of no account that rests what does not fill (`gtc`).
    pub fn limit(
        id: Uuid,
        side: Side,
        price: Decimal,
        quantity: Decimal,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            side,
            limit: Some(price),
            quantity,
            time_in_force: TimeInForce::Gtc,
            post_only: false,
            at,
            owner: Owner::NONE,
        }
    }

    /// Whether a resting price is within the limit.
    fn crosses(&self, price: Decimal) -> bool {
        match (self.side, self.limit) {
            (_, None) => true,
            (Side::Buy, Some(limit)) => price <= limit,
            (Side::Sell, Some(limit)) => price >= limit,
        }
    }
}

/// What one incoming order did: its trades, the resting orders of its own
/// account it cancelled on the way, and — when what was left of it did
/// not rest — the status it ended in and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matched {
    pub executions: Vec<Execution>,
    pub self_trades: Vec<SelfTrade>,
    /// `expired` or `rejected`, with the reason; `None`: it filled, or
    /// what is left of it rests.
    pub ended: Option<(Status, Reason)>,
}

/// A trade, with what it left of its maker (the taker's own fill is the
/// sum of its executions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    pub trade: Trade,
    pub maker_quantity: Decimal,
    pub maker_remaining: Decimal,
    pub maker_owner: Owner,
}

/// Orders per chunk of a [`Queue`]: 64 × 48 bytes, one 3 KiB allocation.
const CHUNK: usize = 64;

/// The orders resting at one price, oldest first, in chunks of at most
/// [`CHUNK`]. A level is a queue that can grow to thousands of orders; one
/// `VecDeque` would double as it grows (1,100 orders in 2,048 slots, ~90
/// bytes per 48-byte order) and copy itself each time, while chunks of a
/// fixed size are never copied and waste at most the free slots of the
/// last chunk, plus the gaps cancels leave, which [`Queue::remove`] keeps
/// merged. No chunk is ever empty: one that empties goes.
#[derive(Debug, Default)]
struct Queue {
    chunks: VecDeque<VecDeque<Resting>>,
}

impl Queue {
    fn push_back(&mut self, order: Resting) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => last.push_back(order),
            _ => {
                let mut chunk = VecDeque::with_capacity(CHUNK);
                chunk.push_back(order);
                self.chunks.push_back(chunk);
            }
        }
    }

    /// The oldest order.
    fn front_mut(&mut self) -> Option<&mut Resting> {
        self.chunks.front_mut().and_then(VecDeque::front_mut)
    }

    /// Takes the oldest order out (it filled, or it is cancelled).
    fn pop_front(&mut self) -> Option<Resting> {
        let first = self.chunks.front_mut()?;
        let order = first.pop_front();
        if first.is_empty() {
            self.chunks.pop_front();
        }
        order
    }

    /// Takes order `id` out (a cancel: a scan of this one price).
    fn remove(&mut self, id: Uuid) -> Option<Resting> {
        let (at, chunk) = self
            .chunks
            .iter()
            .enumerate()
            .find_map(|(at, chunk)| Some((at, chunk.iter().position(|r| r.id == id)?)))?;
        let order = self.chunks[at].remove(chunk)?;
        // Keep chunks dense: an emptied chunk goes, a thinned one joins its
        // neighbour when both fit in one (cancels scattered through a deep
        // level would otherwise leave it one order per chunk).
        if self.chunks[at].is_empty() {
            self.chunks.remove(at);
        } else if at > 0 && self.chunks[at - 1].len() + self.chunks[at].len() <= CHUNK {
            let thinned = self.chunks.remove(at).unwrap_or_default();
            self.chunks[at - 1].extend(thinned);
        } else if at + 1 < self.chunks.len()
            && self.chunks[at].len() + self.chunks[at + 1].len() <= CHUNK
        {
            let next = self.chunks.remove(at + 1).unwrap_or_default();
            self.chunks[at].extend(next);
        }
        Some(order)
    }

    fn iter(&self) -> impl Iterator<Item = &Resting> {
        self.chunks.iter().flatten()
    }

    fn len(&self) -> usize {
        self.chunks.iter().map(VecDeque::len).sum()
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// One aggregated price level, for `GET /orderbook/{symbol}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Level {
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    pub orders: usize,
}

/// What happened to an order that was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It rested with this much left (of `quantity`), now removed.
    Removed {
        quantity: Decimal,
        remaining: Decimal,
        owner: Owner,
    },
    /// It is not in the book: filled, already cancelled, or never seen.
    NotResting,
}

/// The book of one symbol. It holds each resting order once, in its price
/// level, and nothing else: about 50 bytes per order (a million resting
/// orders in ~50 MiB). There is no index by id: a cancel names the side and
/// price its order rests at, so it scans one level.
#[derive(Debug, Default)]
pub struct Book {
    /// Best bid first (highest price).
    bids: BTreeMap<Reverse<Decimal>, Queue>,
    /// Best ask first (lowest price).
    asks: BTreeMap<Decimal, Queue>,
    /// Orders resting on both sides.
    orders: usize,
    /// The accounts of this book's orders, numbered from 1 ([`Owner`]).
    owners: HashMap<Account, Owner>,
    /// The same, by number (`accounts[n - 1]` is owner `n`'s).
    accounts: Vec<Account>,
}

impl Book {
    pub fn new() -> Self {
        Self::default()
    }

    /// The number this book gives `account` (`None`: [`Owner::NONE`]).
    pub fn owner(&mut self, account: Option<&Account>) -> Owner {
        let Some(account) = account else {
            return Owner::NONE;
        };
        if let Some(owner) = self.owners.get(account) {
            return *owner;
        }
        let owner = Owner(u32::try_from(self.owners.len() + 1).unwrap_or(u32::MAX));
        self.owners.insert(account.clone(), owner);
        self.accounts.push(account.clone());
        owner
    }

    /// The account this book numbered `owner` (`None`: no account).
    pub fn account_of(&self, owner: Owner) -> Option<&Account> {
        let n = usize::try_from(owner.0).ok()?.checked_sub(1)?;
        self.accounts.get(n)
    }

    /// Matches an incoming limit order of no account, rests what is left,
    /// and returns the trades in the order they happened.
    pub fn submit(
        &mut self,
        id: Uuid,
        side: Side,
        price: Decimal,
        quantity: Decimal,
        at: DateTime<Utc>,
    ) -> Vec<Execution> {
        self.submit_as(Incoming::limit(id, side, price, quantity, at))
            .executions
    }

    /// Matches an incoming order by its terms (the module's rules): the
    /// trades in the order they happened, the owner's resting orders it
    /// cancelled instead of trading with (self-trade prevention), and how
    /// it ended if what was left did not rest. The caller submits an id
    /// once: [`Matcher::run`] drops an order the store or the batch has seen
    /// before (a record read twice must not trade twice).
    pub fn submit_as(&mut self, incoming: Incoming) -> Matched {
        let mut matched = Matched::default();
        if incoming.quantity <= Decimal::ZERO {
            return matched;
        }
        // One key per price, whatever its written scale ("1.50" = "1.5").
        let incoming = Incoming {
            limit: incoming.limit.map(|p| p.normalize()),
            ..incoming
        };
        if incoming.post_only
            && self
                .best_opposite(incoming.side)
                .is_some_and(|p| incoming.crosses(p))
        {
            matched.ended = Some((Status::Rejected, Reason::PostOnlyWouldTrade));
            return matched;
        }
        if incoming.time_in_force == TimeInForce::Fok && !self.can_fill(&incoming) {
            matched.ended = Some((Status::Expired, Reason::FokNotFillable));
            return matched;
        }
        let taker = Taker {
            id: incoming.id,
            side: incoming.side,
            at: incoming.at,
            owner: incoming.owner,
        };
        let crosses = |p| incoming.crosses(p);
        let (left, filled) = match incoming.side {
            Side::Buy => sweep(
                &mut self.asks,
                |p| *p,
                crosses,
                incoming.quantity,
                taker,
                &mut matched,
            ),
            Side::Sell => sweep(
                &mut self.bids,
                |Reverse(p)| *p,
                crosses,
                incoming.quantity,
                taker,
                &mut matched,
            ),
        };
        self.orders -= filled;
        if left > Decimal::ZERO {
            matched.ended = match (incoming.limit, incoming.time_in_force) {
                (Some(price), TimeInForce::Gtc) => {
                    self.rest(
                        incoming.id,
                        incoming.side,
                        price,
                        incoming.quantity,
                        left,
                        incoming.owner,
                    );
                    None
                }
                (None, _) => Some((Status::Expired, Reason::MarketRemainder)),
                (Some(_), TimeInForce::Ioc) => Some((Status::Expired, Reason::IocRemainder)),
                // Counted whole before it traded; kept for completeness.
                (Some(_), TimeInForce::Fok) => Some((Status::Expired, Reason::FokNotFillable)),
            };
        }
        matched
    }

    /// The best price resting against an order of `side`.
    fn best_opposite(&self, side: Side) -> Option<Decimal> {
        match side {
            Side::Buy => self.asks.keys().next().copied(),
            Side::Sell => self.bids.keys().next().map(|Reverse(p)| *p),
        }
    }

    /// Whether the book could fill all of `incoming` now: the resting
    /// quantity within its limit, not counting its own account's orders
    /// (they would be cancelled, not traded).
    fn can_fill(&self, incoming: &Incoming) -> bool {
        let mut available = Decimal::ZERO;
        let levels: Box<dyn Iterator<Item = (Decimal, &Queue)>> = match incoming.side {
            Side::Buy => Box::new(self.asks.iter().map(|(p, q)| (*p, q))),
            Side::Sell => Box::new(self.bids.iter().map(|(Reverse(p), q)| (*p, q))),
        };
        for (price, level) in levels {
            if !incoming.crosses(price) {
                break;
            }
            for maker in level.iter() {
                if incoming.owner.trades_with(maker.owner) {
                    available += maker.remaining;
                    if available >= incoming.quantity {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Puts an order back in the book as it rested (rebuilding a book from
    /// the store's resting orders, oldest first): no matching, since orders
    /// that rest together never cross.
    pub fn restore(
        &mut self,
        id: Uuid,
        side: Side,
        price: Decimal,
        quantity: Decimal,
        remaining: Decimal,
        owner: Owner,
    ) {
        if remaining > Decimal::ZERO {
            self.rest(id, side, price.normalize(), quantity, remaining, owner);
        }
    }

    fn rest(
        &mut self,
        id: Uuid,
        side: Side,
        price: Decimal,
        quantity: Decimal,
        left: Decimal,
        owner: Owner,
    ) {
        let resting = Resting {
            id,
            quantity,
            remaining: left,
            owner,
        };
        match side {
            Side::Buy => self
                .bids
                .entry(Reverse(price))
                .or_default()
                .push_back(resting),
            Side::Sell => self.asks.entry(price).or_default().push_back(resting),
        }
        self.orders += 1;
    }

    /// Takes a resting order out of the book. `at` is the side and price it
    /// rests at, as a cancel record names them: one level is scanned.
    /// Without it (a cancel written before records named them) the whole
    /// book is.
    pub fn cancel(&mut self, id: Uuid, at: Option<(Side, Decimal)>) -> Cancelled {
        let removed = match at {
            Some((Side::Buy, price)) => take(&mut self.bids, Some(Reverse(price.normalize())), id),
            Some((Side::Sell, price)) => take(&mut self.asks, Some(price.normalize()), id),
            None => take(&mut self.bids, None, id).or_else(|| take(&mut self.asks, None, id)),
        };
        match removed {
            Some(order) => {
                self.orders -= 1;
                Cancelled::Removed {
                    quantity: order.quantity,
                    remaining: order.remaining,
                    owner: order.owner,
                }
            }
            None => Cancelled::NotResting,
        }
    }

    /// What is left of a resting order (a scan of the book: for tests).
    #[cfg(test)]
    fn remaining(&self, id: Uuid) -> Option<Decimal> {
        self.bids
            .values()
            .chain(self.asks.values())
            .flat_map(Queue::iter)
            .find(|r| r.id == id)
            .map(|r| r.remaining)
    }

    /// The best `depth` levels of each side, best first.
    pub fn depth(&self, depth: usize) -> (Vec<Level>, Vec<Level>) {
        let level = |price: Decimal, orders: &Queue| Level {
            price,
            quantity: orders.iter().map(|r| r.remaining).sum(),
            orders: orders.len(),
        };
        (
            self.bids
                .iter()
                .take(depth)
                .map(|(Reverse(p), o)| level(*p, o))
                .collect(),
            self.asks
                .iter()
                .take(depth)
                .map(|(p, o)| level(*p, o))
                .collect(),
        )
    }

    /// Orders resting in the book.
    pub fn len(&self) -> usize {
        self.orders
    }

    pub fn is_empty(&self) -> bool {
        self.orders == 0
    }
}

/// What matching one batch of events did: the final fill of every order it
/// touched and the trades, in the order they happened.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub states: Vec<OrderState>,
    pub trades: Vec<StoredTrade>,
    /// Orders that went through a book (duplicates excluded).
    pub orders: usize,
    /// Cancels that took an order out of a book.
    pub cancelled: usize,
    /// Resting orders cancelled by self-trade prevention.
    pub self_trades: usize,
    /// The status of each order that ended without resting what was left
    /// (`expired`, `rejected`), for the metrics.
    pub ended: Vec<Status>,
    /// What the batch did, symbol by symbol, in the order the symbols were
    /// first touched: for the live feed.
    pub symbols: Vec<SymbolChange>,
}

/// One order's state after a batch, with its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    pub account: Option<Account>,
    pub state: OrderState,
}

/// What one batch did to one symbol's book: the orders it touched (in the
/// order first touched, each with its state after the batch) and the best
/// levels of each side after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolChange {
    pub symbol: String,
    pub partition: i32,
    pub orders: Vec<Touched>,
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

/// Levels of each side a [`SymbolChange`] carries.
pub const CHANGE_DEPTH: usize = 10;

/// The books of the partitions this consumer owns, one per symbol. One
/// partition orders every event of a symbol, so a book is a function of
/// its partition's records; it is rebuilt from the store's resting orders
/// (which commit with the offsets) whenever the consumer (re)starts from
/// the store.
#[derive(Debug, Default)]
pub struct Matcher {
    books: HashMap<i32, HashMap<String, Book>>,
    /// Every partition's books were rebuilt since the last [`Matcher::clear`]
    /// (assign mode): until then an empty book is not an answer.
    loaded: bool,
}

impl Matcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces `partition`'s books with the resting orders the store
    /// holds for it.
    pub fn load(&mut self, partition: i32, mut resting: Vec<StoredOrder>) {
        resting.sort_by_key(|r| r.offset);
        let books = self.books.entry(partition).or_default();
        books.clear();
        for r in resting {
            // Only limit orders rest.
            let Some(price) = r.order.limit() else {
                continue;
            };
            let quantity = r.order.quantity.value();
            let book = books.entry(r.order.symbol()).or_default();
            let owner = book.owner(r.order.account.as_ref());
            book.restore(
                r.order.id,
                r.order.side,
                price,
                quantity,
                r.fill.remaining(quantity),
                owner,
            );
        }
    }

    /// Drops the books of partitions this consumer no longer owns.
    pub fn forget(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.books.remove(p);
        }
    }

    /// Drops every book (the consumer starts over from the store).
    pub fn clear(&mut self) {
        self.books.clear();
        self.loaded = false;
    }

    /// Every partition this consumer reads has its books rebuilt.
    pub fn mark_loaded(&mut self) {
        self.loaded = true;
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// The partitions whose books are held here.
    pub fn partitions(&self) -> Vec<i32> {
        self.books.keys().copied().collect()
    }

    /// The best `depth` levels of `symbol`'s book, if a book of it is held
    /// here (`None`: no order of it seen by this consumer).
    pub fn depth(&self, symbol: &str, depth: usize) -> Option<(Vec<Level>, Vec<Level>)> {
        self.books
            .values()
            .find_map(|books| books.get(symbol))
            .map(|book| book.depth(depth))
    }

    /// Orders resting in every book held here.
    pub fn resting(&self) -> usize {
        self.books
            .values()
            .flat_map(HashMap::values)
            .map(Book::len)
            .sum()
    }

    /// Matches a batch of events in log order. `stored` names the orders
    /// of the batch the store already holds: a record repeating an order id
    /// (a client retry, a replay) must not trade again — the first copy
    /// wins, as in the store.
    pub fn run(&mut self, events: &[Positioned], stored: &HashSet<Uuid>) -> Outcome {
        let mut run = Run::default();
        for positioned in events {
            let books = self.books.entry(positioned.partition).or_default();
            match &positioned.event {
                Event::Order(order) => {
                    if stored.contains(&order.id) || !run.seen.insert(order.id) {
                        continue;
                    }
                    run.order(books, positioned, order);
                }
                Event::Cancel(cancel) => run.cancel(books, positioned.partition, cancel),
            }
        }
        run.finish(&self.books)
    }
}

/// One batch being matched: what it did so far.
#[derive(Default)]
struct Run {
    out: Outcome,
    touched: HashMap<Uuid, OrderState>,
    /// Orders of this batch already matched (a record repeated in it).
    seen: HashSet<Uuid>,
    /// Each touched order's symbol and owner, and the symbols in the order
    /// first touched (with their partition) and their orders in the same way.
    whose: HashMap<Uuid, Option<Account>>,
    symbols: Vec<(String, i32, Vec<Uuid>)>,
}

impl Run {
    fn set(
        &mut self,
        symbol: &str,
        account: Option<&Account>,
        id: Uuid,
        partition: i32,
        fill: Fill,
    ) {
        let state = OrderState {
            id,
            partition,
            fill,
        };
        if self.touched.insert(id, state).is_none() {
            self.whose.insert(id, account.cloned());
            let at = match self.symbols.iter().position(|(s, _, _)| s == symbol) {
                Some(at) => at,
                None => {
                    self.symbols
                        .push((symbol.to_owned(), partition, Vec::new()));
                    self.symbols.len() - 1
                }
            };
            self.symbols[at].2.push(id);
        }
    }

    /// An order through its symbol's book: the trades it makes, its fill
    /// and its makers'.
    fn order(&mut self, books: &mut HashMap<String, Book>, at: &Positioned, order: &Order) {
        self.out.orders += 1;
        let symbol = order.symbol();
        let quantity = order.quantity.value();
        let book = books.entry(symbol.clone()).or_default();
        let owner = book.owner(order.account.as_ref());
        let Matched {
            executions,
            self_trades,
            ended,
        } = book.submit_as(Incoming {
            id: order.id,
            side: order.side,
            limit: order.limit(),
            quantity,
            time_in_force: order.terms.time_in_force,
            post_only: order.terms.post_only,
            at: order.created_at,
            owner,
        });
        for s in self_trades {
            self.out.self_trades += 1;
            let fill = Fill {
                status: Status::Cancelled,
                filled: s.quantity - s.remaining,
                reason: Some(Reason::SelfTrade),
            };
            self.set(&symbol, order.account.as_ref(), s.id, at.partition, fill);
        }
        let mut filled = Decimal::ZERO;
        for e in executions {
            filled += e.trade.quantity;
            let maker = match order.side {
                Side::Buy => e.trade.sell_order_id,
                Side::Sell => e.trade.buy_order_id,
            };
            let account = book.account_of(e.maker_owner).cloned();
            self.set(
                &symbol,
                account.as_ref(),
                maker,
                at.partition,
                fill_of(e.maker_quantity, e.maker_remaining),
            );
            self.out.trades.push(StoredTrade {
                trade: e.trade,
                symbol: symbol.clone(),
                partition: at.partition,
                offset: at.offset,
            });
        }
        let fill = match ended {
            None => fill_of(quantity, quantity - filled),
            Some((status, reason)) => Fill {
                status,
                filled,
                reason: Some(reason),
            },
        };
        if let Some((status, _)) = ended {
            self.out.ended.push(status);
        }
        self.set(
            &symbol,
            order.account.as_ref(),
            order.id,
            at.partition,
            fill,
        );
    }

    /// A cancel: the order out of its book, if it still rests there.
    fn cancel(&mut self, books: &mut HashMap<String, Book>, partition: i32, cancel: &Cancel) {
        let Some(book) = books.get_mut(cancel.symbol.as_str()) else {
            return;
        };
        let at = cancel.side.zip(cancel.price.map(Amount::value));
        if let Cancelled::Removed {
            quantity,
            remaining,
            owner,
        } = book.cancel(cancel.order_id, at)
        {
            self.out.cancelled += 1;
            let fill = Fill {
                status: Status::Cancelled,
                filled: quantity - remaining,
                reason: None,
            };
            let account = book.account_of(owner).cloned();
            self.set(
                cancel.symbol.as_str(),
                account.as_ref(),
                cancel.order_id,
                partition,
                fill,
            );
        }
    }

    fn finish(mut self, books: &HashMap<i32, HashMap<String, Book>>) -> Outcome {
        for (symbol, partition, ids) in std::mem::take(&mut self.symbols) {
            let (bids, asks) = books
                .get(&partition)
                .and_then(|b| b.get(&symbol))
                .map(|book| book.depth(CHANGE_DEPTH))
                .unwrap_or_default();
            let orders = ids
                .iter()
                .map(|id| Touched {
                    account: self.whose.remove(id).flatten(),
                    state: self.touched[id],
                })
                .collect();
            self.out.symbols.push(SymbolChange {
                symbol,
                partition,
                orders,
                bids,
                asks,
            });
        }
        self.out.states = self.touched.into_values().collect();
        self.out.states.sort_by_key(|s| s.id);
        self.out
    }
}

/// The fill of an order of `quantity` with `remaining` left in the book.
fn fill_of(quantity: Decimal, remaining: Decimal) -> Fill {
    let status = if remaining.is_zero() {
        Status::Filled
    } else if remaining == quantity {
        Status::Open
    } else {
        Status::PartiallyFilled
    };
    Fill {
        status,
        filled: quantity - remaining,
        reason: None,
    }
}

/// The incoming order, as the trades it makes name it.
#[derive(Debug, Clone, Copy)]
struct Taker {
    id: Uuid,
    side: Side,
    at: DateTime<Utc>,
    owner: Owner,
}

/// Fills `left` against the opposite side, best level first while its price
/// `crosses`, oldest order first within a level; returns what is unfilled
/// and how many resting orders it filled (out of the book).
fn sweep<K: Ord + Copy>(
    levels: &mut BTreeMap<K, Queue>,
    price_of: impl Fn(&K) -> Decimal,
    crosses: impl Fn(Decimal) -> bool,
    mut left: Decimal,
    taker: Taker,
    matched: &mut Matched,
) -> (Decimal, usize) {
    let mut filled = 0;
    while left > Decimal::ZERO {
        let Some(mut level) = levels.first_entry() else {
            break;
        };
        let price = price_of(level.key());
        if !crosses(price) {
            break;
        }
        let orders = level.get_mut();
        while left > Decimal::ZERO {
            let Some(maker) = orders.front_mut() else {
                break;
            };
            if !taker.owner.trades_with(maker.owner) {
                // Self-trade prevention: the owner's resting order goes.
                if let Some(own) = orders.pop_front() {
                    matched.self_trades.push(SelfTrade {
                        id: own.id,
                        quantity: own.quantity,
                        remaining: own.remaining,
                    });
                    filled += 1;
                }
                continue;
            }
            let quantity = left.min(maker.remaining);
            let (buy, sell) = match taker.side {
                Side::Buy => (taker.id, maker.id),
                Side::Sell => (maker.id, taker.id),
            };
            left -= quantity;
            maker.remaining -= quantity;
            matched.executions.push(Execution {
                trade: Trade {
                    id: Trade::id_for(taker.id, maker.id),
                    price,
                    quantity,
                    buy_order_id: buy,
                    sell_order_id: sell,
                    taker_side: taker.side,
                    executed_at: taker.at,
                },
                maker_quantity: maker.quantity,
                maker_remaining: maker.remaining,
                maker_owner: maker.owner,
            });
            if maker.remaining.is_zero() {
                orders.pop_front();
                filled += 1;
            }
        }
        if orders.is_empty() {
            level.remove();
        }
    }
    (left, filled)
}

/// Takes order `id` out of the level at `key`, or out of whichever level
/// holds it when `key` is `None`; a level left empty goes.
fn take<K: Ord + Copy>(side: &mut BTreeMap<K, Queue>, key: Option<K>, id: Uuid) -> Option<Resting> {
    let (key, removed) = match key {
        Some(key) => (key, side.get_mut(&key)?.remove(id)?),
        None => side
            .iter_mut()
            .find_map(|(key, level)| Some((*key, level.remove(id)?)))?,
    };
    if side.get(&key).is_some_and(Queue::is_empty) {
        side.remove(&key);
    }
    Some(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("decimal")
    }

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("time")
    }

    /// A `gtc` limit order of `owner`.
    fn owned(id: Uuid, side: Side, price: Decimal, quantity: Decimal, owner: Owner) -> Incoming {
        Incoming {
            owner,
            ..Incoming::limit(id, side, price, quantity, at())
        }
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn crossing_orders_trade_at_the_resting_price() {
        let mut book = Book::new();
        assert!(
            book.submit(id(1), Side::Sell, d("1.10"), d("5"), at())
                .is_empty()
        );
        let trades = book.submit(id(2), Side::Buy, d("1.20"), d("3"), at());
        assert_eq!(trades.len(), 1);
        assert_eq!(
            (trades[0].maker_quantity, trades[0].maker_remaining),
            (d("5"), d("2"))
        );
        let t = &trades[0].trade;
        assert_eq!((t.price, t.quantity), (d("1.1"), d("3")));
        assert_eq!((t.buy_order_id, t.sell_order_id), (id(2), id(1)));
        assert_eq!(t.taker_side, Side::Buy);
        assert_eq!(t.id, Trade::id_for(id(2), id(1)));
        assert_eq!(book.remaining(id(1)), Some(d("2")), "partially filled");
        assert_eq!(book.remaining(id(2)), None, "filled, not resting");
    }

    /// A book with asks of 2 at 1.10 and 3 at 1.20 (ids 1 and 2), and a
    /// bid of 4 at 1.00 (id 3).
    fn two_asks_one_bid() -> Book {
        let mut book = Book::new();
        book.submit(id(1), Side::Sell, d("1.10"), d("2"), at());
        book.submit(id(2), Side::Sell, d("1.20"), d("3"), at());
        book.submit(id(3), Side::Buy, d("1.00"), d("4"), at());
        book
    }

    fn with_terms(
        n: u128,
        side: Side,
        limit: Option<&str>,
        quantity: &str,
        time_in_force: TimeInForce,
        post_only: bool,
    ) -> Incoming {
        Incoming {
            limit: limit.map(d),
            time_in_force,
            post_only,
            ..Incoming::limit(id(n), side, Decimal::ZERO, d(quantity), at())
        }
    }

    fn traded(m: &Matched) -> Vec<(Uuid, Decimal, Decimal)> {
        m.executions
            .iter()
            .map(|e| (e.trade.sell_order_id, e.trade.price, e.trade.quantity))
            .collect()
    }

    #[test]
    fn a_market_order_takes_every_price_and_what_the_book_lacks_expires() {
        let mut book = two_asks_one_bid();
        let m = book.submit_as(with_terms(9, Side::Buy, None, "4", TimeInForce::Ioc, false));
        assert_eq!(
            traded(&m),
            [(id(1), d("1.10"), d("2")), (id(2), d("1.20"), d("2"))]
        );
        assert_eq!(m.ended, None, "filled whole");
        let m = book.submit_as(with_terms(
            10,
            Side::Buy,
            None,
            "5",
            TimeInForce::Ioc,
            false,
        ));
        assert_eq!(traded(&m), [(id(2), d("1.20"), d("1"))]);
        assert_eq!(m.ended, Some((Status::Expired, Reason::MarketRemainder)));
        assert_eq!(book.remaining(id(10)), None, "a market order never rests");
        let m = book.submit_as(with_terms(
            11,
            Side::Buy,
            None,
            "1",
            TimeInForce::Ioc,
            false,
        ));
        assert!(m.executions.is_empty());
        assert_eq!(m.ended, Some((Status::Expired, Reason::MarketRemainder)));
    }

    #[test]
    fn ioc_fills_what_it_can_at_its_limit_and_the_rest_expires() {
        let mut book = two_asks_one_bid();
        let m = book.submit_as(with_terms(
            9,
            Side::Buy,
            Some("1.15"),
            "5",
            TimeInForce::Ioc,
            false,
        ));
        assert_eq!(traded(&m), [(id(1), d("1.10"), d("2"))]);
        assert_eq!(m.ended, Some((Status::Expired, Reason::IocRemainder)));
        assert_eq!(book.remaining(id(9)), None);
        assert_eq!(book.remaining(id(2)), Some(d("3")), "beyond the limit");
    }

    #[test]
    fn fok_fills_all_at_once_or_nothing_trades() {
        let mut book = two_asks_one_bid();
        // 5 within 1.20 exist, 6 do not: nothing trades, nothing changes.
        let m = book.submit_as(with_terms(
            9,
            Side::Buy,
            Some("1.20"),
            "6",
            TimeInForce::Fok,
            false,
        ));
        assert!(m.executions.is_empty());
        assert_eq!(m.ended, Some((Status::Expired, Reason::FokNotFillable)));
        assert_eq!(
            (book.remaining(id(1)), book.remaining(id(2))),
            (Some(d("2")), Some(d("3")))
        );
        // Within 1.10 only 2 exist.
        let m = book.submit_as(with_terms(
            10,
            Side::Buy,
            Some("1.10"),
            "3",
            TimeInForce::Fok,
            false,
        ));
        assert_eq!(m.ended, Some((Status::Expired, Reason::FokNotFillable)));
        let m = book.submit_as(with_terms(
            11,
            Side::Buy,
            Some("1.20"),
            "5",
            TimeInForce::Fok,
            false,
        ));
        assert_eq!(
            traded(&m),
            [(id(1), d("1.10"), d("2")), (id(2), d("1.20"), d("3"))]
        );
        assert_eq!(m.ended, None);
        // A market fok: the whole book side counts.
        let m = book.submit_as(with_terms(
            12,
            Side::Sell,
            None,
            "5",
            TimeInForce::Fok,
            false,
        ));
        assert_eq!(m.ended, Some((Status::Expired, Reason::FokNotFillable)));
        assert_eq!(book.remaining(id(3)), Some(d("4")));
    }

    #[test]
    fn fok_does_not_count_its_own_accounts_orders_and_cancels_nothing_when_it_fails() {
        let mut book = Book::new();
        let a = book.owner(Some(&"alice".parse().expect("account")));
        let b = book.owner(Some(&"bob".parse().expect("account")));
        book.submit_as(owned(id(1), Side::Sell, d("1.10"), d("2"), a));
        book.submit_as(owned(id(2), Side::Sell, d("1.10"), d("2"), b));
        let fok = Incoming {
            owner: a,
            ..with_terms(9, Side::Buy, Some("1.10"), "3", TimeInForce::Fok, false)
        };
        let m = book.submit_as(fok);
        assert_eq!(m.ended, Some((Status::Expired, Reason::FokNotFillable)));
        assert!(m.self_trades.is_empty(), "a failed fok changes nothing");
        assert_eq!(book.remaining(id(1)), Some(d("2")));
        let fits = Incoming {
            owner: a,
            ..with_terms(10, Side::Buy, Some("1.10"), "2", TimeInForce::Fok, false)
        };
        let m = book.submit_as(fits);
        assert_eq!(m.ended, None);
        assert_eq!(traded(&m), [(id(2), d("1.10"), d("2"))]);
        assert_eq!(
            m.self_trades.len(),
            1,
            "its own resting order went on the way"
        );
    }

    #[test]
    fn post_only_rests_or_is_rejected_and_never_trades() {
        let mut book = two_asks_one_bid();
        let m = book.submit_as(with_terms(
            9,
            Side::Buy,
            Some("1.10"),
            "1",
            TimeInForce::Gtc,
            true,
        ));
        assert!(m.executions.is_empty());
        assert_eq!(
            m.ended,
            Some((Status::Rejected, Reason::PostOnlyWouldTrade))
        );
        assert_eq!(book.remaining(id(1)), Some(d("2")));
        assert_eq!(book.remaining(id(9)), None);
        let m = book.submit_as(with_terms(
            10,
            Side::Buy,
            Some("1.05"),
            "1",
            TimeInForce::Gtc,
            true,
        ));
        assert_eq!(m, Matched::default(), "rests, as any limit order");
        assert_eq!(book.remaining(id(10)), Some(d("1")));
        // Post-only and ioc: it can neither take nor rest.
        let m = book.submit_as(with_terms(
            11,
            Side::Buy,
            Some("1.05"),
            "1",
            TimeInForce::Ioc,
            true,
        ));
        assert_eq!(m.ended, Some((Status::Expired, Reason::IocRemainder)));
    }

    #[test]
    fn the_terms_reach_the_fills_through_a_batch() {
        let mut matcher = Matcher::new();
        let mut ask = contract::order(("USD", "EUR"), 1);
        ask.order.side = Side::Sell;
        ask.order.price = Some("1.10".parse().expect("price"));
        ask.order.quantity = "2".parse().expect("quantity");
        let mut taker = contract::order(("USD", "EUR"), 2);
        taker.order.side = Side::Buy;
        taker.order.price = None;
        taker.order.quantity = "3".parse().expect("quantity");
        taker.order.terms.order_type = crate::domain::OrderType::Market;
        taker.order.terms.time_in_force = TimeInForce::Ioc;
        let events: Vec<Positioned> = [&ask, &taker]
            .iter()
            .enumerate()
            .map(|(i, o)| Positioned {
                partition: 0,
                offset: i as i64,
                event: Event::Order(o.order.clone()),
            })
            .collect();
        let outcome = matcher.run(&events, &HashSet::new());
        let fill_of = |id| {
            outcome
                .states
                .iter()
                .find(|s| s.id == id)
                .expect("touched")
                .fill
        };
        assert_eq!(
            fill_of(taker.order.id),
            Fill {
                status: Status::Expired,
                filled: d("2"),
                reason: Some(Reason::MarketRemainder)
            }
        );
        assert_eq!(fill_of(ask.order.id).status, Status::Filled);
        assert_eq!(outcome.ended, [Status::Expired]);
    }

    #[test]
    fn best_price_first_then_oldest_first() {
        let mut book = Book::new();
        book.submit(id(1), Side::Buy, d("10"), d("1"), at());
        book.submit(id(2), Side::Buy, d("11"), d("1"), at());
        book.submit(id(3), Side::Buy, d("11.0"), d("1"), at());
        book.submit(id(4), Side::Buy, d("9"), d("1"), at());
        let trades = book.submit(id(5), Side::Sell, d("10"), d("10"), at());
        let makers: Vec<_> = trades.iter().map(|t| t.trade.buy_order_id).collect();
        assert_eq!(
            makers,
            [id(2), id(3), id(1)],
            "11, 11 (older first), 10; never 9"
        );
        let prices: Vec<_> = trades.iter().map(|t| t.trade.price).collect();
        assert_eq!(prices, [d("11"), d("11"), d("10")]);
        assert_eq!(book.remaining(id(5)), Some(d("7")), "the rest rests at 10");
        let (bids, asks) = book.depth(5);
        assert_eq!(
            bids,
            [Level {
                price: d("9"),
                quantity: d("1"),
                orders: 1
            }]
        );
        assert_eq!(asks[0].price, d("10"));
        assert_eq!(asks[0].quantity, d("7"));
    }

    #[test]
    fn a_cancelled_order_no_longer_trades_and_cancelling_twice_is_harmless() {
        let mut book = Book::new();
        book.submit(id(1), Side::Sell, d("5"), d("2"), at());
        book.submit(id(3), Side::Sell, d("5"), d("1"), at());
        // The cancel names the price as the order was written ("5.00" and
        // "5" are one level).
        assert_eq!(
            book.cancel(id(1), Some((Side::Sell, d("5.00")))),
            Cancelled::Removed {
                quantity: d("2"),
                remaining: d("2"),
                owner: Owner::NONE
            }
        );
        assert_eq!(
            book.cancel(id(1), Some((Side::Sell, d("5")))),
            Cancelled::NotResting
        );
        // A cancel without side and price (an older record) finds it anyway.
        assert_eq!(
            book.cancel(id(3), None),
            Cancelled::Removed {
                quantity: d("1"),
                remaining: d("1"),
                owner: Owner::NONE
            }
        );
        assert_eq!(book.cancel(id(3), None), Cancelled::NotResting);
        assert!(book.is_empty());
        assert!(
            book.submit(id(2), Side::Buy, d("6"), d("1"), at())
                .is_empty()
        );
        assert!(book.depth(10).1.is_empty(), "no empty level is left");
        assert_eq!(
            book.cancel(id(2), Some((Side::Sell, d("6")))),
            Cancelled::NotResting,
            "the wrong side is not searched"
        );
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn an_order_cancels_its_own_accounts_resting_order_and_trades_on() {
        let mut book = Book::new();
        let alice = "alice".parse::<Account>().expect("account");
        let bob = "bob".parse::<Account>().expect("account");
        let (a, b) = (book.owner(Some(&alice)), book.owner(Some(&bob)));
        assert_eq!(book.owner(Some(&alice)), a, "one number per account");
        // Alice rests first at the best price, Bob behind her at the same one.
        book.submit_as(owned(id(1), Side::Sell, d("1.10"), d("5"), a));
        book.submit_as(owned(id(2), Side::Sell, d("1.10"), d("4"), b));
        book.submit_as(owned(id(3), Side::Sell, d("1.20"), d("4"), a));
        let matched = book.submit_as(owned(id(4), Side::Buy, d("1.20"), d("6"), a));
        assert_eq!(
            matched.self_trades,
            vec![
                SelfTrade {
                    id: id(1),
                    quantity: d("5"),
                    remaining: d("5")
                },
                SelfTrade {
                    id: id(3),
                    quantity: d("4"),
                    remaining: d("4")
                },
            ],
            "both of alice's resting orders on the way are cancelled"
        );
        assert_eq!(matched.executions.len(), 1, "only bob's order trades");
        let t = &matched.executions[0].trade;
        assert_eq!((t.sell_order_id, t.quantity), (id(2), d("4")));
        assert_eq!(book.remaining(id(4)), Some(d("2")), "the rest rests");
        assert_eq!(book.len(), 1);
        // No account never counts as one owner: such orders trade.
        let mut old = Book::new();
        old.submit_as(owned(id(5), Side::Sell, d("1"), d("1"), Owner::NONE));
        let traded = old.submit_as(owned(id(6), Side::Buy, d("1"), d("1"), Owner::NONE));
        assert_eq!((traded.executions.len(), traded.self_trades.len()), (1, 0));
    }

    #[test]
    fn self_trade_prevention_is_decided_the_same_on_replay() {
        let own = |n: i64, side: Side, account: &str| {
            let mut o = contract::order(("USD", "EUR"), n).order;
            o.side = side;
            o.account = Some(account.parse().expect("account"));
            o
        };
        let events: Vec<Positioned> = [
            own(5, Side::Sell, "alice"),
            own(5, Side::Sell, "bob"),
            own(9, Side::Buy, "alice"),
        ]
        .iter()
        .enumerate()
        .map(|(offset, o)| Positioned {
            partition: 0,
            offset: offset as i64,
            event: Event::Order(o.clone()),
        })
        .collect();
        let run = || {
            let out = Matcher::new().run(&events, &HashSet::new());
            (out.states, out.trades.len(), out.self_trades)
        };
        let first = run();
        assert_eq!(first.2, 1, "alice's sell is cancelled");
        assert_eq!(first.1, 1, "bob's sell trades");
        let alices = first
            .0
            .iter()
            .find(|s| s.id == events_id(&events[0]))
            .expect("alice's sell is touched");
        assert_eq!(alices.fill.status, Status::Cancelled);
        assert_eq!(run(), first, "a replay decides the same");
    }

    fn events_id(p: &Positioned) -> Uuid {
        match &p.event {
            Event::Order(o) => o.id,
            Event::Cancel(c) => c.order_id,
        }
    }

    #[test]
    fn an_order_seen_twice_trades_once() {
        let sell = contract::order(("USD", "EUR"), 5).order; // sells 3 at 5.5
        let mut buy = contract::order(("USD", "EUR"), 6).order;
        buy.side = Side::Buy; // buys 1 at 6.5
        buy.quantity = Amount::try_from(Decimal::ONE).expect("amount");
        let at = |offset: i64, order: &crate::domain::Order| Positioned {
            partition: 0,
            offset,
            event: Event::Order(order.clone()),
        };
        let mut matcher = Matcher::new();
        let first = matcher.run(&[at(0, &sell), at(1, &buy), at(2, &buy)], &HashSet::new());
        assert_eq!(
            first.trades.len(),
            1,
            "the copy in the batch does not trade"
        );
        assert_eq!(first.orders, 2);
        // A later batch repeats it (a client retry): the store knows it.
        let again = matcher.run(&[at(3, &buy)], &HashSet::from([buy.id]));
        assert!(again.trades.is_empty() && again.states.is_empty());
        assert_eq!(matcher.resting(), 1, "the sell, partly filled");
    }

    #[test]
    fn a_deep_level_stays_in_order_and_dense_through_cancels() {
        let mut book = Book::new();
        let n = 20 * CHUNK as u128;
        for i in 0..n {
            book.submit(id(i), Side::Buy, d("7"), d("1"), at());
        }
        let level = |book: &Book| {
            let queue = &book.bids[&Reverse(d("7"))];
            (
                queue.iter().map(|r| r.id).collect::<Vec<_>>(),
                queue.chunks.len(),
            )
        };
        assert_eq!(level(&book).1, 20, "full chunks");
        // Cancel three orders of every four, scattered through the level.
        for i in (0..n).filter(|i| i % 4 != 0) {
            assert!(matches!(
                book.cancel(id(i), Some((Side::Buy, d("7")))),
                Cancelled::Removed { .. }
            ));
        }
        let (ids, chunks) = level(&book);
        assert_eq!(
            ids,
            (0..n).step_by(4).map(id).collect::<Vec<_>>(),
            "oldest first"
        );
        assert!(
            chunks <= 2 * ids.len().div_ceil(CHUNK),
            "{chunks} chunks for {} orders",
            ids.len()
        );
        // A seller takes them oldest first, across chunk boundaries.
        let trades = book.submit(id(n), Side::Sell, d("7"), d("100"), at());
        let makers: Vec<_> = trades.iter().map(|t| t.trade.buy_order_id).collect();
        assert_eq!(makers, ids[..100]);
        assert_eq!(book.len(), ids.len() - 100);
    }

    /// A tiny deterministic generator (the tests need no crate for it).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % bound
        }
    }

    /// One step of a generated workload.
    #[derive(Debug, Clone, Copy)]
    enum Op {
        Submit(Uuid, Side, Decimal, Decimal),
        /// Cancel an earlier order, naming where it rests (or not, as an
        /// older cancel record).
        Cancel(Uuid, Side, Decimal, bool),
    }

    /// The obvious matcher: scan every resting order for the best one.
    fn reference(events: &[Op]) -> Vec<(Uuid, Uuid, Decimal, Decimal)> {
        let mut resting: Vec<(u64, Uuid, Side, Decimal, Decimal)> = Vec::new();
        let mut out = Vec::new();
        for (seq, op) in events.iter().enumerate() {
            let (id, side, price, qty) = match op {
                Op::Submit(id, side, price, qty) => (id, side, price, qty),
                Op::Cancel(id, ..) => {
                    resting.retain(|r| r.1 != *id);
                    continue;
                }
            };
            let mut left = *qty;
            loop {
                let best = resting
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.2 != *side)
                    .filter(|(_, r)| match side {
                        Side::Buy => r.3 <= *price,
                        Side::Sell => r.3 >= *price,
                    })
                    .min_by(|(_, a), (_, b)| match side {
                        Side::Buy => a.3.cmp(&b.3).then(a.0.cmp(&b.0)),
                        Side::Sell => b.3.cmp(&a.3).then(a.0.cmp(&b.0)),
                    })
                    .map(|(i, _)| i);
                let Some(i) = best else { break };
                if left.is_zero() {
                    break;
                }
                let q = left.min(resting[i].4);
                out.push((*id, resting[i].1, resting[i].3, q));
                left -= q;
                resting[i].4 -= q;
                if resting[i].4.is_zero() {
                    resting.remove(i);
                }
            }
            if !left.is_zero() {
                resting.push((seq as u64, *id, *side, *price, left));
            }
        }
        out
    }

    #[test]
    fn the_book_agrees_with_the_obvious_matcher_and_replays_identically() {
        let mut rng = Lcg(7);
        let mut submitted: Vec<(Uuid, Side, Decimal)> = Vec::new();
        let events: Vec<_> = (0..6_000u128)
            .map(|n| {
                // One step in five cancels an earlier order (resting,
                // filled or cancelled already).
                if !submitted.is_empty() && rng.next(5) == 0 {
                    let (id, side, price) = submitted[rng.next(submitted.len() as u64) as usize];
                    return Op::Cancel(id, side, price, rng.next(4) != 0);
                }
                let side = if rng.next(2) == 0 {
                    Side::Buy
                } else {
                    Side::Sell
                };
                // Few levels, so levels grow deep (several chunks).
                let price = Decimal::new(9_990 + rng.next(20) as i64, 2);
                let qty = Decimal::new(1 + rng.next(500) as i64, 1);
                submitted.push((id(n + 1), side, price));
                Op::Submit(id(n + 1), side, price, qty)
            })
            .collect();
        let run = || {
            let mut book = Book::new();
            let mut trades = Vec::new();
            let mut cancelled = 0;
            for op in &events {
                match *op {
                    Op::Submit(id, side, price, qty) => trades.extend(
                        book.submit(id, side, price, qty, at())
                            .into_iter()
                            .map(|e| e.trade),
                    ),
                    Op::Cancel(id, side, price, named) => {
                        let rests_at = named.then_some((side, price));
                        if book.cancel(id, rests_at) != Cancelled::NotResting {
                            cancelled += 1;
                        }
                    }
                }
            }
            (trades, cancelled, book.len())
        };
        let (trades, cancelled, left) = run();
        let expected = reference(&events);
        let got: Vec<_> = trades
            .iter()
            .map(|t| {
                let maker = if t.taker_side == Side::Buy {
                    t.sell_order_id
                } else {
                    t.buy_order_id
                };
                let taker = if t.taker_side == Side::Buy {
                    t.buy_order_id
                } else {
                    t.sell_order_id
                };
                (taker, maker, t.price, t.quantity)
            })
            .collect();
        assert!(trades.len() > 500, "the workload crosses: {}", trades.len());
        assert!(cancelled > 100, "cancels take orders out: {cancelled}");
        assert!(left > 2 * CHUNK, "levels span chunks: {left} resting");
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(
                (g.0, g.1, g.2.normalize(), g.3),
                (e.0, e.1, e.2.normalize(), e.3)
            );
        }
        assert_eq!(
            run(),
            (trades.clone(), cancelled, left),
            "a replay gives the same trades, same ids"
        );
        let ids: std::collections::HashSet<_> = trades.iter().map(|t| t.id).collect();
        assert_eq!(ids.len(), trades.len(), "trade ids are unique");
    }
}
