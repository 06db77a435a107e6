//! The memory engine: the orders view in process memory, the log as its
//! journal and snapshots on disk so a restart does not read the whole log.
//!
//! The state is a set of persistent maps (`imbl`): cloning it is O(1) and
//! shares every node. A batch is first admitted (offsets, bound), then
//! applied under the state's write lock — a reader sees a batch whole or
//! not at all, and a refused batch changes nothing. It is applied in place
//! unless a reader or the snapshot writer still holds the state; then only
//! the nodes it touches are copied. A snapshot takes the current state as
//! an O(1) clone and is written by a thread of its own, off the consumer's
//! path. Only one process sees the data (like redb), so group
//! mode refuses it; every instance in assign mode is a full replica.
//!
//! A snapshot holds the whole state *and* its offsets, so a restart loads
//! it and reads the log from exactly there: what the process held past the
//! last snapshot is read again from the log, never lost, never doubled.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod row;

use row::{OrderRow, TradeRow};

use super::settings::MemoryStoreSettings;
use super::{Applied, Batch, Store, StoreError, first_after};
use crate::domain::{Account, Currency, Offsets, StoredOrder, StoredTrade};

/// The first bytes of every snapshot file; the digits are the format
/// version (01 was one payload; 02 has sections, decoded in parallel; 03
/// holds positional binary rows, [`row`]; 04 adds the order's account as
/// the rows' last field; 05 the order's terms and the fill's reason after
/// it). A file of another version is refused like a damaged one: the log
/// is read from the snapshot before.
const MAGIC: &[u8; 8] = b"OMSMEM05";
/// Read as well as [`MAGIC`]: their rows are 05's without the last fields,
/// which a row missing them decodes as (orders of no account, limit `gtc`,
/// fills without a reason) — a snapshot written before accounts or order
/// types loads as it was.
const MAGIC_BEFORE: [&[u8; 8]; 2] = [b"OMSMEM04", b"OMSMEM03"];
/// What follows the magic, each as a section: its length (u64 LE), its
/// CRC-32 (u32 LE), its bytes.
const SECTIONS: usize = 4;
const SECTION_HEADER: usize = 8 + 4;
const SUFFIX: &str = ".snapshot";
const PARTIAL: &str = ".partial";
const REFUSED: &str = ".refused";

/// An estimate of what one stored order holds in memory beyond its strings:
/// the order itself, its `Arc`, its nodes in the id map and the symbol
/// index, and its entry in the resting index while it rests. Calibrated
/// against the process' RSS: 749 MiB more for 1 M orders (bench/analysis.md).
const ORDER_OVERHEAD: u64 = 750;
/// Likewise for a trade with its symbol-index entry.
const TRADE_OVERHEAD: u64 = 300;

/// symbol → ids in id order. One set per symbol, keyed by plain integers:
/// a batch's copy-on-write of a B-tree leaf then copies no reference counts.
type SymbolIndex = imbl::HashMap<Arc<str>, imbl::OrdSet<u128>>;

fn index(index: &mut SymbolIndex, symbol: &str, key: u128) {
    match index.get_mut(symbol) {
        Some(ids) => {
            ids.insert(key);
        }
        None => {
            index.insert(Arc::from(symbol), imbl::OrdSet::unit(key));
        }
    }
}

/// Everything the engine holds; cheap to clone (persistent maps).
#[derive(Clone, Default)]
struct State {
    /// id → order, its fill set.
    orders: imbl::HashMap<u128, Arc<StoredOrder>>,
    by_symbol: SymbolIndex,
    /// (partition, id) of every order resting in a book.
    resting: imbl::OrdSet<(i32, u128)>,
    trades: imbl::HashMap<u128, Arc<StoredTrade>>,
    trades_by_symbol: SymbolIndex,
    /// topic → next offset to read, per partition.
    offsets: BTreeMap<String, Offsets>,
    /// Estimated bytes held (for `max_mib`).
    bytes: u64,
    /// Batches applied since the store was first created: names snapshots.
    generation: u64,
}

/// The small part of a snapshot: what names it and where the log resumes.
/// No `serde(flatten)` anywhere in a snapshot: flattened structs decode
/// through serde's generic buffering, which made loading 1 M orders take
/// ~20 s.
#[derive(Serialize, Deserialize)]
struct Meta {
    generation: u64,
    offsets: BTreeMap<String, Offsets>,
}

/// A scoped thread's result; its panic goes on as this thread's.
fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Builds a symbol index from ids that come symbol by symbol in id order
/// (a snapshot's order): each symbol's set is built by appending to the one
/// being filed instead of a lookup and a random insert per id.
#[derive(Default)]
struct Runs {
    run: Option<(String, imbl::OrdSet<u128>)>,
}

impl Runs {
    /// Files `id` under the symbol `is` recognises; `name` makes that
    /// symbol when it starts a run.
    fn push(
        &mut self,
        index: &mut SymbolIndex,
        is: impl Fn(&str) -> bool,
        name: impl FnOnce() -> String,
        id: u128,
    ) {
        if !self.run.as_ref().is_some_and(|(symbol, _)| is(symbol)) {
            self.finish(index);
            self.run = Some((name(), imbl::OrdSet::new()));
        }
        if let Some((_, ids)) = &mut self.run {
            ids.insert(id);
        }
    }

    fn finish(&mut self, index: &mut SymbolIndex) {
        let Some((symbol, run)) = self.run.take() else {
            return;
        };
        match index.get_mut(symbol.as_str()) {
            // Only a snapshot written in another order comes back to a symbol.
            Some(ids) => *ids = std::mem::take(ids).union(run),
            None => {
                index.insert(Arc::from(symbol), run);
            }
        }
    }
}

