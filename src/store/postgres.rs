//! The Postgres engine: durable and queryable. A batch is written in one
//! round trip — a single statement whose data-modifying CTEs insert every row
//! from `UNNEST`ed arrays (`ON CONFLICT DO NOTHING`) and move the offsets —
//! so it is atomic without an explicit transaction.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use uuid::Uuid;

use std::collections::HashSet;

use super::lease::{GroupView, Lease, LeaseRow, Leases, Member, MemberRow, MemberState};
use super::settings::PostgresSettings;
use super::{Applied, Batch, Store, StoreError};
use crate::domain::{
    Account, Amount, Broken, Channel, ClientOrderId, Description, Fill, Offsets, Order, Reason,
    Status, StoredOrder, StoredTrade, Terms, Trade,
};

/// The versioned schema (`migrations/`), applied by `oms migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const APPLY: &str = r#"
WITH inserted AS (
    INSERT INTO orders (id, client_order_id, symbol, src_currency, dst_currency, side,
                        price, quantity, channel, description, created_at, log_partition, log_offset,
                        account, order_type, time_in_force, post_only)
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::numeric[], $8::numeric[], $9::int2[], $10::text[], $11::timestamptz[],
                         $12::int4[], $13::int8[], $31::text[], $32::text[], $33::text[],
                         $34::bool[])
    ON CONFLICT (id) DO NOTHING
    RETURNING 1
), moved AS (
    INSERT INTO log_offsets (topic, partition, next_offset)
    SELECT $14, p, o FROM UNNEST($15::int4[], $16::int8[]) AS t(p, o)
    ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset
        -- Offsets only move forward, whoever writes.
        WHERE log_offsets.next_offset <= EXCLUDED.next_offset
    RETURNING 1
), filled AS (
    INSERT INTO order_fills (id, status, filled_quantity, book_partition, reason)
    SELECT * FROM UNNEST($17::uuid[], $18::text[], $19::numeric[], $20::int4[], $35::text[])
    ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status,
        filled_quantity = EXCLUDED.filled_quantity, book_partition = EXCLUDED.book_partition,
        reason = EXCLUDED.reason
    RETURNING 1
), traded AS (
    INSERT INTO trades (id, symbol, price, quantity, buy_order_id, sell_order_id, taker_side,
                        executed_at, log_partition, log_offset)
    SELECT * FROM UNNEST($21::uuid[], $22::text[], $23::numeric[], $24::numeric[], $25::uuid[],
                         $26::uuid[], $27::text[], $28::timestamptz[], $29::int4[], $30::int8[])
    ON CONFLICT (id) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM inserted
"#;

/// An order's columns and its fill's (`orders o LEFT JOIN order_fills f`).
const COLUMNS: &str = "o.id, o.client_order_id, o.src_currency, o.dst_currency, o.side, o.price, \
                       o.quantity, o.channel, o.description, o.created_at, o.log_partition, \
                       o.log_offset, o.account, o.order_type, o.time_in_force, o.post_only, \
                       f.status, f.filled_quantity, f.reason";
const FROM: &str = "orders o LEFT JOIN order_fills f ON f.id = o.id";

const TRADE_COLUMNS: &str = "id, symbol, price, quantity, buy_order_id, sell_order_id, \
                             taker_side, executed_at, log_partition, log_offset";

/// `status IN (…the live statuses…)` on a table qualified with
/// `qualifier`: the orders resting in a book. The partial index of
/// `migrations/0002_matching.sql` states the same predicate (a migration
/// is never edited; a test ties the two).
fn live_predicate(qualifier: &str) -> String {
    let live: Vec<String> = Status::LIVE
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!("{qualifier}status IN ({})", live.join(", "))
}

/// A pool of connections to the orders database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    client_order_id: Option<String>,
    src_currency: String,
    dst_currency: String,
    side: String,
    price: Option<Decimal>,
    quantity: Decimal,
    channel: i16,
    description: String,
    created_at: DateTime<Utc>,
    log_partition: i32,
    log_offset: i64,
    account: Option<String>,
    order_type: String,
    time_in_force: String,
    post_only: bool,
    status: Option<String>,
    filled_quantity: Option<Decimal>,
    reason: Option<String>,
}

