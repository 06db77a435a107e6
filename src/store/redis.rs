//! The Redis engine: an in-memory database server, the opposite trade to
//! redb and sled inside the process. One Lua script per batch writes the
//! orders, their symbol index and the offsets atomically (a script runs
//! alone on the server, and its effects reach the AOF and replicas as one
//! transaction).
//!
//! Redis has no rollback, so the script checks everything before its first
//! write — the offsets it expects (fencing, and how a Redis that lost data
//! behind oms' back is noticed), the type of every key it will touch — and
//! declares itself a writing script (`#!lua`), which Redis refuses up front
//! while it is over `maxmemory` instead of failing half-way. oms sets
//! `maxmemory-policy noeviction` and the persistence setting on every Redis
//! run it meets (see [`RedisStore::open`]): evicting an order would lose it.
//!
//! Keys (`{p}` = `store.redis.key_prefix`): `{p}:order:{id}` the order as
//! JSON; `{p}:symbol:{symbol}` a sorted set of ids, all at score 0, so
//! `ZRANGEBYLEX` pages it in id order (a hyphenated lower-case UUID sorts as
//! its bytes do, like the other engines' keys); `{p}:offsets:{topic}` a hash
//! partition → next offset; `{p}:count` the number of orders; `{p}:fills` a
//! hash order id → fill JSON; `{p}:resting:{partition}` a sorted set of the
//! ids resting in that partition's books; `{p}:trades` a hash trade id →
//! JSON and `{p}:trades:{symbol}` its index (like the orders'). oms talks to
//! one Redis (a primary), not to Redis Cluster.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisError};
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use std::collections::HashSet;

use super::lease::{GroupView, Lease, Leases, Member, MemberRow, MemberState};
use super::settings::{RedisPersistence, RedisSettings};
use super::{Applied, Batch, Store, StoreError, from_json, to_json};
use crate::domain::{Fill, Offsets, StoredOrder, StoredTrade};

/// One batch. KEYS = the offsets hash, the count, the fills hash, the
/// trades hash, the leases hash; per order its key and its symbol's index;
/// per fill its partition's resting index; per trade its symbol's trade
/// index. ARGV = fenced (0: no, 1: at the expected offsets, 2: there or
/// already at the batch's targets — a retry), number of partitions, a
/// (partition, target, expected or "", claimed lease `epoch|owner|` or "")
/// quadruple per partition, fail-before-write (tests), the numbers of
/// orders, fills and trades; per order its id and JSON; per fill the order
/// id, the fill's JSON (empty for an untouched one: nothing to write) and
/// live (1/0); per trade its id and JSON.
const APPLY: &str = r#"#!lua
local fenced, retried, partitions = ARGV[1] ~= '0', ARGV[1] == '2', tonumber(ARGV[2])
local offsets_key, fills_key, trades_key, leases_key = KEYS[1], KEYS[3], KEYS[4], KEYS[5]
local function check(key, want)
  local t = redis.call('TYPE', key).ok
  if t ~= 'none' and t ~= want then
    return 'WRONGTYPE ' .. key .. ' is a ' .. t .. ', not a ' .. want
  end
end
local problem = check(offsets_key, 'hash') or check(fills_key, 'hash') or check(trades_key, 'hash')
  or check(leases_key, 'hash')
if problem then
  return redis.error_reply(problem)
