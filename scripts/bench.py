#!/usr/bin/env python3
"""The store comparison benchmark behind `just bench` (run it through scripts/bench.sh,
which installs and builds what it needs and sets the paths used here).

For each broker mode (tansu on sqlite = durable, as `just up` runs it; tansu in
memory) it measures, in one run:
  1. the raw broker: rdkafka producing N orders straight to the log with oms'
     producer settings, then consuming them with no store;
  2. the consumer alone: `oms serve` draining that backlog into each empty store
     (orders/s, CPU and peak RSS of oms);
  3. the HTTP ceiling: k6 against GET /healthz;
  4. the ingest path: k6 POST /orders against oms with each store, with the
     consumer's lag sampled throughout and the catch-up time after the load.
It writes bench/REPORT.md, bench/report.json and the charts (or, with --smoke,
all of that to a scratch folder with tiny sizes, and checks it is complete).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("OMS_STATE", ROOT / ".oms" / "bench"))
OMS = os.environ.get("OMS_BIN", str(ROOT / "target" / "release" / "oms"))
RAWLOG = os.environ.get("OMS_RAWLOG_BIN", str(ROOT / "target" / "release" / "examples" / "rawlog"))
TANSU = os.environ.get("OMS_TANSU_BIN", str(Path.home() / ".cache/oms/tools/bin/tansu"))
PG_BIN = Path(os.environ.get("OMS_PG_BIN", "/usr/lib/postgresql/15/bin"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

BROKER_PORT = 29092
PG_PORTS = {"disk": 25432, "tmpfs": 25433}
OMS_PORT = 28080
PROM_PORT = 29090

MODES = {"sqlite": "sqlite://tansu.db", "memory": "memory://tansu/"}
STORES = ["redb", "sled", "postgres", "postgres-tmpfs"]
STORE_TITLES = {
    "redb": "redb (tmpfs)",
    "sled": "sled (tmpfs)",
    "postgres": "Postgres (disk)",
    "postgres-tmpfs": "Postgres (tmpfs)",
}

# The original project's k6 result (redpanda101 README), the number to beat.
TARGET_RPS = 5059.0
TARGET_P95_MS = 5.68


def say(msg: str) -> None:
    print(f"\033[1;34m==>\033[0m {msg}", file=sys.stderr, flush=True)


def step(msg: str) -> None:
    print(f"\033[1;32m  ->\033[0m {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def rss_peak_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def wait_until(what: str, probe, seconds: float, every: float = 0.1):
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(every)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Proc:
    """A child process the benchmark started; stopped by pid."""

    def __init__(self, name: str, argv: list[str], log: Path, cwd: Path | None = None, env=None):
        self.name = name
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.handle = open(log, "ab")
        self.p = subprocess.Popen(
            argv, cwd=cwd, stdout=self.handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, grace: float = 20.0) -> None:
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.handle.close()


STARTED: list[Proc] = []


def start(name: str, argv: list[str], log: Path, **kw) -> Proc:
    proc = Proc(name, argv, log, **kw)
    STARTED.append(proc)
    return proc


def stop(proc: Proc) -> None:
    proc.stop()
    if proc in STARTED:
        STARTED.remove(proc)


def stack(action: str, component: str, **env: str) -> None:
    """scripts/stack.sh for PostgreSQL and Prometheus (initdb, config, pid files)."""
    subprocess.run([str(ROOT / "scripts" / "stack.sh"), action, component],
                   check=True, env={**os.environ, **env})


# ---------------------------------------------------------------- services


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
    """One store to run oms against: its `--store` flags and how to clean up."""

    name: str
    args: list[str]
    cleanup: callable


def fresh_store(name: str, label: str) -> Store:
    if name in ("redb", "sled"):
        path = Path("/dev/shm/oms-bench") / f"{name}-{label}-{uuid.uuid4().hex[:8]}"
        return Store(name, ["--store", f"{name}://{path}"],
                     lambda: shutil.rmtree(path, ignore_errors=True))
    kind = "tmpfs" if name == "postgres-tmpfs" else "disk"
    db = f"bench_{label}_{uuid.uuid4().hex[:8]}".replace("-", "_")
    psql(kind, f"CREATE DATABASE {db}")
    url = pg_url(kind, db)
    subprocess.run([OMS, "migrate", "--store", url,
                    "--bootstrap", f"127.0.0.1:{BROKER_PORT}"], check=True, stdout=subprocess.DEVNULL)
    return Store(name, ["--store", url],
                 lambda: psql(kind, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))


def start_oms(store: Store, topic: str, label: str) -> Proc:
    if port_open(OMS_PORT):
        raise RuntimeError(f"port {OMS_PORT} is taken")
    argv = [OMS, "serve", *store.args, "--bootstrap", f"127.0.0.1:{BROKER_PORT}", "--topic", topic,
            "--dlq-topic", f"{topic}.dlq", "--http-addr", f"127.0.0.1:{OMS_PORT}"]
    proc = start("oms", argv, STATE / "log" / f"oms-{label}.log",
                 env={"OMS__TELEMETRY__LOG_FILTER": "warn", "OMS__TELEMETRY__LOG_FORMAT": "json"})

    def answers() -> bool:
        if not proc.alive():
            raise RuntimeError(f"oms exited (log: {proc.log})")
        return http_get(f"http://127.0.0.1:{OMS_PORT}/healthz")[0] == 200

    wait_until("oms to answer /healthz", answers, 60)
    return proc


METRIC = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$')


def scrape() -> dict[str, float]:
    """oms' /metrics, counters summed over their labels."""
    status, text = http_get(f"http://127.0.0.1:{OMS_PORT}/metrics")
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