/// A snapshot holds each id once; one held twice refuses the snapshot.
fn once<T>(held: Option<T>, what: &str, key: u128) -> Result<(), String> {
    match held {
        None => Ok(()),
        Some(_) => Err(format!(
            "{what} {} is in the snapshot twice",
            Uuid::from_u128(key)
        )),
    }
}

/// Every row of `rows`, symbol by symbol in id order.
fn by_symbol<'a, T>(
    index: &'a SymbolIndex,
    rows: &'a imbl::HashMap<u128, Arc<T>>,
    what: &str,
) -> Result<impl Iterator<Item = &'a Arc<T>>, rmp_serde::encode::Error> {
    let indexed: usize = index.values().map(|ids| ids.len()).sum();
    if indexed != rows.len() {
        // Every row is indexed under its symbol when it is inserted; a
        // snapshot that walked an index missing some would lose them.
        return Err(serde::ser::Error::custom(format!(
            "the symbol index holds {indexed} {what}, the store {}",
            rows.len()
        )));
    }
    Ok(index
        .values()
        .flat_map(|ids| ids.iter())
        .filter_map(|id| rows.get(id)))
}

/// Whether `symbol` is `src-dst`, without making the string.
fn names(symbol: &str, src: &Currency, dst: &Currency) -> bool {
    symbol
        .strip_prefix(src.as_str())
        .and_then(|rest| rest.strip_prefix('-'))
        == Some(dst.as_str())
}

/// Decodes a sequence one item at a time, handing each to `f`: a snapshot
/// goes straight into the maps, never through a vector of every order.
struct Each<T, F>(F, std::marker::PhantomData<T>);

impl<T, F: FnMut(T) -> Result<(), String>> Each<T, F> {
    fn new(f: F) -> Self {
        Each(f, std::marker::PhantomData)
    }
}

impl<'de, T: Deserialize<'de>, F: FnMut(T) -> Result<(), String>> serde::de::DeserializeSeed<'de>
    for Each<T, F>
{
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>, F: FnMut(T) -> Result<(), String>> serde::de::Visitor<'de>
    for Each<T, F>
{
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a sequence")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element()? {
            (self.0)(item).map_err(serde::de::Error::custom)?;
        }
        Ok(())
    }
}

/// `bytes`, whole, as a sequence of `T`, each handed to `f`; its error
/// stops the decoding.
fn each<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
    f: impl FnMut(T) -> Result<(), String>,
) -> Result<(), rmp_serde::decode::Error> {
    use serde::de::DeserializeSeed;
    // The section's CRC-32 has passed: what it holds is what was written.
    Each::new(f).deserialize(&mut rmp_serde::Deserializer::from_read_ref(bytes))
}

/// Serialises the items of an iterator as a sequence without collecting
/// them: a snapshot borrows the state instead of copying every order.
struct Seq<I>(std::cell::RefCell<Option<I>>);

impl<I> Serialize for Seq<I>
where
    I: Iterator,
    I::Item: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.borrow_mut().take() {
            Some(items) => serializer.collect_seq(items),
            None => Err(serde::ser::Error::custom(
                "a snapshot sequence is written once",
            )),
        }
    }
}

fn seq<I: Iterator>(items: I) -> Seq<I> {
    Seq(std::cell::RefCell::new(Some(items)))
}

fn order_bytes(o: &StoredOrder) -> u64 {
    let strings = o.order.description.as_str().len()
        + o.order
            .client_order_id
            .as_ref()
            .map_or(0, |c| c.as_str().len());
    ORDER_OVERHEAD + strings as u64
}

fn trade_bytes(t: &StoredTrade) -> u64 {
    TRADE_OVERHEAD + t.symbol.len() as u64
}

impl State {
    /// The snapshot's sections: meta, orders, resting, trades. The orders
    /// are written symbol by symbol in id order (the symbol index's order),
    /// so a restart rebuilds each symbol's set by appending, never by a
    /// random insert.
    fn encode(&self) -> Result<[Vec<u8>; SECTIONS], rmp_serde::encode::Error> {
        let meta = Meta {
            generation: self.generation,
            offsets: self.offsets.clone(),
        };
        let orders = by_symbol(&self.by_symbol, &self.orders, "orders")?.map(|o| OrderRow::of(o));
        let trades =
            by_symbol(&self.trades_by_symbol, &self.trades, "trades")?.map(|t| TradeRow::of(t));
        Ok([
            rmp_serde::to_vec_named(&meta)?,
            rmp_serde::to_vec(&seq(orders))?,
            rmp_serde::to_vec(&seq(self.resting.iter()))?,
            rmp_serde::to_vec(&seq(trades))?,
        ])
    }

