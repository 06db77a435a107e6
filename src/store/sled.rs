//! The sled engine: a folder (on tmpfs by default) with three trees written in
//! one multi-tree transaction per batch. sled is synchronous, so every call
//! runs on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use uuid::Uuid;

use std::collections::HashSet;

use super::settings::EmbeddedStoreSettings;
use super::{Applied, Batch, Store, StoreError, first_after, from_json, to_json};
use crate::domain::{Fill, Offsets, StoredOrder, StoredTrade};

/// Folder name inside the configured store folder.
pub const DIR_NAME: &str = "orders.sled";

/// A sled database holding the orders view.
pub struct SledStore {
    db: sled::Db,
    orders: sled::Tree,
    by_symbol: sled::Tree,
    offsets: sled::Tree,
    /// Fills, resting orders and trades, one key prefix each (see
    /// [`fill_key`], [`resting_key`], [`trade_key`], [`trade_index_key`]):
    /// one tree keeps the batch transaction to four trees.
    matching: sled::Tree,
    /// `durable_every_ms` was 0: every batch is flushed before it counts.
    flush_each_batch: bool,
    path: PathBuf,
}

const FILL: u8 = b'f';
const RESTING: u8 = b'r';
const TRADE: u8 = b't';
const TRADE_INDEX: u8 = b's';

/// `f id` → JSON of the order's [`Fill`].
fn fill_key(id: u128) -> [u8; 17] {
    let mut key = [FILL; 17];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// `r partition id` → () : the orders resting in a partition's books
/// (partitions are never negative, so big-endian bytes sort them).
fn resting_key(partition: i32, id: u128) -> [u8; 21] {
    let mut key = [RESTING; 21];
    key[1..5].copy_from_slice(&partition.to_be_bytes());
    key[5..].copy_from_slice(&id.to_be_bytes());
    key
}

/// `t id` → JSON of the [`StoredTrade`].
fn trade_key(id: u128) -> [u8; 17] {
    let mut key = [TRADE; 17];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// `s symbol \0 id` → () : the per-symbol trade listing.
fn trade_index_key(symbol: &str, id: u128) -> Vec<u8> {
    let mut key = vec![TRADE_INDEX];
    key.extend_from_slice(&symbol_key(symbol, id));
    key
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish()
    }
}

fn classify(err: sled::Error) -> StoreError {
    match &err {
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            StoreError::transient("the disk under sled is full", err)
        }
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
            StoreError::transient("sled cannot write now", err)
        }
        _ => StoreError::permanent("sled refused the operation", err),
    }
}

/// The order stored under `id` (big-endian bytes), with its fill.
fn read_order(store: &SledStore, id: &[u8]) -> Result<Option<StoredOrder>, StoreError> {
    let Some(value) = store.orders.get(id).map_err(classify)? else {
        return Ok(None);
    };
    let mut order: StoredOrder = from_json("order", &value)?;
    let id = u128::from_be_bytes(
        id.try_into()
            .map_err(|_| StoreError::refused("corrupt order key"))?,
    );
    if let Some(fill) = store.matching.get(fill_key(id)).map_err(classify)? {
        order.fill = from_json::<Fill>("fill", &fill)?;
    }
    Ok(Some(order))
}

/// One page of a per-symbol index whose keys end in the id (`key(id)`
/// builds them): the ids strictly after `after`, in id order.
fn index_page(
    tree: &sled::Tree,
    key: impl Fn(u128) -> Vec<u8>,
    after: Option<Uuid>,
    limit: usize,
) -> Result<Vec<u128>, StoreError> {
    let Some(start) = first_after(after) else {
        return Ok(Vec::new());
    };
    let mut ids = Vec::with_capacity(limit.min(1024));
    for entry in tree.range(key(start)..=key(u128::MAX)).take(limit) {
        let (key, _) = entry.map_err(classify)?;
        let id = key[key.len() - 16..]
            .try_into()
            .map(u128::from_be_bytes)
            .map_err(|_| StoreError::refused("corrupt index key"))?;
        ids.push(id);
    }
    Ok(ids)
}