# ---------------------------------------------------------------- steps


def rawlog(*args: str) -> dict:
    out = subprocess.run([RAWLOG, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"rawlog {' '.join(args)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def raw_broker(topic: str, orders: int) -> tuple[dict, dict]:
    bootstrap = f"127.0.0.1:{BROKER_PORT}"
    step(f"raw broker: producing {orders:,} orders with rdkafka (oms' producer settings)")
    produced = rawlog("produce", "--bootstrap", bootstrap, "--topic", topic, "--count", str(orders))
    step(f"  {produced['per_second']:,.0f} orders/s")
    step("raw broker: consuming them with no store")
    # Read until every acknowledged record is in (tansu 0.6's memory engine
    # reports watermarks below what it holds, so they cannot say when).
    consumed = rawlog("consume", "--bootstrap", bootstrap, "--topic", topic, "--expect", str(produced["produced"]))
    step(f"  {consumed['per_second']:,.0f} orders/s")
    return produced, consumed


def drain(store_name: str, topic: str, backlog: int, mode: str) -> dict:
    step(f"consumer alone: draining {backlog:,} orders into an empty {STORE_TITLES[store_name]}")
    store = fresh_store(store_name, f"drain_{mode}")
    try:
        oms = start_oms(store, topic, f"drain-{store_name}-{mode}")
        # From the moment oms answers (its consumer is starting), like the raw
        # consumer's clock, which starts once it is assigned.
        started = time.monotonic()
        wait_until("the drain", lambda: stored(scrape()) >= backlog, 1800, every=0.05)
        seconds = time.monotonic() - started
        cpu, rss = cpu_seconds(oms.pid), rss_peak_mib(oms.pid)
        stop(oms)
    finally:
        store.cleanup()
    result = {"store": store_name, "orders": backlog, "seconds": seconds, "per_second": backlog / seconds,
              "oms_cpu_cores": cpu / seconds, "oms_rss_mib": rss}
    step(f"  {result['per_second']:,.0f} orders/s, oms {result['oms_cpu_cores']:.2f} cores, "
         f"peak RSS {rss:.0f} MiB")
    return result


@dataclass
class Profile:
    vus: int
    ramp: str
    steady: str


def k6(script: str, profile: Profile, label: str) -> tuple[Path, Proc]:
    summary = STATE / "k6" / f"{label}.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.unlink(missing_ok=True)
    env = {"BASE_URL": f"http://127.0.0.1:{OMS_PORT}", "RAMP_TARGET": str(profile.vus),
           "STEADY_TARGET": str(profile.vus), "RAMP_DURATION": profile.ramp,
           "STEADY_DURATION": profile.steady, "SLEEP": "0"}
    proc = start("k6", ["k6", "run", "--quiet", "--no-color", "--summary-export", str(summary),
                        "--summary-trend-stats", "avg,min,med,max,p(90),p(95),p(99)",
                        str(ROOT / "k6" / f"{script}.js")], STATE / "log" / f"k6-{label}.log", env=env)
    return summary, proc


def k6_result(summary: Path) -> dict:
    m = json.loads(summary.read_text())["metrics"]
    dur = m["http_req_duration"]
    return {"requests": int(m["http_reqs"]["count"]), "rps": m["http_reqs"]["rate"],
            "p50_ms": dur["med"], "p95_ms": dur["p(95)"], "p99_ms": dur["p(99)"],
            "failed_pct": 100.0 * m["http_req_failed"]["value"],
            "checks_pct": 100.0 * m["checks"]["value"] if "checks" in m else 100.0}


def load(script: str, profile: Profile, label: str, broker: Proc, oms: Proc, track_lag: bool) -> dict:
    """One k6 run, sampling oms' lag (produced − stored, from its own counters)
    and the CPU each process used."""
    base = {p.name: cpu_seconds(p.pid) for p in (broker, oms)}
    summary, k6proc = k6(script, profile, label)
    started = time.monotonic()
    lag_max, lag_samples = 0.0, []
    while k6proc.alive():
        if track_lag:
            m = scrape()
            if m:
                lag = max(0.0, m.get("messages_produced_total", 0.0) - stored(m))
                lag_max = max(lag_max, lag)
                lag_samples.append(lag)
        time.sleep(0.5)
    seconds = time.monotonic() - started
    k6_rc = k6proc.p.wait()
    # k6 is reaped now: its CPU is what our children's rusage grew by.
    k6_cpu = reaped_children_cpu()
    stop(k6proc)
    if k6_rc not in (0, 99):  # 99: thresholds crossed, which the report shows
        raise RuntimeError(f"k6 failed with exit code {k6_rc} (log: {k6proc.log})")
    result = k6_result(summary)
    result["seconds"] = seconds
    result["cpu_cores"] = {"oms": (cpu_seconds(oms.pid) - base["oms"]) / seconds,
                           "tansu": (cpu_seconds(broker.pid) - base[broker.name]) / seconds,
                           "k6": k6_cpu / seconds}
    result["oms_rss_mib"] = rss_peak_mib(oms.pid)
    if track_lag:
        m = scrape()
        produced = m.get("messages_produced_total", 0.0)
        caught_up_at = time.monotonic()
        wait_until("the consumer to catch up", lambda: stored(scrape()) >= produced, 600, every=0.05)
        result["lag_max"] = lag_max
        result["lag_mean"] = sum(lag_samples) / len(lag_samples) if lag_samples else 0.0
        result["catch_up_s"] = time.monotonic() - caught_up_at
        result["stored"] = stored(scrape())
    return result


_CHILD_CPU = [0.0]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reaped_children_cpu() -> float:
    """CPU of the children reaped since the last call or reset (here: k6)."""
    total = children_cpu()
    used, _CHILD_CPU[0] = total - _CHILD_CPU[0], total
    return used


def reset_child_cpu() -> None:
    _CHILD_CPU[0] = children_cpu()


def k6_against_fresh_oms(script: str, store_name: str, profile: Profile, mode: str, label: str) -> dict:
    """A fresh broker (an empty log: tansu's sqlite engine slows down as its
    file grows, so no run inherits another's records), an empty store, a
    fresh oms, one k6 run against it."""
    broker = start_broker(mode)
    topic = f"{label}-{uuid.uuid4().hex[:6]}"
    try:
        subprocess.run([OMS, "migrate", "--bootstrap", f"127.0.0.1:{BROKER_PORT}", "--topic", topic,
                        "--dlq-topic", f"{topic}.dlq"], check=True, stdout=subprocess.DEVNULL)
        store = fresh_store(store_name, f"{label}_{mode}")
        try:
            oms = start_oms(store, topic, f"{label}-{mode}")
            reset_child_cpu()
            result = load(script, profile, f"{label}-{mode}", broker, oms, track_lag=script == "orders")
            stop(oms)
        finally:
            store.cleanup()
    finally:
        stop(broker)
    return result


def ingest(store_name: str, profile: Profile, mode: str) -> dict:
    step(f"ingest: k6 POST /orders, {profile.vus} VUs, {profile.ramp} ramp + {profile.steady}, "
         f"{STORE_TITLES[store_name]}")
    result = k6_against_fresh_oms("orders", store_name, profile, mode, f"ingest-{store_name}")
    result["store"] = store_name
    step(f"  {result['rps']:,.0f} req/s, p95 {result['p95_ms']:.2f} ms, {result['failed_pct']:.2f} % failed, "
         f"lag max {result['lag_max']:,.0f}, caught up {result['catch_up_s']:.1f} s after the load")
    return result


# Capacity: wrk connection counts tried, lowest first; the capacity is the
# highest rate whose p99 stays within CAPACITY_P99_MS.
CAPACITY_CONNECTIONS = [4, 8, 16, 35, 64]
CAPACITY_P99_MS = 10.0


def wrk_run(conns: int, seconds: int) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", str(ROOT / "bench" / "wrk" / "orders.lua"),
                          f"http://127.0.0.1:{OMS_PORT}"], check=True, capture_output=True, text=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("wrk-json "))
    return json.loads(line.removeprefix("wrk-json "))