    /// The state the sections hold, on every core: one thread decodes the
    /// orders while this one files them into the maps, a third decodes the
    /// trades and the resting index.
    fn decode(
        [meta, orders, resting, trades]: [&[u8]; SECTIONS],
    ) -> Result<State, rmp_serde::decode::Error> {
        /// Orders handed from the decoding thread to the filing one at a time.
        const CHUNK: usize = 4096;
        let meta: Meta = rmp_serde::from_slice(meta)?;
        let (mut state, rest) = std::thread::scope(|scope| {
            let rest = scope.spawn(|| {
                let mut state = State::default();
                let mut runs = Runs::default();
                each(trades, |row: TradeRow| {
                    let (key, symbol) = (row.id(), row.symbol());
                    runs.push(
                        &mut state.trades_by_symbol,
                        |s| s == symbol,
                        || symbol.to_owned(),
                        key,
                    );
                    let stored = row.stored()?;
                    state.bytes += trade_bytes(&stored);
                    once(state.trades.insert(key, Arc::new(stored)), "trade", key)
                })?;
                runs.finish(&mut state.trades_by_symbol);
                each(resting, |at: (i32, u128)| {
                    state.resting.insert(at);
                    Ok(())
                })?;
                Ok::<_, rmp_serde::decode::Error>(state)
            });
            // The id map's inserts are the longest part: this thread does
            // only those; the decoder also builds the symbol index.
            let (chunks, decoded) = mpsc::sync_channel::<Vec<(u128, Arc<StoredOrder>)>>(4);
            let decoder = scope.spawn(move || {
                let (mut by_symbol, mut runs, mut bytes) =
                    (SymbolIndex::default(), Runs::default(), 0);
                let mut rows = row::Orders::default();
                let mut chunk = Vec::with_capacity(CHUNK);
                each(orders, |row: OrderRow| {
                    let key = row.id();
                    let stored = rows.stored(row)?;
                    let order = &stored.order;
                    let (src, dst) = (&order.src_currency, &order.dst_currency);
                    runs.push(
                        &mut by_symbol,
                        |s| names(s, src, dst),
                        || order.symbol(),
                        key,
                    );
                    bytes += order_bytes(&stored);
                    chunk.push((key, Arc::new(stored)));
                    if chunk.len() == CHUNK {
                        let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                        // The filing thread stopped: it has the error.
                        chunks.send(full).map_err(|_| "the orders are refused")?;
                    }
                    Ok(())
                })?;
                _ = chunks.send(chunk);
                runs.finish(&mut by_symbol);
                Ok::<_, rmp_serde::decode::Error>((by_symbol, bytes))
            });
            let mut orders = imbl::HashMap::new();
            let filed = decoded
                .iter()
                .flatten()
                .try_for_each(|(key, stored)| once(orders.insert(key, stored), "order", key));
            drop(decoded);
            let filed = filed.map_err(serde::de::Error::custom);
            let decoded = join(decoder);
            let rest = join(rest);
            // The filing error first: the decoder's refused send follows it.
            filed.and(decoded).map(|(by_symbol, bytes)| {
                let state = State {
                    orders,
                    by_symbol,
                    bytes,
                    ..State::default()
                };
                (state, rest)
            })
        })?;
        let rest = rest?;
        state.trades = rest.trades;
        state.trades_by_symbol = rest.trades_by_symbol;
        state.resting = rest.resting;
        state.bytes += rest.bytes;
        state.generation = meta.generation;
        state.offsets = meta.offsets;
        Ok(state)
    }

    /// First write wins: `false` for an id already held.
    fn insert_order(&mut self, order: StoredOrder) -> bool {
        let key = order.order.id.as_u128();
        if self.orders.contains_key(&key) {
            return false;
        }
        self.bytes += order_bytes(&order);
        index(&mut self.by_symbol, order.order.symbol().as_str(), key);
        self.orders.insert(key, Arc::new(order));
        true
    }

    fn insert_trade(&mut self, trade: StoredTrade) {
        let key = trade.trade.id.as_u128();
        if self.trades.contains_key(&key) {
            return;
        }
        self.bytes += trade_bytes(&trade);
        index(&mut self.trades_by_symbol, &trade.symbol, key);
        self.trades.insert(key, Arc::new(trade));
    }

    /// Whether the batch may be applied on top of this state, and the
    /// offsets it starts from; nothing is changed either way.
    fn admit(&self, batch: &Batch, max_bytes: u64) -> Result<Offsets, StoreError> {
        let current = self.offsets.get(&batch.topic).cloned().unwrap_or_default();
        batch.check(&current)?;
        if let Some(fenced) = &batch.claim {
            // Leases exist only in a shared store; this one is never shared.
            return Err(StoreError::refused(format!(
                "the memory store holds no leases, yet a batch claims {fenced:?}"
            )));
        }
        let incoming: u64 = batch.orders.iter().map(order_bytes).sum::<u64>()
            + batch.trades.iter().map(trade_bytes).sum::<u64>();
        if max_bytes > 0 && self.bytes + incoming > max_bytes {
            return Err(StoreError::unavailable(format!(
                "the memory store is full: it holds ~{} MiB and store.memory.max_mib is {}; \
                 the log keeps every order until the bound is raised (restart with a larger \
                 store.memory.max_mib)",
                self.bytes >> 20,
                max_bytes >> 20
            )));
        }
        Ok(current)
    }

    /// An admitted batch on top of this state (it cannot fail: every
    /// refusal is [`State::admit`]'s, before anything changes).
    fn apply(&mut self, batch: &Batch, current: &Offsets) -> Applied {
        let mut applied = Applied::default();
        for stored in &batch.orders {
            if self.insert_order(stored.clone()) {
                applied.inserted += 1;
            } else {
                applied.duplicates += 1;
            }
        }
        let forward: Vec<(i32, i64)> = batch.forward(current).collect();
        let offsets = self.offsets.entry(batch.topic.clone()).or_default();
        offsets.extend(forward);
        for state in &batch.states {
            let key = state.id.as_u128();
            if let Some(order) = self.orders.get(&key)
                && order.fill != state.fill
            {
                let mut order = (**order).clone();
                order.fill = state.fill;
                self.orders.insert(key, Arc::new(order));
            }
            if state.fill.status.is_live() {
                self.resting.insert((state.partition, key));
            } else {
                self.resting.remove(&(state.partition, key));
            }
        }
        for trade in &batch.trades {
            self.insert_trade(trade.clone());
        }
        self.generation += 1;
        applied
    }
}