end
local moves = {}
local a = 3
for _ = 1, partitions do
  local p, target, expected, claim = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  if claim ~= '' then
    local lease = redis.call('HGET', leases_key, p) or ''
    if string.sub(lease, 1, #claim) ~= claim then
      return redis.error_reply('FENCED ' .. p .. ' ' .. (lease == '' and '-' or lease))
    end
  end
  local current = redis.call('HGET', offsets_key, p)
  if fenced and (current or '') ~= expected and not (retried and current == target) then
    return redis.error_reply('DIVERGED ' .. p .. ' ' .. (current or '-'))
  end
  if not current or tonumber(current) <= tonumber(target) then
    moves[#moves + 1] = {p, target}
  end
  a = a + 4
end
local fail = ARGV[a] == '1'
local orders, fills, trades = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
local arg = a + 4
local indexes = 6 + 2 * orders
local seen = {}
for k = 6, #KEYS do
  local is_index = k >= indexes or (k - 6) % 2 == 1
  if is_index and not seen[KEYS[k]] then
    seen[KEYS[k]] = true
    problem = check(KEYS[k], 'zset')
    if problem then
      return redis.error_reply(problem)
    end
  end
end
if fail then
  return redis.error_reply('INJECTED failure before the first write')
end
-- Nothing is written above this line.
local inserted = 0
for j = 0, orders - 1 do
  local k, i = 6 + 2 * j, arg + 2 * j
  if redis.call('SET', KEYS[k], ARGV[i + 1], 'NX') then
    redis.call('ZADD', KEYS[k + 1], 0, ARGV[i])
    inserted = inserted + 1
  end
end
arg = arg + 2 * orders
for j = 0, fills - 1 do
  local i = arg + 3 * j
  if ARGV[i + 1] ~= '' then
    redis.call('HSET', fills_key, ARGV[i], ARGV[i + 1])
  end
  if ARGV[i + 2] == '1' then
    redis.call('ZADD', KEYS[indexes + j], 0, ARGV[i])
  else
    redis.call('ZREM', KEYS[indexes + j], ARGV[i])
  end
end
arg = arg + 3 * fills
for j = 0, trades - 1 do
  local i = arg + 2 * j
  if redis.call('HSETNX', trades_key, ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('ZADD', KEYS[indexes + fills + j], 0, ARGV[i])
  end
end
for _, m in ipairs(moves) do
  redis.call('HSET', offsets_key, m[1], m[2])
end
if inserted > 0 then
  redis.call('INCRBY', KEYS[2], inserted)
end
return inserted
"#;

/// The server's clock in milliseconds: every lease time is Redis' own.
const NOW: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function lease(v)
  if not v then return nil end
  local e, owner, inst, exp = string.match(v, '^(%d+)|([^|]*)|([^|]*)|(%d+)$')
  return {epoch = tonumber(e), owner = owner, instance = inst, expires = tonumber(exp)}
end
"#;

/// KEYS = members; ARGV = member, instance. Forgets earlier runs of the instance.
const JOIN: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local inst = string.match(all[i + 1], '^([^|]*)|')
  if all[i] ~= ARGV[1] and inst == ARGV[2] then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return 1
"#;

/// KEYS = members, leases, offsets; ARGV = member, instance, state, ttl
/// ms, then a (partition, epoch) pair per lease held. Returns the members
/// (id, instance, state), the leases (partition, epoch, owner, instance, live), the
/// offsets and the partitions renewed.
const HEARTBEAT: &str = r#"
local now = now_ms()
local me, instance, state, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
redis.call('HSET', KEYS[1], me, instance .. '|' .. state .. '|' .. (now + ttl))
local members = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local inst, st, exp = string.match(all[i + 1], '^([^|]*)|([^|]*)|(%d+)$')
  if not exp or tonumber(exp) < now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    members[#members + 1] = {all[i], inst, st}
  end
end
local renewed = {}
for a = 5, #ARGV, 2 do
  local p, epoch = ARGV[a], tonumber(ARGV[a + 1])
  local l = lease(redis.call('HGET', KEYS[2], p))
  if l and l.epoch == epoch and l.owner == me then
    redis.call('HSET', KEYS[2], p, epoch .. '|' .. me .. '|' .. l.instance .. '|' .. (now + ttl))
    renewed[#renewed + 1] = {p, epoch}
  end
end
local leases = {}
local held = redis.call('HGETALL', KEYS[2])
for i = 1, #held, 2 do
  local l = lease(held[i + 1])
  if l then
    local live = (l.owner ~= '' and l.expires >= now) and 1 or 0
    leases[#leases + 1] = {held[i], l.epoch, l.owner, l.instance, live}
  end
end
return {members, leases, redis.call('HGETALL', KEYS[3]), renewed}
"#;

/// KEYS = leases; ARGV = partition, member, instance, ttl ms, takeover
/// (1/0). Returns the new epoch, or nothing when another member holds it.
const ACQUIRE: &str = r#"
local now = now_ms()
local p, me, instance, ttl, takeover = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5] == '1'
local l = lease(redis.call('HGET', KEYS[1], p))
local epoch = 0
if l then
  local free = l.owner == '' or l.expires < now
    or (takeover and instance ~= '' and l.instance == instance and l.owner ~= me)
  if not free then
    return false
  end
  epoch = l.epoch
end
epoch = epoch + 1
redis.call('HSET', KEYS[1], p, epoch .. '|' .. me .. '|' .. instance .. '|' .. (now + ttl))
return epoch
"#;

/// KEYS = leases, members; ARGV = member, then the partitions to give up
/// (at any epoch `member` holds them), or none with `leave` = 1 in
/// ARGV[2]: every lease of the member, and its membership.
const RELEASE: &str = r#"
local now = now_ms()
local me, leave = ARGV[1], ARGV[2] == '1'
local wanted = {}
for a = 3, #ARGV, 2 do
  wanted[ARGV[a]] = tonumber(ARGV[a + 1])
end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local l = lease(all[i + 1])
  if l and l.owner == me and (leave or wanted[all[i]] == l.epoch) then
    redis.call('HSET', KEYS[1], all[i], (l.epoch + 1) .. '|||' .. now)
  end
end
if leave then
  redis.call('HDEL', KEYS[2], me)
end
return 1
"#;

/// A connection to one Redis, reconnecting by itself.
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    apply: redis::Script,
    leases: LeaseScripts,
    /// Why the server is not fit to hold orders (an eviction policy oms
    /// could not change), as last seen by the configuring task.
    unfit: Arc<Mutex<Option<String>>>,
    _configuring: DropGuard,
}

/// The batch script's own refusals, worded by the batch (`DIVERGED p
/// current`, `FENCED p epoch|owner|…`); any other error is classified.
fn refusal(batch: &Batch, err: RedisError) -> StoreError {
    let detail = err.detail().unwrap_or_default();
    let (partition, found) = detail.split_once(' ').unwrap_or((detail, "-"));
    let partition: i32 = partition.parse().unwrap_or(-1);
    let found = (found != "-").then_some(found);
    match err.code() {
        Some("DIVERGED") => batch.diverged(partition, found.and_then(|f| f.parse().ok())),
        Some("FENCED") => {
            let held = found.map(|lease| {
                let mut fields = lease.split('|');
                let epoch = fields
                    .next()
                    .and_then(|e| e.parse().ok())
                    .unwrap_or_default();
                let owner = fields.next().filter(|o| !o.is_empty()).map(str::to_owned);
                (epoch, owner)
            });
            match &batch.claim {
                Some(claim) => claim.fenced(&batch.topic, partition, held),
                None => StoreError::Fenced {
                    partition,
                    what: detail.to_owned(),
                },
            }
        }
        Some("INJECTED") => StoreError::unavailable("injected failure before the first write"),
        _ => classify(err),
    }
}

/// Sorts Redis errors: everything is an outage the consumer waits out —
/// Redis refuses no order for what it holds — except a diverged offset.
fn classify(err: RedisError) -> StoreError {
    match err.code() {
        Some("OOM") => StoreError::transient(
            "Redis is out of memory (maxmemory, noeviction): the batch was refused before its \
             first write; free memory or raise maxmemory",
            err,
        ),
        Some("WRONGTYPE") => StoreError::transient(
            "a Redis key oms uses holds another type: another application shares the key prefix \
             (store.redis.key_prefix)",
            err,
        ),
        Some("LOADING") => StoreError::transient("Redis is loading its data", err),
        Some("READONLY") => StoreError::transient("Redis is a read-only replica", err),
        _ => StoreError::transient("Redis did not answer", err),
    }
}

impl RedisStore {
    /// Connects lazily (oms starts, and reports not ready, while Redis is
    /// down) and starts a task that applies `maxmemory-policy noeviction`
    /// and the persistence setting to every Redis run it meets: a restarted
    /// Redis comes back with its own configuration, not with what an
    /// earlier `CONFIG SET` said.
    pub async fn open(url: &str, settings: &RedisSettings) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::permanent("invalid Redis store.url", e))?;
        let timeout = Duration::from_millis(settings.timeout_ms);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::permanent("the Redis client could not be created", e))?;
        let unfit = Arc::new(Mutex::new(None));
        let stop = CancellationToken::new();
        tokio::spawn(configure(
            conn.clone(),
            settings.persistence,
            unfit.clone(),
            stop.clone(),
        ));
        Ok(Self {
            conn,
            prefix: settings.key_prefix.clone(),
            apply: redis::Script::new(APPLY),
            leases: LeaseScripts::new(),
            unfit,
            _configuring: stop.drop_guard(),
        })
    }

    /// `id` as the index holds it: a hyphenated lower-case UUID (what a
    /// `Uuid` displays as).
    fn order_key(&self, id: impl std::fmt::Display) -> String {
        format!("{}:order:{id}", self.prefix)
    }

    fn symbol_key(&self, symbol: &str) -> String {
        format!("{}:symbol:{symbol}", self.prefix)
    }

    fn offsets_key(&self, topic: &str) -> String {
        format!("{}:offsets:{topic}", self.prefix)
    }

    fn count_key(&self) -> String {
        format!("{}:count", self.prefix)
    }

    fn fills_key(&self) -> String {
        format!("{}:fills", self.prefix)
    }

    fn resting_key(&self, partition: i32) -> String {
        format!("{}:resting:{partition}", self.prefix)
    }

    /// Partition → `epoch|owner|instance|expires_ms` (owner and instance
    /// empty once given up); see [`Leases`].
    fn leases_key(&self, topic: &str) -> String {
        format!("{}:leases:{topic}", self.prefix)
    }

    /// Member id → `instance|state|expires_ms`.
    fn members_key(&self, topic: &str) -> String {
        format!("{}:members:{topic}", self.prefix)
    }

    fn trades_key(&self) -> String {
        format!("{}:trades", self.prefix)
    }

    fn trade_index_key(&self, symbol: &str) -> String {
        format!("{}:trades:{symbol}", self.prefix)
    }

    /// The orders named by `ids` (hyphenated), with their fills; an id
    /// whose order is missing is skipped.
    async fn orders(&self, ids: &[String]) -> Result<Vec<StoredOrder>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.order_key(id)).collect();
        let mut conn = self.conn.clone();
        let (bodies, fills): (Vec<Option<String>>, Vec<Option<String>>) = redis::pipe()
            .cmd("MGET")
            .arg(keys)
            .cmd("HMGET")
            .arg(self.fills_key())
            .arg(ids)
            .query_async(&mut conn)
            .await
            .map_err(classify)?;
        let mut out = Vec::with_capacity(ids.len());
        for (body, fill) in bodies.iter().zip(fills) {
            let Some(body) = body else { continue };
            let mut order: StoredOrder = from_json("order", body.as_bytes())?;
            if let Some(fill) = fill {
                order.fill = from_json::<Fill>("fill", fill.as_bytes())?;
            }
            out.push(order);
        }
        Ok(out)
    }

    /// A page of a sorted set of ids in id order, strictly after `after`.
    async fn page(
        &self,
        index: String,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        // `(id` is exclusive: strictly after the cursor. O(log n + limit).
        let from = after.map_or_else(|| "-".to_owned(), |id| format!("({}", id.hyphenated()));
        redis::cmd("ZRANGEBYLEX")
            .arg(index)
            .arg(from)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(classify)
    }
}

