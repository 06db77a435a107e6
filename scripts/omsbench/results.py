"""The benchmark's results as types: what each step measured, as written to
bench/report.json and read back by the report (`just bench --report-only`)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class Profile:
    """A k6 load shape: ramp to `vus`, then hold them for `steady`."""
    vus: int
    ramp: str
    steady: str


@dataclass
class CpuCores:
    """CPU per process over a step, in cores (1.00 = one core busy)."""
    oms: float
    tansu: float
    k6: float = 0.0


@dataclass
class FeedWatch:
    """A GET /stream subscriber during a load (bench/feed_watch.py)."""
    seconds: float
    events: int
    events_per_second: float
    probes: int
    probe_trades: int
    p50_ms: Optional[float]
    p99_ms: Optional[float]
    max_ms: Optional[float]
    probe_failures: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    dropped: Optional[str] = None


@dataclass
class LoadRun:
    """One k6 run (ingest, seed profile or the /healthz ceiling)."""
    requests: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    failed_pct: float
    checks_pct: float
    seconds: float = 0.0
    cpu_cores: CpuCores = field(default_factory=lambda: CpuCores(0.0, 0.0))
    oms_rss_mib: float = 0.0
    store: Optional[str] = None
    # Peak RSS of the store's own server process (Redis), when it has one.
    store_rss_mib: Optional[float] = None
    # Only for POST /orders runs: acknowledged − stored while loaded.
    lag_max: Optional[float] = None
    # A live-feed subscriber attached during the run (the seed profile).
    feed: Optional[FeedWatch] = None
    lag_mean: Optional[float] = None
    catch_up_s: Optional[float] = None
    stored: Optional[float] = None

    def cpu_us_per_order(self, process: str) -> float:
        return getattr(self.cpu_cores, process) / max(self.rps, 1e-9) * 1e6


@dataclass
class RawProduce:
    produced: int
    seconds: float
    per_second: float
    on_log: int


@dataclass
class RawConsume:
    records: int
    seconds: float
    per_second: float


@dataclass
class Drain:
    """`oms serve` draining the backlog into an empty store."""
    store: str
    orders: int
    seconds: float
    per_second: float
    oms_cpu_cores: float
    oms_rss_mib: float
    store_rss_mib: Optional[float] = None
    # Restarted on the full store: until /readyz is 200, until no lag is reported.
    ready_s: Optional[float] = None
    restart_s: Optional[float] = None


@dataclass
class CpuPerOrder:
    """CPU microseconds per accepted order, per process."""
    oms: float
    tansu: float


@dataclass
class CapacityStep:
    """One wrk run at a number of connections."""
    connections: int
    requests: int
    rejected: int
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_us_per_order: CpuPerOrder


@dataclass
class ReadAfterWrite:
    """202 → 200 of its Location (bench/read_after_write.py)."""
    samples: int
    failures: int
    p50_ms: Optional[float]
    p99_ms: Optional[float]
    rps: Optional[float] = None
    # Samples answered 503 (consumer behind) at first and read after Retry-After.
    retried: int = 0


@dataclass
class Capacity:
    steps: list[CapacityStep]
    best: Optional[CapacityStep]
    ryw_idle: ReadAfterWrite
    ryw_load: ReadAfterWrite
    oms_rss_mib: float
    # The bare relay at RELAY_CONNECTIONS (cpu_us_per_order.oms is the relay's).
    relay: list[CapacityStep] = field(default_factory=list)


@dataclass
class ScaleCpu:
    """CPU microseconds per order of each process kind over a scale step
    (oms: all instances together; postgres: the whole cluster)."""
    oms: float
    tansu: float
    postgres: float
    nginx: float = 0.0


@dataclass
class ScaleRun:
    """N oms instances in group mode on one Postgres (disk), behind nginx:
    draining a backlog from the log, then taking wrk load through nginx."""
    instances: int
    join_s: float
    drain_orders: int
    drain_seconds: float
    drain_per_second: float
    drain_cpu_us: ScaleCpu
    ingest_connections: int
    ingest_requests: int
    ingest_rejected: int
    ingest_rps: float
    ingest_p99_ms: float
    ingest_cpu_us: ScaleCpu
    stored: int


@dataclass
class ModeResult:
    """Everything measured on one broker mode (tansu sqlite or memory)."""
    raw_produce: RawProduce
    raw_consume: RawConsume
    drain: list[Drain]
    ceiling: LoadRun
    ingest: list[LoadRun]
    capacity: Optional[Capacity] = None
    seed: Optional[LoadRun] = None
    scale: list[ScaleRun] = field(default_factory=list)


@dataclass
class Machine:
    cores: int
    cpu: str
    memory_gib: float
    kernel: str
    os: str
    oms: str
    tansu: str
    k6: str
    postgres: str


@dataclass
class KeyCheckBench:
    """`cargo bench --bench auth`: the API key check of one request, in process."""
    keys: int
    checks: int
    ns_per_check_no_limits: float
    ns_per_check_rate_and_in_flight: float


@dataclass
class MatchingBench:
    """`cargo bench --bench matching`: one symbol's book in process."""
    orders: int
    seconds: float
    orders_per_second: float
    ns_per_order: float
    trades: int
    resting_before: int
    resting_after: int
    # Heap the book holds per resting order (reports before it was measured lack it).
    book_bytes_per_order: Optional[float] = None
    # The order types of the stream (`limit` or `mixed`) and what ended without
    # resting (reports before order types lack them).
    terms: str = "limit"
    expired: int = 0
    rejected: int = 0


@dataclass
class Results:
    date: str
    machine: Machine
    command: str
    orders: int
    profile: Profile
    modes: dict[str, ModeResult]
    analysis: str = ""
    dashboard: bool = False
    window: Optional[list[float]] = None
    matching: Optional[MatchingBench] = None
    matching_terms: Optional[MatchingBench] = None
    key_check: Optional[KeyCheckBench] = None


def to_json(value: Any) -> Any:
    """A result as plain JSON values."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


T = typing.TypeVar("T")


def from_json(cls: type[T], data: Any) -> T:
    """Builds `cls` from JSON values, recursively; keys it does not know
    (what older or newer runs wrote) are ignored."""
    return _build(cls, data)


def _build(tp: Any, data: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _build(inner[0], data)
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_build(item, x) for x in data]
    if origin is dict:
        _, value = typing.get_args(tp)
        return {k: _build(value, v) for k, v in data.items()}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        known = {f.name for f in dataclasses.fields(tp)}
        return tp(**{k: _build(hints[k], v) for k, v in data.items() if k in known})
    if tp is float and isinstance(data, int):
        return float(data)
    return data
