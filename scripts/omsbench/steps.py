"""The measurements: raw broker, drain, k6 runs, wrk capacity, read-your-writes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path

from .config import (BROKER_PORT, CAPACITY_CONNECTIONS, CAPACITY_P99_MS, OMS, OMS_PORT, RAWLOG, ROOT,
                     STATE, STORE_TITLES)
from .procs import Proc, cpu_seconds, reaped_children_cpu, reset_child_cpu, rss_peak_mib, start, step, stop, wait_until
from .results import (Capacity, CapacityStep, CpuCores, CpuPerOrder, Drain, LoadRun, Machine, Profile,
                      RawConsume, RawProduce, ReadAfterWrite, from_json)
from .stack import fresh_store, scrape, start_broker, start_oms, stored

def rawlog(*args: str) -> dict:
    out = subprocess.run([RAWLOG, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"rawlog {' '.join(args)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def raw_broker(topic: str, orders: int) -> tuple[RawProduce, RawConsume]:
    bootstrap = f"127.0.0.1:{BROKER_PORT}"
    step(f"raw broker: producing {orders:,} orders with rdkafka (oms' producer settings)")
    produced = rawlog("produce", "--bootstrap", bootstrap, "--topic", topic, "--count", str(orders))
    step(f"  {produced['per_second']:,.0f} orders/s")
    step("raw broker: consuming them with no store")
    # Read until every acknowledged record is in (tansu 0.6's memory engine
    # reports watermarks below what it holds, so they cannot say when).
    consumed = rawlog("consume", "--bootstrap", bootstrap, "--topic", topic, "--expect", str(produced["produced"]))
    step(f"  {consumed['per_second']:,.0f} orders/s")
    return from_json(RawProduce, produced), from_json(RawConsume, consumed)


def drain(store_name: str, topic: str, backlog: int, mode: str) -> Drain:
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
    result = Drain(store=store_name, orders=backlog, seconds=seconds, per_second=backlog / seconds,
                   oms_cpu_cores=cpu / seconds, oms_rss_mib=rss)
    step(f"  {result.per_second:,.0f} orders/s, oms {result.oms_cpu_cores:.2f} cores, "
         f"peak RSS {rss:.0f} MiB")
    return result


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


def load(script: str, profile: Profile, label: str, broker: Proc, oms: Proc, track_lag: bool) -> LoadRun:
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
    result = LoadRun(
        **k6_result(summary),
        seconds=seconds,
        cpu_cores=CpuCores(oms=(cpu_seconds(oms.pid) - base["oms"]) / seconds,
                           tansu=(cpu_seconds(broker.pid) - base[broker.name]) / seconds,
                           k6=k6_cpu / seconds),
        oms_rss_mib=rss_peak_mib(oms.pid),
    )
    if track_lag:
        m = scrape()
        produced = m.get("messages_produced_total", 0.0)
        caught_up_at = time.monotonic()
        wait_until("the consumer to catch up", lambda: stored(scrape()) >= produced, 600, every=0.05)
        result.lag_max = lag_max
        result.lag_mean = sum(lag_samples) / len(lag_samples) if lag_samples else 0.0
        result.catch_up_s = time.monotonic() - caught_up_at
        result.stored = stored(scrape())
    return result


def k6_against_fresh_oms(script: str, store_name: str, profile: Profile, mode: str, label: str) -> LoadRun:
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


def ingest(store_name: str, profile: Profile, mode: str) -> LoadRun:
    step(f"ingest: k6 POST /orders, {profile.vus} VUs, {profile.ramp} ramp + {profile.steady}, "
         f"{STORE_TITLES[store_name]}")
    result = k6_against_fresh_oms("orders", store_name, profile, mode, f"ingest-{store_name}")
    result.store = store_name
    step(f"  {result.rps:,.0f} req/s, p95 {result.p95_ms:.2f} ms, {result.failed_pct:.2f} % failed, "
         f"lag max {result.lag_max:,.0f}, caught up {result.catch_up_s:.1f} s after the load")
    return result


def wrk_run(conns: int, seconds: int) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", str(ROOT / "bench" / "wrk" / "orders.lua"),
                          f"http://127.0.0.1:{OMS_PORT}"], check=True, capture_output=True, text=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("wrk-json "))
    return json.loads(line.removeprefix("wrk-json "))


def capacity(mode: str, smoke: bool) -> Capacity:
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
                w = wrk_run(conns, seconds)
                accepted = max(1, w["requests"] - w["rejected"])
                r = CapacityStep(
                    connections=conns, requests=w["requests"], rejected=w["rejected"], seconds=w["seconds"],
                    rps=w["requests"] / w["seconds"], p50_ms=w["p50_ms"], p95_ms=w["p95_ms"], p99_ms=w["p99_ms"],
                    cpu_us_per_order=CpuPerOrder(oms=(cpu_seconds(oms.pid) - before["oms"]) / accepted * 1e6,
                                                 tansu=(cpu_seconds(broker.pid) - before["tansu"]) / accepted * 1e6))
                steps.append(r)
                step(f"  {conns} connections: {r.rps:,.0f} req/s, p50 {r.p50_ms:.2f} p99 {r.p99_ms:.2f} ms, "
                     f"{r.rejected} not 202; CPU per order oms {r.cpu_us_per_order.oms:.0f} µs, "
                     f"tansu {r.cpu_us_per_order.tansu:.0f} µs")
            samples = "20" if smoke else "300"
            ryw = ROOT / "bench" / "read_after_write.py"
            base = f"http://127.0.0.1:{OMS_PORT}"
            idle = from_json(ReadAfterWrite, json.loads(subprocess.run(
                [sys.executable, str(ryw), base, samples], capture_output=True, text=True).stdout))
            loaded = subprocess.Popen([sys.executable, str(ryw), base, samples], stdout=subprocess.PIPE, text=True)
            under = wrk_run(16, 2 if smoke else 10)
            busy = from_json(ReadAfterWrite, json.loads(loaded.communicate()[0]))
            busy.rps = under["requests"] / under["seconds"]
            step(f"  read after 202: idle p50 {idle.p50_ms} p99 {idle.p99_ms} ms; at {busy.rps:,.0f} req/s "
                 f"p50 {busy.p50_ms} p99 {busy.p99_ms} ms; not 200: {idle.failures + busy.failures}")
            rss = rss_peak_mib(oms.pid)
            stop(oms)
        finally:
            store.cleanup()
    finally:
        stop(broker)
    within = [x for x in steps if x.p99_ms <= CAPACITY_P99_MS and x.rejected == 0]
    best = max(within, key=lambda x: x.rps) if within else None
    return Capacity(steps=steps, best=best, ryw_idle=idle, ryw_load=busy, oms_rss_mib=rss)


def seed_profile(mode: str, smoke: bool) -> LoadRun:
    """The original's own k6 profile: one stage ramping 0 → 35 VUs over 2
    minutes, on `just up` defaults (redb)."""
    profile = Profile(vus=35, ramp="3s" if smoke else "2m", steady="1s")
    step(f"seed profile: k6 POST /orders ramping 0 → 35 VUs over {profile.ramp}, redb")
    result = k6_against_fresh_oms("orders", "redb", profile, mode, "seed")
    result.store = "redb"
    step(f"  {result.rps:,.0f} req/s, p95 {result.p95_ms:.2f} ms, {result.failed_pct:.2f} % failed")
    return result


def ceiling(profile: Profile, mode: str) -> LoadRun:
    step(f"HTTP ceiling: k6 GET /healthz, {profile.vus} VUs")
    result = k6_against_fresh_oms("healthz", "redb", profile, mode, "ceiling")
    step(f"  {result.rps:,.0f} req/s, p95 {result.p95_ms:.2f} ms")
    return result


def machine() -> Machine:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = next((int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                if l.startswith("MemTotal")), 0)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    return Machine(cores=os.cpu_count() or 0, cpu=cpu, memory_gib=round(mem / 1024 / 1024, 1),
                   kernel=platform.release(), os=platform.freedesktop_os_release().get("PRETTY_NAME", ""),
                   oms=sha, tansu=os.environ.get("OMS_TANSU_VERSION", "?"),
                   k6=os.environ.get("OMS_K6_VERSION", "?"), postgres=os.environ.get("OMS_PG_MAJOR", "?"))


