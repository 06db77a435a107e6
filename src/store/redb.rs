//! The redb engine: one file (on tmpfs by default), one write transaction per
//! batch. redb is synchronous, so every call runs on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use uuid::Uuid;

use std::collections::HashSet;

use super::settings::EmbeddedStoreSettings;
use super::{Applied, Batch, Store, StoreError, first_after, from_json, to_json};
use crate::domain::{Fill, Offsets, StoredOrder, StoredTrade};

/// id (as u128) → JSON of the [`StoredOrder`].
const ORDERS: TableDefinition<u128, &[u8]> = TableDefinition::new("orders");
/// (symbol, id) → () : the per-symbol listing index.
const BY_SYMBOL: TableDefinition<(&str, u128), ()> = TableDefinition::new("orders_by_symbol");
/// (topic, partition) → next offset to read.
const OFFSETS: TableDefinition<(&str, i32), i64> = TableDefinition::new("log_offsets");
/// order id → JSON of its [`Fill`] (absent: open, nothing filled).
const FILLS: TableDefinition<u128, &[u8]> = TableDefinition::new("order_fills");
/// (partition, order id) → () : the orders resting in a partition's books.
const RESTING: TableDefinition<(i32, u128), ()> = TableDefinition::new("resting_orders");
/// trade id → JSON of the [`StoredTrade`].
const TRADES: TableDefinition<u128, &[u8]> = TableDefinition::new("trades");
/// (symbol, trade id) → () : the per-symbol trade listing.
const TRADES_BY_SYMBOL: TableDefinition<(&str, u128), ()> =
    TableDefinition::new("trades_by_symbol");

/// File name inside the configured store folder.
pub const FILE_NAME: &str = "orders.redb";

/// A redb database holding the orders view.
pub struct RedbStore {
    db: Arc<Database>,
    durable: DurableEvery,
    path: PathBuf,
}

/// When the next batch commit is made durable. Between durable commits redb
/// keeps commits in memory (`Durability::None`): readers in this process see
/// them, a kill -9 loses them — rows and offsets alike, so the consumer reads
/// those records again from the log. Writing each small batch through cost
/// ~6 µs of CPU per order under load (bench/analysis.md).
#[derive(Debug)]
struct DurableEvery {
    every: Duration,
    last: Mutex<Instant>,
}

impl DurableEvery {
    fn due(&self) -> bool {
        self.every.is_zero()
            || self
                .last
                .lock()
                .is_ok_and(|last| last.elapsed() >= self.every)
    }

    fn done(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = Instant::now();
        }
    }
}