def capacity(mode: str, smoke: bool) -> dict:
    """The cheap load generator (wrk, one thread) against a fresh broker and
    oms on `just up` defaults (redb), at rising connection counts: req/s,
    latency and each process' CPU per accepted order; then the delay from a
    202 to a successful GET of its Location, idle and under load."""
    step("capacity: wrk POST /orders at " + ", ".join(map(str, CAPACITY_CONNECTIONS)) + " connections, redb")
    seconds = 2 if smoke else 15
    broker = start_broker(mode)
    topic = f"capacity-{uuid.uuid4().hex[:6]}"
    steps = []
    try:
        subprocess.run([OMS, "migrate", "--bootstrap", f"127.0.0.1:{BROKER_PORT}", "--topic", topic,
                        "--dlq-topic", f"{topic}.dlq"], check=True, stdout=subprocess.DEVNULL)
        store = fresh_store("redb", f"capacity_{mode}")
        try:
            oms = start_oms(store, topic, f"capacity-{mode}")
            wrk_run(8, 1 if smoke else 3)  # warm-up
            for conns in CAPACITY_CONNECTIONS:
                before = {"oms": cpu_seconds(oms.pid), "tansu": cpu_seconds(broker.pid)}
                r = wrk_run(conns, seconds)
                accepted = max(1, r["requests"] - r["rejected"])
                r["connections"] = conns
                r["rps"] = r["requests"] / r["seconds"]
                r["cpu_us_per_order"] = {"oms": (cpu_seconds(oms.pid) - before["oms"]) / accepted * 1e6,
                                         "tansu": (cpu_seconds(broker.pid) - before["tansu"]) / accepted * 1e6}
                steps.append(r)
                step(f"  {conns} connections: {r['rps']:,.0f} req/s, p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms, "
                     f"{r['rejected']} not 202; CPU per order oms {r['cpu_us_per_order']['oms']:.0f} µs, "
                     f"tansu {r['cpu_us_per_order']['tansu']:.0f} µs")
            samples = "20" if smoke else "300"
            ryw = ROOT / "bench" / "read_after_write.py"
            base = f"http://127.0.0.1:{OMS_PORT}"
            idle = json.loads(subprocess.run([sys.executable, str(ryw), base, samples], capture_output=True,
                                             text=True).stdout)
            loaded = subprocess.Popen([sys.executable, str(ryw), base, samples], stdout=subprocess.PIPE, text=True)
            under = wrk_run(16, 2 if smoke else 10)
            busy = json.loads(loaded.communicate()[0])
            busy["rps"] = under["requests"] / under["seconds"]
            step(f"  read after 202: idle p50 {idle['p50_ms']} p99 {idle['p99_ms']} ms; at {busy['rps']:,.0f} req/s "
                 f"p50 {busy['p50_ms']} p99 {busy['p99_ms']} ms; not 200: {idle['failures'] + busy['failures']}")
            rss = rss_peak_mib(oms.pid)
            stop(oms)
        finally:
            store.cleanup()
    finally:
        stop(broker)
    within = [x for x in steps if x["p99_ms"] <= CAPACITY_P99_MS and x["rejected"] == 0]
    best = max(within, key=lambda x: x["rps"]) if within else None
    return {"steps": steps, "best": best, "ryw_idle": idle, "ryw_load": busy, "oms_rss_mib": rss}