#[derive(sqlx::FromRow)]
struct TradeRow {
    id: Uuid,
    symbol: String,
    price: Decimal,
    quantity: Decimal,
    buy_order_id: Uuid,
    sell_order_id: Uuid,
    taker_side: String,
    executed_at: DateTime<Utc>,
    log_partition: i32,
    log_offset: i64,
}

impl TryFrom<TradeRow> for StoredTrade {
    type Error = StoreError;

    fn try_from(row: TradeRow) -> Result<Self, StoreError> {
        Ok(StoredTrade {
            trade: Trade {
                id: row.id,
                price: row.price,
                quantity: row.quantity,
                buy_order_id: row.buy_order_id,
                sell_order_id: row.sell_order_id,
                taker_side: row
                    .taker_side
                    .parse()
                    .map_err(|b: Broken| StoreError::refused(format!("trades.taker_side: {b}")))?,
                executed_at: row.executed_at,
            },
            symbol: row.symbol,
            partition: row.log_partition,
            offset: row.log_offset,
        })
    }
}

impl TryFrom<Row> for StoredOrder {
    type Error = StoreError;

    fn try_from(row: Row) -> Result<Self, StoreError> {
        // The table's CHECKs hold the same rules; a row that breaks one was
        // written around oms.
        fn bad(column: &'static str) -> impl Fn(Broken) -> StoreError {
            move |broken| StoreError::refused(format!("orders.{column}: {broken}"))
        }
        Ok(StoredOrder {
            order: Order {
                id: row.id,
                client_order_id: row
                    .client_order_id
                    .map(ClientOrderId::try_from)
                    .transpose()
                    .map_err(bad("client_order_id"))?,
                account: row
                    .account
                    .map(Account::try_from)
                    .transpose()
                    .map_err(bad("account"))?,
                src_currency: row.src_currency.parse().map_err(bad("src_currency"))?,
                dst_currency: row.dst_currency.parse().map_err(bad("dst_currency"))?,
                side: row.side.parse().map_err(bad("side"))?,
                price: row
                    .price
                    .map(Amount::try_from)
                    .transpose()
                    .map_err(bad("price"))?,
                quantity: Amount::try_from(row.quantity).map_err(bad("quantity"))?,
                channel: Channel::try_from(i64::from(row.channel)).map_err(bad("channel"))?,
                description: Description::try_from(row.description).map_err(bad("description"))?,
                terms: Terms {
                    order_type: row.order_type.parse().map_err(bad("order_type"))?,
                    time_in_force: row.time_in_force.parse().map_err(bad("time_in_force"))?,
                    post_only: row.post_only,
                },
                created_at: row.created_at,
            },
            partition: row.log_partition,
            offset: row.log_offset,
            fill: match (row.status, row.filled_quantity) {
                (Some(status), Some(filled)) => Fill {
                    status: status.parse().map_err(StoreError::refused)?,
                    filled,
                    reason: row
                        .reason
                        .map(|r| r.parse())
                        .transpose()
                        .map_err(StoreError::refused)?,
                },
                _ => Fill::default(),
            },
        })
    }
}

/// Sorts sqlx errors: what the data caused (class 22 data exception, class 23
/// constraint violation) is permanent; everything else — connection loss,
/// pool timeout, shutdown, disk full, even a missing table (not migrated
/// yet) — is an outage the consumer waits out.
fn classify(err: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &err {
        let code = db.code().unwrap_or_default();
        if code.starts_with("22") || code.starts_with("23") {
            return StoreError::permanent("PostgreSQL refused the rows", err);
        }
        if code == "42P01" {
            return StoreError::transient(
                "the schema is missing: run `oms migrate --store postgres://…`",
                err,
            );
        }
    }
    StoreError::transient("PostgreSQL did not answer", err)
}