/// What every call answers once a batch panicked part-way through.
fn poisoned() -> StoreError {
    StoreError::refused("the memory store's writer panicked part-way through a batch")
}

/// The memory engine.
pub struct MemoryStore {
    current: RwLock<Arc<State>>,
    /// When the next snapshot is due (batches are one at a time already:
    /// the consumer applies them in order).
    due: Mutex<Due>,
    snapshots: Snapshots,
    max_bytes: u64,
}

/// When the next snapshot is due.
struct Due {
    orders: u64,
    since: Instant,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("dir", &self.snapshots.dir)
            .finish()
    }
}

impl MemoryStore {
    /// Opens the store whose snapshots live in `dir` (created as needed):
    /// the newest valid snapshot is loaded; one that fails its checksum is
    /// reported, renamed `*.refused` and the one before it used.
    pub async fn open(dir: &Path, settings: &MemoryStoreSettings) -> Result<Self, StoreError> {
        let (dir, settings) = (dir.to_owned(), settings.clone());
        tokio::task::spawn_blocking(move || Self::open_blocking(&dir, &settings))
            .await
            .map_err(|source| StoreError::Crashed {
                engine: "memory",
                source,
            })?
    }

    fn open_blocking(dir: &Path, settings: &MemoryStoreSettings) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|e| {
            StoreError::permanent(
                format!("cannot create the snapshot folder {}", dir.display()),
                e,
            )
        })?;
        let started = Instant::now();
        let state = load_newest(dir)?;
        tracing::info!(
            orders = state.orders.len(),
            trades = state.trades.len(),
            generation = state.generation,
            seconds = started.elapsed().as_secs_f64(),
            "memory store loaded"
        );
        let snapshots = Snapshots::start(dir, settings.snapshots_kept.max(1), state.generation)?;
        Ok(MemoryStore {
            due: Mutex::new(Due {
                orders: 0,
                since: Instant::now(),
            }),
            current: RwLock::new(Arc::new(state)),
            snapshots: Snapshots {
                every_orders: settings.snapshot_every_orders,
                every: Duration::from_millis(settings.snapshot_every_ms),
                ..snapshots
            },
            max_bytes: settings.max_mib.saturating_mul(1 << 20),
        })
    }

    /// The state readers see. A panic part-way through a batch poisons the
    /// lock and leaves a half-applied state behind it: reads refuse it too,
    /// rather than serve what no batch ever made.
    fn now(&self) -> Result<Arc<State>, StoreError> {
        self.current
            .read()
            .map(|state| state.clone())
            .map_err(|_| poisoned())
    }

    /// Writes a snapshot of the current state now and waits for it (a clean
    /// stop, and tests).
    pub fn snapshot_now(&self) -> Result<(), StoreError> {
        let state = self.now()?;
        write_snapshot(&self.snapshots.dir, &state, self.snapshots.kept)
            .map_err(|e| StoreError::transient("the memory store could not write a snapshot", e))?;
        self.snapshots
            .written
            .fetch_max(state.generation, Ordering::Relaxed);
        Ok(())
    }

    /// Changes the state under the write lock, in place where no reader
    /// or snapshot shares it (the persistent maps copy only the nodes
    /// someone else still holds). `change` must refuse before it changes
    /// anything: a reader then sees each change whole or not at all.
    fn change<R>(
        &self,
        change: impl FnOnce(&mut State) -> Result<R, StoreError>,
    ) -> Result<(R, Arc<State>), StoreError> {
        let mut current = self.current.write().map_err(|_| poisoned())?;
        let result = change(Arc::make_mut(&mut current))?;
        Ok((result, current.clone()))
    }

    fn apply_now(&self, batch: &Batch) -> Result<Applied, StoreError> {
        let mut due = self.due.lock().map_err(|_| poisoned())?;
        let (applied, next) = self.change(|state| {
            let current = state.admit(batch, self.max_bytes)?;
            #[cfg(test)]
            if batch.fail_before_commit {
                return Err(StoreError::unavailable("injected failure before commit"));
            }
            Ok(state.apply(batch, &current))
        })?;
        metrics::gauge!("memory_store_bytes").set(next.bytes as f64);
        due.orders += batch.orders.len() as u64;
        let orders_due =
            self.snapshots.every_orders > 0 && due.orders >= self.snapshots.every_orders;
        let time_due =
            !self.snapshots.every.is_zero() && due.since.elapsed() >= self.snapshots.every;
        if orders_due || time_due {
            // The writer thread is busy with the last one: try after the next batch.
            if self.snapshots.request(next.clone()) {
                due.orders = 0;
                due.since = Instant::now();
            }
        }
        Ok(applied)
    }
}

impl Drop for MemoryStore {
    /// A clean stop writes a last snapshot, so the next start reads nothing
    /// again from the log.
    fn drop(&mut self) {
        // Let the writer finish what it was given, then write what is newer.
        drop(self.snapshots.tx.take());
        if let Some(thread) = self.snapshots.thread.take() {
            _ = thread.join();
        }
        let written = self.snapshots.written.load(Ordering::Relaxed);
        if self.now().is_ok_and(|state| state.generation != written)
            && let Err(err) = self.snapshot_now()
        {
            tracing::warn!(error = %crate::error::Chain(&err), "memory store: no snapshot on close; the next start reads more of the log");
        }
    }
}