impl RedisPersistence {
    /// The Redis settings (`CONFIG SET name value`) that give this mode.
    pub fn server_config(self) -> &'static [(&'static str, &'static str)] {
        match self {
            // No snapshots either: "none" means none.
            Self::None => &[("appendonly", "no"), ("save", "")],
            Self::AofEverysec => &[("appendonly", "yes"), ("appendfsync", "everysec")],
            Self::AofAlways => &[("appendonly", "yes"), ("appendfsync", "always")],
        }
    }
}

/// The settings oms needs on every Redis run: its run id tells a restarted
/// (or failed-over) server from the one already configured.
async fn configure(
    mut conn: ConnectionManager,
    persistence: RedisPersistence,
    unfit: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
) {
    let mut configured: Option<String> = None;
    loop {
        if let Ok(info) = redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut conn)
            .await
        {
            let run = info
                .lines()
                .find_map(|l| l.strip_prefix("run_id:"))
                .map(str::to_owned);
            if run.is_some() && run != configured {
                let problem = apply_config(&mut conn, persistence).await;
                if let Some(p) = &problem {
                    tracing::warn!(problem = %p, "Redis is not configured as oms needs");
                } else {
                    tracing::info!(
                        persistence = persistence.as_str(),
                        "Redis configured: maxmemory-policy noeviction"
                    );
                }
                *unfit.lock().unwrap_or_else(|e| e.into_inner()) = problem;
                configured = run;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Applies the settings and saves them in the server's config file; what
/// could not be applied and still does not hold (a managed Redis may refuse
/// `CONFIG`) is the problem returned. Only the
/// eviction policy makes the server unfit: persistence is a trade the
/// operator may have made in the server's own configuration.
async fn apply_config(
    conn: &mut ConnectionManager,
    persistence: RedisPersistence,
) -> Option<String> {
    let set = |name: &'static str, value: &'static str| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg(name)
                .arg(value)
                .query_async::<()>(&mut conn)
                .await
        }
    };
    for (name, value) in persistence.server_config() {
        if let Err(e) = set(name, value).await {
            tracing::warn!(error = %e, setting = name, value, "could not set a Redis persistence setting; the server's own applies");
        }
    }
    let evicting = set("maxmemory-policy", "noeviction").await.is_err();
    // Into the server's config file, so a restarted Redis starts with it —
    // and, with an AOF, loads it (a Redis started with `appendonly no`
    // ignores the AOF on disk).
    if let Err(e) = redis::cmd("CONFIG")
        .arg("REWRITE")
        .query_async::<()>(conn)
        .await
    {
        tracing::warn!(
            error = %e,
            "could not save the settings into Redis' config file: they hold until Redis restarts; \
             put them in the server's own configuration"
        );
    }
    if !evicting {
        return None;
    }
    let policy: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await;
    match policy {
        Ok(v) if v.get(1).is_some_and(|p| p == "noeviction") => None,
        Ok(v) => Some(format!(
            "maxmemory-policy is {}, not noeviction: Redis may evict orders",
            v.get(1).map_or("unknown", String::as_str)
        )),
        Err(e) => Some(format!(
            "maxmemory-policy could be neither set nor read ({e}): set noeviction on the server"
        )),
    }
}

#[async_trait]
impl Store for RedisStore {
    fn engine(&self) -> &'static str {
        super::url::Engine::Redis.as_str()
    }

    async fn apply(&self, batch: Arc<Batch>) -> Result<Applied, StoreError> {
        let mut call = self.apply.prepare_invoke();
        call.key(self.offsets_key(&batch.topic))
            .key(self.count_key());
        call.arg(match (&batch.expected, batch.retried) {
            (None, _) => "0",
            (Some(_), false) => "1",
            (Some(_), true) => "2",
        })
        .arg(batch.offsets.len());
        for (partition, target) in &batch.offsets {
            let expected = batch
                .expected
                .as_ref()
                .and_then(|e| e.get(partition))
                .map_or_else(String::new, i64::to_string);
            let claim = batch
                .claim
                .as_ref()
                .and_then(|c| Some(format!("{}|{}|", c.epochs.get(partition)?, c.owner)))
                .unwrap_or_default();
            call.arg(partition).arg(target).arg(expected).arg(claim);
        }
        #[cfg(test)]
        let fail = batch.fail_before_commit;
        #[cfg(not(test))]
        let fail = false;
        call.arg(if fail { "1" } else { "0" })
            .arg(batch.orders.len())
            .arg(batch.states.len())
            .arg(batch.trades.len());
        call.key(self.fills_key())
            .key(self.trades_key())
            .key(self.leases_key(&batch.topic));
        for stored in &batch.orders {
            call.key(self.order_key(stored.order.id))
                .key(self.symbol_key(&stored.order.symbol()))
                .arg(stored.order.id.hyphenated().to_string())
                .arg(to_json("an order", stored)?);
        }
        for state in &batch.states {
            call.key(self.resting_key(state.partition))
                .arg(state.id.hyphenated().to_string())
                .arg(if state.fill.is_untouched() {
                    Vec::new()
                } else {
                    to_json("a fill", &state.fill)?
                })
                .arg(if state.fill.status.is_live() {
                    "1"
                } else {
                    "0"
                });
        }
        for trade in &batch.trades {
            call.key(self.trade_index_key(&trade.symbol))
                .arg(trade.trade.id.hyphenated().to_string())
                .arg(to_json("a trade", trade)?);
        }
        let mut conn = self.conn.clone();
        let inserted: usize = call
            .invoke_async(&mut conn)
            .await
            .map_err(|e| refusal(&batch, e))?;
        Ok(Applied::of(&batch, inserted))
    }

    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }

    async fn offsets(&self, topic: &str) -> Result<Offsets, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Vec<(i32, i64)> = conn
            .hgetall(self.offsets_key(topic))
            .await
            .map_err(classify)?;
        Ok(raw.into_iter().collect())
    }

    async fn forget_offsets(&self, topic: &str, partitions: &[i32]) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .hdel(self.offsets_key(topic), partitions)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<StoredOrder>, StoreError> {
        Ok(self
            .orders(&[id.hyphenated().to_string()])
            .await?
            .into_iter()
            .next())
    }

    async fn list_by_symbol(
        &self,
        symbol: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<StoredOrder>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ids = self.page(self.symbol_key(symbol), after, limit).await?;
        self.orders(&ids).await
    }

    async fn known(&self, ids: Vec<Uuid>) -> Result<HashSet<Uuid>, StoreError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.exists(self.order_key(id));
        }
        let mut conn = self.conn.clone();
        let found: Vec<bool> = pipe.query_async(&mut conn).await.map_err(classify)?;
        Ok(ids
            .into_iter()
            .zip(found)
            .filter_map(|(id, there)| there.then_some(id))
            .collect())
    }

    async fn resting(&self, partition: i32) -> Result<Vec<StoredOrder>, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn
            .zrange(self.resting_key(partition), 0, -1)
            .await
            .map_err(classify)?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1_000) {
            out.extend(self.orders(chunk).await?);
        }
        out.sort_by_key(|o| o.offset);
        Ok(out)
    }

    async fn trades(
        &self,
        symbol: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<StoredTrade>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ids = self
            .page(self.trade_index_key(symbol), after, limit)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let bodies: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.trades_key())
            .arg(ids)
            .query_async(&mut conn)
            .await
            .map_err(classify)?;
        bodies
            .iter()
            .flatten()
            .map(|json| from_json("trade", json.as_bytes()))
            .collect()
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let n: Option<u64> = conn.get(self.count_key()).await.map_err(classify)?;
        Ok(n.unwrap_or_default())
    }

    async fn health(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(classify)?;
        match self.unfit.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            Some(problem) => Err(StoreError::unavailable(problem)),
            None => Ok(()),
        }
    }
}