impl PostgresStore {
    /// Creates the pool. Connections are made lazily, so oms starts (and
    /// reports not-ready) while Postgres is down.
    pub async fn connect(url: &str, settings: &PostgresSettings) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::permanent("invalid PostgreSQL store.url", e))?;
        let timeout = Duration::from_millis(settings.timeout_ms);
        let timeout_ms = settings.timeout_ms.to_string();
        // A session idle inside a transaction for that long belongs to a
        // process that froze or hung mid-batch: its locks (the offsets and
        // lease rows it holds) must not stop the members taking over.
        let options = options.options([
            ("statement_timeout", timeout_ms.as_str()),
            ("idle_in_transaction_session_timeout", timeout_ms.as_str()),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.pool)
            .acquire_timeout(timeout)
            .connect_lazy_with(options);
        Ok(Self { pool })
    }

    /// Creates a new, empty database named `{prefix}_{uuid}` on the server
    /// `admin_url` points at, and returns its URL (tests and benchmarks give
    /// each run a database of its own).
    pub async fn create_database(admin_url: &str, prefix: &str) -> Result<String, StoreError> {
        let name = format!("{prefix}_{}", Uuid::now_v7().simple());
        let pool = PgPool::connect(admin_url).await.map_err(classify)?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&pool)
            .await
            .map_err(classify)?;
        pool.close().await;
        let (base, _) = admin_url
            .rsplit_once('/')
            .ok_or_else(|| StoreError::refused(format!("{admin_url} names no database")))?;
        Ok(format!("{base}/{name}"))
    }

    /// Applies the pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::transient("the schema migrations failed", e))
    }

    /// One page of `select` (a table with `symbol` and `id`, its columns
    /// named with `qualifier`) for one symbol, in id order, strictly after
    /// `after`: the `(symbol, id)` index walks it.
    async fn page<R>(
        &self,
        select: &str,
        qualifier: &str,
        symbol: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        let q = qualifier;
        sqlx::query_as(&format!(
            "{select} WHERE {q}symbol = $1 AND ($2::uuid IS NULL OR {q}id > $2) ORDER BY {q}id LIMIT $3"
        ))
        .bind(symbol)
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)
    }

    /// The batch's one statement ([`APPLY`]), its arrays bound in the
    /// order of its parameters.
    fn apply_query(batch: &Batch) -> ApplyQuery<'_> {
        let query = sqlx::query_scalar(APPLY);
        let query = bind_orders(query, batch);
        let (log_partitions, next_offsets): (Vec<i32>, Vec<i64>) =
            batch.offsets.iter().map(|(p, o)| (*p, *o)).unzip();
        let query = query
            .bind(batch.topic.clone())
            .bind(log_partitions)
            .bind(next_offsets);
        let query = bind_fills(query, batch);
        let query = bind_trades(query, batch);
        // `$31`–`$35`, bound last: their columns came after the others.
        let orders = &batch.orders;
        let terms = |f: fn(&Terms) -> &'static str| {
            orders.iter().map(|s| f(&s.order.terms)).collect::<Vec<_>>()
        };
        query
            .bind(
                orders
                    .iter()
                    .map(|s| s.order.account.as_ref().map(Account::as_str))
                    .collect::<Vec<_>>(),
            )
            .bind(terms(|t| t.order_type.as_str()))
            .bind(terms(|t| t.time_in_force.as_str()))
            .bind(
                orders
                    .iter()
                    .map(|s| s.order.terms.post_only)
                    .collect::<Vec<_>>(),
            )
            .bind(
                batch
                    .states
                    .iter()
                    .map(|s| s.fill.reason.map(Reason::as_str))
                    .collect::<Vec<_>>(),
            )
    }
}

type ApplyQuery<'q> =
    sqlx::query::QueryScalar<'q, sqlx::Postgres, i64, sqlx::postgres::PgArguments>;