fn required(order: Option<StoredOrder>) -> Result<StoredOrder, StoreError> {
    order.ok_or_else(|| StoreError::refused("index names an order that is missing"))
}

/// `symbol \0 id` — the index key sorts by symbol, then id.
fn symbol_key(symbol: &str, id: u128) -> Vec<u8> {
    let mut key = Vec::with_capacity(symbol.len() + 17);
    key.extend_from_slice(symbol.as_bytes());
    key.push(0);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// `topic \0 partition`.
fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 5);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

impl SledStore {
    /// Opens (or creates) `dir/orders.sled` with the default page cache.
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, &EmbeddedStoreSettings::default()).await
    }

    /// Opens (or creates) `dir/orders.sled` with its `[store.*]` settings (page cache).
    pub async fn open_with(
        dir: &Path,
        settings: &EmbeddedStoreSettings,
    ) -> Result<Self, StoreError> {
        let cache_mib = settings.cache_mib;
        let durable_every_ms = settings.durable_every_ms;
        let path = dir.join(DIR_NAME);
        tokio::task::spawn_blocking(move || {
            let db = sled::Config::new()
                .path(&path)
                .cache_capacity(u64::from(cache_mib) * 1024 * 1024)
                .flush_every_ms((durable_every_ms > 0).then_some(durable_every_ms))
                .open()
                .map_err(|e| match e {
                    // Another process holds the lock: it may go away (a restart).
                    sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                        StoreError::transient(
                            format!("{} is locked by another process", path.display()),
                            e,
                        )
                    }
                    other => classify(other),
                })?;
            let orders = db.open_tree("orders").map_err(classify)?;
            let by_symbol = db.open_tree("orders_by_symbol").map_err(classify)?;
            let offsets = db.open_tree("log_offsets").map_err(classify)?;
            let matching = db.open_tree("matching").map_err(classify)?;
            Ok(SledStore {
                db,
                orders,
                by_symbol,
                offsets,
                matching,
                flush_each_batch: durable_every_ms == 0,
                path,
            })
        })
        .await
        .map_err(|source| StoreError::Crashed {
            engine: "sled",
            source,
        })?
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&SledStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let me = SledStore {
            db: self.db.clone(),
            orders: self.orders.clone(),
            by_symbol: self.by_symbol.clone(),
            offsets: self.offsets.clone(),
            matching: self.matching.clone(),
            flush_each_batch: self.flush_each_batch,
            path: self.path.clone(),
        };
        tokio::task::spawn_blocking(move || work(&me))
            .await
            .map_err(|source| StoreError::Crashed {
                engine: "sled",
                source,
            })?
    }
}

/// Fill key, the fill's JSON (none for an untouched one), resting-index
/// key, whether the order rests.
type EncodedFill = (Vec<u8>, Option<Vec<u8>>, Vec<u8>, bool);

/// A batch's values encoded before its transaction: the transaction's
/// closure may run more than once.
struct Encoded {
    /// Order id, its symbol-index key, its JSON.
    rows: Vec<(u128, Vec<u8>, Vec<u8>)>,
    fills: Vec<EncodedFill>,
    /// Trade key, its JSON, its symbol-index key.
    trades: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
}

impl Encoded {
    fn of(batch: &Batch) -> Result<Self, StoreError> {
        let mut rows = Vec::with_capacity(batch.orders.len());
        for stored in &batch.orders {
            let id = stored.order.id.as_u128();
            let index = symbol_key(&stored.order.symbol(), id);
            rows.push((id, index, to_json("an order", stored)?));
        }
        let mut fills = Vec::with_capacity(batch.states.len());
        for state in &batch.states {
            let id = state.id.as_u128();
            let fill = match state.fill.is_untouched() {
                true => None,
                false => Some(to_json("a fill", &state.fill)?),
            };
            let live = state.fill.status.is_live();
            fills.push((
                fill_key(id).to_vec(),
                fill,
                resting_key(state.partition, id).to_vec(),
                live,
            ));
        }
        let mut trades = Vec::with_capacity(batch.trades.len());
        for trade in &batch.trades {
            let id = trade.trade.id.as_u128();
            let index = trade_index_key(&trade.symbol, id);
            trades.push((trade_key(id).to_vec(), to_json("a trade", trade)?, index));
        }
        Ok(Self {
            rows,
            fills,
            trades,
        })
    }
}

