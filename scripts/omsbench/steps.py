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

from .config import (AUTH_BENCH, BROKER_PORT, CAPACITY_CONNECTIONS, CAPACITY_P99_MS, INGEST_PARTITIONS, MATCHING, OMS, OMS_PORT,
                     RAWLOG, RELAY_CONNECTIONS, ROOT, SCALE_BACKLOG, SCALE_CONNECTIONS, SCALE_INSTANCES, STATE,
                     STORE_TITLES)
from .procs import (Proc, cpu_seconds, http_get, reaped_children_cpu, reset_child_cpu, rss_peak_mib, start, step, stop,
                    tree_cpu_seconds, wait_until)
from .results import (Capacity, CapacityStep, CpuCores, CpuPerOrder, Drain, FeedWatch, KeyCheckBench, LoadRun, Machine,
                      MatchingBench, Profile, RawConsume, RawProduce, ReadAfterWrite, ScaleCpu, ScaleRun, from_json)
from .stack import Store, fresh_store, postgres_pid, scrape, start_broker, start_lb, start_oms, start_relay, stored

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
    # The trades topic oms publishes each batch's feed records to (the
    # backlog's own topic exists: the raw producer made it).
    make_topics(topic)
    store = fresh_store(store_name, f"drain_{mode}")
    try:
        oms = start_oms(store, topic, f"drain-{store_name}-{mode}")
        # From the moment oms answers (its consumer is starting), like the raw
        # consumer's clock, which starts once it is assigned.
        started = time.monotonic()
        wait_until("the drain", lambda: stored(scrape()) >= backlog, 1800, every=0.05)
        seconds = time.monotonic() - started
        cpu, rss = cpu_seconds(oms.pid), rss_peak_mib(oms.pid)
        server_rss = rss_peak_mib(store.server.pid) if store.server else None
        stop(oms)
        ready_s, restart_s = restart(store, topic, f"restart-{store_name}-{mode}")
    finally:
        store.cleanup()
    result = Drain(store=store_name, orders=backlog, seconds=seconds, per_second=backlog / seconds,
                   oms_cpu_cores=cpu / seconds, oms_rss_mib=rss, store_rss_mib=server_rss, ready_s=ready_s,
                   restart_s=restart_s)
    step(f"  {result.per_second:,.0f} orders/s, oms {result.oms_cpu_cores:.2f} cores, "
         f"peak RSS {rss:.0f} MiB" + (f", Redis {server_rss:.0f} MiB" if server_rss else "")
         + f"; restarted on the full store: ready in {ready_s:.2f} s, no lag reported after {restart_s:.2f} s")
    return result


def restart(store: Store, topic: str, label: str) -> tuple[float, float]:
    """Seconds from starting oms again on the store a drain filled (stopped
    cleanly: the memory engine wrote its last snapshot) until `/readyz`
    answers 200 — the store open (the memory engine's snapshot loaded), the
    broker reachable, the consumer running — and until it also reports no
    lag. The second waits for the log watcher's first look at a known store
    (every 2 s, `app::LAG_INTERVAL`), so it moves in steps of that. Beside the
    drain's time — what a restart without a snapshot replays — they price the
    snapshot."""
    started = time.monotonic()
    oms = start_oms(store, topic, label)
    try:
        ready = lambda: http_get(f"http://127.0.0.1:{OMS_PORT}/readyz")[0] == 200
        wait_until("the restarted oms to be ready", ready, 300, every=0.02)
        ready_s = time.monotonic() - started

        def caught_up() -> bool:
            status, text = http_get(f"http://127.0.0.1:{OMS_PORT}/metrics")
            lags = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("consumer_lag{")]
            # No gauge yet: the log watcher has not compared the log with the store.
            return status == 200 and bool(lags) and sum(lags) == 0 and ready()
        wait_until("the restarted oms to report no lag", caught_up, 300, every=0.02)
        return ready_s, time.monotonic() - started
    finally:
        stop(oms)


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