def seed_profile(mode: str, smoke: bool) -> dict:
    """The original's own k6 profile: one stage ramping 0 → 35 VUs over 2
    minutes, on `just up` defaults (redb)."""
    profile = Profile(vus=35, ramp="3s" if smoke else "2m", steady="1s")
    step(f"seed profile: k6 POST /orders ramping 0 → 35 VUs over {profile.ramp}, redb")
    result = k6_against_fresh_oms("orders", "redb", profile, mode, "seed")
    result["store"] = "redb"
    step(f"  {result['rps']:,.0f} req/s, p95 {result['p95_ms']:.2f} ms, {result['failed_pct']:.2f} % failed")
    return result


def ceiling(profile: Profile, mode: str) -> dict:
    step(f"HTTP ceiling: k6 GET /healthz, {profile.vus} VUs")
    result = k6_against_fresh_oms("healthz", "redb", profile, mode, "ceiling")
    step(f"  {result['rps']:,.0f} req/s, p95 {result['p95_ms']:.2f} ms")
    return result


# ---------------------------------------------------------------- report


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = next((int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                if l.startswith("MemTotal")), 0)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem / 1024 / 1024, 1),
            "kernel": platform.release(), "os": platform.freedesktop_os_release().get("PRETTY_NAME", ""),
            "oms": sha, "tansu": os.environ.get("OMS_TANSU_VERSION", "?"),
            "k6": os.environ.get("OMS_K6_VERSION", "?"), "postgres": os.environ.get("OMS_PG_MAJOR", "?")}