impl Drop for RedbStore {
    /// A clean stop leaves nothing in memory only: an empty durable commit
    /// writes every commit before it through.
    fn drop(&mut self) {
        let flushed = self
            .db
            .begin_write()
            .map_err(redb::Error::from)
            .and_then(|tx| tx.commit().map_err(redb::Error::from));
        if let Err(err) = flushed {
            tracing::warn!(error = %err, "redb: the last commits were not made durable on close; the consumer reads them again from the log");
        }
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

fn io_kind_is_transient(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        StorageFull | QuotaExceeded | Interrupted | WouldBlock | OutOfMemory
    )
}

/// redb's errors, sorted into what a retry can fix and what it cannot.
fn classify(err: impl Into<redb::Error>) -> StoreError {
    let err: redb::Error = err.into();
    match &err {
        redb::Error::Io(io) if io_kind_is_transient(io.kind()) => {
            StoreError::transient("redb cannot write now", err)
        }
        redb::Error::DatabaseAlreadyOpen => {
            StoreError::transient("the redb file is open in another process", err)
        }
        _ => StoreError::permanent("redb refused the operation", err),
    }
}

/// The order stored under `id`, with its fill, in a read or write transaction.
fn read_order(
    orders: &impl ReadableTable<u128, &'static [u8]>,
    fills: &impl ReadableTable<u128, &'static [u8]>,
    id: u128,
) -> Result<Option<StoredOrder>, StoreError> {
    let Some(value) = orders.get(id).map_err(classify)? else {
        return Ok(None);
    };
    let mut order: StoredOrder = from_json("order", value.value())?;
    if let Some(fill) = fills.get(id).map_err(classify)? {
        order.fill = from_json::<Fill>("fill", fill.value())?;
    }
    Ok(Some(order))
}

impl RedbStore {
    /// Opens (or creates) `dir/orders.redb`, creating `dir` as needed, with
    /// the default page cache.
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, &EmbeddedStoreSettings::default()).await
    }

    /// Opens (or creates) `dir/orders.redb` with its `[store.*]` settings (page cache).
    pub async fn open_with(
        dir: &Path,
        settings: &EmbeddedStoreSettings,
    ) -> Result<Self, StoreError> {
        let cache_mib = settings.cache_mib;
        let durable_every_ms = settings.durable_every_ms;
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| {
                StoreError::permanent(format!("cannot create store folder {}", dir.display()), e)
            })?;
            let path = dir.join(FILE_NAME);
            let db = Database::builder()
                .set_cache_size(cache_mib as usize * 1024 * 1024)
                .create(&path)
                .map_err(classify)?;
            // Create the tables up front so readers never see "table missing".
            let tx = db.begin_write().map_err(classify)?;
            tx.open_table(ORDERS).map_err(classify)?;
            tx.open_table(BY_SYMBOL).map_err(classify)?;
            tx.open_table(OFFSETS).map_err(classify)?;
            tx.open_table(FILLS).map_err(classify)?;
            tx.open_table(RESTING).map_err(classify)?;
            tx.open_table(TRADES).map_err(classify)?;
            tx.open_table(TRADES_BY_SYMBOL).map_err(classify)?;
            tx.commit().map_err(classify)?;
            Ok(RedbStore {
                db: Arc::new(db),
                durable: DurableEvery {
                    every: Duration::from_millis(durable_every_ms),
                    last: Mutex::new(Instant::now()),
                },
                path,
            })
        })
        .await
        .map_err(|source| StoreError::Crashed {
            engine: "redb",
            source,
        })?
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|source| StoreError::Crashed {
                engine: "redb",
                source,
            })?
    }
}

fn apply_in(db: &Database, batch: &Batch, durable: bool) -> Result<Applied, StoreError> {
    let mut tx = db.begin_write().map_err(classify)?;
    if !durable {
        tx.set_durability(Durability::None)
            .map_err(|e| StoreError::permanent("redb refused a non-durable commit", e))?;
    }
    let applied = {
        let mut offsets = tx.open_table(OFFSETS).map_err(classify)?;
        let mut current = Offsets::new();
        for partition in batch.offsets.keys() {
            if let Some(next) = offsets
                .get((batch.topic.as_str(), *partition))
                .map_err(classify)?
            {
                current.insert(*partition, next.value());
            }
        }
        batch.check(&current)?;
        let applied = insert_orders(&tx, batch)?;
        for (partition, next) in batch.forward(&current) {
            offsets
                .insert((batch.topic.as_str(), partition), next)
                .map_err(classify)?;
        }
        write_matching(&tx, batch)?;
        applied
    };
    #[cfg(test)]
    if batch.fail_before_commit {
        return Err(StoreError::unavailable("injected failure before commit"));
    }
    // Dropping `tx` without commit aborts it: an error above leaves nothing behind.
    tx.commit().map_err(classify)?;
    Ok(applied)
}