/// `$1`–`$13`: the orders, column by column.
fn bind_orders<'q>(query: ApplyQuery<'q>, batch: &'q Batch) -> ApplyQuery<'q> {
    let n = batch.orders.len();
    let mut ids = Vec::with_capacity(n);
    let mut client_ids = Vec::with_capacity(n);
    let mut symbols = Vec::with_capacity(n);
    let mut srcs = Vec::with_capacity(n);
    let mut dsts = Vec::with_capacity(n);
    let mut sides = Vec::with_capacity(n);
    let mut prices = Vec::with_capacity(n);
    let mut quantities = Vec::with_capacity(n);
    let mut channels = Vec::with_capacity(n);
    let mut descriptions = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut partitions = Vec::with_capacity(n);
    let mut offsets = Vec::with_capacity(n);
    for s in &batch.orders {
        let o = &s.order;
        ids.push(o.id);
        client_ids.push(o.client_order_id.as_ref().map(ClientOrderId::as_str));
        symbols.push(o.symbol());
        srcs.push(o.src_currency.as_str());
        dsts.push(o.dst_currency.as_str());
        sides.push(o.side.as_str());
        prices.push(o.limit());
        quantities.push(o.quantity.value());
        // Channel codes are at most 61.
        channels.push(i16::try_from(o.channel.code()).unwrap_or(i16::MAX));
        descriptions.push(o.description.as_str());
        created.push(o.created_at);
        partitions.push(s.partition);
        offsets.push(s.offset);
    }
    query
        .bind(ids)
        .bind(client_ids)
        .bind(symbols)
        .bind(srcs)
        .bind(dsts)
        .bind(sides)
        .bind(prices)
        .bind(quantities)
        .bind(channels)
        .bind(descriptions)
        .bind(created)
        .bind(partitions)
        .bind(offsets)
}

/// `$17`–`$20`: each touched order's fill and book partition.
fn bind_fills<'q>(query: ApplyQuery<'q>, batch: &'q Batch) -> ApplyQuery<'q> {
    let states = &batch.states;
    let ids: Vec<Uuid> = states.iter().map(|s| s.id).collect();
    let statuses: Vec<&str> = states.iter().map(|s| s.fill.status.as_str()).collect();
    let filled: Vec<Decimal> = states.iter().map(|s| s.fill.filled).collect();
    let books: Vec<i32> = states.iter().map(|s| s.partition).collect();
    query.bind(ids).bind(statuses).bind(filled).bind(books)
}

/// `$21`–`$30`: the trades, column by column.
fn bind_trades<'q>(query: ApplyQuery<'q>, batch: &'q Batch) -> ApplyQuery<'q> {
    let t = &batch.trades;
    let ids: Vec<Uuid> = t.iter().map(|t| t.trade.id).collect();
    let symbols: Vec<&str> = t.iter().map(|t| t.symbol.as_str()).collect();
    let prices: Vec<Decimal> = t.iter().map(|t| t.trade.price).collect();
    let quantities: Vec<Decimal> = t.iter().map(|t| t.trade.quantity).collect();
    let buys: Vec<Uuid> = t.iter().map(|t| t.trade.buy_order_id).collect();
    let sells: Vec<Uuid> = t.iter().map(|t| t.trade.sell_order_id).collect();
    let takers: Vec<&str> = t.iter().map(|t| t.trade.taker_side.as_str()).collect();
    let executed: Vec<DateTime<Utc>> = t.iter().map(|t| t.trade.executed_at).collect();
    let partitions: Vec<i32> = t.iter().map(|t| t.partition).collect();
    let offsets: Vec<i64> = t.iter().map(|t| t.offset).collect();
    query
        .bind(ids)
        .bind(symbols)
        .bind(prices)
        .bind(quantities)
        .bind(buys)
        .bind(sells)
        .bind(takers)
        .bind(executed)
        .bind(partitions)
        .bind(offsets)
}