def make_topics(topic: str) -> None:
    """The orders topic (and its dead-letter and trades topics) for an ingest
    or capacity step, with the partitions `just up` gives one instance."""
    subprocess.run([OMS, "migrate", "--bootstrap", f"127.0.0.1:{BROKER_PORT}", "--topic", topic,
                    "--dlq-topic", f"{topic}.dlq", "--trades-topic", f"{topic}.trades"], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "OMS__MIGRATE__PARTITIONS": str(INGEST_PARTITIONS)})


def profile_seconds(profile: Profile) -> float:
    """How long k6 runs a profile (`2m` ramp + `1s` steady)."""
    def secs(d: str) -> float:
        return float(d[:-1]) * {"s": 1, "m": 60, "h": 3600}[d[-1]]
    return secs(profile.ramp) + secs(profile.steady)


def k6_against_fresh_oms(script: str, store_name: str, profile: Profile, mode: str, label: str,
                         watch_feed: bool = False) -> LoadRun:
    """A fresh broker (an empty log: tansu's sqlite engine slows down as its
    file grows, so no run inherits another's records), an empty store, a
    fresh oms, one k6 run against it — with `watch_feed`, a live-feed
    subscriber (bench/feed_watch.py) following it all along."""
    broker = start_broker(mode)
    topic = f"{label}-{uuid.uuid4().hex[:6]}"
    try:
        make_topics(topic)
        store = fresh_store(store_name, f"{label}_{mode}")
        try:
            oms = start_oms(store, topic, f"{label}-{mode}")
            watcher = None
            if watch_feed:
                watcher = subprocess.Popen([sys.executable, str(ROOT / "bench" / "feed_watch.py"),
                                            f"http://127.0.0.1:{OMS_PORT}", str(profile_seconds(profile))],
                                           stdout=subprocess.PIPE, text=True)
            reset_child_cpu()
            result = load(script, profile, f"{label}-{mode}", broker, oms, track_lag=script == "orders")
            if watcher:
                out, _ = watcher.communicate(timeout=120)
                result.feed = from_json(FeedWatch, json.loads(out.strip().splitlines()[-1]))
            if store.server:
                result.store_rss_mib = rss_peak_mib(store.server.pid)
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