/// The batch's orders (first write wins) and their symbol index.
fn insert_orders(tx: &redb::WriteTransaction, batch: &Batch) -> Result<Applied, StoreError> {
    let mut orders = tx.open_table(ORDERS).map_err(classify)?;
    let mut by_symbol = tx.open_table(BY_SYMBOL).map_err(classify)?;
    let mut applied = Applied::default();
    for stored in &batch.orders {
        let key = stored.order.id.as_u128();
        let value = to_json("an order", stored)?;
        // One B-tree walk for the common case (a new id); a repeated id
        // (rare) gets its first copy back: the first write wins.
        let previous = orders
            .insert(key, value.as_slice())
            .map_err(classify)?
            .map(|first| first.value().to_vec());
        if let Some(first) = previous {
            orders.insert(key, first.as_slice()).map_err(classify)?;
            applied.duplicates += 1;
            continue;
        }
        by_symbol
            .insert((stored.order.symbol().as_str(), key), ())
            .map_err(classify)?;
        applied.inserted += 1;
    }
    Ok(applied)
}

/// The batch's fills, resting index and trades (each trade once).
fn write_matching(tx: &redb::WriteTransaction, batch: &Batch) -> Result<(), StoreError> {
    let mut fills = tx.open_table(FILLS).map_err(classify)?;
    let mut resting = tx.open_table(RESTING).map_err(classify)?;
    for state in &batch.states {
        let key = state.id.as_u128();
        if !state.fill.is_untouched() {
            fills
                .insert(key, to_json("a fill", &state.fill)?.as_slice())
                .map_err(classify)?;
        }
        if state.fill.status.is_live() {
            resting
                .insert((state.partition, key), ())
                .map_err(classify)?;
        } else {
            resting.remove((state.partition, key)).map_err(classify)?;
        }
    }
    let mut trades = tx.open_table(TRADES).map_err(classify)?;
    let mut trades_by_symbol = tx.open_table(TRADES_BY_SYMBOL).map_err(classify)?;
    for trade in &batch.trades {
        let key = trade.trade.id.as_u128();
        if trades.get(key).map_err(classify)?.is_some() {
            continue;
        }
        trades
            .insert(key, to_json("a trade", trade)?.as_slice())
            .map_err(classify)?;
        trades_by_symbol
            .insert((trade.symbol.as_str(), key), ())
            .map_err(classify)?;
    }
    Ok(())
}

/// One page of a per-symbol index (`(symbol, id) → ()`): the ids strictly
/// after `after`, in id order.
fn index_page(
    tx: &redb::ReadTransaction,
    index: TableDefinition<(&str, u128), ()>,
    symbol: &str,
    after: Option<Uuid>,
    limit: usize,
) -> Result<Vec<u128>, StoreError> {
    let Some(start) = first_after(after) else {
        return Ok(Vec::new());
    };
    let table = tx.open_table(index).map_err(classify)?;
    let mut ids = Vec::with_capacity(limit.min(1024));
    for entry in table
        .range((symbol, start)..=(symbol, u128::MAX))
        .map_err(classify)?
        .take(limit)
    {
        ids.push(entry.map_err(classify)?.0.value().1);
    }
    Ok(ids)
}

/// An order an index names must be there.
fn required(order: Option<StoredOrder>, id: u128) -> Result<StoredOrder, StoreError> {
    order.ok_or_else(|| {
        StoreError::refused(format!(
            "index names order {} that is missing",
            Uuid::from_u128(id)
        ))
    })
}

