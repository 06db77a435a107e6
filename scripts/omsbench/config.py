"""Where things are and what the benchmark aims at: paths, ports, stores,
the targets. Paths come from scripts/bench.sh, which installs and builds them."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
STATE = Path(os.environ.get("OMS_STATE", ROOT / ".oms" / "bench"))
OMS = os.environ.get("OMS_BIN", str(ROOT / "target" / "release" / "oms"))
MATCHING = os.environ.get("OMS_MATCHING_BIN", "")
AUTH_BENCH = os.environ.get("OMS_AUTH_BENCH_BIN", "")
RAWLOG = os.environ.get("OMS_RAWLOG_BIN", str(ROOT / "target" / "release" / "examples" / "rawlog"))
RELAY = os.environ.get("OMS_RELAY_BIN", str(ROOT / "target" / "release" / "examples" / "relay"))
TANSU = os.environ.get("OMS_TANSU_BIN", str(Path.home() / ".cache/oms/tools/bin/tansu"))
PG_BIN = Path(os.environ.get("OMS_PG_BIN", "/usr/lib/postgresql/15/bin"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

BROKER_PORT = 29092
PG_PORTS = {"disk": 25432, "tmpfs": 25433}
REDIS_PORT = 26379
OMS_PORT = 28080
PROM_PORT = 29090

MODES = {"sqlite": "sqlite://tansu.db", "memory": "memory://tansu/"}
STORES = ["memory", "redb", "redb-nomatch", "sled", "redis", "redis-aof", "postgres", "postgres-tmpfs"]
STORE_TITLES = {
    "memory": "memory (snapshots on tmpfs)",
    "redb": "redb (tmpfs)",
    "redb-nomatch": "redb (tmpfs), matching off",
    "sled": "sled (tmpfs)",
    "redis": "Redis (no persistence)",
    "redis-aof": "Redis (AOF every second, disk)",
    "postgres": "Postgres (disk)",
    "postgres-tmpfs": "Postgres (tmpfs)",
}
# store.redis.persistence of each Redis row.
REDIS_PERSISTENCE = {"redis": "none", "redis-aof": "aof-everysec"}

# The original project's k6 result (redpanda101 README), the number to beat.
TARGET_RPS = 5059.0
TARGET_P95_MS = 5.68


# Partitions of the orders topic in the ingest and capacity steps: one, as
# `just up` creates it for one instance (scripts/stack.sh says why). The
# scale step's topic is written by rawlog with its own count.
INGEST_PARTITIONS = 1

# Capacity: wrk connection counts tried, lowest first; the capacity is the
# highest rate whose p99 stays within CAPACITY_P99_MS.
CAPACITY_CONNECTIONS = [4, 8, 16, 35, 64]
CAPACITY_P99_MS = 10.0
# The bare relay (examples/relay.rs: HTTP → log, nothing else) on the same
# broker, right after oms: the floor under oms' CPU per order on this machine.
RELAY_CONNECTIONS = [35, 64]

# Scale: how many oms instances share the partitions (group mode, Postgres,
# nginx in front), the backlog they drain and the wrk connections they serve.
SCALE_INSTANCES = [1, 2, 3]
SCALE_BACKLOG = 300_000
SCALE_CONNECTIONS = 35