#[async_trait]
impl Store for PostgresStore {
    fn engine(&self) -> &'static str {
        super::url::Engine::Postgres.as_str()
    }

    async fn apply(&self, batch: Arc<Batch>) -> Result<Applied, StoreError> {
        let checked = batch.is_fenced();
        #[cfg(test)]
        let checked = checked || batch.fail_before_commit;
        let inserted = if checked {
            // One transaction: lock the batch's offset rows (a concurrent
            // writer of the same partitions waits, then sees the new value),
            // check them, write. Dropping `tx` early rolls everything back.
            let mut tx = self.pool.begin().await.map_err(classify)?;
            let partitions: Vec<i32> = batch.offsets.keys().copied().collect();
            let current: Vec<(i32, i64)> = sqlx::query_as(
                "SELECT partition, next_offset FROM log_offsets \
                 WHERE topic = $1 AND partition = ANY($2) FOR UPDATE",
            )
            .bind(&batch.topic)
            .bind(&partitions)
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
            batch.check(&current.into_iter().collect())?;
            if let Some(claim) = &batch.claim {
                // FOR SHARE: a member taking one of these leases over
                // (`acquire` updates the row) waits until this batch is
                // committed or rolled back, and reads the offsets after it.
                let leases: Vec<(i32, i64, Option<String>)> = sqlx::query_as(
                    "SELECT partition, epoch, owner FROM partition_leases \
                     WHERE topic = $1 AND partition = ANY($2) FOR SHARE",
                )
                .bind(&batch.topic)
                .bind(&partitions)
                .fetch_all(&mut *tx)
                .await
                .map_err(classify)?;
                let leases = leases.into_iter().map(|(p, e, o)| (p, (e, o))).collect();
                claim.check(&batch.topic, &leases)?;
            }
            let inserted = Self::apply_query(&batch)
                .fetch_one(&mut *tx)
                .await
                .map_err(classify)?;
            #[cfg(test)]
            if batch.fail_before_commit {
                return Err(StoreError::unavailable("injected failure before commit"));
            }
            tx.commit().await.map_err(classify)?;
            inserted
        } else {
            Self::apply_query(&batch)
                .fetch_one(&self.pool)
                .await
                .map_err(classify)?
        };
        let inserted = usize::try_from(inserted).unwrap_or_default();
        Ok(Applied::of(&batch, inserted))
    }

    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }

    async fn offsets(&self, topic: &str) -> Result<Offsets, StoreError> {
        let rows: Vec<(i32, i64)> =
            sqlx::query_as("SELECT partition, next_offset FROM log_offsets WHERE topic = $1")
                .bind(topic)
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
        Ok(rows.into_iter().collect())
    }

    async fn forget_offsets(&self, topic: &str, partitions: &[i32]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM log_offsets WHERE topic = $1 AND partition = ANY($2)")
            .bind(topic)
            .bind(partitions)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<StoredOrder>, StoreError> {
        let row: Option<Row> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM {FROM} WHERE o.id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(classify)?;
        row.map(StoredOrder::try_from).transpose()
    }

    async fn list_by_symbol(
        &self,
        symbol: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<StoredOrder>, StoreError> {
        let rows: Vec<Row> = self
            .page(
                &format!("SELECT {COLUMNS} FROM {FROM}"),
                "o.",
                symbol,
                after,
                limit,
            )
            .await?;
        rows.into_iter().map(StoredOrder::try_from).collect()
    }

    async fn list_owned(
        &self,
        account: &Account,
        symbol: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<StoredOrder>, StoreError> {
        // `orders_account_symbol_id` (migrations/0004_accounts.sql).
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM {FROM} WHERE o.account = $1 AND o.symbol = $2 \
             AND ($3::uuid IS NULL OR o.id > $3) ORDER BY o.id LIMIT $4"
        ))
        .bind(account.as_str())
        .bind(symbol)
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.into_iter().map(StoredOrder::try_from).collect()
    }

    async fn known(&self, ids: Vec<Uuid>) -> Result<HashSet<Uuid>, StoreError> {
        let found: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM orders WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        Ok(found.into_iter().collect())
    }

    async fn resting(&self, partition: i32) -> Result<Vec<StoredOrder>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM orders o JOIN order_fills f ON f.id = o.id \
             WHERE f.book_partition = $1 AND {} ORDER BY o.log_offset",
            live_predicate("f.")
        ))
        .bind(partition)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.into_iter().map(StoredOrder::try_from).collect()
    }

    async fn trades(
        &self,
        symbol: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<StoredTrade>, StoreError> {
        let rows: Vec<TradeRow> = self
            .page(
                &format!("SELECT {TRADE_COLUMNS} FROM trades"),
                "",
                symbol,
                after,
                limit,
            )
            .await?;
        rows.into_iter().map(StoredTrade::try_from).collect()
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(u64::try_from(n).unwrap_or_default())
    }

    async fn health(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1 FROM log_offsets LIMIT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(classify)
    }
}