#[async_trait]
impl Store for RedbStore {
    fn engine(&self) -> &'static str {
        super::url::Engine::Redb.as_str()
    }

    async fn apply(&self, batch: Arc<Batch>) -> Result<Applied, StoreError> {
        let durable = self.durable.due();
        let applied = self
            .blocking(move |db| apply_in(db, &batch, durable))
            .await?;
        if durable {
            self.durable.done();
        }
        Ok(applied)
    }

    async fn offsets(&self, topic: &str) -> Result<Offsets, StoreError> {
        let topic = topic.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(classify)?;
            let table = tx.open_table(OFFSETS).map_err(classify)?;
            let mut out = Offsets::new();
            for entry in table
                .range((topic.as_str(), i32::MIN)..=(topic.as_str(), i32::MAX))
                .map_err(classify)?
            {
                let (key, value) = entry.map_err(classify)?;
                out.insert(key.value().1, value.value());
            }
            Ok(out)
        })
        .await
    }

    async fn forget_offsets(&self, topic: &str, partitions: &[i32]) -> Result<(), StoreError> {
        let (topic, partitions) = (topic.to_owned(), partitions.to_vec());
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(classify)?;
            {
                let mut offsets = tx.open_table(OFFSETS).map_err(classify)?;
                for p in partitions {
                    offsets.remove((topic.as_str(), p)).map_err(classify)?;
                }
            }
            tx.commit().map_err(classify)
        })
        .await
    }

    async fn get(&self, id: Uuid) -> Result<Option<StoredOrder>, StoreError> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(classify)?;
            let orders = tx.open_table(ORDERS).map_err(classify)?;
            let fills = tx.open_table(FILLS).map_err(classify)?;
            read_order(&orders, &fills, id.as_u128())
        })
        .await
    }

    async fn list_by_symbol(
        &self,
        symbol: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<StoredOrder>, StoreError> {
        let symbol = symbol.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(classify)?;
            let ids = index_page(&tx, BY_SYMBOL, &symbol, after, limit)?;
            let orders = tx.open_table(ORDERS).map_err(classify)?;
            let fills = tx.open_table(FILLS).map_err(classify)?;
            ids.into_iter()
                .map(|id| required(read_order(&orders, &fills, id)?, id))
                .collect()
        })
        .await
    }

    async fn known(&self, ids: Vec<Uuid>) -> Result<HashSet<Uuid>, StoreError> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(classify)?;
            let orders = tx.open_table(ORDERS).map_err(classify)?;
            let mut out = HashSet::new();
            for id in ids {
                if orders.get(id.as_u128()).map_err(classify)?.is_some() {
                    out.insert(id);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn resting(&self, partition: i32) -> Result<Vec<StoredOrder>, StoreError> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(classify)?;
            let index = tx.open_table(RESTING).map_err(classify)?;
            let orders = tx.open_table(ORDERS).map_err(classify)?;
            let fills = tx.open_table(FILLS).map_err(classify)?;
            let mut out = Vec::new();
            for entry in index
                .range((partition, 0)..=(partition, u128::MAX))
                .map_err(classify)?
            {
                let (key, _) = entry.map_err(classify)?;
                out.push(required(
                    read_order(&orders, &fills, key.value().1)?,
                    key.value().1,
                )?);
            }
            out.sort_by_key(|o| o.offset);
            Ok(out)
        })
        .await
    }

    async fn trades(
        &self,
        symbol: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<StoredTrade>, StoreError> {
        let symbol = symbol.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(classify)?;
            let ids = index_page(&tx, TRADES_BY_SYMBOL, &symbol, after, limit)?;
            let trades = tx.open_table(TRADES).map_err(classify)?;
            ids.into_iter()
                .map(|id| {
                    let value = trades.get(id).map_err(classify)?.ok_or_else(|| {
                        StoreError::refused(format!(
                            "index names trade {} that is missing",
                            Uuid::from_u128(id)
                        ))
                    })?;
                    from_json("trade", value.value())
                })
                .collect()
        })
        .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(classify)?;
            tx.open_table(ORDERS)
                .map_err(classify)?
                .len()
                .map_err(classify)
        })
        .await
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.blocking(|db| db.begin_read().map(drop).map_err(classify))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Redb(tempfile::TempDir);

    impl super::super::contract::Engine for Redb {
        async fn open(&self) -> Arc<dyn Store> {
            Arc::new(RedbStore::open(self.0.path()).await.expect("open redb"))
        }
    }

    async fn engine() -> Redb {
        Redb(tempfile::tempdir().expect("tempdir"))
    }

    crate::store_contract_tests!(engine);
}