type Aborting<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// The batch's partitions' offsets as the transaction sees them.
fn current_offsets(offsets: &TransactionalTree, batch: &Batch) -> Aborting<Offsets> {
    let mut current = Offsets::new();
    for partition in batch.offsets.keys() {
        if let Some(next) = offsets.get(offset_key(&batch.topic, *partition))? {
            let next = <[u8; 8]>::try_from(next.as_ref()).map_err(|_| {
                ConflictableTransactionError::Abort(StoreError::refused("corrupt offset entry"))
            })?;
            current.insert(*partition, i64::from_be_bytes(next));
        }
    }
    Ok(current)
}

/// The orders (first write wins) and their symbol index.
fn insert_orders(
    orders: &TransactionalTree,
    by_symbol: &TransactionalTree,
    rows: &[(u128, Vec<u8>, Vec<u8>)],
) -> Aborting<Applied> {
    let mut applied = Applied::default();
    for (id, index_key, value) in rows {
        let key = id.to_be_bytes();
        // One lookup for the common case (a new id); a repeated id gets its
        // first copy back: the first write wins.
        if let Some(first) = orders.insert(&key[..], value.as_slice())? {
            orders.insert(&key[..], first)?;
            applied.duplicates += 1;
            continue;
        }
        by_symbol.insert(index_key.as_slice(), &[][..])?;
        applied.inserted += 1;
    }
    Ok(applied)
}

/// Fills, the resting index and trades (each trade once).
fn write_matching(matching: &TransactionalTree, encoded: &Encoded) -> Aborting<()> {
    for (key, fill, resting, live) in &encoded.fills {
        if let Some(fill) = fill {
            matching.insert(key.as_slice(), fill.as_slice())?;
        }
        if *live {
            matching.insert(resting.as_slice(), &[][..])?;
        } else {
            matching.remove(resting.as_slice())?;
        }
    }
    for (key, trade, index) in &encoded.trades {
        if matching.get(key)?.is_none() {
            matching.insert(key.as_slice(), trade.as_slice())?;
            matching.insert(index.as_slice(), &[][..])?;
        }
    }
    Ok(())
}

fn apply_in(store: &SledStore, batch: &Batch) -> Result<Applied, StoreError> {
    let encoded = Encoded::of(batch)?;
    let trees = (
        &store.orders,
        &store.by_symbol,
        &store.offsets,
        &store.matching,
    );
    let outcome: Result<Applied, TransactionError<StoreError>> =
        trees.transaction(|(orders, by_symbol, offsets, matching)| {
            let current = current_offsets(offsets, batch)?;
            batch
                .check(&current)
                .map_err(ConflictableTransactionError::Abort)?;
            let applied = insert_orders(orders, by_symbol, &encoded.rows)?;
            for (partition, next) in batch.forward(&current) {
                offsets.insert(offset_key(&batch.topic, partition), &next.to_be_bytes()[..])?;
            }
            write_matching(matching, &encoded)?;
            #[cfg(test)]
            if batch.fail_before_commit {
                return Err(ConflictableTransactionError::Abort(
                    StoreError::unavailable("injected failure before commit"),
                ));
            }
            Ok(applied)
        });
    let applied = match outcome {
        Ok(applied) => applied,
        Err(TransactionError::Abort(err)) => return Err(err),
        Err(TransactionError::Storage(err)) => return Err(classify(err)),
    };
    // No flush per batch (unless `durable_every_ms` is 0): a transaction is
    // atomic in sled's log, so a kill -9 loses the rows *and* the offsets of
    // what was not flushed yet (sled flushes every `durable_every_ms`), and
    // the consumer reads those records again. The kill -9 crash test holds
    // sled to that.
    if store.flush_each_batch {
        store.db.flush().map_err(classify)?;
    }
    Ok(applied)
}