def fmt(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def report(results: dict, out: Path, command: str) -> str:
    m = results["machine"]
    lines = [
        "# oms benchmark: in-memory stores vs. a database behind a Kafka-API log",
        "",
        f"- Date: {results['date']}",
        f"- Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, {m['os']}, kernel {m['kernel']}; "
        "broker, PostgreSQL, oms and k6 all on this one machine (shared, noisy: compare the ratios "
        "within this run, not absolute numbers across runs)",
        f"- Versions: oms {m['oms']} (release build), tansu {m['tansu']}, PostgreSQL {m['postgres']}, "
        f"k6 {m['k6']}",
        f"- Command: `{command}`",
        f"- Load profile: {results['profile']['vus']} VUs, {results['profile']['ramp']} ramp then "
        f"{results['profile']['steady']} steady, no sleep, a unique `client_order_id` per order "
        "(the original redpanda101 profile: 35 VUs, 2 minutes)",
        f"- Backlog for the raw-broker and consumer-alone steps: {results['orders']:,} orders",
        "",
        "How to read it: **ingest** is the whole path a user sees — HTTP, validation, the produce "
        "with `acks=all`, the 202 — while the consumer stores the same orders in the background; "
        "*lag* is orders acknowledged but not yet stored (sampled every 0.5 s), *catch-up* how long "
        "the consumer needed after the load stopped. **Consumer alone** drains a backlog into an "
        "empty store (oms restarted on a pre-filled topic). **Raw broker** is rdkafka with oms' "
        "settings and nothing else, the ceiling both paths are compared to. *CPU* is in cores "
        "(1.00 = one core busy) over the step.",
        "",
    ]
    for mode, r in results["modes"].items():
        title = "durable: tansu on sqlite, as `just up` runs it" if mode == "sqlite" else "tansu in memory"
        raw_p, raw_c = r["raw_produce"], r["raw_consume"]
        lines += [f"## Broker {mode} ({title})", "",
                  "### Ingest: k6 POST /orders", "",
                  "| path | req/s | p50 ms | p95 ms | p99 ms | failed % | lag max | lag mean | catch-up s "
                  "| oms RSS MiB | CPU oms / tansu / k6 | CPU µs per order oms / tansu |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        rows = ([("**seed profile: 0 → 35 VUs over 2 min**, POST /orders → redb (`just up` defaults)", r["seed"])]
                if "seed" in r else []) + [("GET /healthz (HTTP ceiling)", r["ceiling"])] + \
               [(f"POST /orders → {STORE_TITLES[i['store']]}", i) for i in r["ingest"]]
        for name, x in rows:
            c = x["cpu_cores"]
            lag = (fmt(x["lag_max"]), fmt(x["lag_mean"]), fmt(x["catch_up_s"], 1)) if "lag_max" in x else ("–",) * 3
            lines.append(f"| {name} | {fmt(x['rps'])} | {x['p50_ms']:.2f} | {x['p95_ms']:.2f} | "
                         f"{x['p99_ms']:.2f} | {x['failed_pct']:.2f} | {lag[0]} | {lag[1]} | {lag[2]} | "
                         f"{x['oms_rss_mib']:.0f} | {c['oms']:.2f} / {c['tansu']:.2f} / {c['k6']:.2f} | "
                         f"{c['oms'] / max(x['rps'], 1e-9) * 1e6:.0f} / {c['tansu'] / max(x['rps'], 1e-9) * 1e6:.0f} |")
        cap = r.get("capacity")
        if cap:
            lines += ["", "### Capacity: wrk POST /orders (one thread, rising connections), redb", "",
                      "| connections | req/s | p50 ms | p95 ms | p99 ms | not 202 | CPU µs per order oms / tansu |",
                      "|---:|---:|---:|---:|---:|---:|---|"]
            for x in cap["steps"]:
                u = x["cpu_us_per_order"]
                lines.append(f"| {x['connections']} | {fmt(x['rps'])} | {x['p50_ms']:.2f} | {x['p95_ms']:.2f} | "
                             f"{x['p99_ms']:.2f} | {x['rejected']} | {u['oms']:.0f} / {u['tansu']:.0f} |")
            best = cap["best"]
            lines += ["", (f"Capacity at p99 ≤ {CAPACITY_P99_MS:.0f} ms: **{fmt(best['rps'])} req/s** "
                           f"({best['connections']} connections)." if best else
                           f"No step kept p99 ≤ {CAPACITY_P99_MS:.0f} ms."),
                      "", f"Read-your-writes (202 → 200 of its `Location`, `bench/read_after_write.py`): idle "
                      f"p50 {cap['ryw_idle']['p50_ms']} / p99 {cap['ryw_idle']['p99_ms']} ms; at "
                      f"{fmt(cap['ryw_load']['rps'])} req/s p50 {cap['ryw_load']['p50_ms']} / p99 "
                      f"{cap['ryw_load']['p99_ms']} ms; answers other than 200: "
                      f"{cap['ryw_idle']['failures'] + cap['ryw_load']['failures']}. oms peak RSS {cap['oms_rss_mib']:.0f} MiB."]
        lines += ["", f"Raw broker, same settings, no HTTP: **{fmt(raw_p['per_second'])} orders/s produced** "
                  f"(asynchronously, {raw_p['seconds']:.1f} s for {raw_p['produced']:,}). Best ingest "
                  f"rate = {max(i['rps'] for i in r['ingest']) / raw_p['per_second']:.2f} × that.", "",
                  "### Consumer alone: draining the backlog into an empty store", "",
                  "| store | orders | seconds | orders/s | vs. raw consume | oms CPU | oms RSS MiB |",
                  "|---|---:|---:|---:|---:|---:|---:|",
                  f"| raw consume, no store | {raw_c['records']:,} | {raw_c['seconds']:.1f} | "
                  f"{fmt(raw_c['per_second'])} | 1.00 | – | – |"]
        for d in r["drain"]:
            lines.append(f"| {STORE_TITLES[d['store']]} | {d['orders']:,} | {d['seconds']:.1f} | "
                         f"{fmt(d['per_second'])} | {d['per_second'] / raw_c['per_second']:.2f} | "
                         f"{d['oms_cpu_cores']:.2f} | {d['oms_rss_mib']:.0f} |")
        if raw_p["on_log"] != raw_p["produced"]:
            lines += ["", f"Note: tansu acknowledged {raw_p['produced']:,} records, served all of them "
                      f"({raw_c['records']:,} read), but its watermarks report {raw_p['on_log']:,} "
                      "(a tansu 0.6 memory-engine quirk): every step here counts acknowledged and stored "
                      "orders, never watermarks."]
        lines += ["", "### Targets", ""] + [f"- {t}" for t in targets(r)] + [""]
    lines += ["## Charts", "", "![throughput](throughput.png)", "", "![latency](latency.png)", "",
              "![drain](drain.png)", ""]
    if results.get("dashboard"):
        lines += ["The Grafana dashboard's panels over this run, rendered from the benchmark's own "
                  "Prometheus (scraping oms every second):", "", "![dashboard](dashboard.png)", ""]
    if results.get("analysis"):
        lines += ["## Where the time goes", "", results["analysis"], ""]
    text = "\n".join(lines)
    (out / "REPORT.md").write_text(text)
    return text


def targets(r: dict) -> list[str]:
    ok = lambda b: "met" if b else "**missed**"
    best = max(r["ingest"], key=lambda i: i["rps"])
    drains = {d["store"]: d["per_second"] for d in r["drain"]}
    raw = r["raw_consume"]["per_second"]
    out = [f"{TARGET_RPS:,.0f} req/s with p95 ≤ {TARGET_P95_MS} ms and 0 % failed (best store, "
           f"{STORE_TITLES[best['store']]}: {best['rps']:,.0f} req/s, p95 {best['p95_ms']:.2f} ms, "
           f"{best['failed_pct']:.2f} %): "
           + ok(best["rps"] >= TARGET_RPS and best["p95_ms"] <= TARGET_P95_MS and best["failed_pct"] == 0)]
    for i in r["ingest"]:
        bounded = i["catch_up_s"] < 10
        out.append(f"consumer keeps up under load, {STORE_TITLES[i['store']]}: lag max {i['lag_max']:,.0f}, "
                   f"caught up {i['catch_up_s']:.1f} s after the load: {ok(bounded)}")
    redb = r.get("seed") or next((i for i in r["ingest"] if i["store"] == "redb"), None)
    if redb:
        out.append(f"`just up` defaults (redb): ≥ 4,500 req/s with p95 ≤ 8 ms and 0 failed ({redb['rps']:,.0f} "
                   f"req/s, p95 {redb['p95_ms']:.2f} ms, {redb['failed_pct']:.2f} %): "
                   + ok(redb["rps"] >= 4500 and redb["p95_ms"] <= 8 and redb["failed_pct"] == 0))
    cap = r.get("capacity")
    if cap:
        best = cap["best"]
        out.append(f"capacity ≥ 15,000 req/s at p99 ≤ {CAPACITY_P99_MS:.0f} ms "
                   f"({fmt(best['rps']) if best else 'none within the p99'}): "
                   + ok(bool(best) and best["rps"] >= 15_000))
        top = max(cap["steps"], key=lambda x: x["rps"])
        u = top["cpu_us_per_order"]
        out.append(f"CPU per order at capacity ≤ 40 µs oms and ≤ 60 µs broker ({u['oms']:.0f} / {u['tansu']:.0f} µs "
                   f"at {fmt(top['rps'])} req/s): " + ok(u["oms"] <= 40 and u["tansu"] <= 60))
        i, b = cap["ryw_idle"], cap["ryw_load"]
        out.append(f"read-your-writes: never anything but 200, p99 ≤ 20 ms idle and ≤ 50 ms under load "
                   f"({i['p99_ms']} / {b['p99_ms']} ms, {i['failures'] + b['failures']} not 200): "
                   + ok(i["failures"] + b["failures"] == 0 and (i["p99_ms"] or 1e9) <= 20
                        and (b["p99_ms"] or 1e9) <= 50))
    if "redb" in drains:
        out.append(f"redb drains at ≥ 90 % of the raw consume rate: {drains['redb'] / raw:.1%}: "
                   + ok(drains["redb"] >= 0.9 * raw))
        if "sled" in drains:
            out.append(f"sled drains at ≥ 70 % of the raw consume rate: {drains['sled'] / raw:.1%}: "
                       + ok(drains["sled"] >= 0.7 * raw))
        for pg in ("postgres", "postgres-tmpfs"):
            if pg in drains:
                out.append(f"{STORE_TITLES[pg]} drains at ≥ 60 % of redb: {drains[pg] / drains['redb']:.1%}: "
                           + ok(drains[pg] >= 0.6 * drains["redb"]))
    return out


def save(fig, ax, path: Path) -> None:
    import matplotlib.pyplot as plt

    if ax is not None:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def charts(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results["modes"])
    stores = [i["store"] for i in results["modes"][modes[0]]["ingest"]]
    labels = [STORE_TITLES[s] for s in stores]
    width = 0.8 / len(modes)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for k, mode in enumerate(modes):
        r = results["modes"][mode]
        xs = [j + k * width for j in range(len(stores))]
        bars = ax.bar(xs, [i["rps"] for i in r["ingest"]], width, label=f"POST /orders, broker {mode}")
        ax.bar_label(bars, fmt="{:,.0f}", fontsize=8)
        ax.axhline(r["ceiling"]["rps"], linestyle=":", color=bars.patches[0].get_facecolor(),
                   label=f"GET /healthz ceiling, broker {mode}")
    ax.axhline(TARGET_RPS, color="red", linestyle="--", label="redpanda101 (5,059 req/s)")
    ax.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(stores))], labels)
    ax.set_ylabel("requests/s (k6, 0 % failed required)")
    ax.set_title(f"Ingest throughput by store ({results['profile']['vus']} VUs, all co-located)")
    save(fig, ax, out / "throughput.png")

    fig, axes = plt.subplots(1, len(modes), figsize=(9, 4.5), sharey=False, squeeze=False)
    for ax, mode in zip(axes[0], modes):
        r = results["modes"][mode]
        for k, (key, name) in enumerate([("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")]):
            xs = [j + k * 0.27 for j in range(len(stores))]
            ax.bar(xs, [i[key] for i in r["ingest"]], 0.27, label=name)
        ax.axhline(TARGET_P95_MS, color="red", linestyle="--", label="redpanda101 p95 (5.68 ms)")
        ax.set_xticks([j + 0.27 for j in range(len(stores))], labels, rotation=20, fontsize=8)
        ax.set_title(f"broker {mode}")
        ax.set_ylabel("POST /orders latency, ms")
        ax.legend(fontsize=8)
    fig.suptitle("Request latency by store")
    save(fig, None, out / "latency.png")

    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = ["raw consume"] + [STORE_TITLES[d["store"]] for d in results["modes"][modes[0]]["drain"]]
    for k, mode in enumerate(modes):
        r = results["modes"][mode]
        xs = [j + k * width for j in range(len(names))]
        bars = ax.bar(xs, [r["raw_consume"]["per_second"]] + [d["per_second"] for d in r["drain"]], width,
                      label=f"broker {mode}")
        ax.bar_label(bars, fmt="{:,.0f}", fontsize=8)
    ax.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(names))], names)
    ax.set_ylabel("orders/s")
    ax.set_title(f"Consumer alone: draining {results['orders']:,} orders into an empty store")
    save(fig, ax, out / "drain.png")