/// The snapshot writer: a thread taking one state at a time.
struct Snapshots {
    dir: PathBuf,
    kept: usize,
    every_orders: u64,
    every: Duration,
    tx: Option<SyncSender<Arc<State>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The generation of the newest snapshot written.
    written: Arc<AtomicU64>,
}

impl Snapshots {
    fn start(dir: &Path, kept: usize, loaded: u64) -> Result<Self, StoreError> {
        let written = Arc::new(AtomicU64::new(loaded));
        let done = written.clone();
        // One state may wait while another is written: a request made before
        // the thread first waits, or during a write, is not lost.
        let (tx, rx) = mpsc::sync_channel::<Arc<State>>(1);
        let folder = dir.to_owned();
        let thread = std::thread::Builder::new()
            .name("oms-snapshot".into())
            .spawn(move || {
                for state in rx {
                    let started = Instant::now();
                    match write_snapshot(&folder, &state, kept) {
                        Ok(bytes) => {
                            done.fetch_max(state.generation, Ordering::Relaxed);
                            metrics::counter!("memory_snapshots_total").increment(1);
                            metrics::histogram!("memory_snapshot_seconds")
                                .record(started.elapsed().as_secs_f64());
                            tracing::info!(
                                generation = state.generation,
                                orders = state.orders.len(),
                                bytes,
                                seconds = started.elapsed().as_secs_f64(),
                                "memory store snapshot written"
                            );
                        }
                        Err(err) => {
                            metrics::counter!("memory_snapshot_failures_total").increment(1);
                            tracing::warn!(error = %err, dir = %folder.display(), "memory store snapshot failed; the log still holds everything after the last one");
                        }
                    }
                }
            })
            .map_err(|e| StoreError::permanent("cannot start the snapshot thread", e))?;
        Ok(Snapshots {
            dir: dir.to_owned(),
            kept,
            every_orders: 0,
            every: Duration::ZERO,
            tx: Some(tx),
            thread: Some(thread),
            written,
        })
    }

    /// Hands `state` to the writer unless one already waits for it.
    fn request(&self, state: Arc<State>) -> bool {
        match self.tx.as_ref().map(|tx| tx.try_send(state)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => false,
        }
    }
}

fn snapshot_name(generation: u64) -> String {
    format!("{generation:020}{SUFFIX}")
}