def scale(mode: str, smoke: bool) -> list[ScaleRun]:
    """1, 2 and 3 oms instances in group mode on one Postgres (disk), each
    count on a fresh broker and database: the instances drain a backlog
    from the log (the clock starts when they are launched, so joining the
    group is part of it), then wrk posts through nginx. CPU per order is
    summed over every instance, the Postgres cluster and nginx, so what
    coordinating more instances costs shows next to what it buys."""
    backlog = 3_000 if smoke else SCALE_BACKLOG
    seconds = 2 if smoke else 15
    runs = []
    for n in SCALE_INSTANCES:
        step(f"scale: {n} instance(s) in group mode on Postgres (disk) behind nginx: "
             f"drain {backlog:,}, then wrk {SCALE_CONNECTIONS} connections")
        broker = start_broker(mode)
        topic = f"scale{n}-{uuid.uuid4().hex[:6]}"
        instances: list[Proc] = []
        lb = None
        try:
            rawlog("produce", "--bootstrap", f"127.0.0.1:{BROKER_PORT}", "--topic", topic, "--count", str(backlog))
            make_topics(topic)  # its trades topic (the feed's records)
            store = fresh_store("postgres", f"scale{n}_{mode}")
            try:
                ports = [OMS_PORT + i for i in range(1, n + 1)]

                def stored_all() -> float:
                    return sum(stored(scrape(p)) for p in ports)

                def owned_all() -> float:
                    return sum(scrape(p).get("consumer_assigned_partitions", 0.0) for p in ports)

                def cpu() -> dict[str, float]:
                    return {"oms": sum(cpu_seconds(i.pid) for i in instances), "tansu": cpu_seconds(broker.pid),
                            "postgres": tree_cpu_seconds(postgres_pid("disk")),
                            "nginx": tree_cpu_seconds(lb.pid) if lb else 0.0}

                def per_order(before: dict[str, float], orders: float) -> ScaleCpu:
                    after = cpu()
                    return ScaleCpu(**{k: (after[k] - before[k]) / max(orders, 1) * 1e6 for k in before})

                before = cpu()
                started = time.monotonic()
                for i, port in enumerate(ports, 1):
                    instances.append(start_oms(store, topic, f"scale{n}-{i}-{mode}", port, env={
                        "OMS__CONSUMER__MODE": "group", "OMS__CONSUMER__INSTANCE_ID": f"bench-{i}"}))
                # Group join: every partition owned (its time is part of the drain).
                wait_until("the group to own every partition", lambda: owned_all() >= 3, 120, every=0.05)
                join = time.monotonic() - started
                wait_until("the drain", lambda: stored_all() >= backlog, 1800, every=0.05)
                drain_s = time.monotonic() - started
                drain_cpu = per_order(before, backlog)

                lb = start_lb(ports, f"scale{n}-{mode}")
                wrk_run(8, 1 if smoke else 3)  # warm-up (through nginx)
                before = cpu()
                w = wrk_run(SCALE_CONNECTIONS, seconds)
                accepted = w["requests"] - w["rejected"]
                ingest_cpu = per_order(before, accepted)
                # Every accepted order stored, by whichever instance owns it.
                produced = sum(scrape(p).get("messages_produced_total", 0.0) for p in ports)
                wait_until("the instances to store what they accepted",
                           lambda: stored_all() >= backlog + produced, 600, every=0.05)
                run = ScaleRun(instances=n, join_s=join, drain_orders=backlog, drain_seconds=drain_s,
                               drain_per_second=backlog / drain_s, drain_cpu_us=drain_cpu,
                               ingest_connections=SCALE_CONNECTIONS, ingest_requests=w["requests"],
                               ingest_rejected=w["rejected"], ingest_rps=w["requests"] / w["seconds"],
                               ingest_p99_ms=w["p99_ms"], ingest_cpu_us=ingest_cpu, stored=int(stored_all()))
            finally:
                if lb:
                    stop(lb)
                for i in instances:
                    stop(i)
                store.cleanup()
        finally:
            stop(broker)
        runs.append(run)
        step(f"  join {run.join_s:.1f} s; drain {run.drain_per_second:,.0f} orders/s (oms "
             f"{run.drain_cpu_us.oms:.0f} µs, Postgres {run.drain_cpu_us.postgres:.0f} µs per order); "
             f"ingest {run.ingest_rps:,.0f} req/s p99 {run.ingest_p99_ms:.1f} ms, {run.ingest_rejected} not 202 "
             f"(oms {run.ingest_cpu_us.oms:.0f}, tansu {run.ingest_cpu_us.tansu:.0f}, "
             f"Postgres {run.ingest_cpu_us.postgres:.0f}, nginx {run.ingest_cpu_us.nginx:.0f} µs per order)")
    return runs


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
        make_topics(topic)
        store = fresh_store("redb", f"capacity_{mode}")
        try:
            oms = start_oms(store, topic, f"capacity-{mode}")
            wrk_run(8, 1 if smoke else 3)  # warm-up
            for conns in CAPACITY_CONNECTIONS:
                steps.append(wrk_step("oms", oms.pid, broker.pid, conns, seconds))
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
                 f"p50 {busy.p50_ms} p99 {busy.p99_ms} ms; not 200: {idle.failures + busy.failures}, "
                 f"503 then 200 after Retry-After: {idle.retried + busy.retried}")
            rss = rss_peak_mib(oms.pid)
            stop(oms)
        finally:
            store.cleanup()
        relay = bare_relay(broker.pid, seconds, smoke)
    finally:
        stop(broker)
    within = [x for x in steps if x.p99_ms <= CAPACITY_P99_MS and x.rejected == 0]
    best = max(within, key=lambda x: x.rps) if within else None
    return Capacity(steps=steps, best=best, ryw_idle=idle, ryw_load=busy, oms_rss_mib=rss, relay=relay)