def dashboard(window: tuple[float, float], out: Path) -> bool:
    """Renders every panel of the Grafana dashboard from the benchmark's Prometheus."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads((ROOT / "deployment/grafana/dashboards/oms.json").read_text())
    panels = [p for p in board["panels"] if p.get("targets")]
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.6 * rows), squeeze=False)
    start, end = window
    step_s = max(1, int((end - start) / 300))
    drawn = 0
    for ax, panel in zip(axes.flat, panels):
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "15s")
            q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step_s})
            status, body = http_get(f"http://127.0.0.1:{PROM_PORT}/api/v1/query_range?{q}", timeout=30)
            if status != 200:
                continue
            for series in json.loads(body)["data"]["result"]:
                ts, vs, last = [], [], None
                for t, v in series["values"]:
                    if last is not None and float(t) - last > 3 * step_s:
                        ts.append(float("nan"))  # a gap between runs: do not join across it
                        vs.append(float("nan"))
                    ts.append((float(t) - start) / 60)
                    vs.append(float(v))
                    last = float(t)
                legend = target.get("legendFormat", "")
                for k, v in series["metric"].items():
                    legend = legend.replace("{{" + k + "}}", v)
                ax.plot(ts, vs, label=legend or expr[:40], linewidth=1)
                drawn += 1
        ax.set_title(panel.get("title", ""), fontsize=9)
        ax.set_xlabel("minutes into the run", fontsize=7)
        ax.tick_params(labelsize=7)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper right")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("oms dashboard (deployment/grafana) over the benchmark run", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "dashboard.png", dpi=100)
    plt.close(fig)
    return drawn > 0


# ---------------------------------------------------------------- main


def rewrite_report(args) -> int:
    """Rewrites REPORT.md and the charts from bench/report.json (e.g. after
    editing the analysis), without measuring anything again."""
    out = ROOT / "bench"
    results = json.loads((out / "report.json").read_text())
    if args.analysis:
        results["analysis"] = args.analysis.read_text()
        (out / "report.json").write_text(json.dumps(results, indent=2))
    charts(results, out)
    tsdb = STATE / "prometheus"
    if results.get("window") and tsdb.is_dir():
        # The benchmark's Prometheus data is still there: draw the dashboard again.
        stack("start", "prometheus", OMS_HTTP_PORT=str(OMS_PORT), OMS_PROM_PORT=str(PROM_PORT))
        try:
            results["dashboard"] = dashboard(tuple(results["window"]), out)
        finally:
            stack("stop", "prometheus")
    report(results, out, results.get("command", "just bench"))
    say(f"rewrote {out / 'REPORT.md'} and the charts from report.json")
    return 0


def run(args) -> int:
    smoke = args.smoke
    orders = args.orders or (5_000 if smoke else 1_000_000)
    profile = Profile(vus=args.vus or (10 if smoke else 35), ramp="1s" if smoke else "10s",
                      steady=args.steady or ("2s" if smoke else "110s"))
    out = args.out or (Path(tempfile.mkdtemp(prefix="oms-bench-smoke-")) if smoke else ROOT / "bench")
    out.mkdir(parents=True, exist_ok=True)
    STATE.mkdir(parents=True, exist_ok=True)
    modes = args.modes.split(",")
    stores = args.stores.split(",")
    command = "just bench" + (" --smoke" if smoke else "") + \
              (f" --modes {args.modes}" if args.modes != "sqlite,memory" else "") + \
              (f" --stores {args.stores}" if args.stores != ",".join(STORES) else "") + \
              (f" --orders {args.orders}" if args.orders else "") + (f" --vus {args.vus}" if args.vus else "") + \
              (f" --steady {args.steady}" if args.steady else "")
    say(f"benchmark ({'smoke' if smoke else 'full'}): brokers {modes}, stores {stores}, "
        f"{orders:,} orders backlog, k6 {profile.vus} VUs for {profile.ramp} + {profile.steady}; "
        f"state and logs in {STATE}")

    pg_kinds = sorted({"tmpfs" if s == "postgres-tmpfs" else "disk" for s in stores if s.startswith("postgres")})
    for kind in pg_kinds:
        if kind == "tmpfs":
            shutil.rmtree(pg_env(kind)["OMS_STATE"], ignore_errors=True)  # a fresh cluster in RAM
        stack("start", "postgres", **pg_env(kind))
    shutil.rmtree(STATE / "prometheus", ignore_errors=True)
    stack("start", "prometheus", OMS_HTTP_PORT=str(OMS_PORT), OMS_PROM_PORT=str(PROM_PORT),
          OMS_SCRAPE_INTERVAL="1s")

    results = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
               "command": command, "orders": orders, "profile": profile.__dict__, "modes": {}}
    window = [time.time(), time.time()]
    for mode in modes:
        say(f"broker: tansu {MODES[mode]} (a fresh one for the backlog and for each k6 run)")
        r: dict = {}
        broker = start_broker(mode)
        try:
            r["raw_produce"], r["raw_consume"] = raw_broker("backlog", orders)
            backlog = r["raw_consume"]["records"]
            r["drain"] = [drain(s, "backlog", backlog, mode) for s in stores]
        finally:
            stop(broker)
        if mode == modes[-1]:
            window[0] = time.time()
        r["capacity"] = capacity(mode, smoke)
        r["seed"] = seed_profile(mode, smoke)
        r["ceiling"] = ceiling(profile, mode)
        r["ingest"] = [ingest(s, profile, mode) for s in stores]
        window[1] = time.time()
        results["modes"][mode] = r

    say("writing the report and charts")
    results["analysis"] = args.analysis.read_text() if args.analysis else ""
    charts(results, out)
    results["dashboard"] = dashboard((window[0], window[1]), out)
    (out / "report.json").write_text(json.dumps(results, indent=2))
    report(results, out, command)
    say(f"wrote {out / 'REPORT.md'}, report.json and the charts")
    if smoke:
        check_smoke(results, out)
    return 0


def check_smoke(results: dict, out: Path) -> None:
    """The smoke run proves the benchmark works end to end, not how fast."""
    problems = []
    for mode, r in results["modes"].items():
        if r["raw_consume"]["records"] != r["raw_produce"]["produced"]:
            problems.append(f"{mode}: raw consume read {r['raw_consume']['records']} of {r['raw_produce']['produced']}")
        for d in r["drain"]:
            if d["per_second"] <= 0:
                problems.append(f"{mode}: drain into {d['store']} measured nothing")
        for i in r["ingest"] + [r["ceiling"]]:
            if i["requests"] == 0 or i["failed_pct"] > 0 or i["checks_pct"] < 100:
                problems.append(f"{mode}: a k6 run had no requests or failures: {i}")
        cap = r["capacity"]
        if not cap["steps"] or any(x["requests"] == 0 for x in cap["steps"]):
            problems.append(f"{mode}: a capacity step had no requests")
        if cap["ryw_idle"]["failures"] or cap["ryw_load"]["failures"]:
            problems.append(f"{mode}: a read after a 202 was not 200: {cap['ryw_idle']} {cap['ryw_load']}")
        for i in r["ingest"]:
            if i["stored"] < i["requests"]:
                problems.append(f"{mode}: {i['store']} stored {i['stored']} of {i['requests']} accepted orders")
    for chart in ("throughput.png", "latency.png", "drain.png", "dashboard.png", "REPORT.md"):
        if not (out / chart).is_file() or (out / chart).stat().st_size == 0:
            problems.append(f"{chart} was not written")
    if not results["dashboard"]:
        problems.append("no dashboard query returned data")
    if problems:
        raise RuntimeError("benchmark smoke run failed:\n  " + "\n  ".join(problems))
    say("benchmark smoke run: every step measured, every accepted order stored, report and charts written")
    shutil.rmtree(out, ignore_errors=True)


def main() -> int:
    # `kill` (and `just` on Ctrl-C) must still stop what the benchmark started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes; report to a scratch folder")
    parser.add_argument("--modes", default="sqlite,memory", help="broker modes: sqlite,memory")
    parser.add_argument("--stores", default=",".join(STORES), help="stores: " + ",".join(STORES))
    parser.add_argument("--orders", type=int, default=0, help="backlog size (default 1,000,000)")
    parser.add_argument("--vus", type=int, default=0, help="k6 virtual users (default 35)")
    parser.add_argument("--steady", default="", help="k6 steady phase after the 10 s ramp (default 110s)")
    parser.add_argument("--out", type=Path, help="where the report goes (default bench/; smoke: a scratch folder)")
    parser.add_argument("--analysis", type=Path, help="markdown for the report's 'Where the time goes'")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite bench/REPORT.md and the charts from bench/report.json; measure nothing")
    args = parser.parse_args()
    if args.report_only:
        return rewrite_report(args)
    try:
        return run(args)
    finally:
        for proc in reversed(list(STARTED)):
            proc.stop()
        subprocess.run([str(ROOT / "scripts" / "stack.sh"), "stop", "prometheus"], check=False)
        for kind in ("disk", "tmpfs"):
            subprocess.run([str(ROOT / "scripts" / "stack.sh"), "stop", "postgres"], check=False,
                           env={**os.environ, **pg_env(kind)})
        shutil.rmtree("/dev/shm/oms-bench", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