#[async_trait]
impl Store for SledStore {
    fn engine(&self) -> &'static str {
        super::url::Engine::Sled.as_str()
    }

    async fn apply(&self, batch: Arc<Batch>) -> Result<Applied, StoreError> {
        self.blocking(move |s| apply_in(s, &batch)).await
    }

    async fn offsets(&self, topic: &str) -> Result<Offsets, StoreError> {
        let mut prefix = topic.as_bytes().to_vec();
        prefix.push(0);
        self.blocking(move |s| {
            let mut out = Offsets::new();
            for entry in s.offsets.scan_prefix(&prefix) {
                let (key, value) = entry.map_err(classify)?;
                let partition = key[prefix.len()..].try_into().map(i32::from_be_bytes);
                let next = value.as_ref().try_into().map(i64::from_be_bytes);
                match (partition, next) {
                    (Ok(p), Ok(n)) => {
                        out.insert(p, n);
                    }
                    _ => return Err(StoreError::refused("corrupt offset entry")),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn forget_offsets(&self, topic: &str, partitions: &[i32]) -> Result<(), StoreError> {
        let keys: Vec<Vec<u8>> = partitions.iter().map(|p| offset_key(topic, *p)).collect();
        self.blocking(move |s| {
            for key in keys {
                s.offsets.remove(key).map_err(classify)?;
            }
            s.db.flush().map_err(classify)?;
            Ok(())
        })
        .await
    }

    async fn get(&self, id: Uuid) -> Result<Option<StoredOrder>, StoreError> {
        self.blocking(move |s| read_order(s, &id.as_u128().to_be_bytes()))
            .await
    }

    async fn list_by_symbol(
        &self,
        symbol: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<StoredOrder>, StoreError> {
        let symbol = symbol.to_owned();
        self.blocking(move |s| {
            index_page(&s.by_symbol, |id| symbol_key(&symbol, id), after, limit)?
                .into_iter()
                .map(|id| required(read_order(s, &id.to_be_bytes())?))
                .collect()
        })
        .await
    }

    async fn known(&self, ids: Vec<Uuid>) -> Result<HashSet<Uuid>, StoreError> {
        self.blocking(move |s| {
            let mut out = HashSet::new();
            for id in ids {
                if s.orders
                    .contains_key(id.as_u128().to_be_bytes())
                    .map_err(classify)?
                {
                    out.insert(id);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn resting(&self, partition: i32) -> Result<Vec<StoredOrder>, StoreError> {
        self.blocking(move |s| {
            let prefix = &resting_key(partition, 0)[..5];
            let mut out = Vec::new();
            for entry in s.matching.scan_prefix(prefix) {
                let (key, _) = entry.map_err(classify)?;
                out.push(required(read_order(s, &key[5..])?)?);
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
        self.blocking(move |s| {
            let ids = index_page(&s.matching, |id| trade_index_key(&symbol, id), after, limit)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let value = s
                    .matching
                    .get(trade_key(id))
                    .map_err(classify)?
                    .ok_or_else(|| StoreError::refused("index names a trade that is missing"))?;
                out.push(from_json("trade", &value)?);
            }
            Ok(out)
        })
        .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.blocking(|s| Ok(s.orders.len() as u64)).await
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.blocking(|s| s.orders.first().map(drop).map_err(classify))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sled(tempfile::TempDir);

    impl super::super::contract::Engine for Sled {
        async fn open(&self) -> Arc<dyn Store> {
            // sled holds a file lock until every handle is gone; the contract's
            // reopen drops the first store before opening again.
            Arc::new(SledStore::open(self.0.path()).await.expect("open sled"))
        }
    }

    async fn engine() -> Sled {
        Sled(tempfile::tempdir().expect("tempdir"))
    }

    crate::store_contract_tests!(engine);
}