impl PostgresStore {
    /// Refreshes `member` and forgets the members whose time ran out
    /// (skipping rows another heartbeat holds: it will do it).
    async fn register(&self, member: &Member, state: MemberState) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO consumer_members (topic, member, instance, state, expires_at) \
             VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond') \
             ON CONFLICT (topic, member) DO UPDATE SET state = EXCLUDED.state, \
                 expires_at = EXCLUDED.expires_at",
        )
        .bind(&member.topic)
        .bind(&member.id)
        .bind(&member.instance)
        .bind(state.as_str())
        .bind(member.ttl_ms())
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        sqlx::query(
            "DELETE FROM consumer_members WHERE (topic, member) IN (\
                 SELECT topic, member FROM consumer_members \
                 WHERE topic = $1 AND expires_at < now() FOR UPDATE SKIP LOCKED)",
        )
        .bind(&member.topic)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    /// Renews the leases of `held` that `member` still holds at their epoch.
    async fn renew(&self, member: &Member, held: &[Lease]) -> Result<Vec<Lease>, StoreError> {
        let (partitions, epochs): (Vec<i32>, Vec<i64>) =
            held.iter().map(|l| (l.partition, l.epoch)).unzip();
        let renewed: Vec<(i32, i64)> = sqlx::query_as(
            "UPDATE partition_leases l SET expires_at = now() + $3 * interval '1 millisecond' \
             FROM UNNEST($4::int4[], $5::int8[]) AS h(p, e) \
             WHERE l.topic = $1 AND l.owner = $2 AND l.partition = h.p AND l.epoch = h.e \
             RETURNING l.partition, l.epoch",
        )
        .bind(&member.topic)
        .bind(&member.id)
        .bind(member.ttl_ms())
        .bind(partitions)
        .bind(epochs)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(renewed
            .into_iter()
            .map(|(partition, epoch)| Lease { partition, epoch })
            .collect())
    }

    /// The members, leases and offsets of `topic`, in one snapshot.
    async fn group_view(&self, topic: &str) -> Result<GroupView, StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        let members: Vec<MemberRow> = sqlx::query_as(
            "SELECT member, instance, state FROM consumer_members \
             WHERE topic = $1 AND expires_at >= now() ORDER BY member",
        )
        .bind(topic)
        .fetch_all(&mut *tx)
        .await
        .map_err(classify)?;
        let leases: Vec<LeaseRow> = sqlx::query_as(
            "SELECT partition, epoch, owner, instance, owner IS NOT NULL AND expires_at >= now() \
             FROM partition_leases WHERE topic = $1",
        )
        .bind(topic)
        .fetch_all(&mut *tx)
        .await
        .map_err(classify)?;
        let offsets: Vec<(i32, i64)> =
            sqlx::query_as("SELECT partition, next_offset FROM log_offsets WHERE topic = $1")
                .bind(topic)
                .fetch_all(&mut *tx)
                .await
                .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(GroupView::from_rows(
            members,
            leases,
            offsets.into_iter().collect(),
        ))
    }
}