/// The lease scripts, each with the shared helpers in front.
struct LeaseScripts {
    join: redis::Script,
    heartbeat: redis::Script,
    acquire: redis::Script,
    release: redis::Script,
}

impl LeaseScripts {
    fn new() -> Self {
        let with_helpers = |body: &str| redis::Script::new(&format!("{NOW}{body}"));
        Self {
            join: with_helpers(JOIN),
            heartbeat: with_helpers(HEARTBEAT),
            acquire: with_helpers(ACQUIRE),
            release: with_helpers(RELEASE),
        }
    }
}

/// What [`HEARTBEAT`] returns.
type HeartbeatReply = (
    Vec<MemberRow>,
    Vec<(i32, i64, String, String, i32)>,
    Vec<(i32, i64)>,
    Vec<(i32, i64)>,
);

/// The leases live in two hashes per topic (see [`RedisStore::leases_key`]
/// and [`RedisStore::members_key`]); every time is the server's (`TIME`).
#[async_trait]
impl Leases for RedisStore {
    async fn join(&self, member: &Member) -> Result<(), StoreError> {
        if member.instance.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        self.leases
            .join
            .key(self.members_key(&member.topic))
            .arg(&member.id)
            .arg(&member.instance)
            .invoke_async::<i64>(&mut conn)
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
        let mut call = self.leases.heartbeat.prepare_invoke();
        call.key(self.members_key(&member.topic))
            .key(self.leases_key(&member.topic))
            .key(self.offsets_key(&member.topic))
            .arg(&member.id)
            .arg(&member.instance)
            .arg(state.as_str())
            .arg(member.ttl_ms());
        for lease in held {
            call.arg(lease.partition).arg(lease.epoch);
        }
        let mut conn = self.conn.clone();
        let (members, leases, offsets, renewed): HeartbeatReply =
            call.invoke_async(&mut conn).await.map_err(classify)?;
        // Redis keeps a lease's owner empty once given up.
        let leases = leases
            .into_iter()
            .map(|(p, e, owner, instance, live)| {
                (
                    p,
                    e,
                    (!owner.is_empty()).then_some(owner),
                    instance,
                    live == 1,
                )
            })
            .collect();
        let mut view = GroupView::from_rows(members, leases, offsets.into_iter().collect());
        view.renewed = renewed
            .into_iter()
            .map(|(partition, epoch)| Lease { partition, epoch })
            .collect();
        Ok(view)
    }

