"""The services under test: tansu, PostgreSQL, Prometheus, oms, each store."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .config import (BROKER_PORT, OMS, OMS_PORT, PG_BIN, PG_PORTS, REDIS_PERSISTENCE, REDIS_PORT, RELAY, ROOT, STATE,
                     TANSU)
from .procs import Proc, http_get, port_open, start, stop, wait_until

def stack(action: str, component: str, **env: str) -> None:
    """scripts/stack.sh for PostgreSQL and Prometheus (initdb, config, pid files)."""
    subprocess.run([str(ROOT / "scripts" / "stack.sh"), action, component],
                   check=True, env={**os.environ, **env})


def start_broker(mode: str) -> Proc:
    home = STATE / f"tansu-{mode}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    if port_open(BROKER_PORT):
        raise RuntimeError(f"port {BROKER_PORT} is taken: is another benchmark running?")
    # scripts/tansu.sh: the one launcher (it also indexes the sqlite log).
    proc = start(f"tansu-{mode}", [str(ROOT / "scripts" / "tansu.sh"), str(BROKER_PORT), mode, str(home)],
                 STATE / "log" / f"tansu-{mode}.log", cwd=home, env={"TANSU_BIN": TANSU})
    wait_until("tansu to listen", lambda: port_open(BROKER_PORT), 30)
    return proc


def pg_env(kind: str) -> dict[str, str]:
    state = STATE / "pg-disk" if kind == "disk" else Path("/dev/shm/oms-bench/pg-tmpfs")
    return {"OMS_STATE": str(state), "OMS_PG_PORT": str(PG_PORTS[kind])}


def pg_url(kind: str, db: str) -> str:
    return f"postgres://oms:oms@127.0.0.1:{PG_PORTS[kind]}/{db}"


def psql(kind: str, sql: str) -> None:
    subprocess.run([str(PG_BIN / "psql"), "-q", "-v", "ON_ERROR_STOP=1", pg_url(kind, "postgres"), "-c", sql],
                   check=True, stdout=subprocess.DEVNULL)


@dataclass
class Store:
    """One store to run oms against: its `--store` flags, its settings, its
    own server process (Redis), and how to clean up."""

    name: str
    args: list[str]
    cleanup: Callable[[], None]
    env: dict[str, str] = field(default_factory=dict)
    server: Optional[Proc] = None


def fresh_redis(name: str, label: str) -> Store:
    """A fresh redis-server per step (scripts/redis.sh), so its peak RSS is
    the step's; the AOF row keeps its files on disk, like Postgres (disk)."""
    if port_open(REDIS_PORT):
        raise RuntimeError(f"port {REDIS_PORT} is taken")
    home = STATE / f"redis-{label}-{uuid.uuid4().hex[:6]}"
    server = start(f"redis-{label}", [str(ROOT / "scripts" / "redis.sh"), str(REDIS_PORT), str(home)],
                   STATE / "log" / f"redis-{label}.log")
    wait_until("Redis to listen", lambda: port_open(REDIS_PORT), 30)

    def cleanup() -> None:
        stop(server)
        shutil.rmtree(home, ignore_errors=True)

    return Store(name, ["--store", f"redis://127.0.0.1:{REDIS_PORT}/0"], cleanup,
                 env={"OMS__STORE__REDIS__PERSISTENCE": REDIS_PERSISTENCE[name]}, server=server)


def fresh_store(name: str, label: str) -> Store:
    if name in REDIS_PERSISTENCE:
        return fresh_redis(name, label)
    if name in ("memory", "redb", "sled", "redb-nomatch"):
        engine = name.split("-")[0]
        path = Path("/dev/shm/oms-bench") / f"{name}-{label}-{uuid.uuid4().hex[:8]}"
        # The same store with the consumer only storing: what matching costs.
        env = {"OMS__CONSUMER__MATCHING": "false"} if name.endswith("-nomatch") else {}
        return Store(name, ["--store", f"{engine}://{path}"],
                     lambda: shutil.rmtree(path, ignore_errors=True), env)
    kind = "tmpfs" if name == "postgres-tmpfs" else "disk"
    db = f"bench_{label}_{uuid.uuid4().hex[:8]}".replace("-", "_")
    psql(kind, f"CREATE DATABASE {db}")
    url = pg_url(kind, db)
    subprocess.run([OMS, "migrate", "--store", url,
                    "--bootstrap", f"127.0.0.1:{BROKER_PORT}"], check=True, stdout=subprocess.DEVNULL)
    return Store(name, ["--store", url],
                 lambda: psql(kind, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))


def start_oms(store: Store, topic: str, label: str, port: int = OMS_PORT,
              env: dict[str, str] | None = None) -> Proc:
    argv = [OMS, "serve", *store.args, "--bootstrap", f"127.0.0.1:{BROKER_PORT}", "--topic", topic,
            "--dlq-topic", f"{topic}.dlq", "--trades-topic", f"{topic}.trades", "--http-addr", f"127.0.0.1:{port}"]
    return start_http("oms", argv, port, STATE / "log" / f"oms-{label}.log",
                      env={"OMS__TELEMETRY__LOG_FILTER": "warn", "OMS__TELEMETRY__LOG_FORMAT": "json",
                           **store.env, **(env or {})})


def start_relay(topic: str) -> Proc:
    """The bare HTTP → log relay (examples/relay.rs) on OMS_PORT."""
    argv = [RELAY, "serve", "--bootstrap", f"127.0.0.1:{BROKER_PORT}", "--topic", topic,
            "--http-addr", f"127.0.0.1:{OMS_PORT}"]
    return start_http("relay", argv, OMS_PORT, STATE / "log" / f"relay-{topic}.log")


def start_http(name: str, argv: list[str], port: int, log: Path, **kw) -> Proc:
    """Starts a server on `port` and waits until its /healthz answers 200."""
    if port_open(port):
        raise RuntimeError(f"port {port} is taken")
    proc = start(name, argv, log, **kw)

    def answers() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{name} exited (log: {proc.log})")
        return http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200

    wait_until(f"{name} to answer /healthz", answers, 60)
    return proc


METRIC = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$')


def start_lb(upstreams: list[int], label: str) -> Proc:
    """nginx on OMS_PORT in front of the instances (scripts/nginx.sh, the
    launcher `just up postgres N` uses)."""
    if port_open(OMS_PORT):
        raise RuntimeError(f"port {OMS_PORT} is taken")
    proc = start("nginx", [str(ROOT / "scripts" / "nginx.sh"), str(OMS_PORT), str(STATE / "nginx"),
                           *map(str, upstreams)], STATE / "log" / f"nginx-{label}.log")
    wait_until("nginx to listen", lambda: port_open(OMS_PORT), 30)
    return proc


def postgres_pid(kind: str) -> int:
    """The postmaster of the benchmark's `kind` cluster (its backends are
    its children: procs.tree_cpu_seconds counts them)."""
    data = Path(pg_env(kind)["OMS_STATE"]) / "postgres" / "postmaster.pid"
    return int(data.read_text().splitlines()[0])


def scrape(port: int = OMS_PORT) -> dict[str, float]:
    """oms' /metrics, counters summed over their labels."""
    status, text = http_get(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        return {}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        m = METRIC.match(line)
        if m and m.group(3) != "NaN":
            totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(3))
    return totals


def stored(metrics: dict[str, float]) -> float:
    return metrics.get("orders_stored_total", 0.0) + metrics.get("orders_duplicate_total", 0.0)