def wrk_step(name: str, pid: int, broker_pid: int, conns: int, seconds: int) -> CapacityStep:
    """One wrk run against the process on OMS_PORT, with its CPU and the
    broker's per accepted order."""
    before = (cpu_seconds(pid), cpu_seconds(broker_pid))
    w = wrk_run(conns, seconds)
    accepted = max(1, w["requests"] - w["rejected"])
    r = CapacityStep(
        connections=conns, requests=w["requests"], rejected=w["rejected"], seconds=w["seconds"],
        rps=w["requests"] / w["seconds"], p50_ms=w["p50_ms"], p95_ms=w["p95_ms"], p99_ms=w["p99_ms"],
        cpu_us_per_order=CpuPerOrder(oms=(cpu_seconds(pid) - before[0]) / accepted * 1e6,
                                     tansu=(cpu_seconds(broker_pid) - before[1]) / accepted * 1e6))
    step(f"  {name}, {conns} connections: {r.rps:,.0f} req/s, p50 {r.p50_ms:.2f} p99 {r.p99_ms:.2f} ms, "
         f"{r.rejected} not 202; CPU per order {name} {r.cpu_us_per_order.oms:.0f} µs, "
         f"tansu {r.cpu_us_per_order.tansu:.0f} µs")
    return r


def bare_relay(broker_pid: int, seconds: int, smoke: bool) -> list[CapacityStep]:
    """examples/relay.rs on the same broker, a topic of its own: what HTTP
    and librdkafka alone cost per order here — the floor under oms'."""
    topic = f"relay-{uuid.uuid4().hex[:6]}"
    make_topics(topic)
    relay = start_relay(topic)
    try:
        wrk_run(8, 1 if smoke else 3)  # warm-up
        return [wrk_step("relay", relay.pid, broker_pid, conns, seconds) for conns in RELAY_CONNECTIONS]
    finally:
        stop(relay)


def seed_profile(mode: str, smoke: bool) -> LoadRun:
    """The original's own k6 profile: one stage ramping 0 → 35 VUs over 2
    minutes, on `just up` defaults (redb)."""
    profile = Profile(vus=35, ramp="3s" if smoke else "2m", steady="1s")
    step(f"seed profile: k6 POST /orders ramping 0 → 35 VUs over {profile.ramp}, redb")
    result = k6_against_fresh_oms("orders", "redb", profile, mode, "seed", watch_feed=True)
    result.store = "redb"
    step(f"  {result.rps:,.0f} req/s, p95 {result.p95_ms:.2f} ms, {result.failed_pct:.2f} % failed")
    f = result.feed
    if f:
        step(f"  a feed subscriber alongside: {f.events_per_second:,.0f} events/s delivered; "
             f"202 → trade event p50 {f.p50_ms} p99 {f.p99_ms} ms over {f.probe_trades} of {f.probes} probes"
             + (f"; dropped: {f.dropped}" if f.dropped else ""))
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




def key_check_bench() -> KeyCheckBench:
    """The key check every order request passes (`benches/auth.rs`)."""
    step("the API key check in process: 1,000 keys, 1,000,000 checks")
    out = subprocess.run([AUTH_BENCH], check=True, capture_output=True, text=True).stdout
    result = KeyCheckBench(**json.loads(out.strip().splitlines()[-1]))
    step(f"  {result.ns_per_check_no_limits:.0f} ns per check "
         f"({result.ns_per_check_rate_and_in_flight:.0f} with a rate and an in-flight limit)")
    return result


def matching_bench(smoke: bool, terms: str = "limit") -> MatchingBench:
    """The book in process (`benches/matching.rs`, built by scripts/bench.sh): every
    order a resting limit order (`terms="limit"`), or one in ten each a market
    order, `ioc`, `fok` and `post_only` (`"mixed"`)."""
    orders = 50_000 if smoke else 1_000_000
    step(f"matching in process: {orders:,} orders ({terms}) into one symbol's book")
    out = subprocess.run([MATCHING], env={**os.environ, "OMS_BENCH_ORDERS": str(orders),
                                          "OMS_BENCH_TERMS": terms},
                         check=True, capture_output=True, text=True).stdout
    result = MatchingBench(**json.loads(out.strip().splitlines()[-1]))
    step(f"  {result.orders_per_second:,.0f} orders/s, {result.ns_per_order:.0f} ns per order"
         + (f", {result.expired:,} expired, {result.rejected:,} rejected" if terms != "limit" else ""))
    return result