    async fn acquire(
        &self,
        member: &Member,
        partition: i32,
        takeover: bool,
    ) -> Result<Option<Lease>, StoreError> {
        let mut conn = self.conn.clone();
        let epoch: Option<i64> = self
            .leases
            .acquire
            .key(self.leases_key(&member.topic))
            .arg(partition)
            .arg(&member.id)
            .arg(&member.instance)
            .arg(member.ttl_ms())
            .arg(if takeover { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
            .map_err(classify)?;
        Ok(epoch.map(|epoch| Lease { partition, epoch }))
    }

    async fn release(&self, member: &Member, lease: Lease) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.leases
            .release
            .key(self.leases_key(&member.topic))
            .key(self.members_key(&member.topic))
            .arg(&member.id)
            .arg("0")
            .arg(lease.partition)
            .arg(lease.epoch)
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn leave(&self, member: &Member) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.leases
            .release
            .key(self.leases_key(&member.topic))
            .key(self.members_key(&member.topic))
            .arg(&member.id)
            .arg("1")
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(classify)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key prefix of its own on the test Redis (`just test` exports the URL).
    struct Redis(String);

    impl super::super::contract::Engine for Redis {
        async fn open(&self) -> Arc<dyn Store> {
            let url = std::env::var("OMS_TEST_REDIS_URL").unwrap_or_else(|_| {
                panic!("OMS_TEST_REDIS_URL is not set: run the tests with `just test`, which starts Redis")
            });
            let settings = RedisSettings {
                key_prefix: self.0.clone(),
                ..RedisSettings::default()
            };
            Arc::new(RedisStore::open(&url, &settings).await.expect("client"))
        }
    }

    async fn engine() -> Redis {
        Redis(format!("oms-contract-{}", Uuid::now_v7().simple()))
    }

    crate::store_contract_tests!(engine);
    crate::lease_contract_tests!(engine);
}