/// The leases live in two tables (`migrations/0003_leases.sql`); every
/// time is the server's `now()`, so members' clocks never matter.
#[async_trait]
impl Leases for PostgresStore {
    async fn join(&self, member: &Member) -> Result<(), StoreError> {
        if member.instance.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "DELETE FROM consumer_members WHERE topic = $1 AND instance = $2 AND member <> $3",
        )
        .bind(&member.topic)
        .bind(&member.instance)
        .bind(&member.id)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        member: &Member,
        state: MemberState,
        held: &[Lease],
    ) -> Result<GroupView, StoreError> {
        // One statement at a time, none waiting on another member: a member
        // frozen mid-heartbeat must hold no lock the others need.
        self.register(member, state).await?;
        let renewed = self.renew(member, held).await?;
        let mut view = self.group_view(&member.topic).await?;
        view.renewed = renewed;
        Ok(view)
    }

    async fn acquire(
        &self,
        member: &Member,
        partition: i32,
        takeover: bool,
    ) -> Result<Option<Lease>, StoreError> {
        // The row lock this update takes waits for a batch still being
        // written under the old lease (it holds the row FOR SHARE).
        let epoch: Option<i64> = sqlx::query_scalar(
            "INSERT INTO partition_leases AS l (topic, partition, epoch, owner, instance, expires_at) \
             VALUES ($1, $2, 1, $3, $4, now() + $5 * interval '1 millisecond') \
             ON CONFLICT (topic, partition) DO UPDATE SET epoch = l.epoch + 1, \
                 owner = EXCLUDED.owner, instance = EXCLUDED.instance, expires_at = EXCLUDED.expires_at \
             WHERE l.owner IS NULL OR l.expires_at < now() \
                 OR ($6 AND l.instance <> '' AND l.instance = EXCLUDED.instance AND l.owner <> EXCLUDED.owner) \
             RETURNING epoch",
        )
        .bind(&member.topic)
        .bind(partition)
        .bind(&member.id)
        .bind(&member.instance)
        .bind(member.ttl_ms())
        .bind(takeover)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        Ok(epoch.map(|epoch| Lease { partition, epoch }))
    }

    async fn release(&self, member: &Member, lease: Lease) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE partition_leases SET epoch = epoch + 1, owner = NULL, instance = '', \
                 expires_at = now() \
             WHERE topic = $1 AND partition = $2 AND epoch = $3 AND owner = $4",
        )
        .bind(&member.topic)
        .bind(lease.partition)
        .bind(lease.epoch)
        .bind(&member.id)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn leave(&self, member: &Member) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query(
            "UPDATE partition_leases SET epoch = epoch + 1, owner = NULL, instance = '', \
                 expires_at = now() \
             WHERE topic = $1 AND owner = $2",
        )
        .bind(&member.topic)
        .bind(&member.id)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        sqlx::query("DELETE FROM consumer_members WHERE topic = $1 AND member = $2")
            .bind(&member.topic)
            .bind(&member.id)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database of its own on the test cluster (`just test` exports the URL).
    struct Postgres(String);

    async fn fresh_database(prefix: &str) -> String {
        let admin = std::env::var("OMS_TEST_DATABASE_URL").unwrap_or_else(|_| {
            panic!("OMS_TEST_DATABASE_URL is not set: run the tests with `just test`, which starts PostgreSQL")
        });
        PostgresStore::create_database(&admin, prefix)
            .await
            .expect("create a test database")
    }

    impl super::super::contract::Engine for Postgres {
        async fn open(&self) -> Arc<dyn Store> {
            let store = PostgresStore::connect(&self.0, &PostgresSettings::default())
                .await
                .expect("pool");
            store.migrate().await.expect("migrate");
            Arc::new(store)
        }
    }

    #[test]
    fn the_resting_index_and_the_resting_query_agree_on_what_rests() {
        let migration = include_str!("../../migrations/0002_matching.sql");
        assert!(
            migration.contains(&format!("WHERE {};", live_predicate(""))),
            "migrations/0002_matching.sql's partial index must say {}",
            live_predicate("")
        );
        // The latest statement of the statuses and reasons names them all.
        let latest = include_str!("../../migrations/0005_order_types.sql");
        let quoted = |words: Vec<&str>| {
            words
                .iter()
                .map(|w| format!("'{w}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let every = quoted(Status::ALL.iter().map(|s| s.as_str()).collect());
        assert!(latest.contains(&format!("status IN ({every})")));
        let reasons = quoted(Reason::ALL.iter().map(|r| r.as_str()).collect());
        assert!(latest.contains(&format!("reason IN ({reasons})")));
    }

    async fn engine() -> Postgres {
        Postgres(fresh_database("oms_contract").await)
    }

    crate::store_contract_tests!(engine);
    crate::lease_contract_tests!(engine);
}