/// Serialises, checksums, writes to a temporary file, fsyncs, renames and
/// fsyncs the folder; then keeps only the newest `kept`. Returns the bytes.
fn write_snapshot(dir: &Path, state: &State, kept: usize) -> std::io::Result<u64> {
    let sections = state.encode().map_err(std::io::Error::other)?;
    let name = snapshot_name(state.generation);
    let partial = dir.join(format!("{name}{PARTIAL}"));
    let mut written = MAGIC.len();
    {
        let mut file = std::io::BufWriter::new(File::create(&partial)?);
        file.write_all(MAGIC)?;
        for section in &sections {
            file.write_all(&(section.len() as u64).to_le_bytes())?;
            file.write_all(&crc32fast::hash(section).to_le_bytes())?;
            file.write_all(section)?;
            written += SECTION_HEADER + section.len();
        }
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    fs::rename(&partial, dir.join(&name))?;
    File::open(dir)?.sync_all()?;
    let mut all = snapshot_files(dir)?;
    while all.len() > kept {
        let (_, oldest) = all.remove(0);
        fs::remove_file(oldest)?;
    }
    Ok(written as u64)
}

/// Finished snapshots in `dir`, oldest first.
fn snapshot_files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(generation) = name.strip_suffix(SUFFIX).and_then(|g| g.parse().ok()) {
            out.push((generation, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Why a snapshot file was not used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read it")]
    Io(#[from] std::io::Error),
    #[error("it is not an oms memory-store snapshot (or another version of one)")]
    Magic,
    #[error("it is cut short: {have} bytes of {want}")]
    Truncated { have: usize, want: usize },
    #[error("its checksum does not match (the file is damaged)")]
    Checksum,
    #[error("{0} bytes follow its last section")]
    Trailing(usize),
    #[error("its content does not decode")]
    Decode(#[from] rmp_serde::decode::Error),
}

fn read_snapshot(path: &Path) -> Result<State, SnapshotError> {
    let file = File::open(path)?;
    if file.metadata()?.len() < MAGIC.len() as u64 {
        return Err(SnapshotError::Magic);
    }
    // Mapped, not read: decoding starts at once, and the file's pages are
    // the page cache's rather than hundreds of MiB of zeroed heap.
    // SAFETY: a snapshot is written under a temporary name and renamed
    // when whole; nothing writes to a finished one, so the mapping does not
    // change while it is read (and the checksums would notice if it did).
    let bytes = unsafe { memmap2::MmapOptions::new().populate().map(&file)? };
    let Some(mut rest) = bytes.strip_prefix(MAGIC).or_else(|| {
        MAGIC_BEFORE
            .iter()
            .find_map(|magic| bytes.strip_prefix(magic.as_slice()))
    }) else {
        return Err(SnapshotError::Magic);
    };
    let mut sections: [&[u8]; SECTIONS] = [&[]; SECTIONS];
    for section in &mut sections {
        let (header, after) =
            rest.split_at_checked(SECTION_HEADER)
                .ok_or(SnapshotError::Truncated {
                    have: rest.len(),
                    want: SECTION_HEADER,
                })?;
        let (len, crc) = header.split_at(8);
        let want = u64::from_le_bytes(len.try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(crc.try_into().unwrap_or_default());
        let (body, after) = usize::try_from(want)
            .ok()
            .and_then(|want| after.split_at_checked(want))
            .ok_or(SnapshotError::Truncated {
                have: after.len(),
                want: want as usize,
            })?;
        if crc32fast::hash(body) != crc {
            return Err(SnapshotError::Checksum);
        }
        *section = body;
        rest = after;
    }
    if !rest.is_empty() {
        return Err(SnapshotError::Trailing(rest.len()));
    }
    Ok(State::decode(sections)?)
}

/// The newest snapshot that reads whole; none: an empty state (the log is
/// read from its start). Leftover partial files (a kill during a write) are
/// removed; a refused snapshot is renamed `*.refused` and kept for a look.
fn load_newest(dir: &Path) -> Result<State, StoreError> {
    let unreadable =
        |e: std::io::Error| StoreError::permanent(format!("cannot read {}", dir.display()), e);
    for entry in fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        if path.to_string_lossy().ends_with(PARTIAL) {
            tracing::info!(path = %path.display(), "removing a snapshot whose write did not finish");
            _ = fs::remove_file(&path);
        }
    }
    let mut files = snapshot_files(dir).map_err(unreadable)?;
    while let Some((_, path)) = files.pop() {
        match read_snapshot(&path) {
            Ok(state) => return Ok(state),
            Err(err) => {
                metrics::counter!("memory_snapshots_refused_total").increment(1);
                tracing::error!(path = %path.display(), reason = %crate::error::Chain(&err), "a memory-store snapshot is refused; trying the one before it");
                let mut refused = path.clone().into_os_string();
                refused.push(REFUSED);
                _ = fs::rename(&path, refused);
            }
        }
    }
    Ok(State::default())
}

fn page<T>(
    index: &SymbolIndex,
    symbol: &str,
    after: Option<Uuid>,
    limit: usize,
    mut get: impl FnMut(u128) -> Option<T>,
) -> Result<Vec<T>, StoreError> {
    let Some(start) = first_after(after) else {
        return Ok(Vec::new());
    };
    let Some(ids) = index.get(symbol) else {
        return Ok(Vec::new());
    };
    ids.range(start..)
        .take(limit)
        .map(|id| {
            get(*id).ok_or_else(|| {
                StoreError::refused(format!(
                    "index names {} that is missing",
                    Uuid::from_u128(*id)
                ))
            })
        })
        .collect()
}

#[async_trait]
impl Store for MemoryStore {
    fn engine(&self) -> &'static str {
        super::url::Engine::Memory.as_str()
    }

    async fn apply(&self, batch: Arc<Batch>) -> Result<Applied, StoreError> {
        // Microseconds of CPU per batch: no blocking pool round trip.
        self.apply_now(&batch)
    }

    async fn offsets(&self, topic: &str) -> Result<Offsets, StoreError> {
        Ok(self.now()?.offsets.get(topic).cloned().unwrap_or_default())
    }

    async fn forget_offsets(&self, topic: &str, partitions: &[i32]) -> Result<(), StoreError> {
        // change()'s write lock keeps this to one writer at a time; `due`
        // only counts orders toward the next snapshot.
        self.change(|state| {
            if let Some(offsets) = state.offsets.get_mut(topic) {
                for p in partitions {
                    offsets.remove(p);
                }
            }
            state.generation += 1;
            Ok(())
        })?;
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<StoredOrder>, StoreError> {
        Ok(self.now()?.orders.get(&id.as_u128()).map(|o| (**o).clone()))
    }

    async fn list_by_symbol(
        &self,
        symbol: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<StoredOrder>, StoreError> {
        let state = self.now()?;
        page(&state.by_symbol, symbol, after, limit, |id| {
            state.orders.get(&id).map(|o| (**o).clone())
        })
    }

    async fn list_owned(
        &self,
        account: &Account,
        symbol: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<StoredOrder>, StoreError> {
        // The symbol's ids in order, the account's kept: nothing is copied
        // but what is returned.
        let state = self.now()?;
        let (Some(start), Some(ids)) = (first_after(after), state.by_symbol.get(symbol)) else {
            return Ok(Vec::new());
        };
        Ok(ids
            .range(start..)
            .filter_map(|id| state.orders.get(id))
            .filter(|o| o.order.account.as_ref() == Some(account))
            .take(limit)
            .map(|o| (**o).clone())
            .collect())
    }

    async fn known(&self, ids: Vec<Uuid>) -> Result<HashSet<Uuid>, StoreError> {
        let state = self.now()?;
        Ok(ids
            .into_iter()
            .filter(|id| state.orders.contains_key(&id.as_u128()))
            .collect())
    }

    async fn resting(&self, partition: i32) -> Result<Vec<StoredOrder>, StoreError> {
        let state = self.now()?;
        let mut out = state
            .resting
            .range((partition, 0)..=(partition, u128::MAX))
            .map(|(_, id)| {
                state.orders.get(id).map(|o| (**o).clone()).ok_or_else(|| {
                    StoreError::refused(format!(
                        "the resting index names order {} that is missing",
                        Uuid::from_u128(*id)
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|o| o.offset);
        Ok(out)
    }

    async fn trades(
        &self,
        symbol: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<StoredTrade>, StoreError> {
        let state = self.now()?;
        page(&state.trades_by_symbol, symbol, after, limit, |id| {
            state.trades.get(&id).map(|t| (**t).clone())
        })
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.now()?.orders.len() as u64)
    }

    /// Serving unless a batch panicked part-way: a full store still answers
    /// reads; the consumer's state (and so `/readyz`) says it waits for room.
    async fn health(&self) -> Result<(), StoreError> {
        self.now().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Memory(tempfile::TempDir);

    impl super::super::contract::Engine for Memory {
        async fn open(&self) -> Arc<dyn Store> {
            Arc::new(
                MemoryStore::open(self.0.path(), &MemoryStoreSettings::default())
                    .await
                    .expect("open the memory store"),
            )
        }
    }

    async fn engine() -> Memory {
        Memory(tempfile::tempdir().expect("tempdir"))
    }

    crate::store_contract_tests!(engine);

    use super::super::contract::{TOPIC, batch, order};
    use crate::domain::Trade;

    fn settings(every_orders: u64) -> MemoryStoreSettings {
        MemoryStoreSettings {
            snapshot_every_orders: every_orders,
            snapshot_every_ms: 0,
            snapshots_kept: 3,
            max_mib: 0,
        }
    }

    async fn open(dir: &Path, settings: &MemoryStoreSettings) -> MemoryStore {
        MemoryStore::open(dir, settings).await.expect("open")
    }

    /// Ten batches of one order each, offsets 1..=10 on partition 0.
    async fn fill_up(store: &MemoryStore, from: i64, to: i64) {
        for n in from..to {
            store
                .apply(batch(vec![order(("USD", "EUR"), n)], &[(0, n + 1)]))
                .await
                .expect("apply");
        }
    }

    /// What a kill -9 leaves: no snapshot on close.
    fn kill(store: MemoryStore) {
        std::mem::forget(store);
    }

    fn trade(symbol: &str, n: u128) -> StoredTrade {
        StoredTrade {
            trade: Trade {
                id: Uuid::from_u128(n),
                price: rust_decimal::Decimal::ONE,
                quantity: rust_decimal::Decimal::TWO,
                buy_order_id: Uuid::from_u128(n + 1),
                sell_order_id: Uuid::from_u128(n + 2),
                taker_side: crate::domain::Side::Buy,
                executed_at: chrono::Utc::now(),
            },
            symbol: symbol.into(),
            partition: 0,
            offset: n as i64,
        }
    }

    /// A snapshot is written symbol by symbol and filed back by appending:
    /// what comes back is the state that was written, every map and index,
    /// however the symbols were interleaved when it was built.
    #[test]
    fn a_snapshot_decodes_to_the_state_it_was_written_from() {
        let mut state = State::default();
        for n in 0..300 {
            let symbol = [("USD", "EUR"), ("GBP", "JPY"), ("EUR", "USD")][n as usize % 3];
            let mut stored = order(symbol, n);
            stored.fill.filled = rust_decimal::Decimal::from(n % 2);
            state.insert_order(stored);
            state.insert_trade(trade(
                ["USD-EUR", "GBP-JPY"][n as usize % 2],
                1_000 + 7 * n as u128,
            ));
            state.resting.insert(((n % 3) as i32, n as u128));
        }
        state.generation = 42;
        state.offsets = BTreeMap::from([(TOPIC.to_string(), Offsets::from([(0, 300)]))]);
        let sections = state.encode().expect("encode");
        let back = State::decode(sections.each_ref().map(Vec::as_slice)).expect("decode");
        assert_eq!(back.orders, state.orders);
        assert_eq!(back.by_symbol, state.by_symbol);
        assert_eq!(back.trades, state.trades);
        assert_eq!(back.trades_by_symbol, state.trades_by_symbol);
        assert_eq!(back.resting, state.resting);
        assert_eq!(back.bytes, state.bytes);
        assert_eq!((back.generation, &back.offsets), (42, &state.offsets));
    }

    /// A snapshot filed without a lookup per id must still notice an id it
    /// holds twice: such a snapshot is refused, not half believed.
    #[test]
    fn a_snapshot_holding_an_order_twice_is_refused() {
        let mut state = State::default();
        state.insert_order(order(("USD", "EUR"), 1));
        let mut sections = state.encode().expect("encode");
        let row = state.orders.values().next().expect("the order");
        let twice = [row, row].map(|o| OrderRow::of(o));
        sections[1] = rmp_serde::to_vec(&twice).expect("encode");
        let Err(err) = State::decode(sections.each_ref().map(Vec::as_slice)) else {
            panic!("a snapshot holding an order twice was believed");
        };
        assert!(err.to_string().contains("in the snapshot twice"), "{err}");
    }

    /// A batch that panics part-way leaves a state no batch made: from then
    /// on reads refuse it as well as writes, and the health check says so.
    #[tokio::test]
    async fn after_a_panic_mid_batch_nothing_is_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), &settings(0)).await;
        fill_up(&store, 0, 3).await;
        let half_applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.change(|state| -> Result<(), StoreError> {
                state.generation += 1;
                panic!("a bug half-way through a batch");
            })
        }));
        assert!(half_applied.is_err(), "the change panicked");
        let refused = |r: Result<_, StoreError>, what: &str| {
            let err = r.err().unwrap_or_else(|| panic!("{what} was served"));
            assert!(err.to_string().contains("panicked"), "{what}: {err}");
        };
        refused(store.count().await.map(drop), "count");
        refused(store.get(Uuid::nil()).await.map(drop), "get");
        refused(store.offsets(TOPIC).await.map(drop), "offsets");
        refused(store.health().await, "health");
        refused(
            store
                .apply(batch(vec![order(("USD", "EUR"), 3)], &[(0, 4)]))
                .await
                .map(drop),
            "apply",
        );
        kill(store);
    }

    #[tokio::test]
    async fn a_restart_loads_the_newest_snapshot_with_its_offsets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), &settings(0)).await;
        fill_up(&store, 0, 6).await;
        store.snapshot_now().expect("snapshot");
        fill_up(&store, 6, 9).await; // after the snapshot: lost with the process
        kill(store);

        let store = open(dir.path(), &settings(0)).await;
        assert_eq!(store.count().await.expect("count"), 6);
        assert_eq!(
            store.offsets(TOPIC).await.expect("offsets"),
            Offsets::from([(0, 6)]),
            "the snapshot's offsets: the log is read again from there"
        );
    }

    #[tokio::test]
    async fn a_clean_stop_waits_for_the_writer_and_leaves_the_whole_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), &settings(1)).await;
        fill_up(&store, 0, 50).await; // a snapshot asked for after every batch
        drop(store);
        let store = open(dir.path(), &settings(0)).await;
        assert_eq!(store.count().await.expect("count"), 50);
        assert_eq!(
            store.offsets(TOPIC).await.expect("offsets"),
            Offsets::from([(0, 50)])
        );
    }

    #[tokio::test]
    async fn snapshots_are_written_every_n_orders_and_only_the_last_k_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), &settings(2)).await;
        let newest = |dir: &Path| snapshot_files(dir).expect("list").last().map(|(g, _)| *g);
        for round in 0..5 {
            fill_up(&store, round * 2, round * 2 + 2).await;
            // The writer takes a state when it is idle: wait for this one.
            let want = (round * 2 + 2) as u64;
            let deadline = Instant::now() + Duration::from_secs(10);
            while newest(dir.path()) != Some(want) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(
                newest(dir.path()),
                Some(want),
                "a snapshot after every 2 orders"
            );
        }
        let files = snapshot_files(dir.path()).expect("list");
        assert!(files.len() <= 3, "kept at most 3: {files:?}");
        kill(store);
        let store = open(dir.path(), &settings(0)).await;
        assert!(store.count().await.expect("count") >= 10);
    }

    /// Damage the newest snapshot in `how`; the one before it is used and
    /// the damaged one is set aside.
    async fn damaged_newest_falls_back(how: impl FnOnce(&Path)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), &settings(0)).await;
        fill_up(&store, 0, 4).await;
        store.snapshot_now().expect("first snapshot");
        fill_up(&store, 4, 8).await;
        store.snapshot_now().expect("second snapshot");
        kill(store);
        let files = snapshot_files(dir.path()).expect("list");
        let (_, newest) = files.last().expect("two snapshots");
        how(newest);

        let store = open(dir.path(), &settings(0)).await;
        assert_eq!(store.count().await.expect("count"), 4, "the older snapshot");
        assert_eq!(
            store.offsets(TOPIC).await.expect("offsets"),
            Offsets::from([(0, 4)]),
            "with its own offsets, never the damaged one's"
        );
        assert_eq!(snapshot_files(dir.path()).expect("list").len(), 1);
        kill(store);
    }

    #[tokio::test]
    async fn a_snapshot_cut_half_way_is_refused_and_the_one_before_used() {
        damaged_newest_falls_back(|path| {
            let len = fs::metadata(path).expect("metadata").len();
            File::options()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(len / 2))
                .expect("truncate");
        })
        .await;
    }

    #[tokio::test]
    async fn a_snapshot_with_a_flipped_byte_is_refused_by_its_checksum() {
        damaged_newest_falls_back(|path| {
            let mut bytes = fs::read(path).expect("read");
            let at = bytes.len() - 10;
            bytes[at] ^= 0xff;
            fs::write(path, bytes).expect("write");
        })
        .await;
    }

    #[tokio::test]
    async fn no_valid_snapshot_means_the_log_is_read_from_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(snapshot_name(7)), b"not a snapshot").expect("write");
        fs::write(
            dir.path().join(format!("{}{PARTIAL}", snapshot_name(9))),
            b"half",
        )
        .expect("write");
        let store = open(dir.path(), &settings(0)).await;
        assert_eq!(store.count().await.expect("count"), 0);
        assert!(store.offsets(TOPIC).await.expect("offsets").is_empty());
        assert!(snapshot_files(dir.path()).expect("list").is_empty());
    }

    #[tokio::test]
    async fn at_its_bound_the_store_refuses_batches_until_the_bound_is_raised() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tight = MemoryStoreSettings {
            max_mib: 1,
            ..settings(0)
        };
        let store = open(dir.path(), &tight).await;
        let per_order = order_bytes(&order(("USD", "EUR"), 0)) as i64;
        let mut fits = 0;
        let over = loop {
            assert!(fits < 2 * (1 << 20) / per_order, "never refused");
            match store
                .apply(batch(vec![order(("USD", "EUR"), fits)], &[(0, fits + 1)]))
                .await
            {
                Ok(_) => fits += 1,
                Err(err) => break err,
            }
        };
        assert!(fits > (1 << 20) / per_order / 2, "refused early, at {fits}");
        assert!(
            !over.is_permanent(),
            "a bound is waited out, not dead-lettered"
        );
        assert!(over.to_string().contains("max_mib"), "{over}");
        assert_eq!(
            store.offsets(TOPIC).await.expect("offsets"),
            Offsets::from([(0, fits)])
        );
        drop(store); // a clean stop: a snapshot

        let raised = MemoryStoreSettings {
            max_mib: 2,
            ..settings(0)
        };
        let store = open(dir.path(), &raised).await;
        store
            .apply(batch(vec![order(("USD", "EUR"), fits)], &[(0, fits + 1)]))
            .await
            .expect("stored once the bound is raised");
        assert_eq!(store.count().await.expect("count"), fits as u64 + 1);
    }
}
